"""Training checkpoints (written whole through `nextscale.files`): keep-last-k, find-latest, random-state capture.

Usage:

    ckpts = CheckpointManager("runs/x/checkpoints", keep_last=3)
    ckpts.save(step, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                      "rng": capture_rng_state({"data": data_generator})}, config=config)
    # -> runs/x/checkpoints/step_00001000.pt and step_00001000.yaml (the resolved config)

    ckpts.remove_stale_temp_files()             # at start: the leftovers of writes a kill interrupted
    found = ckpts.load_latest()                 # (path, state) of the newest checkpoint that loads, or None
    if found is not None:
        path, state = found
        model.load_state_dict(state["model"]); ...
        restore_rng_state(state["rng"], {"data": data_generator})

Writes go to a temporary file in the same folder, are fsync'ed, given the usual permissions (0644 under
umask 022), then renamed over the target (`os.replace` is atomic on POSIX), so a crash mid-write never leaves a truncated checkpoint
and never replaces the previous good one; it leaves the temp file (`.step_N.pt.XXXX.tmp`, as large
as a checkpoint), which `remove_stale_temp_files` deletes when the next run starts. A checkpoint
damaged anyway (a disk error, a partial copy) is skipped by `load_latest` with a warning: it is
renamed to `step_N.pt.damaged` (kept, never deleted) and the previous checkpoint is loaded.
Checkpoints hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from nextscale.files import atomic_torch_save

CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")
# The temp files atomic_write makes for a checkpoint and its config (mkstemp: ".{name}.{random}.tmp").
CHECKPOINT_TEMP_RE = re.compile(r"^\.step_\d+\.(pt|yaml)\.[^/]+\.tmp$")


class DamagedCheckpointWarning(UserWarning):
    """A checkpoint did not load (truncated, corrupted); it was set aside and an older one is used."""


# ---------------------------------------------------------------------------- random states
def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Python, NumPy, torch (CPU and all CUDA devices) and named torch.Generator states."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy's state tuple holds an ndarray; stored as a tensor so weights_only loading works.
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng_state`; a generator named in `generators` but not in the state is an error."""
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise KeyError(f"the checkpoint holds no state for the random generator {name!r}")
        g.set_state(state["generators"][name])


def _as_tuples(x):
    # random.setstate wants tuples; a round trip through some serializers gives lists.
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------- checkpoint folder
def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a training checkpoint written by `CheckpointManager.save` (or `atomic_torch_save`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors have many types
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None


class CheckpointManager:
    """A folder of `step_NNNNNNNN.pt` checkpoints (+ `.yaml` configs); keeps the newest `keep_last`."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.folder / f"step_{step:08d}.pt"

    def all(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1][1] if found else None

    def load_latest(self, map_location="cpu", set_aside: bool = True, using: str = "resuming from"
                    ) -> tuple[Path, dict] | None:
        """(path, state) of the newest checkpoint that loads; None when none does (or there is none).

        A newer one that does not load is reported in one line (DamagedCheckpointWarning: "skipping the damaged
        checkpoint ..., {using} an older one if any") and, with `set_aside`, renamed to `step_N.pt.damaged` (its
        .yaml too): kept for inspection, out of the way of the next resume and of keep-last pruning. Only one
        process of a distributed run should set files aside; readers that only read (export) leave them."""
        for _, path in reversed(self.all()):
            try:
                return path, load_checkpoint(path, map_location=map_location)
            except (ValueError, FileNotFoundError) as e:  # FileNotFoundError: another process set it aside
                kept = self.set_aside(path) if set_aside and path.exists() else None
                reason = " ".join(str(e).split())  # one line
                warnings.warn(f"skipping the damaged checkpoint {path}" + (f" (kept as {kept.name})" if kept else "")
                              + f", {using} an older one if any: {reason}", DamagedCheckpointWarning,
                              stacklevel=2)
        return None

    def set_aside(self, path: Path) -> Path:
        """Rename a damaged checkpoint (and its .yaml) to NAME.damaged (NAME.damaged.1, ... when taken)."""
        target = path.with_name(path.name + ".damaged")
        n = 0
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.damaged.{n}")
        os.replace(path, target)
        config = path.with_suffix(".yaml")
        if config.exists():
            os.replace(config, target.with_name(target.name.replace(path.name, config.name, 1)))
        return target

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temp files of checkpoint writes that never finished (a kill mid-write left them; each is as
        large as a checkpoint and nothing reads it). Only ours: `.step_N.pt.*.tmp` / `.step_N.yaml.*.tmp` in this
        folder. Call it when a run starts, before it writes: a checkpoint folder belongs to one run at a time."""
        if not self.folder.is_dir():
            return []
        removed = []
        for p in self.folder.iterdir():
            if CHECKPOINT_TEMP_RE.match(p.name) and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
        return sorted(removed)

    def save(self, step: int, state: dict, config=None) -> Path:
        """Write checkpoint `step` (and its config as YAML beside it), then delete the oldest beyond keep_last."""
        path = self.path_for(step)
        if config is not None:
            from nextscale.training.config import save_config
            save_config(config, path.with_suffix(".yaml"))
        atomic_torch_save(state, path)
        for _, old in self.all()[:-self.keep_last]:
            old.unlink(missing_ok=True)
            old.with_suffix(".yaml").unlink(missing_ok=True)
        return path

