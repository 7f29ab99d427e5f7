"""A small CNN that classifies images of one domain and gives 128-d features: the judge of `nextscale eval`.

Its predictions give the class accuracy of class-conditional samples, and its penultimate features (after the
last ReLU) give a Fréchet distance and a KID that, unlike Inception's, are trained on this very domain.
`nextscale train-classifier` trains one on Fashion-MNIST (the weights we trained ship in
`nextscale/assets/fashion_mnist_classifier/`, loaded by `load_classifier()`) or on a labelled image folder.

Its config.json also says which real images it was trained and measured on (`data`): `nextscale eval` rebuilds
from it the held-out images it compares samples to, and the training images of the floor.
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
LUMA = (0.299, 0.587, 0.114)  # RGB -> gray as PIL's "L" mode converts (gray repeated to RGB stays the same gray)


def fashion_mnist_data(path: str | None = None) -> dict:
    """The `data` entry of a classifier trained on Fashion-MNIST (path None: the installed default folder)."""
    return {"kind": "fashion_mnist", "path": path, "heldout": "test split", "resolution": 32, "channels": 1}


@dataclass
class ClassifierConfig(ConfigDict):
    """Architecture, input normalisation, the real data and what we measured (kept with the weights in config.json).

    `channels` are the widths of the conv stages (each halves the resolution); `in_channels` the image channels
    (1: RGB input is converted to gray; 3: RGB). `pixel_mean`/`pixel_std` are one number, or one per channel.
    """
    channels: tuple[int, ...] = (16, 32, 64)  # one conv-BN-ReLU-maxpool stage each: 32 -> 16 -> 8 -> 4 pixels
    feature_dim: int = 128
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 1
    dropout: float = 0.2
    pixel_mean: float | tuple[float, ...] = 0.219  # Fashion-MNIST train split, padded to 32x32, pixels in [0, 1]
    pixel_std: float | tuple[float, ...] = 0.3318
    class_names: tuple[str, ...] = CLASS_NAMES
    data: dict = field(default_factory=fashion_mnist_data)  # kind, path(s), held-out rule: see real_data.py
    metrics: dict = field(default_factory=dict)  # heldout_accuracy (and test_accuracy), filled in by the trainer

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        """Lenient, unlike ConfigDict's: keys it does not know are ignored."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("channels", "class_names", "pixel_mean", "pixel_std"):
            if isinstance(known.get(key), list):
                known[key] = tuple(known[key])
        return cls(**known)

    def validate(self) -> None:
        if self.in_channels not in (1, 3):
            raise ValueError(f"a classifier takes 1 or 3 image channels, got in_channels={self.in_channels}")
        stages = len(self.channels)
        if self.image_size < 2 ** stages or self.image_size % 2 ** stages:
            raise ValueError(f"the image size must be a multiple of 2^{stages} = {2 ** stages} (one halving per conv "
                             f"stage), got {self.image_size}")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.in_channels:
                raise ValueError(f"{name} has {len(value)} values for {self.in_channels} channel(s)")

    @property
    def heldout_accuracy(self) -> float | None:
        return self.metrics.get("heldout_accuracy", self.metrics.get("test_accuracy"))

    def describe(self) -> str:
        """One line: classes, input, held-out accuracy."""
        names = ", ".join(self.class_names) if self.num_classes <= 12 else \
            ", ".join(self.class_names[:10]) + f", ... ({self.num_classes - 10} more)"
        acc = self.heldout_accuracy
        return (f"{self.num_classes} classes ({names}); {self.image_size}x{self.image_size} "
                f"{'gray' if self.in_channels == 1 else 'RGB'}"
                + (f"; held-out accuracy {acc:.4f}" if acc is not None else ""))


class ImageClassifier(nn.Module):
    """conv stages -> flatten -> Linear(feature_dim) + ReLU (the features) -> dropout -> Linear(num_classes)."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        config.validate()
        stages, in_ch = [], config.in_channels
        for out_ch in config.channels:
            stages += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
                       nn.MaxPool2d(2)]
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        side = config.image_size // 2 ** len(config.channels)
        self.to_features = nn.Linear(in_ch * side * side, config.feature_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        C = config.in_channels
        self.register_buffer("_mean", torch.tensor(config.pixel_mean, dtype=torch.float32).expand(C).reshape(1, C, 1, 1)
                             .clone(), persistent=False)
        self.register_buffer("_std", torch.tensor(config.pixel_std, dtype=torch.float32).expand(C).reshape(1, C, 1, 1)
                             .clone(), persistent=False)

    def prepare(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] with 1 or 3 channels -> normalised (B, in_channels, H, W)."""
        if images_BCHW.ndim != 4 or images_BCHW.shape[1] not in (1, 3):
            raise ValueError(f"the classifier takes (B, 1 or 3, H, W) images, got shape {tuple(images_BCHW.shape)}")
        size = self.config.image_size
        if images_BCHW.shape[-2:] != (size, size):
            raise ValueError(f"these are {images_BCHW.shape[-1]}x{images_BCHW.shape[-2]} images; the classifier "
                             f"takes {size}x{size}")
        x = images_BCHW.float()
        if self.config.in_channels == 1 and x.shape[1] == 3:
            x = (x * x.new_tensor(LUMA).reshape(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        elif self.config.in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self._mean) / self._std

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


FashionMNISTClassifier = ImageClassifier  # the name of the Fashion-MNIST-only class it generalises


def shipped_classifier_path() -> Path:
    return Path(str(resources.files("nextscale") / "assets" / SHIPPED_FOLDER))


def load_classifier(path: str | os.PathLike | None = None, device: torch.device | str | None = None
                    ) -> ImageClassifier:
    """A classifier in eval mode: the Fashion-MNIST one shipped with the package, or a folder we wrote."""
    from nextscale.checkpoints import CONFIG_NAME, WEIGHTS_NAME, read_state_dict
    folder = Path(path) if path is not None else shipped_classifier_path()
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        where = "this installation of nextscale (reinstall it)" if path is None else str(folder)
        raise FileNotFoundError(f"no classifier in {where}: expected config.json and model.safetensors "
                                f"(train one with `nextscale train-classifier --data FOLDER`)")
    try:
        config = ClassifierConfig.from_dict(json.loads(config_file.read_text()))
        model = ImageClassifier(config)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"{config_file} is not a classifier config: {e}") from None
    model.load_state_dict(read_state_dict(weights_file))
    return model.to(device).eval() if device is not None else model.eval()
