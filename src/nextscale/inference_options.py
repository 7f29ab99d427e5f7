"""The options every front end reads the same way: classes, seeds, the recommended sampling settings, precision.

The command line, the web app, `sample` and `edit` all take a model's classes by id or name, seeds, and the
guidance/top-k/top-p defaults that a model folder recommends through these functions, so the same request means
the same thing wherever it is made. A layer below the sampler and the front ends (it imports no nextscale module
above the model-folder format).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch

from nextscale.model_folder import MAX_CFG

# Seeds: whole numbers in [0, MAX_SEED], as torch seeds them and the web app takes them (image i: seed + i).
MAX_SEED = 2**63 - 1


# "float32" is exact (the reference results); the others trade exactness for speed (see `sample`).
PRECISIONS = ("float32", "bfloat16", "float16", "int8")


def validate_sampling_args(num_classes: int, labels: torch.Tensor | None, cfg: float, top_k: int, top_p: float) -> None:
    """Raise ValueError with a message that names the bad argument."""
    if labels is not None and labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        bad = labels[(labels < 0) | (labels > num_classes)].tolist()
        raise ValueError(f"class ids {bad} are outside [0, {num_classes}] "
                         f"(0..{num_classes - 1} are classes, {num_classes} is the null class for unconditional sampling)")
    if not (0 <= cfg <= MAX_CFG):  # NaN fails the comparison too
        raise ValueError(f"cfg must be a number in [0, {MAX_CFG:g}] (0 = no guidance), got {cfg}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {top_p}")


def check_seed(seed, count: int = 1, name: str = "seed") -> int:
    """`seed` as an int, when it and the seeds of `count` images after it (seed + i) lie in [0, MAX_SEED];
    else a ValueError that says so under `name` (the argument or option)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    seed = int(seed)
    last = MAX_SEED - max(count - 1, 0)
    if not 0 <= seed <= last:
        tail = f" (image i uses seed + i: {count} images need a seed of at most {last})" if count > 1 else ""
        raise ValueError(f"{name} must be a whole number in [0, {MAX_SEED}]{tail}, got {seed}")
    return seed


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(check_seed(seed))
    return g


def seeded_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image: image i then samples exactly as it would alone with seed seeds[i]."""
    return [make_generator(s, device) for s in seeds]


# Published settings for FID (spec §3): the default of models that recommend none of their own.
PUBLISHED_SAMPLING = {"cfg": 1.5, "top_k": 900, "top_p": 0.96}


# Words that name the null class (unconditional sampling) wherever a class is read.
NULL_CLASS_WORDS = ("null", "none", "unconditional")


def recommended_sampling(var) -> dict:
    """{"cfg", "top_k", "top_p"}: the model's recommendation (`var.extra_config["sampling"]`, kept in the
    model folder's config.json; the transformer trainer's export writes it), else the published FID
    settings 1.5 / 900 / 0.96. The one default of `sample`, `edit`, `nextscale sample|edit` and the web app."""
    own = (getattr(var, "extra_config", None) or {}).get("sampling") or {}
    return {k: type(v)(own.get(k, v)) for k, v in PUBLISHED_SAMPLING.items()}


def resolve_sampling(var, cfg: float | None, top_k: int | None, top_p: float | None) -> dict:
    """cfg/top_k/top_p as given, None replaced by `recommended_sampling(var)`; checked."""
    given = {"cfg": cfg, "top_k": top_k, "top_p": top_p}
    settings = {k: v if given[k] is None else given[k] for k, v in recommended_sampling(var).items()}
    validate_sampling_args(var.num_classes, None, **settings)
    return settings


def class_names(var) -> list[str]:
    """The model's class names (`var.extra_config["class_names"]`, index = class id), or [] when it has none."""
    return [str(n) for n in ((getattr(var, "extra_config", None) or {}).get("class_names") or [])]


def class_id(value, var) -> int:
    """One class, as an id or a name, -> its id. Accepted: an int (or a 0-d tensor / numpy integer); a
    string that is one of the model's class names (case-insensitive; a name wins over the same digits
    read as an id); a string of digits (an id); "null" / "none" / "unconditional" (the null class
    `var.num_classes`, unconditional sampling). Raises ValueError naming the known classes."""
    num_classes = var.num_classes
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, str):
        text = value.strip()
        names = class_names(var)
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.lower() in NULL_CLASS_WORDS:
            return num_classes
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isascii() and digits.isdigit():  # '²' and other Unicode digits are not ids
            value = int(text)
        else:
            known = (f"the model's classes are {', '.join(repr(n) for n in names)}" if names else
                     "this model has no class names")
            why = " (class ids are written in the digits 0-9)" if digits.isdigit() or digits.isnumeric() else ""
            raise ValueError(f"unknown class {value!r}{why}: {known}; or give a class id in [0, {num_classes - 1}], "
                             f"or {num_classes} (or 'null') for unconditional")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"a class is an id (int) or a class name (str), got {value!r}")
    c = int(value)
    if not 0 <= c <= num_classes:
        raise ValueError(f"class id {c} is outside [0, {num_classes}] (0..{num_classes - 1} are classes, "
                         f"{num_classes} is the null class for unconditional sampling)")
    return c


def parse_classes(values, var) -> list[int] | None:
    """Classes as the command line, the web app and `sample(labels=...)` take them -> ids (None for None).

    values: one class or a list of them, each an id or a name as `class_id` reads it; ids and names may
    be mixed. A string that is not itself a class name may hold several, comma-separated ("Dress,3")."""
    if values is None:
        return None
    if isinstance(values, (str, int, np.integer)) or (isinstance(values, torch.Tensor) and values.ndim == 0):
        values = [values]
    ids = []
    for value in values:
        if isinstance(value, str) and "," in value and value.strip().lower() not in \
                [n.lower() for n in class_names(var)]:
            ids.extend(class_id(part, var) for part in value.split(",") if part.strip())
        else:
            ids.append(class_id(value, var))
    return ids


def as_label_tensor(labels, var, device) -> torch.Tensor | None:
    """labels (ids, names, mixed, or a tensor / array of ids) -> a LongTensor (B,) of checked ids."""
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor) or isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        t = torch.as_tensor(labels, device=device)
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"class ids must be integers, got a {t.dtype} tensor")
        t = t.to(dtype=torch.long).flatten()
    else:
        t = torch.tensor(parse_classes(labels, var), dtype=torch.long, device=device)
    validate_sampling_args(var.num_classes, t, 0.0, 0, 0.0)
    return t


def precision_context(precision: str, device: torch.device):
    """Autocast for "bfloat16"/"float16"; nothing for "float32" and "int8"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision='int8' (dynamic int8 quantization) runs on CPU only; "
                         "use 'bfloat16' or 'float16' on a GPU")
    if precision in ("bfloat16", "float16"):
        return torch.autocast(device.type, dtype=getattr(torch, precision))
    return contextlib.nullcontext()
