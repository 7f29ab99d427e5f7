"""`nextscale serve` under abuse and at its edges: hostile JSON (issue 14). Each test failed before its fix."""

import json
import struct
import zlib

import pytest
import torch

import nextscale
from nextscale.serve import ModelRunner
from test_serve import request, start, stop


@pytest.fixture(scope="module")
def runner():
    torch.set_num_threads(1)
    return ModelRunner(nextscale.load_pretrained("fashion-mnist"), "fashion-mnist", torch.device("cpu"), max_images=16,
                       max_upload_bytes=300_000, max_pixels=1_000_000)


@pytest.fixture(scope="module")
def url(runner):
    server, base = start(runner, start_worker=False)  # nothing here needs a job to run
    yield base
    stop(server)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height, with no pixel data: 70 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


# ---------------------------------------------------------------- hostile bodies

@pytest.mark.parametrize("body, status, message", [
    (b"[" * 30_000 + b"]" * 30_000, 400, "the request body is nested more than 8 levels deep"),
    (b'{"box": ' + b"[" * 20 + b"]" * 20 + b"}", 400, "the request body is nested more than 8"),
    (b'{"seed": ' + b"1" * 5000 + b"}", 400, "a number in the request has 5000 characters; at most 40"),
    (b'{"cfg": 1.' + b"5" * 5000 + b"}", 400, "a number in the request has 5002 characters"),
    (json.dumps({"seed": "1" * 5000}).encode(), 400, "seed must be a whole number, got '1111111111111111111111111"),
    (json.dumps({"seed": 10**39}).encode(), 400, "seed must be between 0 and 9223372036854775791, got 1000000"),
    (json.dumps({"seed": 1e300}).encode(), 400, "seed must be between 0 and"),
    (json.dumps({"seed": "٣"}).encode(), 400, "seed must be a whole number, got '٣'"),
    (json.dumps({"class": "²"}).encode(), 400, "class must be a class name or an id in the digits 0-9, got '²'"),
    (json.dumps({"mode": ["x"] * 5000}).encode(), 400, "mode must be one of inpaint, outpaint, class, got ['x', "),
])
def test_hostile_json_is_a_400_with_a_message_and_no_traceback(url, capfd, body, status, message):
    path = "/api/edit" if b'"mode"' in body or b'"box"' in body else "/api/generate"
    got, answer = request(url + path, body)
    assert (got, message) == (status, answer["error"][:len(message)]), answer
    assert len(answer["error"]) < 400
    assert "Traceback" not in capfd.readouterr().err


def test_the_largest_seed_is_read_exactly(runner):
    limit = 2**63 - 1 - runner.max_images  # as a float it would round up to 2**63, past the limit
    assert runner._seeds({"seed": limit, "num_images": 1}, default_num=1) == [limit]
    assert runner._seeds({"seed": str(limit), "num_images": 1}, default_num=1) == [limit]


def test_an_image_claiming_too_many_pixels_is_a_413(url, capfd):
    # Before: Pillow's own bomb check fired first and the answer was 400 "not an image".
    for width, height in ((50_000, 50_000), (1001, 1000)):
        status, answer = request(f"{url}/api/image", png_claiming(width, height), "application/octet-stream")
        assert status == 413, answer
        assert "megapixels" in answer["error"] and answer["error"].endswith("(the server's --max-pixels)")
    status, answer = request(f"{url}/api/image", png_claiming(100, 100), "application/octet-stream")
    assert status == 400 and "damaged or truncated" in answer["error"]
    assert "Traceback" not in capfd.readouterr().err


