#!/usr/bin/env bash
# Measured FVD_16 example (docs/evaluation.md): two independent synthetic sets of N videos
# (the same distribution), then the second with each video's frames shuffled in time (same
# frames, broken motion). Usage: scripts/fvd_example.sh [N] [WORKDIR]   (default 48, /tmp/fvd_example)
set -euo pipefail
N=${1:-48}
WORK=${2:-/tmp/fvd_example}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -x $REPO/.venv/bin/cinemamba ]] && export PATH="$REPO/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$WORK" && cd "$WORK"
rm -rf a b shuffled reports cache
cinemamba synth --train 0 --val "$N" --seed 1 a frames=24 height=64 width=64 >/dev/null 2>&1
cinemamba synth --train 0 --val "$N" --seed 2 b frames=24 height=64 width=64 >/dev/null 2>&1
python - <<'PY'
from collections import Counter
from pathlib import Path

import numpy as np

from cinemamba.data.video import write_video
from cinemamba.eval.sources import iter_shards

out = Path("shuffled")
out.mkdir()
rng = np.random.default_rng(0)
for it in iter_shards("b/val", Counter()):
    order = rng.permutation(len(it.frames))
    write_video(out / f"{it.key.replace('/', '_')}.mp4", it.frames[order], fps=8.0)
PY
for gen in b/val shuffled; do
  name=$(basename "$gen")
  start=$(date +%s)
  cinemamba eval --shards a/val --generated "$gen" --out "reports/$name" groundtruth=false \
    'fvd.protocols=[fvd16]' fvd.cache="$WORK/cache" >/dev/null 2>&1
  python -c "import json; r = json.load(open('reports/$name/eval.json')); f = r['fvd']['fvd16']; \
print('$gen: FVD_16 %.1f (real %d, generated %d videos; real-set cache %s; %d s)' % \
(f['fvd'], f['real_clips'], f['generated_clips'], r['fvd_meta']['cache'], $(date +%s) - $start))"
done
