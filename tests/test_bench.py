"""`make bench` runs end to end (tiny stand-in models) and its roofline bound is computed right."""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402

import nextscale  # noqa: E402


def test_roofline_bound_is_the_slower_of_compute_and_weight_reading():
    var = nextscale.build_var("var-d16", depth=2, embed_dim=64, num_heads=2, num_classes=10, vocab_size=64,
                              vae_channels=8, patch_nums=(1, 2))
    # Per token row: qkv 64*192 + proj 64*64 + fc1 64*256 + fc2 256*64 per block, the head 64*64, the
    # word embedding 8*64; the AdaLN projections are excluded (they run once per sample).
    params = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64) + 64 * 64 + 8 * 64
    # With no memory limit, the bound is the FLOPs at the peak: rows 2*1 then 2*4 (cfg doubles the batch),
    # attention over 1 then 5 keys.
    flop = sum(2 * rows * params + 4 * rows * keys * 64 * 2 for rows, keys in ((2, 1), (8, 5)))
    assert bench.roofline_transformer_seconds(var, 1, peak_gflops=1.0, read_gbps=1e12) == pytest.approx(flop / 1e9)
    # With no compute limit, it is one read of the weights per scale.
    assert bench.roofline_transformer_seconds(var, 1, peak_gflops=1e12, read_gbps=1.0) == pytest.approx(
        2 * params * 4 / 1e9)


@pytest.mark.slow
def test_bench_smoke_run_writes_table_json_and_plot(tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--grids", "16,20", "--skip", "precision,training", "--repeats", "1",
                       "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [row["batch"] for row in results["var_sampling"]] == [1, 8]
    for row in results["var_sampling"]:
        assert row["gflop_per_image"] > 0 and row["seconds_per_image"] > row["roofline_seconds_per_image"] > 0
    assert results["kv_cache"]["token_agreement"] == 1.0  # the cache changes the speed, never the tokens
    assert results["kv_cache"]["gflop_without_cache"] > results["kv_cache"]["gflop_with_cache"]
    assert [r["tokens"] for r in results["var_vs_ar"]] == [256, 400]
    assert Path(results["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "float32 matmul peak" in table and "VAR vs raster-scan AR" in table
