"""`make demo`: what the shipped Fashion-MNIST VAR does, written as pictures and a web page.

Writes into the output folder: a labelled grid of samples (every class), in-painting and
out-painting of Fashion-MNIST test images, a class-conditional edit, the coarse-to-fine scales of
samples, and `index.html` showing them all.
"""

from __future__ import annotations

import argparse
import html
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import nextscale
from nextscale.data.fashion_mnist import DatasetMissingError, load_fashion_mnist
from nextscale.editing import inpaint_keep_mask, outpaint_keep_mask, shade_regenerated
from nextscale.images import to_model_input, to_uint8_hwc
from nextscale.inference_options import seeded_generators
from nextscale.model_folder import CheckpointError

ZOOM = 3  # 32px images are shown 3x larger, nearest-neighbour


def load_demo_model(reference_dir: Path):
    """The shipped model; without it (a development checkout), the tiny random reference model."""
    try:
        return nextscale.load_pretrained("fashion-mnist"), None
    except CheckpointError:
        vae = nextscale.load_vae(reference_dir / "tiny_d2_vae.pth", patch_nums=(1, 2, 3, 4))
        var = nextscale.load_var(reference_dir / "tiny_d2_var.pth", vae=vae, patch_nums=(1, 2, 3, 4))
        return var, "the shipped model is missing: showing the tiny reference model (random weights, noise-like images)"


