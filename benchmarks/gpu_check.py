"""The GPU path, verified on a real accelerator, in one prepared run (issue 18).

    python benchmarks/gpu_check.py --out bench_results/gpu               # on a CUDA GPU, at most --minutes 8
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check        # the same code paths on CPU, tiny models

Sections, in this order (each one's failure is recorded as an error string and the run goes on; when the time
budget is spent, the remaining sections and sampling rows are skipped with a note):

  environment  the GPU, torch, CUDA, cuDNN and NCCL versions; TF32 is switched off for the whole run
  peak         the bf16 (and float32) matmul peak of this GPU, measured: the yardstick of the MFU below
  parity       the reference-vector checks of tests/ (tokenizer, transformer logits, sampling, editing) on the
               device in float32: tokens identical, values within the reference tolerances. A differing token
               is reported with its margin (sampled tokens: the log-probability, i.e. logit, gap between our
               token and the reference token at that position; tokenizer: the distance gap between the two codes)
  distributed  one DDP step (NCCL on the GPU, gloo in the dry run) and one FSDP step, world size 1, a file://
               rendezvous, through the trainer's own wrapping (`_Trainer._wrap`) and step (`_Trainer.train_step`)
  training     a var-d16 training step (bf16 autocast) at the largest batch that fits (tried from large to small
               on out-of-memory): tokens/s and model FLOPs utilisation against the measured bf16 peak
  sampling     var-d16 and var-d30 + vae-f16c32 (random weights) sampling 256px images with cfg 1.5, top-k 900,
               top-p 0.96, in float32 and bfloat16 at batch 1, 16, 64, 128: images/s, transformer vs decoder,
               peak memory (torch.cuda.max_memory_allocated)
  compile      torch.compile of the decoder and the transformer blocks' MLPs, against eager at one batch
               (skipped in the dry run; a failure is recorded)

Writes OUT/gpu_check.json and OUT/gpu_check.md (a short table), prints the table; exit status 0 when every
section that ran succeeded and parity passed, 1 otherwise (the files are written either way).

`--dry-run` runs every section except compile on CPU with tiny models (batch 1-2, gloo, float32 and bfloat16
autocast), in well under a minute: it checks the script, its numbers mean nothing. The reference vectors are
looked up in --reference, $NEXTSCALE_REFERENCE_DIR, ../shared/reference and ./shared/reference; without them
the parity section is skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

import nextscale
from nextscale import sampling as S
from nextscale.tokenizer.vqvae import PATCH_NUMS_256

REPO = Path(__file__).resolve().parents[1]
SAMPLING = dict(cfg=1.5, top_k=900, top_p=0.96)  # the paper's 256px demo settings
SECTIONS = ("peak", "parity", "distributed", "training", "sampling", "compile")
MODELS = ("var-d16", "var-d30")
PRECISIONS = ("float32", "bfloat16")
GPU_BATCHES = (1, 16, 64, 128)
DRY_BATCHES = (1, 2)
GPU_TRAIN_BATCHES = (512, 384, 256, 192, 128, 96, 64, 48, 32, 16, 8, 4, 2, 1)
DRY_TRAIN_BATCHES = (2, 1)
GPU_COMPILE_BATCH = 64

# --dry-run: tiny stand-ins of the presets, built through the same preset builders.
TINY_PATCH_NUMS = (1, 2, 3, 4)
TINY_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), z_channels=8, vocab_size=64)
TINY_VAR = {"var-d16": dict(depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8),
            "var-d30": dict(depth=3, embed_dim=96, num_heads=3, num_classes=10, vocab_size=64, vae_channels=8)}

REFERENCE_FILES = ("tiny_d2.json", "tiny_d2_io.safetensors", "tiny_d2_vae.pth", "tiny_d2_var.pth",
                   "tiny_d2_edit.json", "tiny_d2_edit.safetensors")
REFERENCE_PATCH_NUMS = (1, 2, 3, 4)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- pure helpers
def var_forward_flops(config, batch: int) -> int:
    """FLOPs (2 per multiply-add) of one teacher-forcing forward of a VAR transformer over `batch` images.

    Every matrix product is counted: the word embedding of the L - first_l input tokens; per block the qkv,
    projection and the two MLP layers for all L tokens, and attention's q.k and p.v over all L x L pairs (the
    block-causal mask is an additive bias: the kernel computes every pair, as torch.utils.flop_counter counts
    it); the AdaLN projections once per image (per block, or once when shared); the head's AdaLN and the head.
    """
    C, L, depth = config.embed_dim, config.seq_len, config.depth
    first_l = config.patch_nums[0] ** 2
    hidden = round(C * config.mlp_ratio)
    per_token_block = 3 * C * C + C * C + 2 * C * hidden
    attention = 2 * L * L * C
    adaln = (1 if config.shared_adaln else depth) * C * 6 * C
    macs = ((L - first_l) * config.vae_channels * C + depth * (L * per_token_block + attention) + adaln
            + C * 2 * C + L * C * config.vocab_size)
    return 2 * batch * macs


def train_step_flops(forward_flops: float) -> float:
    """Model FLOPs of a training step: the forward and a backward of twice its cost (the usual MFU rule)."""
    return 3 * forward_flops


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: the achieved FLOP/s of the model's own arithmetic over the peak FLOP/s."""
    return flops_per_step / seconds_per_step / peak_flops_per_s


def matmul_flops_per_s(n: int, seconds: float, iterations: int = 1) -> float:
    """FLOP/s of `iterations` n x n by n x n matrix products done in `seconds`."""
    return 2 * n ** 3 * iterations / seconds


