"""Scaling of VAR on Fashion-MNIST: held-out loss, token error rate and sample quality against model size and compute.

    python benchmarks/scaling.py --out runs/scaling

Trains a family of VAR transformers (default: depth 1..5, width 48 x depth, heads = width / 64 rounded, at least 1)
on the same token cache with the same recipe (configs/var_fashion_mnist.yaml: batch, learning rate, warmup,
decay) and the same number of steps, one `nextscale train` run per size in OUT/d{depth}_w{width}. Per size it
records the held-out loss (overall and at the last scale), the token error rate (1 - token accuracy), the
training FLOPs, and the class accuracy and Fréchet distance of `--per-class` x 10 samples (sampled and
measured by benchmarks/fmnist_var_vs_ar.py's functions, i.e. `nextscale eval` with the project classifier).

Then it fits L = (a N)^b + c and the pure power law L = (a N)^b (a line in log-log, with its Pearson r)
against parameters N, and against compute C on the compute-optimal frontier of the runs' loss curves,
writes OUT/results.json, OUT/*.png (one plot per relation) and prints a table.

Resumable: a killed sweep continues where it stopped (a size's run resumes from its checkpoints, finished
sizes are not trained again, each size's sample-quality results are cached in OUT/d*_w*/quality.json).

Training FLOPs per step are counted analytically: 6 x (matmul parameters applied per token) x tokens
+ 6 x (AdaLN parameters, applied once per image to its class embedding) x images + attention, 12 x depth x
L^2 x width x images (QK^T and AV over all L = 155 positions, as the dense masked kernel computes them;
forward and backward). torch.utils.flop_counter on one training step is recorded beside it as a check: it
counts the matmuls (within 2.5% of the first two terms at the default sizes; the analytic count includes the
biases) but not the CPU attention kernel.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# The paper's fitted exponents (Tian et al. 2024, VAR, section 5: models of 18.5M to 2.0B parameters on
# ImageNet 256; N in billions, C in PFlops-days).
PAPER = {
    "loss_last_vs_params": -0.23, "loss_avg_vs_params": -0.20,
    "err_last_vs_params": -0.016, "err_avg_vs_params": -0.010,
    "loss_last_vs_compute": -0.13, "loss_avg_vs_compute": -0.16,
    "pearson": -0.998,
}
LOOKUP_PARAMS = ("pos_start", "pos_1LC", "class_emb.", "lvl_embed.")  # tables read by index: no FLOPs
PER_SAMPLE_PARAMS = ("ada_lin.", "head_nm.ada_lin.")  # the class-conditioned AdaLN: once per image, not per token
EMBEDDING_PARAMS = LOOKUP_PARAMS + ("word_embed.", "head.")  # excluded from the non-embedding count


# ============================================================================ fits
def power_law(n, log_a, b, c=0.0):
    """(a n)^b + c, with a given as its log (a itself under- or overflows when b is near 0)."""
    return np.exp(b * (log_a + np.log(n))) + c


def _safe_exp(v: float) -> float:
    return math.exp(v) if v < 700 else float("inf")


def fit_loglog(x, y) -> dict:
    """The pure power law y = (a x)^b as a least-squares line in log-log, and the Pearson r of log x, log y."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    b, intercept = np.polyfit(lx, ly, 1)
    r = float(np.corrcoef(lx, ly)[0, 1]) if np.ptp(ly) > 0 else float("nan")
    log_a = float(intercept / b) if b else float("nan")
    return {"a": _safe_exp(log_a), "log_a": log_a, "b": float(b), "pearson_r": r}


