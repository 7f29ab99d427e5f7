"""Metrics of a set of generated images, as `nextscale eval` reports them.

A domain classifier (the shipped Fashion-MNIST one, or one of `nextscale train-classifier --data FOLDER`):
class accuracy of class-conditional samples, and the Fréchet distance and KID of the classifier's 128-d
features to its held-out real images (Fashion-MNIST's test split, or the folder's held-out images). The floor
is the same distance for as many real training images, chosen at random: a perfect generator (one that draws
fresh images from the data distribution) scores about this, since the distance is biased upwards by finite
sample counts (KID is not: its floor is about 0, give or take its noise). The floor is the mean over several
random draws of training images (`floor_draws`), as one draw is noisy. KID is computed on the features divided
by the RMS feature value of the held-out images (one constant per classifier and data), so that the kernel's
x.y/d is of order 1 as with Inception features.
Inception (the standard FID network, weights from the user): FID, Inception Score, precision/recall.
"""

from __future__ import annotations

import numpy as np
import torch

from nextscale.evaluation.colour import image_set_colourfulness
from nextscale.evaluation.frechet import (feature_statistics, frechet_distance, inception_score,
                                          kernel_inception_distance, precision_recall)
from nextscale.evaluation.image_sets import ImageSet, as_nhwc3
from nextscale.progress import progress_bar

MIN_HELDOUT = 20  # fewer held-out real images than this: the table warns that the distances are very noisy


@torch.no_grad()
def run_in_batches(model, image_set: ImageSet, outputs, device, batch_size: int, desc: str
                   ) -> dict[str, torch.Tensor]:
    """Concatenated outputs of `outputs(model, images_BCHW) -> dict of (B, ...)` over the set, on the CPU."""
    pieces: dict[str, list] = {}
    total = (len(image_set) + batch_size - 1) // batch_size
    for images in progress_bar(image_set.batches(batch_size), total=total, desc=desc, leave=False, disable=total < 2):
        for name, value in outputs(model, images.to(device)).items():
            pieces.setdefault(name, []).append(value.double().cpu())
    return {name: torch.cat(values) for name, values in pieces.items()}


def classifier_outputs(model, images):
    features, logits = model.features_and_logits(images)
    return {"features": features, "logits": logits}


def inception_outputs(model, images):
    out = model(images)
    return {"pool": out["pool"], "logits_unbiased": out["logits_unbiased"]}


def class_accuracy(predicted: np.ndarray, labels: np.ndarray, class_names) -> dict:
    """Overall and per-class accuracy; labels == number of classes (the null class: unconditional) are left out."""
    num_classes = len(class_names)
    conditional = labels != num_classes
    if not conditional.any():
        return {}
    pred, lab = predicted[conditional], labels[conditional]
    present = [int(c) for c in np.unique(lab)]
    return {"class_accuracy": float((pred == lab).mean()), "num_labelled": int(conditional.sum()),
            "per_class_accuracy": {class_names[c]: float((pred[lab == c] == c).mean()) for c in present},
            "per_class_count": {class_names[c]: int((lab == c).sum()) for c in present}}


def _names(names, most: int = 6) -> str:
    names = list(names)
    return ", ".join(names) if len(names) <= most else ", ".join(names[:most]) + f", ... ({len(names)} classes)"


def check_samples_fit(samples: ImageSet, config, train_hint: str = "nextscale train-classifier --data FOLDER"
                      ) -> list[str]:
    """Refuse (ValueError, one line with the fix) samples of another resolution or other classes than the
    classifier's; the warnings to print when it cannot tell (no class names in the samples)."""
    h, w = samples.images.shape[1:3]
    size = config.image_size
    if (h, w) != (size, size):
        raise ValueError(f"these are {w}x{h} images; the classifier takes {size}x{size}: pass the classifier trained "
                         f"on this data with --classifier (`{train_hint} --resolution {h}`)")
    names, n = tuple(config.class_names), config.num_classes
    if samples.class_names is not None and tuple(samples.class_names) != names:
        raise ValueError(f"the samples' classes are [{_names(samples.class_names)}]; the classifier's are "
                         f"[{_names(names)}]: pass the classifier trained on this data with --classifier "
                         f"(`{train_hint}`)")
    if samples.labels is not None:
        bad = samples.labels[(samples.labels < 0) | (samples.labels > n)]
        if len(bad):
            raise ValueError(f"class label {int(bad[0])} is outside the classifier's {n} classes ({_names(names)}; "
                             f"and {n} for unconditional): pass the classifier trained on this data with --classifier "
                             f"(`{train_hint}`)")
    warnings = []
    if samples.labels is not None and samples.class_names is None:
        warnings.append(f"class names could not be checked (the samples carry none; `nextscale sample` writes them): "
                        f"are these images of the classifier's classes, {_names(names)}?")
    return warnings


