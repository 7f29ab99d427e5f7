"""Reading what a client sends: JSON within depth and number-size limits, numbers within bounds, and
images within size limits.

Every problem raises RequestError with a message for the page; the HTTP layer answers it with the
error's status (400 unless said otherwise) and never with a traceback.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math

from PIL import Image

from nextscale.images import ImageReadError, ImageTooLargeError, open_image

# Formats Pillow may decode for us; others (EPS runs Ghostscript, for one) are refused.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
# The API's bodies are two levels deep (an object holding the box list): deeper nesting is refused before it can
# exhaust the parser's recursion, and longer numbers before int() refuses them (Python 3.11+) or float() overflows.
MAX_JSON_DEPTH = 8
MAX_NUMBER_CHARS = 40


class RequestError(ValueError):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def shown(value, limit: int = 40, quoted: bool = True) -> str:
    """repr(value) (or str) for a message, cut short: a client's 5000-character value is not echoed whole."""
    text = repr(value) if quoted else str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _limited_number(text: str):
    if len(text) > MAX_NUMBER_CHARS:
        raise RequestError(f"a number in the request has {len(text)} characters; at most {MAX_NUMBER_CHARS} are "
                           f"accepted")
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_json(raw: bytes) -> dict:
    """A request body -> its JSON object; RequestError for invalid JSON, deep nesting and overlong numbers."""
    try:
        body = json.loads(raw, parse_int=_limited_number, parse_float=_limited_number)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        body = None  # nested deeper than the parser goes: refused below with the limit
        depth = MAX_JSON_DEPTH + 1
    else:
        depth, stack = 0, [(body, 1)]  # iterative: the check itself must not recurse
        while stack and depth <= MAX_JSON_DEPTH:
            value, level = stack.pop()
            if isinstance(value, (dict, list)):
                depth = max(depth, level)
                stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    if depth > MAX_JSON_DEPTH:
        raise RequestError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep: send the "
                           f"settings as one JSON object")
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(body: dict, name: str, what: str) -> int | float | None:
    """The field as a number (a JSON number or a numeric string of ASCII digits), None when absent or blank.
    Whole numbers stay ints, so that bounds near 2**63 are compared exactly."""
    value = body.get(name)
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{name} must be {what}, got {shown(value)}")
    if isinstance(value, str):
        text = value.strip()
        # float() and int() also read other scripts' digits ("٣"); int("²") raises: only ASCII is a number here
        if len(text) > MAX_NUMBER_CHARS or not text.isascii():
            raise RequestError(f"{name} must be {what}, got {shown(value)}")
        try:
            return int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise RequestError(f"{name} must be {what}, got {shown(value)}") from None
    return value


def get_int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    number = _number(body, name, "a whole number")
    if number is None:
        return default
    if isinstance(number, float):
        if not number.is_integer():  # also inf and nan
            raise RequestError(f"{name} must be a whole number, got {shown(body[name])}")
        number = int(number)
    if not lo <= number <= hi:
        raise RequestError(f"{name} must be between {lo} and {hi}, got {shown(number)}")
    return number


def get_float(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    number = _number(body, name, "a number")
    if number is None:
        return default
    number = float(number)  # a JSON int has at most MAX_NUMBER_CHARS digits: no overflow
    if not (math.isfinite(number) and lo <= number <= hi):
        raise RequestError(f"{name} must be a number between {lo:g} and {hi:g}, "
                           f"got {shown(body[name], quoted=False)}")
    return number


def get_bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {shown(value)}")
    return value


def get_choice(body: dict, name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value not in choices:
        raise RequestError(f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
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
        return open_image(data, max_pixels, formats=IMAGE_FORMATS)  # the size is checked from the header first
    except ImageTooLargeError as e:
        raise RequestError(f"{e} (the server's --max-pixels)", status=413) from None
    except ImageReadError as e:
        raise RequestError(str(e)) from None


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
