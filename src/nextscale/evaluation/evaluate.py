"""Metrics of a set of generated images, as `nextscale eval` reports them.

Fashion-MNIST (our classifier): class accuracy of class-conditional samples, and the Fréchet distance of
the classifier's 128-d features to the test split. Its floor is the same distance for as many real
training images, chosen at random: a perfect generator (one that draws fresh images from the data
distribution) scores about this, since the distance is biased upwards by finite sample counts. The floor is
the mean over several random draws of training images (`floor_draws`), as one draw is noisy.
Inception (the standard FID network, weights from the user): FID, Inception Score, precision/recall.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from nextscale.evaluation.frechet import (feature_statistics, frechet_distance, inception_score,
                                          precision_recall)
from nextscale.evaluation.image_sets import ImageSet, as_nhwc3


@torch.no_grad()
def run_in_batches(model, image_set: ImageSet, outputs, device, batch_size: int, desc: str
                   ) -> dict[str, torch.Tensor]:
    """Concatenated outputs of `outputs(model, images_BCHW) -> dict of (B, ...)` over the set, on the CPU."""
    pieces: dict[str, list] = {}
    total = (len(image_set) + batch_size - 1) // batch_size
    for images in tqdm(image_set.batches(batch_size), total=total, desc=desc, leave=False, disable=total < 2):
        for name, value in outputs(model, images.to(device)).items():
            pieces.setdefault(name, []).append(value.double().cpu())
    return {name: torch.cat(values) for name, values in pieces.items()}


def classifier_outputs(model, images):
    features, logits = model.features_and_logits(images)
    return {"features": features, "logits": logits}


def inception_outputs(model, images):
    out = model(images)
    return {"pool": out["pool"], "logits_unbiased": out["logits_unbiased"]}


def class_accuracy(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Overall and per-class accuracy; labels == num_classes (the null class: unconditional) are left out."""
    conditional = labels != num_classes
    if not conditional.any():
        return {}
    pred, lab = predicted[conditional], labels[conditional]
    per_class = {int(c): float((pred[lab == c] == c).mean()) for c in np.unique(lab)}
    return {"class_accuracy": float((pred == lab).mean()), "per_class_accuracy": per_class,
            "num_labelled": int(conditional.sum())}


def fashion_mnist_metrics(samples: ImageSet, classifier, device, batch_size: int = 500, seed: int = 0,
                          floor_draws: int = 5, data_dir=None) -> dict:
    from nextscale.data.fashion_mnist import load_fashion_mnist

    num_classes = classifier.config.num_classes
    if samples.labels is not None:
        bad = samples.labels[(samples.labels < 0) | (samples.labels > num_classes)]
        if len(bad):
            raise ValueError(f"class label {int(bad[0])} is outside [0, {num_classes - 1}] (and is not the null "
                             f"class {num_classes}): these are not Fashion-MNIST classes")
    out = run_in_batches(classifier, samples, classifier_outputs, device, batch_size, "classifier: samples")
    result = {"num_images": len(samples),
              "classifier_test_accuracy": classifier.config.metrics.get("test_accuracy")}
    if samples.labels is not None:
        result.update(class_accuracy(out["logits"].argmax(1).numpy(), samples.labels, num_classes))

    test_x, _ = load_fashion_mnist("test", data_dir)
    train_x, _ = load_fashion_mnist("train", data_dir)
    test = ImageSet(as_nhwc3(test_x, "Fashion-MNIST test split"))
    test_feats = run_in_batches(classifier, test, classifier_outputs, device, batch_size, "classifier: test split")
    test_stats = feature_statistics(test_feats["features"])
    result["frechet_distance"] = frechet_distance(*feature_statistics(out["features"]), *test_stats)

    # The floor: as many real training images as samples (all of them when there are more samples). With a
    # thousand images it varies by a factor of two from one draw to the next: we average several draws.
    count = min(len(samples), len(train_x))
    floors = []
    for draw in range(floor_draws if count < len(train_x) else 1):
        pick = np.sort(np.random.default_rng(seed + draw).choice(len(train_x), size=count, replace=False))
        real = ImageSet(as_nhwc3(train_x[pick], "Fashion-MNIST train split"))
        real_feats = run_in_batches(classifier, real, classifier_outputs, device, batch_size,
                                    f"classifier: train images, draw {draw + 1}")
        floors.append(frechet_distance(*feature_statistics(real_feats["features"]), *test_stats))
    result["frechet_distance_floor"] = float(np.mean(floors))
    result["frechet_distance_floor_std"] = float(np.std(floors))
    result["frechet_distance_floor_draws"] = floors
    result["floor_num_train_images"] = count
    result["num_test_images"] = len(test_x)
    return result


def inception_metrics(samples: ImageSet, inception, device, reference: ImageSet | None = None,
                      batch_size: int = 50, is_splits: int = 10, k: int = 3) -> tuple[dict, dict]:
    """(metrics, sample statistics {'mu', 'sigma'}). Without a reference only the Inception Score."""
    out = run_in_batches(inception, samples, inception_outputs, device, batch_size, "inception: samples")
    splits = min(is_splits, len(samples))
    is_mean, is_std = inception_score(out["logits_unbiased"], splits=splits)
    mu, sigma = feature_statistics(out["pool"])
    stats = {"mu": mu, "sigma": sigma}
    result = {"inception_score": is_mean, "inception_score_std": is_std, "is_splits": splits}
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
        result["precision"], result["recall"] = precision_recall(ref_pool, out["pool"], k=k)
        result["precision_recall_k"] = k
    return result, stats
