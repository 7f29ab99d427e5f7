"""Evaluation: metric math on known cases, the shipped Fashion-MNIST classifier, the FID Inception network's
layout, ADM .npz files, and `nextscale eval` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.cli import main as cli_main
from nextscale.evaluation import (feature_statistics, frechet_distance, frechet_distance_of_features,
                                  inception_score, knn_radii, load_classifier, precision_recall, read_image_set,
                                  read_npz, write_npz)
from nextscale.evaluation.fmnist_classifier import shipped_classifier_path
from nextscale.evaluation.inception import FIDInceptionV3, avg_pool_same, load_inception


def random_spd(rng, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance

def test_frechet_distance_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).standard_normal((500, 16))
    assert abs(frechet_distance_of_features(feats, feats)) < 1e-8


def test_frechet_distance_of_shifted_gaussians_is_squared_shift():
    rng = np.random.default_rng(1)
    sigma = random_spd(rng, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-8)


def test_frechet_distance_closed_forms_with_different_covariances():
    # I vs [[2, 1], [1, 2]] (eigenvalues 3 and 1): Tr(I) + Tr(S) - 2 Tr(S^1/2) = 2 + 4 - 2 (sqrt 3 + 1).
    value = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[2.0, 1.0], [1.0, 2.0]]))
    assert value == pytest.approx(4 - 2 * math.sqrt(3), rel=1e-10)
    # Diagonal covariances: sum of (sqrt(a) - sqrt(b))^2 plus the squared shift.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu = np.array([1.0, -2.0, 0.5])
    expected = float(mu @ mu + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert frechet_distance(mu, np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_of_non_commuting_covariances_matches_symmetric_form():
    # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2): an independent way through symmetric eigen-decompositions.
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 10), random_spd(rng, 10)
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    expected = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert frechet_distance(np.zeros(10), s1, np.zeros(10), s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_samples_and_singular_covariances():
    rng = np.random.default_rng(3)
    shift = np.full(4, 0.5)
    x, y = rng.standard_normal((20000, 4)), rng.standard_normal((20000, 4)) + shift
    assert frechet_distance_of_features(x, y) == pytest.approx(1.0, abs=0.03)  # ||shift||^2 = 1
    few = rng.standard_normal((10, 32))  # fewer samples than dimensions: singular covariances
    value = frechet_distance_of_features(few, few + 1.0)
    assert math.isfinite(value) and value == pytest.approx(32.0, abs=1e-3)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 5)))


# ----------------------------------------------------------------------------------------------------------------
# Precision / recall and Inception Score

def test_knn_radii_on_a_line():
    points = np.array([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(points, k=1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(points, k=2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_precision_recall_identical_disjoint_and_half_covered():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((300, 8))
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # Real data in two far clusters, generated data covering only one: every sample is realistic (precision 1)
    # but half the real data is missed (recall 0.5).
    # (2-d, so that k-NN balls of a few hundred points cover their cluster almost entirely.)
    two_clusters = rng.standard_normal((1000, 2))
    two_clusters[500:] += 100.0
    one_cluster = rng.standard_normal((500, 2))
    precision, recall = precision_recall(two_clusters, one_cluster, k=3)
    assert precision > 0.95 and 0.45 <= recall <= 0.5


def test_inception_score_known_cases():
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0), abs=1e-9)
    confident = 50.0 * torch.eye(10).repeat(10, 1)  # each split of 10 holds every class once, with certainty
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
    all_same = 50.0 * torch.eye(10)[torch.zeros(100, dtype=torch.long)]
    assert inception_score(all_same, splits=5)[0] == pytest.approx(1.0, abs=1e-6)
    # One certain prediction and one 50/50: p(y) = (3/4, 1/4), KL = log(4/3) and (log(2/3) + log 2) / 2.
    mixed = torch.log(torch.tensor([[1.0, 1e-30], [0.5, 0.5]]))
    expected = math.exp((math.log(4 / 3) + 0.5 * (math.log(2 / 3) + math.log(2))) / 2)
    assert inception_score(mixed, splits=1)[0] == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The shipped Fashion-MNIST classifier

def test_shipped_classifier_is_small_and_classifies_test_images(request):
    folder = shipped_classifier_path()
    assert (folder / "model.safetensors").stat().st_size < 2 * 1024 * 1024
    import nextscale
    model = nextscale.load_classifier()
    assert model.config.metrics["test_accuracy"] >= 0.9
    images, labels = request.getfixturevalue("fashion_mnist")
    x = torch.from_numpy(images[:200].copy()).float().div(255).unsqueeze(1)
    with torch.no_grad():
        features, logits = model.features_and_logits(x)
        logits_rgb = model(x.repeat(1, 3, 1, 1))
    assert features.shape == (200, 128) and (features >= 0).all()
    assert (logits.argmax(1).numpy() == labels[:200]).mean() >= 0.9
    assert torch.allclose(logits, logits_rgb, atol=1e-5)  # gray repeated to RGB is the same image
    with pytest.raises(ValueError, match="32x32"):
        model(torch.zeros(1, 1, 28, 28))


def test_load_classifier_reports_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_classifier(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# The FID Inception network: the layout of pytorch-fid's pt_inception-2015-12-05-6726825d.pth

def _convs(prefix, rows):
    return [(f"{prefix}.{name}", cin, cout, kh, kw) for name, cin, cout, kh, kw in rows]


def expected_inception_convs() -> list[tuple[str, int, int, int, int]]:
    """(name, in, out, kh, kw) of every conv+BN of the FID Inception-v3 (torchvision naming, 1008 classes)."""
    convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
             ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs += _convs(name, [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1),
                               ("branch5x5_2", 48, 64, 5, 5), ("branch3x3dbl_1", cin, 64, 1, 1),
                               ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
                               ("branch_pool", cin, pool, 1, 1)])
    convs += _convs("Mixed_6a", [("branch3x3", 288, 384, 3, 3), ("branch3x3dbl_1", 288, 64, 1, 1),
                                 ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)])
    for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs += _convs(name, [("branch1x1", 768, 192, 1, 1), ("branch7x7_1", 768, c, 1, 1),
                               ("branch7x7_2", c, c, 1, 7), ("branch7x7_3", c, 192, 7, 1),
                               ("branch7x7dbl_1", 768, c, 1, 1), ("branch7x7dbl_2", c, c, 7, 1),
                               ("branch7x7dbl_3", c, c, 1, 7), ("branch7x7dbl_4", c, c, 7, 1),
                               ("branch7x7dbl_5", c, 192, 1, 7), ("branch_pool", 768, 192, 1, 1)])
    convs += _convs("Mixed_7a", [("branch3x3_1", 768, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
                                 ("branch7x7x3_1", 768, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
                                 ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)])
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs += _convs(name, [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
                               ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
                               ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
                               ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
                               ("branch_pool", cin, 192, 1, 1)])
    return convs


def synthesized_inception_state(seed: int = 0, with_counters: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, cin, cout, kh, kw in expected_inception_convs():
        state[f"{name}.conv.weight"] = torch.randn(cout, cin, kh, kw, generator=gen) * (2.0 / (cin * kh * kw)) ** 0.5
        state[f"{name}.bn.weight"] = torch.ones(cout)
        state[f"{name}.bn.bias"] = torch.zeros(cout)
        state[f"{name}.bn.running_mean"] = torch.zeros(cout)
        state[f"{name}.bn.running_var"] = torch.ones(cout)
        if with_counters:
            state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=gen) * 0.01
    state["fc.bias"] = torch.randn(1008, generator=gen) * 0.01
    return state


def test_inception_has_the_fid_weight_layout(tmp_path):
    state = synthesized_inception_state()
    # Inception-v3 without the auxiliary head, 1008 classes: 23,850,960 parameters (torchvision's 27,161,264
    # with the head and 1000 classes, less the head's 3,326,696, plus 8 x 2049 for the extra classes).
    assert sum(v.numel() for k, v in state.items() if "running" not in k) == 23_850_960
    model = FIDInceptionV3()
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    path = tmp_path / "pt_inception.pth"
    torch.save(state, path)
    loaded = load_inception(path)  # strict: every key and shape matches
    assert torch.equal(loaded.Mixed_6e.branch7x7dbl_5.conv.weight, state["Mixed_6e.branch7x7dbl_5.conv.weight"])
    torch.save(synthesized_inception_state(with_counters=True), path)  # newer files carry BN step counters
    load_inception(path)

    broken = dict(state)
    del broken["Mixed_7c.branch_pool.conv.weight"]
    broken["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(broken, path)
    with pytest.raises(ValueError, match="missing: Mixed_7c.branch_pool.conv.weight.*wrong shape: fc.weight"):
        load_inception(path)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        load_inception(tmp_path / "absent.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_inception(tmp_path / "garbage.pth")


def test_inception_forward_shapes_and_tensorflow_pooling():
    model = FIDInceptionV3().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32))  # any size: resized to 299x299
    assert out["pool"].shape == (1, 2048) and out["logits"].shape == (1, 1008)
    assert torch.allclose(out["logits"] - out["logits_unbiased"], model.fc.bias[None], atol=1e-5)
    # TensorFlow's padded average pool averages valid pixels only: a constant map stays constant at the border.
    assert torch.allclose(avg_pool_same(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))
    assert model.Mixed_7b.pool == "avg" and model.Mixed_7c.pool == "max"


# ----------------------------------------------------------------------------------------------------------------
# Image sets and ADM .npz files

def test_npz_round_trip_and_labels(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (6, 8, 8), dtype=np.uint8)  # grayscale
    path = write_npz(tmp_path / "s.npz", images, labels=np.arange(6), mu=np.zeros(3), sigma=np.eye(3))
    s = read_npz(path)
    assert s.images.shape == (6, 8, 8, 3) and np.array_equal(s.images[..., 2], images)
    assert s.labels.tolist() == list(range(6)) and s.mu.shape == (3,) and s.sigma.shape == (3, 3)
    np.savez(tmp_path / "adm.npz", np.repeat(images[..., None], 3, -1), np.arange(6) % 2)  # arr_0, arr_1
    assert read_npz(tmp_path / "adm.npz").labels.tolist() == [0, 1, 0, 1, 0, 1]
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
    assert read_npz(tmp_path / "stats.npz").images is None
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        read_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "badlabels.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), labels=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="one integer class per image"):
        read_npz(tmp_path / "badlabels.npz")


def test_image_folder_labels_from_names(tmp_path):
    for name in ("class003_00000.png", "class001_00000.png", "class001_00001.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / name)
    s = read_image_set(tmp_path)
    assert s.images.shape == (3, 8, 8, 3) and s.labels.tolist() == [1, 1, 3]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "other.png")
    with pytest.raises(ValueError, match="some file names carry a class"):
        read_image_set(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# nextscale eval

def write_test_images(folder, images, labels):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (im, c) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(folder / f"class{c:03d}_{i:05d}.png")


@pytest.mark.slow
def test_eval_command_on_real_test_images(tmp_path, capsys, fashion_mnist):
    images, labels = fashion_mnist
    write_test_images(tmp_path / "images", images[:40], labels[:40])
    rc = cli_main(["eval", str(tmp_path), "--json", str(tmp_path / "eval.json"), "--save-npz",
                   str(tmp_path / "saved.npz")])
    out = capsys.readouterr().out
    assert rc == 0 and "class accuracy" in out and "floor: real train vs held-out" in out and "KID" in out
    result = json.loads((tmp_path / "eval.json").read_text())["fashion_mnist"]
    assert result["num_images"] == 40 and result["class_accuracy"] >= 0.85
    assert result["floor_num_train_images"] == 40 and result["num_heldout_images"] == 10000
    draws = result["frechet_distance_floor_draws"]
    assert len(draws) == 5 and len(set(draws)) == 5
    assert result["frechet_distance_floor"] == pytest.approx(np.mean(draws))
    # Real test images are as real as real training images: both distances are of the same size.
    assert 0 < result["frechet_distance"] < 2 * result["frechet_distance_floor"]
    saved = read_npz(tmp_path / "saved.npz")
    assert saved.images.shape == (40, 32, 32, 3) and saved.labels.tolist() == sorted(labels[:40].tolist())
    # Generated-looking noise is far from the data: a distance many times the floor.
    noise = np.random.default_rng(6).integers(0, 256, (40, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", arr_0=noise, labels=labels[:40])
    assert cli_main(["eval", str(tmp_path / "noise.npz"), "--json", str(tmp_path / "noise.json"),
                     "--floor-draws", "1"]) == 0
    noisy = json.loads((tmp_path / "noise.json").read_text())["fashion_mnist"]
    assert noisy["frechet_distance"] > 5 * noisy["frechet_distance_floor"]


@pytest.mark.parametrize("setup, message", [
    ("empty", "holds no images"),
    ("float", "uint8"),
    ("big", "32x32"),
    ("weights", "file not found"),
    ("reference_alone", "--inception-weights"),
    ("label", "outside"),
])
def test_eval_command_rejects_bad_input(tmp_path, capsys, setup, message, request):
    args = ["eval"]
    if setup == "empty":
        (tmp_path / "empty").mkdir()
        args.append(str(tmp_path / "empty"))
    elif setup == "float":
        np.savez(tmp_path / "f.npz", arr_0=np.zeros((4, 32, 32, 3), np.float32))
        args.append(str(tmp_path / "f.npz"))
    elif setup == "big":
        np.savez(tmp_path / "b.npz", arr_0=np.zeros((4, 64, 64, 3), np.uint8))
        args.append(str(tmp_path / "b.npz"))
    elif setup == "weights":
        np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8))
        args += [str(tmp_path / "s.npz"), "--inception-weights", str(tmp_path / "missing.pth")]
    elif setup == "reference_alone":
        np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8))
        args += [str(tmp_path / "s.npz"), "--reference", str(tmp_path / "s.npz")]
    elif setup == "label":
        request.getfixturevalue("fashion_mnist")
        np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8), labels=np.array([0, 1, 2, 42]))
        args.append(str(tmp_path / "s.npz"))
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "nextscale eval: error:" in err and message in err and "Traceback" not in err


class TinyFeatureNet(torch.nn.Module):
    """Stands in for Inception in the metric plumbing: 8-d 'pool' features and 5 'logits' of the mean colour."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 8)
        self.fc = torch.nn.Linear(8, 5, bias=False)

    def forward(self, images_BCHW):
        pool = torch.tanh(self.proj(images_BCHW.mean(dim=(2, 3)))) + images_BCHW.std(dim=(1, 2, 3))[:, None]
        return {"pool": pool, "logits_unbiased": 10 * self.fc(pool)}


