"""The `nextscale sample` and `edit` command lines, on tiny random models saved as plain state dicts."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.cli import main


@pytest.fixture
def input_image(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "input.png"
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(path)
    return path


def test_sample_writes_grid_pngs_and_npz(tiny_args, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", *tiny_args, "--class", "3,7", "--num-per-class", "3", "--npz", "--out", str(out),
                 "--batch-size", "4", "--seed", "1"]) == 0
    assert (out / "grid.png").is_file()
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"class{c:03d}_{i:05d}.png" for c in (3, 7) for i in range(3)]
    with np.load(out / "samples.npz") as data:
        arr, labels = data["arr_0"], data["labels"]
    assert arr.dtype == np.uint8 and arr.shape == (6, 64, 64, 3)
    assert labels.tolist() == [3, 3, 3, 7, 7, 7]
    # The PNGs and the npz hold the same pixels.
    assert np.array_equal(np.asarray(Image.open(out / "images" / "class007_00002.png")), arr[5])
    assert "6 images" in capsys.readouterr().out


def test_sample_images_do_not_depend_on_batch_size(tiny_args, tmp_path):
    for bs in (1, 5):
        assert main(["sample", *tiny_args, "--class", "2", "--num-per-class", "5", "--no-grid", "--no-images",
                     "--npz", "--batch-size", str(bs), "--out", str(tmp_path / f"bs{bs}")]) == 0
    a = np.load(tmp_path / "bs1" / "samples.npz")["arr_0"]
    b = np.load(tmp_path / "bs5" / "samples.npz")["arr_0"]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_sample_precision_option_reaches_the_sampler(tiny_args, tmp_path, monkeypatch):
    import nextscale
    seen = []
    real_sample = nextscale.sample

    def recording_sample(*args, **kwargs):
        seen.append(kwargs.get("precision"))
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(nextscale, "sample", recording_sample)
    assert main(["sample", *tiny_args, "--class", "4", "--num-per-class", "2", "--no-grid", "--precision", "int8",
                 "--device", "cpu", "--out", str(tmp_path / "int8")]) == 0
    assert seen == ["int8"] and len(list((tmp_path / "int8" / "images").iterdir())) == 2


def test_edit_keeps_the_kept_tokens_exactly(tiny_args, tmp_path, input_image, tiny_vae):
    out = tmp_path / "edits"
    assert main(["edit", *tiny_args, "--image", str(input_image), "--box", "0.25,0.25,0.75,0.75",
                 "--mode", "inpaint", "--class", "5", "--num", "2", "--save-tokens", "--out", str(out)]) == 0
    edited = np.asarray(Image.open(out / "input_edited.png"))
    assert edited.shape[0] == 64 + 4 and edited.shape[1] == 2 * 64 + 6  # two variations side by side
    assert (out / "input_compare.png").is_file()
    tokens = np.load(out / "input_tokens.npz")
    from nextscale.images import load_images, to_model_input
    image = to_model_input(load_images(input_image), 64, 3)
    known = tiny_vae.encode_tokens(image * 2 - 1)
    keep = torch.from_numpy(tokens["keep_mask"]).flatten().bool()
    assert keep.sum() == 12  # a 2x2 box of 16 tokens regenerated
    finest = torch.from_numpy(tokens["scale_3"])
    assert torch.equal(finest[:, keep], known[3].expand(2, -1)[:, keep])
    assert not torch.equal(finest[0], finest[1])  # two seeds, two variations


def test_edit_with_mask_image(tiny_args, tmp_path, input_image):
    mask = np.zeros((90, 120), np.uint8)
    mask[:, 60:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert main(["edit", *tiny_args, "--image", str(input_image), "--mask", str(tmp_path / "mask.png"),
                 "--save-tokens", "--out", str(tmp_path / "o")]) == 0
    keep = np.load(tmp_path / "o" / "input_tokens.npz")["keep_mask"]
    assert keep[:, :2].all() and not keep[:, 2:].any()


@pytest.mark.parametrize("extra, message", [
    (["sample", "--class", "11"], "class id 11 is outside"),
    (["sample", "--class", "-3"], "outside"),
    (["sample", "--cfg", "-0.5"], "--cfg must be a number in [0, 100]"),
    (["sample", "--top-p", "1.5"], "--top-p must be a number in [0, 1]"),
    (["sample", "--top-k", "-1"], "--top-k must be a whole number >= 0"),
    (["sample", "--num-per-class", "0"], "--num-per-class must be a whole number in [1, 1000000]"),
    (["edit", "--image", "{img}", "--box", "0.5,0.5,0.5,0.8"], "covers no token"),
    (["edit", "--image", "{img}", "--box", "0,0,1.2,1"], "must lie in [0, 1]"),
    (["edit", "--image", "{missing}", "--box", "0,0,0.5,0.5"], "image not found"),
    (["edit", "--image", "{garbage}", "--box", "0,0,0.5,0.5"], "cannot read image"),
    (["edit", "--image", "{img}", "--mask", "{small_mask}"], "must have the same size"),
    (["edit", "--image", "{img}", "--box", "0,0,0.5,0.5", "--precision", "int8"], "int8 is for `nextscale sample`"),
    (["sample", "--precision", "float16", "--device", "cpu"], "float16 needs a GPU"),
])
def test_bad_input_exits_nonzero_with_a_message(extra, message, tiny_args, tmp_path, input_image, capsys):
    (tmp_path / "garbage.png").write_text("not an image")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    paths = dict(img=input_image, missing=tmp_path / "missing.png", garbage=tmp_path / "garbage.png",
                 small_mask=tmp_path / "small_mask.png")
    argv = [a.format(**paths) for a in extra]
    code = main([argv[0], *tiny_args, *argv[1:], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0
    assert message in err and "Traceback" not in err


def test_missing_checkpoint_is_reported_by_the_console_script(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nextscale.cli", "sample", "--transformer",
                             str(tmp_path / "var.pth"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "checkpoint not found" in result.stderr and "Traceback" not in result.stderr


def test_help_explains_every_option():
    import argparse
    from nextscale.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        undocumented = [a.dest for a in parser._actions if not a.help]
        assert undocumented == [], f"`nextscale {name}` options without help: {undocumented}"
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--help"])
    assert exit_info.value.code == 0


def test_edit_offers_no_batch_size_it_would_ignore(capsys):
    """`edit` regenerates a request in one batch: its --help used to list a --batch-size that did nothing."""
    from nextscale.cli import main
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    assert "--batch-size" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--batch-size" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["train-classifier", "--data", "{folder}", "--out", "{file}"],
    ["train", "{root}/configs/var_fashion_mnist.yaml", "out_dir={file}", "tokenizer=fashion-mnist", "token_cache=null",
     "data.max_images=64", "steps=1"],
    ["train-tokenizer", "{root}/configs/tokenizer_fashion_mnist.yaml", "out_dir={file}", "data.max_images=64",
     "steps=1"],
])
def test_an_output_folder_that_is_a_file_is_one_line(argv, tmp_path, capsys, request):
    """A file where an output folder goes: exit 2 with one line (it was a FileExistsError traceback, and for
    train-classifier only after all the training)."""
    from nextscale.cli import main
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    folder = tmp_path / "images"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
    if argv[0] != "train-classifier":
        request.getfixturevalue("fashion_mnist")
    root = Path(__file__).resolve().parents[1]
    argv = [a.format(file=blocker, folder=folder, root=root) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err and str(blocker) in err, err
    assert blocker.read_text() == "keep me"
