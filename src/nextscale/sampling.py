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

import contextlib
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from nextscale.transformer.var import VAR

# "float32" is exact (the reference results); the others trade exactness for speed (see `sample`).
PRECISIONS = ("float32", "bfloat16", "float16", "int8")
# Guidance beyond this only saturates the logits (the published settings use 1.5 to 4; the web app's bound too).
MAX_CFG = 100.0
# Seeds: whole numbers in [0, MAX_SEED], as torch seeds them and the web app takes them (image i: seed + i).
MAX_SEED = 2**63 - 1


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


def validate_sampling_args(num_classes: int, labels: torch.Tensor | None, cfg: float, top_k: int, top_p: float) -> None:
    """Raise ValueError with a message that names the bad argument."""
    if labels is not None and labels.numel() and (labels.min() < 0 or labels.max() > num_classes):
        bad = labels[(labels < 0) | (labels > num_classes)].tolist()
        raise ValueError(f"class ids {bad} are outside [0, {num_classes}] "
                         f"(0..{num_classes - 1} are classes, {num_classes} is the null class for unconditional sampling)")
    if not (0 <= cfg <= MAX_CFG):  # NaN fails the comparison too
        raise ValueError(f"cfg must be a number in [0, {MAX_CFG:g}] (0 = no guidance), got {cfg}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}")
    if not 0 <= top_p <= 1:
        raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {top_p}")


def filter_logits(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering, in place: removed logits become -inf."""
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        kth = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        logits_BlV.masked_fill_(remove_sorted.scatter(-1, sorted_idx, remove_sorted), -torch.inf)
    return logits_BlV


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


def check_seed(seed, count: int = 1, name: str = "seed") -> int:
    """`seed` as an int, when it and the seeds of `count` images after it (seed + i) lie in [0, MAX_SEED];
    else a ValueError that says so under `name` (the argument or option)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number in [0, {MAX_SEED}], got {seed!r}")
    seed = int(seed)
    last = MAX_SEED - max(count - 1, 0)
    if not 0 <= seed <= last:
        tail = f" (image i uses seed + i: {count} images need a seed of at most {last})" if count > 1 else ""
        raise ValueError(f"{name} must be a whole number in [0, {MAX_SEED}]{tail}, got {seed}")
    return seed


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(check_seed(seed))
    return g


# Published settings for FID (spec §3): the default of models that recommend none of their own.
PUBLISHED_SAMPLING = {"cfg": 1.5, "top_k": 900, "top_p": 0.96}
# Words that name the null class (unconditional sampling) wherever a class is read.
NULL_CLASS_WORDS = ("null", "none", "unconditional")


def recommended_sampling(var) -> dict:
    """{"cfg", "top_k", "top_p"}: the model's recommendation (`var.extra_config["sampling"]`, kept in the
    model folder's config.json; the transformer trainer's export writes it), else the published FID
    settings 1.5 / 900 / 0.96. The one default of `sample`, `edit`, `nextscale sample|edit` and the web app."""
    own = (getattr(var, "extra_config", None) or {}).get("sampling") or {}
    return {k: type(v)(own.get(k, v)) for k, v in PUBLISHED_SAMPLING.items()}


def resolve_sampling(var, cfg: float | None, top_k: int | None, top_p: float | None) -> dict:
    """cfg/top_k/top_p as given, None replaced by `recommended_sampling(var)`; checked."""
    given = {"cfg": cfg, "top_k": top_k, "top_p": top_p}
    settings = {k: v if given[k] is None else given[k] for k, v in recommended_sampling(var).items()}
    validate_sampling_args(var.num_classes, None, **settings)
    return settings


def class_names(var) -> list[str]:
    """The model's class names (`var.extra_config["class_names"]`, index = class id), or [] when it has none."""
    return [str(n) for n in ((getattr(var, "extra_config", None) or {}).get("class_names") or [])]


def class_id(value, var) -> int:
    """One class, as an id or a name, -> its id. Accepted: an int (or a 0-d tensor / numpy integer); a
    string that is one of the model's class names (case-insensitive; a name wins over the same digits
    read as an id); a string of digits (an id); "null" / "none" / "unconditional" (the null class
    `var.num_classes`, unconditional sampling). Raises ValueError naming the known classes."""
    num_classes = var.num_classes
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, str):
        text = value.strip()
        names = class_names(var)
        lowered = [n.lower() for n in names]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.lower() in NULL_CLASS_WORDS:
            return num_classes
        digits = text[1:] if text[:1] in "+-" else text
        if digits.isascii() and digits.isdigit():  # '²' and other Unicode digits are not ids
            value = int(text)
        else:
            known = (f"the model's classes are {', '.join(repr(n) for n in names)}" if names else
                     "this model has no class names")
            why = " (class ids are written in the digits 0-9)" if digits.isdigit() or digits.isnumeric() else ""
            raise ValueError(f"unknown class {value!r}{why}: {known}; or give a class id in [0, {num_classes - 1}], "
                             f"or {num_classes} (or 'null') for unconditional")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"a class is an id (int) or a class name (str), got {value!r}")
    c = int(value)
    if not 0 <= c <= num_classes:
        raise ValueError(f"class id {c} is outside [0, {num_classes}] (0..{num_classes - 1} are classes, "
                         f"{num_classes} is the null class for unconditional sampling)")
    return c


