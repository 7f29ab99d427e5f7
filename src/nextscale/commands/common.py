"""Pieces shared by the subcommands: model and device options, error reporting, checks of numbers, and the
one check of where a command writes (`Outputs`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch


class UserError(Exception):
    """A problem with the user's input: reported as one line and a non-zero exit, no traceback."""


def error_types() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is meant for the user (bad arguments, files, checkpoints; OSError: a path that is a
    file where a folder goes, no permission, a full disk)."""
    from nextscale.model_folder import CheckpointError
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


THREADS_HELP = ("CPU threads for torch (default 0: the cores other programs leave free, measured at the start and "
                "printed; OMP_NUM_THREADS also chooses). On a busy machine more threads than free cores run slower, "
                "not faster")


def add_threads_arg(group) -> None:
    """--threads, read by `cli.main`, which applies it (nextscale.threads) before the command runs."""
    group.add_argument("--threads", type=int, default=0, help=THREADS_HELP)


def add_device_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("device")
    add_threads_arg(group)
    group.add_argument("--device", default=None,
                       help="torch device: cuda when available, else cpu (default: automatic)")
    group.add_argument("--precision", "--dtype", dest="precision", default="float32",
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


def autocast_context(device: torch.device, precision: str):
    """float32: no autocast. bfloat16/float16: autocast (float16 on a GPU only)."""
    import contextlib
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "int8":
        raise UserError("--precision int8 is for `nextscale sample`; here use float32 or bfloat16")
    if device.type == "cpu" and precision == "float16":
        raise UserError("--precision float16 needs a GPU; on CPU use float32 (or bfloat16)")
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def check_number(option: str, value, low=None, high=None, *, integer: bool = False, low_open: bool = False,
                 high_open: bool = False):
    """Refuse (UserError naming `option` and the accepted range) a value that is NaN, infinite or out of
    [low, high] (an end excluded with `low_open` / `high_open`); None passes (the option's default)."""
    if value is None:
        return value
    finite = isinstance(value, int) or math.isfinite(value)
    ok = finite and (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        def text(x):
            return str(x) if isinstance(x, int) else f"{x:g}"
        kind = "a whole number" if integer else "a number"
        if low is not None and high is not None:
            span = f"{kind} in {'(' if low_open else '['}{text(low)}, {text(high)}{')' if high_open else ']'}"
        elif low is not None:
            span = f"{kind} {'>' if low_open else '>='} {text(low)}"
        else:
            span = f"{kind} {'<' if high_open else '<='} {text(high)}"
        raise UserError(f"{option} must be {span}, got {value}")
    return value


def check_seed(option: str, seed: int, count: int = 1) -> int:
    """`seed` when it and seed + count - 1 (image i uses seed + i) are seeds torch and the web app take."""
    from nextscale.inference_options import check_seed as check
    try:
        return check(seed, count, option)
    except ValueError as e:
        raise UserError(str(e)) from None


def max_pixels_arg(text: str) -> int:
    """--max-pixels: megapixels (a number, e.g. 16 or 0.5) -> pixels."""
    from PIL import Image
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of megapixels, got {text!r}") from None
    # Pillow refuses more than twice its own warning size before we could look: that is the ceiling here.
    ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485) / 1e6
    if not (0 < value <= ceiling):
        raise argparse.ArgumentTypeError(f"must be a number of megapixels in (0, {ceiling:.0f}], got {text}")
    return int(value * 1e6)


def add_max_pixels_arg(group) -> None:
    from nextscale.images import DEFAULT_MAX_PIXELS
    group.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS, metavar="MEGAPIXELS",
                       help=f"refuse input images larger than this, from the file's header before decoding "
                            f"(default {DEFAULT_MAX_PIXELS / 1e6:g}: a small file can decode to gigabytes)")


def parse_class_option(values, var, option: str = "--class") -> list[int] | None:
    """--class values -> class ids; an unknown class is a UserError naming the option."""
    from nextscale.inference_options import parse_classes
    try:
        return parse_classes(values, var)
    except ValueError as e:
        raise UserError(f"{option}: {e}") from None


# ---------------------------------------------------------------------------------------- outputs
def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


