"""The training loop: DeepSpeed engines, phases, accumulation, EMA, signals (saving: resume.py)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cinemamba.train import checkpoint as ckpt_io
from cinemamba.train import distributed
from cinemamba.train.config import (
    TrainConfig,
    deepspeed_dict,
    micro_batch_size,
    optimizer_config,
    validate,
    world_size_from_env,
)
from cinemamba.train.ema import EMA
from cinemamba.train.monitor import Monitor, peak_memory_gb
from cinemamba.train.optim import StepGate, build_optimizer
from cinemamba.train.resume import Checkpointing, seed_everything
from cinemamba.train.schedule import lr_at
from cinemamba.train.task import DataSpec, Task, as_loss_output, call_optional, task_phases
from cinemamba.train.threads import ThreadGovernor

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient with `train.nonfinite=stop`."""


@dataclass
class TrainResult:
    """How a run ended: the step reached, why it stopped, the last checkpoint, last losses."""

    step: int
    reason: str  # "done" | "signal"
    checkpoint: Path | None
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation (rank 0)
    steps: int = 0  # the configured total
    seconds: float = 0.0  # wall time of `fit`, building and checkpointing included

    def summary(self, prog: str, model: Path | None = None) -> str:
        """One line for the end of a run: how it ended, final losses and metrics, time, model."""
        how = "done" if self.reason == "done" else "stopped by a signal (resume: same command)"
        parts = [f"{prog}: {how} at step {self.step}/{self.steps} in {_duration(self.seconds)}"]
        if self.losses:
            parts.append(" ".join(f"{k} {v:.4g}" for k, v in sorted(self.losses.items())))
        if self.metrics:
            units = {"psnr": " dB"}
            parts.append(
                "eval "
                + " ".join(f"{k} {v:.4g}{units.get(k, '')}" for k, v in self.metrics.items())
            )
        if model is not None:
            parts.append(f"model {model}")
        elif self.checkpoint is not None:
            parts.append(f"checkpoint {self.checkpoint}")
        return "; ".join(parts)


def _duration(seconds: float) -> str:
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{sec:02d}s" if minutes else f"{seconds:.1f}s"