def test_inception_metrics_with_reference_images_or_statistics():
    from nextscale.evaluation.evaluate import inception_metrics
    from nextscale.evaluation.image_sets import ImageSet
    torch.manual_seed(0)
    net = TinyFeatureNet().eval()
    rng = np.random.default_rng(8)
    samples = ImageSet(rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8))
    other = ImageSet(rng.integers(0, 128, (50, 8, 8, 3), dtype=np.uint8))  # darker images: other features
    alone, stats = inception_metrics(samples, net, "cpu", None, batch_size=7, is_splits=4)
    assert set(alone) == {"inception_score", "inception_score_std", "is_splits", "colourfulness"}
    assert stats["mu"].shape == (8,) and alone["colourfulness"] > 10  # random colour noise
    same, _ = inception_metrics(samples, net, "cpu", samples, batch_size=7)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
    assert same["fid_reference_statistics"] == "computed" and same["precision_recall_k"] == 3
    far, _ = inception_metrics(samples, net, "cpu", other, batch_size=7)
    assert far["fid"] > 0.1 and far["real_colourfulness"] < far["colourfulness"]  # the darker set is less colourful
    # An ADM-style reference: its own mu/sigma win over its images' features for FID; images still give P/R.
    reference = ImageSet(other.images, mu=stats["mu"], sigma=stats["sigma"])
    adm, _ = inception_metrics(samples, net, "cpu", reference, batch_size=7)
    assert abs(adm["fid"]) < 1e-6 and adm["fid_reference_statistics"] == "from the .npz"
    assert adm["precision"] == far["precision"] and adm["recall"] == far["recall"]
    stats_only, _ = inception_metrics(samples, net, "cpu", ImageSet(None, mu=stats["mu"], sigma=stats["sigma"]))
    assert abs(stats_only["fid"]) < 1e-6 and "precision" not in stats_only
    with pytest.raises(ValueError, match="dimensions"):
        inception_metrics(samples, net, "cpu", ImageSet(None, mu=np.zeros(3), sigma=np.eye(3)))