def classifier_metrics(samples: ImageSet, classifier, device, batch_size: int = 500, seed: int = 0,
                       floor_draws: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000,
                       data_override: dict | None = None) -> dict:
    """Class accuracy, Fréchet distance and KID in the classifier's features against its held-out real images, and
    their floors (as many real training images as samples vs the held-out images, `floor_draws` random draws).

    The classifier's config.json says which real images (real_data.py); `data_override` replaces entries of it
    (e.g. {"path": ...} for a moved folder). Samples of another resolution or other classes are refused."""
    from nextscale.evaluation.real_data import load_real_data

    config = classifier.config
    warnings = check_samples_fit(samples, config)
    data = dict(config.data, **(data_override or {}))
    try:
        real = load_real_data(data, config.class_names)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; the classifier's real images are not where its config.json says: pass "
                                f"--real-data FOLDER (where they are now), or retrain the classifier") from None
    for key, now in (("num_train_images", real.num_train), ("num_heldout_images", len(real.heldout_images)),
                     ("heldout_digest", real.heldout_digest)):
        if data.get(key) is not None and data[key] != now:
            what = "other held-out images" if key == "heldout_digest" else \
                f"{data[key]} {key[4:].replace('_', ' ')} then, {now} now"
            warnings.append(f"{real.source} changed since the classifier was trained ({what}): retrain it, its "
                            f"held-out images may have been trained on")
            break

    n = config.num_classes
    own = config.heldout_accuracy
    if own is not None and own < 1.5 / n:
        warnings.append(f"the classifier's own held-out accuracy is {own:.4f} (chance 1/{n}): its features and "
                        f"predictions mean little; train it longer (--epochs) or on more images")
    if len(real.heldout_images) < MIN_HELDOUT:
        warnings.append(f"only {len(real.heldout_images)} held-out real images: the distances are very noisy; hold "
                        f"out more (train-classifier --holdout, or --eval-data FOLDER)")

    out = run_in_batches(classifier, samples, classifier_outputs, device, batch_size, "classifier: samples")
    result = {"num_images": len(samples), "real_data": real.summary(), "classifier_heldout_accuracy":
              config.heldout_accuracy}
    if samples.labels is not None:
        result.update(class_accuracy(out["logits"].argmax(1).numpy(), samples.labels, config.class_names))
        acc = result.get("class_accuracy")
        if acc is not None and result["num_labelled"] >= 2 * n and acc < 1.5 / n:
            warnings.append(f"class accuracy {acc:.4f} is near chance (1/{n}): are these images of the classifier's "
                            f"classes ({_names(config.class_names)})?")

    heldout = ImageSet(as_nhwc3(real.heldout_images, "the held-out images"))
    result["colourfulness"] = image_set_colourfulness(samples)
    result["real_colourfulness"] = image_set_colourfulness(heldout)
    held_feats = run_in_batches(classifier, heldout, classifier_outputs, device, batch_size,
                                "classifier: held-out images")["features"]
    held_stats = feature_statistics(held_feats)
    result["frechet_distance"] = frechet_distance(*feature_statistics(out["features"]), *held_stats)
    # KID's kernel (x.y/d + 1)^3 expects features of order 1 (as Inception's are); a classifier's may be of order 10
    # to 100, which would make KID a number of millions dominated by the scale. We divide all features by one
    # constant of the classifier and its real data: the RMS value of the held-out images' features.
    scale = float(held_feats.pow(2).mean().sqrt()) or 1.0
    kid = kernel_inception_distance(out["features"] / scale, held_feats / scale, kid_subsets, kid_subset_size, seed)
    result.update(kid=kid["kid"], kid_std=kid["kid_std"], kid_subsets=kid["subsets"],
                  kid_subset_size=kid["subset_size"], kid_feature_scale=scale)

    # The floor: as many real training images as samples (all of them when there are more samples). With a
    # thousand images it varies by a factor of two from one draw to the next: we average several draws.
    count = min(len(samples), real.num_train)
    floors, kid_floors = [], []
    for draw in range(floor_draws if count < real.num_train else 1):
        pick = np.sort(np.random.default_rng(seed + draw).choice(real.num_train, size=count, replace=False))
        draw_set = ImageSet(as_nhwc3(real.train(pick, f"reading training images, draw {draw + 1}")[0],
                                     "the training images"))
        feats = run_in_batches(classifier, draw_set, classifier_outputs, device, batch_size,
                               f"classifier: train images, draw {draw + 1}")["features"]
        floors.append(frechet_distance(*feature_statistics(feats), *held_stats))
        kid_floors.append(kernel_inception_distance(feats / scale, held_feats / scale, kid_subsets, kid_subset_size,
                                                    seed)["kid"])
    result["frechet_distance_floor"] = float(np.mean(floors))
    result["frechet_distance_floor_std"] = float(np.std(floors))
    result["frechet_distance_floor_draws"] = floors
    result["kid_floor"] = float(np.mean(kid_floors))
    result["kid_floor_std"] = float(np.std(kid_floors))
    result["kid_floor_draws"] = kid_floors
    result["floor_num_train_images"] = count
    result["num_heldout_images"] = len(real.heldout_images)
    result["warnings"] = warnings
    return result


