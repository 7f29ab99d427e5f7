"""Models shipped inside the package, loadable offline by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from nextscale.checkpoints import CheckpointError, load_var
from nextscale.transformer.var import VAR

# name -> folder under nextscale/assets (our format: config.json + model.safetensors + tokenizer/)
PRETRAINED = {"fashion-mnist": "fashion_mnist_var"}


def pretrained_path(name: str = "fashion-mnist") -> Path:
    if name not in PRETRAINED:
        raise CheckpointError(f"unknown pretrained model {name!r}; shipped: {', '.join(PRETRAINED)}")
    path = Path(str(resources.files("nextscale") / "assets" / PRETRAINED[name]))
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"the pretrained model {name!r} is not in this installation ({path} is missing); "
                              f"reinstall nextscale or pass a model folder")
    return path


def load_pretrained(name: str = "fashion-mnist", device=None) -> VAR:
    """The shipped class-conditional VAR with its tokenizer attached, in eval mode.

    `var.extra_config` holds `class_names` and the recommended `sampling` settings (cfg, top_k, top_p).
    """
    var = load_var(pretrained_path(name))
    return var.to(device) if device is not None else var
