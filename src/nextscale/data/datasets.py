"""Training datasets: image folders and Fashion-MNIST, as (image in [-1, 1], label) pairs.

Usage:

    data_cfg = DataConfig(path="/data/my_images", resolution=64)      # kind "auto": a folder of class subfolders
    train_set = build_dataset(data_cfg, train=True)     # resize shorter side, random crop, optional flip
    eval_set = build_dataset(data_cfg, train=False)     # the held-out split: resize shorter side, center crop
    image_Chw, label = train_set[0]                     # float32 (channels, res, res) in [-1, 1], int
    train_set.num_classes, train_set.classes

`DataConfig` is a dataclass meant to be nested in a training config (`data.path=...`).

Which data (`data.kind`, default "auto"): Fashion-MNIST when `data.path` is None or a folder holding the
Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] ...), an image folder otherwise.

IMAGE_FOLDER_CONVENTION below is the convention for a folder of one's own images (also printed by the
--help of `nextscale train-tokenizer`, `tokenize` and `train`). Random crops and flips draw from
torch's global RNG, which DataLoader seeds per worker from the main process's generator: results are
reproducible for a given seed.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from nextscale.config_schema import AT_LEAST_1, BELOW_ONE, Range, off_at_zero
from nextscale.images import DEFAULT_MAX_PIXELS, ImageReadError, open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

IMAGE_FOLDER_CONVENTION = f"""\
image folders (data.path=FOLDER; data.kind=auto picks Fashion-MNIST only for a folder of its IDX files):
  FOLDER/<class name>/<any name>.png   one subfolder per class; class names = subfolder names, class ids =
                                       their sorted order (0, 1, ...); images may sit in deeper subfolders.
                                       Images directly in FOLDER (no subfolders): one unnamed class.
  extensions: {' '.join(IMAGE_EXTENSIONS)} (any case); other files are ignored.
  unreadable or corrupt images (and those over {DEFAULT_MAX_PIXELS / 1e6:g} megapixels, refused from their header) are
  skipped with a warning and counted (data.verify=true checks all up front).
  every image is resized (shorter side to data.resolution x data.resize_ratio) and cropped to
  data.resolution x data.resolution: a random crop in training, the center crop for tokenizing and evaluation;
  grayscale images are repeated to 3 channels (data.channels=3).
  held-out images: data.eval_path=FOLDER2 (same layout), or data.eval_fraction=0.1 to hold out 10% of each
  class of FOLDER (the same images in every command); data.max_images=N uses N images spread over the folder."""


class EmptyDatasetError(ValueError):
    """A dataset holds no usable image."""


@dataclass
class DataConfig:
    """Where the images are and how they are prepared.

    `kind`: "auto" (Fashion-MNIST when `path` is None or holds its IDX files, else an image folder),
    "fashion_mnist" or "image_folder". An image folder holds one subfolder per class (class names =
    subfolder names, ids = their sorted order), images with the extensions of IMAGE_EXTENSIONS;
    unreadable files (and those over nextscale.images.DEFAULT_MAX_PIXELS) are skipped with a warning and
    counted; images are resized (shorter side) and cropped (random in training, center otherwise) to
    `resolution`. See IMAGE_FOLDER_CONVENTION.
    """

    kind: str = "auto"  # "auto", "fashion_mnist" or "image_folder"
    path: str | None = None  # image folder, or the Fashion-MNIST folder (None: the installed default)
    eval_path: str | None = None  # held-out image folder (image folders only; Fashion-MNIST uses its test split)
    eval_fraction: float = 0.0  # image folders without eval_path: hold out this fraction of each class
    max_images: int | None = None  # use only this many images of a split (spread over it); None: all
    resolution: int = 32
    channels: int = 3  # 3 (RGB; grayscale repeated) or 1
    resize_ratio: float = 1.0  # shorter side resized to round(resolution * ratio) before cropping
    hflip: bool = False  # random horizontal flip in training
    verify: bool = False  # decode every image of a folder up front (slow on big folders) to skip bad ones early
    num_workers: int = 0

    RANGES = {"eval_fraction": BELOW_ONE, "max_images": AT_LEAST_1,  # None: every image
              "resolution": AT_LEAST_1, "channels": Range(choices=(1, 3)),
              "resize_ratio": Range(low=1),  # the crop is taken from the resized image
              "num_workers": off_at_zero("load in the training process")}

    def resolved_kind(self) -> str:
        """"fashion_mnist" or "image_folder" (what "auto" stands for with this path)."""
        if self.kind == "auto":
            return "fashion_mnist" if self.path is None or holds_fashion_mnist(self.path) else "image_folder"
        if self.kind not in ("fashion_mnist", "image_folder"):
            raise ValueError(f"data.kind must be auto, fashion_mnist or image_folder, got {self.kind!r}")
        return self.kind

    def override_has_no_effect(self, key: str) -> str | None:
        """Why an override of `key` would change nothing (config.check_overrides_take_effect), else None."""
        kind = self.resolved_kind() if self.kind in ("auto", "fashion_mnist", "image_folder") else None
        if kind == "fashion_mnist" and key in ("eval_path", "eval_fraction"):
            return ("Fashion-MNIST's held-out images are its test split; data.eval_path/eval_fraction are for "
                    "image folders (set data.path=FOLDER)")
        if key == "eval_fraction" and self.eval_path is not None:
            return f"data.eval_path={self.eval_path} is the held-out set; set data.eval_path=null to hold out a fraction"
        return None


def holds_fashion_mnist(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder with the Fashion-MNIST training images' IDX file."""
    p = Path(path)
    return any((p / name).is_file() for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                                                 "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"))


