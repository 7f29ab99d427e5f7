"""The other commands check their options and output locations before any work, as sample, edit and export do
(issue 14): eval, eval-tokenizer, train-classifier, tokenize."""

import numpy as np
import pytest
from PIL import Image

import nextscale
from conftest import TINY_TOKENIZER
from nextscale.cli import main


def refused(argv, capsys, *parts):
    """Run the command line; assert exit 2 with one error line holding every one of `parts`."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    for part in parts:
        assert str(part) in err, (part, err)


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


@pytest.mark.parametrize("extra, message", [
    (["--resize-ratio", "nan"], "--resize-ratio must be a number in [1, 8], got nan"),
    (["--resize-ratio", "1e300"], "--resize-ratio must be a number in [1, 8]"),
    (["--grid-images", "0"], "--grid-images must be a whole number in [1, 256], got 0"),
    (["--batch-size", "0"], "--batch-size must be a whole number in [1, 100000], got 0"),
    (["--threads", "-2"], "--threads must be a whole number in [0, 1024], got -2"),
    (["--out", "{blocker}"], "{blocker} is a file"),
])
def test_eval_tokenizer_refuses_bad_numbers_and_outputs_before_loading(extra, message, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded before the options were checked")

    monkeypatch.setattr(nextscale, "load_vae", refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    extra = [a.format(blocker=blocker) for a in extra]
    refused(["eval-tokenizer", "--tokenizer", tmp_path, *extra], capsys, message.format(blocker=blocker))


@pytest.mark.parametrize("extra, message", [
    (["--lr", "nan"], "--lr must be a number in (0, 10], got nan"),
    (["--lr", "-1"], "--lr must be a number in (0, 10]"),
    (["--dropout", "1.5"], "--dropout must be a number in [0, 1), got 1.5"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a number in [0, 10]"),
    (["--seed", "1180591620717411303424"], "--seed must be a whole number in [0, 9223372036854775807]"),
    (["--out", "{blocker}"], "{blocker} is a file"),
])
def test_train_classifier_refuses_bad_numbers_and_outputs_before_reading_images(extra, message, tmp_path, capsys,
                                                                                monkeypatch):
    import nextscale.evaluation.train_classifier as train_classifier

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the options were checked")

    monkeypatch.setattr(train_classifier, "train", refuse)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    extra = [a.format(blocker=blocker) for a in extra]
    refused(["train-classifier", "--data", tmp_path, *extra], capsys, message.format(blocker=blocker))


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
