"""A small CNN that classifies images of one domain and gives 128-d features: the judge of `nextscale eval`.

Its predictions give the class accuracy of class-conditional samples, and its penultimate features (after the
last ReLU) give a Fréchet distance and a KID that, unlike Inception's, are trained on this very domain.
`nextscale train-classifier` trains one on Fashion-MNIST (the weights we trained ship in
`nextscale/assets/fashion_mnist_classifier/`, loaded by `load_classifier()`) or on a labelled image folder.

Its config.json also says which real images it was trained and measured on (`data`): `nextscale eval` rebuilds
from it the held-out images it compares samples to, and the training images of the floor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.config_schema import ConfigDict, from_dict
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
        """Lenient, unlike ConfigDict's: keys it does not know are ignored (files of later versions still load);
        the known ones are read as `config_schema.from_dict` reads every config."""
        return from_dict(cls, {k: v for k, v in d.items() if k in cls.__dataclass_fields__})

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

        from nextscale.model_folder import CONFIG_NAME, WEIGHTS_NAME
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        return folder


FashionMNISTClassifier = ImageClassifier  # the name of the Fashion-MNIST-only class it generalises


def shipped_classifier_path() -> Path:
    return Path(str(resources.files("nextscale") / "assets" / SHIPPED_FOLDER))


# ---------------------------------------------------------------------------------------- config.json schema
# Keys every classifier's config.json has had (the shipped one included); in_channels (1), dropout, data
# (Fashion-MNIST) and metrics may be absent: the shipped file predates some of them.
REQUIRED_KEYS = ("channels", "feature_dim", "num_classes", "image_size", "class_names", "pixel_mean", "pixel_std")
MAX_STAGES = 16  # conv stages (one halving each): bounded so that even a model built to compare shapes stays cheap
DATA_KINDS = ("fashion_mnist", "image_folder")


def check_classifier_config(meta, config_path: str | os.PathLike) -> ClassifierConfig:
    """The one check of a classifier folder's config.json (already parsed: `meta`) -> its ClassifierConfig.

    It must be an object with REQUIRED_KEYS, each of the right type and in range (in_channels 1 or 3, dropout in
    [0, 1), pixel_std > 0, one class name per class, an image size divisible by 2^stages), and a `data` entry
    (when present) that names real data `nextscale eval` can read again (real_data.py). Keys it does not know are
    ignored. CheckpointError names the file and the field otherwise."""
    import typing

    from nextscale.config_schema import AT_LEAST_1, BELOW_ONE, POSITIVE, ConfigError, Range, coerce
    from nextscale.model_folder import CheckpointError
    where = str(config_path)

    def bad(message: str):
        return CheckpointError(f"{where}: {message}; fix the file, or train the classifier again "
                               f"(`nextscale train-classifier`)")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object of the classifier's fields ({', '.join(REQUIRED_KEYS)}), got a "
                  f"{type(meta).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise bad(f"it lacks {', '.join(repr(k) for k in missing)}")
    hints = typing.get_type_hints(ClassifierConfig)
    ranges = {"channels": Range(low=1, min_items=1), "feature_dim": AT_LEAST_1, "num_classes": AT_LEAST_1,
              "image_size": AT_LEAST_1, "in_channels": Range(choices=(1, 3)), "dropout": BELOW_ONE,
              "pixel_mean": Range(), "pixel_std": POSITIVE}
    known, problems = {}, []
    for name in (f.name for f in dataclasses.fields(ClassifierConfig)):
        if name not in meta:
            continue
        value = meta[name]
        if name == "class_names":
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                problems.append(f"class_names must be a list of strings (index = class id), got {value!r:.80}")
                continue
            known[name] = tuple(value)
            continue
        try:
            value = coerce(value, hints[name], name)
        except ConfigError as e:
            problems.append(str(e))
            continue
        if name in ranges:  # NaN and inf are refused whatever the bounds
            problems += ranges[name].problems(name, value)
        known[name] = value
    if len(known.get("channels") or ()) > MAX_STAGES:
        problems.append(f"channels must hold at most {MAX_STAGES} values (one conv stage each), got "
                        f"{len(known['channels'])}")
    if "data" in known:
        problems += _data_problems(known["data"])
    if not problems:
        try:
            config = ClassifierConfig.from_dict(known)
            config.validate()
        except (TypeError, ValueError) as e:
            problems.append(str(e))
    if problems:
        raise bad("; ".join(problems))
    return config


def _data_problems(data: dict) -> list[str]:
    """What is wrong with the `data` entry of a classifier's config.json (real_data.load_real_data reads it)."""
    kind = data.get("kind")
    if kind not in DATA_KINDS:
        return [f"data.kind must be one of {', '.join(DATA_KINDS)}, got {kind!r}"]
    problems = []

    def check(key: str, ok, what: str, required: bool = False):
        if key not in data or data[key] is None:
            if required:
                problems.append(f"data.{key} must be {what}, it is missing")
        elif not ok(data[key]):
            problems.append(f"data.{key} must be {what}, got {data[key]!r:.80}")

    def whole(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    check("path", lambda x: isinstance(x, str) and x != "", "a folder (a string)", required=kind == "image_folder")
    if kind == "image_folder":
        check("eval_path", lambda x: isinstance(x, str) and x != "", "a folder (a string) or null")
        check("resolution", lambda x: whole(x) and x >= 1, "a whole number >= 1", required=True)
        check("channels", lambda x: whole(x) and x in (1, 3), "1 or 3", required=True)
        check("holdout", lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1,
              "a fraction in (0, 1) or null")
        check("holdout_seed", lambda x: whole(x) and x >= 0, "a whole number >= 0 or null")
    return problems


def _check_weights_fit(model: ImageClassifier, state: dict[str, torch.Tensor], weights_file: Path,
                       config_file: Path) -> None:
    """CheckpointError (one line, both files named) when the tensors of `state` are not those of `model`."""
    from nextscale.model_folder import CheckpointError
    own = model.state_dict()
    problems = [f"it lacks {k}" for k in own if k not in state]
    problems += [f"{k} is unexpected" for k in state if k not in own]
    problems += [f"{k} is {tuple(state[k].shape)}, the config makes it {tuple(v.shape)}" for k, v in own.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise CheckpointError(f"{weights_file} does not fit {config_file}: {'; '.join(problems[:3])}{more}; the two "
                              f"files must come from the same `nextscale train-classifier` run")


def load_classifier(path: str | os.PathLike | None = None, device: torch.device | str | None = None
                    ) -> ImageClassifier:
    """A classifier in eval mode: the Fashion-MNIST one shipped with the package, or a folder we wrote.

    config.json is checked first (check_classifier_config), then the weights are read and their names and shapes
    compared with the model's, built on the meta device, before any memory is given to it: a bad file is one
    CheckpointError naming it."""
    from nextscale.model_folder import CONFIG_NAME, WEIGHTS_NAME, read_json, read_state_dict
    folder = Path(path) if path is not None else shipped_classifier_path()
    config_file, weights_file = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        where = "this installation of nextscale (reinstall it)" if path is None else str(folder)
        raise FileNotFoundError(f"no classifier in {where}: expected config.json and model.safetensors "
                                f"(train one with `nextscale train-classifier --data FOLDER`)")
    meta = read_json(config_file, "train the classifier again")
    config = check_classifier_config(meta, config_file)
    state = read_state_dict(weights_file)
    with torch.device("meta"):
        _check_weights_fit(ImageClassifier(config), state, weights_file, config_file)
    model = ImageClassifier(config)
    model.load_state_dict(state)
    return model.to(device).eval() if device is not None else model.eval()
