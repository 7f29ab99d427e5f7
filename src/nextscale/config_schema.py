"""Config dataclasses: checked construction from plain dicts, value ranges, and the JSON/YAML round trip.

The one vocabulary of every config in the package (training recipes, model architectures, data): a low module
(it imports nothing of nextscale), so that models, loaders and trainers all check values the same way.

- `from_dict(cls, data)`: build a (nested) dataclass, refusing unknown keys and coercing types (`ConfigError`,
  a ValueError, names the key). A class may declare `RENAMED = {"old": "new"}` (an old key is an error naming the
  new one).
- `RANGES = {"field": Range(...)}` on a config class: the values each numeric field accepts; `check_ranges(cfg)`
  refuses every value out of range in one ConfigError (NaN and inf are refused for every float).
- `ConfigDict`: the mixin of the architecture configs saved in a model folder's config.json (`to_dict` /
  `from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

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


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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




def ranges_of(cls) -> dict[str, Range]:
    """The range table of config dataclass `cls`: its RANGES class attribute ({} when it has none)."""
    return getattr(cls, "RANGES", None) or {}


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


class ConfigDict:
    """Mixin for architecture config dataclasses: `to_dict()` (tuples as lists) and `from_dict()` (checked: unknown
    keys and values of the wrong type are a ConfigError)."""

    def to_dict(self) -> dict:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict):
        return from_dict(cls, d)
