"""`make bench`: how fast nextscale samples (and trains) on this machine, against its own matmul peak.

One run measures, on CPU (or on CUDA where present, where bf16 is measured too):
  1. the float32 matmul peak (GFLOP/s): the yardstick; and the memory read bandwidth, which with the peak
     gives a roofline bound on sampling time (small scales are bound by reading the weights);
  2. var-d16 + vae-f16c32 (published architectures, random weights) sampling 256px images with
     classifier-free guidance at batch 1 and batch 8: seconds per image split into transformer and
     decoder, FLOPs counted with torch.utils.flop_counter, achieved GFLOP/s and its ratio to the peak,
     peak memory;
  3. the KV cache on vs off (off = recompute the whole prefix at every scale; same tokens);
  4. VAR vs a raster-scan next-token AR transformer of the same depth and width (KV-cached), at
     256px and at larger token grids (the final scale changed), with a PNG plot of time vs resolution;
  5. the speed/quality trade-offs of `nextscale.sample(precision=...)` (int8, bfloat16): time, token
     agreement with the exact float32 path, pixel PSNR against it;
  6. training throughput (tokens/s) of a small config with and without the token cache, through
     `benchmarks/train_throughput.py` when it is present.
Prints a table and writes everything to a JSON file (with the load average before and after).

Timings are the minimum over `--repeats` runs after one warm-up run (which also counts the FLOPs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import nextscale
from nextscale.baseline.raster_ar import RasterAR, RasterARConfig
from nextscale.inference_options import make_generator
from nextscale.sampling import generate_tokens, quantize_int8
from nextscale.tokenizer.vqvae import PATCH_NUMS_256, PATCH_NUMS_512

# Ten scales ending at each final token grid: the paper's 256px and 512px schedules, and two in between.
SCHEDULES = {
    16: PATCH_NUMS_256,
    20: (1, 2, 3, 4, 5, 6, 8, 11, 15, 20),
    24: (1, 2, 3, 4, 5, 7, 10, 13, 18, 24),
    32: PATCH_NUMS_512,
}
SAMPLING = dict(cfg=1.5, top_k=900, top_p=0.96)  # the settings the paper's demo uses for 256px


# ---------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int):
    """(minimum seconds over `repeats` calls, last result)."""
    best, out = math.inf, None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


# torch.utils.flop_counter counts aten's matmuls and CUDA attention kernels but not the CPU attention
# kernel or the oneDNN linear the transformer uses on CPU: register them.
EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    EXTRA_FLOP_FORMULAS[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops


def count_flops(fn):
    """(FLOPs, result) of one call, counted by torch.utils.flop_counter (matmuls, convs, attention)."""
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        out = fn()
    return counter.get_total_flops(), out


class PeakMemory:
    """Peak memory of a phase: CUDA allocator peak, or the process's peak resident set (VmHWM) on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = _proc_status_kb("VmHWM") * 1024
        return False


def _proc_status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def psnr(a, b) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = (a.float() - b.float()).square().mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


def token_agreement(tokens_a, tokens_b) -> float:
    same = sum((a == b).sum().item() for a, b in zip(tokens_a, tokens_b))
    return same / sum(a.numel() for a in tokens_a)


# ---------------------------------------------------------------------------------------- 1. matmul peak
def matmul_peak(device, dtype=torch.float32, sizes=(2048, 4096, 6144), repeats=4) -> dict:
    """Best GFLOP/s of a square matmul over a few sizes (the machine's practical peak)."""
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        seconds, _ = timed(lambda: a @ b, device, repeats)
        rates[n] = 2 * n**3 / seconds / 1e9
    return {"dtype": str(dtype).replace("torch.", ""), "gflops_by_size": rates, "gflops": max(rates.values())}


