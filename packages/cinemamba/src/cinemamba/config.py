"""Structured configs: a dataclass schema + a YAML file + `key=value` overrides, in struct mode.

Every package defines its own config dataclasses; this module only reads, merges and validates,
so a missing file, a YAML syntax error, a mistyped key (with close matches) or a value of the
wrong type is one `ConfigError` naming the file and the key. Every cinemamba loader goes through
`read_yaml` / `merge_config` (`load_config` here, `train.config.load_experiment` for
experiments with their DeepSpeed file); docs/architecture.md says why the model packages keep
their own reader for the config files they save.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError


class ConfigError(ValueError):
    """A configuration problem, with the key and a way to fix it in the message."""


def _suggest(key: str, cfg: DictConfig) -> str:
    """Name the valid keys next to a bad one, closest matches first."""
    parent_path, _, leaf = key.rpartition(".")
    node: Any = cfg
    for part in filter(None, parent_path.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig):
        return ""
    valid = [str(k) for k in node]
    close = difflib.get_close_matches(leaf, valid, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Valid keys here: {', '.join(sorted(valid))}."


def merge_config(base: DictConfig, other: Any, source: str) -> DictConfig:
    """`base` with `other` merged over it; an unknown key (with close matches) or a value of
    the wrong type is a ConfigError naming the key and `source` (e.g. "file 'x.yaml'")."""
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = str(err.full_key or err.key)
        raise ConfigError(f"unknown config key {key!r} in {source}.{_suggest(key, base)}") from None
    except ValidationError as err:
        raise ConfigError(f"bad value for {err.full_key!r} in {source}: {err.msg}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot merge {source}: {err}") from None


def read_yaml(path: str | Path, what: str = "config file") -> DictConfig:
    """A YAML mapping read from `path`; a missing file, a syntax error (with its line) or a file
    that is not a mapping is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors come in several types
        raise ConfigError(f"cannot parse {what} {str(path)!r}: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{what} {str(path)!r} must hold a mapping of keys, not a list")
    return loaded


def parse_overrides(overrides: Sequence[str]) -> DictConfig | None:
    """`key=value` command-line overrides as a config (None when there are none)."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    return OmegaConf.from_dotlist(list(overrides)) if overrides else None


def load_config(
    schema: Any, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """Merge `schema` (a dataclass or instance) with an optional YAML file and dotlist overrides.

    The result is in struct mode: reading or writing a key the schema lacks raises.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    if path is not None:
        cfg = merge_config(cfg, read_yaml(path), f"file {str(path)!r}")
    dotlist = parse_overrides(overrides)
    if dotlist is not None:
        cfg = merge_config(cfg, dotlist, "command-line overrides")
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_object(cfg: DictConfig) -> Any:
    """Turn a merged structured config back into its dataclass instance."""
    return OmegaConf.to_object(cfg)
