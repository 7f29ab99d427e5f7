"""Scoring a model trained on one's own images offline: `nextscale train-classifier --data FOLDER` and
`nextscale eval --classifier FOLDER` (class accuracy, Fréchet distance, KID, their floors), KID's math, and the
refusals of images that do not fit the classifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from nextscale.cli import main as cli_main
from nextscale.evaluation.classifier import ClassifierConfig, ImageClassifier, load_classifier
from nextscale.evaluation.frechet import kernel_inception_distance, mmd2_unbiased
from nextscale.evaluation.image_sets import read_image_set
from nextscale.evaluation.real_data import heldout_mask, image_folder_data, list_labelled_folder, read_labelled_folder
from own_images import CLASSES, make_shapes_folder
from refusals import one_error_line, png_claiming, refused

RESOLUTION = 16


# ----------------------------------------------------------------------------------------------------------------
# KID

def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, one pair at a time."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1.0) ** 3  # noqa: E731
    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_kid_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)), rng.standard_normal((9, 5)) + 0.3
    assert mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-10)
    assert mmd2_unbiased(torch.from_numpy(y), x) == pytest.approx(direct_mmd2(y, x), rel=1e-10)
    # Subsets as large as both (equal) sets: one subset, the full-set estimate, no spread.
    y8 = y[:7]
    kid = kernel_inception_distance(x, y8, num_subsets=50, subset_size=100)
    assert kid["subsets"] == 1 and kid["subset_size"] == 7 and kid["kid_std"] == 0.0
    assert kid["kid"] == pytest.approx(direct_mmd2(x, y8), rel=1e-10)
    # Smaller subsets: the mean of the direct estimates on the same random subsets.
    kid = kernel_inception_distance(x, y, num_subsets=4, subset_size=5, seed=3)
    sub_rng, values = np.random.default_rng(3), []
    for _ in range(4):
        px = np.sort(sub_rng.choice(7, 5, replace=False))
        py = np.sort(sub_rng.choice(9, 5, replace=False))
        values.append(direct_mmd2(x[px], y[py]))
    assert kid["kid"] == pytest.approx(np.mean(values), rel=1e-10)
    assert kid["kid_std"] == pytest.approx(np.std(values), rel=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_unbiased(x[:1], y)


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    same = kernel_inception_distance(a, b, num_subsets=20, subset_size=100)
    shifted = kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=100)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid"] > 10 * max(abs(same["kid"]), same["kid_std"])


# ----------------------------------------------------------------------------------------------------------------
# The general classifier and the held-out rule

def test_image_classifier_takes_rgb_and_other_sizes():
    config = ClassifierConfig(num_classes=3, class_names=("a", "b", "c"), image_size=64, in_channels=3,
                              pixel_mean=(0.5, 0.4, 0.3), pixel_std=(0.2, 0.2, 0.2))
    model = ImageClassifier(config).eval()
    features, logits = model.features_and_logits(torch.rand(2, 3, 64, 64))
    assert features.shape == (2, 128) and logits.shape == (2, 3)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 3)  # gray repeated to RGB
    with pytest.raises(ValueError, match="these are 32x32 images; the classifier takes 64x64"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiple of 2\\^3"):
        ImageClassifier(ClassifierConfig(image_size=36))


def test_heldout_rule_is_per_class_seeded_and_independent_of_file_order():
    files = [f"{c}/{i:03d}.png" for c in CLASSES for i in range(20)] + ["lonely/0.png"]
    labels = np.array([k for k in range(3) for _ in range(20)] + [3])
    mask = heldout_mask(files, labels, 0.1, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(4)] == [2, 2, 2, 0]  # a class of one image keeps it
    order = np.random.default_rng(0).permutation(len(files))
    shuffled = heldout_mask([files[i] for i in order], labels[order], 0.1, seed=0)
    assert sorted(files[i] for i in order[shuffled]) == sorted(np.array(files)[mask])
    assert not np.array_equal(heldout_mask(files, labels, 0.1, seed=1), mask)
    assert np.array_equal(heldout_mask(files, labels, 0.1, seed=0), mask)


def test_heldout_rule_with_seed_0_is_the_training_data_split(tmp_path):
    """The classifier's held-out images are those that `data.eval_fraction` holds out of the tokenizer's and the
    transformer's training data: samples are compared to images that neither the generator nor the classifier saw."""
    import inspect

    from nextscale.data.datasets import ImageFolderDataset, ImageTransform
    if "part" not in inspect.signature(ImageFolderDataset).parameters:
        pytest.skip("this ImageFolderDataset has no held-out split")
    root = make_shapes_folder(tmp_path / "shapes", per_class=13, size=8, seed=0)
    held = ImageFolderDataset(root, ImageTransform(8, train=False), holdout=0.2, part="heldout")
    ours = list_labelled_folder(root, 8, 3)
    mask = heldout_mask(ours.files, ours.labels, 0.2, seed=0)
    assert sorted(np.array(ours.paths)[mask].tolist()) == sorted(held.files)


