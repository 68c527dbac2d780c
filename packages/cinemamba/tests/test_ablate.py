"""`cinemamba ablate`: mixer entries and overrides, lengths, loss/memory measurement, the
report and plot from a results dict, and config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cinemamba.ablate import (
    AblationConfig,
    AblationEval,
    _final_loss,
    ablation_stages,
    eval_lengths,
    eval_prompts,
    mixer_overrides,
    mixer_pattern,
    train_overrides,
    train_step_memory,
    write_report,
)
from cinemamba.cli import main
from cinemamba.data.synth import parse_caption
from cinemamba.tasks.backbone import load_backbone_experiment
from cinemamba_backbone import BackboneConfig

REPO = Path(__file__).resolve().parents[3]
EXPERIMENT = str(REPO / "configs/experiment/backbone_tiny.yaml")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids 2-thread stalls on the shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mixer_entries_and_training_overrides(tmp_path) -> None:
    assert mixer_pattern("bimamba") == ["bimamba"]
    assert mixer_pattern("bimamba+attention") == ["bimamba", "attention"]
    with pytest.raises(ValueError, match="'mambo'.*valid"):
        mixer_pattern("mambo+attention")
    cfg = AblationConfig(experiment=EXPERIMENT, vae="v", latents="l", steps=7, seed=5,
                         overrides=["train.batch_size=2"])  # fmt: skip
    for name, blocks in [
        ("mamba", ["mamba", "mamba"]),
        ("attention+bimamba", ["attention", "bimamba"]),
    ]:
        exp = load_backbone_experiment(cfg.experiment, train_overrides(cfg, name, tmp_path / "r"))
        assert exp.task.backbone.block_mixers() == blocks
        assert (exp.train.steps, exp.train.seed, exp.train.batch_size) == (7, 5, 2)
        assert exp.train.run_dir == str(tmp_path / "r")
        assert (exp.task.vae, exp.task.data.path) == ("v", "l")
    # The mixer's own overrides come last, so a shared override cannot change the mixer.
    assert train_overrides(cfg, "mamba", tmp_path)[-2:] == mixer_overrides("mamba")


def test_eval_lengths_and_prompts() -> None:
    cfg = AblationConfig(eval=AblationEval(lengths=[1, 4, 8], prompts=5))
    # m times the training clip's frame intervals: latent frames scale by m for a causal VAE.
    assert eval_lengths(cfg, 17) == {"1x": 17, "4x": 65, "8x": 129}
    prompts = eval_prompts(cfg)
    assert len(prompts) == 5 and len(set(prompts)) == 5
    assert all(parse_caption(p) for p in prompts)  # every prompt is scorable
    assert eval_prompts(cfg) == prompts  # a pure function of the seed


def test_final_loss_from_log(tmp_path) -> None:
    rows = [
        {"kind": "train", "step": s, "time": s * 0.5, "backbone/loss": float(100 - s)}
        for s in range(1, 21)
    ]
    rows.insert(3, {"kind": "eval", "step": 3, "time": 1.0, "sample_seconds": 2.0})
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    loss, seconds = _final_loss(tmp_path / "log.jsonl")
    assert loss == pytest.approx(np.mean([81.0, 80.0]))  # last 10% of 20 logged steps
    assert seconds == pytest.approx(10.0)
    assert _final_loss(tmp_path / "missing.jsonl") == (None, None)


def test_train_step_memory_grows_with_batch_and_attention_length() -> None:
    arch = BackboneConfig.from_preset("tiny", in_channels=4, text_dim=16, sample_size=4)
    small = train_step_memory(arch, (4, 3, 4, 4), (5, 16), batch=1)
    big = train_step_memory(arch, (4, 3, 4, 4), (5, 16), batch=4)
    assert 0 < small < big


def _fake_results() -> dict:
    tags = {"1x": 17, "4x": 65}
    cfg = AblationConfig(experiment=EXPERIMENT, steps=10)
    cfg.eval.lengths = [1, 4]
    cfg.eval.headline = ["colour", "quarters/q4"]
    from dataclasses import asdict

    def lengths(base: float) -> dict:
        return {t: {"frames": f, "videos": 2, "seconds_per_video": 0.1 * f, "sample_peak_mib": f / 10,
                    "scores": {"colour": base / (1 + i), "quarters": {"q1": base, "q4": base / 2}}}
                for i, (t, f) in enumerate(tags.items())}  # fmt: skip

    mixers = {
        name: {"mixer": name, "pattern": name.split("+"), "params": 1000 + k, "steps": 10,
               "batch_size": 8, "train_seconds": 12.5 + k, "wall_seconds": 20.0,
               "peak_rss_mib": 900.0, "step_peak_mib": 3.0 + k, "final_loss": 0.5 - 0.1 * k,
               "lengths": lengths(0.9 - 0.2 * k)}
        for k, name in enumerate(["bimamba", "attention", "bimamba+attention"])
    }  # fmt: skip
    ceiling = {t: {"frames": f, "videos": 2, "scores": {"colour": 1.0, "quarters": {"q1": 1.0, "q4": 1.0}}}
               for t, f in tags.items()}  # fmt: skip
    return {"config": asdict(cfg), "mixers": mixers, "ceiling": ceiling}


def test_report_markdown_and_plot(tmp_path) -> None:
    results = _fake_results()
    json_path, md_path, png_path = write_report(results, tmp_path)
    assert json.loads(json_path.read_text())["mixers"]["attention"]["params"] == 1001
    md = md_path.read_text()
    assert "| bimamba+attention | bimamba+attention | 1002 |" in md
    assert "## `colour` by generated length" in md
    assert "| attention | 0.7 | 0.35 |" in md  # colour at 1x and 4x for the second mixer
    assert "| real videos (ceiling) | 1 | 1 |" in md
    assert "| quarters / q4 |" in md
    with Image.open(png_path) as img:
        assert img.size[0] > 800 and img.size[1] > 300


def test_ablation_config_errors(tmp_path, capsys) -> None:
    cfg = AblationConfig(experiment=EXPERIMENT, vae=str(tmp_path), latents=str(tmp_path))
    cfg.mixers = ["bimamba", "nope"]
    with pytest.raises(ValueError, match="'nope'"):
        ablation_stages(cfg, scorer=lambda v, p: {})
    cfg.mixers = ["bimamba"]
    cfg.latents = str(tmp_path / "no-latents")
    with pytest.raises(ValueError, match="latents"):
        ablation_stages(cfg, scorer=lambda v, p: {})
    yaml = tmp_path / "a.yaml"
    yaml.write_text(f"experiment: {EXPERIMENT}\nsteps: 3\n")
    assert main(["ablate", str(yaml), "mixer=[mamba]"]) == 2
    assert "mixer" in capsys.readouterr().err