class Outputs:
    """Everything a command will write, checked at once before any work (`check`), then written so that a
    failure leaves nothing half-written: files through a temp file renamed into place (`write_file`), output
    folders built beside their place and swapped in whole (`temp_folder` + `replace_folder`).

    `check` refuses, each with one line naming the option: two outputs with the same path (`source` says who
    asked for each); an existing file or folder without `overwrite` (reports, `overwrite=True`, are replaced);
    a folder with files the command did not write (`own`); a file where a folder goes, or a folder where a
    file goes; a folder that cannot be created or written (a probe file is written and deleted there); less
    free disk space than the expected size. Folders it creates stay only if the command writes into them.
    """

    @dataclasses.dataclass
    class Planned:
        path: Path
        option: str  # the option and value that name it, e.g. "--out samples"
        size: int  # bytes, roughly
        source: str | None = None  # the input it is written for, e.g. "--image a/x.png"
        folder: bool = False  # a folder replaced as a whole
        own: Callable[[str], bool] | None = None  # for a folder: the entries the command writes there

    def __init__(self, overwrite: bool = False, overwrite_hint: str = " or pass --overwrite"):
        self.overwrite = overwrite
        self.overwrite_hint = overwrite_hint
        self._planned: dict[str, Outputs.Planned] = {}  # by real path: two names for one file are one file
        self._created: list[Path] = []
        self._temps: list[Path] = []

    # ------------------------------------------------------------------ planning
    def _add(self, planned: "Outputs.Planned") -> Path:
        key = os.path.realpath(planned.path)
        other = self._planned.get(key)
        if other is not None:
            who = f"{other.source} and {planned.source}" if other.source and planned.source else "two outputs"
            raise UserError(f"{who} would both write {planned.path}: give the inputs different names, or write "
                            f"them in separate runs")
        self._planned[key] = planned
        return planned.path

    def file(self, path, size: int = 0, option: str = "--out", source: str | None = None) -> Path:
        """Plan the file `path` (about `size` bytes), named by `option` ('--out X'), written for `source`."""
        return self._add(self.Planned(Path(path), option, int(size), source))

    def folder(self, path, size: int = 0, option: str = "--out", own: Callable[[str], bool] | None = None) -> Path:
        """Plan the folder `path`, replaced as a whole; with --overwrite an existing one may only hold entries
        for which `own(name)` is true (what the command writes there)."""
        return self._add(self.Planned(Path(path), option, int(size), folder=True, own=own))

    # ------------------------------------------------------------------ checking
    @staticmethod
    def _name(option: str) -> str:
        return option.split()[0]

    def _refuse_existing(self, p: "Outputs.Planned") -> None:
        path, name = p.path, self._name(p.option)
        if not (path.exists() or path.is_symlink()):
            return
        if not p.folder:
            if path.is_dir():
                raise UserError(f"{path} is a folder, where {p.option} writes a file: choose another {name}")
            if not self.overwrite:
                raise UserError(f"{path} already exists: choose another {name}{self.overwrite_hint}")
            return
        if not path.is_dir():
            raise UserError(f"{path} is a file, where {p.option} writes a folder: choose another {name}")
        entries = sorted(e.name for e in path.iterdir())
        foreign = [e for e in entries if p.own is not None and not p.own(e)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UserError(f"{path} holds files this command does not write ({shown}); it will not replace them: "
                            f"move them, or choose another {name}")
        if entries and not self.overwrite:
            raise UserError(f"{path} already exists: choose another {name}{self.overwrite_hint}")

    def _targets(self) -> dict[Path, tuple[str, int]]:
        """Folder that receives files -> (the option naming it, bytes written there)."""
        where: dict[Path, tuple[str, int]] = {}
        for p in self._planned.values():
            option, size = where.get(p.path.parent, (p.option, 0))
            where[p.path.parent] = (option, size + p.size)
        return where

    def _make_writable(self, folder: Path, option: str) -> None:
        name = self._name(option)
        existing = folder
        while not existing.exists():
            if existing.is_symlink():  # a dangling link
                raise UserError(f"{option}: {existing} is a broken link: choose another {name}")
            existing = existing.parent
        if not existing.is_dir():
            raise UserError(f"{option}: {existing} is a file, not a folder: choose another {name}")
        missing = []
        p = folder
        while p != existing:
            missing.append(p)
            p = p.parent
        try:
            for p in reversed(missing):
                p.mkdir()
                self._created.append(p)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".nextscale-write-test-")
            try:
                os.write(fd, b"x")
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise UserError(f"{option}: cannot write in {folder} ({e.strerror or e}): choose another {name}") \
                from None

    def check(self) -> None:
        """Refuse, before any work, what could not be written (see the class docstring); creates the folders."""
        for planned in self._planned.values():
            self._refuse_existing(planned)
        targets = self._targets()
        try:
            for folder, (option, _) in targets.items():
                self._make_writable(folder, option)
            by_disk: dict[int, list] = {}
            for folder, (option, size) in targets.items():
                by_disk.setdefault(os.stat(folder).st_dev, []).append((folder, option, size))
            for entries in by_disk.values():
                self.require_space(entries[0][0], sum(size for _, _, size in entries), entries[0][1])
        except BaseException:
            self.discard()
            raise

    def require_space(self, folder, size: int, option: str = "--out") -> None:
        """Refuse when the disk of `folder` has less than `size` bytes free (a rough check: sizes are estimates)."""
        free = shutil.disk_usage(folder).free
        if size > free:
            raise UserError(f"{option}: about {_size(size)} to write but only {_size(free)} free on that disk: free "
                            f"some space, ask for less, or choose another {self._name(option)}")

    # ------------------------------------------------------------------ writing
    def write_file(self, path, write: Callable) -> Path:
        """`write(file_object)` into a temp file beside `path`, renamed to `path` when complete."""
        from nextscale.files import atomic_write
        atomic_write(path, write)
        return Path(path)

    def temp_folder(self, dest) -> Path:
        """An empty folder beside `dest`, to be filled and then swapped in with replace_folder."""
        dest = Path(dest)
        from nextscale.files import default_permissions
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
        self._temps.append(tmp)
        return default_permissions(tmp)

    def temp_file(self, dest, suffix: str = ".tmp") -> Path:
        """An empty file beside `dest`, to be filled and then renamed to `dest` with replace_file."""
        dest = Path(dest)
        from nextscale.files import default_permissions
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
        os.close(fd)
        self._temps.append(Path(tmp))
        return default_permissions(tmp)

    def replace_file(self, tmp: Path, dest) -> Path:
        os.replace(tmp, dest)
        self._temps.remove(tmp)
        return Path(dest)

    def replace_folder(self, tmp: Path, dest) -> Path:
        """Swap the finished folder `tmp` in at `dest`; a previous `dest` (checked by `check`) is removed."""
        dest = Path(dest)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
            os.replace(dest, old / dest.name)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old / dest.name, dest)
                old.rmdir()
            raise
        self._temps.remove(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return dest

    def discard(self) -> None:
        """After a failure: remove the temp folders, and the folders `check` created if they stayed empty."""
        for tmp in self._temps:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        self._temps.clear()
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        self._created.clear()

    @contextlib.contextmanager
    def writing(self):
        """Around the work and the writes: any failure (Ctrl-C included) discards what is unfinished."""
        try:
            yield self
        except BaseException:
            self.discard()
            raise


def load_model(args) -> "torch.nn.Module":
    """The transformer (with its tokenizer attached) that the model options name."""
    import nextscale
    from nextscale.registry import shipped
    patch_nums = getattr(args, "patch_nums", None)
    if args.transformer:
        vae = nextscale.load_vae(args.tokenizer, patch_nums=patch_nums) if args.tokenizer else None
        var = nextscale.load_var(args.transformer, vae=vae, patch_nums=patch_nums)
    else:
        name = args.model or "fashion-mnist"
        if name in shipped() and not Path(name).exists():
            var = nextscale.load_pretrained(name)
        else:
            var = nextscale.load_var(name, patch_nums=patch_nums)
    if var.tokenizer is None:
        raise UserError("the transformer needs a tokenizer: pass --tokenizer PATH")
    if patch_nums is not None and tuple(patch_nums) != tuple(var.patch_nums):
        # A shipped model or a model folder records its schedule; another one is never silently ignored.
        raise UserError(f"--patch-nums {','.join(map(str, patch_nums))} does not match the model's scale schedule "
                        f"{','.join(map(str, var.patch_nums))}: leave --patch-nums out (it is only needed for "
                        f"checkpoints whose token count matches no published schedule)")
    return var
