"""Latent export faults (issue 14): truncated source shards, duplicate keys, lying metadata,
truncated latent shards in training, and two exports into one folder."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cinemamba.cli import main
from cinemamba.data.shards import sample_to_tar_entries, write_shards
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import encode_video
from cinemamba.latents import (
    ClipConfig,
    ExportConfig,
    export_latents,
    latent_batches,
    open_latent_set,
)
from cinemamba.latents.lock import OWNERS_DIR, ExportLockedError
from cinemamba.latents.stream import read_tar
from cinemamba_conditioning import TextEncoderConfig
from cinemamba_vae import VideoAutoencoder, vae_preset

sys.path.insert(0, str(Path(__file__).parent))
from test_data_faults import planned_keys, readable_keys  # noqa: E402

TEXT = TextEncoderConfig(random_init_seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A tiny VAE, and raw synth shards of 4 samples (12 frames at 32x32)."""
    root = tmp_path_factory.mktemp("export_faults")
    torch.manual_seed(0)
    VideoAutoencoder(vae_preset("tiny")).save_pretrained(root / "vae")
    write_synth(root / "raw", "train", 16, SceneConfig(frames=12, height=32, width=32),
                samples_per_shard=4)  # fmt: skip
    return root


def _cfg(root: Path, raw: Path, out: str) -> ExportConfig:
    return ExportConfig(
        input=str(raw), output=str(root / out), vae=str(root / "vae"), text_encoder=TEXT,
        clip=ClipConfig(frames=9, start="first"), progress=False,
    )  # fmt: skip


def _exported_keys(out: Path) -> list[str]:
    return [s["__key__"] for p in sorted(out.glob("latents-*.tar")) for s in read_tar(str(p))]


