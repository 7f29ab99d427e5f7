"""`nextscale eval`: class accuracy, Fréchet distance and KID by a domain classifier; FID, IS, P/R by Inception."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nextscale.commands.common import Outputs, UserError, add_threads_arg, check_number
from nextscale.inference_options import MAX_SEED

MAX_BATCH = 100_000

EPILOG = """\
examples:
  nextscale sample --num-per-class 100 --npz --out samples_fmnist
  nextscale eval samples_fmnist/samples.npz --json samples_fmnist/eval.json
  nextscale train-classifier --data data/my_images --resolution 64 --out runs/classifier_own
  nextscale eval runs/samples_own/samples.npz --classifier runs/classifier_own
  nextscale eval samples_imagenet.npz --no-classifier --inception-weights pt_inception-2015-12-05-6726825d.pth \\
      --reference VIRTUAL_imagenet256_labeled.npz

The classifier: the Fashion-MNIST one shipped with nextscale, or the folder of `nextscale train-classifier
--data FOLDER` for your own images. Its config.json says which real images it was trained on and which were
held out; eval reads them again (the Fashion-MNIST files, or the image folder where it was) and refuses
images of another resolution or other classes than the classifier's.
Labels: from the .npz key `labels` (or `arr_1`), or from file names class<C>_<I>.png as `nextscale sample`
writes them; class <number of classes> (the null class) means unconditional. Class names: the .npz key
`class_names` or images/class_names.json (`nextscale sample` writes both); without them only the label range
is checked, and the table says so.
The Fréchet-distance floor is the distance of as many random real training images as samples to the held-out
images: what a perfect generator would score with this many images. It is noisy with few images (1000
Fashion-MNIST images: about 2 to 6 from draw to draw), so it is the mean of --floor-draws draws. KID (unbiased
MMD^2 of the features, cubic polynomial kernel (x.y/d + 1)^3, the features divided by the RMS feature of the
held-out images) does not grow with few images: its floor is about 0.
Colourfulness (Hasler and Suesstrunk 2003, 0-255 units; 0 for grey images, about 20-60 for photographs) of the
samples is shown beside the held-out real images' (or the Inception reference's): samples far below it have
lost colour, far above it invent colour.
Inception: the standard FID network; the weights file is pytorch-fid's
pt_inception-2015-12-05-6726825d.pth (no download here: fetch it yourself). FID uses the
reference .npz's mu/sigma when it has them (ADM reference batches do), else its images' features;
precision/recall (k-NN manifolds, k=3) need the reference images (arr_0).
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="measure generated images (class accuracy, Fréchet distance, KID, FID, IS, precision/recall)",
        description="Evaluate a set of generated images (a folder of PNGs or an ADM-style .npz): class accuracy, "
                    "Fréchet distance and KID in the features of a classifier of their domain (the shipped "
                    "Fashion-MNIST one, or one of `nextscale train-classifier --data FOLDER`), with the real-data "
                    "floor; and, given the standard FID Inception weights, FID, Inception Score and "
                    "precision/recall against a reference .npz.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="generated images: a folder of PNGs (e.g. the output folder of `nextscale "
                                  "sample`, or its images/) or an .npz with arr_0 uint8 (N, H, W, 3)")
    fm = p.add_argument_group("classifier (class accuracy, Fréchet distance, KID)")
    fm.add_argument("--classifier", default=None, metavar="FOLDER",
                    help="a classifier folder from `nextscale train-classifier`, trained on the data of the model "
                         "that made the images (default: the shipped Fashion-MNIST classifier)")
    fm.add_argument("--no-classifier", action="store_true", help="skip the classifier metrics")
    fm.add_argument("--real-data", default=None, metavar="FOLDER",
                    help="where the classifier's training images are now, if they moved (default: the folder in "
                         "its config.json)")
    fm.add_argument("--fashion-mnist-dir", default=None,
                    help="folder of the Fashion-MNIST files, for a Fashion-MNIST classifier "
                         "(default /usr/share/datasets/fashion-mnist)")
    fm.add_argument("--seed", type=int, default=0, help="seed for choosing the training images of the floor and the "
                                                        "KID subsets (default 0; floor draw d uses seed + d)")
    fm.add_argument("--floor-draws", type=int, default=5,
                    help="random draws of training images whose distances are averaged into the floor (default 5)")
    fm.add_argument("--kid-subsets", type=int, default=100,
                    help="random subsets whose KIDs are averaged (default 100)")
    fm.add_argument("--kid-subset-size", type=int, default=1000,
                    help="images per KID subset, at most the number of images (default 1000)")
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
    add_threads_arg(out)
    p.set_defaults(run=run)


