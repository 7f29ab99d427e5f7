"""`nextscale sample`: generate images with a class-conditional VAR model."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nextscale.commands.common import (Outputs, UserError, add_device_args, add_model_args, check_number, check_seed,
                                       load_model, parse_class_option, resolve_device)
from nextscale.inference_options import class_names, resolve_sampling

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
    group.add_argument("--guidance", default="linear", metavar="SCHEDULE",
                       help="how the guidance weight follows --cfg over the scales: linear (the paper's ramp, "
                            "cfg*k/(K-1) at scale k of K; the default, exact), constant (cfg at every scale), or "
                            "truncated:N (the ramp on the first N scales, no guidance after: the unconditional half "
                            "of the batch is dropped from scale N on, so those scales cost half; truncated:K is "
                            "linear)")
    return group


def guidance_setting(args, var) -> str:
    """--guidance, checked against the model's number of scales."""
    from nextscale.sampling import parse_guidance
    try:
        return str(parse_guidance(args.guidance, len(var.patch_nums), name="--guidance"))
    except ValueError as e:
        raise UserError(str(e)) from None


def sampling_settings(args, var) -> dict:
    """cfg/top-k/top-p: the command line, else the model's recommendation, else the published FID ones."""
    from nextscale.model_folder import MAX_CFG
    check_number("--cfg", args.cfg, 0, MAX_CFG)
    check_number("--top-k", args.top_k, 0, integer=True)
    check_number("--top-p", args.top_p, 0, 1)
    return resolve_sampling(var, args.cfg, args.top_k, args.top_p)


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
                      help=f"images per class (default 8; the FID protocol is 50 per class); at most {MAX_IMAGES} "
                           f"images in all, written batch by batch")
    what.add_argument("--num-images", type=int, default=None,
                      help=f"instead of classes: this many images (at most {MAX_IMAGES}) with uniformly drawn "
                           f"classes")
    sampling = add_sampling_args(p)
    # `edit` regenerates each request's images in one batch; only `sample` splits a request into batches.
    sampling.add_argument("--batch-size", type=int, default=16, help=f"images per forward pass, at most {MAX_BATCH} (default 16)")
    more = p.add_argument_group("collaborative decoding and rejection sampling")
    more.add_argument("--refiner", default=None, metavar="MODEL",
                      help="collaborative decoding: a second transformer on the same tokenizer and classes (a model "
                           "folder, a transformer checkpoint, or fashion-mnist), e.g. a smaller, faster one, samples "
                           "the scales from --switch-at on; the model samples the scales before")
    more.add_argument("--switch-at", type=int, default=None, metavar="K",
                      help="with --refiner: the first scale the refiner samples, in [1, number of scales - 1]")
    more.add_argument("--reject-with", default=None, metavar="CLASSIFIER",
                      help="rejection sampling: for each class of n images draw ceil(n / --keep) candidates and keep "
                           "the n this classifier rates most likely to be the class. 'fashion-mnist' (the shipped "
                           "classifier), a folder of `nextscale train-classifier`, or the FID Inception weights "
                           "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, with --inception-labels). "
                           "Candidates are listed class by class; candidate j uses seed + j")
    more.add_argument("--keep", type=float, default=None, metavar="FRACTION",
                      help="with --reject-with: the fraction of the candidates kept, in (0, 1] (default 0.5)")
    more.add_argument("--inception-labels", default=None, metavar="FILE",
                      help="with Inception weights for --reject-with: the label map of its TensorFlow graph "
                           "(imagenet_2012_challenge_label_map_proto.pbtxt, in the inception-2015-12-05 archive), or "
                           "a JSON list of the Inception logit of each class id")
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
    out.add_argument("--overwrite", action="store_true",
                     help="replace existing output files; images/ is replaced whole, and only when it holds nothing "
                          "but what sample writes")
    p.set_defaults(run=run)


# At most this many images per command: memory stays bounded (images go to disk batch by batch), but a
# request a thousand times the FID protocol's 50,000 is a typo, not a plan.
MAX_IMAGES = 1_000_000
MAX_BATCH = 4096  # images per forward pass: the activations of one batch are held at once
GRID_MAX_PIXELS = 16_000_000  # grid.png shows the first images up to this size (in one row per class)
IMAGE_NAME = re.compile(r"class\d+_\d+\.png")  # what `sample` writes into images/, besides class_names.json