# ----------------------------------------------------------------------------------------------------------------
# train-classifier on a folder, eval with it

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier trained for a few epochs on 3 classes of 30 synthetic 32x32 images, at 16x16."""
    root = tmp_path_factory.mktemp("own")
    data = make_shapes_folder(root / "shapes", per_class=30, size=32, seed=0)
    out = root / "classifier"
    rc = cli_main(["train-classifier", "--data", str(data), "--resolution", str(RESOLUTION), "--holdout", "0.25",
                   "--epochs", "30", "--batch-size", "32", "--threads", "1", "--out", str(out)])
    assert rc == 0
    # Fresh images of the same classes (another seed): what a perfect generator would draw.
    fresh = read_labelled_folder(make_shapes_folder(root / "fresh", per_class=20, size=32, seed=1), RESOLUTION, 3)
    return {"root": root, "data": data, "out": out, "fresh": fresh}


def test_train_classifier_on_a_folder_learns_and_records_its_data(trained):
    config = json.loads((trained["out"] / "config.json").read_text())
    assert config["class_names"] == list(CLASSES) and config["image_size"] == RESOLUTION
    assert config["in_channels"] == 3 and len(config["pixel_mean"]) == 3
    data = config["data"]
    assert data["kind"] == "image_folder" and data["path"] == str(trained["data"].resolve())
    assert data["holdout"] == 0.25 and data["holdout_seed"] == 0 and data["eval_path"] is None
    assert data["num_train_images"] == 66 and data["num_heldout_images"] == 24 and len(data["heldout_digest"]) == 40
    assert config["metrics"]["heldout_accuracy"] >= 0.6  # chance: 1/3 (24 held-out images)
    assert set(config["metrics"]["per_class_heldout_accuracy"]) == set(CLASSES)
    model = load_classifier(trained["out"])
    assert model.config.class_names == CLASSES and model.config.in_channels == 3


def run_eval(tmp_path, capsys, images, labels, class_names=None, classifier=None, extra=()):
    arrays = {"arr_0": images, "labels": labels}
    if class_names is not None:
        arrays["class_names"] = np.array(class_names)
    np.savez(tmp_path / "samples.npz", **arrays)
    args = ["eval", str(tmp_path / "samples.npz"), "--json", str(tmp_path / "eval.json"), "--floor-draws", "3",
            "--kid-subsets", "20", *extra]
    if classifier is not None:
        args += ["--classifier", str(classifier)]
    rc = cli_main(args)
    captured = capsys.readouterr()
    result = json.loads((tmp_path / "eval.json").read_text()) if rc == 0 else None
    return rc, captured.out, captured.err, result


def test_eval_with_the_classifier_scores_real_images_near_the_floor(trained, tmp_path, capsys):
    fresh = trained["fresh"]
    rc, out, err, result = run_eval(tmp_path, capsys, fresh.images, fresh.labels, list(fresh.classes), trained["out"])
    assert rc == 0, err
    for needed in ("class accuracy", "circle", "Fréchet distance", "floor: real train vs held-out", "ratio to floor",
                   "KID", str(trained["out"].resolve()), str(trained["data"].resolve())):
        assert needed in out, f"no {needed!r} in\n{out}"
    assert "WARNING" not in out
    m = result["classifier"]
    assert m["classifier"]["path"] == str(trained["out"].resolve()) and m["classifier"]["class_names"] == list(CLASSES)
    assert m["real_data"]["num_heldout_images"] == 24 and m["real_data"]["num_train_images"] == 66
    assert m["class_accuracy"] >= 0.6 and set(m["per_class_accuracy"]) == set(CLASSES)  # chance 1/3, 60 images
    # fresh real images are as colourful as the held-out ones; the table prints both
    assert 0.85 < m["colourfulness"] / m["real_colourfulness"] < 1.15 and m["real_colourfulness"] > 20
    assert re.search(r"colourfulness\s+[\d.]+\s+\(\d+% of 24 held-out images' [\d.]+", out), out
    assert m["floor_num_train_images"] == 60 and len(m["frechet_distance_floor_draws"]) == 3
    # Of the floor's order. (Below 1 is expected with so few images: the floor's training images are the
    # classifier's own, whose features it has fitted, while fresh images and held-out ones are both unseen.)
    ratio = m["frechet_distance"] / m["frechet_distance_floor"]
    assert 0.3 < ratio < 2.5, out
    assert m["kid"] < m["kid_floor"] + 4 * max(m["kid_floor_std"], m["kid_std"]), out
    assert "fashion_mnist" not in result


def test_eval_with_the_classifier_scores_noise_far_above_the_floor(trained, tmp_path, capsys):
    fresh = trained["fresh"]
    noise = np.random.default_rng(2).integers(0, 256, fresh.images.shape, dtype=np.uint8)
    rc, out, err, result = run_eval(tmp_path, capsys, noise, fresh.labels, list(fresh.classes), trained["out"])
    assert rc == 0, err
    m = result["classifier"]
    assert m["frechet_distance"] > 4 * m["frechet_distance_floor"]
    grey = fresh.images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    rc, out, err, grey_result = run_eval(tmp_path, capsys, np.repeat(grey.round().astype(np.uint8)[..., None], 3, -1),
                                         fresh.labels, list(fresh.classes), trained["out"])
    assert rc == 0 and grey_result["classifier"]["colourfulness"] == 0, err  # grey samples: colourfulness 0
    assert m["kid"] > m["kid_floor"] + 10 * max(m["kid_floor_std"], 1e-6)
    ratio = float(re.search(r"ratio to floor\s+([\d.]+)x", out).group(1))
    assert ratio > 4


def test_eval_refuses_images_that_do_not_fit_the_classifier(trained, tmp_path, capsys):
    fresh = trained["fresh"]
    big = np.repeat(np.repeat(fresh.images, 2, axis=1), 2, axis=2)  # 32x32
    rc, _, err, _ = run_eval(tmp_path, capsys, big, fresh.labels, list(fresh.classes), trained["out"])
    assert rc == 2 and "these are 32x32 images; the classifier takes 16x16" in err
    assert "nextscale train-classifier --data FOLDER --resolution 32" in err and "Traceback" not in err
    rc, _, err, _ = run_eval(tmp_path, capsys, fresh.images, fresh.labels, ["ball", "box", "cone"], trained["out"])
    assert rc == 2 and "the samples' classes are [ball, box, cone]" in err and "blue_circle, red_circle, red_square" in err
    labels = fresh.labels.copy()
    labels[0] = 7
    rc, _, err, _ = run_eval(tmp_path, capsys, fresh.images, labels, None, trained["out"])
    assert rc == 2 and "class label 7 is outside the classifier's 3 classes" in err
    assert len(err.strip().splitlines()) == 1


def test_eval_without_class_names_says_they_were_not_checked(trained, tmp_path, capsys):
    fresh = trained["fresh"]
    rc, out, err, result = run_eval(tmp_path, capsys, fresh.images, fresh.labels, None, trained["out"])
    assert rc == 0, err
    assert "WARNING" in out and "class names could not be checked" in out
    assert any("class names could not be checked" in w for w in result["classifier"]["warnings"])


def test_the_fashion_mnist_classifier_refuses_own_images(trained, tmp_path, capsys, request):
    """The old defect: own samples scored by the shipped Fashion-MNIST classifier ("class accuracy 0.0000,
    Fréchet distance 567, 4.06x floor") without a warning. Now refused (resolution, class names) or warned."""
    fresh = trained["fresh"]
    rc, _, err, _ = run_eval(tmp_path, capsys, fresh.images, fresh.labels, list(fresh.classes))
    assert rc == 2 and "the classifier takes 32x32" in err and "--classifier" in err
    at32 = read_labelled_folder(trained["root"] / "fresh", 32, 3)
    rc, _, err, _ = run_eval(tmp_path, capsys, at32.images, at32.labels, list(at32.classes))
    assert rc == 2 and "the samples' classes are [blue_circle, red_circle, red_square]" in err and "T-shirt/top" in err
    request.getfixturevalue("fashion_mnist")  # the rest scores them against the real test split
    rc, out, err, result = run_eval(tmp_path, capsys, at32.images, at32.labels, None, extra=["--floor-draws", "1"])
    assert rc == 0, err
    assert "the shipped Fashion-MNIST classifier" in out and "Fashion-MNIST test split" in out
    assert "WARNING" in out and "class names could not be checked" in out and "T-shirt/top" in out


def test_eval_data_folder_and_moved_data(trained, tmp_path, capsys):
    """--eval-data: the held-out images are that folder's; a moved folder is found again with --real-data."""
    held = make_shapes_folder(tmp_path / "held", per_class=6, size=32, seed=5)
    out = tmp_path / "clf"
    assert cli_main(["train-classifier", "--data", str(trained["data"]), "--eval-data", str(held), "--resolution",
                     str(RESOLUTION), "--channels", "1", "--epochs", "3", "--threads", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["in_channels"] == 1 and isinstance(config["pixel_mean"], float)
    assert config["data"]["eval_path"] == str(held.resolve()) and config["data"]["holdout"] is None
    assert config["data"]["num_train_images"] == 90 and config["data"]["num_heldout_images"] == 18
    moved = held.rename(tmp_path / "held_moved")
    fresh = trained["fresh"]
    rc, _, err, _ = run_eval(tmp_path, capsys, fresh.images, fresh.labels, list(fresh.classes), out)
    assert rc == 2 and "does not exist" in err and "--real-data FOLDER" in err
    # --real-data names the training folder; the held-out folder is read from config.json: move it back.
    moved.rename(held)
    rc, stdout, err, result = run_eval(tmp_path, capsys, fresh.images, fresh.labels, list(fresh.classes), out,
                                       extra=["--real-data", str(trained["data"])])
    assert rc == 0, err
    assert result["classifier"]["real_data"]["num_heldout_images"] == 18


@pytest.mark.parametrize("args, message", [
    (["--data", "{flat}"], "one subfolder per class"),
    (["--data", "{missing}"], "does not exist"),
    (["--data", "{flat}", "--resolution", "20"], "divisible by 2^3"),
    (["--resolution", "64"], "Fashion-MNIST preset is 32x32"),
    (["--data", "{flat}", "--holdout", "1.5"], "--holdout"),
])
def test_train_classifier_rejects_bad_input(tmp_path, capsys, args, message):
    from PIL import Image
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / f"{i}.png")
    args = [a.format(flat=flat, missing=tmp_path / "missing") for a in args]
    refused(["train-classifier", *args, "--out", tmp_path / "out"], capsys, message, alone=True)


def test_train_classifier_and_eval_help_print_each_default_once(capsys):
    for command in ("train-classifier", "eval"):
        with pytest.raises(SystemExit):
            cli_main([command, "--help"])
        text = capsys.readouterr().out
        options = re.split(r"\n  (?=-)", text.split("options:", 1)[1].split("examples:")[0])
        assert len(options) > 10
        for option in options:
            assert len(re.findall(r"\(default", option)) <= 1, option
    with pytest.raises(SystemExit):
        cli_main(["train-classifier", "--help"])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    for piece in ("--data FOLDER", "--eval-data FOLDER", "(default 0.1)", "--resolution", "(default 32;",
                  "--channels {1,3}", "(default 3 for --data"):
        assert piece in text, piece


def test_image_set_reads_class_names(tmp_path):
    from PIL import Image
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("class000_00000.png", "class002_00000.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "grid.png")  # as `nextscale sample` writes
    assert read_image_set(tmp_path).class_names is None and len(read_image_set(tmp_path)) == 2
    (folder / "class_names.json").write_text(json.dumps(list(CLASSES)))
    assert read_image_set(tmp_path).class_names == CLASSES
    (folder / "class_names.json").write_text(json.dumps(["only"]))
    with pytest.raises(ValueError, match="class label 2 is outside"):
        read_image_set(tmp_path)
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 1]),
             class_names=np.array(["x", "y"]))
    assert read_image_set(tmp_path / "s.npz").class_names == ("x", "y")


