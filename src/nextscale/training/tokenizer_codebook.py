"""Codebook health of tokenizer training: usage per scale, and restarts of codes no scale uses.

Usage per scale comes from the model's `ema_vocab_hit_SV` buffer; codes that no scale used during the last
`codebook.restart_every` steps are re-initialized from recent quantizer inputs (the per-scale residuals of the
encoder output), and their Adam moments reset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextscale.tokenizer.vqvae import VQVAE


@torch.no_grad()
def quantizer_inputs(vae: VQVAE, f_BChw: torch.Tensor) -> torch.Tensor:
    """(N, C): the vectors the codebook is matched against at every scale (the residual, area-downsampled)."""
    q = vae.quantize
    _, f_hats = q.tokenize(f_BChw)
    rows = []
    for si, pn in enumerate(q.patch_nums):
        rest = f_BChw - (f_hats[si - 1] if si > 0 else 0)
        z = rest if si == q.num_scales - 1 else F.interpolate(rest, size=(pn, pn), mode="area")
        rows.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]))
    return torch.cat(rows)


@torch.no_grad()
def restart_dead_codes(vae: VQVAE, hits_V: torch.Tensor, candidates_NC: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Re-initialize every code with zero hits to a randomly chosen candidate vector; returns their indices.

    Call on every rank with the same arguments (the trainer broadcasts rank 0's candidates)."""
    dead = torch.nonzero(hits_V == 0).flatten()
    if len(dead) == 0 or len(candidates_NC) == 0:
        return dead[:0]
    n = len(candidates_NC)
    if n >= len(dead):
        pick = torch.randperm(n, generator=generator)[:len(dead)]
        new = candidates_NC[pick]
    else:  # fewer candidates than dead codes: reuse them with a little noise so the codes differ
        pick = torch.randint(0, n, (len(dead),), generator=generator)
        new = candidates_NC[pick]
        new = new + 0.01 * new.std() * torch.randn(new.shape, generator=generator)
    weight = vae.quantize.embedding.weight
    weight[dead.to(weight.device)] = new.to(weight)
    return dead


def reset_optimizer_rows(optimizer: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    """Zero Adam's moments for some rows of a parameter (restarted codes start with fresh statistics)."""
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows.to(state[key].device)] = 0


def usage_per_scale(vae: VQVAE, threshold: float) -> list[float]:
    """Fraction of the vocabulary whose EMA hit count exceeds `threshold`, per scale."""
    return (vae.quantize.ema_vocab_hit_SV > threshold).float().mean(1).tolist()
