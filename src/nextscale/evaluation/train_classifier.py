"""Train the Fashion-MNIST classifier that `nextscale eval` uses (`nextscale train-classifier`).

The recipe of the shipped weights: all 60k training images, random horizontal flips (and, optionally,
shifts of up to 2 pixels: the padding), AdamW with a one-cycle schedule, then accuracy on the 10k test images.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nextscale.commands.common import int_list
from nextscale.data.fashion_mnist import load_fashion_mnist
from nextscale.evaluation.fmnist_classifier import ClassifierConfig, FashionMNISTClassifier


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="fashion_mnist_classifier",
                   help="folder for config.json, model.safetensors and train_log.json "
                        "(default fashion_mnist_classifier)")
    p.add_argument("--epochs", type=int, default=8, help="passes over the 60k training images (default 8)")
    p.add_argument("--augment", default="flip", choices=["none", "flip", "flip-shift"],
                   help="training augmentation: random horizontal flips, and shifts of up to 2 pixels "
                        "(default flip)")
    p.add_argument("--channels", type=int_list, default=ClassifierConfig.channels,
                   help="channels of the conv stages, comma-separated; each halves the resolution (default 16,32,64)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout before the last layer (default 0.2)")
    p.add_argument("--batch-size", type=int, default=128, help="images per optimisation step (default 128)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the one-cycle schedule (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay (default 5e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling, augmentation (default 0)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch's default; 1 is fastest on a busy machine)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--data-dir", default=None,
                   help="folder of the Fashion-MNIST files (default /usr/share/datasets/fashion-mnist)")


def augment(x_B1HW: torch.Tensor, gen: torch.Generator, kind: str) -> torch.Tensor:
    """Random horizontal flip, and a shift of up to 2 pixels: the 2-pixel black border makes rolling lossless."""
    B = x_B1HW.shape[0]
    if kind == "none":
        return x_B1HW
    flip = torch.rand(B, generator=gen) < 0.5
    x_B1HW = torch.where(flip[:, None, None, None], x_B1HW.flip(-1), x_B1HW)
    if kind == "flip":
        return x_B1HW
    shifts = torch.randint(-2, 3, (B, 2), generator=gen)
    return torch.stack([torch.roll(im, (int(dy), int(dx)), dims=(-2, -1)) for im, (dy, dx) in zip(x_B1HW, shifts)])


@torch.no_grad()
def accuracy(model: FashionMNISTClassifier, images_NHW: np.ndarray, labels_N: np.ndarray, device,
             batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images_NHW), batch_size):
        x = torch.from_numpy(images_NHW[i:i + batch_size]).float().div(255).unsqueeze(1).to(device)
        correct += (model(x).argmax(1).cpu().numpy() == labels_N[i:i + batch_size]).sum()
    return float(correct) / len(images_NHW)


def train(args) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train_x, train_y = load_fashion_mnist("train", args.data_dir)
    test_x, test_y = load_fashion_mnist("test", args.data_dir)
    pixels = train_x.astype(np.float64) / 255
    config = ClassifierConfig(channels=tuple(args.channels), dropout=args.dropout,
                              pixel_mean=round(float(pixels.mean()), 4), pixel_std=round(float(pixels.std()), 4))
    model = FashionMNISTClassifier(config).to(device)

    # No weight decay on biases and norm parameters (1-d tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    images = torch.from_numpy(train_x).float().div(255).unsqueeze(1)
    labels = torch.from_numpy(train_y)

    log, start = [], time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total_loss, seen = 0.0, 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        for step in bar:
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x, y = augment(images[idx], gen, args.augment).to(device), labels[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        test_acc = accuracy(model, test_x, test_y, device)
        log.append({"epoch": epoch + 1, "train_loss": total_loss / seen, "test_accuracy": test_acc,
                    "seconds": round(time.time() - start, 1)})
        print(f"epoch {epoch + 1}: train loss {total_loss / seen:.4f}, test accuracy {test_acc:.4f}, "
              f"{time.time() - start:.0f} s", flush=True)

    config.metrics = {"test_accuracy": log[-1]["test_accuracy"], "train_seconds": log[-1]["seconds"],
                      "recipe": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "seed",
                                                              "augment")}}
    out = model.cpu().save_pretrained(args.out)
    (Path(out) / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"wrote {out}/config.json, model.safetensors, train_log.json "
          f"(test accuracy {config.metrics['test_accuracy']:.4f})")
    return config.metrics

