"""Single-process engine runs (in this process): ZeRO-0 training, checkpoints, EMA, export,
non-finite handling and preemption signals, checked against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cinemamba.train import NonFiniteError, TrainConfig, consolidate, export_weights, train
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


def _weights(
    run_dir: Path, step: int, ema: bool = False, model: str | None = None
) -> dict[str, torch.Tensor]:
    ckpt = ckpt_io.checkpoint_root(run_dir) / ckpt_io.step_dir_name(step)
    out = run_dir / f"w{step}{'e' if ema else ''}{model}.safetensors"
    export_weights(ckpt, out, ema=ema, model=model)
    return load_file(str(out))


def test_zero0_run_checkpoints_ema_and_logs(tmp_path: Path) -> None:
    """Loss falls; every step checkpoints; EMA_k = d*EMA_{k-1} + (1-d)*W_k from W_0."""
    run = tmp_path / "run"
    result = train(_cfg(run), RegressionTask(ToyConfig()))
    assert result.reason == "done" and result.step == 6
    recs = _records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
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


def test_learns_the_regression(tmp_path: Path) -> None:
    """20 steps cut the training loss and the held-out error well below the untrained model's."""
    run = tmp_path / "run"
    task = RegressionTask(ToyConfig())
    train(_cfg(run, steps=20, checkpoint_every=0, ema_decay=0.0), task)
    losses = [r["regressor/loss"] for r in _records(run)]
    assert sum(losses[-5:]) < 0.3 * sum(losses[:5])
    torch.manual_seed(0)
    untrained = RegressionTask(ToyConfig()).build_models()
    before = task.evaluate(untrained, 0, run)["mse"]
    assert _records(run, "eval")[-1]["mse"] < 0.3 * before


def test_grad_accum_matches_one_big_batch(tmp_path: Path) -> None:
    """4 micro-batches of 2 give the step of one batch of 8, for both models of a GAN-like pair
    (the loss through the frozen critic is not rescaled a second time)."""
    runs = {}
    for accum in (1, 4):
        runs[accum] = tmp_path / f"a{accum}"
        cfg = _cfg(runs[accum], steps=3, grad_accum=accum, ema_decay=0.0)
        train(cfg, RegressionTask(ToyConfig(adversarial=True, critic_weight=1.0)))
    for model in ("regressor", "critic"):
        a, b = (_weights(runs[k], 3, model=model) for k in (1, 4))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_phase_skipped_until_it_starts(tmp_path: Path) -> None:
    """A phase whose loss is None (a discriminator that starts late) neither steps nor logs."""
    run = tmp_path / "run"
    train(_cfg(run, steps=4, ema_decay=0.0), RegressionTask(ToyConfig(adversarial=True, critic_start=2)))  # fmt: skip
    logged = [("critic/loss" in r) for r in _records(run)]
    assert logged == [False, False, True, True]
    torch.manual_seed(0)
    initial = RegressionTask(ToyConfig(adversarial=True)).build_models()["critic"].state_dict()
    c2, c3 = (_weights(run, s, model="critic") for s in (2, 3))
    assert all(torch.equal(c2[k], initial[k]) for k in c2)
    assert not all(torch.equal(c3[k], initial[k]) for k in c3)


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
    # the command line gives the same file as the function; the run dir means its latest
    assert consolidate.main([str(run), str(tmp_path / "cli.safetensors"), "--no-ema"]) == 0
    ref = _weights(run, 5)
    cli = load_file(str(tmp_path / "cli.safetensors"))
    assert sorted(cli) == sorted(ref) and all(torch.equal(cli[k], ref[k]) for k in ref)


