"""Engine configuration: `TrainConfig`, the DeepSpeed config it owns, and early validation.

Experiments nest a `TrainConfig` under `train` next to the task's own config. The DeepSpeed
JSON/YAML named by `train.deepspeed_config` is merged under `train.deepspeed`, so any DeepSpeed
key can be overridden on the command line (`train.deepspeed.zero_optimization.stage=3`). Every
check that can fail runs here, before any process group, model or file exists.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cinemamba.config import ConfigError, merge_config, parse_overrides, read_yaml

OPTIMIZERS = ("adamw", "cpu_adam", "fused_adam")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("fp32", "bf16")
NONFINITE = ("skip", "stop")

# DeepSpeed keys the engine writes from TrainConfig fields; setting them directly would let the
# two disagree, so it is an error that names the field to use instead.
ENGINE_OWNED = {
    "train_batch_size": "train.batch_size",
    "train_micro_batch_size_per_gpu": "train.batch_size and train.grad_accum",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "train.grad_clip",
    "bf16": "train.precision",
    "fp16": "train.precision (fp16 is not supported; use bf16)",
    "optimizer": "train.optimizer / train.optimizers.<model>",
    "scheduler": "train.optimizer.schedule and train.optimizer.warmup_steps",
}
# Top-level keys DeepSpeed reads without going through DeepSpeedConfig's own lookups.
_DS_EXTRA_KEYS = {"activation_checkpointing", "flops_profiler", "aio", "autotuning"}
_STAGE3_ONLY = ("offload_param", "sub_group_size", "zero_hpz_partition_size")
_STAGE12_ONLY = ("round_robin_gradients", "cpu_offload")

REPO_ROOT = Path(__file__).resolve().parents[5]


@dataclass
class OptimizerConfig:
    """One model's optimizer and LR schedule (linear warmup, then cosine decay or constant)."""

    name: str = "adamw"  # adamw (torch) | cpu_adam (DeepSpeed, for optimizer offload) | fused_adam
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0  # not applied to biases, norms or params tagged _no_weight_decay
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio at the last step


@dataclass
class TrainConfig:
    """Everything the engine needs; tasks keep their own settings in their own dataclass."""

    run_dir: str = "runs/train"
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # global: samples per optimizer step over all ranks and micro-steps
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    # Per-model partial overrides of `optimizer`, e.g. optimizers.discriminator.lr=1e-5.
    optimizers: dict[str, Any] = field(default_factory=dict)
    ema_decay: float = 0.999  # 0 disables EMA
    ema_every: int = 1
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    nonfinite: str = "skip"  # skip | stop
    seed: int = 0
    resume: str = "auto"  # auto (latest checkpoint if any) | never | path to a checkpoint
    progress: bool = True
    # On CPU, fit torch's thread count to the cores other processes leave free (train/threads.py);
    # false keeps it fixed, which bit-exact reproduction at more than one thread needs.
    adapt_threads: bool = True
    dist_backend: str = ""  # empty: nccl on CUDA, gloo on CPU
    deepspeed_config: str = "zero0"  # a name in configs/deepspeed/ or a path
    deepspeed: dict[str, Any] = field(default_factory=dict)


def _open_dicts(cfg: DictConfig) -> None:
    """Free-form DeepSpeed and per-model optimizer dicts accept new keys even in struct mode."""
    for _, node in _train_node_keys(cfg):
        OmegaConf.set_struct(node.deepspeed, False)
        OmegaConf.set_struct(node.optimizers, False)


def find_deepspeed_config(name: str, search: Sequence[Path] = ()) -> Path:
    """Resolve `train.deepspeed_config`: a file path, or a name in a configs/deepspeed/ folder."""
    path = Path(name)
    if path.suffix and path.is_file():
        return path
    dirs = [*search, Path.cwd() / "configs" / "deepspeed", REPO_ROOT / "configs" / "deepspeed"]
    for d in dirs:
        for cand in (d / name, d / f"{name}.yaml", d / f"{name}.json"):
            if cand.is_file():
                return cand
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.*")})
    raise ConfigError(
        f"train.deepspeed_config={name!r} is neither a file nor a name in configs/deepspeed/"
        f" (known: {', '.join(known) or 'none found'}); pass a path or one of those names"
    )


