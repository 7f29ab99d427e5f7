"""`nextscale tokenize`: encode a dataset once into a token cache that training reads instead of images."""

from __future__ import annotations

import argparse
from pathlib import Path

from nextscale.commands.common import Outputs, UserError, add_threads_arg, check_number, resolve_device
from nextscale.data.datasets import IMAGE_FOLDER_CONVENTION

EPILOG = """\
examples:
  nextscale tokenize configs/var_fashion_mnist.yaml                 # -> its token_cache: runs/cache_fmnist_train
  nextscale tokenize configs/var_own_images.yaml                    # -> runs/cache_own
  nextscale tokenize tokenizer=vae_ch160v4096z32.pth data.path=/data/train data.resolution=256 \\
                     --flip --out cache/imagenet

The tokenizer and the data are read from a training config (keys `tokenizer`, `token_cache` and
`data.*`, set in the file or as key=value); `tokenizer` may be a train-tokenizer run folder (its
model/ is used). The cache is written to --out, by default the config's token_cache. Images are
resized (shorter side) and center-cropped; with --flip the horizontally flipped images are stored
too, and training with data.hflip=true picks one of the two at random per image and epoch. Training
refuses a cache made by another tokenizer. With data.eval_fraction the held-out images are left out.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "tokenize", help="encode a dataset into a token cache for fast training",
        description="Encode every image of a dataset into its multi-scale token maps, once, into a memory-mapped "
                    "cache folder (tokens.npy, labels.npy, header.json with the tokenizer's identity).",
        epilog=EPILOG + "\n" + IMAGE_FOLDER_CONVENTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="a training config naming the tokenizer and the data")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. tokenizer=PATH")
    p.add_argument("--out", default=None, help="the cache folder to write (default: the config's token_cache)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also store the horizontally flipped images (default: the config's data.hflip)")
    p.add_argument("--split", default="train", choices=["train", "test"],
                   help="which split to encode (test: Fashion-MNIST's test split, data.eval_path or the data.eval_fraction "
                        "held out of an image folder; default train)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder pass (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache folder (never a folder holding other files)")
    p.add_argument("--device", default=None, help="torch device for the encoder (default: cuda when available)")
    add_threads_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import torch

    from nextscale.commands.train import split_config_and_overrides
    from nextscale.data.datasets import build_dataset
    from nextscale.training.token_cache import build_token_cache, token_dtype
    from nextscale.config_schema import config_to_dict
    from nextscale.training.var_config import config_from
    from nextscale.training.var_model import load_tokenizer
    check_number("--batch-size", args.batch_size, 1, MAX_BATCH, integer=True)
    config, overrides = split_config_and_overrides(args)
    train_config = config_from(config, overrides) if config else config_from({}, overrides)
    out_path = args.out or train_config.token_cache
    if not out_path:
        raise UserError("no cache folder given: pass --out FOLDER or set token_cache=FOLDER (in the config or as "
                        "key=value)")
    device = resolve_device(args.device)
    vae = load_tokenizer(train_config.tokenizer, train_config.model.patch_nums)
    data_config = train_config.data
    if data_config.resolution != vae.resolution or data_config.channels != vae.config.image_channels:
        raise UserError(f"the data gives {data_config.channels}-channel {data_config.resolution}px images but the "
                        f"tokenizer takes {vae.config.image_channels}-channel {vae.resolution}px ones: set "
                        f"data.resolution={vae.resolution} data.channels={vae.config.image_channels}")
    dataset = build_dataset(data_config, train=False, split=args.split)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                                         num_workers=data_config.num_workers)
    flip = data_config.hflip if args.flip is None else args.flip
    folder = Path(data_config.path).resolve() if data_config.path else "default"
    source = f"{data_config.resolved_kind()}:{folder}:{args.split}"
    data = {"split": args.split, **config_to_dict(data_config)}
    if Path(out_path).exists() and not args.overwrite:
        reason = _why_not_up_to_date(Path(out_path), vae, source, flip, len(dataset), data)
        if reason is None:
            print(f"{out_path} is up to date (the same tokenizer, images and settings): nothing to do")
            return 0
        raise UserError(f"{out_path} already exists and {reason}: pass --overwrite to replace it, or another --out")
    # Before encoding: the cache's place can be written, has room, and replacing it (--overwrite) deletes only a
    # token cache, never a folder with other files (an --out mistyped as runs/, say).
    outputs = Outputs(overwrite=True)
    L = sum(pn * pn for pn in vae.patch_nums)
    size = len(dataset) * (L * (2 if flip else 1) * token_dtype(vae.vocab_size).itemsize + 8) + 65536
    outputs.folder(out_path, size, f"--out {out_path}", own=lambda name: name in CACHE_FILES)
    outputs.check()
    with torch.inference_mode():
        out = build_token_cache(vae, loader, len(dataset), out_path, flip=flip, source=source,
                                overwrite=args.overwrite, device=device, classes=list(dataset.classes), data=data)
    skipped = getattr(dataset, "num_skipped", 0)
    print(f"wrote {out}: {len(dataset)} images{' (+ flipped)' if flip else ''}"
          f"{f', {skipped} unreadable image(s) skipped' if skipped else ''}")
    return 0


MAX_BATCH = 100_000
CACHE_FILES = ("tokens.npy", "tokens_flip.npy", "labels.npy", "header.json")  # what build_token_cache writes
IGNORED_DATA_KEYS = ("num_workers", "verify")  # settings that do not change the tokens


def _why_not_up_to_date(path: Path, vae, source: str, flip: bool, num_images: int, data: dict) -> str | None:
    """None when the cache at `path` holds what this command would write, else what differs (for rerunning the
    README's commands: an existing, matching cache is kept)."""
    from nextscale.training.token_cache import TokenCache, TokenCacheError
    try:
        cache = TokenCache.open(path)
        cache.check_tokenizer(vae)
    except TokenCacheError as e:
        return "was made by another tokenizer" if "another tokenizer" in str(e) else f"is not a usable cache ({e})"
    header = cache.header
    recorded = {k: v for k, v in (header.get("data") or {}).items() if k not in IGNORED_DATA_KEYS}
    wanted = {k: v for k, v in data.items() if k not in IGNORED_DATA_KEYS}
    if header.get("source") != source or recorded != wanted:
        return "was made from other images or settings"
    if bool(header.get("flip")) != bool(flip):
        return f"was made {'with' if header.get('flip') else 'without'} flipped copies"
    if header.get("num_images") != num_images:
        return f"holds {header.get('num_images')} images, the data now {num_images}"
    return None
