"""`nextscale edit`: zero-shot in-painting, out-painting and class-conditional editing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nextscale.commands.common import (Outputs, UserError, add_device_args, add_max_pixels_arg, add_model_args,
                                       autocast_context, check_number, check_seed, float_list, load_model,
                                       parse_class_option, resolve_device)
from nextscale.commands.sample import add_sampling_args, guidance_setting, sampling_settings

# Variations per input image: each is a column of the edited grid, so a few hundred make an unusable PNG; they
# are regenerated EDIT_BATCH at a time (variation j with seed + j, whatever the batch).
MAX_VARIATIONS = 100
EDIT_BATCH = 16


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
                      help=f"variations per input image (at most {MAX_VARIATIONS}), variation j with seed+j "
                           f"(default 1); in Python: nextscale.edit(var, image.expand(NUM, -1, -1, -1), keep, "
                           f"seed=SEED, per_image_seeds=True)")
    add_max_pixels_arg(what)
    add_sampling_args(p)
    add_device_args(p)
    out = p.add_argument_group("output")
    out.add_argument("--out", default="edits", help="output folder (default edits)")
    out.add_argument("--save-tokens", action="store_true",
                     help="also write <name>_tokens.npz with the token maps of every scale (scale_0 ... scale_K-1)")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=run)


def _keep_mask(args, resolution: int, grid: int) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """(the keep-mask on the token grid, the size every input must have: the mask image's, or None for a box)."""
    from nextscale.editing import inpaint_keep_mask, keep_mask_from_image, outpaint_keep_mask
    from nextscale.images import pil_to_tensor, read_image, to_model_input
    if args.box is not None:
        make = inpaint_keep_mask if args.mode == "inpaint" else outpaint_keep_mask
        try:
            keep = make(args.box, grid)
        except ValueError as e:
            raise UserError(f"--box: {e}") from None
        if keep.all():
            raise UserError(f"--box {','.join(f'{v:g}' for v in args.box)} with --mode {args.mode} keeps the whole "
                            f"image: nothing is left to regenerate; give a smaller box (outpaint regenerates "
                            f"outside it)")
        return keep, None
    mask = read_image(args.mask, args.max_pixels)
    mask_1HW = to_model_input([pil_to_tensor(mask, 1)], resolution, 1)[0, 0]
    return keep_mask_from_image(mask_1HW, grid), mask.size


def run(args) -> int:
    import nextscale
    from nextscale.images import make_grid, pil_to_tensor, read_image, save_png, to_model_input

    check_number("--num", args.num, 1, MAX_VARIATIONS, integer=True)
    device = resolve_device(args.device)
    autocast_context(device, args.precision)  # refuses int8 (and float16 on a CPU) before the model is loaded
    var = load_model(args).to(device)
    settings = sampling_settings(args, var)
    guidance = guidance_setting(args, var)
    classes = parse_class_option(args.classes, var)
    if classes is not None and len(classes) != 1:
        raise UserError(f"give one --class for the edit, got {len(classes)}")
    label = classes[0] if classes else var.num_classes
    check_seed("--seed", args.seed, args.num)
    vae = var.tokenizer
    grid = var.patch_nums[-1]
    channels = vae.config.image_channels
    keep, mask_size = _keep_mask(args, vae.resolution, grid)

    # Every input read (and checked) before any work; only its model-size copy is kept.
    inputs = []
    for path in args.image:
        pil = read_image(path, args.max_pixels)
        if mask_size is not None and pil.size != mask_size:
            raise UserError(f"the mask is {mask_size[0]}x{mask_size[1]} but the image {path} is {pil.size[0]}x"
                            f"{pil.size[1]}: they must have the same size")
        inputs.append((path, to_model_input([pil_to_tensor(pil, channels)], vae.resolution, channels)))
        del pil
    if keep.all():  # after the sizes: a mask of the wrong size is the first thing to fix
        raise UserError(f"the mask {args.mask} has no white region (white = regenerate): nothing to edit")

    # Every output name of every input checked before the first edit: a name two inputs share, an existing file.
    out = Path(args.out)
    outputs = Outputs(overwrite=args.overwrite)
    where = f"--out {args.out}"
    cell = (vae.resolution + 2) ** 2 * 3
    token_bytes = sum(pn * pn for pn in var.patch_nums) * 8 * args.num + grid * grid * 4 + 4096
    targets = []
    for path, _ in inputs:
        stem = Path(path).stem
        source = f"--image {path}"
        planned = [outputs.file(out / f"{stem}_edited.png", args.num * cell, where, source),
                   outputs.file(out / f"{stem}_compare.png", (args.num + 2) * cell, where, source)]
        if args.save_tokens:
            planned.append(outputs.file(out / f"{stem}_tokens.npz", token_bytes, where, source))
        targets.append(planned)
    outputs.check()

    with outputs.writing():
        for (path, image), planned in zip(inputs, targets):
            edited, tokens = [], []
            for j in range(0, args.num, EDIT_BATCH):  # variation j uses seed + j
                n = min(EDIT_BATCH, args.num - j)
                with autocast_context(device, args.precision):
                    result = nextscale.edit(var, image.expand(n, -1, -1, -1), keep, labels=label, seed=args.seed + j,
                                            per_image_seeds=True, more_smooth=args.more_smooth, guidance=guidance,
                                            **settings)
                edited.append(result.images.float().cpu())
                tokens.append([t.cpu() for t in result.tokens])
            edited = torch.cat(edited)
            # input | input with the regenerated region darkened | the edits
            shade = torch.nn.functional.interpolate(keep[None, None], size=image.shape[-2:], mode="nearest")[0]
            compare = torch.cat([image, image * (0.35 + 0.65 * shade), edited])
            for target, images in zip(planned, (edited, compare)):
                save_png(make_grid(images, ncols=len(images)), target)
            if args.save_tokens:
                arrays = {f"scale_{k}": torch.cat([t[k] for t in tokens]).numpy() for k in range(len(tokens[0]))}
                outputs.write_file(planned[2], lambda f: np.savez(f, **arrays, keep_mask=keep.cpu().numpy()))
            print(f"{path}: {args.mode if args.box is not None else 'mask'} edit, class {label} -> "
                  f"{', '.join(map(str, planned))}")
    return 0
