"""The one table of what the package can build and load by name.

- `MODEL_TYPES`: the "model_type" of a model folder's config.json -> the model class and its config class. The
  loaders, the config.json check, the trainers' export and the tests go through it; a new model kind is one
  entry here (its class carries `model_type`, `config_class` and a `ConfigDict` config with `RANGES`).
- `PRESETS`: a name -> its model type, its architecture and where its weights come from: a file of the published
  VAR release on the Hugging Face Hub (downloaded for users with the internet) or a model folder shipped inside
  the package (offline). `nextscale.build_var("var-d16")` builds one untrained; `load_var("var-d16")` and
  `load_pretrained("fashion-mnist")` load its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from nextscale.baseline.raster_ar import RasterAR, RasterARConfig
from nextscale.model_folder import CheckpointError
from nextscale.tokenizer.vqvae import PATCH_NUMS_512, VQVAE, VQVAEConfig
from nextscale.transformer.var import VAR, VARConfig

HUB_REPO = "FoundationVision/var"
HUB_PAGE = f"https://huggingface.co/{HUB_REPO}"


@dataclass(frozen=True)
class ModelType:
    name: str  # the "model_type" of config.json
    model_class: type[torch.nn.Module]
    config_class: type

    def build(self, config: dict | object) -> torch.nn.Module:
        """A randomly initialized model of `config` (a dict of config.json's "config", or the config object)."""
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        return self.model_class(config)


MODEL_TYPES: dict[str, ModelType] = {t.name: t for t in (
    ModelType("vqvae", VQVAE, VQVAEConfig),
    ModelType("var", VAR, VARConfig),
    ModelType("raster_ar", RasterAR, RasterARConfig),
)}


@dataclass(frozen=True)
class Preset:
    name: str
    model_type: str  # a key of MODEL_TYPES
    config: object | None = None  # the architecture (None: read from the shipped folder's config.json)
    hub_file: str | None = None  # the published weights, a file of HUB_REPO
    asset: str | None = None  # a model folder under nextscale/assets, shipped with the package

    def asset_path(self) -> Path:
        """The shipped model folder of an asset preset; CheckpointError when the installation lacks it."""
        path = Path(str(resources.files("nextscale") / "assets" / self.asset))
        if not (path / "model.safetensors").is_file():
            raise CheckpointError(f"the pretrained model {self.name!r} is not in this installation ({path} is "
                                  f"missing); reinstall nextscale or pass a model folder")
        return path


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # The published VAR release (Tian et al. 2024): architectures, and their weights on the Hub.
    Preset("vae-f16c32", "vqvae", VQVAEConfig(), hub_file="vae_ch160v4096z32.pth"),
    Preset("var-d16", "var", VARConfig(depth=16), hub_file="var_d16.pth"),
    Preset("var-d20", "var", VARConfig(depth=20), hub_file="var_d20.pth"),
    Preset("var-d24", "var", VARConfig(depth=24), hub_file="var_d24.pth"),
    Preset("var-d30", "var", VARConfig(depth=30), hub_file="var_d30.pth"),
    Preset("var-d36", "var", VARConfig(depth=36, shared_adaln=True, patch_nums=PATCH_NUMS_512),
           hub_file="var_d36.pth"),
    # Shipped with the package (config.json + model.safetensors + tokenizer/), loadable offline.
    Preset("fashion-mnist", "var", asset="fashion_mnist_var"),
    # A general-purpose colour tokenizer for 64x64 images (the start of the own-images recipes' tokenizer).
    Preset("colour-tokenizer-64", "vqvae", asset="colour_tokenizer_64"),
)}


def presets_of(model_type: str, *, with_config: bool = False) -> dict[str, Preset]:
    """The presets of one model type (only those with an architecture of their own when `with_config`)."""
    return {n: p for n, p in PRESETS.items() if p.model_type == model_type and (p.config is not None or
                                                                                 not with_config)}


def shipped(model_type: str = "var") -> dict[str, Preset]:
    """The presets of `model_type` whose weights are inside the package (transformers by default)."""
    return {n: p for n, p in PRESETS.items() if p.asset is not None and p.model_type == model_type}