def test_images_or_install(root: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Fashion-MNIST test split; installs the Debian package when missing and running as root."""
    try:
        return load_fashion_mnist("test", root)
    except DatasetMissingError as e:
        if root is None and hasattr(os, "geteuid") and os.geteuid() == 0 and Path("/usr/bin/apt-get").exists():
            print("Fashion-MNIST is missing: installing it with `apt-get install -y dataset-fashion-mnist` ...")
            done = subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], capture_output=True, text=True)
            if done.returncode == 0:
                return load_fashion_mnist("test", root)
            print(done.stderr[-2000:], file=sys.stderr)
        print(f"note: {e}\n      the editing examples are skipped; the samples are still written.", file=sys.stderr)
        return None


def tile(rows: list[np.ndarray], row_labels: list[str] | None = None, col_labels: list[str] | None = None,
         zoom: int = ZOOM, pad: int = 4) -> Image.Image:
    """rows: each (N, H, W, 3) uint8 -> one picture, optional text left of each row / above each column."""
    h, w = rows[0].shape[1] * zoom, rows[0].shape[2] * zoom
    ncols = max(len(r) for r in rows)
    left = 110 if row_labels else 0
    top = 16 if col_labels else 0
    canvas = Image.new("RGB", (left + ncols * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(col_labels or []):
        draw.text((left + pad + c * (w + pad), 2), text, fill="black")
    for r, row in enumerate(rows):
        y = top + pad + r * (h + pad)
        if row_labels:
            draw.text((6, y + h // 2 - 6), row_labels[r], fill="black")
        for c, im in enumerate(row):
            tile_im = Image.fromarray(im).resize((w, h), Image.NEAREST)
            canvas.paste(tile_im, (left + pad + c * (w + pad), y))
    return canvas


def editing_figures(var, args, names: list[str], settings: dict, out: Path) -> list[tuple[str, str, str]]:
    """In-painting, out-painting and class-conditional editing of Fashion-MNIST test images (none when the data
    is not installed): the pictures written into `out`, as (file, title, caption)."""
    vae = var.tokenizer
    figures = []
    data = test_images_or_install(args.fashion_mnist_dir)
    if data is None:
        return []
    images, test_labels = data
    grid = var.patch_nums[-1]
    rng = np.random.default_rng(args.seed)
    chosen = rng.choice(len(images), size=4, replace=False)
    as_model_input = lambda a: to_model_input(torch.from_numpy(a).float().div(255)[:, None].expand(-1, 3, -1, -1),
                                              vae.resolution)
    inputs = as_model_input(images[chosen])
    n_var = 4
    cases = [
        ("inpaint.png", "In-painting", "the centre (blue) is regenerated, unconditionally, from the rest",
         inpaint_keep_mask((0.3, 0.3, 0.7, 0.7), grid), None),
        ("outpaint.png", "Out-painting", "only the centre is kept; everything around it is regenerated",
         outpaint_keep_mask((0.25, 0.25, 0.75, 0.75), grid), None),
    ]
    for file, title, caption, keep, _ in cases:
        rows = []
        for i, img in enumerate(inputs):
            edited = nextscale.edit(var, img.expand(n_var, -1, -1, -1), keep, labels=var.num_classes,
                                    generator=seeded_generators(range(args.seed + 10 * i, args.seed + 10 * i + n_var)),
                                    **settings).images
            rows.append(to_uint8_hwc(torch.cat([img[None], shade_regenerated(img, keep)[None], edited])))
        tile(rows, row_labels=[names[test_labels[j]] for j in chosen],
             col_labels=["input", "mask"] + [f"seed {k}" for k in range(n_var)]).save(out / file)
        figures.append((file, title, caption))

    # class-conditional edit: regenerate the top 60% of a T-shirt as other classes
    tshirt = int(np.flatnonzero(test_labels == 0)[0]) if (test_labels == 0).any() else int(chosen[0])
    img = as_model_input(images[tshirt:tshirt + 1])[0]
    keep = inpaint_keep_mask((0.0, 0.0, 0.6, 1.0), grid)
    targets = [c for c in (3, 2, 4, 8) if c < var.num_classes]
    rows = []
    for c in targets:
        edited = nextscale.edit(var, img.expand(n_var, -1, -1, -1), keep, labels=c,
                                generator=seeded_generators(range(args.seed, args.seed + n_var)), **settings).images
        rows.append(to_uint8_hwc(torch.cat([img[None], shade_regenerated(img, keep)[None], edited])))
    tile(rows, row_labels=[f"-> {names[c]}" for c in targets],
         col_labels=["input", "mask"] + [f"seed {k}" for k in range(n_var)]).save(out / "class_edit.png")
    figures.append(("class_edit.png", "Class-conditional editing",
                    f"the top 60% of a {names[test_labels[tshirt]]} (test image {tshirt}) is regenerated as "
                    f"another class; the bottom is kept"))
    return figures


def write_index(out: Path, figures: list[tuple[str, str, str]], note: str | None) -> None:
    """index.html: every picture with its title and caption."""
    page = ["<!doctype html><meta charset='utf-8'><title>nextscale demo</title>",
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}img{image-rendering:pixelated;"
            "max-width:100%}figure{margin:2em 0}</style>",
            "<h1>nextscale: VAR on Fashion-MNIST</h1>",
            f"<p>{html.escape(note)}</p>" if note else ""]
    for file, title, caption in figures:
        page.append(f"<figure><h2>{html.escape(title)}</h2><img src='{file}' alt='{html.escape(title)}'>"
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    (out / "index.html").write_text("\n".join(page) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nextscale.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--per-class", type=int, default=8, help="samples per class in the grid (default: 8)")
    parser.add_argument("--fashion-mnist-dir", default=None,
                        help="folder with the Fashion-MNIST files (default: /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--reference-dir", default=os.environ.get("NEXTSCALE_REFERENCE_DIR", "../shared/reference"),
                        help="tiny reference models, used only when the shipped model is missing")
    args = parser.parse_args(argv)
    from nextscale.threads import set_threads
    set_threads(0)  # the free cores (the images do not depend on the count)

    try:
        var, note = load_demo_model(Path(args.reference_dir))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if note:
        print(f"note: {note}", file=sys.stderr)
    extra = getattr(var, "extra_config", {})
    names = extra.get("class_names") or [f"class {c}" for c in range(var.num_classes)]
    settings = nextscale.recommended_sampling(var)  # the defaults of sample / edit / the CLI
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []  # (file, title, caption)

    # 1. a labelled grid: one row per class
    labels = [c for c in range(var.num_classes) for _ in range(args.per_class)]
    result = nextscale.sample(var, labels, generator=seeded_generators(range(args.seed, args.seed + len(labels))),
                              batch_size=40, progress=True, **settings)
    arr = to_uint8_hwc(result.images).reshape(var.num_classes, args.per_class, *result.images.shape[-2:], 3)
    tile(list(arr), row_labels=names).save(out / "samples.png")
    figures.append(("samples.png", f"{args.per_class} samples of each class",
                    f"cfg {settings['cfg']}, top-k {settings['top_k']}, top-p {settings['top_p']}, seeds "
                    f"{args.seed}..{args.seed + len(labels) - 1}"))

    # 2. coarse to fine: what the first k scales decode to
    vae = var.tokenizer
    picks = [c * args.per_class for c in (0, 1, 7, 9) if c < var.num_classes][:4]
    steps = [vae.decode_tokens([t[picks] for t in result.tokens], num_scales=k).add(1).mul(0.5)
             for k in range(1, len(var.patch_nums) + 1)]
    rows = [to_uint8_hwc(torch.stack([s[i] for s in steps])) for i in range(len(picks))]
    tile(rows, row_labels=[names[labels[i]] for i in picks],
         col_labels=[f"{pn}x{pn}" for pn in var.patch_nums]).save(out / "scales.png")
    figures.append(("scales.png", "Coarse to fine", "each column decodes the token maps up to that scale; "
                    "the last column is the sample"))

    figures += editing_figures(var, args, names, settings, out)
    write_index(out, figures, note)
    print(f"wrote {len(figures)} pictures and index.html into {out.resolve()}/")
    for file, title, _ in figures:
        print(f"  {out / file}: {title}")
    print(f"open {(out / 'index.html').resolve()} in a browser to see them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
