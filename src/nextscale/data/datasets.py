"""Training datasets: image folders and Fashion-MNIST, as (image in [-1, 1], label) pairs.

Usage:

    data_cfg = DataConfig(kind="image_folder", path="/data/imagenet/train", resolution=256, hflip=True)
    train_set = build_dataset(data_cfg, train=True)     # resize shorter side, random crop, optional flip
    eval_set = build_dataset(data_cfg, train=False, split="test")   # resize shorter side, center crop
    image_Chw, label = train_set[0]                     # float32 (channels, res, res) in [-1, 1], int
    train_set.num_classes, train_set.classes

`DataConfig` is a dataclass meant to be nested in a training config (`data.kind=fashion_mnist`).
Image folders are scanned recursively; when every image sits inside a top-level subfolder, the
subfolders are the classes (sorted names -> labels 0..n-1), otherwise every label is 0. A
corrupt or unreadable image is skipped with a warning and counted in `num_skipped` (checked
up front with `verify=True`, otherwise when it is first read, replaced by the next image). An
empty dataset raises `EmptyDatasetError`. Random crops and flips draw from torch's global RNG,
which DataLoader seeds per worker from the main process's generator: results are reproducible
for a given seed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class EmptyDatasetError(ValueError):
    """A dataset holds no usable image."""


@dataclass
class DataConfig:
    """Where the images are and how they are prepared."""

    kind: str = "fashion_mnist"  # "fashion_mnist" or "image_folder"
    path: str | None = None  # image folder, or the Fashion-MNIST folder (None: the installed default)
    eval_path: str | None = None  # image folder for evaluation (image_folder only; None: no held-out split)
    resolution: int = 32
    channels: int = 3  # 3 (RGB; grayscale repeated) or 1
    resize_ratio: float = 1.0  # shorter side resized to round(resolution * ratio) before cropping
    hflip: bool = False  # random horizontal flip in training
    verify: bool = False  # decode every image of a folder up front (slow on big folders) to skip bad ones early
    num_workers: int = 0


# ---------------------------------------------------------------------------- transforms
class ImageTransform:
    """PIL image -> (channels, res, res) float in [-1, 1]: resize shorter side, crop (random or center), flip."""

    def __init__(self, resolution: int, train: bool, channels: int = 3, resize_ratio: float = 1.0,
                 hflip: bool = False):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if resize_ratio < 1.0:
            raise ValueError(f"resize_ratio must be >= 1 (the crop is taken from the resized image), got {resize_ratio}")
        self.resolution = resolution
        self.train = train
        self.channels = channels
        self.resize_to = round(resolution * resize_ratio)
        self.hflip = hflip and train

    def __call__(self, im: Image.Image) -> torch.Tensor:
        im = im.convert("L" if self.channels == 1 else "RGB")
        w, h = im.size
        scale = self.resize_to / min(w, h)
        if scale != 1.0:
            im = im.resize((max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale))),
                           Image.LANCZOS)
        w, h = im.size
        if self.train:
            left = int(torch.randint(0, w - self.resolution + 1, ()).item())
            top = int(torch.randint(0, h - self.resolution + 1, ()).item())
        else:
            left, top = (w - self.resolution) // 2, (h - self.resolution) // 2
        if (left, top, w, h) != (0, 0, self.resolution, self.resolution):
            im = im.crop((left, top, left + self.resolution, top + self.resolution))
        arr = np.asarray(im, dtype=np.uint8)
        x = torch.from_numpy(arr.copy()).float().div_(127.5).sub_(1.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.contiguous()


# ---------------------------------------------------------------------------- image folder
def _try_decode(path: Path) -> str | None:
    """None when `path` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.load()
        return None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        return str(e) or type(e).__name__


class ImageFolderDataset(Dataset):
    """Every image under `root` (recursive). Labels from top-level subfolders when all images are in one."""

    def __init__(self, root: str | os.PathLike, transform: ImageTransform, verify: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise EmptyDatasetError(f"image folder {self.root} does not exist")
        self.transform = transform
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        in_subfolder = [len(p.relative_to(self.root).parts) > 1 for p in files]
        if files and all(in_subfolder):
            self.classes = sorted({p.relative_to(self.root).parts[0] for p in files})
            index = {c: i for i, c in enumerate(self.classes)}
            labels = [index[p.relative_to(self.root).parts[0]] for p in files]
        else:
            self.classes = [""]
            labels = [0] * len(files)
        self.num_skipped = 0
        self.skipped: list[str] = []
        if verify and files:
            from tqdm.auto import tqdm
            keep = []
            for i, p in enumerate(tqdm(files, desc=f"checking {self.root}", leave=False)):
                reason = _try_decode(p)
                if reason is None:
                    keep.append(i)
                else:
                    self._skip(p, reason)
            files = [files[i] for i in keep]
            labels = [labels[i] for i in keep]
        if not files:
            raise EmptyDatasetError(
                f"no readable image found under {self.root} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                f"recursively{'; ' + str(self.num_skipped) + ' unreadable file(s) skipped' if self.num_skipped else ''})")
        self.files = files
        self.labels = labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _skip(self, path: Path, reason: str) -> None:
        self.num_skipped += 1
        self.skipped.append(str(path))
        warnings.warn(f"skipping unreadable image {path} ({reason}); {self.num_skipped} skipped so far",
                      stacklevel=3)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        # A file that fails to decode is replaced by the next one (deterministically), at most len() tries.
        for attempt in range(len(self.files)):
            i = (idx + attempt) % len(self.files)
            path = self.files[i]
            try:
                with Image.open(path) as im:
                    im.load()
                    return self.transform(im), self.labels[i]
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
                if str(path) not in self.skipped:
                    self._skip(path, str(e) or type(e).__name__)
        raise EmptyDatasetError(f"no image under {self.root} could be read")


# ---------------------------------------------------------------------------- Fashion-MNIST
class FashionMNISTDataset(Dataset):
    """Fashion-MNIST (padded to 32x32) through the same transforms; 10 classes."""

    def __init__(self, split: str, transform: ImageTransform, root: str | os.PathLike | None = None):
        from nextscale.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
        self.images, labels = load_fashion_mnist(split, root)
        if len(self.images) == 0:
            raise EmptyDatasetError(f"the Fashion-MNIST {split} split is empty")
        self.labels = labels.tolist()
        self.classes = list(CLASS_NAMES)
        self.transform = transform
        self.num_skipped = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[idx])), self.labels[idx]


def build_dataset(cfg: DataConfig, train: bool, split: str | None = None) -> Dataset:
    """The dataset a `DataConfig` describes. `split`: "train"/"test" (default: train if `train` else test)."""
    split = split or ("train" if train else "test")
    transform = ImageTransform(cfg.resolution, train=train, channels=cfg.channels, resize_ratio=cfg.resize_ratio,
                               hflip=cfg.hflip)
    if cfg.kind == "fashion_mnist":
        return FashionMNISTDataset(split, transform, cfg.path)
    if cfg.kind == "image_folder":
        path = cfg.path if split == "train" else cfg.eval_path
        if path is None:
            raise ValueError("data.path must name an image folder for data.kind=image_folder" if split == "train" else
                             "no held-out image folder: set data.eval_path")
        return ImageFolderDataset(path, transform, verify=cfg.verify)
    raise ValueError(f"data.kind must be 'fashion_mnist' or 'image_folder', got {cfg.kind!r}")
