"""The sampler's options as one speed/quality frontier, measured in one run.

    python benchmarks/sampling_frontier.py --out bench_results/sampling_frontier \
        --reject-classifier runs/classifier_rejector --refiner runs/var_fmnist_small/model

Quality: each option on the shipped Fashion-MNIST model, --num-per-class images of every class (default 100:
1,000 samples; image i with seed i, candidate j with seed j under rejection), measured as `nextscale eval`
measures: class accuracy and Fréchet distance in the features of the project's classifier (the shipped one)
against the 10k test split, with the seconds per image of the sampling. Rejection sampling rejects with a
second classifier (--reject-classifier; trained here, another seed and narrower stages, when not given) and
is scored with the shipped one: the gain is not a classifier grading its own choice. Collaborative decoding
needs a second, smaller model on the shipped tokenizer (--refiner); without one those rows are left out.

Times are the minimum of a few runs after a warm-up, the options taken in turn (1, 2, ..., 1, 2, ...) so that
a change of the machine's load falls on all alike: on Fashion-MNIST one batch of --batch-size images
(--time-repeats runs; the time of the whole 1,000-image run is kept too), on var-d16 with the published
tokenizer's architecture (random weights, 256px) --d16-batch images (--d16-repeats runs), for the options that
change the speed.
Options are defined by what they leave out at the end of the pyramid ("last 2 scales unguided" is
truncated:5 of the 7 Fashion-MNIST scales, truncated:8 of var-d16's 10), so one row means the same on both.

Writes OUT/results.json, OUT/table.md (the README's table) and OUT/frontier.png (seconds per image against
the Fréchet distance, the default marked). --quick runs every code path with tiny counts and a tiny stand-in
for var-d16: a test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import nextscale
from bench import processor_name


@dataclass
class Option:
    key: str
    label: str
    settings: Callable[[int], dict]  # number of scales -> keyword arguments of nextscale.sample
    speed: bool  # timed on var-d16 too (it changes the cost of a sample)
    needs: str | None = None  # "refiner" / "rejector": left out without one


OPTIONS = [
    Option("default", "default: linear ramp, float32 (exact)", lambda K: {}, True),
    Option("constant", "guidance constant", lambda K: {"guidance": "constant"}, False),
    Option("truncated-2", "guidance truncated: last 2 scales unguided", lambda K: {"guidance": f"truncated:{K - 2}"},
           True),
    Option("truncated-4", "guidance truncated: last 4 scales unguided", lambda K: {"guidance": f"truncated:{K - 4}"},
           True),
    Option("unguided", "no guidance (truncated:0)", lambda K: {"guidance": "truncated:0"}, True),
    Option("bfloat16", "precision bfloat16", lambda K: {"precision": "bfloat16"}, True),
    Option("int8", "precision int8", lambda K: {"precision": "int8"}, True),
    Option("truncated-2+bfloat16", "truncated (last 2 unguided) + bfloat16",
           lambda K: {"guidance": f"truncated:{K - 2}", "precision": "bfloat16"}, True),
    Option("refiner-2", "collaborative: refiner samples the last 2 scales", lambda K: {"switch_at": K - 2}, True,
           "refiner"),
    Option("refiner-4", "collaborative: refiner samples the last 4 scales", lambda K: {"switch_at": K - 4}, True,
           "refiner"),
    Option("reject-0.5", "rejection, keep 0.5", lambda K: {"keep": 0.5}, False, "rejector"),
    Option("reject-0.25", "rejection, keep 0.25", lambda K: {"keep": 0.25}, False, "rejector"),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sample_kwargs(option: Option, K: int, refiner, rejector) -> dict:
    kwargs = option.settings(K)
    if option.needs == "refiner":
        kwargs["refiner"] = refiner
    if option.needs == "rejector":
        kwargs["reject_with"] = rejector
    return kwargs


# ---------------------------------------------------------------------------------------- quality (Fashion-MNIST)
def train_rejector(folder: Path, epochs: int, threads: int) -> Path:
    """A second Fashion-MNIST classifier (seed 1, stages 8,16,32, where the shipped one has seed 0, 16,32,64)."""
    log(f"training the rejecting classifier into {folder} ({epochs} epochs)")
    subprocess.run([sys.executable, "-m", "nextscale", "train-classifier", "--seed", "1", "--widths", "8,16,32",
                    "--epochs", str(epochs), "--threads", str(threads), "--out", str(folder)], check=True)
    return folder


def round_robin_seconds(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """{key: the minimum seconds of `repeats` calls}, after one warm-up call each, the calls taken in turn
    (option 1, 2, ..., 1, 2, ...) so that a change of the machine's load falls on every option alike."""
    best = {key: math.inf for key in runs}
    for round_ in range(repeats + 1):
        for key, run in runs.items():
            start = time.perf_counter()
            run()
            if round_:  # round 0 warms up (and quantizes, for int8)
                best[key] = min(best[key], time.perf_counter() - start)
    return best


