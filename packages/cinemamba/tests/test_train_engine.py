"""Single-process engine runs (in this process): ZeRO-0 training, checkpoints, EMA, export,
non-finite handling and preemption signals, checked against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinemamba.train import TrainConfig, export_weights, train
from cinemamba.train import checkpoint as ckpt_io
from cinemamba.train.toy import RegressionTask, ToyConfig

pytestmark = pytest.mark.distributed


def _cfg(run_dir: Path, **kw) -> TrainConfig:
    base = dict(
        run_dir=str(run_dir), steps=6, batch_size=8, grad_accum=2, log_every=1,
        checkpoint_every=1, keep_last=100, progress=False, ema_decay=0.9,
    )  # fmt: skip
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.optimizer.lr = 5e-2
    cfg.optimizer.warmup_steps = 2
    return cfg


def _records(run_dir: Path, kind: str = "train") -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _weights(run_dir: Path, step: int, ema: bool = False) -> dict[str, torch.Tensor]:
    ckpt = ckpt_io.checkpoint_root(run_dir) / ckpt_io.step_dir_name(step)
    out = run_dir / f"w{step}{'e' if ema else ''}.safetensors"
    export_weights(ckpt, out, ema=ema)
    return load_file(str(out))


def test_zero0_run_checkpoints_ema_and_logs(tmp_path: Path) -> None:
    """Loss falls; every step checkpoints; EMA_k = d*EMA_{k-1} + (1-d)*W_k from W_0."""
    run = tmp_path / "run"
    result = train(_cfg(run), RegressionTask(ToyConfig()))
    assert result.reason == "done" and result.step == 6
    recs = _records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    losses = [r["regressor/loss"] for r in recs]
    assert sum(losses[3:]) < 0.8 * sum(losses[:3])
    for key in ("regressor/lr", "regressor/grad_norm", "perf/samples_per_s", "perf/data_wait_s",
                "perf/compute_s", "perf/peak_memory_gb", "data/skipped_corrupt"):  # fmt: skip
        assert key in recs[-1], key
    assert _records(run, "eval")[-1]["step"] == 6
    assert any((run / "tensorboard").iterdir())
    # linear warmup over 2 steps, then cosine to 0 at step 6
    lrs = [r["regressor/lr"] for r in recs]
    assert lrs[:2] == pytest.approx([2.5e-2, 5e-2])
    assert lrs[-1] == pytest.approx(
        5e-2 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 4))).item()
    )

    torch.manual_seed(0)  # the engine builds the models right after seeding with train.seed
    w0 = {
        k: v.float()
        for k, v in RegressionTask(ToyConfig()).build_models()["regressor"].state_dict().items()
    }
    ema = w0
    for step in range(1, 7):
        w = _weights(run, step)
        ema = {k: 0.9 * ema[k] + 0.1 * w[k] for k in w}
        got = _weights(run, step, ema=True)
        for k in w:
            torch.testing.assert_close(got[k], ema[k], rtol=1e-6, atol=1e-7)


def test_keep_last_and_atomic_layout(tmp_path: Path) -> None:
    """Only the last K checkpoints stay, none under a temporary name."""
    run = tmp_path / "run"
    train(_cfg(run, steps=5, keep_last=2, ema_decay=0.0), RegressionTask(ToyConfig()))
    names = sorted(p.name for p in ckpt_io.checkpoint_root(run).iterdir())
    assert names == ["step_00000004", "step_00000005"]
    ckpt = ckpt_io.checkpoint_root(run) / "step_00000005"
    state = ckpt_io.read_trainer_state(ckpt)
    assert state["step"] == 5 and state["data_batches"] == 10 and state["models"] == ["regressor"]
    assert (ckpt / "rng" / "rank_00000.pt").is_file()
    with pytest.raises(FileNotFoundError, match="no EMA"):
        export_weights(run, tmp_path / "x.safetensors", ema=True)
