"""Image input/output: reading any image into the model's resolution, and writing PNG files and grids."""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from nextscale.files import atomic_write


# Every image reader (the command line, the web app, the Python API) refuses images with more pixels than this
# before decoding them: a 80 kB PNG can claim 9000x9000 pixels and cost 2.5 GB once decoded.
DEFAULT_MAX_PIXELS = 16_000_000


class ImageReadError(ValueError):
    """An image file is missing or cannot be decoded."""


class ImageTooLargeError(ImageReadError):
    """An image claims more pixels than the reader's cap (refused from its header, before decoding)."""


def open_image(source: str | os.PathLike | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               formats: Sequence[str] | None = None) -> Image.Image:
    """A path or the bytes of an image file -> a loaded PIL image. The size in the header is checked against
    `max_pixels` (None: no cap) before any pixel is decoded; ImageReadError (or ImageTooLargeError) otherwise."""
    name = "the image" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise ImageReadError(f"image not found: {source}")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    limit = f"{max_pixels / 1e6:g} megapixels" if max_pixels else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
            with Image.open(fp, formats=formats) as im:  # reads the header only
                width, height = im.size
                if max_pixels and width * height > max_pixels:
                    raise ImageTooLargeError(f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                                             f"the limit is {limit}: make it smaller first")
                im.load()
                return im.copy()
    except Image.DecompressionBombError:  # Pillow's own cap, at 2x Image.MAX_IMAGE_PIXELS, hit in open()
        raise ImageTooLargeError(f"{name} claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels"
                                 + (f"; the limit is {limit}" if limit else "") + ": make it smaller first") from None
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {name}: not an image that can be read here"
                             + (f" (accepted: {', '.join(formats)})" if formats else "")) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageReadError(f"cannot read image {name}: it is damaged or truncated ({e})") from None


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file -> a loaded PIL image (see open_image for the pixel cap)."""
    return open_image(path, max_pixels)


def pil_to_tensor(im: Image.Image, channels: int = 3) -> torch.Tensor:
    """PIL image of any mode -> (channels, H, W) float in [0, 1]. Transparency is composited on black."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    im = im.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_images(images) -> list[torch.Tensor] | torch.Tensor:
    """A tensor (B, C, H, W) / (C, H, W), a PIL image, a path, or a list of those -> tensor or list of (C, H, W)."""
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images.unsqueeze(0)
    if isinstance(images, (str, os.PathLike, Image.Image)):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, (str, os.PathLike)):
            im = read_image(im)
        if isinstance(im, Image.Image):
            im = pil_to_tensor(im, 3)
        out.append(im if im.ndim == 3 else im.squeeze(0))
    return out


