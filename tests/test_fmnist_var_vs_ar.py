"""benchmarks/fmnist_var_vs_ar.py, the README's VAR-vs-baseline command, samples both models with the same labels and
settings and records each one's scores (here on tiny random models; `nextscale eval` is stood in for, as its real
run needs Fashion-MNIST-sized images)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fmnist_var_vs_ar  # noqa: E402
from tiny_models import PATCH_NUMS, RESOLUTION, random_vae, random_var  # noqa: E402

from nextscale.registry import MODEL_TYPES  # noqa: E402


def test_both_models_sampled_with_the_same_labels_and_scored(tmp_path, monkeypatch):
    vae = random_vae()
    random_var(vae).save_pretrained(tmp_path / "var")
    kind = MODEL_TYPES["raster_ar"]
    ar = kind.build(kind.config_class(depth=1, embed_dim=32, num_heads=1, num_classes=10, vocab_size=vae.vocab_size,
                                      seq_len=sum(p * p for p in PATCH_NUMS)))
    ar.init_weights(1e-3, 0.02)
    ar.attach_tokenizer(vae)
    ar.save_pretrained(tmp_path / "ar")
    scored = []

    def fake_evaluate(npz):
        with np.load(npz) as f:
            assert f["arr_0"].shape == (10, RESOLUTION, RESOLUTION, 3) and f["arr_0"].dtype == np.uint8
            assert list(f["labels"]) == list(range(10))
        scored.append(Path(npz).name)
        return {"fashion_mnist": {"class_accuracy": 0.5, "frechet_distance": 10.0 * len(scored),
                                  "frechet_distance_floor": 1.0}}

    monkeypatch.setattr(fmnist_var_vs_ar, "evaluate", fake_evaluate)
    out = tmp_path / "out"
    assert fmnist_var_vs_ar.main(["--var", str(tmp_path / "var"), "--ar", str(tmp_path / "ar"), "--num-per-class",
                                  "1", "--cfg", "3", "--batch-size", "4", "--threads", "1", "--out", str(out)]) == 0
    assert scored == ["var.npz", "raster_ar.npz"]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"] == {"cfg": 3.0, "top_k": 0, "top_p": 0.0} and results["num_images"] == 10
    assert [results["models"][m]["metrics"]["fashion_mnist"]["frechet_distance"] for m in ("VAR", "raster AR")] \
        == [10.0, 20.0]
    assert all(results["models"][m]["seconds_per_image"] > 0 for m in ("VAR", "raster AR"))
