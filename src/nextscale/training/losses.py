"""Loss terms of tokenizer training: reconstruction, hinge GAN, VQGAN's adaptive GAN weight, PSNR/SSIM."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Mean squared (l2) or absolute (l1) error over all pixels."""
    if kind == "l2":
        return F.mse_loss(reconstruction, target)
    if kind == "l1":
        return F.l1_loss(reconstruction, target)
    raise ValueError(f"reconstruction loss must be 'l2' or 'l1', got {kind!r}")


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))]): zero once D separates them by a margin of 1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(fake)]: the generator raises the discriminator's score of its reconstructions."""
    return -logits_fake.mean()


def adaptive_gan_weight(nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """VQGAN's balance: ||d nll / d W|| / (||d gan / d W|| + eps) at the decoder's last weight W, clamped to
    [0, max_weight] and detached, so that the GAN gradient at W has about the size of the reconstruction's."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.float().norm() / (gan_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


# ---------------------------------------------------------------------------- image quality metrics
def psnr(images: torch.Tensor, targets: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (B,), images in [0, data_range]."""
    mse = (images.float() - targets.float()).square().flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(images: torch.Tensor, targets: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (B,) of Wang et al. 2004: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
    computed per channel on the valid region and averaged."""
    x, y = images.float(), targets.float()
    C = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    g = _gaussian_window(size, 1.5).to(x.device)
    window = (g[:, None] * g[None, :]).expand(C, 1, size, size)
    filt = lambda t: F.conv2d(t, window, groups=C)
    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x.square()
    var_y = filt(y * y) - mu_y.square()
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)
