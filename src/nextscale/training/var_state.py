"""The training state of `nextscale train` in a checkpoint: what is saved, and what must match to resume.

A checkpoint holds the model, optimizer, scheduler and gradient-scaler states, the step, every rank's random
states, and what the run was trained with (tokenizer identity, model config, data size, global batch and seed),
so that a resumed run continues exactly as an uninterrupted one, and a mismatched resume is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from nextscale.config_schema import ConfigError, config_to_dict
from nextscale.training.checkpointing import restore_rng_state
from nextscale.training.var_config import TrainConfig


def full_state_dicts(model, optimizer):
    """Full (unsharded) model and optimizer state dicts keyed by parameter names, on CPU (DDP and FSDP alike)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dicts(model, optimizer, model_sd, optim_sd) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


def data_identity(num_items: int, config: TrainConfig) -> dict:
    """What the data order depends on (DataOrder): a resume with other values is not exact."""
    return {"num_items": num_items, "global_batch": config.global_batch, "seed": config.seed}


def checkpoint_state(config: TrainConfig, model, model_sd, optim_sd, scheduler, scaler, step: int, rng: list,
                     world_size: int, num_items: int, tokenizer_id: dict, class_names) -> dict:
    """The state `nextscale train` saves (and `nextscale export` reads: model_kind, model_config, tokenizer,
    class_names, sampling)."""
    return {"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, "rng": rng,
            "data": data_identity(num_items, config),
            "model_kind": config.model.kind, "model_config": model.config.to_dict(),
            "tokenizer": tokenizer_id, "class_names": class_names,
            # A CCA fine-tune samples without guidance: its model recommends cfg 0 (no null-class pass).
            "sampling": {"cfg": 0.0 if config.cca.enabled else config.sample.cfg, "top_k": config.sample.top_k,
                         "top_p": config.sample.top_p},
            "guidance_free": bool(config.cca.enabled),
            "world_size": world_size, "config": config_to_dict(config)}


def check_checkpoint_fits(state: dict, path: Path, config: TrainConfig, model, tokenizer_id: dict,
                          num_items: int, out_dir: Path) -> None:
    """A checkpoint of another tokenizer or model is a ConfigError; other data, batch or seed a warning."""
    tokenizer = state.get("tokenizer", {})
    if tokenizer.get("weights_hash") != tokenizer_id["weights_hash"] or \
            tokenizer.get("config_hash") != tokenizer_id["config_hash"]:
        raise ConfigError(f"checkpoint {path} was trained with another tokenizer than {config.tokenizer}: resume "
                          f"with the run's own tokenizer ({out_dir / 'tokenizer'})")
    if state["model_config"] != model.config.to_dict():
        differ = sorted(k for k, v in model.config.to_dict().items() if state["model_config"].get(k) != v)
        raise ConfigError(f"checkpoint {path} holds a different model ({', '.join(differ)} differ): resume with "
                          f"the run's own config ({path.with_suffix('.yaml')})")
    data = state["data"]
    if (data["num_items"], data["global_batch"], data["seed"]) != (num_items, config.global_batch, config.seed):
        warnings.warn(f"resuming {path} with another dataset size, global batch or seed: training continues, "
                      f"but not exactly as the interrupted run would have")


def restore_random_states(rng: list, rank: int, world_size: int, seed: int, step: int) -> None:
    """This rank's random states from the checkpoint; re-seeded (not bit-exact) when the world size changed."""
    if len(rng) == world_size:
        restore_rng_state(rng[rank])
    else:
        warnings.warn(f"the checkpoint was written by {len(rng)} processes, this run has {world_size}: "
                      f"random states are re-seeded, so the continuation is not bit-exact")
        torch.manual_seed(seed * 1000 + 1 + rank + step)