@pytest.mark.slow
def test_eval_command_inception_metrics(tmp_path, capsys):
    """The command with (random) FID Inception weights: a set against itself. One FID only, on few images:
    each 299x299 forward pass costs ~6 GFLOP, and the 2048x2048 matrix square root tens of seconds on a busy CPU."""
    torch.save(synthesized_inception_state(seed=1), tmp_path / "inception.pth")
    images = np.random.default_rng(7).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    args = ["eval", str(tmp_path / "samples.npz"), "--no-classifier", "--inception-weights",
            str(tmp_path / "inception.pth"), "--reference", str(tmp_path / "samples.npz"), "--is-splits", "2",
            "--batch-size", "5", "--json", str(tmp_path / "a.json"), "--save-npz", str(tmp_path / "saved.npz")]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "Inception Score" in out and "precision / recall" in out
    assert "(100% of the reference images'" in out and "pass --reference" not in out  # the set against itself
    result = json.loads((tmp_path / "a.json").read_text())["inception"]
    assert result["colourfulness"] == pytest.approx(result["real_colourfulness"]) and result["colourfulness"] > 10
    assert abs(result["fid"]) < 1e-3 and result["precision"] == 1.0 and result["recall"] == 1.0
    assert 1.0 <= result["inception_score"] <= 1008 and result["is_splits"] == 2
    saved = read_npz(tmp_path / "saved.npz")  # our images as a reference batch, with their statistics
    assert np.array_equal(saved.images, images) and saved.mu.shape == (2048,) and saved.sigma.shape == (2048, 2048)