def _fmt(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _colourfulness(value: float, real: float | None, real_what: str) -> str:
    """Hasler-Suesstrunk colourfulness of the samples, beside the real images' (0: grey)."""
    if real is None:
        return f"{value:.2f}  (Hasler-Suesstrunk, 0-255; no real images to compare)"
    ratio = f"{value / real:.0%} of" if real > 0 else "real images are grey:"
    return f"{value:.2f}  ({ratio} {real_what}' {real:.2f}; Hasler-Suesstrunk, 0-255)"


def format_table(results: dict) -> str:
    rows = [("images", results["source"]), ("count", results["num_images"])]
    fm = results.get("classifier")
    if fm:
        about = fm["classifier"]
        rows.append(("classifier", f"{about['path']}  ({about['description']})"))
        real = fm["real_data"]
        rows.append(("real images", f"{real['source']}: {real['num_train_images']} training, "
                                    f"{real['num_heldout_images']} held out ({real['heldout_rule']})"))
        if "class_accuracy" in fm:
            rows.append(("class accuracy", f"{fm['class_accuracy']:.4f}  ({fm['num_labelled']} labelled images)"))
            for name, acc in fm["per_class_accuracy"].items():
                rows.append((f"  {name}", f"{acc:.4f}  ({_plural(fm['per_class_count'][name], 'image')})"))
        else:
            rows.append(("class accuracy", "n/a (no class labels)"))
        held = fm["num_heldout_images"]
        rows.append(("Fréchet distance (classifier)", f"{fm['frechet_distance']:.4f}  (vs {held} held-out images)"))
        draws = len(fm["frechet_distance_floor_draws"])
        floor_of = f"(mean of {_plural(draws, 'draw')} of {fm['floor_num_train_images']} training images)"
        rows.append(("  floor: real train vs held-out", f"{fm['frechet_distance_floor']:.4f} ± "
                                                        f"{fm['frechet_distance_floor_std']:.4f}  {floor_of}"))
        floor = fm["frechet_distance_floor"]
        rows.append(("  ratio to floor", f"{fm['frechet_distance'] / floor:.2f}x" if floor > 0 else "n/a (floor 0)"))
        rows.append(("KID (classifier)", f"{fm['kid']:.4g} ± {fm['kid_std']:.3g}  (unbiased; mean of "
                                         f"{_plural(fm['kid_subsets'], 'subset')} of {fm['kid_subset_size']})"))
        rows.append(("  floor: real train vs held-out", f"{fm['kid_floor']:.4g} ± {fm['kid_floor_std']:.3g}  "
                                                        f"{floor_of}"))
        rows.append(("colourfulness", _colourfulness(fm["colourfulness"], fm["real_colourfulness"],
                                                     f"{held} held-out images")))
        for warning in fm.get("warnings", []):
            rows.append(("WARNING", warning))
    elif "classifier_skipped" in results:
        rows.append(("classifier metrics", f"skipped: {results['classifier_skipped']}"))
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
        if "colourfulness" in inc and not fm:  # with a classifier, its row already shows the samples' colourfulness
            rows.append(("colourfulness", _colourfulness(inc["colourfulness"], inc.get("real_colourfulness"),
                                                         "the reference images")))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {_fmt(value)}" for name, value in rows)


def run(args) -> int:
    from nextscale.commands.common import resolve_device

    check_number("--batch-size", args.batch_size, 1, MAX_BATCH, integer=True)
    if min(args.is_splits, args.pr_k, args.floor_draws, args.kid_subsets) < 1 or args.kid_subset_size < 2:
        raise UserError("--is-splits, --pr-k, --floor-draws and --kid-subsets must be >= 1, --kid-subset-size >= 2")
    # NumPy seeds the draws with seed + d: a negative seed is refused there, after the features are computed.
    check_number("--seed", args.seed, 0, MAX_SEED - args.floor_draws, integer=True)
    if args.reference and not args.inception_weights:
        raise UserError("--reference is for the Inception metrics: pass --inception-weights too")
    if args.no_classifier and not args.inception_weights:
        raise UserError("--no-classifier leaves nothing to compute: pass --inception-weights")
    if args.inception_weights and not Path(args.inception_weights).is_file():
        raise UserError(f"--inception-weights {args.inception_weights}: file not found (the standard FID weights "
                        f"are pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
    # The files asked for are checked (their folders created and written to) before any image is read.
    outputs = Outputs(overwrite=True)  # reports: a rerun replaces them
    if args.save_npz and not args.save_npz.endswith(".npz"):
        args.save_npz += ".npz"  # what np.savez would write
    if args.save_npz:
        outputs.file(args.save_npz, 0, f"--save-npz {args.save_npz}")
    if args.json:
        outputs.file(args.json, 0, f"--json {args.json}")
    device = resolve_device(args.device)
    outputs.check()
    with outputs.writing():  # a failure removes the folders the check created for nothing
        return _evaluate(args, outputs, device)


def _evaluate(args, outputs: Outputs, device) -> int:
    import torch

    from nextscale.evaluation.evaluate import classifier_metrics, inception_metrics
    from nextscale.evaluation.fmnist_classifier import load_classifier
    from nextscale.evaluation.image_sets import read_image_set, write_npz
    from nextscale.evaluation.inception import load_inception

    # The classifier's files are checked (config.json, weights that fit it) before the images are read.
    classifier = None if args.no_classifier else load_classifier(args.classifier, device=device)
    samples = read_image_set(args.images)
    if args.save_npz:
        outputs.require_space(Path(args.save_npz).parent, samples.images.nbytes + 65536, "--save-npz")
    if len(samples) < 2:
        raise UserError(f"{args.images}: {'holds no images' if not len(samples) else 'only one image'}; "
                        f"a Fréchet distance needs at least 2 (and some hundreds to mean much)")
    results = {"source": samples.source, "num_images": len(samples)}

    if classifier is not None:
        config = classifier.config
        size = samples.images.shape[1:3]
        if args.classifier is None and size != (config.image_size, config.image_size) and args.inception_weights:
            results["classifier_skipped"] = (f"the shipped Fashion-MNIST classifier takes {config.image_size}x"
                                             f"{config.image_size} images, these are {size[1]}x{size[0]}")
        else:
            override = {}
            if args.real_data or args.fashion_mnist_dir:
                override["path"] = str(Path(args.real_data or args.fashion_mnist_dir).resolve())
            metrics = classifier_metrics(samples, classifier, device, args.batch_size or 500, seed=args.seed,
                                         floor_draws=args.floor_draws, kid_subsets=args.kid_subsets,
                                         kid_subset_size=args.kid_subset_size, data_override=override)
            where = str(Path(args.classifier).resolve()) if args.classifier else \
                "the shipped Fashion-MNIST classifier"
            metrics["classifier"] = {"path": where, "description": config.describe(),
                                     "class_names": list(config.class_names), "image_size": config.image_size,
                                     "channels": config.in_channels, "heldout_accuracy": config.heldout_accuracy,
                                     "data": config.data}
            results["classifier"] = metrics
            if config.data.get("kind") == "fashion_mnist":
                results["fashion_mnist"] = metrics  # the key of earlier versions, read by scripts
    stats = None
    if args.inception_weights:
        inception = load_inception(args.inception_weights, device=device)
        reference = read_image_set(args.reference) if args.reference else None
        results["inception"], stats = inception_metrics(samples, inception, device, reference,
                                                        args.batch_size or 50, args.is_splits, args.pr_k)
    print(format_table(results))
    if args.save_npz:
        # Through a temp file renamed into place: --save-npz may name the very .npz being evaluated.
        path = Path(args.save_npz)
        tmp = outputs.temp_file(path, suffix=".tmp.npz")  # np.savez keeps a name that ends in .npz
        write_npz(tmp, samples.images, samples.labels,
                  stats["mu"] if stats else None, stats["sigma"] if stats else None, samples.class_names)
        outputs.replace_file(tmp, path)
        print(f"wrote {path}")
    if args.json:
        outputs.write_file(args.json, lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
        print(f"wrote {args.json}")
    return 0
