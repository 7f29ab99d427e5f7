"""Python, the command line and the web app agree: class names, sampling defaults, seeds, outputs, --help."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
from nextscale.cli import COMMANDS, main
from nextscale.editing import inpaint_keep_mask
from nextscale.images import load_images, make_grid, to_model_input, to_uint8_hwc

PUBLISHED = {"cfg": 1.5, "top_k": 900, "top_p": 0.96}


@pytest.fixture(scope="module")
def shipped():
    return nextscale.load_pretrained("fashion-mnist")


@pytest.fixture
def used_settings(monkeypatch):
    """The (cfg, top_k, top_p) every sample / edit really ran with, whoever called it."""
    import nextscale.editing
    import nextscale.sampling
    seen = []
    real = nextscale.sampling.generate_tokens

    def recording(var, labels_B, generator, cfg=1.5, top_k=0, top_p=0.0, *args, **kwargs):
        seen.append((cfg, top_k, top_p))
        return real(var, labels_B, generator, cfg, top_k, top_p, *args, **kwargs)

    monkeypatch.setattr(nextscale.sampling, "generate_tokens", recording)
    monkeypatch.setattr(nextscale.editing, "generate_tokens", recording)
    return seen


def test_class_names_ids_and_mixed_labels_in_sample(shipped):
    by_id = nextscale.sample(shipped, [3, 4, 9], seed=1)
    by_name = nextscale.sample(shipped, ["Dress", "coat", "ANKLE BOOT"], seed=1)
    mixed = nextscale.sample(shipped, ["dress", 4, "9"], seed=1)
    assert by_name.labels.tolist() == mixed.labels.tolist() == [3, 4, 9]
    for other in (by_name, mixed):
        assert all(torch.equal(a, b) for a, b in zip(by_id.tokens, other.tokens))
    assert nextscale.sample(shipped, "Sandal", seed=0).labels.tolist() == [5]
    assert nextscale.sample(shipped, ["null"], seed=0).labels.tolist() == [10]  # unconditional


def test_an_unknown_class_name_lists_the_known_ones(shipped):
    with pytest.raises(ValueError, match=r"unknown class 'Dres'.*'T-shirt/top'.*'Ankle boot'"):
        nextscale.sample(shipped, ["Dres"], seed=0)
    with pytest.raises(ValueError, match="unknown class 'Sock'.*'Sneaker'"):
        nextscale.edit(shipped, torch.zeros(1, 3, 32, 32), inpaint_keep_mask((0, 0, 0.5, 1), 8), labels="Sock")
    with pytest.raises(ValueError, match="class id 11 is outside"):
        nextscale.sample(shipped, ["11"], seed=0)


def test_class_names_in_edit(shipped):
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    keep = inpaint_keep_mask((0.0, 0.0, 0.5, 1.0), 8)
    by_id = nextscale.edit(shipped, image, keep, labels=[3, 8], seed=2)
    by_name = nextscale.edit(shipped, image, keep, labels=["dress", "Bag"], seed=2)
    assert by_name.labels.tolist() == [3, 8]
    assert torch.equal(by_id.images, by_name.images)
    one = nextscale.edit(shipped, image, keep, labels="Dress", seed=2)
    assert one.labels.tolist() == [3, 3]


def test_python_cli_and_web_defaults_are_the_models_recommendation(shipped, used_settings, tmp_path):
    from nextscale.serve import ModelRunner
    recommended = shipped.extra_config["sampling"]
    expected = (recommended["cfg"], recommended["top_k"], recommended["top_p"])
    assert nextscale.recommended_sampling(shipped) == recommended

    nextscale.sample(shipped, [3], seed=0)
    nextscale.edit(shipped, torch.zeros(1, 3, 32, 32), inpaint_keep_mask((0, 0, 0.5, 1), 8), seed=0)
    assert main(["sample", "--class", "3", "--num-per-class", "1", "--no-grid", "--out", str(tmp_path / "s")]) == 0
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--box", "0,0,0.5,1", "--out", str(tmp_path / "e")]) == 0
    assert used_settings == [expected] * 4  # Python sample, Python edit, CLI sample, CLI edit

    runner = ModelRunner(shipped, "fashion-mnist", torch.device("cpu"))
    web = runner.info()["defaults"]
    assert (web["cfg"], web["top_k"], web["top_p"]) == expected
    settings = runner.settings({})
    assert (settings["cfg"], settings["top_k"], settings["top_p"]) == expected
    # An explicit value still wins.
    nextscale.sample(shipped, [3], seed=0, cfg=1.0)
    assert used_settings[-1] == (1.0, recommended["top_k"], recommended["top_p"])


def test_without_a_recommendation_python_and_cli_use_the_published_settings(tiny_var, tiny_args, used_settings,
                                                                             tmp_path):
    assert not getattr(tiny_var, "extra_config", {}).get("sampling")
    nextscale.sample(tiny_var, [3], seed=0)
    assert main(["sample", *tiny_args, "--class", "3", "--num-per-class", "1", "--no-grid",
                 "--out", str(tmp_path)]) == 0
    assert used_settings == [tuple(PUBLISHED.values())] * 2
    assert nextscale.recommended_sampling(tiny_var) == PUBLISHED


def test_cli_images_are_python_per_image_seed_images(shipped, tmp_path):
    assert main(["sample", "--seed", "5", "--class", "Dress", "--num-per-class", "2", "--npz", "--batch-size", "1",
                 "--out", str(tmp_path)]) == 0
    cli = np.load(tmp_path / "samples.npz", allow_pickle=False)["arr_0"]
    png = np.asarray(Image.open(tmp_path / "images" / "class003_00001.png").convert("RGB"))

    python = nextscale.sample(shipped, ["Dress"] * 2, seed=5, per_image_seeds=True)
    assert np.array_equal(to_uint8_hwc(python.images), cli)
    assert np.array_equal(png, cli[1])
    # Image i alone: the generator seeded with seed + i, whatever the batch size or number of images.
    second = nextscale.sample(shipped, ["Dress"], seed=6, per_image_seeds=True)
    assert np.array_equal(to_uint8_hwc(second.images)[0], cli[1])
    split = nextscale.sample(shipped, ["Dress"] * 2, seed=5, per_image_seeds=True, batch_size=1)
    assert all(torch.equal(a, b) for a, b in zip(split.tokens, python.tokens))
    # `seed=` alone stays the reference protocol: one generator drawn across the batch, other images.
    shared = nextscale.sample(shipped, ["Dress"] * 2, seed=5)
    assert not torch.equal(shared.tokens[-1], python.tokens[-1])


def test_cli_random_classes_are_python_per_image_seed_samples(shipped, tmp_path):
    assert main(["sample", "--seed", "11", "--num-images", "3", "--npz", "--no-images", "--no-grid",
                 "--out", str(tmp_path)]) == 0
    with np.load(tmp_path / "samples.npz", allow_pickle=False) as data:
        cli, labels = data["arr_0"], data["labels"]
    python = nextscale.sample(shipped, None, seed=11, per_image_seeds=True, num_samples=3)
    assert python.labels.tolist() == labels.tolist()
    assert np.array_equal(to_uint8_hwc(python.images), cli)


def test_cli_edit_variations_are_python_per_image_seed_edits(shipped, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["edit", "--image", str(tmp_path / "in.png"), "--box", "0,0,0.5,1", "--class", "Bag", "--num", "2",
                 "--seed", "7", "--save-tokens", "--out", str(tmp_path / "e")]) == 0
    keep = inpaint_keep_mask((0, 0, 0.5, 1), 8)
    image = to_model_input(load_images(tmp_path / "in.png"), 32, 3)
    python = nextscale.edit(shipped, image.expand(2, -1, -1, -1), keep, labels="bag", seed=7, per_image_seeds=True)
    tokens = np.load(tmp_path / "e" / "in_tokens.npz")
    for k, t in enumerate(python.tokens):
        assert np.array_equal(tokens[f"scale_{k}"], t.numpy()), f"scale {k}"
    edited = np.asarray(Image.open(tmp_path / "e" / "in_edited.png").convert("RGB"))
    assert np.array_equal(edited, make_grid(python.images, ncols=2))


def test_per_image_seeds_needs_a_seed_and_no_generator(tiny_var):
    with pytest.raises(ValueError, match="needs a seed"):
        nextscale.sample(tiny_var, [1], per_image_seeds=True)
    with pytest.raises(ValueError, match="do not pass generator"):
        nextscale.sample(tiny_var, [1], seed=0, per_image_seeds=True, generator=torch.Generator())


def test_sample_writes_the_models_class_names(tiny_args, tmp_path):
    assert main(["sample", "--class", "Trouser,bag", "--num-per-class", "1", "--npz",
                 "--out", str(tmp_path / "a")]) == 0
    names = nextscale.load_pretrained("fashion-mnist").extra_config["class_names"]
    with np.load(tmp_path / "a" / "samples.npz", allow_pickle=False) as data:
        assert data["class_names"].dtype.kind == "U" and data["class_names"].tolist() == names
        assert data["labels"].tolist() == [1, 8]
    assert json.loads((tmp_path / "a" / "images" / "class_names.json").read_text()) == names
    # A model without class names writes none.
    assert main(["sample", *tiny_args, "--class", "1", "--num-per-class", "1", "--npz",
                 "--out", str(tmp_path / "b")]) == 0
    assert "class_names" not in np.load(tmp_path / "b" / "samples.npz", allow_pickle=False).files
    assert not (tmp_path / "b" / "images" / "class_names.json").exists()


def test_cli_unknown_class_name_is_one_line(capsys, tmp_path):
    assert main(["sample", "--class", "Dres", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'Dres'" in err and "'Dress'" in err and "Traceback" not in err


def test_web_app_does_not_import_the_command_line():
    code = ("import sys, nextscale.serve, nextscale.demo; "
            "print([m for m in sys.modules if m.startswith('nextscale.commands')])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_python_m_nextscale_is_the_cli():
    result = subprocess.run([sys.executable, "-m", "nextscale", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: nextscale" in result.stdout, result.stderr
    missing = subprocess.run([sys.executable, "-m", "nextscale", "sample", "--transformer", "/nonexistent/var.pth"],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def option_helps(text: str) -> list[str]:
    """The help text of each option of a --help page, lines joined."""
    entries, current = [], None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = [line]
            entries.append(current)
        elif current is not None and line.startswith("   "):
            current.append(line)
        else:
            current = None
    return [" ".join(part.strip() for part in entry) for entry in entries]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_prints_each_default_once(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    helps = option_helps(capsys.readouterr().out)
    assert helps, f"no options found in `nextscale {command} --help`"
    twice = [h for h in helps if len(re.findall(r"\(default\b", h, re.I)) > 1]
    assert twice == [], f"`nextscale {command} --help` shows a default twice: {twice}"
