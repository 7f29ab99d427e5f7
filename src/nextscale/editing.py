"""Zero-shot in-painting, out-painting and class-conditional editing (spec §4).

The input image is tokenized; sampling then runs as usual, except that at every scale the sampled
codes are replaced by the image's codes wherever the keep-mask (resized to that scale) says so.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from nextscale.images import load_images, to_model_input
from nextscale.inference_options import as_label_tensor, precision_context, resolve_sampling
from nextscale.sampling import (Generators, GuidanceSchedule, SampleOutput, _int8_copy, _tokenizer_of, generate_tokens,
                                parse_guidance, request_generator, without_null_pass_at_cfg_0)
from nextscale.threads import uses_free_cores
from nextscale.transformer.var import VAR


def box_mask(box: Sequence[float], size: int, inside: bool = True) -> torch.Tensor:
    """(size, size) float mask: 1 inside the box (fractions y0, x0, y1, x1), 0 outside; or the reverse."""
    if len(box) != 4:
        raise ValueError(f"a box is four fractions y0, x0, y1, x1; got {list(box)}")
    y0, x0, y1, x1 = (float(v) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (y0, x0, y1, x1)):
        raise ValueError(f"box fractions must lie in [0, 1], got {list(box)}")
    r0, r1, c0, c1 = round(y0 * size), round(y1 * size), round(x0 * size), round(x1 * size)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"box {list(box)} covers no token of the {size}x{size} grid: it needs y1 > y0 and x1 > x0")
    mask = torch.zeros(size, size)
    mask[r0:r1, c0:c1] = 1.0
    return mask if inside else 1.0 - mask


def inpaint_keep_mask(box: Sequence[float], size: int) -> torch.Tensor:
    """Keep-mask for in-painting: regenerate the box, keep everything else."""
    return box_mask(box, size, inside=False)


def outpaint_keep_mask(box: Sequence[float], size: int) -> torch.Tensor:
    """Keep-mask for out-painting: keep the box, regenerate everything around it."""
    return box_mask(box, size, inside=True)


def keep_mask_from_image(mask_img: torch.Tensor, size: int) -> torch.Tensor:
    """A mask image (H, W) in [0, 1], white = regenerate, to a keep-mask on the size x size token grid."""
    regenerate = F.interpolate(mask_img[None, None].float(), size=(size, size), mode="area")[0, 0]
    return (regenerate < 0.5).float()


def per_scale_keep(keep_mask: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Keep-mask on the finest grid -> boolean (pn*pn,) per scale: bilinear resize, keep where > 0.5;
    scales with at most 3 tokens keep everything (too coarse for a mask to mean anything)."""
    masks = []
    for pn in patch_nums:
        if pn * pn <= 3:
            masks.append(torch.ones(pn * pn, dtype=torch.bool, device=keep_mask.device))
            continue
        m = F.interpolate(keep_mask[None, None].float(), size=(pn, pn), mode="bilinear")[0, 0]
        masks.append((m > 0.5).flatten())
    return masks


def shade_regenerated(image_13HW: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Darken the region that is going to be regenerated, to show the mask
    (image (3, H, W) in [0, 1]; keep: the token-grid keep mask, 1 = kept)."""
    shade = torch.nn.functional.interpolate(keep[None, None], size=image_13HW.shape[-2:], mode="nearest")[0]
    return image_13HW * (0.25 + 0.75 * shade) + (1 - shade) * torch.tensor([0.0, 0.0, 0.35]).view(3, 1, 1)


@torch.no_grad()
@uses_free_cores
def edit(var: VAR, image, keep_mask: torch.Tensor, labels=None, seed: int | None = None, cfg: float | None = None,
         top_k: int | None = None, top_p: float | None = None, more_smooth: bool = False,
         generator: Generators = None, on_scale=None, per_image_seeds: bool = False,
         guidance: GuidanceSchedule | str = "linear", precision: str = "float32") -> SampleOutput:
    """Regenerate the parts of `image` where `keep_mask` is 0, conditioned on the kept parts.

    image: a tensor (B, C, H, W) in [0, 1], a PIL image, a path, or a list of those; any size and mode
    (resized and center-cropped to the model's resolution). keep_mask: (pn_K, pn_K) on the finest
    token grid (1 = keep), or (B, pn_K, pn_K). labels: the class of the regenerated part, one for all
    images or one per image, each an id or a class name (case-insensitive, as in `sample`); the null
    class (`var.num_classes` or "null", the default) edits unconditionally. Returns images at the
    model's resolution in [0, 1].

    cfg / top_k / top_p: None (the default) takes the model's recommendation, as `sample` and
    `nextscale edit` do (`recommended_sampling(var)`).

    Randomness, as in `sample`: `seed=s` alone is one generator for the whole request (the reference
    protocol); `seed=s, per_image_seeds=True` gives image i the generator seeded with s + i, so
    `edit(var, img.expand(n, -1, -1, -1), keep, seed=s, per_image_seeds=True)` equals the n variations
    of `nextscale edit --seed s --num n`; or pass `generator` (one, or one per image).
    on_scale: called after each scale, as in `generate_tokens`.
    guidance: the guidance schedule, as in `sample` ("linear", the paper's ramp, by default; "constant";
    "truncated:N").
    precision: as in `sample` ("float32", exact, by default; "bfloat16"/"float16": the transformer and the decoder
    under autocast; "int8": the transformer blocks' linear layers quantized, CPU only). The known tokens are
    always encoded in float32.
    """
    vae = _tokenizer_of(var)
    device = var.pos_1LC.device
    settings = resolve_sampling(var, cfg, top_k, top_p)
    low_precision = precision_context(precision, device)
    guidance = without_null_pass_at_cfg_0(parse_guidance(guidance, len(var.patch_nums)), settings["cfg"])
    img_B3HW = to_model_input(load_images(image), vae.resolution, vae.config.image_channels).to(device)
    B = img_B3HW.shape[0]
    size = var.patch_nums[-1]
    keep_mask = torch.as_tensor(keep_mask, dtype=torch.float32, device=device)
    if keep_mask.shape[-2:] != (size, size):
        raise ValueError(f"the keep-mask must be {size}x{size} (the finest token grid), got {tuple(keep_mask.shape)}")
    masks_B = keep_mask.expand(B, size, size) if keep_mask.ndim == 2 else keep_mask
    if masks_B.shape[0] != B:
        raise ValueError(f"{masks_B.shape[0]} keep-masks for {B} images")

    labels_B = as_label_tensor(var.num_classes if labels is None else labels, var, device)
    if labels_B.numel() == 1:
        labels_B = labels_B.expand(B).clone()
    if labels_B.numel() != B:
        raise ValueError(f"{labels_B.numel()} labels for {B} images")

    known_tokens = vae.encode_tokens(img_B3HW.mul(2).sub(1))
    keeps = [torch.stack(m) for m in zip(*(per_scale_keep(mk, var.patch_nums) for mk in masks_B))]
    forced = list(zip(known_tokens, keeps))
    generator = request_generator(seed, per_image_seeds, generator, B, "cpu" if device.type == "cpu" else device)
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"{len(generator)} generators for {B} images: pass one generator per image")
    model = _int8_copy(var) if precision == "int8" else var
    with low_precision:
        tokens, f_hat = generate_tokens(model, labels_B, generator, settings["cfg"], settings["top_k"],
                                        settings["top_p"], more_smooth, forced=forced, on_scale=on_scale,
                                        guidance=guidance)
        images = vae.decode_fhat(f_hat).float().add(1).mul(0.5)
    return SampleOutput(images=images, tokens=tokens, labels=labels_B)