def fit_power_law_offset(x, y) -> dict:
    """y = (a x)^b + c by scipy.optimize.curve_fit (c >= 0, below the smallest y); r of log x vs log(y - c)."""
    from scipy.optimize import curve_fit
    x, y = np.asarray(x, float), np.asarray(y, float)
    lx = np.log(x)
    b0, intercept0 = np.polyfit(lx, np.log(y), 1)
    ymin = float(y.min())

    def model(lx, log_A, b, c):  # A x^b + c with A = a^b: well conditioned for any b
        return np.exp(log_A + b * lx) + c

    try:
        (log_A, b, c), _ = curve_fit(model, lx, y, p0=(intercept0, min(b0, -1e-4), 0.01 * ymin),
                                     bounds=([-np.inf, -5.0, 0.0], [np.inf, 0.0, ymin * (1 - 1e-6)]), maxfev=20000)
    except (RuntimeError, ValueError) as e:
        nan = float("nan")
        return {"a": nan, "log_a": nan, "b": nan, "c": nan, "pearson_r": nan, "error": str(e)}
    reducible = y - c
    r = float(np.corrcoef(lx, np.log(reducible))[0, 1]) if np.all(reducible > 0) else float("nan")
    log_a = float(log_A / b) if b else float("nan")
    return {"a": _safe_exp(log_a), "log_a": log_a, "b": float(b), "c": float(c), "pearson_r": r}


