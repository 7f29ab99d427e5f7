"""Bad input to the command line is refused before any work, in one line that names the input and the fix, with
exit code 2 (issue 14): model folders' config.json, empty checkpoints, numbers (0, negative, 1e300, NaN, huge
counts), seeds, classes, a scale schedule the model does not have, boxes that regenerate nothing, images too
large to decode."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
import nextscale.inference_options
from conftest import TINY_TOKENIZER, TINY_TRANSFORMER
from nextscale.cli import main
from refusals import png_claiming, refused


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random transformer folder with its tokenizer/ and class names c0 ... c9 (no reference files)."""
    torch.manual_seed(0)
    vae = nextscale.VQVAE(nextscale.VQVAEConfig(**TINY_TOKENIZER)).eval()
    var = nextscale.VAR(nextscale.VARConfig(**TINY_TRANSFORMER)).eval()
    var.init_weights()
    var.attach_tokenizer(vae)
    var.extra_config = {"class_names": [f"c{i}" for i in range(10)]}
    return nextscale.save_pretrained(var, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if an image is generated or edited: every refusal here must come before that."""
    def refuse(*args, **kwargs):
        raise AssertionError("an image was computed before the bad input was refused")
    monkeypatch.setattr(nextscale, "sample", refuse)
    monkeypatch.setattr(nextscale, "edit", refuse)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------- checkpoints
def test_an_empty_pth_is_one_line(model_dir, tmp_path, capsys, no_work):
    """It was an IndexError traceback (the EOFError of an empty file has no message to quote)."""
    empty = tmp_path / "var.pth"
    empty.touch()
    refused(["sample", "--transformer", empty, "--tokenizer", model_dir / "tokenizer", "--out", tmp_path / "o"],
            capsys, f"{empty} is empty (0 bytes)")
    (tmp_path / "w.safetensors").touch()
    refused(["sample", "--transformer", tmp_path / "w.safetensors", "--tokenizer", model_dir / "tokenizer",
             "--out", tmp_path / "o"], capsys, "w.safetensors is empty (0 bytes)")


def _broken_copy(model_dir, tmp_path, change, file="config.json"):
    import shutil
    folder = tmp_path / "broken"
    shutil.copytree(model_dir, folder)
    path = folder / file
    meta = json.loads(path.read_text())
    meta = change(meta) or meta
    path.write_text(json.dumps(meta))
    return folder, path


def _set(section, key, value):
    def change(meta):
        (meta[section] if section else meta)[key] = value
    return change


def _pop(key):
    def change(meta):
        meta.pop(key)
    return change


@pytest.mark.parametrize("change, file, field", [
    (lambda m: [1, 2], "config.json", "got a list"),
    (_pop("config"), "config.json", 'lacks the "config" object'),
    (_set("config", "depth", "four"), "config.json", "config.depth must be an integer, got 'four'"),
    (_set(None, "class_names", 5), "config.json", "class_names must be a list of strings"),
    (_set(None, "class_names", [f"c{i}" for i in range(11)]), "config.json", "11 names but the model has 10 classes"),
    (_set("config", "num_heads", 0), "config.json", "config.num_heads must be at least 1, got 0"),  # was 0-division
    (_set("config", "embed_dim", 129), "config.json", "not divisible by num_heads"),
    (_set("config", "patch_nums", [4, 3, 2, 1]), "config.json", "config.patch_nums must be strictly increasing"),
    (_set("config", "depth", 10**9), "config.json", "config.depth must be at most 1024"),
    (_set("config", "mlp_ratio", float("nan")), "config.json", "config.mlp_ratio must be a finite number"),
    (_set("config", "depht", 2), "config.json", "unknown config key(s) config.depht"),
    (_set(None, "model_type", "varr"), "config.json", "model_type is 'varr'"),
    (_set(None, "sampling", {"cfg": 1e300}), "config.json", "sampling.cfg must be in [0, 100]"),
    (_set(None, "sampling", {"top_k": 2.5}), "config.json", "sampling.top_k must be an integer >= 0"),
    (_set(None, "trained_steps", -1), "config.json", "trained_steps must be an integer >= 0"),
    (_set("config", "lookup", "l3"), "tokenizer/config.json", "config.lookup must be one of l2, cosine, got 'l3'"),
    (_set("config", "ch_mult", "wide"), "tokenizer/config.json", "config.ch_mult[0] must be an integer"),
    (_set("config", "image_channels", 2), "tokenizer/config.json", "config.image_channels must be one of 1, 3"),
])
def test_a_broken_model_folder_config_is_one_line_naming_file_and_field(change, file, field, model_dir, tmp_path,
                                                                        capsys, no_work):
    """One schema check of config.json (checkpoints.check_model_config) for every loader: a list, a missing
    "config", "depth": "four" or "class_names": 5 were AttributeError / KeyError / TypeError tracebacks."""
    folder, path = _broken_copy(model_dir, tmp_path, change, file)
    refused(["sample", "--model", folder, "--out", tmp_path / "o"], capsys, path, field)


def test_a_config_that_is_not_json_text_is_one_line(model_dir, tmp_path, capsys, no_work):
    folder, path = _broken_copy(model_dir, tmp_path, lambda m: None)
    path.write_bytes(b"\xff\xfe\x00garbage")
    refused(["sample", "--model", folder, "--out", tmp_path / "o"], capsys, path)


# ---------------------------------------------------------------------------------------- numbers and names
@pytest.mark.parametrize("extra, message", [
    (["--cfg", "1e300"], "--cfg must be a number in [0, 100], got 1e+300"),  # was a RuntimeError after sampling
    (["--cfg", "nan"], "--cfg must be a number in [0, 100], got nan"),
    (["--cfg", "-1"], "--cfg must be a number in [0, 100]"),
    (["--top-p", "nan"], "--top-p must be a number in [0, 1], got nan"),
    (["--top-k", "-1"], "--top-k must be a whole number >= 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be a whole number in [1, 4096], got 0"),
    (["--batch-size", "100000"], "--batch-size must be a whole number in [1, 4096]"),
    (["--num-per-class", "0"], "--num-per-class must be a whole number in [1, 1000000], got 0"),
    (["--num-images", "-3"], "--num-images must be a whole number in [1, 1000000], got -3"),
    # torch's "Overflow when unpacking long long" named no option
    (["--seed", "1180591620717411303424"], "--seed must be a whole number in [0, 9223372036854775807]"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 9223372036854775807]"),
    (["--seed", str(2**63 - 2), "--class", "c1", "--num-per-class", "3"],
     "3 images need a seed of at most 9223372036854775805"),
    (["--class", "²"], "--class: unknown class '²'"),  # was "invalid literal for int() with base 10: '²'"
    (["--class", "c11"], "--class: unknown class 'c11': the model's classes are 'c0'"),
    (["--no-grid", "--no-images"], "leave nothing to write"),
])
def test_sample_numbers_and_classes_name_the_option(extra, message, model_dir, tmp_path, capsys, no_work):
    refused(["sample", "--model", model_dir, *extra, "--out", tmp_path / "o"], capsys, message)
    assert not (tmp_path / "o").exists()


def test_a_billion_images_is_refused_up_front(model_dir, tmp_path, capsys, no_work):
    """It made one generator per image and held every image in memory: it died with bad_alloc."""
    refused(["sample", "--model", model_dir, "--num-images", "1000000000", "--out", tmp_path / "o"], capsys,
            "--num-images must be a whole number in [1, 1000000], got 1000000000")
    refused(["sample", "--model", model_dir, "--num-per-class", "200000", "--out", tmp_path / "o"], capsys,
            "--num-per-class 200000 for 10 classes is 2000000 images, more than the 1000000")


def test_patch_nums_of_another_schedule_is_refused(model_dir, tmp_path, capsys, no_work):
    """--patch-nums with a model that records its schedule was ignored (exit 0) for the shipped model."""
    refused(["sample", "--patch-nums", "1,2,3", "--out", tmp_path / "o"], capsys,
            "--patch-nums 1,2,3 does not match the model's scale schedule 1,2,3,4,5,6,8")
    refused(["sample", "--model", model_dir, "--patch-nums", "1,2,3", "--out", tmp_path / "o"], capsys,
            f"{model_dir} is a model of the scale schedule 1,2,3,4, not 1,2,3")


def test_the_python_api_refuses_the_same_values(model_dir):
    var = nextscale.load_var(model_dir)
    with pytest.raises(ValueError, match=r"cfg must be a number in \[0, 100\]"):
        nextscale.sample(var, [1], seed=0, cfg=1e300)
    with pytest.raises(ValueError, match="seed must be a whole number"):
        nextscale.sample(var, [1, 2], seed=2**63 - 1, per_image_seeds=True)
    with pytest.raises(ValueError, match="unknown class '²'"):
        nextscale.sample(var, ["²"], seed=0)


OTHER_DIGITS = ["²", "+²", "½", "１", "١", "𝟙"]  # str.isdigit() or isnumeric() holds; int() reads the last three


@pytest.mark.parametrize("value", OTHER_DIGITS)
def test_class_ids_in_other_digits_are_refused_naming_the_value(value, model_dir, tmp_path, capsys, no_work):
    """'²' passed str.isdigit() and failed int() ("invalid literal for int() with base 10"); '１' and '١' were read
    as class 1. Only the digits 0-9 make a class id, as in the web app; the message says so."""
    refused(["sample", "--model", model_dir, "--class", value, "--out", tmp_path / "o"], capsys,
            f"--class: unknown class {value!r} (class ids are written in the digits 0-9)")
    refused(["sample", "--model", model_dir, "--class", f"c1,{value}", "--out", tmp_path / "o"], capsys,
            f"--class: unknown class {value!r} (class ids are written in the digits 0-9)")
    assert not (tmp_path / "o").exists()


def test_the_python_api_refuses_class_ids_in_other_digits(model_dir):
    var = nextscale.load_var(model_dir)
    for value in OTHER_DIGITS:
        message = re.escape(f"unknown class {value!r} (class ids are written in the digits 0-9)")
        with pytest.raises(ValueError, match=message):
            nextscale.sample(var, [value], seed=0)
        with pytest.raises(ValueError, match=message):
            nextscale.sample(var, f"c1,{value}", seed=0)
    assert nextscale.inference_options.parse_classes(["3", "+4", " 5 "], var) == [3, 4, 5]  # ASCII ids still read


# ---------------------------------------------------------------------------------------- edit
@pytest.mark.parametrize("extra, message", [
    # nothing was regenerated and it exited 0 (the web app refuses it)
    (["--box", "0,0,1,1", "--mode", "outpaint"], "--box 0,0,1,1 with --mode outpaint keeps the whole image"),
    (["--box", "0,0,1"], "--box: a box is four fractions"),
    (["--box", "0,0,0.5,0.5", "--num", "0"], "--num must be a whole number in [1, 100], got 0"),
    (["--box", "0,0,0.5,0.5", "--num", "101"], "--num must be a whole number in [1, 100], got 101"),
    (["--box", "0,0,0.5,0.5", "--seed", "-5"], "--seed must be a whole number"),
    (["--box", "0,0,0.5,0.5", "--cfg", "inf"], "--cfg must be a number in [0, 100], got inf"),
    (["--box", "0,0,0.5,0.5", "--class", "c1,c2"], "give one --class for the edit, got 2"),
])
def test_edit_numbers_and_boxes_name_the_option(extra, message, model_dir, image, tmp_path, capsys, no_work):
    refused(["edit", "--model", model_dir, "--image", image, *extra, "--out", tmp_path / "o"], capsys, message)
    assert not (tmp_path / "o").exists()


def test_edit_refuses_images_too_large_to_decode(model_dir, image, tmp_path, capsys, no_work):
    """A PNG whose header claims 50000x50000 was a DecompressionBombError; the pixel cap is now an option."""
    bomb = png_claiming(tmp_path / "bomb.png", 50000, 50000)
    refused(["edit", "--model", model_dir, "--image", bomb, "--box", "0,0,0.5,0.5", "--out", tmp_path / "o"],
            capsys, str(bomb), "megapixels", "make it smaller first")
    big = png_claiming(tmp_path / "big.png", 5000, 4000)  # 20 megapixels: over the default 16
    refused(["edit", "--model", model_dir, "--image", big, "--box", "0,0,0.5,0.5", "--out", tmp_path / "o"],
            capsys, f"{big} is 5000x4000 = 20.0 megapixels; the limit is 16 megapixels")
    # --max-pixels lowers (or raises) the cap, for the mask too
    refused(["edit", "--model", model_dir, "--image", image, "--box", "0,0,0.5,0.5", "--max-pixels", "0.001",
             "--out", tmp_path / "o"], capsys, f"{image} is 50x40", "the limit is 0.001 megapixels")
    refused(["edit", "--model", model_dir, "--image", image, "--mask", big, "--max-pixels", "1",
             "--out", tmp_path / "o"], capsys, f"{big} is 5000x4000")
    with pytest.raises(SystemExit) as exit_info:
        main(["edit", "--image", str(image), "--box", "0,0,1,1", "--max-pixels", "0"])
    assert exit_info.value.code == 2 and "--max-pixels: must be a number of megapixels" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_running_out_of_memory_is_one_line_saying_what_to_lower(model_dir, tmp_path, capsys, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(nextscale, "sample", out_of_memory)
    refused(["sample", "--model", model_dir, "--out", tmp_path / "o"], capsys, "out of memory",
            "a smaller --batch-size")
    assert not (tmp_path / "o").exists()  # the output folder made by the check is gone again
