"""JSON round trip of the architecture dataclasses saved in every model folder's config.json."""

from __future__ import annotations

import dataclasses


class ConfigDict:
    """Mixin for config dataclasses: `to_dict()` (tuples as lists) and `from_dict()` (unknown keys are an error)."""

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)
