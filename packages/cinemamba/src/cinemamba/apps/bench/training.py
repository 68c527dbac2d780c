"""Where the time of a training step goes.

The training step is the real engine (`cinemamba.train.Trainer`, DeepSpeed ZeRO-0 / ZeRO-2,
one process, gloo) running the backbone task from raw video shards, with the frozen VAE and
text encoder on the fly. Nothing is added to the engine: a `Trainer` subclass wraps the
DeepSpeed engine's `forward` / `backward` / `step` after they are built, the task's data
iterator and frozen encoders are wrapped on the task instance, and torch.distributed's
collectives are wrapped for the run. Each timer keeps *exclusive* CPU time (time inside
nested timers is subtracted), so the parts add up to the step; what no timer covers (learning
rate, loss all-reduce bookkeeping, gradient norm, logging) is "engine other".
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cinemamba.apps.bench.measure import Figure, Section, count_flops, gemm_rate
from cinemamba.data.synth import SceneConfig
from cinemamba.data.synth_video import write_synth
from cinemamba.tasks.backbone import BackboneTask, load_backbone_experiment
from cinemamba.train import DataSpec
from cinemamba.train.trainer import Trainer
from cinemamba_vae import VideoAutoencoder, vae_preset

CONFIG = Path(__file__).parents[6] / "configs" / "experiment" / "backbone_tiny.yaml"
COLLECTIVES = (
    "all_reduce", "all_reduce_coalesced", "reduce", "broadcast", "all_gather",
    "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor", "barrier",
)  # fmt: skip
PARTS = (
    "data wait", "VAE encode", "text encode", "encode other", "forward", "loss other",
    "backward", "optimizer", "communication", "engine other",
)  # fmt: skip


@dataclass(frozen=True)
class TrainScale:
    """Sizes of the data and training benchmarks."""

    repeats: int = 5  # timed steps (and timed loader passes)
    videos: int = 8
    video_frames: int = 33
    size: int = 64
    clip_frames: int = 17
    batch_size: int = 2
    warmup_steps: int = 2
    zero_stages: tuple[int, ...] = (0, 2)
    lora_rank: int = 8  # a LoRA row at ZeRO-0 (issue 17); 0 leaves it out


class PhaseClock:
    """Exclusive CPU time per named phase; phases nest (a child's time leaves its parent's)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # [child seconds] per open phase

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as `name`, minus any phases opened inside it."""
        start = time.process_time()
        self._stack.append([0.0])
        try:
            yield
        finally:
            (child,) = self._stack.pop()
            elapsed = time.process_time() - start
            self.totals[name] += elapsed - child
            if self._stack:
                self._stack[-1][0] += elapsed

    def wrap(self, name: str, fn: Callable) -> Callable:
        """`fn` timed as phase `name`."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed


