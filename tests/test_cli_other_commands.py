"""The other commands check their options and output locations before any work, as sample, edit and export do
(issue 14): eval, eval-tokenizer, train-classifier, tokenize."""

import importlib

import numpy as np
import pytest
from PIL import Image

import nextscale
from conftest import TINY_TOKENIZER
import refusals


def refused(argv, capsys, *parts):
    """Run the command line; assert exit 2 with one error line holding every one of `parts`, and nothing else."""
    return refusals.refused(argv, capsys, *parts, alone=True)


def write_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


def test_eval_checks_its_output_files_before_reading_images(tmp_path, capsys, monkeypatch):
    import nextscale.evaluation.image_sets as image_sets

    def refuse(*args, **kwargs):
        raise AssertionError("the images were read before the output files were checked")

    monkeypatch.setattr(image_sets, "read_image_set", refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    refused(["eval", tmp_path, "--json", blocker / "eval.json"], capsys, f"--json {blocker / 'eval.json'}",
            f"{blocker} is a file")
    (tmp_path / "out.npz").mkdir()
    refused(["eval", tmp_path, "--save-npz", tmp_path / "out"], capsys, f"{tmp_path / 'out.npz'} is a folder")
    refused(["eval", tmp_path, "--seed", "-1"], capsys, "--seed must be a whole number in [0,")


def _set(**values):
    return lambda meta: {**meta, **values}


def _without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _half(data: bytes) -> bytes:
    return data[:len(data) // 2]


@pytest.mark.parametrize("config_change, weights_change, file, message", [
    (lambda meta: [1, 2], None, "config.json", "expected a JSON object of the classifier's fields"),  # AttributeError
    (lambda meta: {}, None, "config.json", "it lacks 'channels', 'feature_dim', 'num_classes'"),  # ran as Fashion-MNIST
    (_without("num_classes"), None, "config.json", "it lacks 'num_classes'"),
    (_set(num_classes="ten"), None, "config.json", "num_classes must be an integer, got 'ten'"),
    (_set(channels="wide"), None, "config.json", "channels[0] must be an integer, got 'wide'"),
    (_set(class_names=5), None, "config.json", "class_names must be a list of strings"),
    (_set(in_channels=2), None, "config.json", "in_channels must be one of 1, 3, got 2"),
    (_set(pixel_std=0), None, "config.json", "pixel_std must be greater than 0"),
    (_set(dropout=float("nan")), None, "config.json", "dropout must be in [0, 1) (a finite number), got nan"),
    (_set(channels=[1] * 17), None, "config.json", "channels must hold at most 16 values"),
    (_set(data=[1]), None, "config.json", "data must be a mapping, got [1]"),  # TypeError
    (_set(data={"kind": "imagenet"}), None, "config.json", "data.kind must be one of fashion_mnist, image_folder"),
    (_set(data={"kind": "image_folder", "path": "/x"}), None, "config.json",  # KeyError: 'resolution'
     "data.resolution must be a whole number >= 1, it is missing"),
    # weights that do not fit config.json: a size-mismatch RuntimeError, and a 4 PB allocation for the second
    (_set(num_classes=3, class_names=["a", "b", "c"]), None, "model.safetensors",
     "does not fit {folder}/config.json: head.weight is (10, 128), the config makes it (3, 128)"),
    (_set(feature_dim=10**12), None, "model.safetensors", "the config makes it (1000000000000, 1024)"),
    (None, lambda data: b"", "model.safetensors", "is empty (0 bytes)"),
    (None, _half, "model.safetensors", "is not a valid safetensors file"),
    (None, lambda data: data[:20], "model.safetensors", "is not a valid safetensors file"),
])
def test_eval_refuses_a_broken_classifier_folder_in_one_line_naming_the_file(config_change, weights_change, file,
                                                                            message, tmp_path, capsys, monkeypatch):
    """--classifier FOLDER: config.json is checked (types, ranges, required keys, the data entry) and the weights are
    compared with it before any image is read or any memory given to the model."""
    import json
    import shutil

    import nextscale.evaluation.image_sets as image_sets
    from nextscale.evaluation.classifier import shipped_classifier_path

    def refuse(*args, **kwargs):
        raise AssertionError("the images were read before the classifier was checked")

    monkeypatch.setattr(image_sets, "read_image_set", refuse)
    folder = tmp_path / "classifier"
    shutil.copytree(shipped_classifier_path(), folder)
    if config_change is not None:
        meta = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config_change(meta)))
    if weights_change is not None:
        (folder / "model.safetensors").write_bytes(weights_change((folder / "model.safetensors").read_bytes()))
    refused(["eval", tmp_path / "samples.npz", "--classifier", folder], capsys, folder / file,
            message.format(folder=folder))


