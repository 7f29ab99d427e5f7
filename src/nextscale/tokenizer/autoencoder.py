"""Convolutional encoder and decoder of the VQ-VAE (VQGAN / latent-diffusion style).

Module names follow the published state dict (`encoder.down.0.block.0.conv1`, ...), so the
published `vae_ch160v4096z32.pth` loads with strict key checking and no mapping.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


DEFAULT_NORM_GROUPS = 32  # the published tokenizer's GroupNorm


def group_norm(channels: int, groups: int = DEFAULT_NORM_GROUPS) -> nn.GroupNorm:
    """GroupNorm with `groups` groups (fewer where `channels` has fewer, or does not divide evenly)."""
    groups = max(1, min(groups, channels))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0,
                 norm_groups: int = DEFAULT_NORM_GROUPS):
        super().__init__()
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        # In place where the tensor is fresh: at 256px each activation is ~40 MB, and every new one
        # costs page faults and zeroing.
        h = self.conv1(F.silu(self.norm1(x_BChw), inplace=True))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        return h.add_(self.nin_shortcut(x_BChw))


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 qkv conv."""

    def __init__(self, channels: int, norm_groups: int = DEFAULT_NORM_GROUPS):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BChw.shape
        q, k, v = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, H * W).unbind(1)
        # (B, 1, HW, C): one head over all channels.
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x_BChw + self.proj_out(h)


class Downsample(nn.Module):
    """Asymmetric pad (right/bottom by one) then a stride-2 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BChw, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention, optional resampling."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample_name: str | None, resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        if resample_name is not None:
            self.add_module(resample_name, resample)
        self.resample_name = resample_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        if self.resample_name is not None:
            x = getattr(self, self.resample_name)(x)
        return x


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, norm_groups: int = DEFAULT_NORM_GROUPS):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, norm_groups)
        self.attn_1 = AttnBlock(channels, norm_groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, norm_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, z_channels, H/2^(levels-1), ...)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 in_channels: int = 3, dropout: float = 0.0, norm_groups: int = DEFAULT_NORM_GROUPS):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels = []
        block_in = ch
        for i, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
            lowest = i == len(ch_mult) - 1
            attns = [AttnBlock(block_in, norm_groups) for _ in range(num_res_blocks)] if lowest else []
            levels.append(_Level(blocks, attns, None if lowest else "downsample", None if lowest else Downsample(block_in)))
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(block_in, dropout, norm_groups)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, img_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(img_BChw)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image; `up[i]` is level i, so `up[-1]` runs first (lowest resolution)."""

    def __init__(self, ch: int, ch_mult: Sequence[int], num_res_blocks: int, z_channels: int,
                 out_channels: int = 3, dropout: float = 0.0, norm_groups: int = DEFAULT_NORM_GROUPS):
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _Middle(block_in, dropout, norm_groups)
        levels: list[nn.Module] = []
        for i in reversed(range(len(ch_mult))):
            block_out = ch * ch_mult[i]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
            lowest = i == len(ch_mult) - 1
            attns = [AttnBlock(block_in, norm_groups) for _ in range(num_res_blocks + 1)] if lowest else []
            levels.insert(0, _Level(blocks, attns, None if i == 0 else "upsample", None if i == 0 else Upsample(block_in)))
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