def test_truncated_source_shards_are_finished_and_counted(root, tmp_path):
    """Cuts mid-header, mid-member and at a member boundary: the export finishes, exports
    exactly the complete samples, counts the rest, names the incomplete sources in the
    manifest, leaves no .tmp, and a re-run finishes too."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in (root / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    cuts = {}
    for i, where in enumerate(["header", "member", "boundary"]):
        path = raw / f"train-{i:06d}.tar"
        key = planned_keys(raw, path.name)[1 + i % 3]
        with tarfile.open(path) as tar:
            m = tar.getmember(f"{key}.mp4")
        cut = {"header": m.offset + 200, "member": m.offset_data + 300, "boundary": m.offset}[where]
        path.write_bytes(path.read_bytes()[:cut])
        cuts[path.name] = readable_keys(path)
    # shard 3 stays whole
    cfg = _cfg(root, raw, "lat")
    cfg.output = str(tmp_path / "lat")
    report = export_latents(cfg)
    out = tmp_path / "lat"
    expected = [k for i in range(4) for k in cuts.get(f"train-{i:06d}.tar")
                or planned_keys(raw, f"train-{i:06d}.tar")]  # fmt: skip
    assert _exported_keys(out) == expected
    assert sum(report.skipped.values()) == 16 - len(expected)
    assert not list(out.glob("*.tmp"))
    manifest = json.loads((out / "latents.json").read_text())
    assert manifest["samples"] == len(expected)
    assert sum(manifest["skipped"].values()) == 16 - len(expected)
    incomplete = {s["source"]: s for s in manifest["incomplete_sources"]}
    assert sorted(incomplete) == sorted(cuts)
    for name, keys in cuts.items():
        assert incomplete[name]["expected"] == 4 and incomplete[name]["read"] >= len(keys)
    again = export_latents(cfg)
    assert again.manifest is not None and again.already_done == 4 and not again.written


def test_duplicate_keys_are_exported_once_and_lying_metadata_is_used(root, tmp_path):
    frames = np.stack([np.full((32, 32, 3), 10 * i, np.uint8) for i in range(12)])
    video = encode_video(frames, 12.0)
    true = {"fps": 12.0, "frames": 12, "height": 32, "width": 32}
    groups = [
        [sample_to_tar_entries("a", video, "one", true),
         sample_to_tar_entries("a", video, "one again, same shard", true),
         sample_to_tar_entries("liar", video, "999 frames", {**true, "frames": 999})],
        [sample_to_tar_entries("a", video, "one again, next shard", true),
         {**sample_to_tar_entries("latin1", video, "x", true), "txt": b"caf\xe9"}],
    ]  # fmt: skip
    raw = tmp_path / "raw"
    write_shards(raw, "dup", groups, lambda s: s, keys=[[s["__key__"] for s in g] for g in groups])
    cfg = _cfg(root, raw, "lat")
    cfg.output = str(tmp_path / "lat")
    report = export_latents(cfg)
    assert sorted(_exported_keys(tmp_path / "lat")) == ["a", "liar"]
    assert dict(report.skipped) == {"duplicate_key": 2, "bad_caption_encoding": 1}
    assert dict(report.warnings) == {"metadata_mismatch": 1}
    manifest = json.loads((tmp_path / "lat" / "latents.json").read_text())
    assert manifest["skipped"] == dict(report.skipped) and manifest["samples"] == 2
    assert manifest["warnings"] == {"metadata_mismatch": 1}
    liar = next(s for s in read_tar(str(tmp_path / "lat" / "latents-000000.tar"))
                if s["__key__"] == "liar")  # fmt: skip
    assert json.loads(liar["json"])["source"]["frames"] == 999  # as declared, kept for the record


def test_truncated_latent_shard_gives_full_distinct_batches(root, tmp_path):
    """The latent training path: a latent shard cut short still gives full batches of distinct
    keys, and the missing positions are counted once."""
    raw = tmp_path / "raw"
    write_synth(raw, "train", 8, SceneConfig(frames=12, height=32, width=32),
                samples_per_shard=8)  # fmt: skip
    cfg = _cfg(root, raw, "lat")
    cfg.output = str(tmp_path / "lat")
    export_latents(cfg)
    shard = tmp_path / "lat" / "latents-000000.tar"
    all_keys = [s["__key__"] for s in read_tar(str(shard))]
    with tarfile.open(shard) as tar:
        cut = tar.getmember(f"{all_keys[5]}.latent.npy").offset_data + 64
    shard.write_bytes(shard.read_bytes()[:cut])
    good = all_keys[:5]
    bs, n = 4, 20
    it = latent_batches(open_latent_set(tmp_path / "lat"), seed=0, rank=0, batch_size=bs,
                        start_batch=0)  # fmt: skip
    batches = [next(it) for _ in range(n)]
    for batch, _ in batches:
        assert batch["latents"].shape[0] == bs
    # a latent batch carries no keys: identify each sample by its latent values, read
    # independently from the truncated shard with tarfile
    ref = {}
    with open(shard, "rb") as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        try:
            for info in tar:
                if info.name.endswith(".latent.npy"):
                    data = tar.extractfile(info).read()
                    if len(data) == info.size:
                        ref[info.name.partition(".")[0]] = np.load(io.BytesIO(data))
        except (tarfile.ReadError, EOFError):
            pass
    assert sorted(ref) == sorted(good)
    seen = Counter()
    for batch, _ in batches:
        ids = [next(k for k, v in ref.items() if np.array_equal(v, x.numpy()))
               for x in batch["latents"]]  # fmt: skip
        assert len(set(ids)) == bs
        seen.update(ids)
    assert set(seen) == set(good) and max(seen.values()) <= 1.5 * n * bs / len(good)
    assert sum(s.get("missing", 0) for _, s in batches) == sum(p % 8 >= 5 for p in range(n * bs))


HOLD = """
import json, sys
from pathlib import Path
from cinemamba.latents.lock import export_claim
out, shards = Path(sys.argv[1]), json.loads(sys.argv[2])
rank, world = int(sys.argv[3]), int(sys.argv[4])
with export_claim(out, shards, rank, world):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _hold(out: Path, shards: list[int], rank: int, world: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out), json.dumps(shards), str(rank), str(world)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_export_into_one_folder_fails_naming_the_first(root, tmp_path, capsys):
    out = tmp_path / "lat"
    out.mkdir()
    holder = _hold(out, [0, 1, 2, 3], 0, 1)  # another process exporting all 4 shards
    try:
        cfg = _cfg(root, root / "raw", "lat")
        cfg.output = str(out)
        with pytest.raises(ExportLockedError, match=rf"another export \(pid {holder.pid}, "
                           rf"started .*\) is writing to {out}"):  # fmt: skip
            export_latents(cfg)
        assert not list(out.glob("latents-*"))  # nothing written by the loser
        # the command line ends with one error line, no traceback
        code = main(["export-latents", f"input={cfg.input}", f"output={out}", f"vae={cfg.vae}",
                     "text_encoder.random_init_seed=0", "clip.frames=9", "progress=false"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and f"another export (pid {holder.pid}, started" in err
        assert "Traceback" not in err
    finally:
        holder.communicate("\n")
    # two ranks of one job claim disjoint shards and run side by side
    holder = _hold(out, [0, 2], 0, 2)
    try:
        report = export_latents(cfg, rank=1, world_size=2)
        assert [p.name for p in report.written] == ["latents-000001.tar", "latents-000003.tar"]
    finally:
        holder.communicate("\n")


def test_owner_record_of_a_dead_process_is_removed_with_a_log_line(root, tmp_path, caplog):
    out = tmp_path / "lat"
    (out / OWNERS_DIR).mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (out / OWNERS_DIR / f"{host}-{dead.pid}.json").write_text(
        json.dumps(
            {
                "pid": dead.pid,
                "host": host,
                "started": "2026-01-01T00:00:00Z",
                "rank": 0,
                "world": 1,
            }
        )
    )
    cfg = _cfg(root, root / "raw", "lat")
    cfg.output = str(out)
    with caplog.at_level("WARNING"):
        export_latents(cfg)
    assert any(f"pid {dead.pid}" in r.message and "gone" in r.message for r in caplog.records)
    assert not list((out / OWNERS_DIR).iterdir())