def test_frechet_distance_falls_back_to_the_symmetric_form(monkeypatch):
    """Few images in 128 dimensions (a small folder's held-out images): scipy's sqrtm of the singular product can
    come back with large imaginary parts (it did on noise vs 18 held-out images); the trace then comes from the
    symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2) instead of an error."""
    from nextscale.evaluation import frechet
    rng = np.random.default_rng(3)
    a = np.maximum(rng.standard_normal((60, 128)) * 3, 0)
    b = np.maximum(rng.standard_normal((18, 128)) * 3 + 1, 0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2)
                     - 2 * frechet._trace_sqrt_product_symmetric(s1, s2))
    assert frechet.frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-6)  # sqrtm agrees
    sqrtm = frechet._trace_sqrt_product
    monkeypatch.setattr(frechet, "_trace_sqrt_product", lambda x, y: sqrtm(x, y) + 0.5j * np.eye(len(x)))
    value = frechet.frechet_distance_of_features(a, b)
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-6)
    assert abs(frechet.frechet_distance_of_features(b, b)) < 1e-6 * np.trace(s2)


def test_eval_warns_when_the_held_out_images_changed(tmp_path, capsys):
    data = make_shapes_folder(tmp_path / "shapes", per_class=12, size=16, seed=0)
    out = tmp_path / "clf"
    assert cli_main(["train-classifier", "--data", str(data), "--resolution", "16", "--holdout", "0.5", "--epochs",
                     "1", "--threads", "1", "--out", str(out)]) == 0
    fresh = read_labelled_folder(make_shapes_folder(tmp_path / "fresh", per_class=4, size=16, seed=1), 16, 3)
    rc, stdout, err, result = run_eval(tmp_path, capsys, fresh.images, fresh.labels, list(CLASSES), out)
    assert rc == 0 and "changed since the classifier was trained" not in stdout
    # Same counts, other files: a held-out image may now be one the classifier trained on.
    for path in sorted((data / "blue_circle").iterdir()):
        path.rename(path.with_name("x" + path.name))
    rc, stdout, err, result = run_eval(tmp_path, capsys, fresh.images, fresh.labels, list(CLASSES), out)
    assert rc == 0 and "changed since the classifier was trained (other held-out images)" in stdout


