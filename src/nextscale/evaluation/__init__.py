"""Evaluation of generated images: Fréchet distance, KID, precision/recall, Inception Score, domain classifiers
(the shipped Fashion-MNIST one, or one trained on an image folder) and the standard FID Inception network, ADM
`.npz` files."""

from nextscale.evaluation.classifier import ClassifierConfig, FashionMNISTClassifier, ImageClassifier, load_classifier
from nextscale.evaluation.frechet import (feature_statistics, frechet_distance, frechet_distance_of_features,
                                          inception_score, kernel_inception_distance, knn_radii, manifold_coverage,
                                          mmd2_unbiased, precision_recall)
from nextscale.evaluation.image_sets import ImageSet, read_image_folder, read_image_set, read_npz, write_npz
from nextscale.evaluation.inception import FIDInceptionV3, load_inception

__all__ = [
    "ClassifierConfig", "FashionMNISTClassifier", "ImageClassifier", "load_classifier",
    "feature_statistics", "frechet_distance", "frechet_distance_of_features", "inception_score",
    "kernel_inception_distance", "knn_radii", "manifold_coverage", "mmd2_unbiased", "precision_recall",
    "ImageSet", "read_image_folder", "read_image_set", "read_npz", "write_npz",
    "FIDInceptionV3", "load_inception",
]