def memory_bandwidth(device, gib: float = 1.0, repeats: int = 4) -> dict:
    """GB/s of reading a large tensor once: the rate at which the small scales can stream the weights."""
    x = torch.ones(int(gib * 2**30) // 4, device=device)
    x.sum()
    seconds, _ = timed(lambda: x.sum(), device, repeats)
    return {"read_gbps": x.numel() * 4 / seconds / 1e9}


def roofline_transformer_seconds(var, batch: int, peak_gflops: float, read_gbps: float) -> float:
    """Lower bound on the transformer's time for one batch: every scale needs at least its FLOPs at the
    matmul peak and at least one read of the weights at the memory bandwidth (cfg doubles the rows)."""
    c = var.config
    # The AdaLN projections run once per sample, not once per scale.
    weight_params = sum(m.weight.numel() for name, m in var.named_modules()
                        if isinstance(m, torch.nn.Linear) and "ada_lin" not in name)
    weight_bytes = weight_params * var.head.weight.element_size()
    seconds, seen = 0.0, 0
    for pn in var.patch_nums:
        rows = 2 * batch * pn * pn
        seen += pn * pn
        flop = 2 * rows * weight_params + 4 * rows * seen * c.embed_dim * c.depth  # linears + attention
        seconds += max(flop / (peak_gflops * 1e9), weight_bytes / (read_gbps * 1e9))
    return seconds


# ---------------------------------------------------------------------------------------- models
# --smoke: tiny stand-ins with the same code paths, to check this script in seconds (numbers meaningless).
SMOKE_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2, 4), z_channels=8, vocab_size=64)
SMOKE_VAR = dict(depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64, vae_channels=8)
SMOKE = False


def build_models(device, patch_nums=PATCH_NUMS_256, seed=0):
    """var-d16 and vae-f16c32 with random weights (the published architectures)."""
    torch.manual_seed(seed)
    patch_nums = tuple(patch_nums)
    vae = nextscale.build_vae("vae-f16c32", patch_nums=patch_nums, **(SMOKE_VAE if SMOKE else {})).eval()
    var = nextscale.build_var("var-d16", patch_nums=patch_nums, **(SMOKE_VAR if SMOKE else {})).eval()
    var.init_weights()
    var.attach_tokenizer(vae)
    return var.to(device), vae.to(device)


def build_raster_ar(var, grid: int, device, seed=0) -> RasterAR:
    """The raster-scan AR baseline with `var`'s depth, width, heads and vocabulary over grid x grid tokens."""
    torch.manual_seed(seed)
    c = var.config
    ar = RasterAR(RasterARConfig(depth=c.depth, embed_dim=c.embed_dim, num_heads=c.num_heads,
                                 num_classes=c.num_classes, vocab_size=c.vocab_size, seq_len=grid * grid,
                                 attn_l2_norm=c.attn_l2_norm, mlp_ratio=c.mlp_ratio)).eval()
    ar.init_weights()
    return ar.to(device)


def labels_for(batch: int, device) -> torch.Tensor:
    return (torch.arange(batch, device=device) * 97) % (10 if SMOKE else 1000)


# ---------------------------------------------------------------------------------------- 2. VAR sampling
def bench_var_sampling(var, vae, batch: int, device, repeats: int, seed=0) -> dict:
    labels = labels_for(batch, device)
    gen_device = "cpu" if device.type == "cpu" else device

    def transformer():
        return generate_tokens(var, labels, make_generator(seed, gen_device), **SAMPLING)

    with torch.no_grad():
        with PeakMemory(device) as mem:
            flops_t, (tokens, f_hat) = count_flops(transformer)  # warm-up run, counted
            flops_d, images = count_flops(lambda: vae.decode_fhat(f_hat))
            t_transformer, _ = timed(transformer, device, repeats)
            t_decoder, _ = timed(lambda: vae.decode_fhat(f_hat), device, repeats)
    total = t_transformer + t_decoder
    return {
        "batch": batch,
        "seconds_per_image": total / batch,
        "transformer_seconds_per_image": t_transformer / batch,
        "decoder_seconds_per_image": t_decoder / batch,
        "gflop_per_image": (flops_t + flops_d) / batch / 1e9,
        "transformer_gflop_per_image": flops_t / batch / 1e9,
        "decoder_gflop_per_image": flops_d / batch / 1e9,
        "gflops": (flops_t + flops_d) / total / 1e9,
        "transformer_gflops": flops_t / t_transformer / 1e9,
        "decoder_gflops": flops_d / t_decoder / 1e9,
        "peak_memory_mib": mem.bytes / 2**20,
        "load_after": load(),
    }


