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

    cfg = load_config(TrainConfig, "configs/x.yaml", ["steps=10", "optim.lr=3e-4", "optim.betas=[0.9,0.99]"])
    save_config(cfg, "runs/x/config.yaml")      # the resolved config, reloadable with load_config
    config_to_dict(cfg)                          # plain dict (tuples become lists), e.g. for a checkpoint

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
(config dataclasses defined outside nextscale.training have theirs in EXTERNAL_RANGES). The trainers
call `check_ranges(cfg)` before any work: every value out of range is named in one ConfigError
("steps must be at least 1, got -5; optim.lr must be greater than 0, got nan"); NaN and inf are
refused for every float. A test walks the trainers' config dataclasses, so a new numeric field
without a range fails it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key, or has a value of the wrong type."""


def config_to_dict(cfg) -> dict:
    """Dataclass (nested) -> plain dict of YAML-safe values; tuples become lists."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def save_config(cfg, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file, then rename)."""
    from nextscale.files import atomic_write_bytes
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
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


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
    cfg = from_dict(cls, data)
    check_overrides_take_effect(cfg, overrides)
    return cfg


def check_overrides_take_effect(cfg, overrides: Sequence[str]) -> None:
    """Refuse (ConfigError, with the reason and the fix) an override that the resolved config ignores."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        *parents, name = key.split(".")
        section, prefix = cfg, ""
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


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a (nested) dict, checking keys and coercing types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    renamed = {k: v for k, v in getattr(cls, "RENAMED", {}).items() if k in data}
    if renamed:
        old, new = next(iter(renamed.items()))
        raise ConfigError(f"config key {prefix}{old} was renamed to {prefix}{new}: write {prefix}{new} instead")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(prefix + k for k in unknown)}; "
                          f"known keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            # Nested section: start from the field's defaults, then apply the given keys.
            default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
                else hint()
            merged = merge(config_to_dict(default), value) if isinstance(value, dict) else value
            kwargs[name] = from_dict(hint, merged, prefix + name + ".")
        else:
            kwargs[name] = coerce(value, hint, prefix + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid config{' section ' + prefix.rstrip('.') if prefix else ''}: {e}") from None


def coerce(value: Any, hint, key: str):
    """Check/convert one value against a type hint (int, float, str, bool, tuple[X, ...], list[X], X | None)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item_hint = args[0] if args else Any
        items = [coerce(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any or hint is object:
        return value
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


# ---------------------------------------------------------------------------- value ranges
@dataclasses.dataclass(frozen=True)
class Range:
    """The values one numeric config field accepts (see RANGES in the module docstring).

    `low`/`high`: bounds, inclusive unless `low_open`/`high_open`; `choices`: the only values allowed;
    `zero`: what 0 means when 0 is a switch ("off", "never", ...), named in the message. For a tuple or list
    field the bounds hold for every item, and `items`/`min_items` bound the number of items. A float must be
    finite (NaN and inf are refused whatever the bounds); None passes (the field's "unset").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple | None = None
    zero: str | None = None
    items: int | None = None
    min_items: int = 0

    def describe(self) -> str:
        """The accepted values in words, as the error message says them."""
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            if self.zero is not None and self.low == 0 and not self.low_open:
                return f"0 ({self.zero}) or more"
            return f"greater than {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        if self.high is not None:
            return f"less than {_number(self.high)}" if self.high_open else f"at most {_number(self.high)}"
        return "a finite number"

    def problems(self, key: str, value) -> list[str]:
        """One message per bad value ("key must be <range>, got <value>"); [] when `value` is acceptable."""
        if value is None or isinstance(value, bool):
            return []
        if isinstance(value, (tuple, list)):
            found = []
            if self.items is not None and len(value) != self.items:
                found.append(f"{key} must hold {self.items} values, got {list(value)}")
            elif len(value) < self.min_items:
                found.append(f"{key} must hold at least {self.min_items} value(s), got {list(value)}")
            for i, item in enumerate(value):
                found += self.problems(f"{key}[{i}]", item)
            return found
        if not isinstance(value, (int, float)):
            return []  # not a number: type checking (coerce) reports it
        if isinstance(value, float) and not math.isfinite(value):
            words = self.describe()
            return [f"{key} must be {words}{'' if words == 'a finite number' else ' (a finite number)'}, got {value}"]
        if self.choices is not None:
            ok = value in self.choices
        else:
            ok = ((self.low is None or (value > self.low if self.low_open else value >= self.low))
                  and (self.high is None or (value < self.high if self.high_open else value <= self.high)))
        return [] if ok else [f"{key} must be {self.describe()}, got {value}"]


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# The ranges used most; a field may also have its own Range(...).
AT_LEAST_1 = Range(low=1)                    # counts and sizes: steps, global_batch, depth, ...
NON_NEGATIVE = Range(low=0)                  # weights and thresholds where 0 is an ordinary value
POSITIVE = Range(low=0, low_open=True)       # learning rates, eps, ratios that divide
FRACTION = Range(low=0, high=1)              # [0, 1]: probabilities, lr multipliers
BELOW_ONE = Range(low=0, high=1, high_open=True)  # [0, 1): dropout, label smoothing, Adam betas
SEED = Range(low=0, high=2**32 - 1)          # NumPy's seeding refuses negative seeds


def off_at_zero(meaning: str = "off") -> Range:
    """A count or interval where 0 switches the feature off (`meaning` says what 0 does, for the message)."""
    return Range(low=0, zero=meaning)


# Ranges of config dataclasses defined outside nextscale.training (keyed by "module.QualName", so that this
# module imports none of them). A class's own RANGES attribute, when it has one, is used instead.
EXTERNAL_RANGES: dict[str, dict[str, Range]] = {
    "nextscale.data.datasets.DataConfig": {
        "eval_fraction": BELOW_ONE,
        "max_images": AT_LEAST_1,  # None: every image
        "resolution": AT_LEAST_1,
        "channels": Range(choices=(1, 3)),
        "resize_ratio": Range(low=1),  # the crop is taken from the resized image
        "num_workers": off_at_zero("load in the training process"),
    },
    "nextscale.tokenizer.vqvae.VQVAEConfig": {
        "ch": AT_LEAST_1,
        "ch_mult": Range(low=1, min_items=1),
        "num_res_blocks": AT_LEAST_1,
        "z_channels": AT_LEAST_1,
        "vocab_size": AT_LEAST_1,
        "patch_nums": Range(low=1, min_items=1),
        "phi_count": AT_LEAST_1,
        "phi_ratio": FRACTION,
        "image_channels": Range(choices=(1, 3)),
        "beta": NON_NEGATIVE,
        "dropout": BELOW_ONE,
    },
}


def ranges_of(cls) -> dict[str, Range]:
    """The range table of config dataclass `cls`: its RANGES attribute, else its EXTERNAL_RANGES entry, else {}."""
    own = getattr(cls, "RANGES", None)
    if own is not None:
        return own
    return EXTERNAL_RANGES.get(f"{cls.__module__}.{cls.__qualname__}", {})


def range_problems(cfg, prefix: str = "") -> list[str]:
    """Every value of `cfg` (and its nested sections) outside its field's Range, one message each."""
    found = []
    table = ranges_of(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            found += range_problems(value, prefix + f.name + ".")
        elif f.name in table:
            found += table[f.name].problems(prefix + f.name, value)
    return found


def check_ranges(cfg) -> None:
    """Refuse (ConfigError) any value out of its range, before any work; all bad keys in one message.

    The trainers call this first; a numeric field without a range is caught by the tests
    (tests/test_training_config_ranges.py walks the config dataclasses)."""
    found = range_problems(cfg)
    if found:
        raise ConfigError("; ".join(found))