def load_experiment(
    schema: Any, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """Merge an experiment schema with a YAML file, its DeepSpeed config and dotlist overrides.

    Order (later wins): schema defaults, DeepSpeed file (`train.deepspeed_config`, looked up
    beside the experiment file, in ./configs/deepspeed and in the repository's, then pinned as
    an absolute path), experiment file, command line. Unknown keys raise ConfigError naming the
    key, except inside `train.deepspeed`, which `validate` checks against DeepSpeed's schema.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    _open_dicts(cfg)
    sources: list[tuple[Any, str]] = []
    if path is not None:
        path = Path(path)
        sources.append((read_yaml(path), f"file {str(path)!r}"))
    dotlist = parse_overrides(overrides)
    if dotlist is not None:
        sources.append((dotlist, "command-line overrides"))
    # Which DeepSpeed file to load can itself come from the experiment file or the command line.
    probe = cfg
    for src, where in sources:
        probe = merge_config(probe, src, where)
    for node_key, node in _train_node_keys(probe):
        ds_file = find_deepspeed_config(
            node.deepspeed_config, [path.parent] if path is not None else []
        )
        ds = read_yaml(ds_file, "DeepSpeed config")
        prefix = f"{node_key}." if node_key else ""
        nested = OmegaConf.create({})
        OmegaConf.update(nested, f"{prefix}deepspeed", ds)
        # Pin the resolved file so the engine (which merges it again, idempotently) finds it
        # wherever it runs from.
        OmegaConf.update(nested, f"{prefix}deepspeed_config", str(ds_file.resolve()))
        cfg = merge_config(cfg, nested, f"DeepSpeed config {str(ds_file)!r}")
    for src, where in sources:
        if isinstance(src, DictConfig):  # a source's name or relative path -> the pinned path
            for node_key, _ in _train_node_keys(probe):
                key = f"{node_key}.deepspeed_config" if node_key else "deepspeed_config"
                if OmegaConf.select(src, key) is not None:
                    OmegaConf.update(src, key, OmegaConf.select(cfg, key), merge=False)
        cfg = merge_config(cfg, src, where)
    OmegaConf.set_struct(cfg, True)
    _open_dicts(cfg)
    return cfg


def _train_node_keys(cfg: DictConfig, prefix: str = "") -> list[tuple[str, DictConfig]]:
    if OmegaConf.get_type(cfg) is TrainConfig:
        return [(prefix, cfg)]
    out = []
    for key in cfg:
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            out += _train_node_keys(node, f"{prefix}.{key}" if prefix else str(key))
    return out


def effective_deepspeed(cfg: TrainConfig) -> dict[str, Any]:
    """The DeepSpeed file named by `cfg.deepspeed_config` with `cfg.deepspeed` merged over it.

    `load_experiment` has merged the file already (merging it again changes nothing); a
    TrainConfig built in code gets its file here.
    """
    path = find_deepspeed_config(cfg.deepspeed_config)
    base = read_yaml(path, "DeepSpeed config")
    merged = OmegaConf.merge(base, OmegaConf.create(_plain(cfg.deepspeed)))
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return dict(value)


def world_size_from_env() -> int:
    """The world size a launcher announced (1 when run as a plain process)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def micro_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """Samples per micro-batch on one rank."""
    return cfg.batch_size // (world_size * cfg.grad_accum)


def optimizer_config(cfg: TrainConfig, model: str) -> OptimizerConfig:
    """`train.optimizer` with `train.optimizers.<model>` merged over it."""
    base = OmegaConf.structured(cfg.optimizer)
    over = cfg.optimizers.get(model, {})
    merged = merge_config(base, over, f"train.optimizers.{model}")
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _check_choice(value: str, key: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}; set {key}=<one>")


def _check_optimizer(opt: OptimizerConfig, key: str, offload: bool, on_cuda: bool) -> None:
    _check_choice(opt.name, f"{key}.name", OPTIMIZERS)
    _check_choice(opt.schedule, f"{key}.schedule", SCHEDULES)
    if opt.lr <= 0:
        raise ConfigError(f"{key}.lr must be > 0, got {opt.lr}")
    if len(opt.betas) != 2:
        raise ConfigError(f"{key}.betas must have two values, got {list(opt.betas)}")
    if opt.warmup_steps < 0 or not 0 <= opt.min_lr_ratio <= 1:
        raise ConfigError(f"{key}.warmup_steps must be >= 0 and min_lr_ratio in [0, 1]")
    if offload and opt.name != "cpu_adam":
        raise ConfigError(
            f"optimizer offload (zero_optimization.offload_optimizer) needs DeepSpeed's CPU Adam;"
            f" set {key}.name=cpu_adam"
        )
    if opt.name == "fused_adam" and not on_cuda:
        raise ConfigError(f"{key}.name=fused_adam needs a CUDA GPU; use adamw or cpu_adam on CPU")


def validate(
    cfg: TrainConfig, world_size: int, model_names: Sequence[str] | None = None, on_cuda=False
) -> None:
    """Fail fast with a message that names the key and the fix; run before any work."""
    _check_choice(cfg.precision, "train.precision", PRECISIONS)
    _check_choice(cfg.nonfinite, "train.nonfinite", NONFINITE)
    for key in ("steps", "batch_size", "grad_accum", "ema_every", "keep_last", "log_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.checkpoint_every < 0 or cfg.eval_every < 0:
        raise ConfigError("train.checkpoint_every and train.eval_every must be >= 0 (0: off)")
    if not 0 <= cfg.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.ema_decay}")
    per_step = world_size * cfg.grad_accum
    if cfg.batch_size % per_step:
        lo = max(per_step, cfg.batch_size // per_step * per_step)
        raise ConfigError(
            f"train.batch_size={cfg.batch_size} is not divisible by world size ({world_size}) x "
            f"train.grad_accum ({cfg.grad_accum}) = {per_step}; set train.batch_size to a "
            f"multiple of {per_step} (e.g. {lo} or {lo + per_step}) or change train.grad_accum"
        )
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).exists():
        raise ConfigError(
            f"train.resume={cfg.resume!r}: no such checkpoint; use auto, never or a checkpoint path"
        )
    ds = effective_deepspeed(cfg)
    for key, owner in ENGINE_OWNED.items():
        if key in ds:
            raise ConfigError(
                f"train.deepspeed.{key} is set by the engine from {owner}; remove it and set "
                f"{owner} instead"
            )
    _check_deepspeed_keys(ds)
    zero = ds.get("zero_optimization", {}) or {}
    stage = int(zero.get("stage", 0))
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.deepspeed.zero_optimization.stage={stage}; use 0, 1, 2 or 3")
    if stage == 3:
        for key in _STAGE12_ONLY:
            if zero.get(key):
                raise ConfigError(
                    f"train.deepspeed.zero_optimization.{key} does not work with ZeRO stage 3; "
                    f"remove it or use zero_optimization.stage=2"
                )
    else:
        for key in (*_STAGE3_ONLY, *(k for k in zero if str(k).startswith("stage3_"))):
            if key in zero:
                raise ConfigError(
                    f"train.deepspeed.zero_optimization.{key} needs ZeRO stage 3 (stage is "
                    f"{stage}); set zero_optimization.stage=3 or remove {key}"
                )
    offload = bool((zero.get("offload_optimizer") or {}).get("device", "none") not in ("none",))
    if offload and stage == 0:
        raise ConfigError(
            "train.deepspeed.zero_optimization.offload_optimizer needs ZeRO stage 1-3; "
            "set zero_optimization.stage to 1, 2 or 3"
        )
    _check_optimizer(cfg.optimizer, "train.optimizer", offload, on_cuda)
    for name in cfg.optimizers:
        if model_names is not None and name not in model_names:
            raise ConfigError(
                f"train.optimizers.{name} names no model; the task's models are "
                f"{', '.join(model_names)}"
            )
        _check_optimizer(optimizer_config(cfg, name), f"train.optimizers.{name}", offload, on_cuda)


def _check_deepspeed_keys(ds: Mapping[str, Any]) -> None:
    """Reject keys DeepSpeed would silently ignore; nested sections DeepSpeed checks itself."""
    import torch.distributed as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    # DeepSpeedConfig checks the batch sizes against the live process group (1 before init).
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    seen: set[str] = set()

    class _Recording(dict):
        def get(self, key, *default):
            seen.add(key)
            return super().get(key, *default)

        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

        def __contains__(self, key):
            seen.add(key)
            return super().__contains__(key)

    trial = _Recording(
        {
            **ds,
            "train_batch_size": world_size,
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
        }
    )
    try:
        DeepSpeedConfig(trial)
    except Exception as err:  # pydantic ValidationError or DeepSpeed's own asserts
        raise ConfigError(f"invalid train.deepspeed: {_describe(err, ds)}") from None
    unknown = sorted(set(ds) - seen - _DS_EXTRA_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown DeepSpeed key train.deepspeed.{unknown[0]}; remove it or check its spelling"
            " against https://www.deepspeed.ai/docs/config-json/"
        )


def _describe(err: Exception, ds: Mapping[str, Any]) -> str:
    """Name the full key of each pydantic error (DeepSpeed sections are pydantic models)."""
    errors = getattr(err, "errors", None)
    if not callable(errors):
        return str(err)
    parts = []
    for e in errors():
        loc = [str(x) for x in e.get("loc", ())]
        sections = [k for k, v in ds.items() if isinstance(v, Mapping) and loc and loc[0] in v]
        key = ".".join(["train.deepspeed", *sections[:1], *loc])
        hint = "; remove it or check its spelling" if e.get("type") == "extra_forbidden" else ""
        parts.append(f"{key}: {e.get('msg')}{hint}")
    return "; ".join(parts) or str(err)


def deepspeed_dict(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The config handed to `deepspeed.initialize`: the user's dict plus the engine-owned keys."""
    ds = effective_deepspeed(cfg)
    ds.update(
        train_batch_size=cfg.batch_size,
        train_micro_batch_size_per_gpu=micro_batch_size(cfg, world_size),
        gradient_accumulation_steps=cfg.grad_accum,
        gradient_clipping=float(cfg.grad_clip),
        bf16={"enabled": cfg.precision == "bf16"},
    )
    ds.setdefault("steps_per_print", 1 << 30)  # the engine logs; DeepSpeed's prints are noise
    ds.setdefault("zero_allow_untested_optimizer", True)
    return ds