# ---------------------------------------------------------------------------------------- 3. no KV cache
@torch.no_grad()
def generate_tokens_without_cache(var, labels_B, generator, **sampling):
    """`generate_tokens` with the KV cache replaced by recomputing the whole prefix at every scale: the
    sampler itself runs, with `var.forward_scale` swapped on the instance for a cacheless one."""
    inputs = []

    def forward_scale_recomputing(x_BlC, cond_BD, mods, _kv_cache):
        inputs.append(x_BlC)
        x_BLC = torch.cat(inputs, dim=1)
        end = x_BLC.shape[1]
        for block, mod in zip(var.blocks, mods):
            x_BLC = block(x_BLC, mod, var.attn_bias_for_masking[:, :, :end, :end])
        return var.logits(x_BLC[:, end - x_BlC.shape[1]:], cond_BD)

    var.forward_scale = forward_scale_recomputing  # an instance attribute shadows the method
    try:
        return generate_tokens(var, labels_B, generator, **sampling)
    finally:
        del var.forward_scale


def bench_kv_cache(var, device, repeats: int, seed=0) -> dict:
    labels = labels_for(1, device)
    gen_device = "cpu" if device.type == "cpu" else device
    with_cache = lambda: generate_tokens(var, labels, make_generator(seed, gen_device), **SAMPLING)
    without_cache = lambda: generate_tokens_without_cache(var, labels, make_generator(seed, gen_device), **SAMPLING)
    with torch.no_grad():
        flops_on, (tokens_on, _) = count_flops(with_cache)
        flops_off, (tokens_off, _) = count_flops(without_cache)
        t_on, _ = timed(with_cache, device, repeats)
        t_off, _ = timed(without_cache, device, repeats)
    return {"batch": 1, "transformer_seconds_with_cache": t_on, "transformer_seconds_without_cache": t_off,
            "speedup": t_off / t_on, "gflop_with_cache": flops_on / 1e9, "gflop_without_cache": flops_off / 1e9,
            "token_agreement": token_agreement(tokens_on, tokens_off)}


# ---------------------------------------------------------------------------------------- 4. VAR vs raster AR
def raster_ar_gflop(ar: RasterAR, batch: int) -> float:
    """Analytic FLOPs of KV-cached generation (2 per multiply-add), for the 2*batch rows of guidance:
    per token every block's qkv/proj/MLP, the head and its AdaLN, attention over the cached prefix
    (q.k and p.v); once per sample the blocks' AdaLN."""
    c = ar.config
    C, L, depth, rows = c.embed_dim, c.seq_len, c.depth, 2 * batch
    hidden = round(C * c.mlp_ratio)
    macs_per_token = depth * (3 * C * C + C * C + 2 * C * hidden) + 2 * C * C + C * c.vocab_size
    attention_macs = depth * 2 * C * sum(range(1, L + 1))
    once_macs = depth * 6 * C * C
    return 2 * rows * (macs_per_token * L + attention_macs + once_macs) / 1e9


