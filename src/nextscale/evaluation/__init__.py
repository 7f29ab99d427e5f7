"""Evaluation of generated images: Fréchet distance, precision/recall, Inception Score, the Fashion-MNIST classifier
and the standard FID Inception network, ADM `.npz` files."""

from nextscale.evaluation.fmnist_classifier import ClassifierConfig, FashionMNISTClassifier, load_classifier
from nextscale.evaluation.frechet import (feature_statistics, frechet_distance, frechet_distance_of_features,
                                          inception_score, knn_radii, manifold_coverage, precision_recall)
from nextscale.evaluation.image_sets import ImageSet, read_image_folder, read_image_set, read_npz, write_npz
from nextscale.evaluation.inception import FIDInceptionV3, load_inception

__all__ = [
    "ClassifierConfig", "FashionMNISTClassifier", "load_classifier",
    "feature_statistics", "frechet_distance", "frechet_distance_of_features", "inception_score", "knn_radii",
    "manifold_coverage", "precision_recall",
    "ImageSet", "read_image_folder", "read_image_set", "read_npz", "write_npz",
    "FIDInceptionV3", "load_inception",
]
