"""A small regression task: the engine's smoke test on any cluster, and its test stand-in.

`python -m cinemamba.train.toy train.steps=50` (or under torchrun / the deepspeed launcher)
trains an MLP on synthetic data that is a pure function of (seed, sample index), so runs with
different world sizes see the same global batches and resumed runs see the same data. With
`task.adversarial=true` a second model (a critic) trains in its own phase, as a GAN's
discriminator would. The `fault_*` fields inject failures for the engine's tests.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cinemamba.config import ConfigError
from cinemamba.train.config import TrainConfig
from cinemamba.train.runner import main as runner_main
from cinemamba.train.task import DataSpec, LossOutput

HELD_OUT = 2**40  # the evaluation stream; training streams are blocks of sample indices
_BLOCK = 64  # samples drawn per generator seed


@dataclass
class ToyConfig:
    """The regression problem and fault injection for tests (-1: off)."""

    dim: int = 8
    hidden: int = 16
    noise: float = 0.1
    data: str = ""  # optional .pt file with tensors x (N, dim), y (N, 1); empty: synthetic
    adversarial: bool = False  # add a critic model and phase (two optimizers)
    critic_weight: float = 0.1
    critic_start: int = 0  # the critic phase is skipped before this step (a GAN's late start)
    input_noise: float = 0.0  # augmentation drawn from the python, numpy and torch RNGs
    bad_every: int = 0  # every n-th sample is "corrupt": dropped and counted (logging test)
    fault_nan_loss_at: int = -1  # step whose loss is NaN
    fault_nan_grad_at: int = -1  # step whose loss is finite but gradient is NaN
    fault_kill_at: int = -1  # SIGKILL this process at the start of this step
    fault_sigterm_at: int = -1  # send this process SIGTERM (preemption) at this step
    fault_crash_in_checkpoint_at: int = -1  # exit mid-way through writing this step's checkpoint


@dataclass
class ToyExperiment:
    """Experiment schema: the engine config next to the task's."""

    train: TrainConfig = field(default_factory=TrainConfig)
    task: ToyConfig = field(default_factory=ToyConfig)


def _mlp(dim: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, out))