@contextlib.contextmanager
def timed_collectives(clock: PhaseClock) -> Iterator[None]:
    """Time torch.distributed collectives as "communication" (DeepSpeed's torch backend looks
    them up on the module at call time, so this sees ZeRO's reductions too)."""
    saved = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}
    try:
        for name, fn in saved.items():
            setattr(dist, name, clock.wrap("communication", fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


class _TimedTrainer(Trainer):
    """The engine, with its DeepSpeed engines' forward / backward / step timed once built."""

    def __init__(self, cfg: Any, task: BackboneTask, clock: PhaseClock) -> None:
        super().__init__(cfg, task)
        self.clock = clock

    def _build(self) -> None:
        super()._build()
        for engine in self.engines.values():
            engine.forward = self.clock.wrap("forward", engine.forward)
            engine.backward = self.clock.wrap("backward", engine.backward)
            engine.step = self.clock.wrap("optimizer", engine.step)


def make_raw_shards(root: Path, scale: TrainScale) -> tuple[Path, Path]:
    """Synthetic raw video shards and a tiny random-weight VAE directory under `root`."""
    raw, vae_dir = root / "raw", root / "vae"
    scene = SceneConfig(frames=scale.video_frames, height=scale.size, width=scale.size)
    write_synth(raw, "train", scale.videos, scene, samples_per_shard=max(1, scale.videos // 2))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        VideoAutoencoder(vae_preset("tiny")).save_pretrained(vae_dir)
    return raw, vae_dir


def _experiment(
    root: Path, raw: Path, vae: Path, scale: TrainScale, stage: int, steps: int, lora: int = 0
):
    return load_backbone_experiment(CONFIG, [
        f"train.run_dir={root / f'run_zero{stage}_lora{lora}'}", f"train.steps={steps}",
        f"train.batch_size={scale.batch_size}", f"train.deepspeed_config=zero{stage}",
        "train.progress=false", "train.checkpoint_every=0", "train.eval_every=0",
        f"train.log_every={steps}", "train.ema_decay=0",
        "task.data.source=raw", f"task.data.path={raw}", f"task.vae={vae}",
        f"task.data.clip.frames={scale.clip_frames}", "task.samples.prompts=[]",
        f"task.backbone.sample_size={scale.size // 4}", f"task.lora.rank={lora}",
    ])  # fmt: skip


def step_breakdown(
    root: Path, raw: Path, vae: Path, scale: TrainScale, stage: int, lora: int = 0
) -> list[dict[str, float]]:
    """Per timed step: exclusive CPU seconds of each part and the step total (LoRA adapters of
    rank `lora` on a frozen base when > 0)."""
    steps = scale.warmup_steps + scale.repeats + 1  # + 1: a step ends where the next begins
    exp = _experiment(root, raw, vae, scale, stage, steps, lora)
    task, clock = BackboneTask(exp.task), PhaseClock()
    cpu = torch.device("cpu")
    vae_model, text = task.vae(cpu), task.text_encoder(cpu)  # cached: the task reuses them
    vae_model.encode = clock.wrap("VAE encode", vae_model.encode)
    text.encode = clock.wrap("text encode", text.encode)
    task.encode = clock.wrap("encode other", task.encode)
    task.loss = clock.wrap("loss other", task.loss)
    marks: list[tuple[float, dict[str, float]]] = []  # (CPU time, totals) at each fetch
    make_data = task.train_data

    def train_data(spec: DataSpec) -> Iterator[Any]:
        batches = make_data(spec)
        while True:
            marks.append((time.process_time(), dict(clock.totals)))
            with clock.phase("data wait"):
                batch = next(batches)
            yield batch

    task.train_data = train_data
    with timed_collectives(clock):
        _TimedTrainer(exp.train, task, clock).fit()
    rows = []
    for (t0, a), (t1, b) in zip(marks[:-1], marks[1:], strict=True):
        row = {p: b.get(p, 0.0) - a.get(p, 0.0) for p in PARTS if p != "engine other"}
        row["engine other"] = (t1 - t0) - sum(row.values())
        row["total"] = t1 - t0
        rows.append(row)
    return rows[scale.warmup_steps :]


def step_flops(raw: Path, vae: Path, root: Path, scale: TrainScale) -> int:
    """Counted FLOPs of one micro-batch: on-the-fly encode, backbone forward and backward."""
    exp = _experiment(root, raw, vae, scale, 0, 1)
    task = BackboneTask(exp.task)
    model = task.build_models()["backbone"]
    batch = next(iter(task.train_data(DataSpec(0, 1, scale.batch_size, 0, 0))))
    return count_flops(lambda: task.loss("backbone", {"backbone": model}, batch, 0).loss.backward())


def training(scale: TrainScale) -> Section:
    """The training-step breakdown, a row per ZeRO stage."""
    with tempfile.TemporaryDirectory(prefix="cinemamba-bench-") as tmp:
        root = Path(tmp)
        raw, vae = make_raw_shards(root, scale)
        flops = step_flops(raw, vae, root, scale)
        rate = gemm_rate()
        section = Section("train", "Training step breakdown (DeepSpeed engine, one process)")
        section.lines += [
            f"Backbone task (configs/experiment/backbone_tiny.yaml) from raw shards: batch "
            f"{scale.batch_size} clips of {scale.clip_frames} frames at {scale.size}×{scale.size},"
            " tiny VAE and tiny text encoder on the fly, fp32, gloo, world size 1. Exclusive CPU"
            f" seconds per step, median of {scale.repeats} steps after {scale.warmup_steps} "
            f"warm-up steps. Floor: {flops / 1e9:.3f} GFLOP counted (matmul/conv/attention of "
            f"encode + forward + backward) ÷ measured GEMM rate {rate / 1e9:.1f} GFLOP/s.",
            "",
            "| ZeRO | " + " | ".join(PARTS) + " | step s | step ÷ floor |",
            "|---|" + "---|" * (len(PARTS) + 2),
        ]
        full: dict[int, list[float]] = {}
        for stage in scale.zero_stages:
            rows = step_breakdown(root, raw, vae, scale, stage)
            totals = [r["total"] for r in rows]
            full[stage] = totals
            med = {p: statistics.median(r[p] for r in rows) for p in PARTS}
            section.lines.append(
                f"| {stage} | " + " | ".join(f"{med[p]:.4f}" for p in PARTS)
                + f" | {statistics.median(totals):.4f} | "
                f"{statistics.median(totals) / (flops / rate):.1f} |"
            )  # fmt: skip
            for part in PARTS:
                section.figures.append(Figure(
                    "train", f"ZeRO-{stage} {part} share of step", "s", [r[part] for r in rows],
                    totals, "step total",
                ))  # fmt: skip
            section.figures.append(Figure(
                "train", f"ZeRO-{stage} step vs FLOP floor", "s", totals,
                [flops / rate] * len(totals), "counted FLOPs ÷ GEMM rate",
            ))  # fmt: skip
        if scale.lora_rank and 0 in full:
            _lora_rows(section, root, raw, vae, scale, full[0])
    return section


def _trainable(exp) -> tuple[int, int]:
    """(trainable, all) parameter counts of the task's backbone."""
    model = BackboneTask(exp.task).build_models()["backbone"]
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _lora_rows(section: Section, root: Path, raw: Path, vae: Path, scale: TrainScale,
               full: list[float]) -> None:  # fmt: skip
    """A LoRA step (default targets, base frozen) against the full step at ZeRO-0."""
    r = scale.lora_rank
    rows = step_breakdown(root, raw, vae, scale, 0, lora=r)
    med = {p: statistics.median(row[p] for row in rows) for p in PARTS}
    totals = [row["total"] for row in rows]
    section.lines.append(
        f"| 0 + LoRA r{r} | " + " | ".join(f"{med[p]:.4f}" for p in PARTS)
        + f" | {statistics.median(totals):.4f} | |"
    )  # fmt: skip
    lora_params, _ = _trainable(_experiment(root, raw, vae, scale, 0, 1, r))
    full_params, _ = _trainable(_experiment(root, raw, vae, scale, 0, 1))
    section.figures.append(Figure(
        "train", f"ZeRO-0 LoRA r{r} step vs full step", "s", totals, full, "full step",
    ))  # fmt: skip
    # AdamW keeps two fp32 moments (and the engine the gradients) per trainable parameter, so
    # optimizer and gradient memory scale with this count; the frozen base still holds its
    # weights and the activations.
    section.figures.append(Figure(
        "train", f"LoRA r{r} optimizer + gradient memory (trainable params)", "params",
        [float(lora_params)], [float(full_params)], "full fine-tuning", exact=True,
    ))  # fmt: skip
