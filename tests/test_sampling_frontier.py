"""benchmarks/sampling_frontier.py runs end to end in --quick mode (tiny counts, stand-in models) and writes its
table, JSON and plot."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sampling_frontier  # noqa: E402

import nextscale  # noqa: E402
from nextscale.evaluation.classifier import ClassifierConfig, ImageClassifier  # noqa: E402

pytestmark = pytest.mark.slow


def test_options_mean_the_same_last_scales_on_both_models():
    by_key = {o.key: o for o in sampling_frontier.OPTIONS}
    assert by_key["truncated-2"].settings(7) == {"guidance": "truncated:5"}
    assert by_key["truncated-2"].settings(10) == {"guidance": "truncated:8"}
    assert by_key["refiner-4"].settings(10) == {"switch_at": 6}
    assert by_key["default"].settings(10) == {}


@pytest.mark.usefixtures("fashion_mnist")  # the quality part needs the Fashion-MNIST files
def test_quick_run_writes_table_json_and_plot(tmp_path, capsys):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ImageClassifier(ClassifierConfig(channels=(8, 16, 32))).eval().save_pretrained(tmp_path / "rejector")
    shipped = nextscale.load_pretrained("fashion-mnist")
    small = nextscale.VAR(nextscale.VARConfig(depth=1, embed_dim=32, num_heads=1, num_classes=10, vocab_size=512,
                                              vae_channels=16, patch_nums=(1, 2, 3, 4, 5, 6, 8))).eval()
    small.init_weights()
    small.attach_tokenizer(shipped.tokenizer)
    small.save_pretrained(tmp_path / "refiner")
    out = tmp_path / "frontier"
    assert sampling_frontier.main(["--quick", "--num-per-class", "1", "--out", str(out),
                                   "--reject-classifier", str(tmp_path / "rejector"), "--refiner",
                                   str(tmp_path / "refiner"),
                                   "--only", "truncated-2,int8,refiner-2,reject-0.5"]) == 0
    results = json.loads((out / "results.json").read_text())
    quality = {r["key"]: r for r in results["fashion_mnist"]["rows"]}
    assert list(quality) == ["default", "truncated-2", "int8", "refiner-2", "reject-0.5"]
    for row in quality.values():
        assert row["seconds_per_image"] > 0 and 0 <= row["class_accuracy"] <= 1 and row["frechet_distance"] > 0
    assert quality["truncated-2"]["settings"] == {"guidance": "truncated:5"}
    assert quality["refiner-2"]["settings"] == {"switch_at": 5}
    assert 0 < quality["reject-0.5"]["mean_kept_score"] <= 1
    speed = {r["key"]: r for r in results["var_d16"]["rows"]}
    assert list(speed) == ["default", "truncated-2", "int8", "refiner-2"]  # rejection is not a speed option
    assert speed["default"]["speedup"] == 1.0 and speed["truncated-2"]["settings"] == {"guidance": "truncated:3"}
    assert Path(results["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert "| **default: linear ramp, float32 (exact)** |" in table and "rejection, keep 0.5" in table
    assert table in capsys.readouterr().out


def test_the_readme_speed_rerun_times_only_the_named_options(tmp_path):
    """The README's second run (`--skip quality --only truncated-2,bfloat16,truncated-2+bfloat16`): var-d16 timings
    of the default and those options, no Fashion-MNIST sampling, no plot."""
    out = tmp_path / "speed"
    assert sampling_frontier.main(["--quick", "--skip", "quality", "--threads", "1", "--out", str(out),
                                   "--only", "truncated-2,bfloat16,truncated-2+bfloat16"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "fashion_mnist" not in results and "plot" not in results
    speed = {r["key"]: r for r in results["var_d16"]["rows"]}
    assert list(speed) == ["default", "truncated-2", "bfloat16", "truncated-2+bfloat16"]
    assert speed["default"]["speedup"] == 1.0 and all(r["seconds_per_image"] > 0 for r in speed.values())


@pytest.mark.usefixtures("fashion_mnist")
def test_quality_only_run_as_the_readme_says(tmp_path):
    """The README's Fashion-MNIST re-run (`--skip speed`, a given rejecting classifier): no var-d16 timing at all."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ImageClassifier(ClassifierConfig(channels=(8, 16, 32))).eval().save_pretrained(tmp_path / "rejector")
    out = tmp_path / "quality"
    assert sampling_frontier.main(["--quick", "--num-per-class", "1", "--skip", "speed", "--threads", "1",
                                   "--out", str(out), "--reject-classifier", str(tmp_path / "rejector"),
                                   "--only", "bfloat16,reject-0.5"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "var_d16" not in results and Path(results["plot"]).is_file()
    assert [r["key"] for r in results["fashion_mnist"]["rows"]] == ["default", "bfloat16", "reject-0.5"]
