"""Multi-scale residual vector quantizer (spec §1).

A latent f (B, C, h, w) becomes K token maps r_1..r_K of sizes pn_k x pn_k: at each scale the
remaining residual is area-downsampled, quantized to the nearest code, the codes' embeddings
are bicubic-upsampled back to h x w, refined by a shared conv `phi`, added to f_hat and
subtracted from the residual.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Phi(nn.Conv2d):
    """phi(h) = (1 - ratio) * h + ratio * conv3x3(h)."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw * (1 - self.ratio) + super().forward(h_BChw) * self.ratio


class SharedPhis(nn.Module):
    """`n` phi convs shared over the K scales; scale k uses the conv whose tick is nearest k/(K-1)."""

    def __init__(self, channels: int, count: int, ratio: float):
        super().__init__()
        self.qresi_ls = nn.ModuleList([Phi(channels, ratio) for _ in range(count)])
        if count == 4:
            self.ticks = np.linspace(1 / 12, 11 / 12, 4)
        else:
            self.ticks = np.linspace(1 / (2 * count), 1 - 1 / (2 * count), count)

    def index_for(self, scale_idx: int, num_scales: int) -> int:
        at = scale_idx / (num_scales - 1) if num_scales > 1 else 1.0
        return int(np.argmin(np.abs(self.ticks - at)))

    def forward(self, h_BChw: torch.Tensor, scale_idx: int, num_scales: int) -> torch.Tensor:
        return self.qresi_ls[self.index_for(scale_idx, num_scales)](h_BChw)


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over `patch_nums`; state-dict names follow the published `quantize.*`."""

    def __init__(self, vocab_size: int, channels: int, patch_nums: Sequence[int], phi_count: int = 4,
                 phi_ratio: float = 0.5, lookup: str = "l2", beta: float = 0.25):
        super().__init__()
        if lookup not in ("l2", "cosine"):
            raise ValueError(f"lookup must be 'l2' or 'cosine', got {lookup!r}")
        self.vocab_size = vocab_size
        self.channels = channels
        self.patch_nums = tuple(patch_nums)
        self.lookup = lookup
        self.beta = beta
        self.embedding = nn.Embedding(vocab_size, channels)
        self.quant_resi = SharedPhis(channels, phi_count, phi_ratio)
        # Codebook usage per scale (EMA of hit counts), kept in the published state dict.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.ema_initialized = False

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    # ------------------------------------------------------------------ lookup helpers
    def nearest_codes(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of z_NC."""
        weight = self.embedding.weight
        if self.lookup == "cosine":
            return torch.argmax(F.normalize(z_NC, dim=1) @ F.normalize(weight, dim=1).T, dim=1)
        dist = (z_NC.square().sum(1, keepdim=True) + weight.square().sum(1)).addmm_(z_NC, weight.T, alpha=-2, beta=1)
        return torch.argmin(dist, dim=1)

    def embed_map(self, idx_Bl: torch.Tensor, pn: int) -> torch.Tensor:
        """Tokens (B, pn*pn) -> code embeddings (B, C, pn, pn)."""
        B = idx_Bl.shape[0]
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.channels, pn, pn)

    def upsample_and_refine(self, h_BChw: torch.Tensor, scale_idx: int) -> torch.Tensor:
        """Bicubic-upsample a scale's embedding to the latent size (none at the last scale), then phi."""
        size = self.patch_nums[-1]
        if scale_idx != self.num_scales - 1:
            h_BChw = F.interpolate(h_BChw, size=(size, size), mode="bicubic")
        return self.quant_resi(h_BChw, scale_idx, self.num_scales)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def tokenize(self, f_BChw: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Latent -> (token maps per scale (B, pn*pn), cumulative f_hat after each scale)."""
        B, C, H, W = f_BChw.shape
        if H != self.patch_nums[-1] or W != self.patch_nums[-1]:
            raise ValueError(f"latent is {H}x{W} but the finest scale is {self.patch_nums[-1]}: "
                             f"the image size does not fit patch_nums {list(self.patch_nums)}")
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        tokens, f_hats = [], []
        for si, pn in enumerate(self.patch_nums):
            z = f_rest if si == self.num_scales - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
            idx_Bl = self.nearest_codes(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            h = self.upsample_and_refine(self.embed_map(idx_Bl, pn), si)
            f_hat = f_hat + h
            f_rest = f_rest - h
            tokens.append(idx_Bl)
            f_hats.append(f_hat.clone())
        return tokens, f_hats

    def tokens_to_fhat(self, tokens: Sequence[torch.Tensor], num_scales: int | None = None) -> torch.Tensor:
        """Cumulative f_hat from the first `num_scales` token maps (all by default)."""
        num_scales = len(tokens) if num_scales is None else num_scales
        size = self.patch_nums[-1]
        f_hat = self.embedding.weight.new_zeros(tokens[0].shape[0], self.channels, size, size)
        for si in range(num_scales):
            f_hat = f_hat + self.upsample_and_refine(self.embed_map(tokens[si], self.patch_nums[si]), si)
        return f_hat

    def add_scale(self, f_hat: torch.Tensor, h_BChw: torch.Tensor, scale_idx: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add one sampled scale to f_hat; return it and the next scale's input (area-downsampled)."""
        f_hat = f_hat + self.upsample_and_refine(h_BChw, scale_idx)
        if scale_idx == self.num_scales - 1:
            return f_hat, None
        pn_next = self.patch_nums[scale_idx + 1]
        return f_hat, F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")

    def teacher_forcing_input(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token maps -> transformer input (B, L - pn_1^2, C): for each scale k>0 the area-downsampled
        cumulative f_hat of all coarser scales at scale k's size."""
        size = self.patch_nums[-1]
        B = tokens[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.channels, size, size)
        inputs = []
        for si in range(self.num_scales - 1):
            f_hat = f_hat + self.upsample_and_refine(self.embed_map(tokens[si], self.patch_nums[si]), si)
            pn_next = self.patch_nums[si + 1]
            inputs.append(F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").flatten(2).transpose(1, 2))
        if not inputs:
            return f_hat.new_zeros(B, 0, self.channels)
        return torch.cat(inputs, dim=1)

    # ------------------------------------------------------------------ training
    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: (f_hat with a straight-through gradient to f, codebook+commitment loss, tokens).

        The loss is the mean over scales of ||sg(f) - f_hat||^2 (moves the codebook and phi) plus
        beta * ||f - sg(f_hat)||^2 (commits the encoder).
        """
        B, C, H, W = f_BChw.shape
        f_detached = f_BChw.detach()
        f_rest = f_detached.clone()
        f_hat = torch.zeros_like(f_rest)
        loss = f_BChw.new_zeros(())
        tokens = []
        for si, pn in enumerate(self.patch_nums):
            with torch.no_grad():
                z = f_rest if si == self.num_scales - 1 else F.interpolate(f_rest, size=(pn, pn), mode="area")
                idx_Bl = self.nearest_codes(z.permute(0, 2, 3, 1).reshape(-1, C)).view(B, pn * pn)
            h = self.upsample_and_refine(self.embed_map(idx_Bl, pn), si)
            f_hat = f_hat + h
            f_rest = f_rest - h.detach()
            loss = loss + F.mse_loss(f_hat, f_detached) + self.beta * F.mse_loss(f_BChw, f_hat.detach())
            tokens.append(idx_Bl)
            if self.training:
                self._update_usage(si, idx_Bl)
        loss = loss / self.num_scales
        # Straight-through: the value is f_hat, the reconstruction gradient goes to the encoder.
        f_hat_st = f_BChw + (f_hat - f_BChw).detach()
        return f_hat_st, loss, tokens

    @torch.no_grad()
    def _update_usage(self, scale_idx: int, idx_Bl: torch.Tensor) -> None:
        hits = torch.bincount(idx_Bl.flatten(), minlength=self.vocab_size).float()
        if not self.ema_initialized:
            self.ema_vocab_hit_SV[scale_idx].copy_(hits)
            if scale_idx == self.num_scales - 1:
                self.ema_initialized = True
        else:
            self.ema_vocab_hit_SV[scale_idx].mul_(0.99).add_(hits, alpha=0.01)
