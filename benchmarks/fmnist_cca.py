"""Guidance-free sampling on Fashion-MNIST: the shipped model with guidance against CCA fine-tunes without it.

    python benchmarks/fmnist_cca.py --model shipped=fashion-mnist@3 --model cca_l10=runs/var_fmnist_cca_l10/model@0 \
        [--classifier second=bench_results/second_classifier] --threads 1 --out bench_results/fmnist_cca

Each --model is NAME=FOLDER@CFG (FOLDER may be `fashion-mnist`, the shipped model). Every model samples 100 images
per class (seeds 0..999, top-k and top-p off), timed in this one process, one after the other: the seconds per image
are comparable within a run (cfg 0 runs no null-class pass). `nextscale eval` then scores each set with the
project's classifier (class accuracy, Fréchet distance of its features against the test split, the real-data floor)
and with every --classifier (one that selected nothing). Prints a table, writes results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse_model(text: str) -> tuple[str, str, float]:
    name, _, rest = text.partition("=")
    folder, _, cfg = rest.rpartition("@")
    if not name or not folder or not cfg:
        raise SystemExit(f"--model {text!r}: write NAME=FOLDER@CFG")
    return name, folder, float(cfg)


def sample(folder: str, cfg: float, labels: list[int], batch_size: int) -> tuple[np.ndarray, float]:
    import nextscale
    from nextscale.images import to_uint8_hwc
    var = nextscale.load_pretrained(folder) if folder == "fashion-mnist" else nextscale.load_var(folder)
    start = time.perf_counter()
    images = nextscale.sample(var, labels, seed=0, per_image_seeds=True, cfg=cfg, top_k=0, top_p=0.0,
                              batch_size=batch_size).images
    return to_uint8_hwc(images), time.perf_counter() - start


def evaluate(npz: Path, classifier: str | None, tag: str) -> dict:
    json_path = npz.with_name(f"{npz.stem}.{tag}.json")
    command = [sys.executable, "-m", "nextscale", "eval", str(npz), "--json", str(json_path), "--threads", "1"]
    if classifier:
        command += ["--classifier", classifier]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(json_path.read_text())
    scores = next(iter(v for v in report.values() if isinstance(v, dict) and "class_accuracy" in v))
    return {k: scores.get(k) for k in ("class_accuracy", "frechet_distance", "frechet_distance_floor",
                                       "frechet_distance_floor_std")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, help="NAME=FOLDER@CFG (repeat)")
    p.add_argument("--classifier", action="append", default=[], help="NAME=FOLDER: another classifier (repeat)")
    p.add_argument("--num-per-class", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch (default 100)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while sampling (default 1)")
    p.add_argument("--out", default="bench_results/fmnist_cca", help="output folder")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [c for c in range(10) for _ in range(args.num_per_class)]
    classifiers = [("project", None)] + [tuple(c.split("=", 1)) for c in args.classifier]
    results = {"num_images": len(labels), "threads": args.threads, "models": {}}
    for name, folder, cfg in map(parse_model, args.model):
        images, seconds = sample(folder, cfg, labels, args.batch_size)
        npz = out / f"{name}.npz"
        np.savez(npz, arr_0=images, labels=np.asarray(labels, dtype=np.int64))
        results["models"][name] = {"folder": folder, "cfg": cfg, "seconds_per_image": seconds / len(labels),
                                   "scores": {tag: evaluate(npz, path, tag) for tag, path in classifiers}}
        print(f"{name}: {seconds / len(labels):.4f} s/image", file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    base = next(iter(results["models"].values()))["seconds_per_image"]
    print(f"{len(labels)} images per model, {args.threads} thread(s); speed-up against the first model")
    header = f"{'model':<14} {'cfg':>4} {'s/image':>8} {'speed':>6}"
    for tag, _ in classifiers:
        header += f"  {tag + ' acc':>12} {'FD':>6} {'floor':>11}"
    print(header)
    for name, r in results["models"].items():
        line = f"{name:<14} {r['cfg']:>4g} {r['seconds_per_image']:>8.4f} {base / r['seconds_per_image']:>5.2f}x"
        for tag, _ in classifiers:
            s = r["scores"][tag]
            line += (f"  {s['class_accuracy']:>12.3f} {s['frechet_distance']:>6.2f} "
                     f"{s['frechet_distance_floor']:>5.2f} ± {s['frechet_distance_floor_std'] or 0:>3.1f}")
        print(line)
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