def frontier(curves: dict[str, tuple[np.ndarray, np.ndarray]], points: int = 30):
    """The compute-optimal frontier of loss curves: on a log grid of compute C, the lowest loss any run reached
    with at most C FLOPs (curves interpolated in log compute). Returns (C, loss, run, live): live marks the
    points set by a run at that very compute, not by the final loss of a cheaper run that already stopped
    (those flat stretches only say that no run was measured there; the power-law fit uses the live points)."""
    lo = min(float(c[c > 0].min()) for c, _ in curves.values())
    hi = max(float(c.max()) for c, _ in curves.values())
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), points))
    flops, loss, who, live = [], [], [], []
    for g in grid:
        cands = []
        for name, (c, l) in curves.items():
            if g < c[0]:
                continue
            inside = g <= c[-1]
            reached = l[c <= g]
            v = min(float(np.interp(math.log(g), np.log(c), l)) if inside else float("inf"),
                    float(reached.min()) if len(reached) else float("inf"))
            cands.append((v, not inside, name))  # ties: a run still training at g first
        if cands:
            v, stale, name = min(cands)
            flops.append(float(g))
            loss.append(v)
            who.append(name)
            live.append(not stale)
    return np.asarray(flops), np.asarray(loss), who, np.asarray(live, dtype=bool)


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """A trailing moving average (the first points average what there is)."""
    c = np.cumsum(np.insert(np.asarray(y, float), 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


# ============================================================================ per size
def size_name(depth: int, width: int) -> str:
    return f"d{depth}_w{width}"


def heads_for(width: int) -> int:
    return max(1, round(width / 64))


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            pass
    return out


def model_info(depth: int, width: int, tokenizer: str, batch: int, num_classes: int = 10) -> dict:
    """Parameter counts and FLOPs per training step of one size (built here, counted on one step)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from nextscale.training.var_trainer import ModelConfig, build_model, load_tokenizer, model_targets
    vae = load_tokenizer(tokenizer)
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=depth, embed_dim=width, num_heads=heads_for(width), drop_path_rate=0.0),
                        vae, num_classes)
    named = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(k for _, k in named)
    non_embedding = sum(k for n, k in named if not n.startswith(EMBEDDING_PARAMS))
    per_sample = sum(k for n, k in named if any(part in n for part in PER_SAMPLE_PARAMS))
    per_token = sum(k for n, k in named if not n.startswith(LOOKUP_PARAMS)) - per_sample
    L = sum(p * p for p in vae.patch_nums)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vae.vocab_size, (batch, L), generator=g)
    labels = torch.arange(batch) % num_classes
    inputs, target = model_targets(model, vae, tokens)
    with FlopCounterMode(display=False) as counter:
        logits = model(labels, inputs)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1)).backward()
    attention = 12 * depth * L * L * width * batch  # QK^T and AV, 2 L^2 width each, x3 for the backward
    matmuls = 6 * per_token * batch * L + 6 * per_sample * batch
    return {"depth": depth, "width": width, "heads": heads_for(width), "params": total,
            "params_non_embedding": non_embedding, "params_per_token_matmul": per_token,
            "params_per_image_adaln": per_sample, "tokens_per_image": L,
            "flops_per_step": int(matmuls + attention), "flops_per_step_attention": int(attention),
            "flops_per_step_counted": int(counter.get_total_flops())}


def trained_steps(model_dir: Path) -> int | None:
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        return None
    extra = json.loads(cfg.read_text())
    for key in ("extra_config", "extra"):
        if isinstance(extra.get(key), dict) and "trained_steps" in extra[key]:
            return int(extra[key]["trained_steps"])
    return extra.get("trained_steps")


def train_size(args, run_dir: Path, depth: int, width: int, log) -> float:
    """Trains (or resumes) one size with `nextscale train`; seconds spent (0 when it was finished)."""
    if trained_steps(run_dir / "model") == args.steps:
        return 0.0
    overrides = [f"out_dir={run_dir}", f"tokenizer={args.tokenizer}", f"token_cache={args.token_cache}",
                 f"model.depth={depth}", f"model.embed_dim={width}", f"model.num_heads={heads_for(width)}",
                 f"steps={args.steps}", f"global_batch={args.batch}", f"threads={args.threads}",
                 f"eval_every={args.eval_every}", f"eval_images={args.eval_images}",
                 f"optim.warmup_steps={min(args.warmup, max(args.steps - 1, 0))}",
                 f"checkpoint_every={args.checkpoint_every}", "keep_checkpoints=1", "sample.every=0",
                 f"log_every={args.log_every}", "progress=false", "tensorboard=false", "resume=auto", *args.set]
    cmd = [sys.executable, "-m", "nextscale", "train", str(args.config), *overrides]
    log(f"[{size_name(depth, width)}] {' '.join(cmd[1:])}")
    start = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.train.log", "a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def quality(args, run_dir: Path) -> dict:
    """Class accuracy and Fréchet distance of per_class x 10 samples, cached in quality.json."""
    path = run_dir / "quality.json"
    key = {"per_class": args.per_class, "cfg": args.cfg, "seed": args.seed, "steps": args.steps}
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached
    if args.per_class <= 0 or args.report_only:
        return {}
    from fmnist_var_vs_ar import evaluate, sample_var  # this folder's benchmark: the same sampling and eval

    from nextscale.images import to_uint8_hwc
    labels = [c for c in range(10) for _ in range(args.per_class)]
    images, seconds = sample_var(str(run_dir / "model"), labels, {"cfg": args.cfg, "top_k": 0, "top_p": 0.0},
                                 args.seed, 100)
    npz = run_dir / "samples.npz"
    np.savez(npz, arr_0=to_uint8_hwc(images), labels=np.asarray(labels, dtype=np.int64))
    m = evaluate(npz)["fashion_mnist"]
    out = {"key": key, "num_images": len(labels), "seconds_per_image": seconds / len(labels),
           "class_accuracy": m.get("class_accuracy"), "frechet_distance": m.get("frechet_distance"),
           "frechet_distance_floor": m.get("frechet_distance_floor")}
    path.write_text(json.dumps(out, indent=2) + "\n")
    return out


def held_out(run_dir: Path, at_step: int | None = None) -> dict:
    """The last held-out record of a run (or the one at `at_step`): loss overall and at the last scale, token
    error rates."""
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval_loss" in r]
    if at_step is not None:
        evals = [r for r in evals if r["step"] == at_step]
    if not evals:
        return {}
    r = evals[-1]
    last = max(int(k[len("eval_loss_s"):]) for k in r if k.startswith("eval_loss_s"))
    return {"step": r["step"], "loss": r["eval_loss"], "loss_last": r[f"eval_loss_s{last}"],
            "token_error": 1 - r["eval_acc"], "token_error_last": 1 - r[f"eval_acc_s{last}"]}


def loss_curve(run_dir: Path, flops_per_step: int, window: int, up_to_step: int | None = None) -> dict:
    """Loss against training compute: the training loss (every log_every steps, on images not seen before while
    the run is under one epoch, smoothed) and the held-out loss records."""
    recs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if up_to_step is None or r["step"] <= up_to_step]
    train = {r["step"]: r for r in recs if "loss" in r}  # a resumed run may log a step twice: keep one
    evals = {r["step"]: r for r in recs if "eval_loss" in r}
    ts, es = sorted(train), sorted(evals)
    last = max((int(k[len("loss_s"):]) for k in train[ts[-1]] if k.startswith("loss_s")), default=None) if ts else None
    return {"train_steps": ts,
            "train_loss_smoothed": smooth([train[s]["loss"] for s in ts], window).tolist() if ts else [],
            "train_loss_last_smoothed": (smooth([train[s][f"loss_s{last}"] for s in ts], window).tolist()
                                         if last is not None else []),
            "eval_steps": es, "eval_loss": [evals[s]["eval_loss"] for s in es],
            "eval_loss_last": [evals[s].get(f"eval_loss_s{last}") for s in es],
            "flops_per_step": flops_per_step}


# ============================================================================ plots
def _plain_ticks(ax):
    from matplotlib.ticker import ScalarFormatter
    for f in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        f(ScalarFormatter())


def _loglog_line(ax, fit, xs, label, **kw):
    x = np.exp(np.linspace(np.log(min(xs)) - 0.1, np.log(max(xs)) + 0.1, 50))
    ax.plot(x, power_law(x, fit["log_a"], fit["b"], fit.get("c", 0.0)), label=label, **kw)


def plot_all(results: dict, out: Path, tag: str = "") -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = results["sizes"]
    N = [s["params"] for s in sizes]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, color, name in (("loss", "C0", "all scales"), ("loss_last", "C3", "last scale")):
        y = [s["held_out"][key] for s in sizes]
        ax.scatter(N, y, color=color, zorder=3, label=f"held-out loss, {name}")
        f = results["fits"]["params"][key]
        _loglog_line(ax, f["power_law"], N, f"(aN)^b: b={f['power_law']['b']:.3f}, r={f['power_law']['pearson_r']:.3f}",
                     color=color, ls="--")
        o = f["with_offset"]
        if o and math.isfinite(o["b"]):
            _loglog_line(ax, o, N, f"(aN)^b+c: b={o['b']:.3f}, c={o['c']:.2f}", color=color, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="held-out cross-entropy",
           title=f"loss vs parameters (paper: b={PAPER['loss_last_vs_params']} last, "
                 f"{PAPER['loss_avg_vs_params']} avg)")
    ax.legend(fontsize=7)
    _plain_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    paths.append(str(out / f"loss_vs_params{tag}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, color, name in (("token_error", "C0", "all scales"), ("token_error_last", "C3", "last scale")):
        y = [s["held_out"][key] for s in sizes]
        ax.scatter(N, y, color=color, zorder=3, label=f"token error rate, {name}")
        f = results["fits"]["params"][key]["power_law"]
        _loglog_line(ax, f, N, f"(aN)^b: b={f['b']:.4f}, r={f['pearson_r']:.3f}", color=color, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="held-out token error rate",
           title=f"token error vs parameters (paper: b={PAPER['err_last_vs_params']} last, "
                 f"{PAPER['err_avg_vs_params']} avg)")
    ax.legend(fontsize=7)
    _plain_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    paths.append(str(out / f"error_vs_params{tag}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, s in enumerate(sizes):
        c = s["curve"]
        fps = c["flops_per_step"]
        ax.plot(np.asarray(c["train_steps"]) * fps, c["train_loss_smoothed"], color=f"C{i}", lw=1,
                label=f"{s['name']} ({s['params'] / 1e6:.2f}M)")
        ax.scatter(np.asarray(c["eval_steps"]) * fps, c["eval_loss"], color=f"C{i}", s=10, marker="o")
    fr = results["fits"]["compute"].get("loss")
    if fr:
        ax.plot(fr["frontier_flops"], fr["frontier_loss"], color="k", lw=2, alpha=0.3,
                label="frontier: lowest loss with <= C FLOPs")
        live = np.asarray(fr["frontier_live"])
        ax.scatter(np.asarray(fr["frontier_flops"])[live], np.asarray(fr["frontier_loss"])[live], color="k", s=6,
                   zorder=4, label="frontier points fitted")
        f = fr["power_law"]
        _loglog_line(ax, f, fr["frontier_flops"], f"frontier (aC)^b: b={f['b']:.3f}, r={f['pearson_r']:.3f}",
                     color="k", ls="--")
        o = fr["with_offset"]
        if o and math.isfinite(o["b"]):
            _loglog_line(ax, o, fr["frontier_flops"], f"frontier (aC)^b+c: b={o['b']:.3f}, c={o['c']:.2f}",
                         color="k", ls=":")
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C",
           ylabel="loss, all scales (lines: training, dots: held-out)",
           title=f"loss vs compute (paper: b={PAPER['loss_avg_vs_compute']} avg, {PAPER['loss_last_vs_compute']} last)")
    ax.legend(fontsize=6)
    _plain_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    paths.append(str(out / f"loss_vs_compute{tag}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    q = [s for s in sizes if s.get("quality", {}).get("class_accuracy") is not None]
    if q:
        fig, ax1 = plt.subplots(figsize=(6, 4.2))
        Nq = [s["params"] for s in q]
        ax1.plot(Nq, [s["quality"]["class_accuracy"] for s in q], "o-", color="C0", label="class accuracy")
        ax1.set(xscale="log", xlabel="parameters N", ylabel="class accuracy", ylim=(0, 1))
        ax2 = ax1.twinx()
        ax2.plot(Nq, [s["quality"]["frechet_distance"] for s in q], "s-", color="C3", label="Fréchet distance")
        ax2.axhline(q[0]["quality"]["frechet_distance_floor"], color="C3", ls=":", label="Fréchet floor (real)")
        ax2.set(yscale="log", ylabel="Fréchet distance (project classifier)")
        h1, l1 = ax1.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="center left")
        ax1.set_title(f"sample quality vs parameters ({q[0]['quality']['num_images']} samples, cfg {results['cfg']})")
        fig.tight_layout()
        paths.append(str(out / f"quality_vs_params{tag}.png"))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ============================================================================ main
def analyse(sizes: list[dict], window: int, frontier_from_step: int = 0) -> dict:
    fits: dict = {"params": {}, "params_non_embedding": {}, "compute": {}}
    if len(sizes) >= 2:
        for key in ("loss", "loss_last", "token_error", "token_error_last"):
            y = [s["held_out"][key] for s in sizes]
            for which in ("params", "params_non_embedding"):
                x = [s[which] for s in sizes]
                fits[which][key] = {"power_law": fit_loglog(x, y),
                                    "with_offset": fit_power_law_offset(x, y) if len(sizes) >= 4 else None}
        for key, suffix in (("loss", ""), ("loss_last", "_last")):
            curves = {}
            for s in sizes:
                c = s["curve"]
                steps = np.asarray(c["train_steps"], float)
                keep = steps >= frontier_from_step  # past the warmup's transient (the first plateau at ln V)
                if keep.sum() >= 2 and len(c[f"train_loss{suffix}_smoothed"]) == len(steps):
                    curves[s["name"]] = (steps[keep] * c["flops_per_step"],
                                         np.asarray(c[f"train_loss{suffix}_smoothed"], float)[keep])
            if len(curves) >= 2:
                fc, fl, who, live = frontier(curves)
                fits["compute"][key] = {"from_step": frontier_from_step,
                                        "frontier_flops": fc.tolist(), "frontier_loss": fl.tolist(),
                                        "frontier_run": who, "frontier_live": live.tolist(),
                                        "power_law": fit_loglog(fc[live], fl[live]),
                                        "with_offset": fit_power_law_offset(fc[live], fl[live])
                                        if live.sum() >= 4 else None}
    return fits


def parse_sizes(args) -> list[tuple[int, int]]:
    if args.sizes:
        return [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    return [(d, args.width_per_depth * d) for d in range(1, args.max_depth + 1)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/scaling", help="sweep folder (default runs/scaling)")
    p.add_argument("--config", default=str(REPO / "configs" / "var_fashion_mnist.yaml"),
                   help="the training recipe every size shares (default configs/var_fashion_mnist.yaml)")
    p.add_argument("--tokenizer", default=str(REPO / "src" / "nextscale" / "assets" / "fashion_mnist_var"
                                              / "tokenizer"),
                   help="tokenizer (default: the shipped model's)")
    p.add_argument("--token-cache", default="runs/cache_fmnist_train", help="token cache of that tokenizer")
    p.add_argument("--max-depth", type=int, default=5, help="depths 1..this (default 5)")
    p.add_argument("--width-per-depth", type=int, default=48, help="width = this x depth (default 48; paper 64)")
    p.add_argument("--sizes", default=None, help="explicit sizes instead, e.g. 1x48,2x96 (depth x width)")
    p.add_argument("--steps", type=int, default=600, help="training steps of every size (default 600)")
    p.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--warmup", type=int, default=60, help="warmup steps (default 60)")
    p.add_argument("--eval-every", type=int, default=100, help="held-out metrics every (default 100 steps)")
    p.add_argument("--eval-images", type=int, default=500, help="held-out test images (default 500)")
    p.add_argument("--log-every", type=int, default=10, help="training loss logged every (default 10 steps)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every (default 100 steps)")
    p.add_argument("--smooth", type=int, default=5, help="moving average of the logged training loss (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, training and sampling (default 1)")
    p.add_argument("--per-class", type=int, default=100, help="samples per class for quality (default 100; 0: skip)")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale of the samples (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (default 0)")
    p.add_argument("--frontier-from-step", type=int, default=None,
                   help="the compute frontier uses each run's curve from this step on (default: 2 x warmup)")
    p.add_argument("--report-only", action="store_true",
                   help="train and sample nothing: table, fits and plots of the sizes that have finished")
    p.add_argument("--at-step", type=int, default=None,
                   help="with --report-only: every size's held-out metrics at this step (a step of --eval-every), "
                        "sizes still training included: the same point of the same schedule for all")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more `nextscale train` overrides")
    args = p.parse_args(argv)
    if args.at_step and not args.report_only:
        p.error("--at-step only goes with --report-only")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # also the `nextscale eval` subprocesses
    import torch
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.out = out
    if not args.report_only:  # two sweeps training in one folder would resume each other's runs
        import fcntl
        lock = open(out / ".sweep.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            p.error(f"another sweep is training in {out}; wait for it (or use --report-only)")
        try:
            return sweep(args, out)
        finally:
            lock.close()
    return sweep(args, out)


def sweep(args, out: Path) -> int:
    start = time.perf_counter()

    def log(msg):
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        with open(out / "sweep.log", "a") as f:
            f.write(line + "\n")

    sizes = []
    for depth, width in parse_sizes(args):
        name = size_name(depth, width)
        run_dir = out / name
        finished = trained_steps(run_dir / "model") == args.steps
        if args.report_only and not (finished or (args.at_step and held_out(run_dir, args.at_step))):
            log(f"[{name}] not finished: left out (--report-only)")
            continue
        run_dir.mkdir(exist_ok=True)
        info_path = run_dir / "size.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if info.get("batch") != args.batch or "flops_per_step_counted" not in info:
            info = {**model_info(depth, width, args.tokenizer, args.batch), "batch": args.batch,
                    "train_seconds": info.get("train_seconds", 0.0)}
            info_path.write_text(json.dumps(info, indent=2) + "\n")
        log(f"[{name}] {info['params']:,} parameters ({info['params_non_embedding']:,} non-embedding), "
            f"{info['flops_per_step']:.3g} FLOPs per step")
        seconds = 0.0 if args.report_only else train_size(args, run_dir, depth, width, log)
        if seconds:
            info["train_seconds"] = info.get("train_seconds", 0.0) + seconds
            info_path.write_text(json.dumps(info, indent=2) + "\n")
        q_start = time.perf_counter()
        qual = quality(args, run_dir)
        if time.perf_counter() - q_start > 1:
            log(f"[{name}] quality: {qual}")
        finished = trained_steps(run_dir / "model") == args.steps  # (now that it may have trained)
        steps = args.at_step or trained_steps(run_dir / "model") or args.steps
        sizes.append({"name": name, **info, "steps": steps, "train_flops": info["flops_per_step"] * steps,
                      "held_out": held_out(run_dir, args.at_step),
                      "quality": qual if finished and not args.at_step else {},
                      "curve": loss_curve(run_dir, info["flops_per_step"], args.smooth, args.at_step),
                      "model": str(run_dir / "model") if finished else None})
    results = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "cfg": args.cfg, "paper": PAPER, "sizes": sizes,
               "fits": analyse(sizes, args.smooth, 2 * args.warmup if args.frontier_from_step is None
                               else args.frontier_from_step),
               "this_invocation_seconds": time.perf_counter() - start,
               "train_seconds_total": sum(s["train_seconds"] for s in sizes)}
    tag = f"_step{args.at_step}" if args.at_step else ""  # a report at one step does not replace the sweep's
    results["plots"] = plot_all(results, out, tag) if len(sizes) >= 2 else []
    (out / f"results{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    log(f"wrote {out / f'results{tag}.json'}")
    return 0


def format_table(results: dict) -> str:
    lines = [f"{'size':<9} {'params':>9} {'non-emb':>9} {'train FLOPs':>11} {'loss':>6} {'last':>6} "
             f"{'err':>6} {'err last':>8} {'cls acc':>7} {'Fréchet':>8} {'train s':>8}"]
    for s in results["sizes"]:
        h, q = s["held_out"], s.get("quality") or {}
        lines.append(f"{s['name']:<9} {s['params']:>9,} {s['params_non_embedding']:>9,} {s['train_flops']:>11.3g} "
                     f"{h.get('loss', float('nan')):>6.3f} {h.get('loss_last', float('nan')):>6.3f} "
                     f"{h.get('token_error', float('nan')):>6.3f} {h.get('token_error_last', float('nan')):>8.3f} "
                     f"{q.get('class_accuracy') or float('nan'):>7.3f} "
                     f"{q.get('frechet_distance') or float('nan'):>8.2f} "
                     f"{s['train_seconds']:>8.0f}")
    for which, fits in results["fits"].items():
        if which == "compute":
            for key, fr in fits.items():
                f, paper = fr["power_law"], PAPER["loss_avg_vs_compute" if key == "loss" else "loss_last_vs_compute"]
                lines.append(f"frontier {key} vs compute: (aC)^b, b = {f['b']:.4f}, Pearson r = {f['pearson_r']:.4f} "
                             f"(paper {paper})")
            continue
        for key, f in fits.items():
            pl, wo = f["power_law"], f["with_offset"]
            extra = (f"; (aN)^b + c: b = {wo['b']:.4f}, c = {wo['c']:.3f}, r = {wo['pearson_r']:.4f}"
                     if wo and math.isfinite(wo["b"]) else "")
            lines.append(f"{key} vs {which}: (aN)^b, b = {pl['b']:.4f}, Pearson r = {pl['pearson_r']:.4f}{extra}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
