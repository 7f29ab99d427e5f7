"""Sets of images to evaluate: a folder of PNGs or an ADM-style `.npz`, and writing the `.npz`.

The ADM evaluator's format (Dhariwal & Nichol 2021, used by VAR and most published FIDs): `arr_0` holds
the images, uint8 (N, H, W, 3). Its reference batches also hold `mu` and `sigma`, the mean and covariance
of the Inception pool features of the reference images. `nextscale sample` adds `labels` (int64 (N,)); we
also read labels from `arr_1`, where class-conditional samplers in the ADM style put them.
File names written by `nextscale sample`: `class{c:03d}_{i:05d}.png`; the class is read from the name.
Class names: `nextscale sample` writes the model's into the .npz (key `class_names`, a unicode array) and into
`class_names.json` (a JSON list) next to the PNGs; `nextscale eval` checks them against its classifier's.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nextscale.images import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CLASS_NAME_PATTERN = re.compile(r"^class(\d+)_")
CLASS_NAMES_FILE = "class_names.json"


@dataclass
class ImageSet:
    """uint8 (N, H, W, 3) images (or None for a statistics-only reference), labels, reference statistics."""
    images: np.ndarray | None
    labels: np.ndarray | None = None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    source: str = ""
    class_names: tuple[str, ...] | None = None  # the generating model's, when the set says (labels index them)

    def __len__(self) -> int:
        return 0 if self.images is None else len(self.images)

    def batches(self, batch_size: int):
        """(B, 3, H, W) float tensors in [0, 1]."""
        for i in range(0, len(self), batch_size):
            yield torch.from_numpy(self.images[i:i + batch_size]).permute(0, 3, 1, 2).float().div(255)


def as_nhwc3(images: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W), (N, H, W, 1) or (N, H, W, 3) uint8 -> (N, H, W, 3) uint8 (gray repeated)."""
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8 (0..255) as in the ADM format, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: images must be (N, H, W, 3) (or (N, H, W) / (N, H, W, 1) grayscale), "
                         f"got shape {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{where}: holds no images")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def labels_from_names(names: list[str], where: str) -> np.ndarray | None:
    """Classes from `class{c}_...` file names: all names must follow the pattern, or none."""
    matches = [CLASS_NAME_PATTERN.match(n) for n in names]
    if not any(matches):
        return None
    if not all(matches):
        odd = next(n for n, m in zip(names, matches) if not m)
        raise ValueError(f"{where}: some file names carry a class (class<C>_<I>.png) and some do not (e.g. {odd}); "
                         f"name all of them class<C>_<I>.png or none")
    return np.array([int(m.group(1)) for m in matches], dtype=np.int64)


def check_class_names(names, labels: np.ndarray | None, where: str) -> tuple[str, ...]:
    """A list of strings; labels (when given) must index it, or be len(names) (the null class: unconditional)."""
    if isinstance(names, np.ndarray):
        if names.ndim != 1 or names.dtype.kind != "U":
            raise ValueError(f"{where}: class_names must be a 1-d array of strings, got {names.dtype} of shape "
                             f"{names.shape}")
        names = names.tolist()
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: class_names must be a non-empty list of strings")
    if labels is not None and len(labels):
        bad = labels[(labels < 0) | (labels > len(names))]
        if len(bad):
            raise ValueError(f"{where}: class label {int(bad[0])} is outside the {len(names)} classes it names "
                             f"(0..{len(names) - 1}, and {len(names)} for unconditional)")
    return tuple(names)


def read_image_folder(folder: str | os.PathLike) -> ImageSet:
    folder = Path(folder)
    if (folder / "images").is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in (folder / "images").iterdir()):
        return read_image_folder(folder / "images")  # the output folder of `nextscale sample` (grid.png beside)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays = []
    for path in files:
        arrays.append(np.asarray(read_image(path).convert("RGB")))  # ImageReadError is a ValueError
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"{folder}: images differ in size ({files[0].name} is {arrays[0].shape[1]}x"
                             f"{arrays[0].shape[0]}, {path.name} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]})")
    labels = labels_from_names([p.name for p in files], str(folder))
    class_names = None
    if (folder / CLASS_NAMES_FILE).is_file():
        where = str(folder / CLASS_NAMES_FILE)
        try:
            class_names = check_class_names(json.loads((folder / CLASS_NAMES_FILE).read_text()), labels, where)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not JSON ({e}): it should hold the list of class names") from None
    return ImageSet(np.stack(arrays), labels, source=str(folder), class_names=class_names)


def read_npz(path: str | os.PathLike) -> ImageSet:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an .npz file: {e}") from None
    mu, sigma = arrays.get("mu"), arrays.get("sigma")
    if (mu is None) != (sigma is None):
        raise ValueError(f"{path} has {'mu' if sigma is None else 'sigma'} without "
                         f"{'sigma' if sigma is None else 'mu'}")
    if mu is not None and (mu.ndim != 1 or sigma.shape != (len(mu), len(mu))):
        raise ValueError(f"{path}: mu must be (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    if "arr_0" not in arrays:
        if mu is None:
            raise ValueError(f"{path} has neither images (arr_0) nor statistics (mu, sigma); keys: {list(arrays)}")
        return ImageSet(None, mu=mu, sigma=sigma, source=str(path))
    images = as_nhwc3(arrays["arr_0"], str(path))
    labels = None
    for key in ("labels", "arr_1"):
        if key in arrays:
            labels = arrays[key]
            if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"{path}: {key} must hold one integer class per image ({len(images)}), "
                                 f"got {labels.dtype} of shape {labels.shape}")
            labels = labels.astype(np.int64)
            break
    class_names = check_class_names(arrays["class_names"], labels, f"{path} (key class_names)") \
        if "class_names" in arrays else None
    return ImageSet(images, labels, mu, sigma, source=str(path), class_names=class_names)


def read_image_set(path: str | os.PathLike) -> ImageSet:
    """A folder of images or an `.npz`."""
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path)
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path}: expected a folder of images or an .npz file")
        return read_npz(path)
    raise FileNotFoundError(f"{path} does not exist (expected a folder of images or an .npz file)")


def write_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None,
              mu: np.ndarray | None = None, sigma: np.ndarray | None = None,
              class_names: list[str] | tuple[str, ...] | None = None) -> Path:
    """ADM layout: arr_0 uint8 (N, H, W, 3); labels int64 and class_names (unicode) when given; mu/sigma
    Inception pool statistics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": as_nhwc3(np.asarray(images), str(path))}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if mu is not None:
        arrays["mu"], arrays["sigma"] = np.asarray(mu), np.asarray(sigma)
    if class_names is not None:
        arrays["class_names"] = np.asarray(list(class_names), dtype=str)
    np.savez(path, **arrays)
    return path