def parse_classes(values, var) -> list[int] | None:
    """Classes as the command line, the web app and `sample(labels=...)` take them -> ids (None for None).

    values: one class or a list of them, each an id or a name as `class_id` reads it; ids and names may
    be mixed. A string that is not itself a class name may hold several, comma-separated ("Dress,3")."""
    if values is None:
        return None
    if isinstance(values, (str, int, np.integer)) or (isinstance(values, torch.Tensor) and values.ndim == 0):
        values = [values]
    ids = []
    for value in values:
        if isinstance(value, str) and "," in value and value.strip().lower() not in \
                [n.lower() for n in class_names(var)]:
            ids.extend(class_id(part, var) for part in value.split(",") if part.strip())
        else:
            ids.append(class_id(value, var))
    return ids


def as_label_tensor(labels, var, device) -> torch.Tensor | None:
    """labels (ids, names, mixed, or a tensor / array of ids) -> a LongTensor (B,) of checked ids."""
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor) or isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        t = torch.as_tensor(labels, device=device)
        if t.is_floating_point() or t.is_complex():
            raise ValueError(f"class ids must be integers, got a {t.dtype} tensor")
        t = t.to(dtype=torch.long).flatten()
    else:
        t = torch.tensor(parse_classes(labels, var), dtype=torch.long, device=device)
    validate_sampling_args(var.num_classes, t, 0.0, 0, 0.0)
    return t


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


def precision_context(precision: str, device: torch.device):
    """Autocast for "bfloat16"/"float16"; nothing for "float32" and "int8"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision='int8' (dynamic int8 quantization) runs on CPU only; "
                         "use 'bfloat16' or 'float16' on a GPU")
    if precision in ("bfloat16", "float16"):
        return torch.autocast(device.type, dtype=getattr(torch, precision))
    return contextlib.nullcontext()


def seeded_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image: image i then samples exactly as it would alone with seed seeds[i]."""
    return [make_generator(s, device) for s in seeds]


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
    from nextscale import rejection as rj
    device = var.pos_1LC.device
    settings = resolve_sampling(var, cfg, top_k, top_p)
    cfg, top_k, top_p = settings["cfg"], settings["top_k"], settings["top_p"]
    low_precision = precision_context(precision, device)
    guidance = parse_guidance(guidance, len(var.patch_nums))
    if refiner is not None or switch_at is not None:
        check_refiner(var, refiner, switch_at)
    gen_device = "cpu" if device.type == "cpu" else device
    labels_B = as_label_tensor(labels, var, device)
    selection = scorer = None
    if keep is not None and reject_with is None:
        raise ValueError("keep is the fraction of candidates rejection sampling keeps: pass reject_with (a "
                         "classifier) too, or leave keep out")
    if reject_with is not None:
        keep = rj.check_keep(0.5 if keep is None else keep)
        if labels_B is None:
            raise ValueError("rejection sampling keeps the candidates most likely to be their class: pass labels")
        scorer = rj.class_scorer(reject_with, var, device)
        wanted, candidate_labels = rj.candidate_plan(labels_B.tolist(), keep, var.num_classes)
        selection = rj.Selection(wanted)
        requested, labels_B = labels_B, torch.tensor(candidate_labels, dtype=torch.long, device=device)
    count = len(labels_B) if labels_B is not None else (num_samples or 1)
    generator = request_generator(seed, per_image_seeds, generator, count, gen_device)
    per_image = isinstance(generator, (list, tuple))
    if labels_B is None:
        n = len(generator) if per_image else (num_samples or 1)
        uniform = torch.full((var.num_classes,), 1.0 / var.num_classes, device=device)
        if per_image:
            labels_B = torch.cat([torch.multinomial(uniform, 1, generator=g) for g in generator])
        else:
            labels_B = torch.multinomial(uniform, n, replacement=True, generator=generator).view(n)
    B = labels_B.shape[0]
    if per_image and len(generator) != B:
        what = ("candidates (rejection sampling)", "candidate") if selection is not None else ("images", "image")
        raise ValueError(f"{len(generator)} generators for {B} {what[0]}: pass one generator per {what[1]}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vae = _tokenizer_of(var)
    vae.to(device)
    batch_size = batch_size or B
    starts = range(0, B, batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(starts) * len(var.patch_nums), desc="sampling", unit="scale")
    model = _int8_copy(var) if precision == "int8" else var
    refiner_model = _int8_copy(refiner) if precision == "int8" and refiner is not None else refiner

    def report(si: int, tokens_so_far: list[torch.Tensor]) -> None:
        if bar is not None:
            bar.update(1)
        if on_scale is not None:
            on_scale(si, tokens_so_far)

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