def bench_var_vs_ar(grids, device, repeats: int, ar_repeats: int, seed=0) -> list[dict]:
    rows = []
    gen_device = "cpu" if device.type == "cpu" else device
    for grid in grids:
        var, vae = build_models(device, SCHEDULES[grid])
        labels = labels_for(1, device)
        sample_tokens = lambda: generate_tokens(var, labels, make_generator(seed, gen_device), **SAMPLING)
        with torch.no_grad():
            var_flops, (_, f_hat) = count_flops(sample_tokens)
            t_var, _ = timed(sample_tokens, device, repeats)
            vae.decode_fhat(f_hat)
            t_dec, _ = timed(lambda: vae.decode_fhat(f_hat), device, repeats)
            ar = build_raster_ar(var, grid, device)
            del var, sample_tokens
            gen = make_generator(seed, gen_device)
            t_ar, _ = timed(lambda: ar.generate(labels, gen, **SAMPLING), device, ar_repeats)
        rows.append({
            "grid": grid, "resolution": grid * vae.config.downsample, "tokens": grid * grid,
            "var_steps": len(SCHEDULES[grid]), "ar_steps": grid * grid, "patch_nums": list(SCHEDULES[grid]),
            "var_transformer_seconds": t_var, "ar_transformer_seconds": t_ar, "decoder_seconds": t_dec,
            "var_seconds_per_image": t_var + t_dec, "ar_seconds_per_image": t_ar + t_dec,
            "ar_over_var": (t_ar + t_dec) / (t_var + t_dec), "ar_over_var_transformer": t_ar / t_var,
            "var_transformer_gflop": var_flops / 1e9, "ar_transformer_gflop_analytic": raster_ar_gflop(ar, 1),
            "load_after": load(),
        })
        log(f"  grid {grid}: VAR {t_var:.2f}s + decoder {t_dec:.2f}s, AR {t_ar:.2f}s")
        del ar, vae
    return rows


