"""The Fashion-MNIST classifier: the general `ImageClassifier` (classifier.py) with the Fashion-MNIST defaults.

Kept for the names it always exported; new code imports from `nextscale.evaluation.classifier`.
"""

from nextscale.evaluation.classifier import (SHIPPED_FOLDER, ClassifierConfig, FashionMNISTClassifier, ImageClassifier,
                                             load_classifier, shipped_classifier_path)

__all__ = ["SHIPPED_FOLDER", "ClassifierConfig", "FashionMNISTClassifier", "ImageClassifier", "load_classifier",
           "shipped_classifier_path"]
