"""The VAR transformer: class-conditional, AdaLN, block-causal next-scale prediction (spec §2).

Module and parameter names follow the published state dicts (`var_d16.pth` ... `var_d36.pth`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nextscale.config_schema import AT_LEAST_1, BELOW_ONE, FRACTION, POSITIVE, ConfigDict, Range
from nextscale.model_folder import save_pretrained
from nextscale.tokenizer.vqvae import PATCH_NUMS_256


@dataclass
class VARConfig(ConfigDict):
    """Architecture of a VAR transformer. `embed_dim`/`num_heads` default to 64*depth / depth."""

    depth: int = 16
    embed_dim: int | None = None
    num_heads: int | None = None
    num_classes: int = 1000
    vocab_size: int = 4096
    vae_channels: int = 32
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    shared_adaln: bool = False
    attn_l2_norm: bool = True
    mlp_ratio: float = 4.0
    drop_path_rate: float | None = None  # default 0.1 * depth / 24
    class_drop_prob: float = 0.1
    norm_eps: float = 1e-6

    RANGES = {"depth": AT_LEAST_1, "embed_dim": AT_LEAST_1, "num_heads": AT_LEAST_1, "num_classes": AT_LEAST_1,
              "vocab_size": AT_LEAST_1, "vae_channels": AT_LEAST_1, "patch_nums": Range(low=1, min_items=1),
              "mlp_ratio": POSITIVE, "drop_path_rate": BELOW_ONE, "class_drop_prob": FRACTION, "norm_eps": POSITIVE}

    def __post_init__(self):
        if self.embed_dim is None:
            self.embed_dim = 64 * self.depth
        if self.num_heads is None:
            self.num_heads = self.depth
        if self.drop_path_rate is None:
            self.drop_path_rate = 0.1 * self.depth / 24
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def seq_len(self) -> int:
        return sum(pn * pn for pn in self.patch_nums)


class KVCache:
    """Preallocated keys and values for every block, filled scale by scale during sampling."""

    def __init__(self, depth: int, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.empty(depth, batch, heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0  # tokens already stored (committed after every block ran on a scale)

    def append(self, block_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.k[block_idx, :, :, self.length:end] = k
        self.v[block_idx, :, :, self.length:end] = v
        return self.k[block_idx, :, :, :end], self.v[block_idx, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens

    def keep_rows(self, rows: int) -> None:
        """Keep only the first `rows` batch rows (a view): sampling drops the unconditional half this way
        when guidance stops (a truncated guidance schedule), so the later scales attend over half the keys."""
        self.k = self.k[:, :rows]
        self.v = self.v[:, :rows]


# oneDNN's linear kernel (the one torch.compile's CPU backend emits) beats the default GEMM on the
# transformer's short, wide activations and fuses the MLP's GELU: var-d16 sampling at 256px on 2 cores,
# transformer 2.56 s -> 2.30 s, same tokens. It has no backward: with autograd F.linear runs instead.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """F.linear, then tanh-GELU if `gelu`: through oneDNN for float32 CPU inference, else as written."""
    if (_ONEDNN_LINEAR is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return _ONEDNN_LINEAR(x, weight, bias, "gelu" if gelu else "none", [], "tanh" if gelu else "")
    out = F.linear(x, weight, bias)
    return F.gelu(out, approximate="tanh") if gelu else out


def apply_linear(layer: nn.Module, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """`layer(x)` (then tanh-GELU), via `linear` for a plain nn.Linear without hooks; any other module
    (e.g. int8, see sampling.quantize_int8) is called as it is."""
    if type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks):
        return linear(x, layer.weight, layer.bias, gelu)
    out = layer(x)
    return F.gelu(out, approximate="tanh") if gelu else out


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class SelfAttention(nn.Module):
    """Multi-head attention with fused qkv (no k bias) and optional L2-normalized q, k."""

    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x_BLC: torch.Tensor, attn_bias: torch.Tensor | None,
                kv_cache: KVCache | None = None, block_idx: int = 0) -> torch.Tensor:
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        if isinstance(self.mat_qkv, nn.Linear):
            qkv = linear(x_BLC, self.mat_qkv.weight, bias)
        else:  # a swapped-in projection (int8, see sampling.quantize_int8) applies its own weight
            qkv = self.mat_qkv(x_BLC) + bias
        qkv = qkv.view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, c)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q = F.normalize(q, dim=-1) * scale_mul
            k = F.normalize(k, dim=-1)
        if kv_cache is not None:
            k, v = kv_cache.append(block_idx, k, v)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)
        return apply_linear(self.proj, out.transpose(1, 2).reshape(B, L, C))


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.fc2, apply_linear(self.fc1, x, gelu=True))


class AdaLNBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by the class embedding."""

    def __init__(self, config: VARConfig, block_idx: int, drop_path: float):
        super().__init__()
        C = config.embed_dim
        self.embed_dim = C
        self.shared_adaln = config.shared_adaln
        self.block_idx = block_idx
        self.norm_eps = config.norm_eps
        self.attn = SelfAttention(C, config.num_heads, config.attn_l2_norm)
        self.ffn = FeedForward(C, round(C * config.mlp_ratio))
        self.drop_path = DropPath(drop_path)
        if self.shared_adaln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def modulation(self, cond_BD: torch.Tensor, shared_B16C: torch.Tensor | None) -> torch.Tensor:
        """(B, 1, 6, C): gamma1, gamma2, scale1, scale2, shift1, shift2."""
        if self.shared_adaln:
            return self.ada_gss + shared_B16C
        return self.ada_lin(cond_BD).view(-1, 1, 6, self.embed_dim)

    def forward(self, x_BLC: torch.Tensor, mod_B16C: torch.Tensor, attn_bias: torch.Tensor | None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod_B16C.unbind(2)
        ln = lambda t: F.layer_norm(t, (self.embed_dim,), eps=self.norm_eps)
        h = self.attn(ln(x_BLC) * (1 + scale1) + shift1, attn_bias, kv_cache, self.block_idx)
        x_BLC = x_BLC + self.drop_path(h * gamma1)
        h = self.ffn(ln(x_BLC) * (1 + scale2) + shift2)
        return x_BLC + self.drop_path(h * gamma2)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, embed_dim: int, norm_eps: float):
        super().__init__()
        self.embed_dim = embed_dim
        self.norm_eps = norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * embed_dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.embed_dim).unbind(2)
        return F.layer_norm(x_BLC, (self.embed_dim,), eps=self.norm_eps) * (1 + scale) + shift


