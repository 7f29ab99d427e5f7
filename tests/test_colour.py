"""Colour: the colour measures, the architecture fix that lets a narrow tokenizer keep colour, the shipped colour
tokenizer, and a tokenizer trained on a colour folder that must keep its colours."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nextscale.evaluation.colour import colourfulness, mean_colour_error
from nextscale.tokenizer.vqvae import VQVAE, VQVAEConfig

sys.path.insert(0, str(Path(__file__).parent))
from own_images import CLASSES, LUMA, make_shapes_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_colourfulness_by_hand():
    grey = torch.rand(2, 1, 8, 8)
    assert torch.all(colourfulness(grey) == 0) and torch.all(colourfulness(grey.expand(-1, 3, -1, -1)) == 0)
    # Half the pixels pure red (255, 0, 0), half black: rg is 255 or 0, yb 127.5 or 0.
    img = torch.zeros(1, 3, 4, 4)
    img[0, 0, :2] = 1.0
    rg_std, yb_std, rg_mean, yb_mean = 127.5, 63.75, 127.5, 63.75
    expected = np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg_mean, yb_mean)
    assert colourfulness(img).item() == pytest.approx(expected, rel=1e-9)


def test_mean_colour_error_by_hand():
    target = torch.zeros(1, 3, 4, 4)
    rec = target.clone()
    rec[0, 0] = 30 / 255          # red +30 everywhere
    rec[0, 2, :2] = 60 / 255      # blue +60 on half the pixels: +30 on average
    assert mean_colour_error(rec, target).item() == pytest.approx((30 + 0 + 30) / 3)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_colour_error(rec, target[:, :, :2])


def test_the_colour_folder_cannot_be_told_apart_in_grey(tmp_path):
    """Its blue and red circles have the same distribution of grey levels: only colour separates them."""
    from PIL import Image
    root = make_shapes_folder(tmp_path / "shapes", per_class=40, size=32, seed=3)
    assert sorted(p.name for p in root.iterdir()) == list(CLASSES)

    def shape_grey(folder):
        values = []
        for path in sorted(folder.iterdir()):
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
            # the shape's pixels are the most saturated ones
            sat = rgb.max(-1) - rgb.min(-1)
            values.append(float((rgb[sat >= np.quantile(sat, 0.9)] @ LUMA).mean()))
        return np.array(values)

    blue, red = shape_grey(root / "blue_circle"), shape_grey(root / "red_circle")
    assert abs(blue.mean() - red.mean()) < 10 and 70 <= blue.min() and red.max() <= 155


def test_one_channel_per_group_erases_per_channel_offsets_and_one_group_keeps_them():
    """Why a narrow tokenizer loses colour: GroupNorm with as many groups as channels (the published 32 groups on
    a 32-channel model) is an instance norm. Each feature map is set to mean 0 and variance 1 per image, so what
    one image's features hold as a per-channel offset or scale (how a flat colour shows in them) is erased at
    every norm. With one group only the offset and scale common to all channels go; their differences stay."""
    from nextscale.tokenizer.autoencoder import group_norm
    torch.manual_seed(0)
    h = torch.randn(1, 32, 8, 8)
    shifted = h * torch.rand(1, 32, 1, 1).add(0.5) + torch.randn(1, 32, 1, 1)  # per-channel scale and offset
    instance, one_group = group_norm(32, 32), group_norm(32, 1)
    assert instance.num_groups == 32 and one_group.num_groups == 1
    with torch.no_grad():
        assert torch.allclose(instance(h), instance(shifted), atol=1e-4)
        assert not torch.allclose(one_group(h), one_group(shifted), atol=1e-1)
    assert group_norm(24, 32).num_groups == 24 and group_norm(48, 32).num_groups == 24  # fits the width


def test_norm_groups_keeps_the_published_architecture_and_old_token_caches():
    published = VQVAEConfig()
    assert published.norm_groups == 32
    assert VQVAE(VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, vocab_size=8, patch_nums=(1, 2)))\
        .decoder.norm_out.num_groups == 32
    # The hash that ties token caches to their tokenizer is the one computed before norm_groups existed.
    small = VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, vocab_size=8, patch_nums=(1, 2))
    import hashlib
    fields = small.to_dict()
    del fields["norm_groups"]
    assert small.identity_hash() == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert VQVAEConfig(**{**small.to_dict(), "norm_groups": 1}).identity_hash() != small.identity_hash()


def _keeps_colour(record: dict) -> bool:
    """The issue's bar for held-out reconstructions: colourfulness within 15% of the real images', mean-colour
    error at most 5/255 (here 6: a tiny run)."""
    ratio = record["eval_colourfulness"] / record["eval_real_colourfulness"]
    return 0.85 <= ratio <= 1.15 and record["eval_colour_error"] <= 6.0


def test_a_tokenizer_trained_on_a_colour_folder_keeps_its_colours(tmp_path, monkeypatch):
    """The own-images tokenizer recipe as it is (it starts from the shipped colour tokenizer), trained briefly on a
    colour folder: its held-out reconstructions, as the training log reports them, keep the colours. Grey
    reconstructions of the same images would fail the same check."""
    from nextscale.cli import main
    from nextscale.training.metrics import read_jsonl
    from nextscale.training.tokenizer_trainer import evaluate_held_out

    data = make_shapes_folder(tmp_path / "data", per_class=20, size=64, seed=1)
    out = tmp_path / "run"
    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository
    assert main(["train-tokenizer", "configs/tokenizer_own_images.yaml", f"data.path={data}", f"out_dir={out}",
                 "steps=12", "global_batch=8", "log_every=4", "eval_every=6", "eval_images=32", "checkpoint_every=0",
                 "time_limit_minutes=0"]) == 0
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval_psnr" in r]
    assert [r["step"] for r in evals] == [6, 12]
    last = evals[-1]
    assert last["eval_real_colourfulness"] > 30, last  # the folder is colourful
    assert _keeps_colour(last), last
    assert last["eval_psnr"] >= 22, last

    class Grey(torch.nn.Module):  # the failure the check is for: a tokenizer that drops colour
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def encode_fhats(self, img):
            return self.vae.encode_fhats(img)

        def decode_fhat(self, f_hat):
            rec = self.vae.decode_fhat(f_hat)
            return (rec * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True).expand_as(rec)

    from nextscale.data.datasets import DataConfig, build_dataset
    held = build_dataset(DataConfig(kind="image_folder", path=str(data), eval_fraction=0.1, resolution=64,
                                    resize_ratio=1.125), train=False)
    images = torch.stack([held[i][0] for i in range(len(held))])
    from nextscale.checkpoints import load_vae
    assert _keeps_colour(evaluate_held_out(load_vae(out), images))
    assert not _keeps_colour(evaluate_held_out(Grey(load_vae(out)), images))


def test_colour_probe_benchmark_runs_and_writes_its_table(tmp_path):
    """benchmarks/colour_probe.py (the flat-colour experiment behind the fix), two rows of two steps."""
    import subprocess
    out = tmp_path / "probe.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "colour_probe.py"), "--steps", "2", "--rows",
                          "g32-lr1e-4,nonorm-lr1e-4", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["row"] for r in results] == ["g32-lr1e-4", "nonorm-lr1e-4"]
    assert all(0 < r["final_loss"] < 2 and 0 <= r["mean_colour_error"] <= 255 for r in results)
    assert "mean-colour error" in run.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "colour_probe.py"), "--rows", "g0-lrx"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not g<groups>-lr<lr>" in bad.stderr


def test_eval_tokenizer_reports_colour_beside_the_originals(tmp_path, capsys):
    """`nextscale eval-tokenizer` on a colour folder with the shipped colour tokenizer: colourfulness of the
    reconstructions beside the originals' and the mean-colour error, printed and in metrics.json; the same
    images in grey give colourfulness 0 for both."""
    from PIL import Image

    from nextscale.cli import main
    data = make_shapes_folder(tmp_path / "data", per_class=4, size=64, seed=2)
    assert main(["eval-tokenizer", "--tokenizer", "colour-tokenizer-64", "--data", str(data), "--lpips", "off",
                 "--out", str(tmp_path / "eval"), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["real_colourfulness"] > 30 and 0.8 < metrics["colourfulness"] / metrics["real_colourfulness"] < 1.2
    assert metrics["mean_colour_error"] < 8
    assert re.search(r"colourfulness [\d.]+ \(\d+% of the originals' [\d.]+\), mean-colour error [\d.]+/255", out), out
    for path in data.rglob("*.png"):
        Image.open(path).convert("L").convert("RGB").save(path)
    assert main(["eval-tokenizer", "--tokenizer", "colour-tokenizer-64", "--data", str(data), "--lpips", "off",
                 "--out", str(tmp_path / "grey"), "--threads", "1"]) == 0
    grey = json.loads((tmp_path / "grey" / "metrics.json").read_text())
    assert grey["real_colourfulness"] == 0 and "(grey images)" in capsys.readouterr().out
