"""The models of `nextscale train`: the tokenizer it trains on, the transformer (VAR or the raster-scan AR
baseline) with its initial weights, the teacher-forcing inputs and targets, the loss, and sample images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextscale.config_schema import ConfigError
from nextscale.registry import MODEL_TYPES
from nextscale.training.token_cache import split_scales
from nextscale.training.var_config import ModelConfig


def load_tokenizer(path: str | None, patch_nums=None):
    """The tokenizer `path` names: a train-tokenizer run folder (its model/), a tokenizer folder, a .pth, a preset."""
    from nextscale.checkpoints import load_vae
    if not path:
        raise ConfigError("no tokenizer given: set tokenizer=PATH (a run folder written by `nextscale train-tokenizer`, "
                          "a tokenizer folder, a .pth, or the preset vae-f16c32)")
    vae = load_vae(path)  # the one rule for run folders and checkpoints (checkpoints.resolve_model_path)
    if patch_nums is not None and tuple(patch_nums) != tuple(vae.patch_nums):
        try:
            vae.set_patch_nums(patch_nums)
        except ValueError as e:
            raise ConfigError(f"model.patch_nums {list(patch_nums)} does not fit the tokenizer: {e}") from None
    for p in vae.parameters():
        p.requires_grad_(False)
    return vae.eval()


def build_model(model_config: ModelConfig, vae, num_classes: int):
    """A freshly initialized transformer (VAR or the raster baseline) that fits the tokenizer."""
    common = dict(depth=model_config.depth, embed_dim=model_config.embed_dim, num_heads=model_config.num_heads,
                  num_classes=num_classes, vocab_size=vae.vocab_size, attn_l2_norm=model_config.attn_l2_norm,
                  mlp_ratio=model_config.mlp_ratio, drop_path_rate=model_config.drop_path_rate,
                  class_drop_prob=model_config.class_drop_prob)
    # What each trainable kind of registry.MODEL_TYPES takes from the tokenizer, and its AdaLN init default.
    fitted = {"var": (dict(vae_channels=vae.latent_channels, patch_nums=vae.patch_nums,
                           shared_adaln=model_config.shared_adaln), model_config.init_adaln_gamma),
              "raster_ar": (dict(seq_len=sum(p * p for p in vae.patch_nums)), model_config.init_adaln_gamma or 1e-3)}
    if model_config.kind not in fitted:
        raise ConfigError(f"model.kind must be one of {', '.join(fitted)}, got {model_config.kind!r}")
    extra, adaln_gamma = fitted[model_config.kind]
    kind = MODEL_TYPES[model_config.kind]
    model = kind.build(kind.config_class(**common, **extra))
    model.init_weights(adaln_gamma, model_config.init_head_scale)
    if model_config.init_from:
        _load_initial_weights(model, model_config.init_from)
    model.attach_tokenizer(vae)
    return model


def _load_initial_weights(model, path: str) -> None:
    """Fine-tuning, or a second learning-rate cycle: copy the weights of a trained transformer of the same kind;
    it must fit the tokenizer and the classes."""
    from nextscale.checkpoints import load_raster_ar, load_var
    kind = model.model_type
    try:
        src = load_var(path, patch_nums=model.patch_nums) if kind == "var" else load_raster_ar(path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"model.init_from: {e}") from None
    fields = {"var": ("vocab_size", "vae_channels", "patch_nums", "num_classes", "depth", "embed_dim", "num_heads",
                      "shared_adaln"),
              "raster_ar": ("vocab_size", "seq_len", "num_classes", "depth", "embed_dim", "num_heads")}[kind]
    sc, mc = src.config, model.config
    problems = [f"{name} {getattr(sc, name)} vs {getattr(mc, name)}" for name in fields
                if getattr(sc, name) != getattr(mc, name)]
    if problems:
        raise ConfigError(f"model.init_from {path} does not match the model to train (checkpoint vs config/tokenizer): "
                          + "; ".join(problems))
    model.load_state_dict(src.state_dict())


def model_targets(model, vae, tokens_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model input, target tokens (B, L)) of a batch of concatenated token maps."""
    if model.model_type == "raster_ar":
        return tokens_BL, tokens_BL
    with torch.no_grad():
        teacher_BLCv = vae.teacher_forcing_input(split_scales(tokens_BL, vae.patch_nums))
    return teacher_BLCv, tokens_BL


def segment_sizes(model, vae) -> list[int]:
    """Token counts of the per-scale segments that accuracy and loss are reported on."""
    return [pn * pn for pn in vae.patch_nums]


def forward_and_stats(model, labels_B, inputs, target_BL, segments, label_smoothing: float):
    """Mean cross-entropy over all tokens, and per-scale sums of loss and correct predictions."""
    logits_BLV = model(labels_B, inputs)
    B, L, V = logits_BLV.shape
    loss_BL = F.cross_entropy(logits_BLV.reshape(-1, V).float(), target_BL.reshape(-1),
                              label_smoothing=label_smoothing, reduction="none").view(B, L)
    loss_S, correct_S = per_scale_sums(loss_BL, logits_BLV, target_BL, segments)
    return loss_BL.mean(), loss_S, correct_S


@torch.no_grad()
def per_scale_sums(loss_BL, logits_BLV, target_BL, segments) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale sums of the tokens' loss and of their correct predictions (what the metrics lines report)."""
    correct_BL = (logits_BLV.argmax(-1) == target_BL).float()
    loss_S = torch.stack([seg.sum() for seg in loss_BL.detach().split(segments, dim=1)])
    correct_S = torch.stack([seg.sum() for seg in correct_BL.split(segments, dim=1)])
    return loss_S, correct_S


@torch.no_grad()
def generate_images(model, labels, seed: int, cfg: float, top_k: int, top_p: float) -> torch.Tensor:
    """Images in [0, 1] from a VAR or the raster baseline (its tokenizer attached)."""
    device = next(model.parameters()).device
    if model.model_type == "raster_ar":
        g = torch.Generator(device=device).manual_seed(seed)
        tokens = model.generate(torch.as_tensor(labels, device=device), g, cfg, top_k, top_p)
        vae = model.tokenizer
        return vae.decode_tokens(split_scales(tokens, vae.patch_nums)).add(1).mul(0.5)
    from nextscale.sampling import sample
    return sample(model, labels=labels, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p).images
