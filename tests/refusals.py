"""What the tests of refusals (issue 14) assert of a refused command: exit code 2, one error line holding the
input and the fix, no traceback; and the hostile files they feed it.

    refused(["sample", "--cfg", "nan"], capsys, "--cfg must be a number")   # runs the command line
    one_error_line(err, "steps must be at least 1", alone=True)            # checks a stderr already captured
    png_claiming(tmp_path / "bomb.png", 50000, 50000)                     # a few-byte PNG claiming 2.5 gigapixels
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def one_error_line(err: str, *parts, alone: bool = False) -> str:
    """The one line of `err` (a command's stderr) that starts with "nextscale", after asserting there is exactly one,
    no traceback, and every one of `parts` in that line. Other lines (progress bars, warnings) are allowed unless
    `alone`: then that line must be all of stderr."""
    assert "Traceback" not in err, err
    lines = err.replace("\r", "\n").splitlines()
    errors = [line for line in lines if line.startswith("nextscale")]
    assert len(errors) == 1, err
    if alone:
        assert [line for line in lines if line.strip()] == errors, err
    for part in parts:
        assert str(part) in errors[0], (part, err)
    return errors[0]


def refused(argv, capsys, *parts, alone: bool = False) -> str:
    """Run the command line with `argv`; assert it exits with 2 and one error line (`one_error_line`) holding all
    `parts`; return that line."""
    from nextscale.cli import main
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    return one_error_line(err, *parts, alone=alone)


def png_bytes_claiming(width: int, height: int) -> bytes:
    """A few-byte PNG whose header claims width x height RGB pixels (and whose data is empty)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def png_claiming(path, width: int, height: int) -> Path:
    """Write png_bytes_claiming(width, height) to `path` (its folders made); -> the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes_claiming(width, height))
    return path
