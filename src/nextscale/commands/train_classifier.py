"""`nextscale train-classifier`: train the Fashion-MNIST classifier that `nextscale eval` uses."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    from nextscale.evaluation.train_classifier import add_arguments
    p = subparsers.add_parser(
        "train-classifier", help="train the Fashion-MNIST classifier used by `nextscale eval`",
        description="Train the small CNN whose predictions and 128-d features `nextscale eval` uses (class "
                    "accuracy, Fréchet distance) on the 60k Fashion-MNIST training images, and report its "
                    "accuracy on the 10k test images. Writes config.json, model.safetensors and train_log.json; "
                    "pass the folder to `nextscale eval --classifier`.",
        epilog="the shipped weights were trained with:\n"
               "  nextscale train-classifier --threads 1 --out src/nextscale/assets/fashion_mnist_classifier",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from nextscale.evaluation.train_classifier import train
    train(args)
    return 0