def spread_indices(n: int, k: int | None) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    if k < 1:
        raise ValueError(f"data.max_images must be >= 1, got {k}")
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


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


def heldout_indices(relative_paths: Sequence[str], labels: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """Which images of a labelled folder are held out: per class, round(fraction * n) of them (at least 1 of 2+,
    never all), those whose relative path (with seed s != 0: "s/path") has the smallest SHA-1.

    A function of the file names only, so every command that reads the folder (train-tokenizer, tokenize, train,
    train-classifier, eval) holds out the same images, whatever the order of listing or the other files.
    """
    import hashlib
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    held: list[int] = []
    if fraction <= 0:
        return held
    key = (lambda i: relative_paths[i]) if seed == 0 else (lambda i: f"{seed}/{relative_paths[i]}")
    for members in by_class.values():
        if len(members) < 2:
            continue
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.extend(sorted(members, key=lambda i: hashlib.sha1(key(i).encode()).hexdigest())[:k])
    return sorted(held)


# ---------------------------------------------------------------------------- image folder
def read_error_reason(error: Exception, path: Path) -> str:
    """The message of an ImageReadError without the path it starts with (the skip warning names the file)."""
    text = " ".join(str(error).split()) or type(error).__name__
    for prefix in (f"cannot read image {path}: ", f"{path} "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _try_decode(path: Path) -> str | None:
    """None when `path` decodes as an image, else the reason it does not."""
    try:
        open_image(path).close()
        return None
    except ImageReadError as e:
        return read_error_reason(e, path)


class ImageFolderDataset(Dataset):
    """Every image under `root` (recursive), one subfolder per class (see IMAGE_FOLDER_CONVENTION).

    Classes: the top-level subfolders, sorted by name (ids 0..n-1), when every image is inside one;
    otherwise a single unnamed class. Extensions: IMAGE_EXTENSIONS. Unreadable images are skipped
    with a warning and counted in `num_skipped`. `holdout` > 0 splits each class (by a hash of the
    file's relative path, so the split does not depend on the machine): `part="train"` keeps the
    rest, `part="heldout"` the held-out images. `max_images` keeps that many, spread over the folder.
    """

    def __init__(self, root: str | os.PathLike, transform: ImageTransform, verify: bool = False,
                 holdout: float = 0.0, part: str = "all", max_images: int | None = None):
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
        if part not in ("all", "train", "heldout"):
            raise ValueError(f"part must be all, train or heldout, got {part!r}")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {holdout}")
        if part != "all" and files:
            held = set(heldout_indices([p.relative_to(self.root).as_posix() for p in files], labels, holdout))
            keep = [i for i in range(len(files)) if (i in held) == (part == "heldout")]
            if not keep:
                raise EmptyDatasetError(f"holding out {holdout:.0%} of each class of {self.root} leaves no "
                                        f"{'held-out' if part == 'heldout' else 'training'} image: change "
                                        f"data.eval_fraction or add images")
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        if max_images is not None and files:
            keep = spread_indices(len(files), max_images).tolist()
            files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        if verify and files:
            from nextscale.progress import progress_bar
            keep = []
            for i, p in enumerate(progress_bar(files, desc=f"checking {self.root}", leave=False)):
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
                with open_image(path) as im:
                    return self.transform(im), self.labels[i]
            except (ImageReadError, OSError, ValueError) as e:  # ImageReadError: unreadable or over the pixel cap
                if str(path) not in self.skipped:
                    self._skip(path, read_error_reason(e, path))
        raise EmptyDatasetError(f"no image under {self.root} could be read")


# ---------------------------------------------------------------------------- Fashion-MNIST
class FashionMNISTDataset(Dataset):
    """Fashion-MNIST (padded to 32x32) through the same transforms; 10 classes."""

    def __init__(self, split: str, transform: ImageTransform, root: str | os.PathLike | None = None,
                 max_images: int | None = None):
        from nextscale.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
        self.images, labels = load_fashion_mnist(split, root)
        if max_images is not None:
            keep = spread_indices(len(self.images), max_images)
            self.images, labels = self.images[keep], labels[keep]
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
    """The dataset a `DataConfig` describes. `split`: "train"/"test" (default: train if `train` else test).

    The test split is Fashion-MNIST's test set, `data.eval_path`, or the `data.eval_fraction` held out of
    `data.path`; a ValueError says how to get one when there is none."""
    split = split or ("train" if train else "test")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    transform = ImageTransform(cfg.resolution, train=train, channels=cfg.channels, resize_ratio=cfg.resize_ratio,
                               hflip=cfg.hflip)
    kind = cfg.resolved_kind()
    if kind == "fashion_mnist":
        if cfg.path is not None and Path(cfg.path).is_dir() and not holds_fashion_mnist(cfg.path):
            raise ValueError(f"data.kind=fashion_mnist but {cfg.path} holds no Fashion-MNIST IDX files "
                             f"(train-images-idx3-ubyte...): for a folder of images set data.kind=image_folder "
                             f"(or auto)")
        return FashionMNISTDataset(split, transform, cfg.path, max_images=cfg.max_images)
    if cfg.path is None:
        raise ValueError("data.path must name an image folder for data.kind=image_folder")
    if split == "train":
        part = "train" if cfg.eval_path is None and cfg.eval_fraction > 0 else "all"
        return ImageFolderDataset(cfg.path, transform, verify=cfg.verify, holdout=cfg.eval_fraction, part=part,
                                  max_images=cfg.max_images)
    if cfg.eval_path is not None:
        return ImageFolderDataset(cfg.eval_path, transform, verify=cfg.verify, max_images=cfg.max_images)
    if cfg.eval_fraction > 0:
        return ImageFolderDataset(cfg.path, transform, verify=cfg.verify, holdout=cfg.eval_fraction, part="heldout",
                                  max_images=cfg.max_images)
    raise NoHeldOutData("no held-out images: set data.eval_path=FOLDER or data.eval_fraction=0.1 (a tenth of "
                        "each class of data.path held out)")


class NoHeldOutData(ValueError):
    """An image-folder config without data.eval_path or data.eval_fraction."""
