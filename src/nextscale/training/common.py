"""What both trainers (`var_trainer`, `tokenizer_trainer`) share: one vocabulary and one set of run-folder rules.

- precision: float32 | bfloat16 | float16 (the old names fp32, bf16, fp16 are accepted); float16 needs a GPU
  and comes with a gradient scaler, bfloat16 / float16 run under autocast;
- resume: auto | never | a checkpoint path (true / false are accepted as auto / never), the same rules for both
  (`find_resume_checkpoint`);
- the run folder: config.yaml, checkpoints/step_N.pt (+ .yaml), metrics.jsonl (the lines after the step a run
  resumes from are dropped: they are trained again), curves.png, and model/ (the inference format);
- a bad run (wrong input, a config that cannot train) is a `ConfigError` (a ValueError: the command line prints
  it in one line), raised before the first step.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch

from nextscale.config_schema import ConfigError
from nextscale.training import distributed as D
from nextscale.training.checkpointing import CheckpointManager, load_checkpoint
from nextscale.training.config import save_config
from nextscale.training.metrics import drop_records_after, plot_curves

PRECISION_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISIONS = ("float32", "bfloat16", "float16")
MODEL_SUBDIR = "model"  # a run folder's model folder (the inference format)
CHECKPOINT_SUBDIR = "checkpoints"


# ---------------------------------------------------------------------------- config values
def normalize_precision(value: str) -> str:
    """float32 | bfloat16 | float16 (the old names fp32, bf16, fp16 are accepted)."""
    value = PRECISION_ALIASES.get(value, value)
    if value not in PRECISIONS:
        raise ConfigError(f"precision must be float32, bfloat16 or float16, got {value!r}")
    return value


def normalize_resume(value) -> str:
    """auto | never | a checkpoint path (true/false are accepted as auto/never)."""
    if value is True:
        return "auto"
    if value is False or value is None:
        return "never"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"resume must be auto, never or a checkpoint path, got {value!r}")
    return value


# ---------------------------------------------------------------------------- precision
def check_precision(precision: str, device: torch.device) -> str:
    """The normalized precision; float16 on a CPU is a ConfigError."""
    precision = normalize_precision(precision)
    if precision == "float16" and device.type != "cuda":
        raise ConfigError("precision float16 needs a GPU; on CPU use float32 (or bfloat16)")
    return precision


def autocast(precision: str, device: torch.device):
    """A reusable context: autocast to bfloat16 / float16, nothing for float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for float16 only (a disabled one passes everything through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "float16")


def set_threads(threads: int) -> None:
    """torch CPU threads per process: `threads`, or 0: the free cores (nextscale.threads) shared between the
    processes torchrun started on this machine. The choice is printed by rank 0."""
    from nextscale import threads as thread_policy
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    thread_policy.set_threads(threads, world_size=local_world, announce=os.environ.get("RANK", "0") == "0")


# ---------------------------------------------------------------------------- run folder
def open_checkpoints(out_dir: Path, keep: int, main: bool) -> CheckpointManager:
    """The run's checkpoint folder; rank 0 removes what a kill during a checkpoint write left behind."""
    ckpts = CheckpointManager(Path(out_dir) / CHECKPOINT_SUBDIR, keep_last=keep)
    if main:
        ckpts.remove_stale_temp_files()
    return ckpts


def find_resume_checkpoint(ckpts: CheckpointManager, resume: str, main: bool,
                           map_location="cpu") -> tuple[Path, dict] | None:
    """(path, state) of the checkpoint to resume from, None to start afresh (a collective under torchrun).

    never: None, and a folder already holding checkpoints is a ConfigError; auto: rank 0 picks the newest
    checkpoint that loads (a damaged one is set aside with a warning) and the other ranks load the same file;
    PATH: that file, which must exist (ConfigError) and load (ValueError: a damaged checkpoint named by the user
    stays an error)."""
    if resume == "never":
        if ckpts.latest() is not None:
            raise ConfigError(f"{ckpts.folder} already holds checkpoints and resume=never: choose another out_dir, "
                              f"delete them, or resume=auto to continue")
        return None
    if resume == "auto":
        found = ckpts.load_latest(map_location=map_location) if main else None
        path = D.broadcast_object(found[0] if found else None)
        if path is None:
            return None
        return path, found[1] if found else load_checkpoint(path, map_location=map_location)
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no such checkpoint file (use auto, never or a checkpoints/step_N.pt "
                          f"path)")
    return path, load_checkpoint(path, map_location=map_location)


def drop_retrained_records(out_dir: Path, step: int, main: bool) -> None:
    """metrics.jsonl: the steps after the checkpoint are trained (and logged) again, so keep one line per step."""
    if not main:
        return
    dropped = drop_records_after(Path(out_dir) / "metrics.jsonl", step)
    if dropped:
        D.print_main(f"metrics.jsonl: dropped {dropped} line(s) after step {step}, which this run trains again")


def write_run_config(out_dir: Path, config) -> None:
    """out_dir/config.yaml: the resolved config (rank 0 only)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / "config.yaml")


def draw_curves(out_dir: Path, keys, log_y=()) -> Path | None:
    """out_dir/curves.png from metrics.jsonl; a plotting failure is a warning, never the end of a finished run."""
    jsonl, png = Path(out_dir) / "metrics.jsonl", Path(out_dir) / "curves.png"
    if not jsonl.is_file():
        return None
    try:
        plot_curves(jsonl, png, keys, log_y=log_y)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"could not draw {png}: {type(e).__name__}: {e}")
        return None
    return png


def export_model(model, folder: Path) -> Path:
    """Write `model` (a tokenizer, or a transformer with its tokenizer) as a model folder (the inference format)."""
    from nextscale.checkpoints import save_pretrained
    return save_pretrained(model, folder)
