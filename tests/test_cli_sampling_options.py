"""`nextscale sample` / `edit` with --guidance, --refiner/--switch-at and --reject-with/--keep (tiny models)."""

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
import nextscale.rejection
from nextscale.cli import main
from nextscale.evaluation.classifier import ClassifierConfig, ImageClassifier


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    """A classifier folder (random weights) of the tiny model's 10 classes."""
    torch.manual_seed(3)
    config = ClassifierConfig(channels=(4, 8), feature_dim=16, image_size=32, in_channels=3,
                              class_names=tuple(f"c{i}" for i in range(10)))
    folder = tmp_path_factory.mktemp("judge") / "classifier"
    ImageClassifier(config).eval().save_pretrained(folder)
    return folder


def npz_images(folder):
    with np.load(folder / "samples.npz") as data:
        return data["arr_0"], data["labels"]


def test_truncated_guidance_over_every_scale_and_the_same_refiner_are_the_default(tiny_args, tiny_pth,
                                                                                  tmp_path):
    common = ["sample", *tiny_args, "--class", "3,7", "--num-per-class", "2", "--seed", "4", "--no-grid",
              "--no-images", "--npz", "--batch-size", "3"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    assert main([*common, "--guidance", "truncated:4", "--refiner", str(tiny_pth["var"]),
                 "--switch-at", "2", "--out", str(tmp_path / "options")]) == 0
    a, b = npz_images(tmp_path / "default")[0], npz_images(tmp_path / "options")[0]
    assert np.array_equal(a, b)
    assert main([*common, "--guidance", "truncated:1", "--out", str(tmp_path / "truncated")]) == 0
    assert not np.array_equal(a, npz_images(tmp_path / "truncated")[0])


def test_rejection_keeps_the_requested_images_as_python_does(tiny_args, judge_folder, tiny_var, tmp_path, capsys):
    out = tmp_path / "kept"
    assert main(["sample", *tiny_args, "--class", "3,7", "--num-per-class", "2", "--seed", "9", "--no-grid",
                 "--npz", "--batch-size", "3", "--reject-with", str(judge_folder), "--keep", "0.5",
                 "--out", str(out)]) == 0
    assert "kept 4 of 8 candidates" in capsys.readouterr().out
    images, labels = npz_images(out)
    assert labels.tolist() == [3, 3, 7, 7] and images.shape == (4, 64, 64, 3)
    assert sorted(p.name for p in (out / "images").glob("*.png")) == \
        ["class003_00000.png", "class003_00001.png", "class007_00000.png", "class007_00001.png"]
    # Candidate j of the command uses seed + j, class by class: one Python call for all the labels.
    python = nextscale.sample(tiny_var, [3, 3, 7, 7], seed=9, per_image_seeds=True, reject_with=str(judge_folder),
                              keep=0.5, batch_size=3)
    expected = nextscale.images.to_uint8_hwc(python.images.float())
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_edit_with_truncated_guidance_over_every_scale_is_the_default(tiny_args, tmp_path):
    image = tmp_path / "input.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image)
    common = ["edit", *tiny_args, "--image", str(image), "--box", "0.25,0.25,0.75,0.75", "--class", "5",
              "--num", "2"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--guidance", "truncated:4", "--out", str(tmp_path / "b")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "input_edited.png")),
                          np.asarray(Image.open(tmp_path / "b" / "input_edited.png")))


@pytest.mark.parametrize("options, message", [
    (["--guidance", "truncated:9"], "--guidance must be 'linear' (the paper's ramp, the default), 'constant', or "
                                    "'truncated:N' with N a whole number in [0, 4]"),
    (["--guidance", "cosine"], "--guidance must be"),
    (["--switch-at", "2"], "--switch-at is the first scale --refiner samples: give --refiner MODEL too"),
    (["--refiner", "REF"], "--refiner needs --switch-at K"),
    (["--refiner", "REF", "--switch-at", "4"], "--switch-at must be a whole number in [1, 3], got 4"),
    (["--refiner", "REF", "--switch-at", "0"], "--switch-at must be a whole number in [1, 3], got 0"),
    (["--keep", "0.5"], "--keep is for rejection sampling: give --reject-with CLASSIFIER too"),
    (["--inception-labels", "map.pbtxt"], "--inception-labels is for rejection sampling"),
    (["--reject-with", "JUDGE", "--keep", "0"], "--keep must be a number in (0, 1], got 0.0"),
    (["--reject-with", "JUDGE", "--keep", "1.5"], "--keep must be a number in (0, 1], got 1.5"),
    (["--reject-with", "/nonexistent/judge"], "--reject-with /nonexistent/judge: no classifier at"),
    (["--reject-with", "JUDGE", "--class", "null"], "--reject-with: rejection sampling keeps the images most likely "
                                                    "to be their class; the null class"),
    (["--reject-with", "REF"], "is not the FID Inception weights"),
])
def test_bad_options_stop_with_one_line(tiny_args, tiny_pth, judge_folder, tmp_path, capsys, options,
                                        message):
    named = {"REF": str(tiny_pth["var"]), "JUDGE": str(judge_folder)}
    options = [named.get(o, o) for o in options]
    if "--class" not in options:
        options += ["--class", "1"]
    assert main(["sample", *tiny_args, *options, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_reject_with_refuses_num_images(tiny_args, judge_folder, tmp_path, capsys):
    assert main(["sample", *tiny_args, "--num-images", "3", "--reject-with", str(judge_folder),
                 "--out", str(tmp_path / "out")]) == 2
    assert "give the classes (--class, --num-per-class), not --num-images" in capsys.readouterr().err


def test_help_explains_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--guidance SCHEDULE", "--refiner MODEL", "--switch-at K", "--reject-with CLASSIFIER",
                   "--keep FRACTION", "--inception-labels FILE"):
        assert option in text
    assert "truncated:N" in text and "candidate j uses seed + j" in text
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    assert "--guidance SCHEDULE" in capsys.readouterr().out


@pytest.mark.slow
def test_reject_with_the_inception_weights_and_its_label_map(tiny_args, tiny_var, tmp_path, capsys):
    """The FID Inception (random weights here, saved as pytorch-fid's file would be) with a label map in the
    TensorFlow graph's format: the CLI keeps what Python keeps."""
    from nextscale.evaluation.inception import FIDInceptionV3
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception.pth"
    torch.save(FIDInceptionV3().state_dict(), weights)
    labels_map = tmp_path / "imagenet_2012_challenge_label_map_proto.pbtxt"
    labels_map.write_text("".join(f'entry {{\n  target_class: {1 + 3 * i}\n  target_class_string: "n{i:08d}"\n}}\n'
                                  for i in range(10)))
    out = tmp_path / "kept"
    assert main(["sample", *tiny_args, "--class", "4", "--num-per-class", "1", "--seed", "2", "--npz",
                 "--no-grid", "--no-images", "--reject-with", str(weights), "--inception-labels", str(labels_map),
                 "--out", str(out)]) == 0
    assert "kept 1 of 2 candidates" in capsys.readouterr().out
    python = nextscale.sample(tiny_var, [4], seed=2, per_image_seeds=True, keep=0.5, batch_size=16,
                              reject_with=nextscale.rejection.class_scorer(str(weights), tiny_var,
                                                                           class_map=labels_map))
    images = npz_images(out)[0]
    assert np.abs(images.astype(int) - nextscale.images.to_uint8_hwc(python.images).astype(int)).max() <= 1
    assert main(["sample", *tiny_args, "--class", "4", "--reject-with", str(weights), "--out",
                 str(tmp_path / "no_map")]) == 2
    assert "give its label map" in capsys.readouterr().err
