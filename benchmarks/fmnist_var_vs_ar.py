"""VAR vs the raster-scan next-token baseline on Fashion-MNIST: quality and speed at equal settings.

    python benchmarks/fmnist_var_vs_ar.py --var runs/var_fmnist/model --ar runs/ar_fmnist/model \
        --num-per-class 100 --cfg 3 --out bench_results/fmnist_var_vs_ar

Both models sample 100 images per class with the same guidance and filtering, from the same first seed
(VAR: image i with seed + i; the baseline: one generator for the run); `nextscale eval`
then measures them with the project's Fashion-MNIST classifier (class accuracy, Fréchet distance of its
features against the test split, and the real-train-vs-test floor). Prints a table, writes JSON.
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


def sample_var(model_dir: str, labels: list[int], settings: dict, seed: int, batch_size: int):
    import nextscale
    from nextscale.inference_options import seeded_generators
    var = nextscale.load_var(model_dir)
    start = time.perf_counter()
    images = nextscale.sample(var, labels, generator=seeded_generators(range(seed, seed + len(labels))),
                              batch_size=batch_size, progress=True, **settings).images
    return images, time.perf_counter() - start


def sample_ar(model_dir: str, labels: list[int], settings: dict, seed: int, batch_size: int):
    from nextscale.checkpoints import load_raster_ar
    from nextscale.training.token_cache import split_scales
    ar = load_raster_ar(model_dir)
    vae = ar.tokenizer
    g = torch.Generator().manual_seed(seed)
    out = []
    start = time.perf_counter()
    for i in range(0, len(labels), batch_size):
        tokens = ar.generate(torch.tensor(labels[i:i + batch_size]), g, **settings)
        out.append(vae.decode_tokens(split_scales(tokens, vae.patch_nums)).add(1).mul(0.5))
        print(f"raster AR: {min(i + batch_size, len(labels))}/{len(labels)} images", file=sys.stderr)
    return torch.cat(out), time.perf_counter() - start


def evaluate(npz: Path) -> dict:
    json_path = npz.with_suffix(".eval.json")
    subprocess.run([sys.executable, "-m", "nextscale.cli", "eval", str(npz), "--json", str(json_path)], check=True)
    return json.loads(json_path.read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--var", required=True, help="VAR model folder")
    p.add_argument("--ar", default=None, help="raster-AR baseline model folder (omit to measure VAR only)")
    p.add_argument("--num-per-class", type=int, default=100, help="images per class (default 100)")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale for both (default 3)")
    p.add_argument("--top-k", type=int, default=0, help="top-k for both (default 0: off)")
    p.add_argument("--top-p", type=float, default=0.0, help="top-p for both (default 0: off)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch (default 100)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default="bench_results/fmnist_var_vs_ar", help="output folder")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from nextscale.images import to_uint8_hwc

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [c for c in range(10) for _ in range(args.num_per_class)]
    settings = {"cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p}
    results = {"settings": settings, "num_images": len(labels), "threads": torch.get_num_threads(), "models": {}}
    runs = [("VAR", sample_var, args.var)] + ([("raster AR", sample_ar, args.ar)] if args.ar else [])
    for name, sampler, folder in runs:
        images, seconds = sampler(folder, labels, settings, args.seed, args.batch_size)
        npz = out / f"{name.replace(' ', '_').lower()}.npz"
        np.savez(npz, arr_0=to_uint8_hwc(images), labels=np.asarray(labels, dtype=np.int64))
        metrics = evaluate(npz)
        results["models"][name] = {"seconds_per_image": seconds / len(labels), "metrics": metrics, "npz": str(npz)}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{len(labels)} images each, cfg {args.cfg}, top-k {args.top_k}, top-p {args.top_p}, "
          f"{results['threads']} thread(s)")
    print(f"{'model':<10} {'class acc':>9} {'Fréchet':>9} {'floor':>7} {'s/image':>8}")
    for name, r in results["models"].items():
        m = r["metrics"]["fashion_mnist"]
        print(f"{name:<10} {m.get('class_accuracy', float('nan')):>9.3f} {m.get('frechet_distance', float('nan')):>9.2f} "
              f"{m.get('frechet_distance_floor', float('nan')):>7.2f} {r['seconds_per_image']:>8.4f}")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
