"""Write the colour corpus that the shipped general-purpose colour tokenizer is trained on.

    python scripts/colour_corpus.py --emoji emoji-datasource-google-16.0.0.tgz \
        --photos scikit_image-0.26.0-cp311-...whl --out data/colour_corpus

Two sources, both registry packages read as archives (nothing is installed or imported from them):
- emoji: Google's Noto Color Emoji images at 64 px from the npm package `emoji-datasource-google` (the images are
  Noto Emoji's, Apache License 2.0; the package's data MIT). Each emoji is pasted, at a random size and position,
  on a background: a random crop of one of the photos, a two-colour gradient, or a flat colour.
- photos: random crops (random size, position, flip) of the colour photographs that the scikit-image wheel
  bundles in skimage/data, all public domain or CC0 (PHOTOS below names each with its licence).
The result is an image folder with one subfolder per source (emoji/, photo/), 64x64 PNGs, the same for a
given seed. `make colour-tokenizer` runs this, then trains the tokenizer on it.
"""

from __future__ import annotations

import argparse
import colorsys
import io
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# skimage/data files in the scikit-image wheel, with the licence its documentation (skimage/data/_fetchers.py) gives.
PHOTOS = {
    "astronaut.png": "public domain (NASA)",
    "chelsea.png": "CC0 (Stefan van der Walt)",
    "coffee.png": "CC0 (Rachel Michetti)",
    "hubble_deep_field.jpg": "public domain (NASA)",
    "ihc.png": "no known copyright restrictions",
    "retina.jpg": "CC0 1.0 (Haggstrom)",
    "rocket.jpg": "public domain (SpaceX)",
}
EMOJI_FOLDER = "package/img/google/64/"


def read_emoji(archive: Path) -> list[Image.Image]:
    """The 64 px emoji PNGs of an emoji-datasource-google .tgz (or of a folder of PNGs), RGBA, in name order."""
    if archive.is_dir():
        return [Image.open(p).convert("RGBA") for p in sorted(archive.glob("*.png"))]
    images = []
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.startswith(EMOJI_FOLDER)
                          and m.name.endswith(".png")), key=lambda m: m.name)
        for member in members:
            images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGBA"))
    return images


def read_photos(source: Path) -> list[Image.Image]:
    """The PHOTOS of a scikit-image wheel (or every image of a folder), RGB."""
    if source.is_dir():
        return [Image.open(p).convert("RGB") for p in sorted(source.iterdir())
                if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    with zipfile.ZipFile(source) as wheel:
        return [Image.open(io.BytesIO(wheel.read(f"skimage/data/{name}"))).convert("RGB") for name in PHOTOS]


def random_crop(photo: Image.Image, size: int, rng: np.random.Generator, min_side: int = 48) -> Image.Image:
    """A square crop of random side (min_side .. the photo's shorter side, log-uniform), resized to size."""
    w, h = photo.size
    short = min(w, h)
    side = int(round(np.exp(rng.uniform(np.log(min(min_side, short)), np.log(short)))))
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.LANCZOS)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def gradient(size: int, rng: np.random.Generator) -> Image.Image:
    ends = [np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.1, 1))) * 255
            for _ in range(2)]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    return Image.fromarray(np.clip(ends[0] * (1 - t) + ends[1] * t, 0, 255).astype(np.uint8))


def emoji_scene(emoji: Image.Image, photos: list[Image.Image], size: int, rng: np.random.Generator) -> Image.Image:
    kind = rng.random()
    if kind < 0.5:
        background = random_crop(photos[int(rng.integers(len(photos)))], size, rng)
    elif kind < 0.8:
        background = gradient(size, rng)
    else:
        background = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    side = int(round(size * rng.uniform(0.45, 1.0)))
    sprite = emoji.resize((side, side), Image.LANCZOS)
    x, y = (int(v) for v in rng.integers(-side // 5, size - side + side // 5 + 1, 2))
    background.paste(sprite, (x, y), sprite)
    return background


def write_corpus(emoji: list[Image.Image], photos: list[Image.Image], out: Path, size: int = 64,
                 emoji_repeats: int = 1, photo_crops: int = 2000, seed: int = 0) -> dict:
    """Write out/emoji/*.png (each emoji `emoji_repeats` times) and out/photo/*.png; returns the counts."""
    if not emoji or not photos:
        raise ValueError(f"need emoji and photos, got {len(emoji)} emoji and {len(photos)} photos")
    if out.exists():
        raise ValueError(f"{out} exists: remove it first, or pass another --out")
    rng = np.random.default_rng(seed)
    # Written beside `out` and renamed when complete: a stopped run (Ctrl-C, SIGTERM, a full disk) leaves no
    # half corpus that `make colour-tokenizer` would take for a finished one.
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "emoji").mkdir(parents=True)
    (partial / "photo").mkdir(parents=True)
    n = 0
    for r in range(emoji_repeats):
        for i, image in enumerate(emoji):
            emoji_scene(image, photos, size, rng).save(partial / "emoji" / f"emoji_{r}_{i:05d}.png")
            n += 1
    for i in range(photo_crops):
        random_crop(photos[i % len(photos)], size, rng).save(partial / "photo" / f"photo_{i:05d}.png")
    partial.rename(out)
    return {"emoji": n, "photo": photo_crops}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--emoji", required=True, type=Path,
                   help="emoji-datasource-google's .tgz (`npm pack emoji-datasource-google@16.0.0`), or a folder of PNGs")
    p.add_argument("--photos", required=True, type=Path,
                   help="the scikit-image wheel (`pip download --no-deps scikit-image==0.26.0`), or a folder of photos")
    p.add_argument("--out", required=True, type=Path, help="folder to write (emoji/ and photo/ inside)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--emoji-repeats", type=int, default=1, help="scenes per emoji (default 1)")
    p.add_argument("--photo-crops", type=int, default=2000, help="photo crops (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not (8 <= a.size <= 1024 and 0 <= a.emoji_repeats <= 100 and 0 <= a.photo_crops <= 1_000_000):
        p.error("--size must be 8..1024, --emoji-repeats 0..100, --photo-crops 0..1000000")
    for path in (a.emoji, a.photos):
        if not path.exists():
            sys.exit(f"error: {path} does not exist (see --help for where it comes from)")
    try:
        counts = write_corpus(read_emoji(a.emoji), read_photos(a.photos), a.out, a.size, a.emoji_repeats,
                              a.photo_crops, a.seed)
    except (OSError, KeyError, tarfile.TarError, zipfile.BadZipFile, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {counts['emoji']} emoji scenes and {counts['photo']} photo crops into {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