def quality_rows(options, var, labels, args, refiner, rejector, classifier) -> tuple[list[dict], dict]:
    from nextscale.evaluation.evaluate import fashion_mnist_metrics
    from nextscale.evaluation.image_sets import ImageSet
    from nextscale.images import to_uint8_hwc
    from nextscale.inference_options import class_names

    K = len(var.patch_nums)
    n = len(labels)
    names = tuple(class_names(var)) or None
    rows, floor, usable = [], {}, {}
    for option in options:
        kwargs = sample_kwargs(option, K, refiner, rejector)
        row = {"key": option.key, "label": option.label,
               "settings": {k: v for k, v in kwargs.items() if k not in ("refiner", "reject_with")}}
        log(f"Fashion-MNIST: {option.label} ({n} images)")
        try:
            start = time.perf_counter()
            out = nextscale.sample(var, labels, seed=args.seed, per_image_seeds=True, batch_size=args.batch_size,
                                   **kwargs)
            row["seconds_per_image_whole_run"] = (time.perf_counter() - start) / n
        except (RuntimeError, ValueError) as e:  # e.g. bfloat16 autocast where the CPU has no support
            row["error"] = str(e).splitlines()[0]
            rows.append(row)
            continue
        usable[option.key] = kwargs
        samples = ImageSet(to_uint8_hwc(out.images.float().cpu()), np.asarray(labels, dtype=np.int64),
                           class_names=names)
        m = fashion_mnist_metrics(samples, classifier, torch.device("cpu"), floor_draws=args.floor_draws if not floor
                                  else 1, kid_subsets=args.kid_subsets, kid_subset_size=min(1000, n),
                                  data_dir=args.fashion_mnist_dir)
        row.update(class_accuracy=m["class_accuracy"], frechet_distance=m["frechet_distance"], kid=m["kid"])
        if option.needs == "rejector":
            row["mean_kept_score"] = float(out.scores.mean())
        if not floor:
            floor = {"frechet_distance_floor": m["frechet_distance_floor"],
                     "frechet_distance_floor_std": m["frechet_distance_floor_std"], "kid_floor": m["kid_floor"]}
        rows.append(row)
        log(f"  class accuracy {row['class_accuracy']:.3f}, Fréchet {row['frechet_distance']:.2f}")
    # The time: one batch of every class (--batch-size images, rejection's candidates and scoring included),
    # the options in turn, the minimum of --time-repeats.
    timing_labels = [labels[i * n // args.batch_size] for i in range(min(args.batch_size, n))]
    seconds = round_robin_seconds({key: (lambda kw=kw: nextscale.sample(
        var, timing_labels, seed=args.seed, per_image_seeds=True, batch_size=args.batch_size, **kw))
        for key, kw in usable.items()}, args.time_repeats)
    for row in rows:
        if row["key"] in seconds:
            row["seconds_per_image"] = seconds[row["key"]] / len(timing_labels)
            log(f"Fashion-MNIST: {row['label']}: {row['seconds_per_image']:.4f} s/image")
    return rows, floor


# ---------------------------------------------------------------------------------------- speed (var-d16)
def d16_models(quick: bool):
    """(var-d16 with the published tokenizer's architecture, a depth-8 refiner on the same tokenizer), random
    weights; in quick mode tiny stand-ins."""
    torch.manual_seed(0)
    if quick:
        vae = nextscale.VQVAE(nextscale.VQVAEConfig(ch=32, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4, 5)))
        small = dict(num_classes=10, vocab_size=64, vae_channels=8, patch_nums=(1, 2, 3, 4, 5))
        var = nextscale.build_var("var-d16", depth=2, embed_dim=64, num_heads=2, **small)
        refiner = nextscale.build_var("var-d16", depth=1, embed_dim=32, num_heads=1, **small)
    else:
        vae = nextscale.build_vae("vae-f16c32")
        var = nextscale.build_var("var-d16")
        refiner = nextscale.build_var("var-d16", depth=8, embed_dim=512, num_heads=8)
    for model in (var, refiner):
        model.eval()
        model.attach_tokenizer(vae.eval())
    return var, refiner


def speed_rows(options, batch: int, repeats: int, quick: bool) -> list[dict]:
    var, refiner = d16_models(quick)
    K = len(var.patch_nums)
    labels = [(i * 97) % var.num_classes for i in range(batch)]
    sampling = dict(cfg=1.5, top_k=900, top_p=0.96)  # the published FID settings
    rows, runs = [], {}
    for option in options:
        kwargs = sample_kwargs(option, K, refiner, None)
        row = {"key": option.key, "label": option.label,
               "settings": {k: v for k, v in kwargs.items() if k != "refiner"}}
        try:  # one image first: an option this machine cannot run is reported, not timed
            nextscale.sample(var, labels[:1], seed=0, per_image_seeds=True, **sampling, **kwargs)
            runs[option.key] = lambda kw=kwargs: nextscale.sample(var, labels, seed=0, per_image_seeds=True,
                                                                  batch_size=batch, **sampling, **kw)
        except (RuntimeError, ValueError) as e:
            row["error"] = str(e).splitlines()[0]
        rows.append(row)
    log(f"var-d16: {len(runs)} options at batch {batch}, {repeats} rounds after a warm-up")
    seconds = round_robin_seconds(runs, repeats)
    for row in rows:
        if row["key"] in seconds:
            row["seconds_per_image"] = seconds[row["key"]] / batch
    default = next((r["seconds_per_image"] for r in rows if r["key"] == "default" and "error" not in r), None)
    for row in rows:
        if default and "seconds_per_image" in row:
            row["speedup"] = default / row["seconds_per_image"]
        if "seconds_per_image" in row:
            log(f"  {row['seconds_per_image']:.3f} s/image ({row.get('speedup', float('nan')):.2f}x)")
    return rows


# ---------------------------------------------------------------------------------------- outputs
def table(results: dict) -> str:
    quality = {r["key"]: r for r in results.get("fashion_mnist", {}).get("rows", [])}
    speed = {r["key"]: r for r in results.get("var_d16", {}).get("rows", [])}
    lines = ["| option | Fashion-MNIST s / image | class accuracy | Fréchet distance | var-d16 s / image "
             f"(batch {results.get('var_d16', {}).get('batch', '-')}) | var-d16 speed-up |",
             "| --- | --- | --- | --- | --- | --- |"]
    for option in OPTIONS:
        q, s = quality.get(option.key), speed.get(option.key)
        if q is None and s is None:
            continue

        def cell(row, key, fmt):
            if row is None:
                return "-"
            if "error" in row:
                return f"failed: {row['error'][:60]}"
            return format(row[key], fmt) if key in row else "-"
        label = f"**{option.label}**" if option.key == "default" else option.label
        lines.append(f"| {label} | {cell(q, 'seconds_per_image', '.4f')} | {cell(q, 'class_accuracy', '.3f')} | "
                     f"{cell(q, 'frechet_distance', '.1f')} | {cell(s, 'seconds_per_image', '.2f')} | "
                     f"{cell(s, 'speedup', '.2f') + ('x' if s and 'speedup' in s else '')} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Seconds per image (Fashion-MNIST) against Fréchet distance, one point per option, the default a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fm = results["fashion_mnist"]
    rows = [r for r in fm["rows"] if "frechet_distance" in r]
    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in rows:
        default = r["key"] == "default"
        ax.scatter(r["seconds_per_image"], r["frechet_distance"], marker="*" if default else "o",
                   s=220 if default else 40, color="tab:red" if default else "tab:blue", zorder=3)
        ax.annotate(r["key"], (r["seconds_per_image"], r["frechet_distance"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    floor = fm.get("floor", {}).get("frechet_distance_floor")
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[0], floor, " real images (floor)", va="bottom", fontsize=8, color="gray")
    ax.set_xlabel("seconds per image (shipped Fashion-MNIST model, batch %d)" % fm["batch_size"])
    ax.set_ylabel("Fréchet distance (project classifier; lower is better)")
    ax.set_title(f"Sampler options, {fm['num_images']} samples each (star: the default)", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench_results/sampling_frontier", help="output folder")
    p.add_argument("--num-per-class", type=int, default=None, help="Fashion-MNIST images per class (default 100; "
                                                                    "--quick: 2)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch-size", type=int, default=100, help="Fashion-MNIST images per batch (default 100)")
    p.add_argument("--reject-classifier", default=None, metavar="FOLDER",
                   help="the classifier that rejects (not the shipped one, which scores); default: train one into "
                        "OUT/rejector (not in --quick)")
    p.add_argument("--rejector-epochs", type=int, default=8, help="epochs of that training (default 8)")
    p.add_argument("--refiner", default=None, metavar="FOLDER",
                   help="a smaller VAR on the shipped tokenizer, for the collaborative-decoding rows")
    p.add_argument("--d16-batch", type=int, default=8, help="var-d16 images per batch (default 8)")
    p.add_argument("--d16-repeats", type=int, default=2, help="timed var-d16 runs per option (default 2)")
    p.add_argument("--time-repeats", type=int, default=3,
                   help="timed Fashion-MNIST batches per option, taken in turn with the other options (default 3)")
    p.add_argument("--floor-draws", type=int, default=5, help="draws of the real-image floor (default 5)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--only", default=None, help="comma-separated option keys (default: all): " +
                   ", ".join(o.key for o in OPTIONS))
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: quality, speed")
    p.add_argument("--fashion-mnist-dir", default=None, help="folder of the Fashion-MNIST files")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny counts and stand-in models: test the script")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.d16_repeats, args.time_repeats, args.floor_draws, args.kid_subsets = 1, 1, 1, 2
        args.batch_size = min(args.batch_size, 10)
    per_class = args.num_per_class or (2 if args.quick else 100)
    wanted = set(args.only.split(",")) if args.only else {o.key for o in OPTIONS}
    unknown = wanted - {o.key for o in OPTIONS}
    if unknown:
        p.error(f"unknown option keys: {', '.join(sorted(unknown))}")
    options = [o for o in OPTIONS if o.key in wanted]
    if not any(o.key == "default" for o in options):
        options.insert(0, OPTIONS[0])  # the reference point of every speed-up
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"processor": processor_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "load_before": [round(x, 2) for x in os.getloadavg()], "quick": args.quick, "left_out": {}}

    if "quality" not in skip:
        from nextscale.evaluation.classifier import load_classifier, shipped_classifier_path
        var = nextscale.load_pretrained("fashion-mnist")
        classifier = load_classifier()
        refiner = rejector = None
        if args.refiner:
            refiner = nextscale.load_var(args.refiner)
        elif any(o.needs == "refiner" for o in options):
            results["left_out"]["refiner"] = "no --refiner: a smaller VAR on the shipped tokenizer is needed"
        if any(o.needs == "rejector" for o in options):
            folder = args.reject_classifier
            if folder is None and not args.quick:
                folder = train_rejector(out / "rejector", args.rejector_epochs, args.threads or 1)
            if folder is not None:
                if Path(folder).resolve() == shipped_classifier_path().resolve():
                    p.error("--reject-classifier is the shipped classifier, which scores the samples: reject with "
                            "another one")
                rejector = load_classifier(folder)
                results["rejector"] = {"path": str(folder), "description": rejector.config.describe()}
            else:
                results["left_out"]["rejector"] = "no --reject-classifier in --quick mode"
        present = [o for o in options if (o.needs != "refiner" or refiner is not None)
                   and (o.needs != "rejector" or rejector is not None)]
        labels = [c for c in range(var.num_classes) for _ in range(per_class)]
        rows, floor = quality_rows(present, var, labels, args, refiner, rejector, classifier)
        results["fashion_mnist"] = {"num_images": len(labels), "batch_size": args.batch_size,
                                    "sampling": nextscale.recommended_sampling(var), "floor": floor, "rows": rows,
                                    "scored_by": classifier.config.describe()}
    if "speed" not in skip:
        rows = speed_rows([o for o in options if o.speed], args.d16_batch, args.d16_repeats, args.quick)
        results["var_d16"] = {"batch": args.d16_batch, "model": "stand-in (--quick)" if args.quick else
                              "var-d16 + vae-f16c32, random weights, 256px; refiner depth 8", "rows": rows}
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]

    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    (out / "table.md").write_text(text)
    if results.get("fashion_mnist", {}).get("rows"):
        plot(results, out / "frontier.png")
        results["plot"] = str(out / "frontier.png")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['processor']}, {results['threads']} threads, load {results['load_before']} -> "
          f"{results['load_after']}")
    print(text)
    for what, why in results["left_out"].items():
        print(f"left out ({what}): {why}")
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}" + (f", {results['plot']}" if "plot" in results else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
