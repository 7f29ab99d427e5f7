"""Rejection sampling: draw more candidates than asked for, keep per requested class the ones a classifier
rates most likely to be that class (`nextscale.sample(..., reject_with=..., keep=...)`).

The plan (`candidate_plan`): the requested classes in order of first appearance, each with ceil(n / keep)
candidates for its n requested images, candidate j of the call drawn with seed + j (per_image_seeds) or, with
one generator, in candidate order. Each candidate is scored with the classifier's probability of its class;
per class the n best are kept (ties: the earlier candidate), in candidate order.

Classifiers (`class_scorer`): the shipped Fashion-MNIST one ("fashion-mnist"), a folder of
`nextscale train-classifier`, or the FID Inception-v3 (a weights file, as `nextscale eval` takes it). The
Inception's 1008 logits are in the order of the TensorFlow graph it comes from, not ImageNet's class ids: it
needs the graph's label map (`imagenet_2012_challenge_label_map_proto.pbtxt`, in the same
inception-2015-12-05 archive) or a JSON list giving the logit of each model class (`inception_class_map`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

SHIPPED_CLASSIFIER = "fashion-mnist"  # the name of the classifier shipped with the package


def check_keep(keep) -> float:
    """`keep` as a float in (0, 1]; else a ValueError that says what it is."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not (0 < keep <= 1):
        raise ValueError(f"keep must be a number in (0, 1]: the fraction of the candidates rejection sampling "
                         f"keeps (0.5 draws two per image), got {keep!r}")
    return float(keep)


def candidates_for(count: int, keep: float) -> int:
    """ceil(count / keep), without float noise pushing an exact quotient up (3 / 0.1 is 30, not 31)."""
    return math.ceil(round(count / keep, 9))


def candidate_plan(labels: list[int], keep: float, num_classes: int) -> tuple[dict[int, int], list[int]]:
    """({class: images requested}, the candidates' classes): the classes in order of first appearance,
    each with `candidates_for(n, keep)` candidates. The null class has nothing to score: refused."""
    if num_classes in labels:
        raise ValueError(f"rejection sampling keeps the images most likely to be their class; the null class "
                         f"({num_classes}, unconditional) has none: give classes")
    wanted: dict[int, int] = {}
    for c in labels:
        wanted[c] = wanted.get(c, 0) + 1
    return wanted, [c for c, n in wanted.items() for _ in range(candidates_for(n, keep))]