@pytest.mark.parametrize("stage", ["zero0", "zero3"])
@pytest.mark.parametrize("fault", ["fault_nan_loss_at", "fault_nan_grad_at"])
def test_nonfinite_skip_leaves_weights_unchanged(tmp_path: Path, fault: str, stage: str) -> None:
    """A non-finite loss or gradient at step 2 skips that optimizer step only."""
    run = tmp_path / "run"
    cfg = _cfg(run, steps=4, ema_decay=0.5, deepspeed_config=stage)
    result = train(cfg, RegressionTask(ToyConfig(**{fault: 2})))
    assert result.step == 4
    recs = _records(run)
    assert [r["regressor/skipped"] for r in recs] == [0, 0, 1, 0]
    assert recs[-1]["regressor/nonfinite_steps"] == 1
    w2, w3, w4 = (_weights(run, s) for s in (2, 3, 4))
    e2, e3 = (_weights(run, s, ema=True) for s in (2, 3))
    for k in w2:
        assert torch.equal(w2[k], w3[k])  # skipped: weights and EMA untouched
        assert torch.equal(e2[k], e3[k])
        assert torch.isfinite(w4[k]).all() and not torch.equal(w3[k], w4[k])


def test_nonfinite_stop_names_the_step(tmp_path: Path) -> None:
    """With nonfinite=stop the run raises, naming the step; the weights stay finite."""
    run = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"step 2: non-finite loss in phase 'regressor'"):
        train(_cfg(run, steps=4, nonfinite="stop"), RegressionTask(ToyConfig(fault_nan_loss_at=2)))
    assert ckpt_io.latest_checkpoint(run).name == "step_00000002"
    assert all(torch.isfinite(v).all() for v in _weights(run, 2).values())


def test_sigterm_checkpoints_and_stops(tmp_path: Path) -> None:
    """Preemption (SIGTERM during step 3) ends the run after that step, with a checkpoint."""
    run = tmp_path / "run"
    cfg = _cfg(run, steps=10, checkpoint_every=0)
    result = train(cfg, RegressionTask(ToyConfig(fault_sigterm_at=3)))
    assert result.reason == "signal" and result.step == 4
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["step_00000004"]
    # the same run resumes from there and finishes
    result = train(cfg, RegressionTask(ToyConfig()))
    assert result.reason == "done" and result.step == 10


def test_bf16_two_models_zero1(tmp_path: Path) -> None:
    """bf16 under ZeRO-1 with two optimizers: finite losses; EMA follows the fp32 masters."""
    run = tmp_path / "run"
    cfg = _cfg(run, steps=3, precision="bf16", deepspeed_config="zero1", ema_decay=0.5)
    result = train(cfg, RegressionTask(ToyConfig(adversarial=True)))
    assert result.step == 3
    rec = _records(run)[-1]
    assert all(torch.isfinite(torch.tensor(rec[k])) for k in ("regressor/loss", "critic/loss"))
    for model in ("regressor", "critic"):
        masters = _weights(run, 3, model=model)  # consolidated fp32 master weights
        e2, e3 = (_weights(run, s, ema=True, model=model) for s in (2, 3))
        for k, w in masters.items():
            assert w.dtype == torch.float32
            # bf16-rounded weights would miss this by ~1e-3 relative
            torch.testing.assert_close(e3[k], 0.5 * e2[k] + 0.5 * w, rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # the first run compiles DeepSpeed's CPU Adam (minutes); cached in .venv after
def test_optimizer_offload_matches_adamw(tmp_path: Path) -> None:
    """ZeRO-2 with the optimizer offloaded (DeepSpeed CPU Adam) follows the ZeRO-0 AdamW run,
    and a non-finite gradient still leaves the offloaded weights unchanged."""
    ref, off = tmp_path / "ref", tmp_path / "off"
    train(_cfg(ref, steps=4, ema_decay=0.0), RegressionTask(ToyConfig(fault_nan_grad_at=2)))
    cfg = _cfg(off, steps=4, ema_decay=0.0, deepspeed_config="zero2_offload")
    cfg.optimizer.name = "cpu_adam"
    train(cfg, RegressionTask(ToyConfig(fault_nan_grad_at=2)))
    assert [r["regressor/skipped"] for r in _records(off)] == [0, 0, 1, 0]
    for step in (1, 2, 3, 4):
        a, b = _weights(ref, step), _weights(off, step)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
