"""`nextscale train-classifier`: train the classifier that `nextscale eval` scores samples with."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  nextscale train-classifier --data data/my_images --resolution 64 --out runs/classifier_own
  nextscale eval runs/samples_own/samples.npz --classifier runs/classifier_own

An image folder holds one subfolder per class, as for the transformer (class names = subfolder names, ids =
their sorted order); images are resized (shorter side) and center-cropped to --resolution. Train at your
model's resolution and channels: eval refuses images of another size, or of other classes. The classifier's
config.json records the folder(s) and the held-out rule: eval compares samples to the held-out images and
draws its floor from the training images, so keep the folder where it is (or retrain).

the shipped Fashion-MNIST weights were trained with:
  nextscale train-classifier --threads 1 --out src/nextscale/assets/fashion_mnist_classifier
"""


def add_parser(subparsers) -> None:
    from nextscale.evaluation.train_classifier import add_arguments
    p = subparsers.add_parser(
        "train-classifier", help="train the classifier used by `nextscale eval` (Fashion-MNIST or your image folder)",
        description="Train the small CNN whose predictions and 128-d features `nextscale eval --classifier` uses "
                    "(class accuracy, Fréchet distance, KID) on a labelled image folder (--data), or on the 60k "
                    "Fashion-MNIST training images without --data, and report its accuracy on held-out images. "
                    "Writes config.json, model.safetensors and train_log.json; pass the folder to "
                    "`nextscale eval --classifier`.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from nextscale.commands.common import Outputs, check_number
    from nextscale.evaluation.train_classifier import train
    from nextscale.sampling import MAX_SEED

    # Numbers the training would take badly, refused before the images are read: a NaN or negative learning rate
    # trains nothing (or fails in the optimizer), dropout 1.5 fails when the model is built, a seed torch cannot
    # take fails without naming the option.
    check_number("--lr", args.lr, 0, 10, low_open=True)
    check_number("--weight-decay", args.weight_decay, 0, 10)
    check_number("--dropout", args.dropout, 0, 1, high_open=True)
    check_number("--seed", args.seed, 0, MAX_SEED, integer=True)
    check_number("--holdout-seed", args.holdout_seed, 0, 2**32 - 1, integer=True)  # NumPy's seeding
    check_number("--threads", args.threads, 0, 1024, integer=True)
    check_number("--resolution", args.resolution, 1, 4096, integer=True)
    for width in args.widths or []:
        check_number("--widths", width, 1, 4096, integer=True)
    # Its folder: writable, before the training (not found out after it); the files in it are replaced.
    out = args.out or ("fashion_mnist_classifier" if args.data is None else
                       f"classifier_{Path(args.data).resolve().name}")
    outputs = Outputs(overwrite=True)
    for name in ("config.json", "model.safetensors", "train_log.json"):
        outputs.file(Path(out) / name, 0, f"--out {out}")
    outputs.check()
    with outputs.writing():  # a failure removes a folder the check created for nothing
        train(args)
    return 0
