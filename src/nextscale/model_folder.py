"""What a model is on disk: state dict files, model folders (config.json + model.safetensors), training runs.

A low module (it imports nothing of nextscale but the config vocabulary and the atomic writes), so that the models
save themselves, and the loaders (nextscale.checkpoints), the evaluation and the trainers read weights, through
one set of rules:

- `read_state_dict`: a `.pth`/`.pt` (unpickled with weights_only=True: a file that would run code is refused)
  or `.safetensors` file; empty, truncated and foreign files are a CheckpointError that says so.
- A model folder: `config.json` ({"model_type", "config": the architecture, and extras: class_names, sampling,
  trained_steps}) and `model.safetensors`; a transformer's folder may hold its tokenizer in `tokenizer/`.
  `save_pretrained` writes one (each file whole, through a temp file); `check_model_config` is the one check of a
  config.json (types and ranges of every field), given the config classes of the model types it may hold.
- A training run folder (`nextscale train` / `train-tokenizer`): `model/` (`export/` in older tokenizer runs) and
  `checkpoints/step_N.pt`. A training checkpoint is not a model: loading one names the folder to use instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import shlex
import typing
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nextscale.config_schema import ConfigError, coerce, ranges_of
from nextscale.files import atomic_write_bytes, default_permissions

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_SUBDIR = "tokenizer"
RUN_MODEL_SUBDIRS = ("model", "export")  # what a training run folder stands for (export/: older tokenizer runs)
CHECKPOINTS_SUBDIR = "checkpoints"
MAX_CFG = 100.0  # the largest guidance scale accepted anywhere (a model's recommended one included)


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


def _torch_load(path: Path):
    """torch.load with weights_only=True, every failure a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _looks_like_training_checkpoint(path):
            raise CheckpointError(_training_checkpoint_message(path, None, "var")) from None
        raise CheckpointError(f"refusing to load {path}: it is not a plain tensor checkpoint and would run code "
                              f"when unpickled (weights_only=True blocked: {_first_line(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        if _is_empty(path):
            raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; fetch or copy "
                                  f"it again") from None
        raise CheckpointError(f"cannot read {path}: {_first_line(e)} (truncated or not a checkpoint?)") from None


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _as_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "trainer"):  # other projects' training checkpoints wrap the weights
            if key in obj and isinstance(obj[key], Mapping) and not isinstance(obj[key], torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a `.pth`/`.pt` (pickled, with weights_only=True) or `.safetensors` state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        if _is_empty(path):
            raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; fetch or copy "
                                  f"it again")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({_first_line(e)}); it may be "
                                  f"truncated") from None
    return _as_state_dict(_torch_load(path), path)


def _first_line(e: BaseException) -> str:
    """`Type: first line of the message`, or the type alone (an EOFError of an empty file has no message)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _training_checkpoint_kind(obj) -> str | None:
    """'var' / 'vqvae' for a checkpoint of `nextscale train` / `train-tokenizer` (weights + optimizer state)."""
    if not isinstance(obj, Mapping):
        return None
    if isinstance(obj.get("vae"), Mapping) and any(k in obj for k in ("opt_g", "optimizer", "step")):
        return "vqvae"
    if isinstance(obj.get("model"), Mapping) and any(k in obj for k in ("optimizer", "model_config", "scheduler")):
        return "var"
    return None


def _looks_like_training_checkpoint(path: Path) -> bool:
    return path.parent.name == CHECKPOINTS_SUBDIR and path.name.startswith("step_") and path.suffix == ".pt"


def _run_of_checkpoint(path: Path) -> Path | None:
    return path.parent.parent if path.parent.name == CHECKPOINTS_SUBDIR else None


def _training_checkpoint_message(path: Path, kind: str | None, wanted: str) -> str:
    """What to load instead of the training checkpoint `path` (of a `kind` run) when a `wanted` model is asked."""
    run = _run_of_checkpoint(path)
    run_txt = str(run) if run is not None else "RUN"
    if kind == "vqvae":
        if wanted == "vqvae":
            return (f"{path} is a training checkpoint of `nextscale train-tokenizer` (optimizer and discriminator "
                    f"state included), not a model: use {run_txt}/model (the tokenizer trainer writes it with each "
                    f"checkpoint): load_vae({str(run / 'model') if run else 'RUN/model'!r})")
        return (f"{path} is a tokenizer training checkpoint, not a transformer: a transformer is trained with "
                f"`nextscale train CONFIG tokenizer={run_txt}`; the tokenizer itself is {run_txt}/model (load_vae)")
    if wanted == "vqvae":
        return (f"{path} is a transformer training checkpoint, not a tokenizer: the run's tokenizer is "
                f"{run_txt}/tokenizer: load_vae({str(run / 'tokenizer') if run else 'RUN/tokenizer'!r})")
    model_hint = f"{run_txt}/model"
    if run is not None and not _model_subdir(run):
        model_hint += " (written when training finishes)"
    return (f"{path} is a training checkpoint (optimizer state included), not a model: use {model_hint}, or "
            f"`nextscale export {shlex.quote(str(path))} OUT` to write this checkpoint as a model folder")


def _model_subdir(run: Path) -> Path | None:
    for name in RUN_MODEL_SUBDIRS:
        if (run / name / CONFIG_NAME).is_file():
            return run / name
    return None


def _folder_kind(folder: Path) -> str | None:
    """model_type of a model folder's config.json (None when unreadable)."""
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None



