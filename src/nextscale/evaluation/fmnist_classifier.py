"""A small CNN that classifies 32x32 Fashion-MNIST images (our padded convention) and gives 128-d features.

It is the project's own judge of generated clothes: its predictions give the class accuracy of
class-conditional samples, and its penultimate features (after the last ReLU) give a Fréchet distance
that, unlike Inception's, is trained on this very domain. `nextscale train-classifier` trains it; the
weights we trained ship in `nextscale/assets/fashion_mnist_classifier/` and `load_classifier()` loads them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.config_dict import ConfigDict
from nextscale.data.fashion_mnist import CLASS_NAMES

SHIPPED_FOLDER = "fashion_mnist_classifier"


@dataclass
class ClassifierConfig(ConfigDict):
    """Architecture, input normalisation, and what we measured (kept with the weights in config.json)."""
    channels: tuple[int, ...] = (16, 32, 64)  # one conv-BN-ReLU-maxpool stage each: 32 -> 16 -> 8 -> 4 pixels
    feature_dim: int = 128
    num_classes: int = 10
    image_size: int = 32
    dropout: float = 0.2
    pixel_mean: float = 0.219  # Fashion-MNIST train split, padded to 32x32, pixels in [0, 1]
    pixel_std: float = 0.3318
    class_names: tuple[str, ...] = CLASS_NAMES
    metrics: dict = field(default_factory=dict)  # e.g. test_accuracy, filled in by the trainer

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        """Lenient, unlike ConfigDict's: keys it does not know are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("channels", "class_names"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class FashionMNISTClassifier(nn.Module):
    """conv stages -> flatten -> Linear(feature_dim) + ReLU (the features) -> dropout -> Linear(num_classes)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        stages, in_ch = [], 1
        for out_ch in config.channels:
            stages += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
                       nn.MaxPool2d(2)]
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        side = config.image_size // 2 ** len(config.channels)
        self.to_features = nn.Linear(in_ch * side * side, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def prepare(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] with 1 or 3 channels (RGB averaged: our samples are gray repeated) -> (B, 1, H, W)."""
        if images_BCHW.ndim != 4 or images_BCHW.shape[1] not in (1, 3):
            raise ValueError(f"the classifier takes (B, 1 or 3, H, W) images, got shape {tuple(images_BCHW.shape)}")
        size = self.config.image_size
        if images_BCHW.shape[-2:] != (size, size):
            raise ValueError(f"the Fashion-MNIST classifier takes {size}x{size} images (28x28 padded by 2), "
                             f"got {images_BCHW.shape[-2]}x{images_BCHW.shape[-1]}")
        x = images_BCHW.float().mean(dim=1, keepdim=True)
        return (x - self.config.pixel_mean) / self.config.pixel_std

    def features_and_logits(self, images_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stages(self.prepare(images_BCHW)).flatten(1)
        features_BD = F.relu(self.to_features(h))
        return features_BD, self.head(self.dropout(features_BD))

    def forward(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images_BCHW)[1]

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        from nextscale.checkpoints import CONFIG_NAME, WEIGHTS_NAME
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        return folder


def shipped_classifier_path() -> Path:
    return Path(str(resources.files("nextscale") / "assets" / SHIPPED_FOLDER))


def load_classifier(path: str | os.PathLike | None = None, device: torch.device | str | None = None
                    ) -> FashionMNISTClassifier:
    """The Fashion-MNIST classifier in eval mode: the one shipped with the package, or a folder we wrote."""
    from nextscale.checkpoints import CONFIG_NAME, WEIGHTS_NAME, read_state_dict
    folder = Path(path) if path is not None else shipped_classifier_path()
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        where = "this installation of nextscale (reinstall it)" if path is None else str(folder)
        raise FileNotFoundError(f"no classifier in {where}: expected config.json and model.safetensors "
                                f"(train one with `nextscale train-classifier`)")
    try:
        config = ClassifierConfig.from_dict(json.loads(config_file.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{config_file} is not a classifier config: {e}") from None
    model = FashionMNISTClassifier(config)
    model.load_state_dict(read_state_dict(weights_file))
    return model.to(device).eval() if device is not None else model.eval()