def fashion_mnist_metrics(samples: ImageSet, classifier, device, batch_size: int = 500, seed: int = 0,
                          floor_draws: int = 5, data_dir=None, **kwargs) -> dict:
    """`classifier_metrics` of a Fashion-MNIST classifier, its files in `data_dir` (None: the installed ones)."""
    return classifier_metrics(samples, classifier, device, batch_size, seed, floor_draws,
                              data_override={"path": str(data_dir)} if data_dir else None, **kwargs)


def inception_metrics(samples: ImageSet, inception, device, reference: ImageSet | None = None,
                      batch_size: int = 50, is_splits: int = 10, k: int = 3) -> tuple[dict, dict]:
    """(metrics, sample statistics {'mu', 'sigma'}). Without a reference only the Inception Score."""
    out = run_in_batches(inception, samples, inception_outputs, device, batch_size, "inception: samples")
    splits = min(is_splits, len(samples))
    is_mean, is_std = inception_score(out["logits_unbiased"], splits=splits)
    mu, sigma = feature_statistics(out["pool"])
    stats = {"mu": mu, "sigma": sigma}
    result = {"inception_score": is_mean, "inception_score_std": is_std, "is_splits": splits,
              "colourfulness": image_set_colourfulness(samples)}
    if reference is None:
        return result, stats
    ref_pool = None
    if len(reference):
        ref_pool = run_in_batches(inception, reference, inception_outputs, device, batch_size,
                                  "inception: reference")["pool"]
    if reference.mu is not None:  # the reference batch's own statistics, as ADM's evaluator uses them
        if reference.mu.shape != mu.shape:
            raise ValueError(f"{reference.source}: mu has {reference.mu.shape[0]} dimensions; Inception pool "
                             f"features have {mu.shape[0]}")
        ref_stats, result["fid_reference_statistics"] = (reference.mu, reference.sigma), "from the .npz"
    else:
        ref_stats, result["fid_reference_statistics"] = feature_statistics(ref_pool), "computed"
    result["fid"] = frechet_distance(mu, sigma, *ref_stats)
    if ref_pool is not None:
        result["real_colourfulness"] = image_set_colourfulness(reference)
        result["precision"], result["recall"] = precision_recall(ref_pool, out["pool"], k=k)
        result["precision_recall_k"] = k
    return result, stats
