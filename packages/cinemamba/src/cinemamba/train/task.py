"""The contract between the training engine and a task (VAE, backbone, anything).

A task owns its models, data and losses; the engine owns distribution (DeepSpeed), optimizers,
schedules, EMA, checkpoints, logging and failure handling. The engine never looks inside the
models, so the VAE (two optimizers) and the diffusion backbone (one) are both plain tasks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass(frozen=True)
class DataSpec:
    """What a task needs to produce this rank's micro-batches, starting anywhere in the stream.

    The stream must be a pure function of these fields: micro-batch `i` of rank `r` is the same
    whether the run started at 0 or resumed at `start_batch`; that is how resume restores the
    data position exactly.
    """

    rank: int
    world_size: int
    micro_batch_size: int  # samples per micro-batch on this rank
    seed: int
    start_batch: int  # index (per rank) of the first micro-batch to yield


@dataclass
class LossOutput:
    """The loss one phase minimizes for one micro-batch, plus scalars to log (mean over ranks)."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """Models, data and losses; see docs/training.md "Writing a task".

    Required: `build_models`, `train_data`, `loss`. Optional (looked up with getattr):
    `phases: Sequence[str]` (default: one phase per model, in `build_models` order),
    `validate() -> None`, `evaluate(models, step, run_dir) -> Mapping[str, float] | None`,
    `on_checkpoint(path, step) -> None`, `skipped() -> Mapping[str, int]`,
    `count_frames(batch) -> int`.
    """

    def build_models(self) -> dict[str, nn.Module]:
        """The trainable models, by name; each gets its own optimizer and DeepSpeed engine."""
        ...

    def train_data(self, spec: DataSpec) -> Iterator[Any]:
        """This rank's micro-batches from `spec.start_batch` on (tensors, or dicts/lists of them)."""
        ...

    def loss(
        self, phase: str, models: Mapping[str, nn.Module], batch: Any, step: int
    ) -> LossOutput | torch.Tensor | None:
        """The loss that model `phase`'s optimizer minimizes on `batch` at optimizer step `step`.

        `models[phase]` is the DeepSpeed engine (call it like the module; the module itself is
        `.module`); every other model is its bare module, frozen (requires_grad off) for this
        phase, so a generator loss
        may run the discriminator and a discriminator loss may run the generator without
        leaking gradients. Return None to skip the phase at this step (decide from `step` only,
        so that every rank and micro-batch agrees).
        """
        ...


def task_phases(task: Task, model_names: Sequence[str]) -> list[str]:
    """The phase order: `task.phases` if given (each must name a model), else the model order."""
    phases = list(getattr(task, "phases", None) or model_names)
    unknown = [p for p in phases if p not in model_names]
    if unknown:
        raise ValueError(
            f"task phases {unknown} name no model; build_models() returned {list(model_names)}"
        )
    return phases


def call_optional(task: Task, name: str, *args: Any) -> Any:
    """Call an optional task hook if the task defines it; None otherwise."""
    hook = getattr(task, name, None)
    return hook(*args) if callable(hook) else None


def as_loss_output(value: LossOutput | torch.Tensor, phase: str) -> LossOutput:
    """Accept a bare scalar tensor as a LossOutput; reject anything else with the phase named."""
    if isinstance(value, LossOutput):
        out = value
    elif isinstance(value, torch.Tensor):
        out = LossOutput(value)
    else:
        raise TypeError(f"task.loss for phase {phase!r} returned {type(value).__name__}")
    if out.loss.numel() != 1:
        raise ValueError(
            f"task.loss for phase {phase!r} returned a loss of shape {tuple(out.loss.shape)}; "
            "reduce it to a scalar"
        )
    return out
