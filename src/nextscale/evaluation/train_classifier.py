"""Train the classifier that `nextscale eval` uses (`nextscale train-classifier`), on Fashion-MNIST or an image folder.

The recipe (that of the shipped Fashion-MNIST weights): random horizontal flips (and, optionally, shifts of up to
2 pixels), AdamW with a one-cycle schedule, then accuracy on the held-out images: Fashion-MNIST's 10k test
images, or for a folder `--eval-data FOLDER` or a seeded fraction of each class (real_data.py). The classifier's
config.json records the data and the held-out rule, so that `nextscale eval` rebuilds the same real images.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nextscale.evaluation.classifier import ClassifierConfig, ImageClassifier, fashion_mnist_data
from nextscale.evaluation.real_data import image_folder_data, load_real_data
from nextscale.progress import progress_bar

FOLDER_IMAGES_SEEN = 20_000  # a folder's default epochs: about this many training images seen, at least 8 epochs


def augment(x_BCHW: torch.Tensor, gen: torch.Generator, kind: str, border: str = "roll") -> torch.Tensor:
    """Random horizontal flip, and a shift of up to 2 pixels: rolled for Fashion-MNIST (its 2-pixel black border
    makes rolling lossless), otherwise from the image padded with its edge pixels."""
    B = x_BCHW.shape[0]
    if kind == "none":
        return x_BCHW
    flip = torch.rand(B, generator=gen) < 0.5
    x_BCHW = torch.where(flip[:, None, None, None], x_BCHW.flip(-1), x_BCHW)
    if kind == "flip":
        return x_BCHW
    shifts = torch.randint(-2, 3, (B, 2), generator=gen)
    if border == "roll":
        return torch.stack([torch.roll(im, (int(dy), int(dx)), dims=(-2, -1)) for im, (dy, dx) in zip(x_BCHW, shifts)])
    H, W = x_BCHW.shape[-2:]
    padded = F.pad(x_BCHW, (2, 2, 2, 2), mode="replicate")
    return torch.stack([im[:, 2 + int(dy):2 + int(dy) + H, 2 + int(dx):2 + int(dx) + W]
                        for im, (dy, dx) in zip(padded, shifts)])


def as_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def predict(model: ImageClassifier, images: np.ndarray, device, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    out = [model(as_tensor(images[i:i + batch_size]).to(device)).argmax(1).cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def accuracy(model: ImageClassifier, images: np.ndarray, labels: np.ndarray, device, batch_size: int = 1000) -> float:
    return float((predict(model, images, device, batch_size) == labels).mean())


def _check(args) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.data is None:
        if args.eval_data is not None:
            raise ValueError("--eval-data is for --data FOLDER (Fashion-MNIST is held out by its test split)")
        if args.resolution != 32 or args.channels not in (None, 1):
            raise ValueError("the Fashion-MNIST preset is 32x32 gray: drop --resolution/--channels, or pass "
                             "--data FOLDER for your own images")
    elif not 0 < args.holdout < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {args.holdout}")
    out = Path(args.out or "fashion_mnist_classifier")
    if out.exists() and not out.is_dir():  # found now, not after the training
        raise ValueError(f"--out {out} is a file, not a folder: choose another --out")
    stages = len(args.widths)
    if not args.widths or args.resolution < 2 ** stages or args.resolution % 2 ** stages:
        raise ValueError(f"--resolution {args.resolution} must be divisible by 2^{stages} = {2 ** stages} (one halving "
                         f"per conv stage of --widths); pick another resolution or fewer --widths")


def train(args) -> dict:
    _check(args)
    if args.threads > 0:  # (the command line applied its --threads already; this is for Python callers)
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.data is None:
        data = fashion_mnist_data(str(Path(args.data_dir).resolve()) if args.data_dir else None)
        channels, out = 1, args.out or "fashion_mnist_classifier"
    else:
        channels = args.channels or 3
        data = image_folder_data(args.data, args.eval_data, args.holdout, args.holdout_seed, args.resolution, channels)
        out = args.out or f"classifier_{Path(args.data).resolve().name}"
    real = load_real_data(data)
    train_x, train_y = real.train(desc="reading the training images")
    held_x, held_y = real.heldout_images, real.heldout_labels
    data.update({"num_train_images": real.num_train, "num_heldout_images": len(held_x)})
    if real.heldout_digest:
        data["heldout_digest"] = real.heldout_digest
    print(f"{real.source}: {len(real.class_names)} classes, {len(train_x)} training images, {len(held_x)} held out "
          f"({real.heldout_rule})" + (f", {len(real.skipped)} unreadable files skipped" if real.skipped else ""),
          flush=True)

    pixels = train_x.astype(np.float64) / 255
    if channels == 1:
        mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    else:
        axes = (0, 1, 2)
        mean = tuple(round(float(v), 4) for v in pixels.mean(axis=axes))
        std = tuple(round(max(float(v), 1e-3), 4) for v in pixels.std(axis=axes))
    del pixels
    config = ClassifierConfig(channels=tuple(args.widths), dropout=args.dropout, num_classes=len(real.class_names),
                              image_size=args.resolution, in_channels=channels, pixel_mean=mean, pixel_std=std,
                              class_names=tuple(real.class_names), data=data)
    model = ImageClassifier(config).to(device)

    epochs = args.epochs or (8 if args.data is None else max(8, math.ceil(FOLDER_IMAGES_SEEN / len(train_x))))
    batch_size = min(args.batch_size, len(train_x))
    # No weight decay on biases and norm parameters (1-d tensors).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=epochs * steps_per_epoch)
    images = as_tensor(train_x)
    labels = torch.from_numpy(train_y)
    border = "roll" if args.data is None else "replicate"
    held_name = "test" if args.data is None else "held-out"

    log, start = [], time.time()
    epoch_bar = progress_bar(range(epochs), desc="epochs", leave=False, disable=epochs < 10)
    for epoch in epoch_bar:
        model.train()
        order = torch.randperm(len(images), generator=gen)
        total_loss, seen = 0.0, 0
        bar = progress_bar(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=steps_per_epoch < 10)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            x, y = augment(images[idx], gen, args.augment, border).to(device), labels[idx].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        last = epoch == epochs - 1
        entry = {"epoch": epoch + 1, "train_loss": total_loss / seen, "seconds": round(time.time() - start, 1)}
        if args.data is None or last or (epoch + 1) % max(1, epochs // 8) == 0:
            entry["heldout_accuracy"] = accuracy(model, held_x, held_y, device)
            print(f"epoch {epoch + 1}/{epochs}: train loss {entry['train_loss']:.4f}, {held_name} accuracy "
                  f"{entry['heldout_accuracy']:.4f}, {time.time() - start:.0f} s", flush=True)
        epoch_bar.set_postfix(loss=f"{entry['train_loss']:.4f}")
        log.append(entry)

    predicted = predict(model, held_x, device)
    per_class = {name: float((predicted[held_y == c] == c).mean()) for c, name in enumerate(real.class_names)
                 if (held_y == c).any()}
    config.metrics = {"heldout_accuracy": log[-1]["heldout_accuracy"], "per_class_heldout_accuracy": per_class,
                      "train_seconds": log[-1]["seconds"],
                      "recipe": {"epochs": epochs, "batch_size": batch_size, "lr": args.lr,
                                 "weight_decay": args.weight_decay, "seed": args.seed, "augment": args.augment}}
    if args.data is None:
        config.metrics["test_accuracy"] = config.metrics["heldout_accuracy"]
    out = model.cpu().save_pretrained(out)
    (Path(out) / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    chance = 1 / len(real.class_names)
    print(f"wrote {out}/config.json, model.safetensors, train_log.json ({held_name} accuracy "
          f"{config.metrics['heldout_accuracy']:.4f} on {len(held_x)} images; chance {chance:.4f})\n"
          f"score samples with: nextscale eval SAMPLES --classifier {out}")
    return config.metrics