class VAR(nn.Module):
    """Class-conditional next-scale prediction transformer."""

    model_type = "var"  # written to config.json; the raster baseline says "raster_ar"

    def __init__(self, config: VARConfig | None = None, **overrides):
        super().__init__()
        # What config.json holds beside the architecture: class_names, sampling (cfg, top_k, top_p), trained_steps.
        self.extra_config: dict = {}
        config = dataclasses.replace(config or VARConfig(), **overrides)
        self.config = config
        C, L = config.embed_dim, config.seq_len
        self.num_classes = config.num_classes
        self.patch_nums = config.patch_nums
        self.first_l = config.patch_nums[0] ** 2
        self.class_drop_prob = config.class_drop_prob
        self._tokenizer: list = []  # a list, so that the tokenizer is not registered as a submodule

        self.word_embed = nn.Linear(config.vae_channels, C)
        self.class_emb = nn.Embedding(config.num_classes + 1, C)  # last row: the null class
        self.pos_start = nn.Parameter(torch.zeros(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.zeros(1, L, C))
        self.lvl_embed = nn.Embedding(len(config.patch_nums), C)
        if config.shared_adaln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        drop_paths = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList([AdaLNBlock(config, i, drop_paths[i]) for i in range(config.depth)])
        self.head_nm = AdaLNBeforeHead(C, config.norm_eps)
        self.head = nn.Linear(C, config.vocab_size)

        scale_of_token = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(config.patch_nums)])
        self.register_buffer("lvl_1L", scale_of_token.view(1, L))
        # Block-causal mask: token i sees token j iff scale(j) <= scale(i).
        mask = torch.where(scale_of_token.view(L, 1) >= scale_of_token.view(1, L), 0.0, -torch.inf)
        self.register_buffer("attn_bias_for_masking", mask.view(1, 1, L, L))

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def tokenizer(self):
        """The VQ-VAE this transformer samples with (not a submodule: it is saved separately)."""
        return self._tokenizer[0] if self._tokenizer else None

    def attach_tokenizer(self, vae) -> None:
        """Attach the tokenizer used by sampling and editing; it must match vocabulary and channels."""
        problems = []
        if vae.vocab_size != self.config.vocab_size:
            problems.append(f"vocabulary {vae.vocab_size} vs {self.config.vocab_size}")
        if vae.latent_channels != self.config.vae_channels:
            problems.append(f"latent channels {vae.latent_channels} vs {self.config.vae_channels}")
        if problems:
            raise ValueError("the tokenizer does not match this transformer: " + "; ".join(problems))
        if tuple(vae.patch_nums) != tuple(self.patch_nums):
            vae.set_patch_nums(self.patch_nums)
        self._tokenizer = [vae]

    def save_pretrained(self, folder) -> Path:
        """Write this model as `config.json` + `model.safetensors` in `folder`."""
        return save_pretrained(self, folder)


    def block_modulations(self, cond_BD: torch.Tensor) -> list[torch.Tensor]:
        """AdaLN parameters of every block; depend only on the class, so sampling computes them once."""
        shared = None
        if self.config.shared_adaln:
            shared = self.shared_ada_lin(cond_BD).view(-1, 1, 6, self.config.embed_dim)
        return [block.modulation(cond_BD, shared) for block in self.blocks]

    def logits(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return apply_linear(self.head, self.head_nm(x_BLC.float(), cond_BD.float())).float()

    def level_position(self, start: int, end: int) -> torch.Tensor:
        """Level + position embedding of token positions [start, end): (1, end-start, C)."""
        return self.lvl_embed(self.lvl_1L[:, start:end]) + self.pos_1LC[:, start:end]

    def first_scale_input(self, cond_BD: torch.Tensor) -> torch.Tensor:
        B = cond_BD.shape[0]
        sos = cond_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
        return sos + self.level_position(0, self.first_l)

    # ------------------------------------------------------------------ training forward
    def forward(self, labels_B: torch.Tensor, teacher_input_BLCv: torch.Tensor) -> torch.Tensor:
        """Teacher forcing over all scales: labels (B,), input (B, L - first_l, Cvae) -> logits (B, L, V).

        In training mode each label is replaced by the null class with probability `class_drop_prob`.
        """
        B = labels_B.shape[0]
        L = self.seq_len
        if teacher_input_BLCv.shape[1:] != (L - self.first_l, self.config.vae_channels):
            raise ValueError(f"teacher-forcing input must be (B, {L - self.first_l}, {self.config.vae_channels}), "
                             f"got {tuple(teacher_input_BLCv.shape)}")
        if self.training and self.class_drop_prob > 0:
            drop = torch.rand(B, device=labels_B.device) < self.class_drop_prob
            labels_B = torch.where(drop, self.num_classes, labels_B)
        cond_BD = self.class_emb(labels_B)
        x_BLC = torch.cat((self.first_scale_input(cond_BD),
                           self.word_embed(teacher_input_BLCv.float()) + self.level_position(self.first_l, L)), dim=1)
        mods = self.block_modulations(cond_BD)
        attn_bias = self.attn_bias_for_masking[:, :, :L, :L]
        for block, mod in zip(self.blocks, mods):
            x_BLC = block(x_BLC, mod, attn_bias)
        return self.logits(x_BLC, cond_BD)

    # ------------------------------------------------------------------ incremental (KV-cached) forward
    def new_kv_cache(self, batch: int, device=None, dtype=None) -> KVCache:
        cfg = self.config
        ref = self.pos_1LC
        return KVCache(cfg.depth, batch, cfg.num_heads, self.seq_len, cfg.embed_dim // cfg.num_heads,
                       device or ref.device, dtype or ref.dtype)

    def forward_scale(self, x_BlC: torch.Tensor, cond_BD: torch.Tensor, mods: Sequence[torch.Tensor],
                      kv_cache: KVCache) -> torch.Tensor:
        """Run one scale's tokens (already embedded) through the blocks; they attend to all cached
        coarser scales and to each other. Returns logits (B, l, V)."""
        for block, mod in zip(self.blocks, mods):
            x_BlC = block(x_BlC, mod, None, kv_cache)
        kv_cache.advance(x_BlC.shape[1])
        return self.logits(x_BlC, cond_BD)

    def embed_scale_input(self, next_input_BCvhw: torch.Tensor, scale_idx: int) -> torch.Tensor:
        """Area-downsampled f_hat at scale `scale_idx`'s size -> embedded tokens of that scale."""
        start = sum(pn * pn for pn in self.patch_nums[:scale_idx])
        end = start + self.patch_nums[scale_idx] ** 2
        x = next_input_BCvhw.flatten(2).transpose(1, 2)
        return self.word_embed(x) + self.level_position(start, end)

    def forward_incremental(self, labels_B: torch.Tensor, teacher_input_BLCv: torch.Tensor) -> torch.Tensor:
        """Same logits as `forward` in eval mode, computed scale by scale with the KV cache."""
        cond_BD = self.class_emb(labels_B)
        mods = self.block_modulations(cond_BD)
        cache = self.new_kv_cache(labels_B.shape[0])
        outs = [self.forward_scale(self.first_scale_input(cond_BD), cond_BD, mods, cache)]
        pos = 0
        for si in range(1, len(self.patch_nums)):
            l = self.patch_nums[si] ** 2
            x = self.word_embed(teacher_input_BLCv[:, pos:pos + l].float())
            x = x + self.level_position(self.first_l + pos, self.first_l + pos + l)
            outs.append(self.forward_scale(x, cond_BD, mods, cache))
            pos += l
        return torch.cat(outs, dim=1)

    # ------------------------------------------------------------------ initialization
    @torch.no_grad()
    def init_weights(self, adaln_gamma: float | None = None, head_scale: float = 0.02) -> None:
        """Initialization for training from scratch (spec §2)."""
        cfg = self.config
        C = cfg.embed_dim
        std = math.sqrt(1 / (3 * C))
        if adaln_gamma is None:
            # 1e-3 at depth 16 down to 5e-6 at depth 36, log-linear in between.
            t = min(max((cfg.depth - 16) / 20, 0.0), 1.0)
            adaln_gamma = math.exp(math.log(1e-3) * (1 - t) + math.log(5e-6) * t)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        for p in (self.pos_start, self.pos_1LC):
            nn.init.trunc_normal_(p, std=std)
        self.head.weight.mul_(head_scale)
        self.head.bias.zero_()
        for block in self.blocks:
            block.attn.proj.weight.div_(math.sqrt(2 * cfg.depth))
            block.ffn.fc2.weight.div_(math.sqrt(2 * cfg.depth))
            block.attn.q_bias.zero_()
            block.attn.v_bias.zero_()
            if not cfg.shared_adaln:
                w = block.ada_lin[1].weight
                w[:2 * C].mul_(adaln_gamma)
                w[2 * C:].mul_(0.5)
            else:
                block.ada_gss.normal_(std=std)
        if cfg.shared_adaln:
            w = self.shared_ada_lin[1].weight
            w[:2 * C].mul_(adaln_gamma)
            w[2 * C:].mul_(0.5)
            self.shared_ada_lin[1].bias.zero_()
        self.head_nm.ada_lin[1].weight.mul_(0.5)
        self.head_nm.ada_lin[1].bias.zero_()