def _sample_wrote(name: str) -> bool:
    return bool(IMAGE_NAME.fullmatch(name)) or name == "class_names.json"


class ImageNamer:
    """`class{c:03d}_{i:05d}.png`, i counting the images of each class (the convention `nextscale eval` reads),
    batch after batch."""

    def __init__(self):
        self.seen: dict[int, int] = {}

    def __call__(self, labels: list[int]) -> list[str]:
        names = []
        for c in labels:
            i = self.seen.get(c, 0)
            self.seen[c] = i + 1
            names.append(f"class{c:03d}_{i:05d}.png")
        return names


class NpzWriter:
    """An .npz in np.savez's layout (a zip of .npy files, arr_0 first) written batch by batch, so that memory does
    not grow with the number of images. `finish` adds the small arrays (labels, class names)."""

    def __init__(self, path: Path, count: int, height: int, width: int):
        self.file = open(path, "wb")
        self.zip = zipfile.ZipFile(self.file, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.entry = self.zip.open("arr_0.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self.entry, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                          "fortran_order": False, "shape": (count, height, width, 3)})
        self.left = count

    def add(self, images_BHW3: np.ndarray) -> None:
        if len(images_BHW3) > self.left:
            raise ValueError(f"{len(images_BHW3)} more images than the {self.left} announced")
        self.entry.write(np.ascontiguousarray(images_BHW3, dtype=np.uint8).tobytes())
        self.left -= len(images_BHW3)

    def finish(self, **arrays: np.ndarray) -> None:
        if self.left:
            raise ValueError(f"{self.left} announced images were not written")
        self.entry.close()
        for name, array in arrays.items():
            with self.zip.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
        self.zip.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def close(self) -> None:
        """After a failure: release the file (the caller removes it)."""
        for part in (self.entry, self.zip, self.file):  # the zip closes only once its entry is closed
            with contextlib.suppress(Exception):
                part.close()


def _count(args, classes, var) -> tuple[list[int] | None, int]:
    """(the labels, or None for --num-images, and the number of images), refused above MAX_IMAGES before any
    list is built."""
    if args.num_images is not None:
        return None, args.num_images
    per_class = args.num_per_class or 8
    chosen = classes if classes is not None else list(range(var.num_classes))
    count = len(chosen) * per_class
    if count > MAX_IMAGES:
        raise UserError(f"--num-per-class {per_class} for {len(chosen)} classes is {count} images, more than the "
                        f"{MAX_IMAGES} one command makes: ask for fewer, or split the classes over several runs "
                        f"(--class)")
    return [c for c in chosen for _ in range(per_class)], count


def option_pairs(args) -> None:
    """Refuse, before the model is loaded, the options that need another one."""
    if args.switch_at is not None and args.refiner is None:
        raise UserError("--switch-at is the first scale --refiner samples: give --refiner MODEL too, or leave "
                        "--switch-at out")
    if args.refiner is not None and args.switch_at is None:
        raise UserError("--refiner needs --switch-at K: the first scale it samples (the model samples the scales "
                        "before)")
    for option, value in (("--keep", args.keep), ("--inception-labels", args.inception_labels)):
        if value is not None and args.reject_with is None:
            raise UserError(f"{option} is for rejection sampling: give --reject-with CLASSIFIER too, or leave "
                            f"{option} out")
    if args.reject_with is not None and args.num_images is not None:
        raise UserError("--reject-with keeps the candidates most likely to be their class: give the classes "
                        "(--class, --num-per-class), not --num-images")
    check_number("--keep", args.keep, 0, 1, low_open=True)


def load_refiner(args, var, device):
    """--refiner as a transformer on the model's tokenizer (checked), or None."""
    if args.refiner is None:
        return None
    import nextscale
    from nextscale.registry import shipped
    from nextscale.sampling import check_refiner
    check_number("--switch-at", args.switch_at, 1, len(var.patch_nums) - 1, integer=True)
    name = args.refiner
    if name in shipped() and not Path(name).exists():
        refiner = nextscale.load_pretrained(name)
    elif Path(name).is_dir():
        refiner = nextscale.load_var(name)  # its own tokenizer/, compared with the model's below
    else:
        refiner = nextscale.load_var(name, vae=var.tokenizer)  # a bare checkpoint: no tokenizer of its own
    refiner = refiner.to(device)
    try:
        check_refiner(var, refiner, args.switch_at)
    except ValueError as e:
        raise UserError(f"--refiner {name}: {e}") from None
    refiner.attach_tokenizer(var.tokenizer)  # the same weights: one object, so each batch's check is instant
    return refiner


def load_rejection(args, var, device):
    """(the --reject-with classifier as a ClassScorer, --keep) or (None, None)."""
    if args.reject_with is None:
        return None, None
    from nextscale.rejection import class_scorer
    try:
        scorer = class_scorer(args.reject_with, var, device, class_map=args.inception_labels)
    except (ValueError, OSError) as e:
        raise UserError(f"--reject-with {args.reject_with}: {e}") from None
    return scorer, 0.5 if args.keep is None else args.keep


def run(args) -> int:
    from nextscale.progress import progress_bar

    import nextscale
    from nextscale.images import make_grid, save_png, to_uint8_hwc

    _check_options(args)
    device = resolve_device(args.device)
    if args.precision == "float16" and device.type == "cpu":
        raise UserError("--precision float16 needs a GPU; on CPU use float32 (exact), bfloat16 or int8")
    var = load_model(args).to(device)
    settings = sampling_settings(args, var)
    guidance = guidance_setting(args, var)
    classes = parse_class_option(args.classes, var)
    labels, count = _count(args, classes, var)
    refiner = load_refiner(args, var, device)
    scorer, keep = load_rejection(args, var, device)
    wanted, candidates = _rejection_candidates(labels, keep, var, count) if scorer is not None else (None, count)
    check_seed("--seed", args.seed, candidates)

    height = width = var.tokenizer.resolution
    out = Path(args.out)
    outputs, grid_count, ncols = _checked_outputs(args, out, count, height, width)

    names = class_names(var)
    batch = args.batch_size
    common = dict(per_image_seeds=True, more_smooth=args.more_smooth, precision=args.precision, guidance=guidance,
                  refiner=refiner, switch_at=args.switch_at if refiner is not None else None, **settings)
    if wanted is None:
        batches = -(-count // batch)
    else:
        from nextscale.rejection import candidates_for
        batches = sum(-(-candidates_for(n, keep) // batch) for n in wanted.values())

    def results(bar):
        """`nextscale.sample`'s result for each piece of the request, in order."""
        def on_scale(si, tokens):
            bar.update(1)
        if wanted is None:
            for start in range(0, count, batch):
                n = min(batch, count - start)
                # Image i uses seed + i (per_image_seeds): a batch starting at image `start` is seeded from
                # seed + start, so each image is the same as in one call for all images, in Python too.
                yield nextscale.sample(var, labels[start:start + n] if labels is not None else None,
                                       seed=args.seed + start, num_samples=n, batch_size=n, on_scale=on_scale,
                                       **common)
            return
        # Rejection: one call per class, its candidates seeded from where the previous class's ended, so
        # candidate j of the command uses seed + j, as one Python call for all the labels does.
        offset = 0
        for c, n in wanted.items():
            yield nextscale.sample(var, [c] * n, seed=args.seed + offset, batch_size=batch, reject_with=scorer,
                                   keep=keep, on_scale=on_scale, **common)
            offset += candidates_for(n, keep)

    with outputs.writing(), progress_bar(total=batches * len(var.patch_nums), desc="sampling", unit="scale") as bar:
        images_dir = outputs.temp_folder(out / "images") if not args.no_images else None
        npz = None
        if args.npz:
            npz_tmp = outputs.temp_file(out / args.npz)
            npz = NpzWriter(npz_tmp, count, height, width)
        try:
            namer, shown, labels_list = ImageNamer(), [], []
            for result in results(bar):
                images = result.images.float().cpu()
                batch_labels = result.labels.tolist()
                labels_list += batch_labels
                pixels = to_uint8_hwc(images)
                if images_dir is not None:
                    for array, name in zip(pixels, namer(batch_labels)):
                        Image.fromarray(array).save(images_dir / name, format="PNG")
                if npz is not None:
                    npz.add(pixels)
                if not args.no_grid and len(shown) < grid_count:
                    shown += images[:grid_count - len(shown)]
            written = []
            if not args.no_grid:
                grid = make_grid(torch.stack(shown), ncols=ncols)
                save_png(grid, out / "grid.png")
                written.append(f"{out / 'grid.png'}" + (f" (the first {grid_count})" if grid_count < count else ""))
            if images_dir is not None:
                if names:  # `nextscale eval` checks them against its classifier's classes
                    (images_dir / "class_names.json").write_text(json.dumps(names) + "\n")
                written.append(str(outputs.replace_folder(images_dir, out / "images")))
            if npz is not None:
                extra = {"class_names": np.array(names)} if names else {}
                npz.finish(labels=np.asarray(labels_list, dtype=np.int64), **extra)
                written.append(str(outputs.replace_file(npz_tmp, out / args.npz)))
        except BaseException:
            if npz is not None:
                npz.close()
            raise
    extra = "" if guidance == "linear" else f", guidance {guidance}"
    if refiner is not None:
        extra += f", refiner {args.refiner} from scale {args.switch_at}"
    if scorer is not None:
        extra += f", kept {count} of {candidates} candidates by {args.reject_with}"
    print(f"{count} images ({width}x{height}, cfg {settings['cfg']}, "
          f"top-k {settings['top_k']}, top-p {settings['top_p']}, seed {args.seed}{extra}) -> " + ", ".join(written))
    return 0


def _check_options(args) -> None:
    """The options' values and combinations, before the model is loaded."""
    check_number("--num-per-class", args.num_per_class, 1, MAX_IMAGES, integer=True)
    check_number("--num-images", args.num_images, 1, MAX_IMAGES, integer=True)
    check_number("--batch-size", args.batch_size, 1, MAX_BATCH, integer=True)
    if args.num_images is not None and (args.classes or args.num_per_class is not None):
        raise UserError("--num-images draws classes at random: do not combine it with --class or --num-per-class")
    if args.no_grid and args.no_images and not args.npz:
        raise UserError("--no-grid and --no-images without --npz leave nothing to write: drop one of them or add "
                        "--npz")
    if args.npz and not args.npz.endswith(".npz"):
        args.npz += ".npz"
    option_pairs(args)


def _rejection_candidates(labels, keep: float, var, count: int) -> tuple[dict, int]:
    """(images wanted per class, the number of candidates) of --reject-with, checked against the limits."""
    from nextscale.rejection import candidate_plan
    try:
        wanted, candidate_labels = candidate_plan(labels, keep, var.num_classes)
    except ValueError as e:
        raise UserError(f"--reject-with: {e}") from None
    candidates = len(candidate_labels)
    if candidates > MAX_IMAGES:
        raise UserError(f"--keep {keep:g} draws {candidates} candidates, more than the {MAX_IMAGES} one command "
                        f"makes: keep a larger fraction, or ask for fewer images")
    return wanted, candidates


def _checked_outputs(args, out: Path, count: int, height: int, width: int) -> tuple[Outputs, int, int]:
    """(the outputs, checked and their folder probed before the first image is computed; the number of images
    the grid shows; its columns)."""
    image_bytes = height * width * 3
    ncols = min(args.num_per_class or 8, count)  # one row per class
    grid_count = count
    if count * (height + 2) * (width + 2) > GRID_MAX_PIXELS:
        grid_count = max(ncols, GRID_MAX_PIXELS // ((height + 2) * (width + 2)) // ncols * ncols)
    outputs = Outputs(overwrite=args.overwrite)
    where = f"--out {args.out}"
    if not args.no_grid:
        outputs.file(out / "grid.png", grid_count * (height + 2) * (width + 2) * 3, where)
    if args.npz:
        outputs.file(out / args.npz, count * (image_bytes + 8) + 4096, where)
    if not args.no_images:
        outputs.folder(out / "images", count * (image_bytes + 200), where, own=_sample_wrote)
    outputs.check()
    return outputs, grid_count, ncols
