"""A `nextscale train` run's checkpoint as a model: the transformer with its tokenizer, and the model folder
(the inference format `nextscale.load_var` reads) that `nextscale export` and the end of training write."""

from __future__ import annotations

import os
from pathlib import Path

from nextscale.config_schema import ConfigError
from nextscale.registry import MODEL_TYPES
from nextscale.training.checkpointing import CheckpointManager, load_checkpoint
from nextscale.training.common import CHECKPOINT_SUBDIR, export_model
from nextscale.training.token_cache import tokenizer_identity


def read_run_checkpoint(path: str | os.PathLike) -> tuple[Path, dict]:
    """(path, state) of a training checkpoint, or of a run folder's newest checkpoint that loads.

    A run folder's newer checkpoints that do not load (truncated, damaged) are skipped with a
    DamagedCheckpointWarning naming each, as resume=auto skips them, but left in place (resume sets them aside).
    A checkpoint named by its path must load: ValueError in one line otherwise."""
    path = Path(path)
    if not path.is_dir():
        try:
            return path, load_checkpoint(path)
        except ValueError as e:
            raise ValueError(f"{' '.join(str(e).split())}: it is damaged or truncated; pass the run folder to "
                             f"use its newest checkpoint that loads, or an older checkpoint") from None
    ckpts = CheckpointManager(path / CHECKPOINT_SUBDIR)
    if not ckpts.all():
        ckpts = CheckpointManager(path)
    found = ckpts.all()
    if not found:
        raise FileNotFoundError(f"no checkpoint (checkpoints/step_*.pt) found in {path}")
    latest = ckpts.load_latest(set_aside=False, using="using")
    if latest is None:
        raise ValueError(f"none of the {len(found)} checkpoint(s) in {ckpts.folder} can be read (the newest, "
                         f"{found[-1][1].name}, and every older one are damaged or truncated): train again, or "
                         f"restore a copy of the run")
    return latest


def checkpoint_to_model(path: str | os.PathLike, tokenizer: str | None = None):
    """The transformer of a training checkpoint with its tokenizer attached (the run's tokenizer/ by default).
    A run folder stands for its newest checkpoint that loads (read_run_checkpoint); `trained_steps` in the
    model's extra_config says which."""
    from nextscale.checkpoints import load_vae
    path, state = read_run_checkpoint(path)
    if "model_config" not in state:
        raise ConfigError(f"{path} is not a transformer training checkpoint (written by `nextscale train`)")
    tok_path = Path(tokenizer) if tokenizer else path.parent.parent / "tokenizer"
    if not tok_path.exists():
        raise FileNotFoundError(f"tokenizer {tok_path} not found: pass the tokenizer the run was trained with")
    vae = load_vae(tok_path, patch_nums=state["model_config"].get("patch_nums"))
    ident = tokenizer_identity(vae)
    if (ident["config_hash"], ident["weights_hash"]) != (state["tokenizer"]["config_hash"], state["tokenizer"]["weights_hash"]):
        raise ConfigError(f"the tokenizer {tok_path} is not the one {path} was trained with")
    model = MODEL_TYPES[state.get("model_kind", "var")].build(state["model_config"])
    model.load_state_dict(state["model"])
    model.attach_tokenizer(vae)
    # Read by `nextscale sample`: class names, and the sampling settings the run's sample grids used.
    model.extra_config = {k: state[k] for k in ("class_names", "sampling", "guidance_free") if state.get(k)}
    model.extra_config["trained_steps"] = int(state["step"])
    return model.eval()


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike, tokenizer: str | None = None) -> Path:
    """Write a training checkpoint in the inference format (`nextscale.load_var(out)` reads it)."""
    return export_model(checkpoint_to_model(path, tokenizer), Path(out))
