"""A few Fashion-MNIST test images shipped with the package, for the web app's editing view.

`assets/fashion_mnist_test_images.png` is one grayscale strip of 20 images of 32x32 (the first two test
images of each class, in class order, padded to 32x32 as `load_fashion_mnist` does); its PNG text field
`indices` holds their indices in the test split. `write_asset` made it; the tests check it against the
dataset where the dataset is installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from nextscale.data.fashion_mnist import CLASS_NAMES

PER_CLASS = 2
SIZE = 32


def asset_path() -> Path:
    return Path(str(resources.files("nextscale") / "assets" / "fashion_mnist_test_images.png"))


def pick_indices(labels: np.ndarray, per_class: int = PER_CLASS) -> list[int]:
    """The first `per_class` test images of each class, in class order."""
    return [int(i) for c in range(len(CLASS_NAMES)) for i in np.flatnonzero(labels == c)[:per_class]]


def write_asset(path: str | Path, root: str | None = None) -> Path:
    from nextscale.data.fashion_mnist import load_fashion_mnist
    images, labels = load_fashion_mnist("test", root)
    indices = pick_indices(labels)
    strip = np.concatenate(list(images[indices]), axis=1)  # (32, 20 * 32)
    info = PngImagePlugin.PngInfo()
    info.add_text("indices", ",".join(map(str, indices)))
    Image.fromarray(strip).save(path, pnginfo=info, optimize=True)  # uint8 (H, W): grayscale
    return Path(path)


def load_test_images() -> tuple[np.ndarray, list[int], list[int]]:
    """(uint8 images (20, 32, 32), class ids, indices in the Fashion-MNIST test split)."""
    with Image.open(asset_path()) as im:
        strip = np.asarray(im.convert("L"))
        indices = [int(v) for v in im.text["indices"].split(",")]
    images = strip.reshape(SIZE, -1, SIZE).transpose(1, 0, 2)
    labels = [i // PER_CLASS for i in range(len(images))]
    return images, labels, indices