def _checkpoint_files(folder: Path) -> list[Path]:
    found = sorted((folder / CHECKPOINTS_SUBDIR).glob("step_*.pt")) if (folder / CHECKPOINTS_SUBDIR).is_dir() else []
    return found or sorted(folder.glob("step_*.pt"))


def save_pretrained(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` (and the attached tokenizer of a transformer in `tokenizer/`).

    `model` has a `model_type`, a `config` (ConfigDict) and an `extra_config` dict (class_names, sampling,
    trained_steps: written beside the architecture)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = model.model_type
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # Each file through a temp file renamed into place: an interrupted save (the trainers write model/ with each
    # checkpoint) never leaves a truncated file, and a folder being replaced keeps its old files until then.
    tmp = folder / f".{WEIGHTS_NAME}.{os.getpid()}.tmp"
    try:
        save_file(sd, str(tmp), metadata={"format": "pt", "model_type": kind})
        default_permissions(tmp)  # safetensors makes its files private (0600); a model folder is for sharing
        os.replace(tmp, folder / WEIGHTS_NAME)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps({"model_type": kind, "config": model.config.to_dict(),
                                                          **model.extra_config}, indent=2)
                                              + "\n").encode())
    tokenizer = getattr(model, "tokenizer", None)
    if kind != "vqvae" and tokenizer is not None:
        save_pretrained(tokenizer, folder / TOKENIZER_SUBDIR)
    return folder


CONFIG_CHOICES = {"lookup": ("l2", "cosine")}  # string fields and the values they take


# Counts that make Python objects (blocks, levels, scales): bounded, so that even building a model on the meta
# device to compare it with the weights stays cheap. Far above any published or trained model.
CONFIG_MAX = {"depth": 1024, "num_res_blocks": 64, "phi_count": 64, "ch_mult": 16, "patch_nums": 64}


def check_model_config(meta, config_path: str | os.PathLike, config_classes: Mapping[str, type],
                       expected_kind: str | None = None) -> dict:
    """The one check of a model folder's config.json (already parsed: `meta`), used by every loader.

    It must be an object with a "model_type" of `config_classes` (model_type -> its config dataclass, from
    nextscale.registry; `expected_kind` when given) and a "config" object whose
    keys are the architecture's fields, each of the right type and in range (patch_nums strictly increasing,
    embed_dim divisible by num_heads); "class_names" (a list of strings, at most one per class), "sampling"
    (cfg in [0, 100], top_k >= 0, top_p in [0, 1]) and "trained_steps" (>= 0) are checked when present.
    Returns the config's values with their types made exact (4.0 -> 4); CheckpointError names the file and
    the field otherwise. Other top-level keys are kept as they are (the model's extra_config).
    """
    where = str(config_path)

    def bad(message: str):
        return CheckpointError(f"{where}: {message}; fix the file or write the model folder again "
                               f"(save_pretrained / nextscale export)")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object with model_type and config, got a {type(meta).__name__}")
    classes = config_classes
    kind = meta.get("model_type")
    if kind not in classes:
        raise bad(f"model_type is {kind!r}, not one of {', '.join(classes)}")
    if expected_kind is not None and kind != expected_kind:
        return {}  # the caller names the kind it found and the loader to use
    config = meta.get("config")
    if not isinstance(config, dict):
        raise bad("it lacks the \"config\" object (the architecture)" if config is None else
                  f"\"config\" must be an object of architecture fields, got {config!r}")
    cls = classes[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise bad(f"unknown config key(s) {', '.join('config.' + k for k in unknown)}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    ranges = ranges_of(cls)
    checked, problems = {}, []
    for name, value in config.items():
        key = f"config.{name}"
        try:
            value = coerce(value, hints[name], key)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} must be a finite number, got {value}")
        elif name in CONFIG_CHOICES and value not in CONFIG_CHOICES[name]:
            problems.append(f"{key} must be one of {', '.join(CONFIG_CHOICES[name])}, got {value!r}")
        elif name in ranges:
            problems += ranges[name].problems(key, value)
        if name in CONFIG_MAX and (len(value) if isinstance(value, (list, tuple)) else value) > CONFIG_MAX[name]:
            what = "values" if isinstance(value, (list, tuple)) else ""
            problems.append(f"{key} must be at most {CONFIG_MAX[name]}{' ' + what if what else ''}, got "
                            f"{value if not what else len(value)}")
        checked[name] = value
    patch_nums = checked.get("patch_nums")
    if patch_nums and list(patch_nums) != sorted(set(patch_nums)):
        problems.append(f"config.patch_nums must be strictly increasing, got {list(patch_nums)}")
    if not problems:
        try:  # the dataclass fills the defaults (embed_dim = 64 * depth ...) and checks what spans fields
            full = cls(**checked)
        except (TypeError, ValueError, ArithmeticError) as e:
            problems.append(str(e))
        else:
            num_classes = getattr(full, "num_classes", None)
    if problems:
        raise bad("; ".join(problems))

    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad(f"class_names must be a list of strings (index = class id), got {names!r:.80}")
        if num_classes is not None and len(names) > num_classes:
            raise bad(f"class_names has {len(names)} names but the model has {num_classes} classes")
    sampling = meta.get("sampling")
    if sampling is not None:
        if not isinstance(sampling, dict):
            raise bad(f"sampling must be an object with cfg, top_k, top_p, got {sampling!r:.80}")
        rules = {"cfg": (float, 0, MAX_CFG), "top_k": (int, 0, None), "top_p": (float, 0, 1)}
        for name, (kind_of, low, high) in rules.items():
            if name not in sampling:
                continue
            value = sampling[name]
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (kind_of is float or isinstance(value, int) or float(value).is_integer())
            if not number or not math.isfinite(value) or value < low or (high is not None and value > high):
                span = f"in [{low}, {high:g}]" if high is not None else f"an integer >= {low}"
                raise bad(f"sampling.{name} must be {span}, got {value!r}")
    steps = meta.get("trained_steps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise bad(f"trained_steps must be an integer >= 0, got {steps!r}")
    return checked


def read_json(path: Path, remedy: str):
    """The parsed JSON of `path`; a file that is not UTF-8 text or not valid JSON is a CheckpointError naming it
    (`remedy`: what the user should do, e.g. "write the model folder again")."""
    try:
        return json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path} is not a text (JSON) file ({e.reason}); {remedy}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def read_config(folder: Path, config_classes: Mapping[str, type], expected_kind: str | None = None
                ) -> tuple[dict, dict]:
    """(config.json as parsed, its checked "config" values) of a model folder."""
    config_path = folder / CONFIG_NAME
    meta = read_json(config_path, "write the model folder again")
    return meta, check_model_config(meta, config_path, config_classes, expected_kind)


def read_model_folder(folder: Path, expected_kind: str, config_classes: Mapping[str, type]
                      ) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json with its "config" checked, the weights) of a model folder of `expected_kind`."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(f"{folder} is not a nextscale model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    meta, config = read_config(folder, config_classes, expected_kind)
    if meta.get("model_type") != expected_kind:
        hint = {"vqvae": f": load it with load_vae({str(folder)!r})",
                "var": f": load it with load_var({str(folder)!r})",
                "raster_ar": f": load it with nextscale.load_raster_ar({str(folder)!r})",
                }.get(meta.get("model_type"), "")
        raise CheckpointError(f"{folder} holds a {meta.get('model_type')!r} model, not a {expected_kind!r}{hint}")
    return {**meta, "config": config}, read_state_dict(weights_path)
