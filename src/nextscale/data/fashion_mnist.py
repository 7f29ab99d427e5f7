"""Fashion-MNIST from its IDX files (Debian: `apt-get install -y dataset-fashion-mnist`).

Our convention: each 28x28 image is padded with 2 black pixels on every side to 32x32 (the content is
not rescaled), so that it fits a tokenizer with 8x8 latents.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(os.environ.get("NEXTSCALE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = ("install it with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu, as root), or download "
                "the four *-ubyte.gz files of https://github.com/zalandoresearch/fashion-mnist into a folder and "
                "pass that folder (or set NEXTSCALE_FASHION_MNIST_DIR)")


class DatasetMissingError(FileNotFoundError):
    """The dataset files are not where we looked."""


def _open(path: Path):
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.is_file():
            return gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
    raise DatasetMissingError(f"Fashion-MNIST file {path.name}(.gz) not found in {path.parent}: {INSTALL_HINT}")


def _read_idx(path: Path, expected_dims: int) -> np.ndarray:
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != expected_dims:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes with {expected_dims} dimensions")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims)]
    offset = 4 + 4 * expected_dims
    count = int(np.prod(dims))
    if len(data) - offset != count:
        raise ValueError(f"{path} is truncated: expected {count} bytes of data, found {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None,
                       pad_to_32: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32) — or (N, 28, 28) without padding —, labels int64 (N,))."""
    if split not in FILES:
        raise ValueError(f"split must be one of {list(FILES)}, got {split!r}")
    root = Path(root) if root is not None else DEFAULT_DIR
    if not root.is_dir():
        raise DatasetMissingError(f"Fashion-MNIST folder {root} does not exist: {INSTALL_HINT}")
    images_name, labels_name = FILES[split]
    images = _read_idx(root / images_name, 3)
    labels = _read_idx(root / labels_name, 1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    if pad_to_32:
        images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    return images, labels