def resize_center_crop(img_CHW: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (bicubic, antialiased) and center-crop to size x size."""
    C, H, W = img_CHW.shape
    if (H, W) == (size, size):
        return img_CHW
    scale = size / min(H, W)
    new_h, new_w = max(size, round(H * scale)), max(size, round(W * scale))
    img = F.interpolate(img_CHW[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)[0]
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return img[:, top:top + size, left:left + size].clamp(0, 1)


def match_channels(img_CHW: torch.Tensor, channels: int) -> torch.Tensor:
    if img_CHW.shape[0] == channels:
        return img_CHW
    if img_CHW.shape[0] == 1:
        return img_CHW.expand(channels, -1, -1)
    if img_CHW.shape[0] == 4:  # RGBA tensor: drop alpha
        img_CHW = img_CHW[:3]
    if channels == 1:
        r, g, b = img_CHW[:3]
        return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(0)
    return img_CHW[:channels]


def to_model_input(images, size: int, channels: int = 3) -> torch.Tensor:
    """Images in [0, 1] of any size -> (B, channels, size, size) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        images = list(images)
    return torch.stack([match_channels(resize_center_crop(im.float(), size), channels) for im in images])


def to_uint8_hwc(images_BCHW: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [0, 1] -> (B, H, W, 3) uint8 (grayscale repeated), the ADM `.npz` layout."""
    if images_BCHW.shape[1] == 1:
        images_BCHW = images_BCHW.expand(-1, 3, -1, -1)
    return images_BCHW.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images_BCHW: torch.Tensor, ncols: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile images into one (H, W, 3) uint8 array, row-major, `ncols` per row."""
    arr = to_uint8_hwc(images_BCHW)
    B, H, W, _ = arr.shape
    ncols = ncols or math.ceil(math.sqrt(B))
    nrows = math.ceil(B / ncols)
    grid = np.zeros((nrows * (H + padding) + padding, ncols * (W + padding) + padding, 3), dtype=np.uint8)
    for i, im in enumerate(arr):
        r, c = divmod(i, ncols)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        grid[y:y + H, x:x + W] = im
    return grid


def save_image_file(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write `image` in the format its extension names (PNG when unknown) through a temp file renamed into place:
    a full disk or an interruption never leaves a truncated image, nor replaces a good one with it."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    atomic_write(path, lambda f: image.save(f, format=image_format))
    return path


def save_png(array_HWC: np.ndarray, path: str | os.PathLike) -> Path:
    return save_image_file(Image.fromarray(array_HWC), path)


def save_images(images_BCHW: torch.Tensor, folder: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    return [save_png(im, Path(folder) / name) for im, name in zip(to_uint8_hwc(images_BCHW), names)]


def _label_font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed-size bitmap font
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, max_width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in max_width pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"


def save_labeled_grid(images_BCHW: torch.Tensor, path: str | os.PathLike, ncols: int,
                      row_labels: Sequence | None = None, min_cell: int = 64) -> Path:
    """A PNG grid of images in [0, 1], `ncols` per row, each row labelled on its left with row_labels[r].

    Images smaller than `min_cell` pixels are enlarged by an integer factor with nearest-neighbour (a 32 px
    image becomes 64 px, a 28 px one 84 px), so small training samples stay visible. `row_labels` holds one
    label per row (anything printable: class names or ids); None leaves the label column out.
    """
    from PIL import ImageDraw

    if not isinstance(images_BCHW, torch.Tensor) or images_BCHW.ndim != 4:
        raise ValueError(f"save_labeled_grid: images must be a (B, C, H, W) tensor, got "
                         f"{tuple(images_BCHW.shape) if isinstance(images_BCHW, torch.Tensor) else type(images_BCHW).__name__}")
    B, C, H, W = images_BCHW.shape
    if B == 0:
        raise ValueError("save_labeled_grid: no images to save")
    if ncols < 1:
        raise ValueError(f"save_labeled_grid: ncols must be at least 1, got {ncols}")
    nrows = math.ceil(B / ncols)
    ncols = min(ncols, B)
    if row_labels is not None:
        row_labels = [str(label) for label in row_labels]
        if len(row_labels) != nrows:
            raise ValueError(f"save_labeled_grid: {B} images at {ncols} per row make {nrows} rows, "
                             f"but {len(row_labels)} row labels were given")

    factor = max(1, math.ceil(min_cell / min(H, W)))
    cells = to_uint8_hwc(images_BCHW.detach().float().cpu())
    if factor > 1:
        cells = cells.repeat(factor, axis=1).repeat(factor, axis=2)
    ch, cw = H * factor, W * factor
    pad = max(2, ch // 32)

    font_size = int(min(max(12, ch // 4), 20))
    font = _label_font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    if row_labels is not None:
        max_label_w = max(3 * cw, 160)
        row_labels = [_fit_text(measure, label, font, max_label_w) for label in row_labels]
        label_w = int(max(measure.textlength(label, font=font) for label in row_labels)) + 3 * pad + 4

    width = label_w + ncols * (cw + pad) + pad
    height = nrows * (ch + pad) + pad
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for i, cell in enumerate(cells):
        r, c = divmod(i, ncols)
        y, x = pad + r * (ch + pad), label_w + pad + c * (cw + pad)
        canvas[y:y + ch, x:x + cw] = cell
    image = Image.fromarray(canvas)
    if row_labels is not None:
        draw = ImageDraw.Draw(image)
        for r, label in enumerate(row_labels):
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            x = label_w - 2 * pad - (right - left) - left  # right-aligned next to the row
            y = pad + r * (ch + pad) + (ch - (bottom - top)) / 2 - top  # centred on the row
            draw.text((x, y), label, fill=(0, 0, 0), font=font)
    return save_image_file(image, path)
