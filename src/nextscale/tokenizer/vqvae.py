"""The VAR tokenizer: conv encoder, multi-scale residual quantizer, conv decoder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from nextscale.config_schema import AT_LEAST_1, BELOW_ONE, FRACTION, NON_NEGATIVE, ConfigDict, Range
from nextscale.model_folder import save_pretrained
from nextscale.tokenizer.autoencoder import DEFAULT_NORM_GROUPS, Decoder, Encoder
from nextscale.tokenizer.quantizer import MultiScaleQuantizer

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


@dataclass
class VQVAEConfig(ConfigDict):
    """Architecture of a multi-scale VQ-VAE. Defaults are the published `vae_ch160v4096z32`."""

    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    vocab_size: int = 4096
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    phi_count: int = 4
    phi_ratio: float = 0.5
    lookup: str = "l2"  # "l2" or "cosine"
    image_channels: int = 3
    beta: float = 0.25
    dropout: float = 0.0
    # GroupNorm groups of the encoder and decoder. The published 32 on a narrow model (ch 32) is one channel per
    # group, an instance norm: it removes each image's per-channel offset and scale, which is its colour.
    norm_groups: int = DEFAULT_NORM_GROUPS

    RANGES = {"ch": AT_LEAST_1, "ch_mult": Range(low=1, min_items=1), "num_res_blocks": AT_LEAST_1,
              "z_channels": AT_LEAST_1, "vocab_size": AT_LEAST_1, "patch_nums": Range(low=1, min_items=1),
              "phi_count": AT_LEAST_1, "phi_ratio": FRACTION, "image_channels": Range(choices=(1, 3)),
              "beta": NON_NEGATIVE, "dropout": BELOW_ONE, "norm_groups": AT_LEAST_1}

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if list(self.patch_nums) != sorted(set(self.patch_nums)):
            raise ValueError(f"patch_nums must be strictly increasing, got {list(self.patch_nums)}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def resolution(self) -> int:
        return self.patch_nums[-1] * self.downsample

    def identity_hash(self) -> str:
        """Short hash of the architecture, used to tie token caches to their tokenizer."""
        fields = self.to_dict()
        if fields["norm_groups"] == DEFAULT_NORM_GROUPS:  # added later: caches written before it stay valid
            del fields["norm_groups"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


class VQVAE(nn.Module):
    """Image <-> multi-scale token maps. Images are (B, 3, H, W) in [-1, 1]."""

    model_type = "vqvae"  # written to config.json

    def __init__(self, config: VQVAEConfig | None = None, **overrides):
        super().__init__()
        # What config.json holds beside the architecture: class_names, sampling (cfg, top_k, top_p), trained_steps.
        self.extra_config: dict = {}
        config = dataclasses.replace(config or VQVAEConfig(), **overrides)
        self.config = config
        self.encoder = Encoder(config.ch, config.ch_mult, config.num_res_blocks, config.z_channels,
                               config.image_channels, config.dropout, config.norm_groups)
        self.decoder = Decoder(config.ch, config.ch_mult, config.num_res_blocks, config.z_channels,
                               config.image_channels, config.dropout, config.norm_groups)
        self.quantize = MultiScaleQuantizer(config.vocab_size, config.z_channels, config.patch_nums,
                                            config.phi_count, config.phi_ratio, config.lookup, config.beta)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 3, padding=1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 3, padding=1)

    # Convenience views of the configuration used everywhere.
    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.config.patch_nums

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def latent_channels(self) -> int:
        return self.config.z_channels

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def set_patch_nums(self, patch_nums) -> None:
        """Switch the scale schedule (same number of scales), e.g. the 256px tokenizer to 512px."""
        patch_nums = tuple(int(p) for p in patch_nums)
        if len(patch_nums) != len(self.patch_nums):
            raise ValueError(f"cannot switch the tokenizer from {len(self.patch_nums)} to {len(patch_nums)} scales "
                             f"(its codebook-usage buffer has one row per scale)")
        self.config = dataclasses.replace(self.config, patch_nums=patch_nums)
        self.quantize.patch_nums = patch_nums

    def save_pretrained(self, folder) -> Path:
        """Write this model as `config.json` + `model.safetensors` in `folder`."""
        return save_pretrained(self, folder)


    def encode_latent(self, img_BChw: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1] -> continuous latent f = quant_conv(encoder(img))."""
        expected = self.resolution
        if img_BChw.ndim != 4 or img_BChw.shape[1] != self.config.image_channels or img_BChw.shape[-2:] != (expected, expected):
            raise ValueError(f"expected images of shape (B, {self.config.image_channels}, {expected}, {expected}), "
                             f"got {tuple(img_BChw.shape)}")
        return self.quant_conv(self.encoder(img_BChw))

    @torch.no_grad()
    def encode_tokens(self, img_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Image in [-1, 1] -> K LongTensors (B, pn*pn), row-major within a scale."""
        return self.quantize.tokenize(self.encode_latent(img_BChw))[0]

    @torch.no_grad()
    def encode_fhats(self, img_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Image -> cumulative f_hat (B, Cvae, pn_K, pn_K) after each scale."""
        return self.quantize.tokenize(self.encode_latent(img_BChw))[1]

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat -> image in [-1, 1]."""
        if f_hat.device.type == "cpu":
            # oneDNN then runs every convolution in channels-last, without reordering each activation to
            # and from its blocked layout (13% less CPU time at 256px; same values up to float rounding).
            f_hat = f_hat.contiguous(memory_format=torch.channels_last)
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1, 1).contiguous()

    @torch.no_grad()
    def decode_tokens(self, tokens: Sequence[torch.Tensor], num_scales: int | None = None) -> torch.Tensor:
        """Token maps -> image in [-1, 1]; `num_scales` decodes from only the coarsest scales."""
        return self.decode_fhat(self.quantize.tokens_to_fhat(tokens, num_scales))

    def teacher_forcing_input(self, tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token maps -> transformer input (B, L - 1, Cvae)."""
        return self.quantize.teacher_forcing_input(tokens)

    def forward(self, img_BChw: torch.Tensor, return_latent: bool = False) -> tuple:
        """Training pass: (reconstruction, codebook+commitment loss, tokens), and with `return_latent` the
        encoder latent too (detached; dead-code restarts draw from it). Not clamped. Under autocast the
        quantizer still runs in float32: the nearest-code search and its losses need the precision."""
        f = self.encode_latent(img_BChw).float()
        with torch.autocast(f.device.type, enabled=False):
            f_hat, vq_loss, tokens = self.quantize(f)
        reconstruction = self.decoder(self.post_quant_conv(f_hat))
        return (reconstruction, vq_loss, tokens, f.detach()) if return_latent else (reconstruction, vq_loss, tokens)
