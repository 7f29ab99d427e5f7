"""A synthetic labelled image folder, the layout `nextscale` expects of a user's own images.

    make_shapes_folder(root, per_class=100, size=64)   # root/circle/*.png, root/square/*.png, root/triangle/*.png

Each image is one shape of a random colour, size and position on a noisy background of another colour, so the
three classes differ in shape only: a tokenizer must keep the outline for a classifier to tell them apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def draw_shape(kind: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = tuple(int(v) for v in rng.integers(0, 110, 3))
    colour = tuple(int(v) for v in rng.integers(140, 256, 3))
    noise = rng.integers(-12, 13, (size, size, 3))
    im = Image.fromarray(np.clip(np.array(background)[None, None] + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    r = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif kind == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=colour)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return im


def make_shapes_folder(root: str | Path, per_class: int = 100, size: int = 64, seed: int = 0,
                       classes: tuple[str, ...] = CLASSES) -> Path:
    """Write per_class PNGs of each class into root/<class>/; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(kind, size, rng).save(folder / f"{kind}_{i:04d}.png")
    return root


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="write a synthetic 3-class image folder (circle, square, triangle)")
    p.add_argument("root")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(make_shapes_folder(a.root, a.per_class, a.size, a.seed))