def find_largest_batch(try_batch: Callable[[int], object], candidates, on_oom: Callable[[], None] = lambda: None):
    """(batch, what try_batch returned, [batches that ran out of memory]): the first of `candidates`
    (largest first) for which `try_batch` does not raise torch.OutOfMemoryError; other errors propagate.
    `on_oom` frees memory after each failure. (None, None, oom) when none fits."""
    oom = []
    for batch in candidates:
        failed = False
        try:
            return batch, try_batch(batch), oom
        except torch.OutOfMemoryError:
            failed = True
        if failed:  # outside the except block: the traceback's frames (and their tensors) are gone
            oom.append(batch)
            on_oom()
    return None, None, oom


def predicted_seconds(previous: tuple[int, float] | None, batch: int) -> float:
    """A row's expected time from the previous row of the same model and precision (batch, seconds):
    linear in the batch (an overestimate where small batches are bound by kernel launches)."""
    if previous is None:
        return 0.0
    prev_batch, prev_seconds = previous
    return prev_seconds * batch / prev_batch


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def collect_errors(obj, where: str = "") -> list[str]:
    """'where: error' for every dict with an 'error' string inside `obj` (rows, sub-steps, checks)."""
    found = []
    if isinstance(obj, dict):
        if isinstance(obj.get("error"), str):
            found.append(f"{where or 'result'}: {obj['error']}")
        for k, v in obj.items():
            if k != "error":
                found += collect_errors(v, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += collect_errors(v, f"{where}[{i}]")
    return found


# ---------------------------------------------------------------------------------------- run context
class Budget:
    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def note(self) -> str:
        return (f"skipped: the time budget of {self.seconds / 60:g} min is spent "
                f"({self.elapsed() / 60:.1f} min elapsed)")


class Skipped(Exception):
    """A section (or row) that does not apply here; its message is the note."""


class Context:
    def __init__(self, args):
        self.dry = args.dry_run
        self.device = torch.device("cpu") if self.dry else torch.device("cuda", 0)
        self.budget = Budget(args.minutes)
        self.batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else \
            (DRY_BATCHES if self.dry else GPU_BATCHES)
        self.train_batches = DRY_TRAIN_BATCHES if self.dry else GPU_TRAIN_BATCHES
        self.reference = args.reference
        self.results: dict = {}

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def timed(self, fn):
        """(seconds, result) of one call, the device synchronized around it."""
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def bf16_peak(self) -> float:
        """FLOP/s: the peak section's bf16 matmul peak, or a quick measurement when it did not run."""
        peak = (self.results.get("peak") or {}).get("result") or {}
        if "bfloat16" in peak:
            return peak["bfloat16"]["flops_per_s"]
        return matmul_peak(self, torch.bfloat16, (512,) if self.dry else (8192,))["flops_per_s"]


class PeakMemory:
    """The allocator's peak (CUDA) or the process's peak resident set (CPU, VmHWM) over a block."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.bytes = None

    def __enter__(self):
        if self.ctx.cuda:
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return self

    def __exit__(self, *exc):
        if self.ctx.cuda:
            self.bytes = torch.cuda.max_memory_allocated(self.ctx.device)
        else:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path("/proc/self/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.bytes = int(line.split()[1]) * 1024
        return False

    @property
    def gib(self) -> float | None:
        return None if self.bytes is None else self.bytes / 2**30


def build_pair(ctx: Context, name: str, vae=None):
    """(var, vae): preset `name` and vae-f16c32 with random weights, created on the device (tiny in a dry run)."""
    patch_nums = TINY_PATCH_NUMS if ctx.dry else PATCH_NUMS_256
    torch.manual_seed(0)
    with torch.device(ctx.device):
        if vae is None:
            vae = nextscale.build_vae("vae-f16c32", patch_nums=patch_nums, **(TINY_VAE if ctx.dry else {})).eval()
        var = nextscale.build_var(name, patch_nums=patch_nums, **(TINY_VAR[name] if ctx.dry else {}))
        var.init_weights()
    var.attach_tokenizer(vae)
    return var.eval(), vae


# ---------------------------------------------------------------------------------------- environment, peak
def environment(ctx: Context) -> dict:
    env = {"device": str(ctx.device), "dry_run": ctx.dry, "torch": torch.__version__,
           "python": platform.python_version(), "cuda_runtime": torch.version.cuda,
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
           "float32_matmul_precision": torch.get_float32_matmul_precision(), "cpu_threads": torch.get_num_threads(),
           "host": platform.node()}
    if ctx.cuda:
        p = torch.cuda.get_device_properties(ctx.device)
        env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=p.total_memory / 2**30,
                   multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                   gpu_count=torch.cuda.device_count())
        with contextlib.suppress(Exception):
            env["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
    else:
        env["processor"] = platform.processor() or platform.machine()
    return env


def matmul_peak(ctx: Context, dtype: torch.dtype, sizes) -> dict:
    """The best FLOP/s of a square matmul over `sizes`, each timed over about 0.3 s after a warm-up."""
    by_size = {}
    for n in sizes:
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        one, _ = ctx.timed(lambda: a @ b)  # warm-up (cuBLAS heuristics, clocks)
        one, _ = ctx.timed(lambda: a @ b)
        iterations = max(3, min(100, int(0.3 / max(one, 1e-6))))

        def many():
            for _ in range(iterations):
                a @ b
        seconds, _ = ctx.timed(many)
        by_size[n] = matmul_flops_per_s(n, seconds, iterations)
    best = max(by_size.values())
    return {"dtype": str(dtype).replace("torch.", ""), "flops_per_s": best, "tflops": best / 1e12,
            "tflops_by_size": {str(n): r / 1e12 for n, r in by_size.items()}}


def peak_section(ctx: Context) -> dict:
    small = (128, 256) if ctx.dry else None
    return {"bfloat16": matmul_peak(ctx, torch.bfloat16, small or (4096, 8192, 16384)),
            "float32": matmul_peak(ctx, torch.float32, small or (4096, 8192)),
            "note": "float32 with TF32 off (true float32 arithmetic), as every float32 number of this run"}


# ---------------------------------------------------------------------------------------- parity
_DRAW_TOKENS, _GUMBEL_NOISE = S.draw_tokens, S.gumbel_noise


def _cpu_generator(generator) -> bool:
    return isinstance(generator, torch.Generator) and generator.device.type == "cpu"


@contextlib.contextmanager
def cpu_generator_bridge(record: list | None = None):
    """Let the sampler draw with a CPU torch.Generator while the models run on another device.

    The reference tokens come from one CPU generator (the random-number protocol of the reference vectors);
    `nextscale.sample(seed=...)` on CUDA draws from a CUDA generator instead, whose stream differs. Within this
    context the sampler's draws (`draw_tokens`, `gumbel_noise`) take the probabilities to the CPU, draw there
    with the given CPU generator and bring the result back: the same numbers the CPU path draws from the same
    probabilities. `record` receives every scale's probabilities (B, l, V), on the CPU, for the margins."""
    def draw(probs_BlV, generator):
        if record is not None:
            record.append(probs_BlV.detach().float().cpu())
        if _cpu_generator(generator) and probs_BlV.device.type != "cpu":
            return _DRAW_TOKENS(probs_BlV.cpu(), generator).to(probs_BlV.device)
        return _DRAW_TOKENS(probs_BlV, generator)

    def gumbel(like_BlV, generator):
        if _cpu_generator(generator) and like_BlV.device.type != "cpu":
            return _GUMBEL_NOISE(torch.empty(like_BlV.shape, dtype=like_BlV.dtype), generator).to(like_BlV.device)
        return _GUMBEL_NOISE(like_BlV, generator)

    S.draw_tokens, S.gumbel_noise = draw, gumbel
    try:
        yield record
    finally:
        S.draw_tokens, S.gumbel_noise = _DRAW_TOKENS, _GUMBEL_NOISE


def sampled_token_margin(probs_BlV: torch.Tensor, b: int, i: int, ours: int, ref: int) -> dict:
    """Why a sampled token differs: log p(ours) - log p(ref) at that position, which is the logit gap (same
    softmax normalizer); +inf when the reference token was filtered out (top-k / top-p) on this device."""
    p = probs_BlV[b, i].double()
    gap = (p[ours].log() - p[ref].log()).item()
    return {"logit_margin": gap if math.isfinite(gap) else ("inf" if gap > 0 else "-inf"),
            "p_ours": p[ours].item(), "p_ref": p[ref].item()}


def code_distance_margin(z_C: torch.Tensor, codebook_VC: torch.Tensor, ours: int, ref: int) -> dict:
    """Why a tokenizer token differs: squared distance to the reference code minus to ours (float64)."""
    d = (z_C.double().cpu().unsqueeze(0) - codebook_VC.double().cpu()).square().sum(1)
    return {"distance_margin": (d[ref] - d[ours]).item(), "distance_ours": d[ours].item(),
            "distance_ref": d[ref].item()}


def token_check(name: str, ours, ref, margin: Callable[[int, int, int, int, int], dict] | None = None,
                note: str | None = None) -> dict:
    """Token maps `ours` (device) against `ref`: identical, or every differing position with its margin."""
    mismatches = []
    for k, (a, r) in enumerate(zip(ours, ref)):
        a, r = a.cpu(), r.cpu()
        if a.shape != r.shape:
            raise ValueError(f"scale {k}: shape {tuple(a.shape)} vs reference {tuple(r.shape)}")
        for b, i in (a != r).nonzero().tolist():
            m = {"scale": k, "image": b, "position": i, "ours": int(a[b, i]), "reference": int(r[b, i])}
            if margin is not None:
                m.update(margin(k, b, i, m["ours"], m["reference"]))
            mismatches.append(m)
    check = {"name": name, "kind": "tokens", "passed": not mismatches and len(ours) == len(ref),
             "differing_tokens": len(mismatches), "tokens": sum(r.numel() for r in ref)}
    if mismatches:
        check["first_differences"] = mismatches[:8]
        if note:
            check["note"] = note
    return check


def value_check(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float) -> dict:
    ours = ours.detach().float().cpu()
    if ours.shape != ref.shape:
        raise ValueError(f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    diff = (ours - ref).abs().max().item()
    return {"name": name, "kind": "values", "passed": diff <= atol, "max_abs_diff": diff, "tolerance": atol}


def max_prob_diff(record: list, other: list) -> float | None:
    """The largest difference between two runs' probabilities, over the scales both reached with equal shapes
    (after a differing token the inputs differ too: the number then also measures that divergence)."""
    diffs = [(a - b).abs().max().item() for a, b in zip(record, other) if a.shape == b.shape]
    return max(diffs) if diffs else None


def find_reference(given: str | None) -> Path | None:
    candidates = [Path(given)] if given else []
    if os.environ.get("NEXTSCALE_REFERENCE_DIR"):
        candidates.append(Path(os.environ["NEXTSCALE_REFERENCE_DIR"]))
    candidates += [REPO.parent / "shared" / "reference", REPO / "shared" / "reference"]
    for c in candidates:
        if all((c / f).is_file() for f in REFERENCE_FILES):
            return c.resolve()
    return None


def load_reference_models(ref: Path, device: torch.device):
    """The tiny reference models, loaded as the parity tests load them (tests/conftest.py)."""
    vae = nextscale.load_vae(ref / "tiny_d2_vae.pth", patch_nums=REFERENCE_PATCH_NUMS)
    var = nextscale.load_var(ref / "tiny_d2_var.pth", vae=vae, patch_nums=REFERENCE_PATCH_NUMS)
    return var.to(device).eval(), vae.to(device).eval()


def _sample_case(var, case: dict, record: list | None):
    with cpu_generator_bridge(record):
        return nextscale.sample(var, case["label_B"], generator=S.make_generator(case["g_seed"], "cpu"),
                                cfg=case["cfg"], top_k=case["top_k"], top_p=case["top_p"],
                                more_smooth=case["more_smooth"])


def _edit_case(var, image01, case: dict, record: list | None):
    from nextscale.editing import inpaint_keep_mask, outpaint_keep_mask
    make_mask = inpaint_keep_mask if case["inpainting"] else outpaint_keep_mask
    keep = make_mask(case["box_y0x0y1x1"], REFERENCE_PATCH_NUMS[-1])
    with cpu_generator_bridge(record):
        out = nextscale.edit(var, image01, keep, labels=case["label"],
                             generator=S.make_generator(case["g_seed"], "cpu"), cfg=case["cfg"],
                             top_k=case["top_k"], top_p=case["top_p"], more_smooth=case["more_smooth"])
    return out, keep


def parity_section(ctx: Context) -> dict:
    ref = find_reference(ctx.reference)
    if ref is None:
        raise Skipped("reference vectors not found (pass --reference DIR holding tiny_d2_*; looked in "
                      "$NEXTSCALE_REFERENCE_DIR, ../shared/reference, ./shared/reference)")
    from safetensors.torch import load_file
    io = load_file(str(ref / "tiny_d2_io.safetensors"))
    samples = json.loads((ref / "tiny_d2.json").read_text())["samples"]
    edit_tensors = load_file(str(ref / "tiny_d2_edit.safetensors"))
    edits = json.loads((ref / "tiny_d2_edit.json").read_text())
    device = ctx.device
    var, vae = load_reference_models(ref, device)
    # The same models on the CPU: the comparison for edited tokens (the reference files hold edited images
    # only) and for how far the device's probabilities are from the CPU's (in the dry run, a second CPU copy).
    cpu_var = load_reference_models(ref, torch.device("cpu"))[0]
    K = len(REFERENCE_PATCH_NUMS)
    ref_idx = [io[f"io.idx.{k}"] for k in range(K)]
    checks = []

    def check(name, fn):
        try:
            with torch.no_grad():
                result = fn()
            for c in result if isinstance(result, list) else [result]:
                checks.append(c)
        except Exception as e:  # noqa: BLE001 - one check's failure is a failed check, not the end
            checks.append({"name": name, "passed": False, "error": first_line(e)})

    img = io["io.img"].to(device)
    check("tokenizer.f", lambda: value_check("tokenizer.f", vae.encode_latent(img), io["io.f"], 1e-4))

    def tokenizer_tokens():
        zs = []
        quantizer = vae.quantize
        nearest = quantizer.nearest_codes

        def recording(z_NC):
            zs.append(z_NC.detach().cpu())
            return nearest(z_NC)
        quantizer.nearest_codes = recording  # an instance attribute shadows the method
        try:
            tokens = vae.encode_tokens(img)
        finally:
            del quantizer.nearest_codes
        codebook = quantizer.embedding.weight.detach()

        def margin(k, b, i, ours, r):
            pn = REFERENCE_PATCH_NUMS[k]
            return code_distance_margin(zs[k][b * pn * pn + i], codebook, ours, r)
        return token_check("tokenizer.tokens", tokens, ref_idx, margin)
    check("tokenizer.tokens", tokenizer_tokens)
    check("tokenizer.fhat", lambda: [value_check(f"tokenizer.fhat.{k}", f, io[f"io.fhat.{k}"], 1e-4)
                                     for k, f in enumerate(vae.encode_fhats(img))])
    check("tokenizer.recon", lambda: value_check("tokenizer.recon", vae.decode_fhat(vae.encode_fhats(img)[-1]),
                                                 io["io.recon"], 1e-3))
    idx_dev = [t.to(device) for t in ref_idx]
    check("tokenizer.decode_tokens", lambda: value_check("tokenizer.decode_tokens", vae.decode_tokens(idx_dev),
                                                         io["io.dec_from_idx"], 1e-3))
    check("tokenizer.teacher_forcing_input", lambda: value_check(
        "tokenizer.teacher_forcing_input", vae.teacher_forcing_input(idx_dev), io["io.var_input"], 1e-4))
    labels = io["io.label"].to(device)
    var_input = io["io.var_input"].to(device)
    check("transformer.logits", lambda: value_check("transformer.logits", var(labels, var_input), io["io.logits"],
                                                    1e-4))
    check("transformer.kv_cache", lambda: value_check(
        "transformer.kv_cache_vs_full", var.forward_incremental(labels, var_input), var(labels, var_input).cpu(), 1e-4))

    divergence = "every later scale is sampled given the first differing token, so differences after it follow"

    def sample_checks(name):
        case = samples[name]
        record = []
        out = _sample_case(var, case, record)
        cpu_record = []
        _sample_case(cpu_var, case, cpu_record)

        def margin(k, b, i, ours, r):
            m = sampled_token_margin(record[k], b, i, ours, r)
            if cpu_record:
                m["cpu_logit_margin"] = sampled_token_margin(cpu_record[k], b, i, ours, r)["logit_margin"]
            return m
        tok = token_check(f"sample.{name}.tokens", out.tokens, [io[f"sample.{name}.tokens.{k}"] for k in range(K)],
                          margin, divergence)
        tok["max_abs_prob_diff_vs_cpu"] = max_prob_diff(record, cpu_record)
        return [tok, value_check(f"sample.{name}.images", out.images, io[f"sample.{name}.img"], 1e-3)]
    for name in samples:
        check(f"sample.{name}", lambda name=name: sample_checks(name))

    image01 = (io["io.img"] + 1) / 2

    def edit_checks(name):
        case = edits[name]
        record = []
        out, keep = _edit_case(var, image01, case, record)
        found = [value_check(f"edit.{name}.mask", keep, edit_tensors[f"edit.{name}.mask"], 0.0),
                 value_check(f"edit.{name}.images", out.images, edit_tensors[f"edit.{name}.img"], 1e-3)]
        cpu_record = []
        cpu_out, _ = _edit_case(cpu_var, image01, case, cpu_record)

        def margin(k, b, i, ours, r):
            m = sampled_token_margin(record[k], b, i, ours, r)
            m["cpu_logit_margin"] = sampled_token_margin(cpu_record[k], b, i, ours, r)["logit_margin"]
            return m
        tok = token_check(f"edit.{name}.tokens_vs_cpu", out.tokens, cpu_out.tokens, margin, divergence)
        tok["max_abs_prob_diff_vs_cpu"] = max_prob_diff(record, cpu_record)
        return found + [tok]
    for name in edits:
        check(f"edit.{name}", lambda name=name: edit_checks(name))

    failed = [c["name"] for c in checks if not c["passed"]]
    return {"reference": str(ref), "device": str(device), "dtype": "float32", "tf32": False,
            "passed": not failed, "failed": failed, "checks": checks}


# ---------------------------------------------------------------------------------------- training
class RandomTokens:
    """The trainer's token source with one fixed batch of random tokens and labels on the device."""

    def __init__(self, batch: int, var, device):
        g = torch.Generator().manual_seed(0)
        self.tokens = torch.randint(0, var.config.vocab_size, (batch, var.seq_len), generator=g).to(device)
        self.labels = torch.randint(0, var.num_classes, (batch,), generator=g).to(device)

    def next_step(self):
        return [(self.tokens, self.labels)]


def make_trainer(var, vae, ctx: Context, batch: int, precision: str, parallel: str, info):
    """The trainer of `nextscale train`, set up as `_Trainer.setup` does but around the given model and a
    random token source: its own wrapping (`_wrap`: DDP / FSDP) and optimizer, and its `train_step`."""
    from nextscale.training import var_trainer as VT
    from nextscale.training.optim import build_adamw, build_scheduler, scaled_lr
    cfg = VT.TrainConfig(precision=precision, parallel=parallel, global_batch=batch, steps=1000, device=ctx.device.type)
    t = VT._Trainer(cfg, info, None)
    t.vae = vae
    t.model = t.raw_model = var
    t.train_model = t._wrap(var)
    t.optimizer = build_adamw(var, scaled_lr(cfg.optim.base_lr, batch), cfg.optim.weight_decay, cfg.optim.betas,
                              cfg.optim.eps)
    t.scheduler = build_scheduler(t.optimizer, 0, cfg.steps, cfg.optim.warmup_start, cfg.optim.final_lr_ratio)
    t.scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "float16")
    t.autocast = (torch.autocast(ctx.device.type, dtype=getattr(torch, precision)) if precision != "float32"
                  else contextlib.nullcontext())
    t.segments = VT.segment_sizes(var, vae)
    t.step, t.total_steps = 0, cfg.steps
    t.num_classes = var.num_classes
    t.source = RandomTokens(batch, var, ctx.device)
    return t


def run_step(ctx: Context, trainer) -> dict:
    """One optimizer step of `trainer`: seconds, loss, gradient norm."""
    stats = trainer.new_stats()
    seconds, grad_norm = ctx.timed(lambda: trainer.train_step(stats))
    loss = (stats.loss_sum_S.sum() / stats.count_S.sum()).item()
    return {"seconds": seconds, "loss": loss, "grad_norm": float(grad_norm)}


def _release(trainer) -> None:
    """Drop a trainer's gradients (after a step, or after running out of memory in one)."""
    if trainer is None:
        return
    trainer.optimizer.zero_grad(set_to_none=True)
    for p in trainer.model.parameters():
        p.grad = None


def count_flops(fn) -> int:
    """torch.utils.flop_counter's count of the matrix products of `fn()`, the CPU attention kernel included."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
    mapping = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = \
            lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def counted_forward_flops(var, vae, ctx: Context, batch: int = 1) -> int:
    """The counted FLOPs of one training-mode forward: a cross-check of var_forward_flops."""
    from nextscale.training.var_trainer import model_targets
    source = RandomTokens(batch, var, ctx.device)
    inputs, _ = model_targets(var, vae, source.tokens)
    return count_flops(lambda: var(source.labels, inputs))


def training_section(ctx: Context) -> dict:
    from nextscale.training.distributed import DistInfo
    var, vae = build_pair(ctx, "var-d16")
    var.train()
    for p in vae.parameters():
        p.requires_grad_(False)
    info = DistInfo(device=ctx.device)
    result = {"model": "var-d16", "precision": "bfloat16 autocast", "tokens_per_image": var.seq_len}
    with contextlib.suppress(Exception):
        result["forward_flops_counted_batch1"] = counted_forward_flops(var, vae, ctx)
    result["forward_flops_analytic_batch1"] = var_forward_flops(var.config, 1)
    holder = {}

    def try_batch(batch):
        holder["trainer"] = None
        if ctx.budget.left() <= 0:
            raise Skipped(ctx.budget.note())
        trainer = make_trainer(var, vae, ctx, batch, "bfloat16", "ddp", info)
        holder["trainer"] = trainer
        with PeakMemory(ctx) as mem:
            first = run_step(ctx, trainer)
            second = run_step(ctx, trainer)  # the optimizer's state exists from here on
        return trainer, first, second, mem

    def on_oom():
        _release(holder.get("trainer"))
        holder.clear()
        ctx.free()

    batch, found, oom = find_largest_batch(try_batch, ctx.train_batches, on_oom)
    result["out_of_memory_at"] = oom
    if batch is None:
        raise RuntimeError(f"no batch size fits: out of memory at {oom}")
    trainer, first, second, mem = found
    steps = [run_step(ctx, trainer) for _ in range(2 if ctx.dry else 3)]
    seconds = statistics.median(s["seconds"] for s in steps)
    flops = train_step_flops(var_forward_flops(var.config, batch))
    peak = ctx.bf16_peak()
    result.update(
        batch=batch, first_step_seconds=first["seconds"], step_seconds=seconds,
        step_seconds_all=[s["seconds"] for s in steps], tokens_per_s=batch * var.seq_len / seconds,
        images_per_s=batch / seconds, model_flops_per_step=flops, achieved_tflops=flops / seconds / 1e12,
        bf16_peak_tflops=peak / 1e12, mfu=mfu(flops, seconds, peak), loss=steps[-1]["loss"],
        grad_norm=steps[-1]["grad_norm"], peak_memory_gib=mem.gib,
        note="model FLOPs = 3 x the forward's matrix products (var_forward_flops); the step also runs the "
             "tokenizer's teacher-forcing input and AdamW, as nextscale train does with a token cache")
    if not all(math.isfinite(s["loss"]) for s in steps):
        result["error"] = f"the loss is not finite: {[s['loss'] for s in steps]}"
    _release(trainer)
    return result


# ---------------------------------------------------------------------------------------- distributed
@contextlib.contextmanager
def one_process_group(ctx: Context):
    """A world-size-1 process group (NCCL on the GPU, gloo on CPU) joined through a file:// rendezvous, with
    the environment torchrun would set, so that the project's helpers (init_distributed) take their
    distributed path; torn down (and the environment restored) afterwards."""
    import torch.distributed as dist
    from nextscale.training import distributed as D
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized in this process")
    folder = tempfile.mkdtemp(prefix="gpu_check_rdzv_")
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    backend = "nccl" if ctx.cuda else "gloo"
    kwargs = {"device_id": ctx.device} if ctx.cuda else {}
    try:
        dist.init_process_group(backend, init_method=f"file://{folder}/rendezvous", rank=0, world_size=1, **kwargs)
        info = D.init_distributed(ctx.device.type)  # joins the group above, picks this rank's device
        yield info, backend
    finally:
        D.cleanup_distributed()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(folder, ignore_errors=True)


def wrapped_step(ctx: Context, info, parallel: str, batch: int) -> dict:
    """One training step of var-d16 wrapped by the trainer for `parallel` (ddp / fsdp) in the process group.

    The trainer wraps only when there is more than one process (`distributed.is_distributed()`); with one
    process it is told there are more, so that the code path that many GPUs take runs here."""
    from nextscale.training import distributed as D
    var, vae = build_pair(ctx, "var-d16")
    var.train()
    for p in vae.parameters():
        p.requires_grad_(False)
    real = D.is_distributed
    D.is_distributed = lambda: True
    try:
        trainer = make_trainer(var, vae, ctx, batch, "bfloat16", parallel, info)
    finally:
        D.is_distributed = real
    wrapper = type(trainer.train_model)
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        if not isinstance(trainer.train_model, DistributedDataParallel):
            raise RuntimeError(f"the trainer did not wrap the model in DDP ({wrapper.__name__})")
    else:
        from torch.distributed.fsdp import FSDPModule
        if not isinstance(trainer.train_model, FSDPModule):
            raise RuntimeError(f"the trainer did not shard the model with FSDP ({wrapper.__name__})")
    step = run_step(ctx, trainer)
    out = {"wrapper": f"{wrapper.__module__}.{wrapper.__name__}", "batch": batch, **step}
    if parallel == "fsdp":
        from torch.distributed.tensor import DTensor
        out["sharded_parameters"] = sum(isinstance(p, DTensor) for p in var.parameters())
    if not math.isfinite(step["loss"]):
        out["error"] = f"the loss is not finite ({step['loss']})"
    _release(trainer)
    del trainer, var, vae
    ctx.free()
    return out


def distributed_section(ctx: Context) -> dict:
    result = {}
    with one_process_group(ctx) as (info, backend):
        result.update(backend=backend, world_size=info.world_size, device=str(info.device), rendezvous="file://")
        for parallel in ("ddp", "fsdp"):
            try:
                result[parallel] = wrapped_step(ctx, info, parallel, 2 if ctx.dry else 8)
            except Exception as e:  # noqa: BLE001 - DDP's failure does not hide FSDP's result
                result[parallel] = {"error": first_line(e), "traceback": traceback.format_exc(limit=6)}
                ctx.free()
    return result


# ---------------------------------------------------------------------------------------- sampling
def time_sampling(ctx: Context, var, vae, batch: int, precision: str, seed: int = 0) -> dict:
    """Sampling `batch` images as `nextscale.sample` does (generate_tokens, then the decoder, under the
    precision's autocast): a warm-up run, then the fastest of 1-3 timed runs (fewer for slow rows)."""
    device = ctx.device
    labels = (torch.arange(batch, device=device) * 97) % var.num_classes
    gen_device = device if ctx.cuda else "cpu"

    def transformer():
        with S.precision_context(precision, device):
            return S.generate_tokens(var, labels, S.make_generator(seed, gen_device), **SAMPLING)

    with torch.no_grad(), PeakMemory(ctx) as mem:
        warm_t, (_, f_hat) = ctx.timed(transformer)

        def decoder():
            with S.precision_context(precision, device):
                return vae.decode_fhat(f_hat)
        warm_d, _ = ctx.timed(decoder)
        warm = warm_t + warm_d
        repeats = 1 if ctx.dry or warm >= 6 else 2 if warm >= 1 else 3
        t_t = min(ctx.timed(transformer)[0] for _ in range(repeats))
        t_d = min(ctx.timed(decoder)[0] for _ in range(repeats))
    total = t_t + t_d
    return {"batch": batch, "precision": precision, "images_per_s": batch / total, "seconds_per_batch": total,
            "transformer_seconds": t_t, "decoder_seconds": t_d, "transformer_share": t_t / total,
            "warmup_seconds": warm, "repeats": repeats, "peak_memory_gib": mem.gib}


def sampling_rows(ctx: Context, var, vae, model: str, precisions=PRECISIONS, batches=None) -> list[dict]:
    rows = []
    for precision in precisions:
        previous = None
        for batch in batches or ctx.batches:
            row = {"model": model, "precision": precision, "batch": batch}
            if previous is not None and previous[1] is None:
                row.update(skipped=f"batch {previous[0]} ran out of memory", out_of_memory=True)
                rows.append(row)
                continue
            wanted = predicted_seconds(previous, batch)
            left = ctx.budget.left()
            if left <= max(wanted, 0.0):
                row["skipped"] = ctx.budget.note() if left <= 0 else (
                    f"skipped: {left:.0f} s of the time budget left, this row would take about {wanted:.0f} s")
                rows.append(row)
                continue
            log(f"  {model} {precision} batch {batch}")
            oom = False
            try:
                row.update(time_sampling(ctx, var, vae, batch, precision))
                previous = (batch, row["warmup_seconds"] * (1 + row["repeats"]))
            except torch.OutOfMemoryError as e:  # a measurement (it does not fit), not a failure of the script
                row.update(skipped=f"out of memory ({first_line(e)[:200]})", out_of_memory=True)
                oom = True
            except Exception as e:  # noqa: BLE001 - one row's failure is recorded, the others run
                row["error"] = first_line(e)
            if oom:
                previous = (batch, None)
            ctx.free()
            rows.append(row)
    return rows


def sampling_section(ctx: Context) -> dict:
    rows = []
    vae = None
    for model in MODELS:
        if ctx.budget.left() <= 0:
            rows.append({"model": model, "skipped": ctx.budget.note()})
            continue
        try:
            var, vae = build_pair(ctx, model, vae)
        except Exception as e:  # noqa: BLE001
            rows.append({"model": model, "error": f"building the model: {first_line(e)}"})
            ctx.free()
            continue
        rows += sampling_rows(ctx, var, vae, model)
        del var
        ctx.free()
    return {"settings": dict(SAMPLING, resolution=16 * (TINY_PATCH_NUMS if ctx.dry else PATCH_NUMS_256)[-1],
                             weights="random", tokenizer="vae-f16c32", tf32=False,
                             generator="torch.Generator on the device, as nextscale.sample"),
            "rows": rows}


# ---------------------------------------------------------------------------------------- compile
def compile_section(ctx: Context) -> dict:
    if ctx.dry:
        raise Skipped("dry run: torch.compile is skipped")
    if ctx.budget.left() < 150:
        raise Skipped(f"{ctx.budget.note()}: compile needs about 150 s, {max(ctx.budget.left(), 0):.0f} s left")
    import torch._dynamo
    batch, precision = GPU_COMPILE_BATCH, "bfloat16"
    var, vae = build_pair(ctx, "var-d16")
    eager = time_sampling(ctx, var, vae, batch, precision)
    torch._dynamo.reset()
    limits = {k: 64 for k in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                              "accumulated_recompile_limit") if hasattr(torch._dynamo.config, k)}
    parts = ["vae.decoder"] + [f"blocks.{i}.ffn" for i in range(len(var.blocks))]
    with torch._dynamo.config.patch(**limits):
        vae.decoder.compile()
        for block in var.blocks:
            block.ffn.compile()
        compiled = time_sampling(ctx, var, vae, batch, precision)
    speedup = eager["seconds_per_batch"] / compiled["seconds_per_batch"]
    del var, vae
    torch._dynamo.reset()
    ctx.free()
    return {"model": "var-d16", "batch": batch, "precision": precision, "compiled": parts, "eager": eager,
            "with_compile": compiled, "speedup": speedup,
            "transformer_speedup": eager["transformer_seconds"] / compiled["transformer_seconds"],
            "decoder_speedup": eager["decoder_seconds"] / compiled["decoder_seconds"],
            "compile_seconds": compiled["warmup_seconds"] - eager["warmup_seconds"],
            "helps": speedup > 1.02}


# ---------------------------------------------------------------------------------------- the run
SECTION_FUNCTIONS = {"peak": peak_section, "parity": parity_section, "distributed": distributed_section,
                     "training": training_section, "sampling": sampling_section, "compile": compile_section}


def run_section(ctx: Context, name: str, fn) -> dict:
    entry = {"status": None, "seconds": 0.0}
    if ctx.budget.left() <= 0:
        entry.update(status="skipped", note=ctx.budget.note())
        return entry
    log(f"[{ctx.budget.elapsed():6.1f} s] {name}")
    t0 = time.perf_counter()
    try:
        entry["result"] = fn(ctx)
        errors = collect_errors(entry["result"])
        entry["status"] = "error" if errors else "ok"
        if errors:
            entry["error"] = "; ".join(errors)[:2000]
    except Skipped as e:
        entry.update(status="skipped", note=str(e))
    except Exception as e:  # noqa: BLE001 - a section's failure is recorded, the run goes on
        entry.update(status="error", error=first_line(e), traceback=traceback.format_exc(limit=8))
    entry["seconds"] = time.perf_counter() - t0
    ctx.free()
    return entry


def _fmt(x, digits=2, unit=""):
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def section_summary(name: str, entry: dict) -> str:
    if entry["status"] == "skipped":
        return entry.get("note", "")
    if entry["status"] == "error" and "result" not in entry:
        return entry["error"]
    r = entry.get("result", {})
    try:
        if name == "peak":
            return (f"bf16 {r['bfloat16']['tflops']:.3g} TFLOP/s, float32 (no TF32) "
                    f"{r['float32']['tflops']:.3g} TFLOP/s")
        if name == "parity":
            n = len(r["checks"])
            return (f"**passed** ({n} checks)" if r["passed"] else
                    f"**FAILED** {len(r['failed'])} of {n}: {', '.join(r['failed'])}")
        if name == "distributed":
            parts = [f"{p}: " + (f"error {r[p]['error']}" if "error" in r[p] else
                                 f"loss {r[p]['loss']:.3f}, {r[p]['seconds']:.2f} s")
                     for p in ("ddp", "fsdp") if p in r]
            return f"{r['backend']}, world size {r['world_size']}; " + "; ".join(parts)
        if name == "training":
            return (f"batch {r['batch']}: {r['tokens_per_s']:,.0f} tokens/s, {r['achieved_tflops']:.3g} TFLOP/s, "
                    f"MFU {r['mfu']:.1%} of the bf16 peak {r['bf16_peak_tflops']:.3g} TFLOP/s"
                    + (f" (out of memory at {r['out_of_memory_at']})" if r["out_of_memory_at"] else ""))
        if name == "sampling":
            done = [x for x in r["rows"] if "images_per_s" in x]
            return f"{len(done)} of {len(r['rows'])} rows measured (table below)"
        if name == "compile":
            return (f"x{r['speedup']:.2f} at batch {r['batch']} ({'helps' if r['helps'] else 'does not help'}; "
                    f"compiling took about {r['compile_seconds']:.0f} s)")
    except (KeyError, TypeError) as e:
        return f"(summary unavailable: {first_line(e)})"
    return ""


def markdown(report: dict) -> str:
    env = report["environment"]
    title = env.get("gpu") or f"CPU dry run ({env.get('processor', '')})"
    lines = [f"# gpu_check: {title}", "",
             f"torch {env.get('torch')}, CUDA {env.get('cuda_runtime')}, TF32 off; "
             f"{report['wall_seconds']:.0f} s of a {report['budget_minutes']:g} min budget"
             + (" (dry run: tiny models, numbers meaningless)" if report["dry_run"] else ""), "",
             "| section | status | seconds | summary |", "| --- | --- | --- | --- |"]
    for name in SECTIONS:
        e = report["sections"].get(name)
        if e is None:
            continue
        summary = section_summary(name, e).replace("|", "/").replace("\n", " ")
        if e["status"] == "error" and "result" in e:
            summary += f" (errors: {e['error'][:300]})"
        lines.append(f"| {name} | {e['status']} | {e['seconds']:.1f} | {summary} |")
    sampling = report["sections"].get("sampling", {}).get("result")
    if sampling:
        s = sampling["settings"]
        lines += ["", f"Sampling, {s['resolution']} px, cfg {s['cfg']}, top-k {s['top_k']}, top-p {s['top_p']}, "
                      "random weights (vae-f16c32 decoder):", "",
                  "| model | precision | batch | images/s | s / batch | transformer s | decoder s | transformer share "
                  "| peak memory GiB |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in sampling["rows"]:
            head = f"| {row.get('model')} | {row.get('precision', '-')} | {row.get('batch', '-')} |"
            if "images_per_s" in row:
                lines.append(f"{head} {row['images_per_s']:.2f} | {row['seconds_per_batch']:.3f} | "
                             f"{row['transformer_seconds']:.3f} | {row['decoder_seconds']:.3f} | "
                             f"{row['transformer_share']:.0%} | {_fmt(row['peak_memory_gib'], 1)} |")
            else:
                why = row.get("error") or row.get("skipped", "")
                lines.append(f"{head} {why.replace('|', '/')} | | | | | |")
    parity = report["sections"].get("parity", {}).get("result")
    if parity and not parity["passed"]:
        lines += ["", "Parity failures:", ""]
        for c in parity["checks"]:
            if not c["passed"]:
                detail = c.get("error") or (f"max abs diff {c['max_abs_diff']:.2e} > {c['tolerance']:g}"
                                            if c.get("kind") == "values" else
                                            f"{c['differing_tokens']} of {c['tokens']} tokens differ; first: "
                                            f"{json.dumps(c.get('first_differences', [])[:1])}")
                lines.append(f"- {c['name']}: {detail}")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_results/gpu", help="folder for gpu_check.json and gpu_check.md "
                                                               "(default: %(default)s)")
    p.add_argument("--minutes", type=float, default=8.0, help="time budget: sections (and sampling rows) that "
                                                              "would start after it are skipped (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, gloo, no compile: checks the script")
    p.add_argument("--reference", default=None,
                   help="folder of the reference vectors (tiny_d2_*); default: $NEXTSCALE_REFERENCE_DIR, "
                        "../shared/reference, ./shared/reference")
    p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
    p.add_argument("--batches", default=None, help="sampling batch sizes (default: 1,16,64,128; dry run 1,2)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(SECTIONS)
    if unknown:
        raise SystemExit(f"error: unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU found; on a machine without one run `--dry-run` (CPU, tiny models)")
    # Every float32 number of this run is true float32: the parity tolerances assume it.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    ctx = Context(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"script": "benchmarks/gpu_check.py", "dry_run": ctx.dry, "budget_minutes": args.minutes,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:] if argv is None else list(argv)}
    try:
        report["environment"] = environment(ctx)
    except Exception as e:  # noqa: BLE001
        report["environment"] = {"error": first_line(e)}
    report["sections"] = ctx.results
    for name in SECTIONS:
        if name in skip:
            ctx.results[name] = {"status": "skipped", "seconds": 0.0, "note": "skipped: --skip"}
            continue
        ctx.results[name] = run_section(ctx, name, SECTION_FUNCTIONS[name])
        e = ctx.results[name]
        log(f"           {name}: {e['status']}" + (f" ({e.get('error') or e.get('note')})"
                                                      if e["status"] != "ok" else ""))
    report["wall_seconds"] = ctx.budget.elapsed()
    parity = ctx.results.get("parity", {})
    failed = [n for n, e in ctx.results.items() if e["status"] == "error"]
    if parity.get("status") == "ok" and not parity["result"]["passed"]:
        failed.append("parity (tokens or values differ)")
    report["failed"] = failed
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = markdown(report)
    (out / "gpu_check.md").write_text(table)
    print(table)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {report['wall_seconds']:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else "; every section that ran succeeded"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
