"""Files written whole or not at all: a temp file beside the target, fsynced, renamed into place.

The lowest layer of the package (it imports nothing of nextscale): model folders, training checkpoints, images,
metrics and configs are all written through `atomic_write`, so an interruption or a full disk never leaves a
truncated file in place of a good one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask alone must set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write_fn) -> None:
    """Call `write_fn(file_object)` on a temp file beside `path`, fsync it, then rename it to `path`.

    The file gets the permissions a plain open() would give a new file (0666 less the umask: 0644 under umask
    022), not the temp file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def default_permissions(path: str | os.PathLike) -> Path:
    """Give a file or folder made through a temp file (mkstemp: 0600, mkdtemp: 0700) the permissions a plain
    open() or mkdir() would have given it (0666 / 0777 less the umask), so outputs stay readable as before."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())
    return path
