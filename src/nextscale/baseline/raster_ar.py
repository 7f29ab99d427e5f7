"""The baseline the paper argues against: a class-conditional raster-scan next-token AR transformer.

It predicts a tokenizer's token sequence one token at a time, in the order the token cache stores it
(scale by scale, row-major within a scale). With a single-scale tokenizer (`patch_nums: [n]`) this
is the classic raster-scan model over an n x n map (VQGAN-style); with a multi-scale tokenizer it
is next-token prediction over the same pyramid VAR predicts scale by scale. The blocks are VAR's
(AdaLN conditioning on the class, the same attention) with a causal mask instead of the
block-causal one, so "same width and depth" means the same block code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from nextscale.config_schema import AT_LEAST_1, BELOW_ONE, FRACTION, POSITIVE, ConfigDict
from nextscale.model_folder import save_pretrained
from nextscale.transformer.logits import filter_logits
from nextscale.transformer.var import AdaLNBeforeHead, AdaLNBlock, KVCache


@dataclass
class RasterARConfig(ConfigDict):
    """Architecture of the raster-scan AR baseline; the fields it shares with VARConfig mean the same."""

    depth: int = 16
    embed_dim: int | None = None
    num_heads: int | None = None
    num_classes: int = 1000
    vocab_size: int = 4096
    seq_len: int = 256
    attn_l2_norm: bool = True
    mlp_ratio: float = 4.0
    drop_path_rate: float | None = None
    class_drop_prob: float = 0.1
    norm_eps: float = 1e-6
    shared_adaln: bool = False  # read by AdaLNBlock; the baseline always has one AdaLN per block

    RANGES = {"depth": AT_LEAST_1, "embed_dim": AT_LEAST_1, "num_heads": AT_LEAST_1, "num_classes": AT_LEAST_1,
              "vocab_size": AT_LEAST_1, "seq_len": AT_LEAST_1, "mlp_ratio": POSITIVE, "drop_path_rate": BELOW_ONE,
              "class_drop_prob": FRACTION, "norm_eps": POSITIVE}

    def __post_init__(self):
        if self.embed_dim is None:
            self.embed_dim = 64 * self.depth
        if self.num_heads is None:
            self.num_heads = self.depth
        if self.drop_path_rate is None:
            self.drop_path_rate = 0.1 * self.depth / 24
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.shared_adaln:
            raise ValueError("the raster-scan baseline has no shared-AdaLN variant")


class RasterAR(nn.Module):
    """Class-conditional next-token transformer over a flat token sequence."""

    model_type = "raster_ar"

    def __init__(self, config: RasterARConfig | None = None, **overrides):
        super().__init__()
        # What config.json holds beside the architecture: class_names, sampling (cfg, top_k, top_p), trained_steps.
        self.extra_config: dict = {}
        config = dataclasses.replace(config or RasterARConfig(), **overrides)
        self.config = config
        C, L = config.embed_dim, config.seq_len
        self.num_classes = config.num_classes
        self.class_drop_prob = config.class_drop_prob
        self._tokenizer: list = []

        self.token_embed = nn.Embedding(config.vocab_size, C)
        self.class_emb = nn.Embedding(config.num_classes + 1, C)  # last row: the null class
        self.pos_start = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        drop_paths = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList([AdaLNBlock(config, i, drop_paths[i]) for i in range(config.depth)])
        self.head_nm = AdaLNBeforeHead(C, config.norm_eps)
        self.head = nn.Linear(C, config.vocab_size)
        causal = torch.full((L, L), -torch.inf).triu(1)
        self.register_buffer("attn_bias_for_masking", causal.view(1, 1, L, L), persistent=False)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def tokenizer(self):
        return self._tokenizer[0] if self._tokenizer else None

    def attach_tokenizer(self, vae) -> None:
        L = sum(pn * pn for pn in vae.patch_nums)
        if vae.vocab_size != self.config.vocab_size or L != self.seq_len:
            raise ValueError(f"the tokenizer (vocabulary {vae.vocab_size}, {L} tokens) does not match this model "
                             f"(vocabulary {self.config.vocab_size}, {self.seq_len} tokens)")
        self._tokenizer = [vae]

    def save_pretrained(self, folder) -> Path:
        """Write `config.json` (model_type raster_ar) + `model.safetensors` (+ the tokenizer in `tokenizer/`)."""
        return save_pretrained(self, folder)


    def _cond_and_mods(self, labels_B: torch.Tensor):
        cond_BD = self.class_emb(labels_B)
        return cond_BD, [block.modulation(cond_BD, None) for block in self.blocks]

    def forward(self, labels_B: torch.Tensor, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: labels (B,), the whole sequence (B, L) -> logits (B, L, V) for every position."""
        B, L = tokens_BL.shape
        if L != self.seq_len:
            raise ValueError(f"expected token sequences of length {self.seq_len}, got {L}")
        if self.training and self.class_drop_prob > 0:
            drop = torch.rand(B, device=labels_B.device) < self.class_drop_prob
            labels_B = torch.where(drop, self.num_classes, labels_B)
        cond_BD, mods = self._cond_and_mods(labels_B)
        x_BLC = torch.cat((cond_BD.unsqueeze(1) + self.pos_start, self.token_embed(tokens_BL[:, :-1])), dim=1)
        x_BLC = x_BLC + self.pos_1LC
        for block, mod in zip(self.blocks, mods):
            x_BLC = block(x_BLC, mod, self.attn_bias_for_masking)
        return self.head(self.head_nm(x_BLC.float(), cond_BD.float())).float()

    @torch.no_grad()
    def generate(self, labels_B: torch.Tensor, generator: torch.Generator | None = None, cfg: float = 1.5,
                 top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
        """Sample (B, L) tokens one at a time with a KV cache and classifier-free guidance (constant cfg)."""
        B = labels_B.shape[0]
        config = self.config
        labels_2B = torch.cat((labels_B, torch.full_like(labels_B, self.num_classes)))
        cond_2BD, mods = self._cond_and_mods(labels_2B)
        cache = KVCache(config.depth, 2 * B, config.num_heads, self.seq_len, config.embed_dim // config.num_heads,
                        self.pos_1LC.device, self.pos_1LC.dtype)
        x_2B1C = cond_2BD.unsqueeze(1) + self.pos_start + self.pos_1LC[:, :1]
        out = torch.empty(B, self.seq_len, dtype=torch.long, device=labels_B.device)
        for i in range(self.seq_len):
            for block, mod in zip(self.blocks, mods):
                x_2B1C = block(x_2B1C, mod, None, cache)
            cache.advance(1)
            logits_2BV = self.head(self.head_nm(x_2B1C.float(), cond_2BD.float())).float()[:, 0]
            logits_BV = (1 + cfg) * logits_2BV[:B] - cfg * logits_2BV[B:]
            filter_logits(logits_BV, top_k, top_p)
            idx_B = torch.multinomial(logits_BV.softmax(-1), 1, generator=generator).view(B)
            out[:, i] = idx_B
            if i + 1 < self.seq_len:
                x_2B1C = (self.token_embed(idx_B).unsqueeze(1) + self.pos_1LC[:, i + 1:i + 2]).repeat(2, 1, 1)
        return out

    @torch.no_grad()
    def init_weights(self, adaln_gamma: float = 1e-3, head_scale: float = 0.02) -> None:
        """The initialization VAR trains from (spec §2), for a like-for-like comparison."""
        C, depth = self.config.embed_dim, self.config.depth
        std = math.sqrt(1 / (3 * C))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(head_scale)
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * depth))
            w = block.ada_lin[1].weight
            w[:2 * C].mul_(adaln_gamma)
            w[2 * C:].mul_(0.5)
        self.head_nm.ada_lin[1].weight.mul_(0.5)
