"""`nextscale edit`: zero-shot in-painting, out-painting and class-conditional editing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nextscale.commands.common import (UserError, add_device_args, add_model_args, autocast_context, float_list,
                                       load_model, resolve_device)
from nextscale.commands.sample import add_sampling_args, sampling_settings
from nextscale.sampling import parse_classes


def add_parser(sub) -> None:
    p = sub.add_parser(
        "edit", help="in-paint, out-paint or class-edit an image",
        description="Regenerate part of an image, conditioned on the rest. In-painting regenerates a box (or the "
                    "white part of a mask image); out-painting keeps the box and regenerates around it; with "
                    "--class the regenerated part follows that class (class-conditional editing). The image is "
                    "resized and center-cropped to the model's resolution.")
    add_model_args(p)
    what = p.add_argument_group("what to edit")
    what.add_argument("--image", required=True, action="append",
                      help="input image (any size; RGB, RGBA or grayscale); repeat for several")
    region = what.add_mutually_exclusive_group(required=True)
    region.add_argument("--box", type=float_list, metavar="Y0,X0,Y1,X1",
                        help="region as fractions of the height and width, each in [0, 1]")
    region.add_argument("--mask", help="mask image of the same size as the input: white = regenerate, black = keep")
    what.add_argument("--mode", choices=["inpaint", "outpaint"], default="inpaint",
                      help="with --box: inpaint regenerates the box, outpaint regenerates everything outside it "
                           "(default inpaint)")
    what.add_argument("--class", dest="classes", action="append", metavar="C",
                      help="class id or name (case-insensitive) for the regenerated part (default: the null class, "
                           "i.e. unconditional)")
    what.add_argument("--num", type=int, default=1,
                      help="variations per input image, variation j with seed+j (default 1); in Python: "
                           "nextscale.edit(var, image.expand(NUM, -1, -1, -1), keep, seed=SEED, per_image_seeds=True)")
    add_sampling_args(p)
    add_device_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="edits", help="output folder (default edits)")
    out.add_argument("--save-tokens", action="store_true",
                     help="also write <name>_tokens.npz with the token maps of every scale (scale_0 ... scale_K-1)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=run)


def _keep_mask(args, image_size: tuple[int, int], resolution: int, grid: int) -> torch.Tensor:
    from nextscale.editing import inpaint_keep_mask, keep_mask_from_image, outpaint_keep_mask
    from nextscale.images import pil_to_tensor, read_image, to_model_input
    if args.box is not None:
        make = inpaint_keep_mask if args.mode == "inpaint" else outpaint_keep_mask
        return make(args.box, grid)
    mask = read_image(args.mask)
    if mask.size != image_size:
        raise UserError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {image_size[0]}x{image_size[1]}: "
                        f"they must have the same size")
    mask_1HW = to_model_input([pil_to_tensor(mask, 1)], resolution, 1)[0, 0]
    keep = keep_mask_from_image(mask_1HW, grid)
    if keep.all():
        raise UserError(f"the mask {args.mask} has no white region (white = regenerate): nothing to edit")
    return keep


def run(args) -> int:
    import nextscale
    from nextscale.images import make_grid, pil_to_tensor, read_image, save_png, to_model_input

    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    device = resolve_device(args.device)
    var = load_model(args).to(device)
    settings = sampling_settings(args, var)
    classes = parse_classes(args.classes, var)
    if classes is not None and len(classes) != 1:
        raise UserError(f"give one --class for the edit, got {len(classes)}")
    label = classes[0] if classes else var.num_classes
    vae = var.tokenizer
    grid = var.patch_nums[-1]

    pil_images = [read_image(path) for path in args.image]  # fail early on any unreadable input
    out = Path(args.out)
    for path, pil in zip(args.image, pil_images):
        keep = _keep_mask(args, pil.size, vae.resolution, grid)
        stem = Path(path).stem
        targets = [out / f"{stem}_edited.png", out / f"{stem}_compare.png"]
        existing = [t for t in targets if t.exists()]
        if existing and not args.overwrite:
            raise UserError(f"{existing[0]} already exists: choose another --out or pass --overwrite")
        image = to_model_input([pil_to_tensor(pil, vae.config.image_channels)], vae.resolution,
                               vae.config.image_channels)
        images = image.expand(args.num, -1, -1, -1)
        with autocast_context(device, args.dtype):  # variation j uses seed + j
            result = nextscale.edit(var, images, keep, labels=label, seed=args.seed, per_image_seeds=True,
                                    more_smooth=args.more_smooth, **settings)
        edited = result.images.float().cpu()
        # input | input with the regenerated region darkened | the edits
        shade = torch.nn.functional.interpolate(keep[None, None], size=image.shape[-2:], mode="nearest")[0]
        compare = torch.cat([image, image * (0.35 + 0.65 * shade), edited])
        save_png(make_grid(edited, ncols=len(edited)), targets[0])
        save_png(make_grid(compare, ncols=len(compare)), targets[1])
        written = [str(t) for t in targets]
        if args.save_tokens:
            tokens_path = out / f"{stem}_tokens.npz"
            np.savez(tokens_path, **{f"scale_{k}": t.cpu().numpy() for k, t in enumerate(result.tokens)},
                     keep_mask=keep.cpu().numpy())
            written.append(str(tokens_path))
        print(f"{path}: {args.mode if args.box is not None else 'mask'} edit, class {label} -> {', '.join(written)}")
    return 0
