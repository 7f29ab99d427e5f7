"""Optimizers and learning-rate schedules of both trainers.

VAR training (spec §5): AdamW with betas (0.9, 0.95); no weight decay on biases, norms, and the position, level and start
embeddings, the attention log-scales and the shared-AdaLN offsets. The peak learning rate is
optim.lr when set (absolute, as in train-tokenizer), else base_lr * global_batch / 256 (`scaled_lr`);
it is warmed up linearly, then decayed linearly.

Tokenizer training: one AdamW group over every parameter (and the discriminator's), the rate set every step
by `warmup_then_cosine` (linear warmup, cosine decay to optim.min_lr_ratio). The two schedules stay different: each
trainer's recipes and checkpoints (the VAR scheduler's state) rely on its own.
"""

from __future__ import annotations

import math

import torch

# Parameters that never get weight decay besides biases and 1-d tensors (norm weights): the start,
# position and level embeddings, the attention log-scales and the shared-AdaLN offsets.
NO_DECAY_NAMES = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    parts = name.split(".")
    return (param.ndim <= 1 or name.endswith("bias")
            or any(any(p.startswith(frag) for frag in NO_DECAY_NAMES) for p in parts))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: with and without weight decay (names listed in the group for inspection)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append((name, p))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule of the paper: lr = base_lr * global_batch / 256."""
    return base_lr * global_batch / 256


def build_adamw(model: torch.nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay)
    # `names` is not an AdamW option; keep it out of the optimizer's groups (and out of its state dict).
    groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    kwargs = {}
    if fused is not None:
        kwargs["fused"] = fused
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, **kwargs)


def build_plain_adamw(params, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    """One AdamW group, the same weight decay for every parameter (the tokenizer and its discriminator)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def warmup_then_linear_decay(step: int, warmup_steps: int, total_steps: int, warmup_start: float = 0.005,
                             final: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based).

    Rises linearly from `warmup_start` to 1 over `warmup_steps`, then falls linearly to `final` at `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_start + (1 - warmup_start) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return 1.0 + (final - 1.0) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                    warmup_start: float = 0.005, final: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_then_linear_decay(step, warmup_steps, total_steps, warmup_start, final))


def warmup_then_cosine(step: int, lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """The learning rate of tokenizer training at step `step` (0-based): linear warmup from lr / warmup_steps to
    lr, then cosine decay to lr * min_lr_ratio at `total_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
