"""Pieces shared by the subcommands: model and device options, error reporting."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


class UserError(Exception):
    """A problem with the user's input: reported as one line and a non-zero exit, no traceback."""


def error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user (bad arguments, files, checkpoints; OSError: a path that is a
    file where a folder goes, no permission, a full disk)."""
    from nextscale.checkpoints import CheckpointError
    from nextscale.images import ImageReadError
    return (CheckpointError, ImageReadError, ValueError, OSError)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help="a nextscale model folder (config.json + model.safetensors, tokenizer/ inside), "
                            "a Hugging Face Hub repo id, or 'fashion-mnist' for the model shipped with the package "
                            "(the default when --transformer is not given)")
    group.add_argument("--transformer", default=None,
                       help="a transformer checkpoint: a published var_d*.pth, a .safetensors, a folder, or a preset "
                            "name (var-d16 ... var-d36, fetched from the Hub); needs --tokenizer unless it is a "
                            "folder with its tokenizer")
    group.add_argument("--tokenizer", default=None,
                       help="a tokenizer checkpoint: the published vae_ch160v4096z32.pth, a folder, or vae-f16c32")
    group.add_argument("--patch-nums", default=None, type=int_list,
                       help="scale schedule, e.g. 1,2,3,4,5,6,8,10,13,16; only needed for checkpoints whose token "
                            "count matches no published schedule")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device")
    group.add_argument("--device", default=None,
                       help="torch device: cuda when available, else cpu (default: automatic)")
    group.add_argument("--precision", "--dtype", dest="dtype", default="float32",
                       choices=["float32", "bfloat16", "float16", "int8"],
                       help="float32: exact (the default). Faster and not exact (`make bench` measures by how much): "
                            "bfloat16 autocast (a GPU, or a CPU with bf16 matrix units such as AMX: about 2.5x on var-d16 here), "
                            "float16 autocast (GPU), int8 (CPU, sample only: dynamic int8 linear layers)")


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"unknown device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def autocast_context(device: torch.device, dtype: str):
    """float32: no autocast. bfloat16/float16: autocast (float16 on a GPU only)."""
    import contextlib
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype == "int8":
        raise UserError("--precision int8 is for `nextscale sample`; here use float32 or bfloat16")
    if device.type == "cpu" and dtype == "float16":
        raise UserError("--precision float16 needs a GPU; on CPU use float32 (or bfloat16)")
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def load_model(args) -> "torch.nn.Module":
    """The transformer (with its tokenizer attached) that the model options name."""
    import nextscale
    from nextscale.pretrained import PRETRAINED
    patch_nums = getattr(args, "patch_nums", None)
    if args.transformer:
        vae = nextscale.load_vae(args.tokenizer, patch_nums=patch_nums) if args.tokenizer else None
        var = nextscale.load_var(args.transformer, vae=vae, patch_nums=patch_nums)
    else:
        name = args.model or "fashion-mnist"
        if name in PRETRAINED and not Path(name).exists():
            var = nextscale.load_pretrained(name)
        else:
            var = nextscale.load_var(name, patch_nums=patch_nums)
    if var.tokenizer is None:
        raise UserError("the transformer needs a tokenizer: pass --tokenizer PATH")
    return var
