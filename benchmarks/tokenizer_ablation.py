"""What the tokenizer's loss terms buy on Fashion-MNIST: the same architecture and the same wall-clock budget per row.

    python benchmarks/tokenizer_ablation.py --out runs/tokenizer_ablation --minutes 15

Rows (overrides of configs/tokenizer_fashion_mnist.yaml): L2 only; L2 + perceptual (LPIPS with the installed VGG16
and heads); L2 + perceptual + GAN (PatchGAN, hinge, VQGAN's adaptive weight, starting at 40% of the steps, or at
once with --init: every row then continues the same tokenizer, which is scored as a row of its own). All
rows train at the same time, one thread each, so they share the machine alike. Each row's step count is set from
its own speed, measured by a 90-second probe run beside the others, so that its learning-rate schedule ends at the
budget (the trainer's time limit stops it at 1.1x the budget if the machine slows down).

Then, for every row: PSNR and SSIM on --test-images test images, codebook use per scale, and the reconstructions of
1,000 training images scored by the project's Fashion-MNIST classifier (class accuracy, Fréchet distance and KID
of its features against the test split) beside the same 1,000 real images' own figures. Writes results.json,
table.md and reconstructions.png (the same 8 test images through every row) into --out. Rerunning resumes:
finished rows are not trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "tokenizer_fashion_mnist.yaml"
SHIPPED_TOKENIZER = ROOT / "src" / "nextscale" / "assets" / "fashion_mnist_var" / "tokenizer"
PROBE_MINUTES = 1.5
START_ROW = "start (--init)"  # scored, not trained here


def make_rows(perceptual_weight: float, gan_weight: float) -> dict[str, list[str]]:
    return {
        "L2": ["loss.perceptual_weight=0", "loss.gan_weight=0"],
        "L2 + perceptual": [f"loss.perceptual_weight={perceptual_weight}", "loss.gan_weight=0"],
        "L2 + perceptual + GAN": [f"loss.perceptual_weight={perceptual_weight}", f"loss.gan_weight={gan_weight}"],
    }


def slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_")


def launch(overrides: list[str], out_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "nextscale", "train-tokenizer", str(RECIPE),
                                 f"out_dir={out_dir}", *overrides], stdout=f, stderr=subprocess.STDOUT, env=env)


def wait_all(procs: dict[str, subprocess.Popen]) -> None:
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"row {name!r} failed (exit {proc.returncode}); see its train.log")


def steps_per_second(run: Path, global_batch: int) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["images_per_s"] for r in records if "images_per_s" in r][1:]  # the first includes start-up
    return float(np.median(speeds)) / global_batch


def train_rows(out: Path, rows: dict[str, list[str]], minutes: float, global_batch: int,
               init: str | None) -> dict[str, dict]:
    plans = {}
    probes = {}
    if init:
        rows = {name: overrides + [f"init_from={init}"] for name, overrides in rows.items()}
    for name, overrides in rows.items():
        run = out / slug(name)
        run.mkdir(parents=True, exist_ok=True)
        plan_file = run / "plan.json"
        if plan_file.is_file():
            plans[name] = json.loads(plan_file.read_text())
            continue
        # Every probe runs for the same wall time, all at once, so each is measured while all rows share the
        # machine (probes of a fixed step count end at different times, and the last ones then run alone).
        probes[name] = launch(overrides + ["steps=100000", "stop_at_step=0", "log_every=5", "eval_every=0",
                                           "checkpoint_every=0",
                                           f"time_limit_minutes={PROBE_MINUTES}", f"global_batch={global_batch}"],
                              out / f"probe_{slug(name)}", run / "probe.log")
    wait_all(probes)
    for name in probes:
        speed = steps_per_second(out / f"probe_{slug(name)}", global_batch)
        steps = max(50, int(speed * minutes * 60 * 0.97))
        plan = {"steps_per_second_probe": speed, "steps": steps, "minutes": minutes}
        (out / slug(name) / "plan.json").write_text(json.dumps(plan, indent=2))
        plans[name] = plan
    procs = {}
    for name, overrides in rows.items():
        run, steps = out / slug(name), plans[name]["steps"]
        if (run / "summary.json").is_file():
            continue
        extra = [f"steps={steps}", "stop_at_step=0", f"global_batch={global_batch}",
                 f"time_limit_minutes={minutes * 1.1:.2f}",
                 f"codebook.restart_until={int(steps * 0.85)}", f"eval_every={max(steps // 4, 1)}",
                 f"checkpoint_every={max(steps // 4, 1)}", "optim.warmup_steps=50"]
        if any(o.startswith("loss.gan_weight=") and o != "loss.gan_weight=0" for o in overrides):
            # From scratch the GAN waits for 40% of the steps (VQGAN's delayed start); from --init the
            # tokenizer already reconstructs, so the discriminator starts at once (and the probe measured it on).
            extra.append(f"loss.gan_start_step={0 if init else int(steps * 0.4)}")
        plans[name]["overrides"] = overrides + extra
        procs[name] = (launch(overrides + extra, run / "train", run / "train.log"), time.time())
    for name, (proc, start) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"row {name!r} failed (exit {proc.returncode}); see {out / slug(name) / 'train.log'}")
        metrics = out / slug(name) / "train" / "metrics.jsonl"
        logged = [json.loads(line) for line in metrics.read_text().splitlines()]
        # The time limit may stop a row before its planned steps: report the steps it trained.
        record = dict(plans[name], wall_minutes=(time.time() - start) / 60,
                      trained_steps=max(r["step"] for r in logged))
        (out / slug(name) / "summary.json").write_text(json.dumps(record, indent=2))
    return {name: json.loads((out / slug(name) / "summary.json").read_text()) for name in rows}


@torch.no_grad()
def reconstruct(vae, images_uint8_NHW: np.ndarray, batch_size: int = 250) -> np.ndarray:
    out = []
    for i in range(0, len(images_uint8_NHW), batch_size):
        x = torch.from_numpy(images_uint8_NHW[i:i + batch_size]).float().div(127.5).sub(1)
        x = x[:, None].expand(-1, 3, -1, -1)
        rec = vae.decode_fhat(vae.encode_fhats(x)[-1])
        out.append(rec.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def evaluate_rows(out: Path, trained: dict, num_images: int, test_images: int, seed: int, init: str | None,
                  extra: dict[str, str] | None = None) -> dict:
    """Scores the start (init), the trained rows and `extra` ({name: tokenizer folder}, scored as they are)."""
    import nextscale
    from nextscale.data.datasets import DataConfig, build_dataset
    from nextscale.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
    from nextscale.evaluation import load_classifier
    from nextscale.evaluation.evaluate import fashion_mnist_metrics
    from nextscale.evaluation.image_sets import ImageSet
    from nextscale.images import save_labeled_grid
    from nextscale.training.tokenizer_eval import evaluate_tokenizer

    classifier = load_classifier()
    train_x, train_y = load_fashion_mnist("train")
    pick = np.sort(np.random.default_rng(seed).choice(len(train_x), size=num_images, replace=False))
    real = ImageSet(np.repeat(train_x[pick][..., None], 3, axis=-1), train_y[pick], class_names=tuple(CLASS_NAMES),
                    source=f"{num_images} training images")
    results = {"real images": {"classifier": fashion_mnist_metrics(real, classifier, "cpu", seed=seed)}}
    test_set = build_dataset(DataConfig(kind="fashion_mnist", resolution=32, channels=3), train=False)
    grids, labels = [], []
    models = {START_ROW: (init, None)} if init else {}
    models.update({name: (out / slug(name) / "train", summary) for name, summary in trained.items()})
    models.update({name: (path, None) for name, path in (extra or {}).items()})
    for name, (path, summary) in models.items():
        vae = nextscale.load_vae(path)
        recon = evaluate_tokenizer(vae, test_set, batch_size=250, max_images=test_images, grid_images=8)
        if not grids:
            grids.append(recon["grid"][:8])
            labels.append("test images")
        grids.append(recon["grid"][-8:])
        labels.append(name)
        samples = ImageSet(reconstruct(vae, train_x[pick]), train_y[pick], class_names=tuple(CLASS_NAMES),
                           source=f"reconstructions by {name}")
        results[name] = {"train": summary, "psnr": recon["psnr"], "ssim": recon["ssim"],
                         "usage_per_scale": recon["usage_per_scale"], "psnr_test_images": recon["num_images"],
                         "classifier": fashion_mnist_metrics(samples, classifier, "cpu", seed=seed)}
    save_labeled_grid(torch.cat(grids), out / "reconstructions.png", ncols=8, row_labels=labels)
    return results


def table(results: dict) -> str:
    lines = ["| row | steps (of planned) | minutes | PSNR (dB) | SSIM | class accuracy | Fréchet distance | KID | "
             "codebook use per scale |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        c = r["classifier"]
        kid = f"{c['kid']:.3f}" if "kid" in c else ""
        if name == "real images" or r.get("train") is None:  # the floor, the --init start and --score rows
            if name != "real images":
                usage = ", ".join(f"{u:.0%}" for u in r["usage_per_scale"])
                lines.append(f"| {name} | | | {r['psnr']:.2f} | {r['ssim']:.3f} | {c['class_accuracy']:.3f} | "
                             f"{c['frechet_distance']:.2f} | {kid} | {usage} |")
                continue
            lines.append(f"| {name} (floor) | | | | | {c['class_accuracy']:.3f} | {c['frechet_distance']:.2f} | "
                         f"{kid} | |")
            continue
        t = r["train"]
        usage = ", ".join(f"{u:.0%}" for u in r["usage_per_scale"])
        steps = f"{t.get('trained_steps', t['steps'])} of {t['steps']}"
        lines.append(f"| {name} | {steps} | {t['wall_minutes']:.1f} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
                     f"{c['class_accuracy']:.3f} | {c['frechet_distance']:.2f} | {kid} | {usage} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="runs/tokenizer_ablation", help="output folder (default runs/tokenizer_ablation)")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per row, wall clock (default 15)")
    p.add_argument("--global-batch", type=int, default=32, help="images per step, every row (default 32)")
    p.add_argument("--num-images", type=int, default=1000,
                   help="training images reconstructed and scored by the classifier (default 1000)")
    p.add_argument("--test-images", type=int, default=2000,
                   help="test images for PSNR, SSIM and codebook use (default 2000; 10000: the whole split, ~3 min "
                        "a row on 2 cores)")
    p.add_argument("--init", default=None,
                   help="a tokenizer every row starts from (a folder; 'shipped': the shipped Fashion-MNIST tokenizer, phase 2\n"
                        "since the model was retrained on it; the documented run started from phase 1).\n"
                        "Without it every row trains from scratch. With it the rows compare what the extra budget buys\n"
                        "with each loss, the GAN on from the first step, and the start is scored as a row of its own")
    p.add_argument("--perceptual-weight", type=float, default=0.1,
                   help="weight of the perceptual term in its rows (default 0.1; VQGAN and LlamaGen use 1.0)")
    p.add_argument("--gan-weight", type=float, default=0.1,
                   help="weight of the GAN term, times VQGAN's adaptive weight (default 0.1; LlamaGen uses 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scored images and the floor draws (default 0)")
    p.add_argument("--score", nargs="+", metavar="NAME=FOLDER", default=None,
                   help="score these tokenizers (train-tokenizer run or model folders) beside --init, training nothing:\n"
                        "e.g. a row continued for longer with `nextscale train-tokenizer`")
    args = p.parse_args()
    if args.minutes <= 0 or args.num_images < 2 or args.global_batch < 1 or args.test_images < 1:
        p.error("--minutes must be > 0, --num-images >= 2, --global-batch and --test-images >= 1")
    if not (args.perceptual_weight > 0 and args.gan_weight > 0):
        p.error("--perceptual-weight and --gan-weight must be > 0 (the L2 row is the one without them)")
    init = str(SHIPPED_TOKENIZER) if args.init == "shipped" else args.init
    if init and not Path(init).is_dir():
        p.error(f"--init {args.init}: no such tokenizer folder")
    extra = {}
    for item in args.score or []:
        name, sep, folder = item.partition("=")
        if not (sep and name and Path(folder).is_dir()):
            p.error(f"--score {item}: expected NAME=FOLDER with an existing tokenizer folder")
        extra[name] = folder
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if extra:
        trained = {}
    else:
        trained = train_rows(out, make_rows(args.perceptual_weight, args.gan_weight), args.minutes,
                             args.global_batch, init)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    results = evaluate_rows(out, trained, args.num_images, args.test_images, args.seed, init, extra)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}, {out / 'reconstructions.png'}")


if __name__ == "__main__":
    main()
