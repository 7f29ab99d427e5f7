"""`nextscale train-classifier`: train the classifier that `nextscale eval` scores samples with."""

from __future__ import annotations

import argparse

from nextscale.commands.common import add_threads_arg, int_list
from nextscale.evaluation.classifier import ClassifierConfig
from nextscale.evaluation.train_classifier import FOLDER_IMAGES_SEEN

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data", default=None, metavar="FOLDER",
                      help="labelled image folder: one subfolder per class (class names = subfolder names, ids = "
                           "their sorted order), as for the transformer (default: the Fashion-MNIST preset)")
    data.add_argument("--eval-data", default=None, metavar="FOLDER",
                      help="held-out image folder with the same class subfolders (default: hold out --holdout of "
                           "each class of --data)")
    data.add_argument("--holdout", type=float, default=0.1,
                      help="fraction of each class of --data held out when --eval-data is not given (default 0.1)")
    data.add_argument("--holdout-seed", type=int, default=0,
                      help="seed of the held-out choice: which images are held out (default 0)")
    data.add_argument("--resolution", type=int, default=32,
                      help="image size: shorter side resized, then center-cropped, as the transformer's data; use "
                           "your model's resolution (default 32; Fashion-MNIST is 32)")
    data.add_argument("--channels", type=int, default=None, choices=[1, 3],
                      help="image channels: 3 (RGB) or 1 (gray) (default 3 for --data; Fashion-MNIST is 1)")
    data.add_argument("--data-dir", default=None,
                      help="folder of the Fashion-MNIST files, for the preset "
                           "(default /usr/share/datasets/fashion-mnist)")
    model = p.add_argument_group("model and training")
    model.add_argument("--out", default=None,
                       help="folder for config.json, model.safetensors and train_log.json (default "
                            "fashion_mnist_classifier, or classifier_<folder name> with --data)")
    model.add_argument("--epochs", type=int, default=None,
                       help="passes over the training images (default 8 for Fashion-MNIST; for --data enough for "
                            f"about {FOLDER_IMAGES_SEEN} images seen, at least 8)")
    model.add_argument("--augment", default="flip", choices=["none", "flip", "flip-shift"],
                       help="training augmentation: random horizontal flips, and shifts of up to 2 pixels "
                            "(default flip)")
    model.add_argument("--widths", type=int_list, default=ClassifierConfig.channels,
                       help="channels of the conv stages, comma-separated; each halves the resolution, which must "
                            "be divisible by 2^stages (default 16,32,64)")
    model.add_argument("--dropout", type=float, default=0.2, help="dropout before the last layer (default 0.2)")
    model.add_argument("--batch-size", type=int, default=128, help="images per optimisation step (default 128)")
    model.add_argument("--lr", type=float, default=3e-3,
                       help="peak learning rate of the one-cycle schedule (default 3e-3)")
    model.add_argument("--weight-decay", type=float, default=5e-4, help="AdamW weight decay (default 5e-4)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of initialisation, shuffling, augmentation (default 0)")
    add_threads_arg(model)
    model.add_argument("--device", default="cpu", help="torch device (default cpu)")


def add_parser(subparsers) -> None:
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
    from nextscale.inference_options import MAX_SEED

    # Numbers the training would take badly, refused before the images are read: a NaN or negative learning rate
    # trains nothing (or fails in the optimizer), dropout 1.5 fails when the model is built, a seed torch cannot
    # take fails without naming the option.
    check_number("--lr", args.lr, 0, 10, low_open=True)
    check_number("--weight-decay", args.weight_decay, 0, 10)
    check_number("--dropout", args.dropout, 0, 1, high_open=True)
    check_number("--seed", args.seed, 0, MAX_SEED, integer=True)
    check_number("--holdout-seed", args.holdout_seed, 0, 2**32 - 1, integer=True)  # NumPy's seeding
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
