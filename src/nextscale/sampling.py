"""Class-conditional sampling with classifier-free guidance, top-k/top-p and KV caching (spec §3).

Random-number protocol (reproduces the reference sampler token for token): one generator seeded
with the seed; labels, when not given, are drawn first with one multinomial over a uniform class
distribution; then per scale one `torch.multinomial` over the (B*l, V) filtered probabilities, and
in "more smooth" mode one `exponential_` draw of shape (B, l, V) for the Gumbel noise after it.

Beyond the paper's sampler (each off by default, so the default path is the reference's):
- guidance schedules (`GuidanceSchedule`): the paper's linear ramp, a constant weight, or a ramp truncated
  after the first N scales (the unconditional half of the batch and of the KV cache dropped after it);
- collaborative decoding: a second transformer on the same tokenizer (`refiner`) samples the scales from
  `switch_at` on, its KV cache first filled by replaying the scales before it;
- rejection sampling (`reject_with`, `keep`; `nextscale.rejection`): more candidates than asked for, the
  ones a classifier rates most likely to be their class kept.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from nextscale import rejection as rj
from nextscale.inference_options import (as_label_tensor, check_seed, make_generator, precision_context,
                                         resolve_sampling, seeded_generators)
from nextscale.threads import uses_free_cores
from nextscale.transformer.logits import filter_logits
from nextscale.transformer.var import VAR

# Guidance beyond this only saturates the logits (the published settings use 1.5 to 4; the web app's bound too).


@dataclass
class SampleOutput:
    """`images` (B, C, H, W) in [0, 1]; `tokens` one LongTensor (B, pn*pn) per scale; `labels` (B,).

    With rejection sampling also `scores` (B,): the classifier's probability of each image's class, and
    `candidates` (B,): which candidate of the call each image is (with per_image_seeds: its seed is seed +
    candidate)."""

    images: torch.Tensor
    tokens: list[torch.Tensor]
    labels: torch.Tensor
    scores: torch.Tensor | None = None
    candidates: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------- guidance schedules
GUIDANCE_KINDS = ("linear", "constant", "truncated")


@dataclass(frozen=True)
class GuidanceSchedule:
    """How the guidance weight t of scale k (of K) follows `cfg`; logits = (1+t)·cond - t·uncond.

    "linear" (the paper's, the default): t = cfg·k/(K-1). "constant": t = cfg at every scale.
    "truncated" with `scales` N: the linear ramp on the first N scales and no guidance after: from scale N
    on the unconditional half of the batch and of the KV cache is dropped, so those scales cost half.
    N = K is the linear ramp exactly; N = 0 samples without guidance and never runs the null class.
    Written "linear", "constant", "truncated:N" (`parse_guidance`; str() gives these back).
    """

    kind: str = "linear"
    scales: int | None = None  # "truncated": how many scales are guided

    def __str__(self) -> str:
        return f"truncated:{self.scales}" if self.kind == "truncated" else self.kind

    def guided(self, si: int) -> bool:
        """Whether scale si runs the unconditional rows (and mixes them in)."""
        return self.kind != "truncated" or si < self.scales

    def weight(self, cfg: float, si: int, num_scales: int) -> float:
        if self.kind == "constant":
            return cfg
        ratio = si / (num_scales - 1) if num_scales > 1 else 1.0
        return cfg * ratio


def without_null_pass_at_cfg_0(schedule: GuidanceSchedule, cfg: float) -> GuidanceSchedule:
    """cfg 0 (a guidance-free model's, e.g. after CCA): no null-class rows at all, one pass per scale."""
    return GuidanceSchedule("truncated", 0) if cfg == 0 else schedule


def parse_guidance(value, num_scales: int, name: str = "guidance") -> GuidanceSchedule:
    """"linear" / "constant" / "truncated:N" (N a whole number in [0, num_scales]), a GuidanceSchedule, or
    None (linear) -> a checked GuidanceSchedule; else a ValueError naming the forms under `name`."""
    forms = (f"'linear' (the paper's ramp, the default), 'constant', or 'truncated:N' with N a whole number in "
             f"[0, {num_scales}] (guidance on the first N of the {num_scales} scales only)")
    if value is None:
        return GuidanceSchedule()
    if isinstance(value, GuidanceSchedule):
        kind, scales = value.kind, value.scales
    elif isinstance(value, str):
        text = value.strip().lower()
        kind, _, count = (part.strip() for part in text.partition(":"))
        scales = None
        if kind == "truncated":
            if not (count.isascii() and count.isdigit()):
                raise ValueError(f"{name} must be {forms}, got {value!r}")
            scales = int(count)
        elif count:
            raise ValueError(f"{name} must be {forms}, got {value!r}")
    else:
        raise ValueError(f"{name} must be {forms}, got {value!r}")
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"{name} must be {forms}, got {value!r}")
    if kind == "truncated":
        if isinstance(scales, bool) or not isinstance(scales, (int, np.integer)) or not 0 <= scales <= num_scales:
            raise ValueError(f"{name} must be {forms}, got {str(value)!r}")
        return GuidanceSchedule("truncated", int(scales))
    if scales is not None:
        raise ValueError(f"{name} must be {forms}, got {value!r}")
    return GuidanceSchedule(kind)


def guidance_choices(num_scales: int) -> list[str]:
    """Every schedule for a model of `num_scales` scales, as strings (the web page's choices)."""
    return ["linear", "constant"] + [f"truncated:{n}" for n in range(num_scales)]


Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def draw_tokens(probs_BlV: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One multinomial draw per token: (B, l). A list of generators draws row b with generator b."""
    B, l, V = probs_BlV.shape
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.multinomial(probs_BlV[b], 1, replacement=True, generator=g).view(l)
                            for b, g in enumerate(generator)])
    return torch.multinomial(probs_BlV.view(-1, V), 1, replacement=True, generator=generator).view(B, l)


def gumbel_noise(like_BlV: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Gumbel(0, 1) noise from one `exponential_` draw (per row with a list of generators)."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([-torch.empty_like(like_BlV[b]).exponential_(generator=g).log()
                            for b, g in enumerate(generator)])
    return -torch.empty_like(like_BlV).exponential_(generator=generator).log()


def gumbel_soft_codes(logits_BlV: torch.Tensor, tau: float, codebook_VC: torch.Tensor,
                      generator: Generators) -> torch.Tensor:
    """softmax((logits + Gumbel noise) / tau) @ codebook: (B, l, C)."""
    return ((logits_BlV + gumbel_noise(logits_BlV, generator)) / tau).softmax(dim=-1) @ codebook_VC


def _tokenizer_of(var: VAR):
    vae = getattr(var, "tokenizer", None)
    if vae is None:
        raise ValueError("this transformer has no tokenizer attached: load it with "
                         "nextscale.load_var(path, vae=vae) or call var.attach_tokenizer(vae)")
    return vae


def _same_tokenizer(a, b) -> bool:
    """Whether two tokenizers are one (the same object, or the same configuration and weights)."""
    if a is b:
        return True
    if a.config.to_dict() != b.config.to_dict():
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k].to(sa[k].device))
                                          for k in sa)


def check_refiner(var: VAR, refiner, switch_at, compare_tokenizers: bool = True) -> None:
    """Refuse (ValueError, one line) a collaborative-decoding request that cannot work: a refiner without
    switch_at or the reverse, switch_at outside [1, K-1], a refiner of other scales, vocabulary, latent
    channels or classes, one on another tokenizer (compared weight by weight) or on another device."""
    if refiner is None:
        raise ValueError("switch_at is the scale from which a refiner samples: pass refiner= too, or leave "
                         "switch_at out")
    K = len(var.patch_nums)
    if switch_at is None:
        raise ValueError(f"refiner needs switch_at: the first scale it samples, a whole number in [1, {K - 1}]")
    if not (hasattr(refiner, "forward_scale") and hasattr(refiner, "patch_nums")):
        raise ValueError(f"refiner must be a VAR transformer (nextscale.load_var), got {type(refiner).__name__}")
    if isinstance(switch_at, bool) or not isinstance(switch_at, (int, np.integer)) or not 1 <= switch_at <= K - 1:
        raise ValueError(f"switch_at must be a whole number in [1, {K - 1}] (the first scale the refiner samples; "
                         f"the model samples the scales before it), got {switch_at!r}")
    differences = [f"{what} {theirs} vs the model's {ours}" for what, ours, theirs in (
        ("scales", tuple(var.patch_nums), tuple(refiner.patch_nums)),
        ("vocabulary", var.config.vocab_size, refiner.config.vocab_size),
        ("latent channels", var.config.vae_channels, refiner.config.vae_channels),
        ("classes", var.num_classes, refiner.num_classes)) if ours != theirs]
    theirs = getattr(refiner, "tokenizer", None)
    if (not differences and compare_tokenizers and theirs is not None
            and not _same_tokenizer(_tokenizer_of(var), theirs)):
        differences.append("another tokenizer (its weights differ from the model's)")
    if differences:
        raise ValueError("the refiner does not fit the model: " + "; ".join(differences) + ": collaborative "
                         "decoding needs two transformers trained on the same tokenizer, with the same classes")
    if refiner.pos_1LC.device != var.pos_1LC.device:
        raise ValueError(f"the refiner is on {refiner.pos_1LC.device}, the model on {var.pos_1LC.device}: move "
                         f"both to one device")


@torch.no_grad()
def generate_tokens(var: VAR, labels_B: torch.Tensor, generator: Generators, cfg: float = 1.5,
                    top_k: int = 0, top_p: float = 0.0, more_smooth: bool = False,
                    forced: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                    on_scale: Callable[[int, list[torch.Tensor]], None] | None = None,
                    guidance: GuidanceSchedule | str = "linear", refiner: VAR | None = None,
                    switch_at: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Sample token maps scale by scale; returns (tokens per scale, final f_hat).

    After each scale, `on_scale(si, token maps so far)` is called when given (a progress bar; showing
    the image coarse to fine); it may raise to stop sampling early.

    `forced[k] = (known_idx_Bl, keep_Bl)`, when given, replaces the sampled codes of scale k by the
    known ones wherever `keep_Bl` is True (zero-shot editing). Sampling still draws every token, so
    the random stream does not depend on the mask.

    `guidance`: the schedule of the guidance weight over the scales (`parse_guidance`; default the paper's
    linear ramp). `refiner`, `switch_at`: collaborative decoding. `var` samples scales 0 .. switch_at-1, then
    `refiner` (a transformer on the same tokenizer; `sample` compares the tokenizers, this function only
    the shapes) samples the rest, with its own KV cache, filled first by running it on the inputs of the
    scales before switch_at, scale by scale, as if it had sampled them itself. With refiner = var the tokens
    are those of plain sampling, exactly.
    """
    vae = _tokenizer_of(var)
    quantizer = vae.quantize
    patch_nums = var.patch_nums
    K = len(patch_nums)
    schedule = parse_guidance(guidance, K)
    if refiner is not None or switch_at is not None:
        check_refiner(var, refiner, switch_at, compare_tokenizers=False)
    B = labels_B.shape[0]
    codebook = quantizer.embedding.weight

    def rows_at(si: int) -> int:
        """Rows of the batch at scale si: the conditional ones, then, while guided, the null class's."""
        return 2 * B if schedule.guided(si) else B

    def start(model: VAR, rows: int):
        """Class conditioning, block modulations and an empty KV cache of `model` for `rows` rows."""
        labels = torch.cat((labels_B, torch.full_like(labels_B, model.num_classes))) if rows > B else labels_B
        cond = model.class_emb(labels)
        mods = model.block_modulations(cond)
        device_type = cond.device.type
        # Under autocast keys/values come out in the low precision: store them so.
        cache_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        return cond, mods, model.new_kv_cache(rows, dtype=cache_dtype)

    def embed(model: VAR, next_input: torch.Tensor, si: int, rows: int) -> torch.Tensor:
        x = model.embed_scale_input(next_input, si)
        return x.repeat(2, 1, 1) if rows > B else x

    model = var
    rows = rows_at(0)
    cond, mods, cache = start(model, rows)
    x = model.first_scale_input(cond)
    size = patch_nums[-1]
    f_hat = codebook.new_zeros(B, quantizer.channels, size, size)
    inputs = []  # each scale's input (area-down f_hat), replayed into the refiner's cache when it takes over
    tokens = []
    for si, pn in enumerate(patch_nums):
        ratio = si / (K - 1) if K > 1 else 1.0
        if refiner is not None and si == switch_at:
            model, rows = refiner, rows_at(si)
            cond, mods, cache = start(model, rows)
            model.forward_scale(model.first_scale_input(cond), cond, mods, cache)
            for s in range(1, si):
                model.forward_scale(embed(model, inputs[s - 1], s, rows), cond, mods, cache)
            x = embed(model, inputs[si - 1], si, rows)
        elif rows > rows_at(si):  # guidance ends here: drop the null-class rows, in the cache too
            rows = B
            cond, mods = cond[:B], [m[:B] for m in mods]
            cache.keep_rows(B)
        logits = model.forward_scale(x, cond, mods, cache)
        if rows > B:
            t = schedule.weight(cfg, si, K)
            logits_BlV = (1 + t) * logits[:B] - t * logits[B:]
        else:
            logits_BlV = logits
        filter_logits(logits_BlV, top_k, top_p)
        idx_Bl = draw_tokens(logits_BlV.softmax(dim=-1), generator)
        keep_Bl = None
        if forced is not None:
            known_idx_Bl, keep_Bl = forced[si]
            idx_Bl = torch.where(keep_Bl, known_idx_Bl, idx_Bl)
        h_BlC = quantizer.embedding(idx_Bl)
        if more_smooth:
            tau = max(0.27 * (1 - 0.95 * ratio), 0.005)
            soft_BlC = gumbel_soft_codes(logits_BlV * (1 + ratio), tau, codebook, generator)
            # Forced (kept) positions keep their exact code, not the soft mixture.
            h_BlC = soft_BlC if keep_Bl is None else torch.where(keep_Bl.unsqueeze(-1), h_BlC, soft_BlC)
        tokens.append(idx_Bl)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, quantizer.channels, pn, pn)
        f_hat, next_input = quantizer.add_scale(f_hat, h_BChw, si)
        if next_input is not None:
            if refiner is not None:
                inputs.append(next_input)
            if refiner is None or si + 1 != switch_at:  # else the refiner embeds it itself
                x = embed(model, next_input, si + 1, rows_at(si + 1))
        if on_scale is not None:
            on_scale(si, tokens)
    return tokens, f_hat


_int8_copies: "weakref.WeakKeyDictionary[VAR, tuple]" = weakref.WeakKeyDictionary()


def quantize_int8(var: VAR) -> VAR:
    """A copy of `var` whose transformer-block linear layers (qkv, projection, MLP) use dynamic int8
    quantization (int8 weights per tensor, activations quantized on the fly; CPU only). The AdaLN,
    embedding and output-head layers stay float32. Shares the attached tokenizer."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
    spec = {name: default_dynamic_qconfig for name, m in var.named_modules()
            if name.startswith("blocks.") and isinstance(m, nn.Linear) and ".ada_lin" not in name}
    tokenizer, var._tokenizer = var._tokenizer, []  # not deep-copied
    try:
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            quantized = quantize_dynamic(var, spec, dtype=torch.qint8)
    finally:
        var._tokenizer = tokenizer
    quantized._tokenizer = tokenizer
    return quantized.eval()


def _int8_copy(var: VAR) -> VAR:
    """`quantize_int8(var)`, cached until a parameter of `var` changes (in place or replaced)."""
    key = tuple((p.data_ptr(), p._version) for p in var.parameters())
    cached = _int8_copies.get(var)
    if cached is None or cached[0] != key:
        cached = (key, quantize_int8(var))
        _int8_copies[var] = cached
    return cached[1]


def request_generator(seed: int | None, per_image_seeds: bool, generator: Generators, count: int | None,
                      device) -> Generators:
    """The generator(s) of a request: `generator` when given; else one generator seeded with `seed` (the
    reference protocol); with `per_image_seeds`, one generator per image, image i seeded with seed + i."""
    if per_image_seeds:
        if generator is not None:
            raise ValueError("per_image_seeds=True makes one generator per image from seed: do not pass generator too")
        if seed is None:
            raise ValueError("per_image_seeds=True needs a seed (image i uses seed + i)")
        seed = check_seed(seed, count)
        return seeded_generators(range(seed, seed + count), device)
    return generator if generator is not None else make_generator(seed, device)


@torch.no_grad()
@uses_free_cores
def sample(var: VAR, labels=None, seed: int | None = None, cfg: float | None = None, top_k: int | None = None,
           top_p: float | None = None, more_smooth: bool = False, batch_size: int | None = None,
           generator: Generators = None, num_samples: int | None = None, progress: bool = False,
           precision: str = "float32", on_scale: Callable[[int, list[torch.Tensor]], None] | None = None,
           per_image_seeds: bool = False, guidance: GuidanceSchedule | str = "linear", refiner: VAR | None = None,
           switch_at: int | None = None, reject_with=None, keep: float | None = None) -> SampleOutput:
    """Generate images.

    labels: class ids, class names (case-insensitive, from `var.extra_config["class_names"]`) or both
    mixed, e.g. `["Dress", "Coat", 3]`; a tensor of ids; "null" or the id `var.num_classes` samples
    unconditionally. None draws `num_samples` (default 1) labels uniformly. An unknown name is a
    ValueError listing the model's class names.

    cfg / top_k / top_p: None (the default) takes the model's recommendation (`recommended_sampling(var)`:
    `var.extra_config["sampling"]`, else the published 1.5 / 900 / 0.96), as `nextscale sample` does.
    top_k 0 and top_p 0 disable the filter.

    Randomness, two conventions:
    - `seed=s` alone: one CPU generator seeded with s is shared by the whole request and drawn in
      batch order (the reference implementation's protocol); the images then depend on `batch_size`.
    - `seed=s, per_image_seeds=True`: image i is sampled with its own generator seeded with s + i, the
      convention of `nextscale sample --seed s` and the web app: image i equals the command line's
      image i (same labels), whatever the batch size or the number of images.
    `generator` may be passed instead of a seed: one generator, or a list with one generator per image
    (see `seeded_generators`; per_image_seeds=True is the shorthand for seeded_generators(s, s+1, ...)).

    precision: "float32" (default) is exact. The others are faster and not exact (tokens may differ
    from the float32 path; `make bench` measures by how much): "bfloat16"/"float16" run transformer
    and decoder under autocast (a GPU, or a CPU with bf16 matrix units); "int8" (CPU only) runs the
    transformer blocks' linear layers with dynamic int8 quantization (a quantized copy of `var` is
    made on first use and cached while its weights are unchanged).

    guidance: how the guidance weight follows cfg over the scales: "linear" (the paper's ramp, the default),
    "constant", or "truncated:N" (the ramp on the first N scales, none after: the unconditional half of the
    batch is dropped from scale N on, which makes those scales about twice as fast). See `GuidanceSchedule`.

    refiner, switch_at: collaborative decoding. `var` samples the scales before `switch_at` (in [1, K-1]),
    `refiner` (another transformer on the same tokenizer and classes, e.g. a smaller one) the rest, with its
    own KV cache. refiner=var gives plain sampling's tokens exactly.

    reject_with, keep: rejection sampling. For each requested class with n images, ceil(n / keep)
    candidates are sampled (keep in (0, 1], default 0.5), and the n that the classifier `reject_with` rates
    most likely to be that class are kept (in candidate order; ties: the earlier candidate). Candidates are
    listed class by class, the classes in order of first appearance; with per_image_seeds candidate j uses
    seed + j, with one seed they draw from one generator in that order (a list of generators: one per
    candidate). The result's `scores` and `candidates` say which were kept. reject_with: "fashion-mnist" (the
    shipped classifier), a folder of `nextscale train-classifier`, a loaded classifier, or a
    `nextscale.rejection.ClassScorer` (e.g. the FID Inception with its class map: `nextscale.rejection`).
    Needs labels (no null class).

    on_scale: called after each scale of each batch with the batch's token maps so far, as in
    `generate_tokens` (e.g. to show the images coarse to fine).
    """
    device = var.pos_1LC.device
    settings = resolve_sampling(var, cfg, top_k, top_p)
    cfg, top_k, top_p = settings["cfg"], settings["top_k"], settings["top_p"]
    low_precision = precision_context(precision, device)
    guidance = without_null_pass_at_cfg_0(parse_guidance(guidance, len(var.patch_nums)), cfg)
    if refiner is not None or switch_at is not None:
        check_refiner(var, refiner, switch_at)
    gen_device = "cpu" if device.type == "cpu" else device
    labels_B = as_label_tensor(labels, var, device)
    requested, labels_B, selection, scorer = _rejection_plan(var, labels_B, reject_with, keep, device)
    count = len(labels_B) if labels_B is not None else (num_samples or 1)
    generator = request_generator(seed, per_image_seeds, generator, count, gen_device)
    per_image = isinstance(generator, (list, tuple))
    if labels_B is None:
        labels_B = _uniform_labels(var.num_classes, generator, num_samples or 1, device)
    B = labels_B.shape[0]
    _check_batching(generator, B, batch_size, rejecting=selection is not None)
    vae = _tokenizer_of(var)
    vae.to(device)
    batch_size = batch_size or B
    starts = range(0, B, batch_size)
    report, bar = _scale_reporter(progress, len(starts) * len(var.patch_nums), on_scale)
    model = _int8_copy(var) if precision == "int8" else var
    refiner_model = _int8_copy(refiner) if precision == "int8" and refiner is not None else refiner

    images, token_lists = [], []
    for i in starts:
        gen_b = generator[i:i + batch_size] if per_image else generator
        labels_b = labels_B[i:i + batch_size]
        with low_precision:
            toks, f_hat = generate_tokens(model, labels_b, gen_b, cfg, top_k, top_p, more_smooth, on_scale=report,
                                          guidance=guidance, refiner=refiner_model, switch_at=switch_at)
            images_b = vae.decode_fhat(f_hat).float().add(1).mul(0.5)
        if selection is not None:
            selection.add(i, labels_b, scorer(images_b, labels_b), images_b, toks)
            continue
        images.append(images_b)
        token_lists.append(toks)
    if bar:
        bar.close()
    if selection is not None:
        kept, tokens, scores, candidates = selection.result(requested.tolist())
        return SampleOutput(images=kept, tokens=tokens, labels=requested, scores=scores, candidates=candidates)
    tokens = [torch.cat([t[si] for t in token_lists]) for si in range(len(var.patch_nums))]
    return SampleOutput(images=torch.cat(images), tokens=tokens, labels=labels_B)


def _rejection_plan(var: VAR, labels_B: torch.Tensor | None, reject_with, keep: float | None, device):
    """(the requested labels, the candidates' labels, the Selection, the scorer) of rejection sampling; without
    `reject_with`: (None, labels_B, None, None)."""
    if keep is not None and reject_with is None:
        raise ValueError("keep is the fraction of candidates rejection sampling keeps: pass reject_with (a "
                         "classifier) too, or leave keep out")
    if reject_with is None:
        return None, labels_B, None, None
    keep = rj.check_keep(0.5 if keep is None else keep)
    if labels_B is None:
        raise ValueError("rejection sampling keeps the candidates most likely to be their class: pass labels")
    scorer = rj.class_scorer(reject_with, var, device)
    wanted, candidate_labels = rj.candidate_plan(labels_B.tolist(), keep, var.num_classes)
    candidates_B = torch.tensor(candidate_labels, dtype=torch.long, device=device)
    return labels_B, candidates_B, rj.Selection(wanted), scorer


def _uniform_labels(num_classes: int, generator: Generators, n: int, device) -> torch.Tensor:
    """Labels drawn uniformly: one per generator of a list (image i from generator i), else `n` from the one."""
    uniform = torch.full((num_classes,), 1.0 / num_classes, device=device)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(uniform, 1, generator=g) for g in generator])
    return torch.multinomial(uniform, n, replacement=True, generator=generator).view(n)


def _check_batching(generator: Generators, B: int, batch_size: int | None, rejecting: bool) -> None:
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        what = ("candidates (rejection sampling)", "candidate") if rejecting else ("images", "image")
        raise ValueError(f"{len(generator)} generators for {B} {what[0]}: pass one generator per {what[1]}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _scale_reporter(progress: bool, total: int, on_scale):
    """(report(si, tokens_so_far) for generate_tokens, the progress bar or None): report moves the bar and calls
    the caller's `on_scale`."""
    bar = None
    if progress:
        from nextscale.progress import progress_bar
        bar = progress_bar(total=total, desc="sampling", unit="scale")

    def report(si: int, tokens_so_far: list[torch.Tensor]) -> None:
        if bar is not None:
            bar.update(1)
        if on_scale is not None:
            on_scale(si, tokens_so_far)
    return report, bar
