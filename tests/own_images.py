"""A synthetic labelled colour image folder, the layout `nextscale` expects of a user's own images.

    make_shapes_folder(root, per_class=100, size=64)   # root/blue_circle/*.png, root/red_circle/*.png, root/red_square/*.png

Three classes: a blue circle, a red circle, a red square, of random size and position, on a coloured gradient
background with a little noise. The blue and the red circle differ only in colour: the shape's grey level is
drawn from the same range for both (each colour is scaled to a luminance drawn uniformly), so in grey those two
classes cannot be told apart; the red circle and the red square differ only in shape. A tokenizer that drops
colour, and a model trained on it, cannot pass the classifier that tells the three apart.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("blue_circle", "red_circle", "red_square")
HUES = {"red": (-0.04, 0.04), "blue": (0.58, 0.66)}  # hue ranges (HSV, 0..1; red wraps around 0)
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, what PIL's convert("L") uses


def shape_colour(name: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour of hue family `name` whose grey level is uniform in [70, 150] whatever the hue."""
    low, high = HUES[name]
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(low, high) % 1.0, rng.uniform(0.75, 1.0), 1.0)
    rgb = np.array([r, g, b])
    target = rng.uniform(70, 150)
    # Scale to the target luminance; if a channel would pass 255, mix toward white instead (keeps the hue).
    rgb = rgb * target / float(LUMA @ rgb)
    if rgb.max() > 255:
        rgb = rgb * 255 / rgb.max()
        white = np.full(3, 255.0)
        t = (target - LUMA @ rgb) / max(LUMA @ (white - rgb), 1e-6)
        rgb = rgb + np.clip(t, 0, 1) * (white - rgb)
    return tuple(int(round(v)) for v in np.clip(rgb, 0, 255))


def gradient_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A linear gradient between two muted colours of random hue, with pixel noise: (size, size, 3) uint8."""
    ends = []
    for _ in range(2):
        h, s, v = rng.uniform(0, 1), rng.uniform(0.2, 0.6), rng.uniform(0.25, 0.85)
        ends.append(np.array(colorsys.hsv_to_rgb(h, s, v)) * 255)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = ends[0] * (1 - t) + ends[1] * t + rng.normal(0, 5, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_image(label: str, size: int, rng: np.random.Generator) -> Image.Image:
    colour_name, kind = label.split("_")
    im = Image.fromarray(gradient_background(size, rng))
    draw = ImageDraw.Draw(im)
    fill = shape_colour(colour_name, rng)
    r = rng.uniform(0.22, 0.34) * size
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        h = r * 0.85
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return im


def make_shapes_folder(root: str | Path, per_class: int = 100, size: int = 64, seed: int = 0,
                       classes: tuple[str, ...] = CLASSES) -> Path:
    """Write per_class PNGs of each class into root/<class>/; returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_image(label, size, rng).save(folder / f"{label}_{i:04d}.png")
    return root


if __name__ == "__main__":
    import argparse
    p = argparse.ArgumentParser(description="write a synthetic 3-class colour image folder (a blue circle, a red "
                                            "circle, a red square on coloured gradients)")
    p.add_argument("root")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(make_shapes_folder(a.root, a.per_class, a.size, a.seed))
