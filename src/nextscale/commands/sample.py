"""`nextscale sample`: generate images with a class-conditional VAR model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nextscale.commands.common import UserError, add_device_args, add_model_args, load_model, resolve_device
from nextscale.sampling import class_names, parse_classes, resolve_sampling

# The sampling defaults and the class parser live in the library, shared with Python and the web app.


def add_sampling_args(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("sampling")
    group.add_argument("--seed", type=int, default=0,
                       help="random seed (default 0). Image i uses seed+i, so an image does not depend on the "
                            "batch size or on how many images are asked for (in Python: seed=SEED, "
                            "per_image_seeds=True)")
    group.add_argument("--cfg", type=float, default=None,
                       help="classifier-free guidance scale, >= 0; grows linearly over the scales up to this value "
                            "(default: the model's recommendation, else 1.5)")
    group.add_argument("--top-k", type=int, default=None,
                       help="keep only the k most likely tokens, 0 = off (default: the model's recommendation, "
                            "else 900)")
    group.add_argument("--top-p", type=float, default=None,
                       help="nucleus sampling: keep the most likely tokens holding this probability mass, in [0, 1], "
                            "0 = off (default: the model's recommendation, else 0.96)")
    group.add_argument("--more-smooth", action="store_true",
                       help="Gumbel-softmax code mixing: smoother images for viewing; not for FID")
    return group


def sampling_settings(args, var) -> dict:
    """cfg/top-k/top-p: the command line, else the model's recommendation, else the published FID ones."""
    settings = resolve_sampling(var, args.cfg, args.top_k, args.top_p)
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    return settings


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="generate images",
        description="Generate class-conditional images with a VAR model and write a PNG grid, one PNG per image "
                    "and/or an .npz for the standard ADM/FID evaluator.")
    add_model_args(p)
    what = p.add_argument_group("what to generate")
    what.add_argument("--class", dest="classes", action="append", metavar="C",
                      help="class id or name (case-insensitive); repeat or comma-separate for several (default: "
                           "all classes). 'null' or the null class id (= number of classes) samples "
                           "unconditionally")
    what.add_argument("--num-per-class", type=int, default=None,
                      help="images per class (default 8; the FID protocol is 50 per class)")
    what.add_argument("--num-images", type=int, default=None,
                      help="instead of classes: this many images with uniformly drawn classes")
    sampling = add_sampling_args(p)
    # `edit` regenerates each request's images in one batch; only `sample` splits a request into batches.
    sampling.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    add_device_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="samples", help="output folder (default samples)")
    out.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    out.add_argument("--no-images", action="store_true",
                     help="do not write one PNG per image (images/, with class_names.json when the model has "
                          "class names)")
    out.add_argument("--npz", nargs="?", const="samples.npz", default=None, metavar="NAME",
                     help="also write an .npz (arr_0: uint8 N x H x W x 3, labels: int64, class_names: the "
                          "model's class names when it has them) into the output folder (default name samples.npz)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=run)


def _planned_outputs(args, out: Path) -> list[Path]:
    paths = []
    if not args.no_grid:
        paths.append(out / "grid.png")
    if args.npz:
        paths.append(out / args.npz)
    if not args.no_images:
        paths.append(out / "images")
    return paths


def image_names(labels: list[int]) -> list[str]:
    """`class{c:03d}_{i:05d}.png`, i counting the images of each class (the convention `nextscale eval` reads)."""
    seen: dict[int, int] = {}
    names = []
    for c in labels:
        i = seen.get(c, 0)
        seen[c] = i + 1
        names.append(f"class{c:03d}_{i:05d}.png")
    return names


def run(args) -> int:
    import nextscale
    from nextscale.images import make_grid, save_images, save_png, to_uint8_hwc

    for name in ("num_per_class", "num_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.num_images is not None and (args.classes or args.num_per_class is not None):
        raise UserError("--num-images draws classes at random: do not combine it with --class or --num-per-class")
    if args.npz and not args.npz.endswith(".npz"):
        args.npz += ".npz"
    device = resolve_device(args.device)
    if args.dtype == "float16" and device.type == "cpu":
        raise UserError("--precision float16 needs a GPU; on CPU use float32 (exact), bfloat16 or int8")
    var = load_model(args).to(device)
    settings = sampling_settings(args, var)
    classes = parse_classes(args.classes, var)

    if args.num_images is not None:
        labels, count = None, args.num_images
    else:
        per_class = args.num_per_class or 8
        labels = [c for c in (classes if classes is not None else range(var.num_classes)) for _ in range(per_class)]
        count = len(labels)
    out = Path(args.out)
    existing = [p for p in _planned_outputs(args, out) if p.exists()]
    if existing and not args.overwrite:
        raise UserError(f"{', '.join(map(str, existing))} already exist(s): choose another --out or pass --overwrite")

    # Image i uses seed + i (per_image_seeds): the same call reproduces any image of this command in Python.
    result = nextscale.sample(var, labels, seed=args.seed, per_image_seeds=True, num_samples=count,
                              batch_size=args.batch_size,
                              more_smooth=args.more_smooth, progress=True, precision=args.dtype, **settings)
    images = result.images.float().cpu()
    labels_list = result.labels.tolist()

    written = []
    if not args.no_grid:
        ncols = min(args.num_per_class or 8, len(images))  # one row per class
        written.append(save_png(make_grid(images, ncols=ncols), out / "grid.png"))
    names = class_names(var)
    if not args.no_images:
        save_images(images, out / "images", image_names(labels_list))
        names_file = out / "images" / "class_names.json"
        if names:  # `nextscale eval` checks them against its classifier's classes
            names_file.write_text(json.dumps(names) + "\n")
        elif names_file.exists():  # --overwrite of another model's samples
            names_file.unlink()
        written.append(out / "images")
    if args.npz:
        out.mkdir(parents=True, exist_ok=True)
        extra = {"class_names": np.array(names)} if names else {}
        np.savez(out / args.npz, arr_0=to_uint8_hwc(images), labels=np.asarray(labels_list, dtype=np.int64), **extra)
        written.append(out / args.npz)
    print(f"{len(images)} images ({images.shape[-1]}x{images.shape[-2]}, cfg {settings['cfg']}, "
          f"top-k {settings['top_k']}, top-p {settings['top_p']}, seed {args.seed}) -> "
          + ", ".join(str(p) for p in written))
    return 0