class RegressionTask:
    """Fit y = w.x + noise with an MLP; optionally against a critic of its predictions."""

    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg = cfg
        self.phases = ["regressor", "critic"] if cfg.adversarial else ["regressor"]
        self.dropped = 0
        self.seed = 0
        self.table: tuple[torch.Tensor, torch.Tensor] | None = None

    def validate(self) -> None:
        """The data path must exist before any work starts."""
        if self.cfg.data and not Path(self.cfg.data).is_file():
            raise ConfigError(
                f"task.data={self.cfg.data!r} does not exist; give an existing .pt file or "
                "task.data='' for synthetic data"
            )

    def build_models(self) -> dict[str, nn.Module]:
        """One regressor, plus a critic in adversarial mode."""
        models = {"regressor": _mlp(self.cfg.dim, self.cfg.hidden, 1)}
        if self.cfg.adversarial:
            models["critic"] = _mlp(self.cfg.dim + 1, self.cfg.hidden, 1)
        return models

    def _synthetic(self, seed: int, stream: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`count` samples of y = w.x + noise; w depends on `seed`, x on (seed, stream)."""
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(self.cfg.dim, 1, generator=gen)
        gen.manual_seed(seed * 1_000_003 + stream)
        x = torch.randn(count, self.cfg.dim, generator=gen)
        y = x @ w + self.cfg.noise * torch.randn(count, 1, generator=gen)
        return x, y

    def _samples(self, seed: int, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples `first .. first+count-1` of the stream: a pure function of the sample index,
        so the same global batch comes out however it is split over ranks and micro-batches."""
        if self.cfg.data:
            if self.table is None:
                blob = torch.load(self.cfg.data, weights_only=True)
                self.table = (blob["x"].float(), blob["y"].float())
            x, y = self.table
            idx = torch.arange(first, first + count) % len(x)
            return x[idx], y[idx]
        blocks = range(first // _BLOCK, (first + count - 1) // _BLOCK + 1)
        parts = [self._synthetic(seed, b, _BLOCK) for b in blocks]
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        start = first - blocks[0] * _BLOCK
        return x[start : start + count], y[start : start + count]

    def train_data(self, spec: DataSpec) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batch j of rank r: global samples (j*W + r)*m ... (j*W + r)*m + m - 1."""
        self.seed = spec.seed
        m = spec.micro_batch_size
        j = spec.start_batch
        while True:
            first = (j * spec.world_size + spec.rank) * m
            x, y = self._samples(spec.seed, first, m)
            if self.cfg.bad_every:
                keep = torch.arange(first, first + m) % self.cfg.bad_every != 0
                self.dropped += int((~keep).sum())
                x, y = x[keep], y[keep]
            yield {"x": x, "y": y}
            j += 1

    def skipped(self) -> Mapping[str, int]:
        """Corrupt samples dropped so far on this rank."""
        return {"corrupt": self.dropped}

    def loss(
        self, phase: str, models: Mapping[str, nn.Module], batch: dict, step: int
    ) -> LossOutput | None:
        """MSE (+ critic term) for the regressor; a least-squares critic loss for the critic."""
        cfg = self.cfg
        if step == cfg.fault_kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == cfg.fault_sigterm_at and phase == self.phases[0]:
            os.kill(os.getpid(), signal.SIGTERM)
        x, y = batch["x"], batch["y"]
        if cfg.input_noise:
            # all three global RNGs, so an exact resume needs every one of them restored
            scale = cfg.input_noise * (0.5 + random.random()) * (0.5 + float(np.random.rand()))
            x = x + scale * torch.randn_like(x)
        pred = models["regressor"](x)
        if phase == "regressor":
            mse = F.mse_loss(pred.float(), y.float())
            loss = mse
            logs: dict = {"mse": mse.detach()}
            if cfg.adversarial:
                fake = models["critic"](torch.cat([x, pred], dim=1))
                loss = loss + cfg.critic_weight * (fake.float() - 1).pow(2).mean()
            if step == cfg.fault_nan_loss_at:
                loss = loss * float("nan")
            if step == cfg.fault_nan_grad_at:
                # sqrt at 0: the value is 0 (finite), the derivative 0 * inf is NaN
                loss = loss + torch.sqrt(
                    0.0 * sum(p.sum() for p in models["regressor"].parameters())
                )
            return LossOutput(loss, logs)
        if step < cfg.critic_start:
            return None
        real = models["critic"](torch.cat([x, y], dim=1)).float()
        fake = models["critic"](torch.cat([x, pred.detach()], dim=1)).float()
        return LossOutput((real - 1).pow(2).mean() + fake.pow(2).mean())

    def on_checkpoint(self, path: Path, step: int) -> None:
        """Fault injection: die while the checkpoint is half written."""
        if step == self.cfg.fault_crash_in_checkpoint_at:
            (path / "half-written").write_text("the process died here")
            os._exit(3)

    @torch.no_grad()
    def evaluate(self, models: Mapping[str, nn.Module], step: int, run_dir: Path) -> dict:
        """MSE on held-out samples of the same problem (EMA weights when EMA is on)."""
        x, y = self._synthetic(self.seed, HELD_OUT, 256)
        param = next(models["regressor"].parameters())
        pred = models["regressor"](x.to(param.device, param.dtype))
        return {"mse": F.mse_loss(pred.float(), y.to(pred.device)).item()}


def main(argv: list[str] | None = None) -> int:
    """Train the toy task from the command line."""
    return runner_main(
        ToyExperiment, lambda exp: RegressionTask(exp.task), argv, "python -m cinemamba.train.toy"
    )


if __name__ == "__main__":
    sys.exit(main())