def _to_device(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors in nested containers to the device; floating ones to the compute dtype."""
    if isinstance(batch, torch.Tensor):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=dtype, non_blocking=True)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device, dtype) for k, v in batch.items()})
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return type(batch)(_to_device(v, device, dtype) for v in batch)
    return batch


def _grad_norm(params: list[nn.Parameter]) -> float:
    """L2 norm of the (full, reduced) gradients of `params`."""
    total = torch.zeros((), dtype=torch.float64)
    for p in params:
        if p.grad is not None:
            total += p.grad.detach().double().pow(2).sum().cpu()
    return float(total.sqrt())


def _nonfinite_hook(flag: torch.Tensor):
    """A gradient hook that counts non-finite gradients into `flag` and leaves them unchanged.

    It sees each gradient before DeepSpeed reduces or partitions it, so one check works for every
    ZeRO stage; the count stays on the device (no sync) until the step's single all-reduce.
    """

    def hook(grad: torch.Tensor) -> None:
        flag.add_((~torch.isfinite(grad)).any())

    return hook


class Trainer(Checkpointing):
    """Runs a `Task` under DeepSpeed as configured by a `TrainConfig`; see `fit`. Saving and
    resuming its state is the `Checkpointing` base (`cinemamba.train.resume`)."""

    def __init__(self, cfg: TrainConfig, task: Task, full_config: Any = None) -> None:
        self.cfg = cfg
        self.task = task
        if dataclasses.is_dataclass(full_config) and not isinstance(full_config, type):
            full_config = OmegaConf.structured(full_config)  # saved as a tree, not its repr
        if isinstance(full_config, DictConfig):
            full_config = OmegaConf.to_container(full_config, resolve=True)
        self.full_config = full_config if full_config is not None else {}
        self._signal = 0
        self.dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32

    # ---------------------------------------------------------------- setup
    def _build(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)  # identical initial weights on every rank (ZeRO-3 needs it)
        models = self.task.build_models()
        if not models or not all(isinstance(m, nn.Module) for m in models.values()):
            raise TypeError("task.build_models() must return a non-empty dict of nn.Module")
        validate(cfg, self.world, list(models), distributed.on_cuda())
        self.phases = task_phases(self.task, list(models))
        self.opt_cfgs = {name: optimizer_config(cfg, name) for name in models}
        ds_cfg = deepspeed_dict(cfg, self.world)
        self.stage = int(ds_cfg.get("zero_optimization", {}).get("stage", 0))
        import deepspeed

        self.engines: dict[str, Any] = {}
        self.gates: dict[str, StepGate] = {}
        self.trainable: dict[str, list[nn.Parameter]] = {}
        self.grad_bad: dict[str, torch.Tensor] = {}
        for name, model in models.items():
            optimizer = build_optimizer(model, self.opt_cfgs[name])
            self.gates[name] = StepGate(optimizer)
            engine, *_ = deepspeed.initialize(
                model=model, optimizer=optimizer, config=copy.deepcopy(ds_cfg)
            )
            self.engines[name] = engine
            params = [p for p in engine.module.parameters() if p.requires_grad]
            self.trainable[name] = params
            flag = torch.zeros((), device=self.device)
            self.grad_bad[name] = flag
            for p in params:
                p.register_hook(_nonfinite_hook(flag))
        self.emas: dict[str, EMA] = {}
        if cfg.ema_decay > 0:
            for name, engine in self.engines.items():
                self.emas[name] = EMA(
                    engine.module, cfg.ema_decay, master=self.dtype != torch.float32
                )

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            self._signal = signum

        self._old_handlers = {}
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread: the launcher handles it
                self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)

    # ---------------------------------------------------------------- one step
    def _set_frozen(self, active: str | None) -> None:
        for name, params in self.trainable.items():
            for p in params:
                p.requires_grad_(active is None or name == active)

    def _run_phase(self, phase: str, batches: list[Any], step: int) -> dict[str, float] | None:
        """Accumulate over the micro-batches, agree on skipping, step one model; its stats."""
        engine = self.engines[phase]
        lr = lr_at(self.opt_cfgs[phase], step, self.cfg.steps)
        for group in engine.optimizer.param_groups:
            group["lr"] = lr
        self.grad_bad[phase].zero_()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_bad = torch.zeros((), dtype=torch.float64, device=self.device)
        logs: dict[str, torch.Tensor] = {}
        skipped_micro = 0
        own_norm = None
        # The active model is its DeepSpeed engine; the others are their bare modules, frozen:
        # an engine's forward hooks would otherwise start its own backward bookkeeping (and
        # rescale for accumulation) when the active loss back-propagates through it.
        views = {n: e if n == phase else e.module for n, e in self.engines.items()}
        self._set_frozen(phase)
        try:
            for i, batch in enumerate(batches):
                raw = self.task.loss(phase, views, batch, step)
                skipped_micro += raw is None
                if skipped_micro not in (0, i + 1):
                    raise ValueError(
                        f"task.loss skipped phase {phase!r} for some micro-batches of step {step}"
                        " but not others; decide from the step only"
                    )
                if raw is None:
                    continue
                out = as_loss_output(raw, phase)
                value = out.loss.detach().double()
                finite = torch.isfinite(value)
                loss_sum += torch.where(finite, value, torch.zeros_like(value))
                loss_bad += (~finite).double()
                for key, v in out.logs.items():
                    v = torch.as_tensor(v, device=self.device).detach().double()
                    logs[key] = logs.get(key, torch.zeros_like(v)) + v
                engine.backward(out.loss)
                if i == len(batches) - 1:
                    totals, bad = self._agree(phase, step, loss_sum, loss_bad, logs)
                    self.gates[phase].skip = bad
                    if not bad and self.stage == 0 and self.dtype == torch.float32:
                        # DeepSpeed reports no norm here; the grads are full and reduced.
                        own_norm = _grad_norm(self.trainable[phase])
                engine.step()
                self.gates[phase].skip = False
        finally:
            self._set_frozen(None)
        if skipped_micro:
            return None
        n = len(batches) * self.world
        stats = {"loss": totals.pop("loss") / n, "lr": lr, "skipped": float(bad)}
        stats.update({k: v / n for k, v in totals.items()})
        if bad:
            self.bad_steps[phase] = self.bad_steps.get(phase, 0) + 1
            return stats
        norm = engine.get_global_grad_norm()
        norm = own_norm if norm is None else norm
        if norm is not None:
            stats["grad_norm"] = float(norm)
        if phase in self.emas and (step + 1) % self.cfg.ema_every == 0:
            self.emas[phase].update()
        return stats

    def _agree(
        self,
        phase: str,
        step: int,
        loss_sum: torch.Tensor,
        loss_bad: torch.Tensor,
        logs: dict[str, torch.Tensor],
    ) -> tuple[dict[str, float], bool]:
        """One all-reduce per phase and step: summed losses and logs, non-finite counts and
        the preemption flag. Returns the sums and whether every rank skips this step."""
        keys = sorted(logs)
        signalled = torch.tensor(float(self._signal != 0), dtype=torch.float64, device=self.device)
        vec = torch.stack(
            [loss_sum, loss_bad, self.grad_bad[phase].double(), signalled, *(logs[k] for k in keys)]
        )
        distributed.all_reduce_sum(vec)
        values = vec.tolist()
        if values[3] > 0:
            self._signal = self._signal or signal.SIGTERM
        bad = values[1] > 0 or values[2] > 0
        if bad:
            what = "loss" if values[1] > 0 else "gradient"
            msg = f"step {step}: non-finite {what} in phase {phase!r}"
            if self.cfg.nonfinite == "stop":
                raise NonFiniteError(
                    f"{msg}; stopping (train.nonfinite=stop). Weights are unchanged since the "
                    "last step; set train.nonfinite=skip to skip such steps"
                )
            self.monitor.message(f"{msg}: optimizer step skipped, weights unchanged")
        return {"loss": values[0], **dict(zip(keys, values[4:], strict=True))}, bad

    # ---------------------------------------------------------------- loop
    def _evaluate(self, step: int) -> None:
        evaluate = getattr(self.task, "evaluate", None)
        if not callable(evaluate):
            return
        for engine in self.engines.values():
            engine.eval()
        with contextlib.ExitStack() as stack:
            for ema in self.emas.values():
                stack.enter_context(ema.swapped_in())
            with torch.no_grad():
                modules = {n: e.module for n, e in self.engines.items()}
                metrics = evaluate(modules, step, self.run_dir)
        for engine in self.engines.values():
            engine.train()
        if metrics:
            self.last_metrics = {k: float(v) for k, v in metrics.items()}
            self.monitor.log(step, self.last_metrics, kind="eval")

    def fit(self) -> TrainResult:
        """Train to `cfg.steps` (or a preemption signal); checkpoint; return how it ended."""
        cfg = self.cfg
        distributed.choose_accelerator()  # before validate imports DeepSpeed
        validate(cfg, world_size_from_env(), None, distributed.on_cuda())
        call_optional(self.task, "validate")
        started = time.perf_counter()
        self.last_metrics: dict[str, float] = {}
        with distributed.session(cfg.dist_backend) as (self.rank, self.world, self.device):
            result = self._fit()
        result.metrics = self.last_metrics
        result.steps = cfg.steps
        result.seconds = time.perf_counter() - started
        return result

    def _fit(self) -> TrainResult:
        cfg = self.cfg
        self.run_dir = Path(cfg.run_dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.clean_partial(self.run_dir)
        dist.barrier()
        self._check_space()
        self._build()
        source = self._pick_checkpoint()
        if source is not None:
            step = self.load_checkpoint(source)
        else:
            step = 0
            seed_everything(cfg.seed + self.rank)  # ranks draw different noise from here on
        start = step
        self.bad_steps: dict[str, int] = {}
        self._install_signal_handlers()
        micro = micro_batch_size(cfg, self.world)
        spec = DataSpec(self.rank, self.world, micro, cfg.seed, start_batch=step * cfg.grad_accum)
        data = iter(self.task.train_data(spec))
        self.monitor = Monitor(self.run_dir, self.rank, step, cfg.steps, cfg.progress)
        if source is not None:
            self.monitor.message(f"resumed from {source} at step {step}")
        for engine in self.engines.values():
            engine.train()
        last_ckpt: Path | None = source
        losses: dict[str, float] = {}
        window = {"data": 0.0, "compute": 0.0, "samples": 0, "frames": 0, "steps": 0}
        count_frames = getattr(self.task, "count_frames", None)
        cpu = self.device.type == "cpu"
        governor = ThreadGovernor() if cfg.adapt_threads and cpu else None
        try:
            while step < cfg.steps:
                if governor is not None:
                    governor.poll()
                t0 = time.perf_counter()
                batches = []
                for _ in range(cfg.grad_accum):
                    try:
                        raw = next(data)
                    except StopIteration:
                        raise RuntimeError(
                            f"task.train_data ended at step {step}; it must yield batches for "
                            f"{cfg.steps} steps (loop or resample the data set)"
                        ) from None
                    if callable(count_frames):
                        window["frames"] += int(count_frames(raw))
                    batches.append(_to_device(raw, self.device, self.dtype))
                t1 = time.perf_counter()
                stats: dict[str, float] = {}
                for phase in self.phases:
                    phase_stats = self._run_phase(phase, batches, step)
                    for key, value in (phase_stats or {}).items():
                        stats[f"{phase}/{key}"] = value
                step += 1
                window["data"] += t1 - t0
                window["compute"] += time.perf_counter() - t1
                window["samples"] += cfg.batch_size
                window["steps"] += 1
                losses = {k: v for k, v in stats.items() if k.endswith("/loss")}
                self.monitor.advance(self._postfix(stats, window))
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self._log(step, stats, window)
                    window = {k: 0 for k in window}
                stop = self._signal != 0
                if (
                    stop
                    or step == cfg.steps
                    or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                ):
                    last_ckpt = self.save_checkpoint(step)
                if stop:
                    self.monitor.message(
                        f"signal {self._signal}: checkpointed step {step}, exiting"
                    )
                    return TrainResult(step, "signal", last_ckpt, losses)
                if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
                    self._evaluate(step)
            if start == cfg.steps:
                self.monitor.message(f"already at step {step} of {cfg.steps}; nothing to do")
            # No rank leaves (and tears down its sockets) while a peer still finishes its last
            # collective.
            dist.barrier()
            return TrainResult(step, "done", last_ckpt, losses)
        finally:
            if governor is not None:
                governor.close()
            self._restore_signal_handlers()
            self.monitor.close()

    def _postfix(self, stats: Mapping[str, float], window: Mapping[str, float]) -> dict:
        post = {k.replace("/loss", ""): v for k, v in stats.items() if k.endswith("/loss")}
        lrs = [v for k, v in stats.items() if k.endswith("/lr")]
        if lrs:
            post["lr"] = lrs[0]
        elapsed = window["data"] + window["compute"]
        if elapsed > 0:
            post["samples/s"] = window["samples"] / elapsed
        return post

    def _log(self, step: int, stats: dict[str, float], window: dict[str, float]) -> None:
        elapsed = max(window["data"] + window["compute"], 1e-9)
        scalars = dict(stats)
        scalars["perf/samples_per_s"] = window["samples"] / elapsed
        if window["frames"]:
            # frames are counted on each rank for its own micro-batches
            scalars["perf/frames_per_s"] = window["frames"] * self.world / elapsed
        scalars["perf/data_wait_s"] = window["data"] / max(window["steps"], 1)
        scalars["perf/compute_s"] = window["compute"] / max(window["steps"], 1)
        scalars["perf/peak_memory_gb"] = peak_memory_gb(self.device)
        for phase, n in self.bad_steps.items():
            scalars[f"{phase}/nonfinite_steps"] = float(n)
        skipped = call_optional(self.task, "skipped")
        if skipped is not None:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, dict(skipped))
            total: dict[str, int] = {}
            for part in gathered:
                for reason, n in part.items():
                    total[reason] = total.get(reason, 0) + int(n)
            scalars.update({f"data/skipped_{r}": float(n) for r, n in total.items()})
        self.monitor.log(step, {k: v for k, v in scalars.items() if not math.isnan(v)})


def train(cfg: TrainConfig, task: Task, full_config: Any = None) -> TrainResult:
    """Run `task` under `cfg`; `full_config` (the whole experiment) is saved with checkpoints."""
    return Trainer(cfg, task, full_config).fit()
