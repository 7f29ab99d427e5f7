"""Reading what a client sends: numbers within bounds, and images within size limits.

Every problem raises RequestError with a message for the page; the HTTP layer answers it with the
error's status (400 unless said otherwise) and never with a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import math

from PIL import Image, UnidentifiedImageError

# Formats Pillow may decode for us; others (EPS runs Ghostscript, for one) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(body: dict, name: str, what: str) -> float | None:
    """The field as a float (a JSON number or a numeric string), None when absent or blank."""
    value = body.get(name)
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{name} must be {what}, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise RequestError(f"{name} must be {what}, got {value!r}") from None


def get_int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    number = _number(body, name, "a whole number")
    if number is None:
        return default
    if not number.is_integer():
        raise RequestError(f"{name} must be a whole number, got {body[name]!r}")
    if not lo <= number <= hi:
        raise RequestError(f"{name} must be between {lo} and {hi}, got {int(number)}")
    return int(number)


def get_float(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    number = _number(body, name, "a number")
    if number is None:
        return default
    if not (math.isfinite(number) and lo <= number <= hi):
        raise RequestError(f"{name} must be a number between {lo:g} and {hi:g}, got {body[name]}")
    return number


def get_bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {value!r}")
    return value


def get_choice(body: dict, name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value not in choices:
        raise RequestError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def get_box(body: dict) -> list[float]:
    """[y0, x0, y1, x1] as fractions of the height and width."""
    box = body.get("box")
    if not isinstance(box, list) or len(box) != 4:
        raise RequestError("drag a rectangle on the image first (box must be four fractions y0, x0, y1, x1)")
    return [get_float({"box": v}, "box", 0.0, 0.0, 1.0) for v in box]


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Bytes of an image file -> a loaded PIL image; refuses non-images and images over the limits."""
    if len(data) > max_bytes:
        raise RequestError(f"the image is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB "
                           f"(the server's --max-upload-mb)", status=413)
    if not data:
        raise RequestError("the upload is empty: choose an image file")
    try:
        im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        width, height = im.size
        if width * height > max_pixels:
            raise RequestError(f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
                               f"{max_pixels / 1e6:g} megapixels (the server's --max-pixels)", status=413)
        im.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise RequestError(f"this file is not an image that can be read here (accepted: "
                           f"{', '.join(IMAGE_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, RequestError):
            raise
        raise RequestError(f"the image file is damaged or truncated: {e}") from None
    return im


def decode_data_url(text) -> bytes:
    """`data:image/png;base64,....` (or bare base64) -> bytes."""
    if not isinstance(text, str) or not text:
        raise RequestError("no image: upload one or pick a test image")
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the image is not valid base64 data") from None


def png_data_url(array_HWC) -> str:
    """uint8 (H, W, 3) array -> `data:image/png;base64,...`."""
    buffer = io.BytesIO()
    Image.fromarray(array_HWC).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
