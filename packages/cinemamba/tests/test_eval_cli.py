"""`cinemamba eval`: sources (shards, generated folder + prompt sidecars), aggregation, the
report files, FVD through the CLI with a stand-in I3D, and clear errors on bad input."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from cinemamba.cli import main
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.data.video import decode_video, write_video
from cinemamba.eval.run import EvalConfig, FVDConfig, evaluate, score_with_quarters, to_markdown
from cinemamba.eval.sources import iter_generated, iter_shards, read_prompts, shard_paths
from cinemamba.eval.tables import mean_scores

SCENE = SceneConfig(frames=20, height=32, width=32, fps=8.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """Six real synthetic videos in two shards."""
    out = tmp_path_factory.mktemp("synth")
    write_synth(out, "val", 6, SCENE, seed=3, samples_per_shard=4)
    return out


class TinyI3D(nn.Module):
    """Stand-in for the I3D TorchScript file (same call signature, 4-d features)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(
        self, x: Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> Tensor:
        y = x.float() / 127.5 - 1.0 if rescale else x.float()
        # Per-channel mean and temporal std -> 4 features that depend on content and motion.
        m = y.mean(dim=(2, 3, 4))
        return torch.cat([self.proj(m)[:, :3], y.std(dim=2).mean(dim=(1, 2, 3))[:, None]], 1)


@pytest.fixture(scope="module")
def i3d(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D().eval()).save(str(path))
    return path


def _generated_from(synth: Path, out: Path) -> dict[str, str]:
    """Copy the real videos to a generated folder: txt sidecars, prompts.jsonl, one unprompted,
    one corrupt file."""
    out.mkdir()
    items = list(iter_shards(str(synth), Counter()))
    prompts = {}
    for i, item in enumerate(items):
        name = f"gen_{i}.mp4"
        write_video(out / name, item.frames, fps=8.0)
        prompts[name] = item.prompt
        if i < 2:
            (out / f"gen_{i}.txt").write_text(item.prompt + "\n")
    lines = [json.dumps({"video": n, "prompt": p}) for n, p in list(prompts.items())[2:5]]
    (out / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    (out / "zz_corrupt.mp4").write_bytes(b"\x00" * 100)
    return prompts


def test_shard_and_generated_sources(synth, tmp_path) -> None:
    skipped: Counter = Counter()
    items = list(iter_shards(str(synth), skipped, max_frames=12))
    assert len(items) == 6 and not skipped
    assert all(it.frames.shape == (12, 32, 32, 3) and it.frames.dtype == np.uint8 for it in items)
    assert all(it.prompt == it.meta["caption"] for it in items)
    assert len(shard_paths(str(synth / "val-{000000..000001}.tar"))) == 2
    assert len(shard_paths(str(synth / "val-*.tar"))) == 2
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        shard_paths(str(tmp_path / "nothing-here"))

    prompts = _generated_from(synth, tmp_path / "gen")
    skipped = Counter()
    gen = list(iter_generated(tmp_path / "gen", skipped))
    assert [g.key for g in gen] == [f"gen_{i}" for i in range(6)]
    assert skipped == {"undecodable": 1}
    assert [g.prompt for g in gen] == [*[prompts[f"gen_{i}.mp4"] for i in range(5)], None]
    np.testing.assert_array_equal(gen[0].frames, decode_video(tmp_path / "gen" / "gen_0.mp4"))


def test_prompt_sidecar_errors(tmp_path) -> None:
    assert read_prompts(tmp_path) == {}
    (tmp_path / "prompts.jsonl").write_text('{"video": "a.mp4", "prompt": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="prompts.jsonl:2"):
        read_prompts(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"name": "a.mp4", "prompt": "x"}\n')
    with pytest.raises(ValueError, match="video name"):
        read_prompts(tmp_path)
    (tmp_path / "prompts.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no .mp4"):
        list(iter_generated(tmp_path, Counter()))


def test_mean_scores_nested_and_skips_nan() -> None:
    rows = [
        {"a": 1.0, "q": {"q1": 0.0, "q2": 1.0}, "ok": True},
        {"a": 3.0, "q": {"q1": float("nan"), "q2": 0.0}, "ok": False},
    ]
    assert mean_scores(rows) == {"a": 2.0, "q": {"q1": 0.0, "q2": 0.5}, "ok": 0.5}


def test_evaluate_with_injected_scorer_and_fvd(synth, i3d, tmp_path) -> None:
    """The orchestration with an independent scorer (mean red level)."""
    _generated_from(synth, tmp_path / "gen")

    def scorer(frames: np.ndarray, prompt: str) -> dict:
        if "never" in prompt:
            raise ValueError("unscorable")
        return {"red": float(frames[..., 0].mean())}

    cfg = EvalConfig(shards=str(synth), generated=str(tmp_path / "gen"))
    cfg.fvd.i3d = str(i3d)
    cfg.fvd.protocols = ["fvd8"]
    cfg.fvd.full_length = True
    cfg.fvd.cache = ""
    report = evaluate(cfg, scorer=scorer)
    real, gen = report["sets"]["real"], report["sets"]["generated"]
    assert real["videos"] == 6 and real["scored"] == 6
    assert gen["videos"] == 6 and gen["scored"] == 5
    assert gen["skipped"] == {"undecodable": 1, "no_prompt": 1}
    # Reference for the real set: the mean over videos of each video's mean red level.
    videos = [it.frames for it in iter_shards(str(synth), Counter())]
    assert real["groundtruth"]["red"] == pytest.approx(np.mean([v[..., 0].mean() for v in videos]))
    # Quarters: frames [0, 5), [5, 10), [10, 15), [15, 20) of each 20-frame video.
    q4 = np.mean([v[15:, ..., 0].mean() for v in videos])
    assert real["groundtruth"]["quarters"]["q4"]["red"] == pytest.approx(q4)
    # Generated = re-encoded real videos: FVD small but defined; every clip counted.
    fvd = report["fvd"]
    assert set(fvd) == {"fvd8", "fvd_full"}
    assert fvd["fvd8"]["real_clips"] == 6 and fvd["fvd8"]["generated_clips"] == 6
    assert 0 <= fvd["fvd8"]["fvd"] < 1e-2
    md = to_markdown(report)
    assert "| metric | real q1 | real q2 | real q3 | real q4 | generated q1 |" in md
    assert "fvd_full" in md


def test_cli_writes_json_and_markdown(synth, i3d, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    gen = tmp_path / "gen"
    gen.mkdir()
    for i, item in enumerate(iter_shards(str(synth), Counter())):
        noisy = np.clip(item.frames.astype(int) + 60 * (i % 2), 0, 255).astype(np.uint8)
        write_video(gen / f"v{i}.mp4", noisy, fps=8.0)
    code = main(
        ["eval", "--shards", str(synth / "val-{000000..000001}.tar"), "--generated", str(gen),
         "--i3d", str(i3d), "--out", str(out), "groundtruth=false", f"fvd.cache={tmp_path}/c"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["fvd"]["fvd16"]["fvd"] > 1e-3  # brightened videos are measurably different
    assert "fvd_full" not in report["fvd"]
    # 20-frame videos: none long enough for FVD_128, each counted, no figure.
    assert report["fvd"]["fvd128"]["fvd"] is None and report["fvd"]["fvd128"]["too_short"] == 12
    assert report["sets"]["generated"]["groundtruth"] is None
    assert (out / "eval.md").read_text() == capsys.readouterr().out.rstrip("\n") + "\n"


def test_cli_errors_name_the_input(synth, tmp_path, capsys) -> None:
    assert main(["eval", "--shards", str(synth), "--i3d", str(tmp_path / "no_i3d.pt")]) == 2
    assert "no_i3d.pt" in capsys.readouterr().err
    assert main(["eval", "fvd.clip_frame=16", "--shards", str(synth)]) == 2
    assert "clip_frame" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path / "x")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(synth / "val.plan.json", empty)
    assert main(["eval", "--generated", str(empty), "groundtruth=false"]) == 2
    assert "no .mp4" in capsys.readouterr().err


def test_reconstruction_part_uses_the_vae_eval(synth, tmp_path, capsys) -> None:
    """`--vae` runs the VAE package's reconstruction eval on the shard set; its PSNR equals a
    direct computation with the same VAE."""
    from cinemamba.latents.clips import to_pixels
    from cinemamba_vae import VideoAutoencoder, vae_preset
    from cinemamba_vae.metrics import frames_psnr

    torch.manual_seed(0)
    vae = VideoAutoencoder(vae_preset("tiny")).eval()
    vae.save_pretrained(tmp_path / "vae")
    code = main(["eval", "--shards", str(synth), "--vae", str(tmp_path / "vae"),
                 "--out", str(tmp_path / "r"), "groundtruth=false",
                 "reconstruction.max_videos=1", "reconstruction.clip_frames=9"])  # fmt: skip
    assert code == 0
    rec = json.loads((tmp_path / "r" / "eval.json").read_text())["reconstruction"]
    assert rec["clips"] == 1 and rec["lpips"] is None
    items = list(iter_shards(str(synth), Counter(), max_frames=9))[:1]
    with torch.no_grad():
        psnr = [
            frames_psnr(v := to_pixels(torch.from_numpy(it.frames))[None], vae.decode(vae.encode(v, sample=False))).mean()
            for it in items
        ]  # fmt: skip
    assert rec["psnr"] == pytest.approx(float(np.mean(psnr)), rel=1e-4)
    assert "## VAE reconstruction" in (tmp_path / "r" / "eval.md").read_text()
    # --max-videos bounds the reconstruction too (its own default is 16 videos; the set has 6).
    code = main(["eval", "--shards", str(synth), "--vae", str(tmp_path / "vae"), "--max-videos", "2",
                 "--out", str(tmp_path / "r2"), "groundtruth=false", "reconstruction.clip_frames=9"])  # fmt: skip
    assert code == 0
    assert json.loads((tmp_path / "r2" / "eval.json").read_text())["reconstruction"]["clips"] == 2
    assert main(["eval", "--generated", str(tmp_path), "--vae", str(tmp_path / "vae")]) == 2
    assert "needs `shards`" in capsys.readouterr().err


def test_score_with_quarters_splits_the_video() -> None:
    frames = np.zeros((22, 4, 4, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(22)[:, None, None]  # red level = frame index

    def scorer(f: np.ndarray, prompt: str) -> dict:
        return {"n": len(f), "red": float(f[..., 0].mean())}

    got = score_with_quarters(scorer, frames, "p")
    assert (got["n"], got["red"]) == (22, 10.5)
    assert [q["n"] for q in got["quarters"].values()] == [
        6,
        5,
        5,
        6,
    ]  # edges 0, 6, 11, 16, 22 (round half to even)
    assert got["quarters"]["q1"]["red"] == pytest.approx(2.5)
    assert got["quarters"]["q4"]["red"] == pytest.approx(18.5)
    assert "quarters" not in score_with_quarters(scorer, frames[:7], "p")  # too short to split
    own = score_with_quarters(lambda f, p: {"quarters": {"q1": 1.0}}, frames, "p")
    assert own == {"quarters": {"q1": 1.0}}  # a scorer's own quarters are kept


def test_default_scorer_on_real_videos_and_wrong_prompts(synth, tmp_path) -> None:
    """With the classical detector: real synthetic videos score near 1 against their own
    captions (the ceiling), overall and per quarter; the same videos under prompts naming
    another colour score near 0 on colour and identity."""
    from cinemamba.data.synth import COLOUR_NAMES, COLOUR_WORDS, parse_caption

    gen = tmp_path / "gen"
    gen.mkdir()
    for i, item in enumerate(iter_shards(str(synth), Counter())):
        write_video(gen / f"v{i}.mp4", item.frames, fps=8.0)
        spec = parse_caption(item.prompt)[0]
        other = COLOUR_NAMES[(COLOUR_NAMES.index(spec.colour) + 3) % len(COLOUR_NAMES)]
        words = [w for w in COLOUR_WORDS[spec.colour] if w in item.prompt.split()]
        (gen / f"v{i}.txt").write_text(item.prompt.replace(words[0], other, 1))
    report = evaluate(EvalConfig(shards=str(synth), generated=str(gen), fvd=FVDConfig(i3d="")))
    real = report["sets"]["real"]["groundtruth"]
    assert report["sets"]["real"]["scored"] == 6
    for key in ("colour_accuracy", "shape_accuracy", "motion_accuracy", "identity_persistence"):
        assert real[key] >= 0.85, (key, real[key])
        assert min(real["quarters"][q][key] for q in ("q1", "q2", "q3", "q4")) >= 0.75
    wrong = report["sets"]["generated"]["groundtruth"]
    assert wrong["colour_accuracy"] <= 0.05 and wrong["identity_persistence"] <= 0.05
