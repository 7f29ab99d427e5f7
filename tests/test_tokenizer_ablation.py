"""benchmarks/tokenizer_ablation.py --score: existing tokenizers scored beside the real images, training nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tokenizer_ablation.py"
SHIPPED = ROOT / "src" / "nextscale" / "assets" / "fashion_mnist_var" / "tokenizer"


def run(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_score_rows_are_scored_like_trained_ones_and_nothing_is_trained(tmp_path):
    out = tmp_path / "ablation"
    proc = run("--out", out, "--score", f"shipped={SHIPPED}", "--num-images", 40, "--test-images", 40, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["real images", "shipped"]
    row = results["shipped"]
    assert row["train"] is None and row["psnr_test_images"] == 40
    assert 20 < row["psnr"] < 40 and len(row["usage_per_scale"]) == 7  # a trained tokenizer, all 7 scales counted
    assert row["classifier"]["num_images"] == 40
    # The reconstructions of the same 40 images are judged against the real ones' own figures.
    assert results["real images"]["classifier"]["class_accuracy"] >= row["classifier"]["class_accuracy"] - 0.2
    assert "| shipped | | |" in (out / "table.md").read_text()
    assert not any(p.name.startswith("probe") for p in out.iterdir())  # no row was trained


def test_score_needs_name_and_an_existing_folder(tmp_path):
    for bad in ("shipped", f"={SHIPPED}", f"x={tmp_path / 'missing'}"):
        proc = run("--score", bad, cwd=tmp_path)
        assert proc.returncode == 2 and "expected NAME=FOLDER" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
