#!/usr/bin/env bash
# One command for a bare CUDA machine that has only PyTorch + Triton (any recent 2.x, not
# our pin): install our packages around its torch from local wheels, then the `cuda` tests,
# a DeepSpeed ZeRO-2 / NCCL training run and `cinemamba bench --gpu`, within a time budget.
#   bash scripts/gpu_wheels.sh .whl                  # where PyPI can be reached (about 45 MB)
#   bash scripts/gpu_check.sh .whl OUTDIR            # on the GPU machine (PYTHON=its python)
# OUTDIR gets summary.md, results.json, bench_gpu.md, bench_gpu.json and logs.tar.gz (every
# step's log), refreshed after each step so a killed run still leaves what it did.
# GPU_CHECK_BUDGET (seconds, default 450) bounds the whole run; each step gets a share and
# the benchmark whatever is left. See docs/gpu.md.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEELDIR=${1:?usage: gpu_check.sh WHEELDIR OUTDIR}
OUTDIR=${2:?usage: gpu_check.sh WHEELDIR OUTDIR}
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-450}
WORK=${GPU_CHECK_WORK:-/tmp/cinemamba-gpu-check}
VENV=$WORK/venv
LOGS=$WORK/logs
mkdir -p "$OUTDIR" "$LOGS"
OUTDIR=$(cd "$OUTDIR" && pwd)
rm -f "$LOGS"/* "$OUTDIR"/{summary.md,results.json,bench_gpu.md,bench_gpu.json,logs.tar.gz}
START=$SECONDS
: >"$WORK/steps.tsv"

left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP_SECONDS CMD...: run CMD under `timeout` (at most CAP, at most what is left),
# log to $LOGS/NAME.log, record "name rc seconds" in steps.tsv.
step() {
  local name=$1 cap=$2
  shift 2
  local limit
  limit=$(left)
  ((limit > cap)) && limit=$cap
  if ((limit < 10)); then
    echo "== $name: skipped, time budget spent" | tee "$LOGS/$name.log"
    printf '%s\t%s\t%s\n' "$name" skipped 0 >>"$WORK/steps.tsv"
    return 1
  fi
  echo "== $name (limit ${limit}s, $(left)s of ${BUDGET}s left)"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  ((rc == 124 || rc == 137)) && echo "== $name: TIMED OUT after ${limit}s" >>"$LOGS/$name.log"
  printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t0)) >>"$WORK/steps.tsv"
  tail -n 3 "$LOGS/$name.log"
  echo "== $name: rc=$rc in $((SECONDS - t0))s"
  tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs steps.tsv 2>/dev/null
  return "$rc"
}

{
  echo "date: $(date -u)"
  nvidia-smi 2>&1 | head -15
  "$PY" -c 'import sys, torch, triton; print(sys.version); print("torch", torch.__version__,
"cuda", torch.version.cuda, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0));
print("triton", triton.__version__)'
} >"$LOGS/machine.log" 2>&1
cat "$LOGS/machine.log"

export PYTHON=$PY
if step install 150 bash scripts/gpu_install.sh "$WHEELDIR" "$VENV"; then
  VPY=$VENV/bin/python
  export DS_ACCELERATOR=cuda HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
  export TORCH_EXTENSIONS_DIR=$WORK/torch_extensions TRITON_CACHE_DIR=$WORK/triton_cache
  unset PYTHONPATH
  PYTEST=("$VPY" -m pytest -m cuda -q -rs -p no:cacheprovider --color=no)
  step tests 150 "${PYTEST[@]}" --junitxml="$WORK/logs/tests.xml" \
    --ignore=packages/cinemamba/tests/test_train_cuda.py
  step train 120 "${PYTEST[@]}" packages/cinemamba/tests/test_train_cuda.py
  # The benchmark stops starting new cases at --budget; leave room for the case in flight.
  bench_budget=$(($(left) - 60))
  step bench 600 "$VENV/bin/cinemamba" bench --gpu --full --budget "$bench_budget" \
    --json "$OUTDIR/bench_gpu.json" --markdown "$OUTDIR/bench_gpu.md"
fi

"$PY" - "$WORK" "$OUTDIR" "$BUDGET" $((SECONDS - START)) <<'PY'
import json, re, sys
from pathlib import Path
work, out, budget, wall = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
steps = []
for line in (work / "steps.tsv").read_text().splitlines():
    name, rc, sec = line.split("\t")
    log = work / "logs" / f"{name}.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    # pytest's closing line, e.g. "3 passed, 2 skipped in 41.2s"
    tally = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped|error).*?) in [\d.]+s", text, re.M)
    status = "ok" if rc == "0" else ("timed out" if rc in ("124", "137") else f"rc {rc}")
    if rc == "skipped":
        status = "skipped (budget)"
    steps.append({"step": name, "status": status, "seconds": int(sec),
                  "pytest": tally[-1] if tally else None,
                  "skips": re.findall(r"^SKIPPED .*$", text, re.M)[:20],
                  "failures": re.findall(r"^(?:FAILED|ERROR) .*$", text, re.M)[:20]})
bench = out / "bench_gpu.json"
result = {"budget_s": int(budget), "wall_s": int(wall), "steps": steps,
          "bench": json.loads(bench.read_text()) if bench.is_file() else None}
(out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
lines = ["# scripts/gpu_check.sh", "", f"wall {wall} s of a {budget} s budget", "",
         "| step | status | seconds | pytest |", "|---|---|---|---|"]
lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['pytest'] or '—'} |" for s in steps]
for s in steps:
    for line in s["failures"] + s["skips"]:
        lines.append(f"- {s['step']}: {line}")
md = out / "bench_gpu.md"
if md.is_file():
    lines += ["", md.read_text()]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines[: 6 + len(steps)]))
PY
tar -czf "$OUTDIR/logs.tar.gz" -C "$WORK" logs steps.tsv 2>/dev/null
ls -la "$OUTDIR"
! grep -qv $'\t0\t' "$WORK/steps.tsv"
