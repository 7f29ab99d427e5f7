"""`nextscale eval`: class accuracy and Fréchet distance by our Fashion-MNIST classifier; FID, IS, P/R by Inception."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nextscale.commands.common import UserError

EPILOG = """\
examples:
  nextscale sample --num-per-class 100 --npz --out samples_fmnist
  nextscale eval samples_fmnist/samples.npz --json samples_fmnist/eval.json
  nextscale eval samples_fmnist/images
  nextscale eval samples_imagenet.npz --inception-weights pt_inception-2015-12-05-6726825d.pth \\
      --reference VIRTUAL_imagenet256_labeled.npz

Labels: from the .npz key `labels` (or `arr_1`), or from file names class<C>_<I>.png as
`nextscale sample` writes them; class <number of classes> (the null class) means unconditional.
Fashion-MNIST metrics need 32x32 images and the dataset (for the test split and the floor).
The Fréchet-distance floor is the distance of as many random real training images as samples to
the test split: what a perfect generator would score with this many images. It is noisy with few
images (1000 images: about 2 to 6 from draw to draw), so it is the mean of --floor-draws draws.
Inception: the standard FID network; the weights file is pytorch-fid's
pt_inception-2015-12-05-6726825d.pth (no download here: fetch it yourself). FID uses the
reference .npz's mu/sigma when it has them (ADM reference batches do), else its images' features;
precision/recall (k-NN manifolds, k=3) need the reference images (arr_0).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="measure generated images (class accuracy, Fréchet distance, FID, IS, precision/recall)",
        description="Evaluate a set of generated images (a folder of PNGs or an ADM-style .npz): class accuracy "
                    "and Fréchet distance by the Fashion-MNIST classifier shipped with nextscale, with the "
                    "real-data floor; and, given the standard FID Inception weights, FID, Inception Score and "
                    "precision/recall against a reference .npz.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="generated images: a folder of PNGs (e.g. the images/ folder of `nextscale "
                                  "sample`) or an .npz with arr_0 uint8 (N, H, W, 3)")
    fm = p.add_argument_group("Fashion-MNIST classifier")
    fm.add_argument("--no-classifier", action="store_true", help="skip the Fashion-MNIST metrics")
    fm.add_argument("--classifier", default=None,
                    help="a classifier folder from `nextscale train-classifier` (default: the shipped one)")
    fm.add_argument("--fashion-mnist-dir", default=None,
                    help="folder of the Fashion-MNIST files (default /usr/share/datasets/fashion-mnist)")
    fm.add_argument("--seed", type=int, default=0, help="seed for choosing the training images of the floor "
                                                        "(default 0; draw d uses seed + d)")
    fm.add_argument("--floor-draws", type=int, default=5,
                    help="random draws of training images whose distances are averaged into the floor (default 5)")
    inc = p.add_argument_group("Inception (standard FID network)")
    inc.add_argument("--inception-weights", default=None,
                     help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth; enables FID, IS, precision/recall")
    inc.add_argument("--reference", default=None,
                     help="reference images for FID and precision/recall: an ADM reference batch .npz (arr_0, and "
                          "mu/sigma when present) or a folder of images")
    inc.add_argument("--is-splits", type=int, default=10, help="Inception Score splits (default 10)")
    inc.add_argument("--pr-k", type=int, default=3, help="neighbourhood size k of precision/recall (default 3)")
    inc.add_argument("--save-npz", default=None, metavar="PATH",
                     help="write the images (and labels) as an ADM .npz, with mu/sigma of their Inception "
                          "features when computed: a reference batch for later runs")
    out = p.add_argument_group("output and device")
    out.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON")
    out.add_argument("--batch-size", type=int, default=None,
                     help="images per forward pass (default 500 for the classifier, 50 for Inception)")
    out.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    out.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's default)")
    p.set_defaults(run=run)


def _fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(results: dict) -> str:
    rows = [("images", results["source"]), ("count", results["num_images"])]
    fm = results.get("fashion_mnist")
    if fm:
        if "class_accuracy" in fm:
            rows.append(("class accuracy", f"{fm['class_accuracy']:.4f}  ({fm['num_labelled']} labelled images)"))
        else:
            rows.append(("class accuracy", "n/a (no class labels)"))
        if fm.get("classifier_test_accuracy") is not None:
            rows.append(("  classifier test accuracy", f"{fm['classifier_test_accuracy']:.4f}"))
        rows.append(("Fréchet distance (classifier)", f"{fm['frechet_distance']:.4f}  (vs {fm['num_test_images']} "
                                                      f"test images)"))
        draws = len(fm["frechet_distance_floor_draws"])
        rows.append(("  floor: real train vs test", f"{fm['frechet_distance_floor']:.4f} ± "
                                                    f"{fm['frechet_distance_floor_std']:.4f}  (mean of {draws} draw"
                                                    f"{'s' if draws > 1 else ''} of {fm['floor_num_train_images']} "
                                                    f"train images)"))
        rows.append(("  ratio to floor", f"{fm['frechet_distance'] / fm['frechet_distance_floor']:.2f}x"))
    elif "fashion_mnist_skipped" in results:
        rows.append(("Fashion-MNIST metrics", f"skipped: {results['fashion_mnist_skipped']}"))
    inc = results.get("inception")
    if inc:
        rows.append(("Inception Score", f"{inc['inception_score']:.3f} ± {inc['inception_score_std']:.3f}  "
                                        f"({inc['is_splits']} splits)"))
        if "fid" in inc:
            rows.append(("FID", f"{inc['fid']:.4f}  (reference statistics {inc['fid_reference_statistics']})"))
        if "precision" in inc:
            rows.append(("precision / recall", f"{inc['precision']:.4f} / {inc['recall']:.4f}  "
                                               f"(k={inc['precision_recall_k']})"))
        elif "fid" in inc:
            rows.append(("precision / recall", "n/a (the reference has statistics but no images)"))
        else:
            rows.append(("FID, precision / recall", "n/a (pass --reference)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {_fmt(value)}" for name, value in rows)


def run(args) -> int:
    import torch

    from nextscale.commands.common import resolve_device
    from nextscale.evaluation.evaluate import fashion_mnist_metrics, inception_metrics
    from nextscale.evaluation.fmnist_classifier import load_classifier
    from nextscale.evaluation.image_sets import read_image_set, write_npz
    from nextscale.evaluation.inception import load_inception

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.is_splits < 1 or args.pr_k < 1 or args.floor_draws < 1:
        raise UserError("--is-splits, --pr-k and --floor-draws must be >= 1")
    if args.reference and not args.inception_weights:
        raise UserError("--reference is for the Inception metrics: pass --inception-weights too")
    if args.no_classifier and not args.inception_weights:
        raise UserError("--no-classifier leaves nothing to compute: pass --inception-weights")
    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise UserError(f"--inception-weights {args.inception_weights}: file not found (the standard FID weights "
                        f"are pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    device = resolve_device(args.device)
    samples = read_image_set(args.images)
    if len(samples) < 2:
        raise UserError(f"{args.images}: {'holds no images' if not len(samples) else 'only one image'}; "
                        f"a Fréchet distance needs at least 2 (and some hundreds to mean much)")
    results = {"source": samples.source, "num_images": len(samples)}

    if not args.no_classifier:
        size = samples.images.shape[1:3]
        if size != (32, 32):
            message = (f"the Fashion-MNIST classifier takes 32x32 images, these are {size[1]}x{size[0]}")
            if not args.inception_weights:
                raise UserError(f"{message}; for other images pass --inception-weights (and --no-classifier)")
            results["fashion_mnist_skipped"] = message
        else:
            classifier = load_classifier(args.classifier, device=device)
            results["fashion_mnist"] = fashion_mnist_metrics(samples, classifier, device, args.batch_size or 500,
                                                             seed=args.seed, floor_draws=args.floor_draws,
                                                             data_dir=args.fashion_mnist_dir)
    stats = None
    if args.inception_weights:
        inception = load_inception(args.inception_weights, device=device)
        reference = read_image_set(args.reference) if args.reference else None
        results["inception"], stats = inception_metrics(samples, inception, device, reference,
                                                        args.batch_size or 50, args.is_splits, args.pr_k)
    print(format_table(results))
    if args.save_npz:
        path = write_npz(args.save_npz, samples.images, samples.labels,
                         stats["mu"] if stats else None, stats["sigma"] if stats else None)
        print(f"wrote {path}")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
