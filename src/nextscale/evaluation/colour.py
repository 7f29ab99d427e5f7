"""How much colour images hold, and how well reconstructions keep it.

    colourfulness(images01)                 # (B,) Hasler & Suesstrunk's M, 0-255 units (0: grey; ~50: photographs)
    mean_colour_error(rec01, target01)      # (B,) mean over R, G, B of |mean colour difference|, 0-255 units

Images are (B, 3, H, W) in [0, 1]. Grey images (B, 1, H, W) have colourfulness 0.

Colourfulness is D. Hasler and S. Suesstrunk, "Measuring colourfulness in natural images" (SPIE 2003):
with rg = R - G and yb = (R + G) / 2 - B over an image's pixels,
M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2). A model that drops colour scores
near 0 against the real images' figure; one that invents colour scores above it.
"""

from __future__ import annotations

import torch


def _as_rgb_255(images01: torch.Tensor) -> torch.Tensor:
    if images01.ndim != 4 or images01.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images01.shape)}")
    images = images01.double() * 255.0
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def colourfulness(images01: torch.Tensor) -> torch.Tensor:
    """Hasler-Suesstrunk colourfulness of each image, (B,) float64, 0-255 units."""
    r, g, b = _as_rgb_255(images01).flatten(2).unbind(1)
    rg = r - g
    yb = 0.5 * (r + g) - b
    spread = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    offset = (rg.mean(1) ** 2 + yb.mean(1) ** 2).sqrt()
    return spread + 0.3 * offset


def mean_colour_error(reconstructions01: torch.Tensor, targets01: torch.Tensor) -> torch.Tensor:
    """Per image: the mean over R, G, B of |mean of the reconstruction - mean of the target|, (B,), 0-255 units."""
    if reconstructions01.shape != targets01.shape:
        raise ValueError(f"reconstructions {tuple(reconstructions01.shape)} and targets {tuple(targets01.shape)} "
                         f"differ in shape")
    rec = _as_rgb_255(reconstructions01).mean((2, 3))
    tgt = _as_rgb_255(targets01).mean((2, 3))
    return (rec - tgt).abs().mean(1)


def colourfulness_summary(images01: torch.Tensor, reference01: torch.Tensor | None = None) -> dict:
    """{"colourfulness": mean over images, and with `reference01`: "real_colourfulness", "colourfulness_ratio"}."""
    out = {"colourfulness": colourfulness(images01).mean().item()}
    if reference01 is not None:
        real = colourfulness(reference01).mean().item()
        out["real_colourfulness"] = real
        out["colourfulness_ratio"] = out["colourfulness"] / real if real > 0 else float("nan")
    return out


def image_set_colourfulness(image_set, batch_size: int = 500) -> float:
    """Mean colourfulness of an evaluation ImageSet's images (uint8 (N, H, W, 3)), 0-255 units."""
    total = 0.0
    for batch01 in image_set.batches(batch_size):
        total += colourfulness(batch01).sum().item()
    return total / max(len(image_set), 1)
