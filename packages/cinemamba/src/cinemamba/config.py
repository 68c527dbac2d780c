"""Structured configs: a dataclass schema + a YAML file + `key=value` overrides, in struct mode.

Every package defines its own config dataclasses; this module only merges and validates, so a
mistyped key anywhere is an error that names the key, the file it came from and close matches.
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


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = str(err.full_key or err.key)
        raise ConfigError(f"unknown config key {key!r} in {source}.{_suggest(key, base)}") from None
    except ValidationError as err:
        raise ConfigError(f"bad value for {err.full_key!r} in {source}: {err.msg}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot merge {source}: {err}") from None


def load_config(
    schema: Any, path: str | Path | None = None, overrides: Sequence[str] = ()
) -> DictConfig:
    """Merge `schema` (a dataclass or instance) with an optional YAML file and dotlist overrides.

    The result is in struct mode: reading or writing a key the schema lacks raises.
    """
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_struct(cfg, True)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as err:  # YAML syntax errors come in several types
            raise ConfigError(f"cannot parse config file {str(path)!r}: {err}") from None
        cfg = _merge(cfg, loaded, f"file {str(path)!r}")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"overrides must look like key=value, got {bad}")
    if overrides:
        cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)), "command-line overrides")
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_object(cfg: DictConfig) -> Any:
    """Turn a merged structured config back into its dataclass instance."""
    return OmegaConf.to_object(cfg)
