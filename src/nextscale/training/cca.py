"""Condition contrastive alignment (CCA): fine-tune a trained VAR so that it samples without guidance.

Chen et al., 2024, "Toward Guidance-Free AR Visual Generation via Condition Contrastive Alignment". Classifier-free
guidance runs every scale twice (the class and the null class); CCA instead moves the model itself towards the
guided distribution, with a frozen copy of the starting model as the reference. For an image x of class c⁺ and a
mismatched class c⁻, with r(c) = log p_θ(x|c) − log p_ref(x|c) (each the sum over all of x's tokens):

    loss = −log σ(β·r(c⁺)) − λ·log σ(−β·r(c⁻))          (averaged over the batch)

so the model raises the likelihood of images under their own class and lowers it under another, relative to where
it started. At the start (θ = ref) r = 0, the loss is (1 + λ)·ln 2 and its gradient −(β/2)·∇log p(x|c⁺) +
(λβ/2)·∇log p(x|c⁻). A fraction of the positives use the null class instead (without a negative), so the null
class keeps modelling unconditional images and guidance still works on the fine-tuned model.

The mismatched class is the batch's labels shifted by one row (a label equal to its row's own moves on to the next
class), so no random numbers are drawn for it; the null rows are drawn from torch's generator, which checkpoints
capture like class dropout's: resume stays exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nextscale.training.var_model import per_scale_sums


# λ from the paper's table per published depth; other depths take the smallest.
PAPER_NEGATIVE_WEIGHT = {16: 50.0, 20: 50.0, 24: 100.0, 30: 1000.0}


def negative_weight(config, depth: int) -> float:
    """λ of a `cca` config section (var_config.CCAConfig) for a model of this depth."""
    if config.negative_weight is not None:
        return float(config.negative_weight)
    return PAPER_NEGATIVE_WEIGHT.get(depth, min(PAPER_NEGATIVE_WEIGHT.values()))


def mismatched_labels(labels_B: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Another class for every row: the label of the previous row, or the next class where that is the same."""
    shifted = labels_B.roll(1)
    return torch.where(shifted == labels_B, (labels_B + 1) % num_classes, shifted)


def token_nll(logits_BLV: torch.Tensor, target_BL: torch.Tensor) -> torch.Tensor:
    """−log p of each token (B, L), in float32."""
    B, L, V = logits_BLV.shape
    return F.cross_entropy(logits_BLV.reshape(-1, V).float(), target_BL.reshape(-1), reduction="none").view(B, L)


def sequence_log_likelihood(logits_BLV: torch.Tensor, target_BL: torch.Tensor) -> torch.Tensor:
    """log p(x|c) of each row: the sum of its tokens' log-probabilities (float32)."""
    return -token_nll(logits_BLV, target_BL).sum(dim=1)


def cca_loss(policy_pos_B, reference_pos_B, policy_neg_B, reference_neg_B, beta: float, lam: float,
             has_negative_B: torch.Tensor | None = None) -> torch.Tensor:
    """−log σ(β·r⁺) − λ·log σ(−β·r⁻), averaged over the rows; rows without a negative add only the first term."""
    positive = -F.logsigmoid(beta * (policy_pos_B - reference_pos_B))
    negative = -F.logsigmoid(-beta * (policy_neg_B - reference_neg_B))
    if has_negative_B is not None:
        negative = negative * has_negative_B.to(negative.dtype)
    return positive.mean() + lam * negative.mean()


class CCAObjective:
    """The loss of one micro-batch, given the policy (trained) and the frozen reference model."""

    def __init__(self, config, reference: torch.nn.Module, num_classes: int, depth: int):
        """config: the `cca` section (var_config.CCAConfig); reference: the frozen starting model."""
        self.beta = config.beta
        self.lam = negative_weight(config, depth)
        self.null_fraction = config.null_fraction
        self.num_classes = num_classes
        self.reference = reference.eval().requires_grad_(False)

    def __call__(self, model, labels_B: torch.Tensor, inputs, target_BL: torch.Tensor, segments):
        """-> (loss, per-scale sums of the positives' cross-entropy and correct tokens, {name: row sum}) as
        `forward_and_stats` returns them, plus the CCA terms to log."""
        B = labels_B.shape[0]
        null_B = torch.rand(B, device=labels_B.device) < self.null_fraction
        positive_B = torch.where(null_B, self.num_classes, labels_B)
        negative_B = mismatched_labels(labels_B, self.num_classes)
        both_labels = torch.cat([positive_B, negative_B])
        both_inputs = torch.cat([inputs, inputs])
        both_targets = torch.cat([target_BL, target_BL])
        logits = model(both_labels, both_inputs)
        nll_BL = token_nll(logits, both_targets)
        policy = -nll_BL.sum(dim=1)
        with torch.no_grad():
            reference = sequence_log_likelihood(self.reference(both_labels, both_inputs), both_targets)
        loss = cca_loss(policy[:B], reference[:B], policy[B:], reference[B:], self.beta, self.lam, ~null_B)
        # The positives' token losses and accuracy, reported like ordinary training's.
        loss_S, correct_S = per_scale_sums(nll_BL[:B], logits[:B], target_BL, segments)
        with torch.no_grad():
            margin = (policy[:B] - reference[:B]) - (policy[B:] - reference[B:])
            extra = {"cca_loss": loss.detach() * B, "cca_margin": margin[~null_B].sum(),
                     "cca_margin_rows": (~null_B).sum().float()}
        return loss, loss_S, correct_S, extra


def check_cca_config(config) -> None:
    """A `cca.enabled` training config needs the trained model to start from (a ConfigError otherwise)."""
    from nextscale.config_schema import ConfigError
    if not config.model.init_from:
        raise ConfigError("cca.enabled fine-tunes a trained model: set model.init_from to its model folder (or "
                          ".pth); its frozen copy is the reference model")
    if config.model.kind != "var":
        raise ConfigError(f"cca.enabled fine-tunes a VAR, not model.kind={config.model.kind}")


def cca_record(sums: dict, rows: float) -> dict:
    """The logged CCA terms of the steps since the last log line: the loss per image, and the mean reward margin
    r(c⁺) − r(c⁻) of the pairs with a negative (it grows from 0 as the model learns to tell the classes apart)."""
    sums = {k: float(v) for k, v in sums.items()}
    record = {"cca_loss": sums.get("cca_loss", 0.0) / max(rows, 1.0)}
    if sums.get("cca_margin_rows"):
        record["cca_margin"] = sums["cca_margin"] / sums["cca_margin_rows"]
    return record
