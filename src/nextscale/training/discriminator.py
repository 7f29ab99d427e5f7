"""PatchGAN discriminator (pix2pix / VQGAN style): one real/fake score per overlapping image patch."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: the scores do not depend on the batch, so one process with batch 2b
    # and two processes with batch b compute the same thing.
    return nn.GroupNorm(math.gcd(32, channels), channels)


class PatchDiscriminator(nn.Module):
    """4x4 convs: `num_layers` stride-2 downsamplings (width doubling, capped at 8x), one stride-1 layer,
    then a 1-channel score map. Receptive field 70 px with 3 layers (the classic 70x70 PatchGAN)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers):
            out = channels * min(2 ** i, 8)
            layers += [nn.Conv2d(width, out, 4, stride=2, padding=1, bias=False), _norm(out), nn.LeakyReLU(0.2)]
            width = out
        out = channels * min(2 ** num_layers, 8)
        layers += [nn.Conv2d(width, out, 4, stride=1, padding=1, bias=False), _norm(out), nn.LeakyReLU(0.2),
                   nn.Conv2d(out, 1, 4, stride=1, padding=1)]
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, img_BChw: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> score map (B, 1, h, w); positive = looks real."""
        return self.net(img_BChw)
