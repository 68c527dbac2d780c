"""Engine configuration: DeepSpeed file merging, overrides, and errors that name key and fix.

No process group is started here: every check must fail before any work.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cinemamba.config import ConfigError
from cinemamba.train import OptimizerConfig, TrainConfig, load_experiment, train
from cinemamba.train.config import deepspeed_dict, validate
from cinemamba.train.ema import EMA
from cinemamba.train.optim import StepGate
from cinemamba.train.schedule import lr_at
from cinemamba.train.toy import RegressionTask, ToyConfig, ToyExperiment


def _load(*overrides: str, path: Path | None = None) -> ToyExperiment:
    return OmegaConf.to_object(load_experiment(ToyExperiment, path, overrides))


def test_deepspeed_file_merged_and_overridable() -> None:
    """The named DeepSpeed file lands under train.deepspeed; any key can be overridden."""
    exp = _load("train.deepspeed_config=zero3")
    assert exp.train.deepspeed["zero_optimization"]["stage"] == 3
    assert exp.train.deepspeed_config.endswith("configs/deepspeed/zero3.yaml")
    exp = _load(
        "train.deepspeed_config=zero2",
        "train.deepspeed.zero_optimization.stage=1",
        "train.deepspeed.zero_optimization.reduce_bucket_size=1000",
        "train.deepspeed.wall_clock_breakdown=true",
    )
    zero = exp.train.deepspeed["zero_optimization"]
    assert zero["stage"] == 1 and zero["reduce_bucket_size"] == 1000
    ds = deepspeed_dict(exp.train, world_size=2)
    assert ds["wall_clock_breakdown"] is True and ds["zero_optimization"]["stage"] == 1
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 4
    # a TrainConfig built in code gets its file too, with its own dict on top
    cfg = TrainConfig(deepspeed_config="zero2", deepspeed={"zero_optimization": {"stage": 1}})
    assert deepspeed_dict(cfg, 1)["zero_optimization"]["reduce_bucket_size"] == 50_000_000
    assert deepspeed_dict(cfg, 1)["zero_optimization"]["stage"] == 1


def test_experiment_file_and_per_model_optimizer(tmp_path: Path) -> None:
    """An experiment YAML picks the DeepSpeed file; per-model optimizer overrides merge."""
    yaml = tmp_path / "exp.yaml"
    yaml.write_text(
        "train:\n  deepspeed_config: zero2\n  optimizers:\n    critic:\n      lr: 0.5\n"
        "task:\n  adversarial: true\n"
    )
    exp = _load("train.optimizers.critic.weight_decay=0.1", path=yaml)
    assert exp.train.deepspeed["zero_optimization"]["stage"] == 2
    from cinemamba.train.config import optimizer_config

    critic = optimizer_config(exp.train, "critic")
    assert (critic.lr, critic.weight_decay, critic.name) == (0.5, 0.1, "adamw")
    assert optimizer_config(exp.train, "regressor").lr == OptimizerConfig().lr


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (["train.stepz=3"], 1, r"unknown config key 'train.stepz'.*Did you mean 'steps'"),
        (["train.batch_size=10", "train.grad_accum=2"], 2, r"train.batch_size=10 is not divisible by world size \(2\) x train.grad_accum \(2\) = 4; set train.batch_size to a multiple of 4"),
        (["train.deepspeed_config=zero3", "train.deepspeed.zero_optimization.round_robin_gradients=true"], 1, r"round_robin_gradients does not work with ZeRO stage 3"),
        (["train.deepspeed_config=zero2", "train.deepspeed.zero_optimization.offload_param.device=cpu"], 1, r"offload_param needs ZeRO stage 3.*set zero_optimization.stage=3"),
        (["train.deepspeed_config=zero3", "train.deepspeed.zero_optimization.stage=2"], 1, r"stage3_prefetch_bucket_size needs ZeRO stage 3"),
        (["train.deepspeed_config=zero3_offload"], 1, r"needs DeepSpeed's CPU Adam; set train.optimizer.name=cpu_adam"),
        (["train.deepspeed.gradient_clipping=2.0"], 1, r"train.deepspeed.gradient_clipping is set by the engine from train.grad_clip"),
        (["train.deepspeed.zero_optimisation.stage=2"], 1, r"unknown DeepSpeed key train.deepspeed.zero_optimisation"),
        (["train.deepspeed.zero_optimization.stagee=2"], 1, r"train.deepspeed.zero_optimization.stagee: Extra inputs are not permitted; remove it"),
        (["train.deepspeed_config=zero9"], 1, r"train.deepspeed_config='zero9'.*known: .*zero2"),
        (["train.precision=fp16"], 1, r"train.precision='fp16' is not one of fp32, bf16"),
        (["train.nonfinite=ignore"], 1, r"train.nonfinite='ignore' is not one of skip, stop"),
        (["train.optimizer.name=sgd"], 1, r"train.optimizer.name='sgd' is not one of"),
        (["train.optimizers.critic.lrr=1"], 1, r"unknown config key 'lrr' in train.optimizers.critic"),
        (["train.resume=/nonexistent/ckpt"], 1, r"train.resume='/nonexistent/ckpt': no such checkpoint"),
    ],
)  # fmt: skip
def test_bad_config_names_key_and_fix(overrides: list[str], world: int, message: str) -> None:
    """Each bad setting fails in loading or validation, before any process group exists."""
    with pytest.raises(ConfigError, match=message):
        validate(_load(*overrides).train, world)


def test_bad_config_fails_before_any_work(tmp_path: Path) -> None:
    """`train()` rejects a bad config and a missing data path before creating the run dir."""
    run = tmp_path / "run"
    cfg = TrainConfig(run_dir=str(run), batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match="train.batch_size=6"):
        train(cfg, RegressionTask(ToyConfig()))
    cfg = TrainConfig(run_dir=str(run))
    with pytest.raises(ConfigError, match=r"task.data='/missing.pt' does not exist"):
        train(cfg, RegressionTask(ToyConfig(data="/missing.pt")))
    assert not run.exists()


def test_unknown_model_in_optimizers() -> None:
    """Per-model settings for a model the task does not build are an error naming both."""
    exp = _load("train.optimizers.discriminator.lr=1e-5")
    with pytest.raises(
        ConfigError, match=r"train.optimizers.discriminator names no model.*regressor"
    ):
        validate(exp.train, 1, ["regressor"])


def test_lr_schedule_warmup_then_cosine() -> None:
    """Linear warmup to lr, then cosine to lr * min_lr_ratio at the last step."""
    opt = OptimizerConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_at(opt, s, 104) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    for s in (4, 30, 54, 80, 103):
        expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 100))
        assert lr_at(opt, s, 104) == pytest.approx(expected)
    assert lr_at(OptimizerConfig(lr=2.0, schedule="constant"), 50, 100) == 2.0


def test_ema_math_and_swap() -> None:
    """EMA against a float64 hand computation; swapped_in restores the trained weights."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.75)
    ref = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        for n, p in model.named_parameters():
            ref[n] = 0.75 * ref[n] + 0.25 * p.detach().double()
    for n in ref:
        torch.testing.assert_close(ema.shadow[n].double(), ref[n], rtol=1e-6, atol=1e-7)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.swapped_in():
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach().double(), ref[n], rtol=1e-6, atol=1e-7)
    for n, p in model.named_parameters():
        assert torch.equal(p, trained[n])
    copy = EMA(torch.nn.Linear(3, 2), decay=0.75)
    copy.load_state_dict(ema.state_dict())
    assert all(torch.equal(copy.shadow[n], ema.shadow[n]) for n in ref)


def test_step_gate_skips_only_the_gated_step() -> None:
    """A gated step leaves weights and Adam moments untouched; the next one runs."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    gate = StepGate(opt)
    p.grad = torch.full((3,), float("nan"))
    gate.skip = True
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state
    gate.skip = False
    p.grad = torch.ones(3)
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3)) and opt.state[p]["step"] == 1