# ---------------------------------------------------------------------------------------- Inception class map
def inception_class_map(path: str | os.PathLike) -> list[int]:
    """The Inception logit of each ImageNet class id, from the TensorFlow graph's label map
    (`imagenet_2012_challenge_label_map_proto.pbtxt`: entries of target_class, the logit, and
    target_class_string, the WordNet id; class ids are the WordNet ids in sorted order, as ImageNet's
    folders sort) or from a JSON list of logit indices, one per class."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception label map not found: {path} (imagenet_2012_challenge_label_map_proto"
                                f".pbtxt of the inception-2015-12-05 archive, or a JSON list of logit indices)")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON: {e}") from None
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{path} must hold a JSON list of whole numbers: the Inception logit of each class")
        return values
    pairs = re.findall(r"target_class:\s*(\d+)\s*target_class_string:\s*\"([^\"]+)\"", text)
    if not pairs:
        raise ValueError(f"{path} has no 'target_class: N target_class_string: \"n...\"' entries: it is not the "
                         f"Inception graph's label map (imagenet_2012_challenge_label_map_proto.pbtxt)")
    logit_of = {wnid: int(n) for n, wnid in pairs}
    return [logit_of[wnid] for wnid in sorted(logit_of)]


# ---------------------------------------------------------------------------------------- scoring
class ClassScorer:
    """A classifier as rejection sampling uses it: images (B, C, H, W) in [0, 1] and their classes (B,) ->
    the classifier's probability of each image's class (B,), a softmax over all of its logits.

    model: a module or function from images to logits (B, N), or to a dict holding them under 'logits'
    (the FID Inception). class_map: the logit of each model class (default: class c is logit c).
    image_size: the side the classifier takes (images are resized to it, bilinear with antialiasing);
    None feeds them as they are."""

    def __init__(self, model: Callable, class_map: list[int] | None = None, image_size: int | None = None,
                 name: str = "classifier"):
        self.model = model
        self.class_map = None if class_map is None else torch.as_tensor(class_map, dtype=torch.long)
        self.image_size = image_size
        self.name = name

    @property
    def device(self) -> torch.device:
        params = getattr(self.model, "parameters", None)
        first = next(iter(params()), None) if params is not None else None
        return first.device if first is not None else torch.device("cpu")

    @torch.no_grad()
    def __call__(self, images_BCHW: torch.Tensor, labels_B: torch.Tensor) -> torch.Tensor:
        device = self.device
        x = images_BCHW.float().to(device)
        if self.image_size is not None and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=True)
        logits = self.model(x)
        if isinstance(logits, dict):
            logits = logits["logits"]
        columns = labels_B.to(device)
        if self.class_map is not None:
            columns = self.class_map.to(device)[columns]
        probs = logits.float().softmax(dim=-1)
        return probs.gather(1, columns.view(-1, 1)).view(-1).to(images_BCHW.device)


def _names(names) -> str:
    names = list(names)
    return ", ".join(names) if len(names) <= 6 else ", ".join(names[:6]) + f", ... ({len(names)} classes)"


def class_scorer(reject_with, var, device: torch.device | str | None = None,
                 class_map: list[int] | str | os.PathLike | None = None) -> ClassScorer:
    """`reject_with` as a ClassScorer for the classes of `var`, checked; else a ValueError naming the fix.

    reject_with: a ClassScorer (used as it is); "fashion-mnist" (the shipped classifier); a folder of
    `nextscale train-classifier`; the FID Inception weights file (pytorch-fid's .pth, or a .safetensors of it);
    or a loaded classifier: an ImageClassifier, a FIDInceptionV3, or any module from images in [0, 1] to logits
    (B, number of classes). The FID Inception needs `class_map` (a list, or a file for `inception_class_map`).
    Paths are loaded onto `device`."""
    from nextscale.evaluation.classifier import ImageClassifier, load_classifier
    from nextscale.evaluation.inception import NUM_LOGITS, FIDInceptionV3, load_inception
    if isinstance(reject_with, ClassScorer):
        return reject_with
    name = "classifier"
    if isinstance(reject_with, (str, os.PathLike)):
        name = str(reject_with)
        path = Path(reject_with)
        if str(reject_with) == SHIPPED_CLASSIFIER and not path.exists():
            reject_with = load_classifier(None, device)
        elif path.is_dir():
            reject_with = load_classifier(path, device)
        elif path.is_file():
            reject_with = load_inception(path, device)
        else:
            raise FileNotFoundError(f"no classifier at {reject_with}: give '{SHIPPED_CLASSIFIER}' (the shipped "
                                    f"classifier), a folder of `nextscale train-classifier`, or the FID Inception "
                                    f"weights file")
    if isinstance(class_map, (str, os.PathLike)):
        class_map = inception_class_map(class_map)
    num_classes = var.num_classes
    if isinstance(reject_with, FIDInceptionV3):
        if class_map is None:
            raise ValueError("the FID Inception's logits are in its TensorFlow graph's order, not the model's class "
                             "ids: give its label map (imagenet_2012_challenge_label_map_proto.pbtxt of the "
                             "inception-2015-12-05 archive, or a JSON list of the logit of each class)")
        width = NUM_LOGITS
        name = "Inception-v3" if name == "classifier" else name
    elif isinstance(reject_with, ImageClassifier):
        config = reject_with.config
        ours = [n.lower() for n in ((getattr(var, "extra_config", None) or {}).get("class_names") or [])]
        theirs = [str(n).lower() for n in config.class_names]
        if config.num_classes != num_classes or (ours and theirs and ours != theirs):
            raise ValueError(f"the classifier's classes are [{_names(config.class_names)}], the model's "
                             f"[{_names(ours) if ours else f'{num_classes} classes'}]: reject with a classifier "
                             f"trained on the model's data (nextscale train-classifier)")
        if class_map is not None:
            raise ValueError("a class map is for the FID Inception; this classifier's classes are the model's")
        return ClassScorer(reject_with, None, config.image_size, name)
    elif callable(reject_with):
        width = None
    else:
        raise ValueError(f"reject_with must be a classifier (a path, '{SHIPPED_CLASSIFIER}', or a module from "
                         f"images to logits), got {type(reject_with).__name__}")
    if class_map is not None:
        class_map = list(class_map)
        if len(class_map) != num_classes:
            raise ValueError(f"the class map has {len(class_map)} entries for the model's {num_classes} classes")
        if width is not None and not all(0 <= int(v) < width for v in class_map):
            raise ValueError(f"the class map's logit indices must lie in [0, {width - 1}]")
    return ClassScorer(reject_with, class_map, None, name)


# ---------------------------------------------------------------------------------------- keeping the best
class Selection:
    """The best candidates of each class so far: add batches of candidates, then `result` orders the kept ones.

    wanted: {class: how many to keep}. Ranking: the higher score first, then the earlier candidate."""

    def __init__(self, wanted: dict[int, int]):
        self.wanted = dict(wanted)
        self.pools: dict[int, list] = {c: [] for c in wanted}

    def add(self, first: int, labels_B: torch.Tensor, scores_B: torch.Tensor, images_B: torch.Tensor,
            tokens: list[torch.Tensor]) -> None:
        """Candidates first, first+1, ... with their classes, scores, images and token maps."""
        touched = set()
        for b, (c, score) in enumerate(zip(labels_B.tolist(), scores_B.tolist())):
            self.pools[c].append((-score, first + b, images_B[b], [t[b] for t in tokens]))
            touched.add(c)
        for c in touched:
            self.pools[c].sort(key=lambda e: (e[0], e[1]))
            del self.pools[c][self.wanted[c]:]

    def result(self, requested: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """(images, tokens per scale, scores, candidate indices) for the requested classes in their order:
        the i-th request of class c gets the i-th kept candidate of c in candidate order."""
        kept = {c: sorted(pool, key=lambda e: e[1]) for c, pool in self.pools.items()}
        used = {c: 0 for c in kept}
        chosen = []
        for c in requested:
            chosen.append(kept[c][used[c]])
            used[c] += 1
        images = torch.stack([e[2] for e in chosen])
        tokens = [torch.stack([e[3][si] for e in chosen]) for si in range(len(chosen[0][3]))]
        scores = torch.tensor([-e[0] for e in chosen])
        candidates = torch.tensor([e[1] for e in chosen])
        return images, tokens, scores, candidates
