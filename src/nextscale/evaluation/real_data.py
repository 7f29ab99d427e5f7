"""The real images of a classifier: what it was trained on and the held-out images it was measured on.

`nextscale train-classifier` and `nextscale eval` both read them through `load_real_data(data, ...)`, from the
`data` entry of the classifier's config.json, so eval compares samples to exactly the images the classifier
never saw in training, and draws the floor's real images from its training images:

    {"kind": "fashion_mnist", "path": None or FOLDER}         train split / test split (padded to 32x32, gray)
    {"kind": "image_folder", "path": ABSOLUTE_FOLDER,          one subfolder per class (ImageFolderDataset's
     "eval_path": ABSOLUTE_FOLDER or None,                      convention), images resized (shorter side) and
     "holdout": 0.1, "holdout_seed": 0,                         center-cropped to `resolution`, 1 or 3 channels
     "resolution": 32, "channels": 3, ...}

Without `eval_path`, `holdout` of each class is held out: per class, the round(holdout * n) images (at least 1
of 2 or more, never all) whose SHA-1 of the path relative to the folder ("<seed>/<path>" for a seed other than 0)
is smallest. The rule does not depend on the machine or on the order of files, and adding images to a class
moves few others. With seed 0 it is the rule of the training data's `data.eval_fraction` (ImageFolderDataset):
a classifier trained with `--holdout 0.1` holds out the very images a tokenizer or transformer trained with
`data.eval_fraction=0.1` never saw.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass
class RealData:
    """The held-out images (uint8 (N, H, W, C), int64 labels) and the training images, decoded on demand:
    `train(indices)` (all of them without indices), so that eval decodes only the floor's few."""
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    num_train: int
    fetch_train: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...]
    heldout_rule: str  # for people: "Fashion-MNIST test split", "10% of each class held out (seed 0)", ...
    source: str  # for people: where the images are
    skipped: list[str] = field(default_factory=list)  # unreadable files met so far
    heldout_digest: str | None = None  # SHA-1 of the held-out files' paths (image folders): which images they are

    def train(self, indices: np.ndarray | None = None, desc: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of these training images (unreadable ones left out), all of them by default."""
        return self.fetch_train(np.arange(self.num_train) if indices is None else np.asarray(indices), desc)

    def summary(self) -> dict:
        return {"source": self.source, "heldout_rule": self.heldout_rule, "num_train_images": self.num_train,
                "num_heldout_images": len(self.heldout_images), "num_skipped": len(self.skipped)}


@dataclass
class LabelledFolder:
    """The images of a folder with one subfolder per class (listed, not yet decoded)."""
    root: Path
    paths: list[Path]
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]
    resolution: int
    channels: int

    @property
    def files(self) -> list[str]:
        """Paths relative to the folder, posix."""
        return [p.relative_to(self.root).as_posix() for p in self.paths]

    def decode(self, indices=None, desc: str = "", skipped: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, H, W, C) images and their labels, resized and center-cropped as the transformer's data;
        unreadable files are left out with a warning (and appended to `skipped`)."""
        from nextscale.progress import progress_bar

        from nextscale.data.datasets import ImageTransform, read_error_reason
        from nextscale.images import ImageReadError, open_image
        transform = ImageTransform(self.resolution, train=False, channels=self.channels)
        indices = np.arange(len(self.paths)) if indices is None else np.asarray(indices)
        images, labels = [], []
        for i in progress_bar(indices.tolist(), desc=desc or f"reading {self.root}", leave=False, disable=len(indices) < 200):
            path = self.paths[i]
            try:  # open_image refuses a file whose header claims more than its pixel cap, before decoding
                with open_image(path) as im:
                    x = transform(im)
            except (ImageReadError, OSError, ValueError) as e:
                if skipped is not None:
                    skipped.append(str(path))
                warnings.warn(f"skipping unreadable image {path} ({read_error_reason(e, path)})", stacklevel=2)
                continue
            images.append(((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
            labels.append(self.labels[i])
        if not images:
            raise ValueError(f"no readable image among the {len(indices)} of {self.root} asked for")
        return np.stack(images), np.asarray(labels, dtype=np.int64)


def list_labelled_folder(root: str | os.PathLike, resolution: int, channels: int) -> LabelledFolder:
    """The images of a folder with one subfolder per class (ImageFolderDataset's convention), not decoded."""
    from nextscale.data.datasets import ImageFolderDataset, ImageTransform
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected one subfolder of images per class)")
    dataset = ImageFolderDataset(root, ImageTransform(resolution, train=False, channels=channels))
    if dataset.num_classes < 2 or list(dataset.classes) == [""]:
        what = "images outside class subfolders" if list(dataset.classes) == [""] else "one class"
        raise ValueError(f"{root} holds {what}"
                         f": a classifier needs one subfolder per class, at least 2 (e.g. {root}/cats/*.png, "
                         f"{root}/dogs/*.png)")
    return LabelledFolder(root, [Path(p) for p in dataset.files], np.asarray(dataset.labels, dtype=np.int64),
                          tuple(dataset.classes), resolution, channels)


@dataclass
class FolderImages:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]


def read_labelled_folder(root: str | os.PathLike, resolution: int, channels: int, desc: str = "") -> FolderImages:
    """Every image of a folder with one subfolder per class, resized and center-cropped as the transformer's data."""
    folder = list_labelled_folder(root, resolution, channels)
    images, labels = folder.decode(desc=desc)
    return FolderImages(images, labels, folder.classes)


def heldout_mask(files: list[str], labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean (N,): the held-out images of a folder, by the training data's rule (`data.datasets.heldout_indices`):
    with seed 0 exactly what `data.eval_fraction` holds out of a generator's training."""
    from nextscale.data.datasets import heldout_indices
    if not 0 < fraction < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {fraction}")
    mask = np.zeros(len(files), dtype=bool)
    mask[heldout_indices(files, labels, fraction, seed)] = True
    return mask


def image_folder_data(path, eval_path=None, holdout: float = 0.1, holdout_seed: int = 0, resolution: int = 32,
                      channels: int = 3) -> dict:
    """The `data` entry of a classifier trained on an image folder (absolute paths)."""
    return {"kind": "image_folder", "path": str(Path(path).resolve()),
            "eval_path": str(Path(eval_path).resolve()) if eval_path else None,
            "holdout": None if eval_path else holdout, "holdout_seed": None if eval_path else holdout_seed,
            "resolution": resolution, "channels": channels}


def load_real_data(data: dict, class_names: tuple[str, ...] | None = None) -> RealData:
    """The training and held-out images a classifier's `data` entry describes (class_names: check they match)."""
    kind = data.get("kind")
    if kind == "fashion_mnist":
        from nextscale.data.fashion_mnist import CLASS_NAMES, DEFAULT_DIR, load_fashion_mnist
        train_x, train_y = load_fashion_mnist("train", data.get("path"))
        test_x, test_y = load_fashion_mnist("test", data.get("path"))
        real = RealData(test_x[..., None], test_y.astype(np.int64), len(train_x),
                        lambda idx, desc="": (train_x[idx][..., None], train_y[idx].astype(np.int64)),
                        CLASS_NAMES, "Fashion-MNIST test split", f"Fashion-MNIST ({data.get('path') or DEFAULT_DIR})")
    elif kind == "image_folder":
        resolution, channels = int(data["resolution"]), int(data["channels"])
        path = Path(data["path"])
        folder = list_labelled_folder(path, resolution, channels)
        skipped: list[str] = []
        if data.get("eval_path"):
            held = list_labelled_folder(data["eval_path"], resolution, channels)
            if held.classes != folder.classes:
                raise ValueError(f"the held-out folder {data['eval_path']} has the classes {list(held.classes)}, "
                                 f"{path} has {list(folder.classes)}: give both the same class subfolders")
            train_idx = np.arange(len(folder.paths))
            held_x, held_y = held.decode(desc="reading the held-out images", skipped=skipped)
            rule, held_files = f"the images of {data['eval_path']}", held.files
        else:
            fraction, seed = float(data.get("holdout") or 0.1), int(data.get("holdout_seed") or 0)
            mask = heldout_mask(folder.files, folder.labels, fraction, seed)
            if mask.sum() < 2 or (~mask).sum() < 2:
                raise ValueError(f"{path} has too few images to hold some out ({len(mask)}): add images, "
                                 f"or pass --eval-data FOLDER")
            train_idx = np.flatnonzero(~mask)
            held_x, held_y = folder.decode(np.flatnonzero(mask), "reading the held-out images", skipped)
            rule = f"{fraction:.0%} of each class held out (seed {seed})"
            held_files = [folder.files[i] for i in np.flatnonzero(mask)]
        real = RealData(held_x, held_y, len(train_idx),
                        lambda idx, desc="": folder.decode(train_idx[idx], desc or "reading training images", skipped),
                        folder.classes, rule, str(path), skipped,
                        hashlib.sha1("\n".join(sorted(held_files)).encode()).hexdigest())
    else:
        raise ValueError(f"the classifier's config.json names no known real data (data.kind={kind!r}; expected "
                         f"fashion_mnist or image_folder): retrain it with `nextscale train-classifier`")
    if class_names is not None and tuple(class_names) != tuple(real.class_names):
        raise ValueError(f"{real.source} now has the classes {list(real.class_names)}, the classifier was trained on "
                         f"{list(class_names)}: retrain it (`nextscale train-classifier --data FOLDER`)")
    return real