def test_eval_refuses_a_classifier_config_that_is_not_json(tmp_path, capsys):
    import shutil

    from nextscale.evaluation.classifier import shipped_classifier_path
    folder = tmp_path / "classifier"
    shutil.copytree(shipped_classifier_path(), folder)
    (folder / "config.json").write_text('{"channels": [16, 32')
    refused(["eval", tmp_path, "--classifier", folder], capsys, f"{folder / 'config.json'} is not valid JSON")
    (folder / "config.json").write_bytes(b"\xff\xfe\x00garbage")  # was a UnicodeDecodeError naming no file
    refused(["eval", tmp_path, "--classifier", folder], capsys, f"{folder / 'config.json'} is not a text (JSON) file")


# Each command with the option that names its input, and what it must not have done yet when it refuses: the
# function (module, attribute) that would start the work, and the failure saying so.
BEFORE_ANY_WORK = {
    "eval-tokenizer": ("--tokenizer", "nextscale", "load_vae", "the tokenizer was loaded"),
    "train-classifier": ("--data", "nextscale.evaluation.train_classifier", "train", "training started"),
}


@pytest.mark.parametrize("command, extra, message", [
    ("eval-tokenizer", ["--resize-ratio", "nan"], "--resize-ratio must be a number in [1, 8], got nan"),
    ("eval-tokenizer", ["--resize-ratio", "1e300"], "--resize-ratio must be a number in [1, 8]"),
    ("eval-tokenizer", ["--grid-images", "0"], "--grid-images must be a whole number in [1, 256], got 0"),
    ("eval-tokenizer", ["--batch-size", "0"], "--batch-size must be a whole number in [1, 100000], got 0"),
    ("eval-tokenizer", ["--threads", "-2"], "--threads must be a whole number in [0, 1024], got -2"),
    ("eval-tokenizer", ["--out", "{blocker}"], "{blocker} is a file"),
    ("train-classifier", ["--lr", "nan"], "--lr must be a number in (0, 10], got nan"),
    ("train-classifier", ["--lr", "-1"], "--lr must be a number in (0, 10]"),
    ("train-classifier", ["--dropout", "1.5"], "--dropout must be a number in [0, 1), got 1.5"),
    ("train-classifier", ["--weight-decay", "-0.1"], "--weight-decay must be a number in [0, 10]"),
    ("train-classifier", ["--seed", "1180591620717411303424"],
     "--seed must be a whole number in [0, 9223372036854775807]"),
    ("train-classifier", ["--out", "{blocker}"], "{blocker} is a file"),
])
def test_bad_numbers_and_outputs_are_refused_before_any_work(command, extra, message, tmp_path, capsys,
                                                              monkeypatch):
    """eval-tokenizer before loading the tokenizer, train-classifier before reading images and training."""
    input_option, module, attribute, work = BEFORE_ANY_WORK[command]

    def refuse(*args, **kwargs):
        raise AssertionError(f"{work} before the options were checked")

    monkeypatch.setattr(importlib.import_module(module), attribute, refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    extra = [a.format(blocker=blocker) for a in extra]
    refused([command, input_option, tmp_path, *extra], capsys, message.format(blocker=blocker))


def test_tokenize_overwrite_never_deletes_a_folder_that_is_not_a_cache(tmp_path, capsys):
    """--overwrite replaced any existing --out: a mistyped folder was deleted after the encoding."""
    nextscale.VQVAE(nextscale.VQVAEConfig(**TINY_TOKENIZER)).save_pretrained(tmp_path / "tok")
    for c in ("a", "b"):
        for i in range(2):
            write_image(tmp_path / "images" / c / f"{i}.png", i)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    refused(["tokenize", f"tokenizer={tmp_path / 'tok'}", "data.kind=image_folder",
             f"data.path={tmp_path / 'images'}", "data.resolution=64", "--out", precious, "--overwrite"], capsys,
            f"{precious} holds files this command does not write (thesis.tex)")
    assert (precious / "thesis.tex").read_text() == "years of work"
