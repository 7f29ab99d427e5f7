"""benchmarks/scaling.py: the fits recover known exponents, and a tiny sweep records every size and resumes.

The sweep runs on a tiny random tokenizer (8x8 images, 4 scales, 64 codes) and an image folder of 10 classes;
its Fashion-MNIST quality metrics (`nextscale eval`, which needs the Fashion-MNIST classifier's real data)
are replaced by a stand-in that counts its calls, while the sampling is the real one.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import nextscale

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import fmnist_var_vs_ar  # noqa: E402
import scaling  # noqa: E402

TOKENIZER = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4))


# ============================================================================ fits
def test_pure_power_law_fit_recovers_exponent_and_scale():
    N = np.array([8e4, 4e5, 1.3e6, 2.9e6, 5.5e6, 2e7])
    fit = scaling.fit_loglog(N, (2.0e-3 * N) ** -0.23)
    assert fit["b"] == pytest.approx(-0.23, abs=1e-9) and fit["a"] == pytest.approx(2.0e-3, rel=1e-6)
    assert fit["pearson_r"] == pytest.approx(-1.0, abs=1e-9)
    noisy = (2.0e-3 * N) ** -0.23 * np.exp(np.random.default_rng(0).normal(0, 0.01, len(N)))
    fit = scaling.fit_loglog(N, noisy)
    assert fit["b"] == pytest.approx(-0.23, abs=0.02) and -1 < fit["pearson_r"] < -0.98


@pytest.mark.parametrize("log_a, b, c", [(np.log(2.0e-3), -0.23, 1.5), (np.log(3e-4), -0.1, 0.7),
                                         (np.log(1e-9), -0.05, 3.0)])
def test_power_law_with_offset_fit_recovers_exponent_and_floor(log_a, b, c):
    N = np.exp(np.linspace(np.log(2e4), np.log(1e7), 7))
    fit = scaling.fit_power_law_offset(N, scaling.power_law(N, log_a, b, c))
    assert fit["b"] == pytest.approx(b, rel=1e-3) and fit["c"] == pytest.approx(c, rel=1e-3)
    assert fit["log_a"] == pytest.approx(log_a, abs=1e-2) and fit["pearson_r"] == pytest.approx(-1, abs=1e-6)


def test_compute_frontier_is_the_lowest_loss_reached_with_at_most_that_compute():
    c = np.exp(np.linspace(0, 10, 50))
    small = (c, 5 - 0.1 * np.log(c))  # cheap and fast at first, then slow
    big = (c * 10, 6 - 0.3 * np.log(c))  # costs 10x per step, learns faster
    short = (c[:20] * 3, 4.9 - 0.1 * np.log(c[:20]))  # stops early: its last loss holds on, but is not "live"
    flops, loss, who, live = scaling.frontier({"small": small, "big": big, "short": short}, points=40)
    assert np.all(np.diff(loss) <= 1e-12) and who[0] == "small" and who[-1] == "big"
    # The curves are lines in log compute and decreasing, so the lowest loss with at most f FLOPs is each
    # curve's value at f (its last value once it has stopped).
    lines = {"small": (1, 5, 0.1, small), "big": (10, 6, 0.3, big), "short": (3, 4.9, 0.1, short)}
    for f, v, name, is_live in zip(flops, loss, who, live):
        best = min(a0 - k * np.log(min(f, x[-1]) / scale) for scale, a0, k, (x, _) in lines.values() if x[0] <= f)
        assert v == pytest.approx(best)
        x = lines[name][3][0]
        assert is_live == (x[0] <= f <= x[-1])
    assert not live.all() or who.count("short") == 0


# ============================================================================ the sweep
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny tokenizer, an image folder of 10 classes x 4 images (+ 1 held out each), and the recipe."""
    root = tmp_path_factory.mktemp("scaling")
    torch.manual_seed(0)
    nextscale.VQVAE(nextscale.VQVAEConfig(**TOKENIZER)).eval().save_pretrained(root / "tok")
    rng = np.random.default_rng(0)
    for split, n in (("images", 4), ("held_out", 1)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                arr[:, :, c % 3] = 25 * c
                Image.fromarray(arr).save(root / split / f"class{c}" / f"{i}.png")
    recipe = {"data": {"kind": "image_folder", "path": str(root / "images"), "eval_path": str(root / "held_out"),
                       "resolution": 8, "hflip": False},
              "model": {"drop_path_rate": 0.0}, "optim": {"lr": 1e-3}, "seed": 0, "export_at_end": True}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def sweep_args(workdir, out):
    return ["--out", str(out), "--config", str(workdir / "recipe.yaml"), "--tokenizer", str(workdir / "tok"),
            "--token-cache", "null", "--sizes", "1x16,1x32,2x32", "--steps", "3", "--batch", "8", "--warmup", "1",
            "--eval-every", "2", "--eval-images", "10", "--log-every", "1", "--checkpoint-every", "1",
            "--per-class", "1", "--smooth", "1"]


def test_sweep_records_every_size_and_a_rerun_repeats_no_work(workdir, tmp_path, monkeypatch):
    calls = []

    def fake_evaluate(npz):  # `nextscale eval` needs Fashion-MNIST's real images; the samples are real
        with np.load(npz) as f:
            assert f["arr_0"].shape[0] == 10 and list(f["labels"]) == list(range(10))
        calls.append(npz)
        return {"fashion_mnist": {"class_accuracy": 0.1 * len(calls), "frechet_distance": 100.0 / len(calls),
                                  "frechet_distance_floor": 1.0}}

    monkeypatch.setattr(fmnist_var_vs_ar, "evaluate", fake_evaluate)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "sweep"
    assert scaling.main(sweep_args(workdir, out)) == 0
    results = json.loads((out / "results.json").read_text())
    names = ["d1_w16", "d1_w32", "d2_w32"]
    assert [s["name"] for s in results["sizes"]] == names and len(calls) == 3
    for s in results["sizes"]:
        assert s["steps"] == 3 and s["heads"] == 1 and s["train_flops"] == 3 * s["flops_per_step"] > 0
        # the analytic matmul FLOPs are what torch's flop counter counts (it leaves out CPU attention), give or
        # take the biases and the input layer's unneeded input gradient (a few % at these tiny widths)
        matmuls = s["flops_per_step"] - s["flops_per_step_attention"]
        assert s["flops_per_step_attention"] > 0 and abs(matmuls / s["flops_per_step_counted"] - 1) < 0.1
        h = s["held_out"]
        assert h["step"] == 3 and h["loss"] > 0 and h["loss_last"] > 0 and 0 <= h["token_error_last"] <= 1
        assert s["quality"]["num_images"] == 10 and s["quality"]["class_accuracy"] is not None
        assert (out / s["name"] / "model" / "config.json").is_file()
        assert nextscale.load_var(out / s["name"] / "model").config.embed_dim == s["width"]
    params = [s["params"] for s in results["sizes"]]
    assert params == sorted(params)
    assert {"loss", "loss_last", "token_error", "token_error_last"} <= set(results["fits"]["params"])
    assert results["fits"]["compute"]["loss"]["frontier_flops"] and results["fits"]["compute"]["loss_last"]
    for png in ("loss_vs_params", "error_vs_params", "loss_vs_compute", "quality_vs_params"):
        assert (out / f"{png}.png").stat().st_size > 1000
    metrics = {n: (out / n / "metrics.jsonl").read_text() for n in names}

    # A second run (as after a kill at the end) trains nothing and samples nothing: it only redoes the fits.
    assert scaling.main(sweep_args(workdir, out)) == 0
    assert len(calls) == 3 and {n: (out / n / "metrics.jsonl").read_text() for n in names} == metrics
    log = (out / "sweep.log").read_text()
    assert log.count("nextscale train") == 3

    # A report at one step of the schedule (as for a sweep still running) trains and samples nothing either,
    # and writes its own files beside the sweep's.
    assert scaling.main(sweep_args(workdir, out) + ["--report-only", "--at-step", "2"]) == 0
    assert len(calls) == 3 and (out / "sweep.log").read_text().count("nextscale train") == 3
    at2 = json.loads((out / "results_step2.json").read_text())
    assert [s["held_out"]["step"] for s in at2["sizes"]] == [2, 2, 2]
    assert {n: (out / n / "metrics.jsonl").read_text() for n in names} == metrics

    # Killed in the last size (its export and quality missing, its checkpoints kept): only that size is redone,
    # from its checkpoint, so it trains no step again.
    import shutil
    shutil.rmtree(out / "d2_w32" / "model")
    (out / "d2_w32" / "quality.json").unlink()
    assert scaling.main(sweep_args(workdir, out)) == 0
    assert len(calls) == 4 and (out / "sweep.log").read_text().count("nextscale train") == 4
    assert {n: (out / n / "metrics.jsonl").read_text() for n in names} == metrics
    assert (out / "d2_w32" / "model" / "config.json").is_file()

    # Two sweeps do not train in one folder at once (they would resume each other's runs).
    import fcntl
    with open(out / ".sweep.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit):
            scaling.main(sweep_args(workdir, out))
        assert scaling.main(sweep_args(workdir, out) + ["--report-only"]) == 0
