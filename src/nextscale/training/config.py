"""Training configs: YAML files loaded into (nested) dataclasses, with `key=value` overrides.

Usage:

    @dataclass
    class OptimConfig:
        lr: float = 1e-4
        betas: tuple[float, ...] = (0.9, 0.95)

    @dataclass
    class TrainConfig:
        out_dir: str = "runs/x"
        steps: int = 1000
        optim: OptimConfig = field(default_factory=OptimConfig)

    config = load_config(TrainConfig, "configs/x.yaml", ["steps=10", "optim.lr=3e-4", "optim.betas=[0.9,0.99]"])
    save_config(config, "runs/x/config.yaml")   # the resolved config, reloadable with load_config
    config_to_dict(config)                       # plain dict (tuples become lists), e.g. for a checkpoint

Override values are parsed as YAML (`steps=10` is an int, `name=null` is None, `a=[1,2]` a list;
`patch_nums=1,2,3` is also accepted for tuple/list fields). Unknown keys and values of the wrong
type are a `ConfigError` (a ValueError) naming the key and listing the known ones.

A config dataclass may declare, as class attributes:
  RENAMED = {"old_key": "new_key"}      an old key in a file or override is an error naming the new one
  SHADOWED_BY = {"key": "other_key"}    `key` has no effect while `other_key` is not None: an override of
                                        `key` is then refused with the reason (e.g. optim.base_lr vs optim.lr)
and a method `override_has_no_effect(self, key) -> str | None` for the other cases (e.g. data.eval_path
with Fashion-MNIST). Only command-line overrides are checked: a recipe may hold both keys.

Value ranges: every numeric field of a training config has a `Range` in its dataclass's table,
  RANGES = {"steps": AT_LEAST_1, "eval_every": off_at_zero("never"), "optim.lr"...: POSITIVE, ...}
(the `Range` vocabulary and the checks live in nextscale.config_schema, shared with the model configs). The trainers
call `check_ranges(config)` before any work: every value out of range is named in one ConfigError
("steps must be at least 1, got -5; optim.lr must be greater than 0, got nan"); NaN and inf are
refused for every float. A test walks the trainers' config dataclasses, so a new numeric field
without a range fails it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import yaml

from nextscale.config_schema import ConfigError, config_to_dict, from_dict, merge


def save_config(config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    from nextscale.files import atomic_write_bytes
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
    atomic_write_bytes(path, text.encode())


def parse_overrides(overrides: Sequence[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"} (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. steps=100 or optim.lr=1e-4)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text  # e.g. an unbalanced bracket: keep the raw string, type checking decides
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} was already given a value")
        node[parts[-1]] = value
    return tree


def load_config(cls, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()):
    """Defaults of `cls` <- YAML file at `path` (optional) <- `overrides` ("key=value" strings)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    data = merge(data, parse_overrides(overrides))
    config = from_dict(cls, data)
    check_overrides_take_effect(config, overrides)
    return config


def check_overrides_take_effect(config, overrides: Sequence[str]) -> None:
    """Refuse (ConfigError, with the reason and the fix) an override that the resolved config ignores."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        *parents, name = key.split(".")
        section, prefix = config, ""
        for part in parents:
            section = getattr(section, part, None)
            prefix += part + "."
        if section is None or not dataclasses.is_dataclass(section):
            continue
        shadow = getattr(type(section), "SHADOWED_BY", {}).get(name)
        if shadow is not None and getattr(section, shadow, None) is not None:
            value = getattr(section, shadow)
            raise ConfigError(f"{prefix}{name} has no effect while {prefix}{shadow}={value} is set; set {prefix}"
                              f"{shadow} instead (or {prefix}{shadow}=null to use {name})")
        check = getattr(section, "override_has_no_effect", None)
        reason = check(name) if callable(check) else None
        if reason:
            raise ConfigError(f"{prefix}{name} has no effect: {reason}")