def plot_scaling(rows, path: Path) -> None:
    """Log-log plot of seconds per image vs token-grid side, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, left, right, top, bottom = 680, 420, 70, 170, 40, 50
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    series = [("VAR: next-scale,\n10 steps", "var_seconds_per_image", (31, 119, 180)),
              ("raster AR: next-\ntoken, 1 per step", "ar_seconds_per_image", (214, 39, 40)),
              ("decoder alone\n(same for both)", "decoder_seconds", (120, 120, 120))]
    xs = [r["resolution"] for r in rows]
    ys = [r[key] for _, key, _ in series for r in rows]
    x0, x1 = math.log(min(xs)) - 0.1, math.log(max(xs)) + 0.1
    y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    px = lambda x: left + (math.log(x) - x0) / (x1 - x0) * (W - left - right)
    py = lambda y: H - bottom - (math.log10(y) - y0) / (y1 - y0) * (H - top - bottom)
    draw.rectangle((left, top, W - right, H - bottom), outline="black")
    for e in range(y0, y1 + 1):
        y = py(10**e)
        draw.line((left, y, W - right, y), fill=(225, 225, 225))
        draw.text((left - 8, y), f"{10**e:g} s", fill="black", font=font, anchor="rm")
    for x in xs:
        draw.line((px(x), top, px(x), H - bottom), fill=(225, 225, 225))
        draw.text((px(x), H - bottom + 6), f"{x}px", fill="black", font=font, anchor="mt")
    for i, (name, key, color) in enumerate(series):
        pts = [(px(r["resolution"]), py(r[key])) for r in rows]
        draw.line(pts, fill=color, width=3)
        for x, y in pts:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=color)
        ly = top + 10 + 40 * i
        draw.line((W - right + 10, ly, W - right + 30, ly), fill=color, width=3)
        draw.multiline_text((W - right + 35, ly - 7), name, fill="black", font=font)
    draw.text((W / 2, 12), "var-d16-sized models: seconds per image (transformer + decoder), batch 1, cfg; log-log",
              fill="black", font=font, anchor="mt")
    draw.text((W / 2, H - 18), f"resolution (token grid = resolution / 16); {processor_name()}, {torch.get_num_threads()} threads",
              fill="black", font=font, anchor="mt")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ---------------------------------------------------------------------------------------- 5. precision options
def precision_options(device) -> list[str]:
    return ["int8", "bfloat16"] if device.type == "cpu" else ["bfloat16", "float16"]


def quality_against_exact(var, labels, seeds, precision, sampling, exact) -> dict:
    """Token agreement and pixel PSNR of `precision` against `exact` (the float32 samples of the same
    labels and seeds)."""
    fast = [nextscale.sample(var, labels, seed=s, precision=precision, **sampling) for s in seeds]
    db = psnr(torch.cat([a.images for a in exact]), torch.cat([b.images for b in fast]))
    return {"token_agreement": sum(token_agreement(a.tokens, b.tokens) for a, b in zip(exact, fast)) / len(seeds),
            "psnr_db": None if db == math.inf else db}  # None: identical images


def bench_precision_options(var, device, repeats: int, seeds=(0, 1)) -> list[dict]:
    """Speed and quality cost of each inexact `precision` against the exact float32 path (batch 1).

    Quality is measured twice: on var-d16 with random weights (whose near-uniform logits hide most
    errors) and on the shipped, trained Fashion-MNIST model (10 classes x 3 seeds), when installed.
    """
    labels = labels_for(1, device).tolist()
    t_exact, _ = timed(lambda: nextscale.sample(var, labels, seed=seeds[0], **SAMPLING), device, repeats + 1)
    rows = [{"precision": "float32", "seconds_per_image": t_exact, "speedup": 1.0}]
    try:
        trained = None if SMOKE else nextscale.load_pretrained("fashion-mnist", device=device)
    except (nextscale.CheckpointError, OSError) as e:
        log(f"  no trained model for the quality measurement ({e})")
        trained = None
    # The exact samples every inexact precision is compared with, drawn once.
    trained_labels, trained_seeds = list(range(10)), (0, 1, 2)
    trained_sampling = trained.extra_config.get("sampling", {}) if trained is not None else {}
    exact_random = [nextscale.sample(var, labels, seed=s, **SAMPLING) for s in seeds]
    exact_trained = [nextscale.sample(trained, trained_labels, seed=s, **trained_sampling)
                     for s in trained_seeds] if trained is not None else None
    for precision in precision_options(device):
        row = {"precision": precision}
        try:
            if precision == "int8":
                row["quantize_seconds"], _ = timed(lambda: quantize_int8(var), device, 1)
            nextscale.sample(var, labels, seed=seeds[0], precision=precision, **SAMPLING)  # warm-up
        except (RuntimeError, ValueError) as e:
            rows.append({"precision": precision, "error": str(e).splitlines()[0]})
            continue
        row["seconds_per_image"], _ = timed(
            lambda: nextscale.sample(var, labels, seed=seeds[0], precision=precision, **SAMPLING), device, repeats)
        row["speedup"] = t_exact / row["seconds_per_image"]
        row["var_d16_random"] = quality_against_exact(var, labels, seeds, precision, SAMPLING, exact_random)
        if trained is not None:
            row["fashion_mnist_trained"] = quality_against_exact(
                trained, trained_labels, trained_seeds, precision, trained_sampling, exact_trained)
        rows.append(row)
        log(f"  {precision}: {row['seconds_per_image']:.2f}s per image")
    return rows


# ---------------------------------------------------------------------------------------- 6. training throughput
def bench_training(device) -> dict:
    """Tokens/s of a small training config with and without the token cache (benchmarks/train_throughput.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import train_throughput
    except ImportError as e:
        return {"skipped": f"benchmarks/train_throughput.py is not importable ({e})"}
    if device.type != "cpu":
        return {"skipped": "benchmarks/train_throughput.py measures on CPU only"}
    import yaml
    result = train_throughput.measure(steps=3 if SMOKE else 10, cache_images=1024)
    arch = yaml.safe_load(train_throughput.TOKENIZER_RECIPE.read_text())["model"]
    tokens = sum(p * p for p in arch["patch_nums"])
    result.update(tokens_per_image=tokens, cache_tokens_per_s=result["cache_img_per_s"] * tokens,
                  on_the_fly_tokens_per_s=result["on_the_fly_img_per_s"] * tokens)
    return result


# ---------------------------------------------------------------------------------------- report
def print_sampling_table(rows, peak: float) -> None:
    print("\nvar-d16 sampling, 256px, cfg 1.5 (seconds per image)")
    print(f"{'batch':>5} {'total s':>8} {'transf. s':>9} {'decoder s':>9} {'GFLOP':>7} {'GFLOP/s':>8} "
          f"{'of peak':>7} {'roofline s':>10} {'(of peak)':>9} {'peak mem':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {r['seconds_per_image']:>8.2f} {r['transformer_seconds_per_image']:>9.2f} "
              f"{r['decoder_seconds_per_image']:>9.2f} {r['gflop_per_image']:>7.0f} {r['gflops']:>8.0f} "
              f"{r['gflops'] / peak:>7.0%} {r['roofline_seconds_per_image']:>10.2f} "
              f"{r['roofline_fraction_of_peak']:>9.0%} {r['peak_memory_mib']:>6.0f} MiB")
    print("roofline: the fastest the sample could be if every scale ran at the matmul peak or, where it has too "
          "few rows for that, read the weights once at the memory bandwidth")


def print_table(results: dict) -> None:
    peak = results["peak_gflops"]
    print(f"\nmachine: {results['machine']['processor']}, {results['machine']['threads']} threads, "
          f"torch {results['machine']['torch']}, load {results['load_before']} -> {results['load_after']}")
    measured = [f"{results[k]['gflops']:.0f}" for k in ("matmul_peak", "matmul_peak_after_sampling") if k in results]
    print(f"float32 matmul peak: {peak:.0f} GFLOP/s (the best of {' and '.join(measured)}: before and after sampling)")
    if "memory_bandwidth" in results:
        print(f"memory read bandwidth: {results['memory_bandwidth']['read_gbps']:.1f} GB/s")
    if "var_sampling" in results:
        print_sampling_table(results["var_sampling"], peak)
    if "kv_cache" in results:
        k = results["kv_cache"]
        print(f"\nKV cache (batch 1, transformer): on {k['transformer_seconds_with_cache']:.2f}s, "
              f"off {k['transformer_seconds_without_cache']:.2f}s ({k['speedup']:.1f}x; "
              f"{k['gflop_with_cache']:.0f} vs {k['gflop_without_cache']:.0f} GFLOP; tokens equal: "
              f"{k['token_agreement']:.0%})")
    if "var_vs_ar" in results:
        print("\nVAR vs raster-scan AR (same depth/width, KV-cached, batch 1, cfg; seconds per image)")
        print(f"{'res':>5} {'tokens':>6} {'steps VAR/AR':>12} {'VAR s':>7} {'AR s':>8} {'decoder s':>9} {'AR/VAR':>7} "
              f"{'GFLOP VAR/AR (transformer)':>27}")
        for r in results["var_vs_ar"]:
            steps = f"{r['var_steps']}/{r['ar_steps']}"
            gflop = f"{r['var_transformer_gflop']:.0f}/{r['ar_transformer_gflop_analytic']:.0f}"
            print(f"{r['resolution']:>5} {r['tokens']:>6} {steps:>12} {r['var_seconds_per_image']:>7.2f} "
                  f"{r['ar_seconds_per_image']:>8.2f} {r['decoder_seconds']:>9.2f} {r['ar_over_var']:>6.1f}x "
                  f"{gflop:>27}")
    if "precision" in results:
        print("\nprecision options (batch 1; quality against the exact float32 path, same seeds)")
        fmt = lambda q: (f"tokens equal {q['token_agreement']:.1%}, PSNR "
                         + ("identical" if q["psnr_db"] is None else f"{q['psnr_db']:.1f} dB"))
        for r in results["precision"]:
            if "error" in r:
                print(f"  {r['precision']:>9}: not available ({r['error']})")
                continue
            line = f"  {r['precision']:>9}: {r['seconds_per_image']:.2f} s/image ({r['speedup']:.2f}x)"
            if "var_d16_random" in r:
                line += f"; var-d16 random: {fmt(r['var_d16_random'])}"
            if "fashion_mnist_trained" in r:
                line += f"; trained Fashion-MNIST: {fmt(r['fashion_mnist_trained'])}"
            print(line)
    t = results.get("training")
    if t and "skipped" in t:
        print(f"\ntraining throughput: skipped ({t['skipped']})")
    elif t:
        print(f"\ntraining throughput, {t['recipe']} ({t['model']}, batch {t['global_batch']}, "
              f"{t['tokens_per_image']} tokens per image): token cache {t['cache_tokens_per_s']:.0f} tokens/s, "
              f"encoding on the fly {t['on_the_fly_tokens_per_s']:.0f} tokens/s ({t['speedup']:.2f}x)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_results/bench.json", help="JSON file to write (default: %(default)s)")
    p.add_argument("--plot", default=None, help="PNG of time vs resolution (default: next to --out)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    p.add_argument("--batches", default="1,8", help="batch sizes for var-d16 sampling (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per measurement, after one warm-up "
                                                           "(the minimum is reported; default: %(default)s)")
    p.add_argument("--grids", default="16,20,24,32", help="final token grids for VAR vs raster AR "
                                                        f"(from {sorted(SCHEDULES)}; default: %(default)s)")
    p.add_argument("--ar-repeats", type=int, default=1, help="timed runs of the raster AR (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="tiny models, to check that the script runs "
                                                          "(the numbers mean nothing)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: "
                                              "sampling,kv,ar,precision,training")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    grids = [int(g) for g in args.grids.split(",") if g]
    bad = [g for g in grids if g not in SCHEDULES]
    if bad:
        raise SystemExit(f"error: no scale schedule for grids {bad}; choose from {sorted(SCHEDULES)}")
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_name("var_vs_ar.png")
    started = time.perf_counter()
    results = {
        "machine": {"device": str(device), "processor": processor_name(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "settings": {"sampling": SAMPLING, "repeats": args.repeats, "ar_repeats": args.ar_repeats},
        "load_before": load(),
    }
    log(f"load average {results['load_before']}; measuring the matmul peak")
    results["matmul_peak"] = matmul_peak(device)
    results["memory_bandwidth"] = memory_bandwidth(device)
    if device.type == "cuda":
        results["matmul_peak_bf16"] = matmul_peak(device, torch.bfloat16)

    var, vae = build_models(device)
    if "sampling" not in skip:
        results["var_sampling"] = []
        for batch in [int(b) for b in args.batches.split(",") if b]:
            log(f"var-d16 sampling, batch {batch}")
            results["var_sampling"].append(bench_var_sampling(var, vae, batch, device, args.repeats))
        # The peak moves with the machine's clock and its other load: measure it again, keep the higher.
        results["matmul_peak_after_sampling"] = matmul_peak(device)
    peaks = [results[k]["gflops"] for k in ("matmul_peak", "matmul_peak_after_sampling") if k in results]
    results["peak_gflops"] = max(peaks)
    for row in results.get("var_sampling", []):
        row["fraction_of_peak"] = row["gflops"] / results["peak_gflops"]
        bound = (roofline_transformer_seconds(var, row["batch"], results["peak_gflops"],
                                              results["memory_bandwidth"]["read_gbps"]) / row["batch"]
                 + row["decoder_gflop_per_image"] / results["peak_gflops"])
        row["roofline_seconds_per_image"] = bound
        row["roofline_fraction_of_peak"] = row["gflop_per_image"] / bound / results["peak_gflops"]
    if "kv" not in skip:
        log("KV cache on vs off")
        results["kv_cache"] = bench_kv_cache(var, device, args.repeats)
    if "precision" not in skip:
        log("precision options")
        results["precision"] = bench_precision_options(var, device, args.repeats)
    del var, vae
    if "ar" not in skip:
        log(f"VAR vs raster AR at grids {grids}")
        results["var_vs_ar"] = bench_var_vs_ar(grids, device, args.repeats, args.ar_repeats)
        plot_scaling(results["var_vs_ar"], plot)
        results["plot"] = str(plot)
    if "training" not in skip:
        log("training throughput")
        results["training"] = bench_training(device)

    results["load_after"] = load()
    results["wall_seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print_table(results)
    print(f"\nwrote {out}" + (f" and {plot}" if "plot" in results else "") +
          f" in {results['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
