"""Evaluate a tokenizer on held-out images: PSNR per number of scales, SSIM, LPIPS, colour, codebook usage.

    result = evaluate_tokenizer(vae, dataset, batch_size=100)
    result["psnr_per_num_scales"][k - 1]    # mean per-image PSNR (dB, images in [0, 1]) decoding scales 1..k
    result["usage_per_scale"][k - 1]        # fraction of the vocabulary that occurs at scale k
    result["colourfulness"], result["real_colourfulness"]   # Hasler-Suesstrunk, reconstructions vs originals
    result["mean_colour_error"]             # per image, mean over R, G, B of |mean colour difference|, 0-255
    result["grid"]                          # (K+1)*n images: originals, then reconstructions from 1..K scales
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from nextscale.evaluation.colour import colourfulness, mean_colour_error
from nextscale.tokenizer.vqvae import VQVAE
from nextscale.training.losses import psnr, ssim
from nextscale.training.metrics import progress_bar


@torch.no_grad()
def evaluate_tokenizer(vae: VQVAE, dataset, batch_size: int = 100, max_images: int | None = None,
                       perceptual=None, device: torch.device | str = "cpu", grid_images: int = 8,
                       show_progress: bool = True) -> dict:
    """Reconstruction quality and codebook usage of `vae` over `dataset` ((image in [-1, 1], label) pairs)."""
    device = torch.device(device)
    vae = vae.to(device).eval()
    q = vae.quantize
    K, V = q.num_scales, vae.vocab_size
    n_total = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n_total == 0:
        raise ValueError("the evaluation set is empty")
    subset = torch.utils.data.Subset(dataset, range(n_total))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    psnr_sums = torch.zeros(K, dtype=torch.float64)
    ssim_sum = lpips_sum = colour_sum = real_colour_sum = colour_error_sum = 0.0
    hits_KV = torch.zeros(K, V, dtype=torch.long)
    grid_rows: list[list[torch.Tensor]] = [[] for _ in range(K + 1)]
    n_seen = 0
    bar = progress_bar(total=n_total, desc="eval-tokenizer", enabled=show_progress, unit="img")
    for img, _ in loader:
        img = img.to(device)
        tokens, f_hats = q.tokenize(vae.encode_latent(img))
        target01 = (img + 1) / 2
        for k in range(K):
            rec01 = (vae.decode_fhat(f_hats[k]) + 1) / 2
            psnr_sums[k] += psnr(rec01, target01).double().sum().cpu()
            if n_seen < grid_images:
                grid_rows[k + 1].append(rec01[:grid_images - n_seen].cpu())
            hits_KV[k] += torch.bincount(tokens[k].flatten().cpu(), minlength=V)
        ssim_sum += ssim(rec01, target01).double().sum().item()
        colour_sum += colourfulness(rec01).sum().item()
        real_colour_sum += colourfulness(target01).sum().item()
        colour_error_sum += mean_colour_error(rec01, target01).sum().item()
        if perceptual is not None:
            lpips_sum += perceptual(rec01 * 2 - 1, img).double().sum().item()
        if n_seen < grid_images:
            grid_rows[0].append(target01[:grid_images - n_seen].cpu())
        n_seen += len(img)
        bar.update(len(img))
    bar.close()
    result = {
        "num_images": n_seen,
        "psnr_per_num_scales": (psnr_sums / n_seen).tolist(),
        "ssim": ssim_sum / n_seen,
        "colourfulness": colour_sum / n_seen,
        "real_colourfulness": real_colour_sum / n_seen,
        "mean_colour_error": colour_error_sum / n_seen,
        "usage_per_scale": (hits_KV > 0).float().mean(1).tolist(),
        "codes_used_per_scale": (hits_KV > 0).sum(1).tolist(),
        "vocab_size": V,
        "patch_nums": list(vae.patch_nums),
        "grid": torch.cat([torch.cat(row) for row in grid_rows]),
    }
    result["psnr"] = result["psnr_per_num_scales"][-1]
    if perceptual is not None:
        result["lpips"] = lpips_sum / n_seen
        result["lpips_is_published"] = bool(perceptual.is_published_lpips)
    return result