def test_train_classifier_skips_unreadable_images(tmp_path, capsys):
    data = make_shapes_folder(tmp_path / "shapes", per_class=6, size=16, seed=0)
    (data / "red_square" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert cli_main(["train-classifier", "--data", str(data), "--resolution", "16", "--holdout", "0.5",
                         "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "clf")]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable files skipped" in out
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["data"]["num_train_images"] + config["data"]["num_heldout_images"] in (18, 19)


def test_real_images_too_large_to_decode_are_skipped_from_their_header(tmp_path, capsys):
    """The classifier's real images go through images.open_image's pixel cap: a PNG claiming 20 megapixels (under
    Pillow's own cap, so it was decoded whole) or 50000x50000 is skipped with one warning line naming the file and
    the limit, the others are read; held-out images that are all such files make eval a one-line error."""
    data = make_shapes_folder(tmp_path / "shapes", per_class=3, size=16, seed=0)
    big = png_claiming(data / "blue_circle" / "big.png", 5000, 4000)
    bomb = png_claiming(data / "red_square" / "bomb.png", 50000, 50000)
    skipped = []
    with pytest.warns(UserWarning) as record:
        images, labels = list_labelled_folder(data, RESOLUTION, 3).decode(skipped=skipped)
    assert images.shape == (9, RESOLUTION, RESOLUTION, 3) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert skipped == [str(big), str(bomb)]
    messages = [str(w.message) for w in record]
    assert messages[0] == (f"skipping unreadable image {big} (is 5000x4000 = 20.0 megapixels; the limit is 16 "
                           f"megapixels: make it smaller first)")
    assert messages[1].startswith(f"skipping unreadable image {bomb} (claims more than")
    assert messages[1].endswith("the limit is 16 megapixels: make it smaller first)") and len(messages) == 2

    held = tmp_path / "held"
    for name in CLASSES:
        png_claiming(held / name / "big.png", 5000, 4000)
    config = ClassifierConfig(num_classes=3, class_names=CLASSES, image_size=RESOLUTION, in_channels=3,
                              pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25),
                              data=image_folder_data(data, eval_path=held, resolution=RESOLUTION, channels=3))
    ImageClassifier(config).save_pretrained(tmp_path / "clf")
    with pytest.warns(UserWarning, match="the limit is 16 megapixels"):
        rc, _, err, _ = run_eval(tmp_path, capsys, images, labels, list(CLASSES), tmp_path / "clf")
    assert rc == 2
    one_error_line(err, f"no readable image among the 3 of {held} asked for", alone=True)
