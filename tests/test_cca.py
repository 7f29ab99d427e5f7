"""Condition contrastive alignment (training/cca.py): the loss, its value and gradient at the start, the trainer's
CCA runs (refusals, exact resume, the guidance-free model folder) and one pass per scale at cfg 0."""

from __future__ import annotations

import copy
import json
import math
import os
import signal

import pytest
import torch

import nextscale
from nextscale.config_schema import ConfigError
from nextscale.training.cca import CCAObjective, cca_loss, mismatched_labels, negative_weight, sequence_log_likelihood
from nextscale.training.var_config import CCAConfig
from nextscale.training.var_trainer import config_from, train

from test_training_resume_safety import var_overrides


def test_loss_against_a_hand_computed_value():
    pos, ref_pos = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -19.0])
    neg, ref_neg = torch.tensor([-30.0, -25.0]), torch.tensor([-28.0, -26.0])
    beta, lam = 0.5, 3.0
    softplus = lambda x: math.log1p(math.exp(x))  # -log sigmoid(x) = log(1 + e^-x)
    # r+ = 2, -1; r- = -2, 1.
    expected = (softplus(-beta * 2) + softplus(-beta * -1)) / 2 + lam * (softplus(beta * -2) + softplus(beta * 1)) / 2
    assert cca_loss(pos, ref_pos, neg, ref_neg, beta, lam).item() == pytest.approx(expected, rel=1e-6)
    # A row without a negative (a null-class positive) adds only its positive term.
    only_first = (softplus(-beta * 2) + softplus(-beta * -1)) / 2 + lam * softplus(beta * -2) / 2
    assert cca_loss(pos, ref_pos, neg, ref_neg, beta, lam, torch.tensor([True, False])).item() == pytest.approx(
        only_first, rel=1e-6)


def test_mismatched_labels_are_always_another_class_and_lambda_follows_the_paper():
    labels = torch.tensor([3, 3, 3, 0, 9, 9, 1])
    other = mismatched_labels(labels, 10)
    assert (other != labels).all() and ((other >= 0) & (other < 10)).all()
    assert negative_weight(CCAConfig(), 16) == 50 and negative_weight(CCAConfig(), 30) == 1000
    assert negative_weight(CCAConfig(), 4) == 50 and negative_weight(CCAConfig(negative_weight=7), 30) == 7


def tiny_var(seed=0):
    torch.manual_seed(seed)
    vae = nextscale.VQVAE(nextscale.VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=64,
                                                patch_nums=(1, 2, 3, 4)))
    var = nextscale.VAR(nextscale.VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=5, vocab_size=64,
                                            vae_channels=8, patch_nums=(1, 2, 3, 4), drop_path_rate=0.0,
                                            class_drop_prob=0.0))
    var.init_weights()
    var.attach_tokenizer(vae)
    return var, vae


def test_at_the_start_the_loss_is_1_plus_lambda_ln2_and_the_gradient_the_likelihood_difference():
    var, vae = tiny_var()
    var.train()
    reference = copy.deepcopy(var)
    beta, lam = 0.02, 50.0
    objective = CCAObjective(CCAConfig(beta=beta, negative_weight=lam, null_fraction=0.0), reference, 5, 2)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (6, 30), generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    from nextscale.training.var_model import model_targets
    inputs, target = model_targets(var, vae, tokens)
    loss, _, _, extra = objective(var, labels, inputs, target, [1, 4, 9, 16])
    assert loss.item() == pytest.approx((1 + lam) * math.log(2), rel=1e-6)
    assert extra["cca_margin"].item() == pytest.approx(0.0, abs=1e-4)
    params = [p for p in var.parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, params)
    # -(β/2)·∇ mean log p(x|c+) + (λβ/2)·∇ mean log p(x|c-), computed on its own.
    log_pos = sequence_log_likelihood(var(labels, inputs), target).mean()
    log_neg = sequence_log_likelihood(var(mismatched_labels(labels, 5), inputs), target).mean()
    want = torch.autograd.grad(-(beta / 2) * log_pos + (lam * beta / 2) * log_neg, params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)
    assert any(w.abs().max() > 0 for w in want)


def cca_overrides(tmp_path, *extra):
    base = var_overrides(tmp_path, "export_at_end=true", "steps=4", "checkpoint_every=2")
    if not (tmp_path / "run" / "model" / "config.json").is_file():
        train(config_from({}, base))  # the trained model CCA starts from
    start = [o for o in base if not o.startswith("out_dir=")]
    return [*start, f"out_dir={tmp_path / 'cca'}", f"model.init_from={tmp_path / 'run' / 'model'}",
            "cca.enabled=true", "cca.negative_weight=5", "cca.null_fraction=0.25", "optim.lr=1e-4", *extra]


@pytest.mark.slow
def test_cca_run_resumes_bit_identically_and_writes_a_guidance_free_model(tmp_path):
    straight = train(config_from({}, cca_overrides(tmp_path)))
    assert straight["step"] == 4 and "cca_loss" in straight and "cca_margin" in straight
    folder = tmp_path / "cca" / "model"
    config = json.loads((folder / "config.json").read_text())
    assert config["guidance_free"] is True and config["sampling"]["cfg"] == 0.0
    assert nextscale.recommended_sampling(nextscale.load_var(folder))["cfg"] == 0.0
    weights = nextscale.load_var(folder).state_dict()

    # The same run stopped by SIGTERM after step 3 (null rows drawn, a checkpoint between) and resumed: the same
    # weights, bit for bit, and one metrics line per step.
    resumed = config_from({}, cca_overrides(tmp_path, f"out_dir={tmp_path / 'cca2'}"))
    stop_at_3 = lambda step, record: os.kill(os.getpid(), signal.SIGTERM) if step == 3 else None
    assert train(resumed, on_step=stop_at_3)["stopped_by_signal"] == signal.SIGTERM
    assert train(resumed)["start_step"] == 3
    again = nextscale.load_var(tmp_path / "cca2" / "model").state_dict()
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    from nextscale.training.metrics import read_jsonl
    assert [r["step"] for r in read_jsonl(tmp_path / "cca2" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_cca_refuses_a_missing_or_mismatched_reference_model(tmp_path):
    overrides = [o for o in cca_overrides(tmp_path) if not o.startswith("model.init_from=")]
    with pytest.raises(ConfigError, match="model.init_from"):
        train(config_from({}, overrides))
    other_folder = tmp_path / "other"
    wide = nextscale.VAR(nextscale.VARConfig(depth=2, embed_dim=32, num_heads=2, num_classes=3, vocab_size=64,
                                             vae_channels=8, patch_nums=(1, 2, 3, 4)))
    wide.save_pretrained(other_folder)
    with pytest.raises(ConfigError, match="does not match"):
        train(config_from({}, overrides + [f"model.init_from={other_folder}"]))


def test_cfg_0_runs_one_pass_per_scale_and_equals_no_guidance():
    var, _ = tiny_var()
    var.eval()
    rows = []
    handle = var.blocks[0].register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    plain = nextscale.sample(var, labels=[0, 1, 2], seed=0, cfg=0.0, top_k=0, top_p=0.0)
    assert set(rows) == {3}  # no null-class rows at any scale
    rows.clear()
    guided = nextscale.sample(var, labels=[0, 1, 2], seed=0, cfg=1.5, top_k=0, top_p=0.0)
    assert set(rows) == {6}
    handle.remove()
    unguided = nextscale.sample(var, labels=[0, 1, 2], seed=0, cfg=0.0, top_k=0, top_p=0.0, guidance="truncated:0")
    assert torch.equal(plain.images, unguided.images) and plain.images.shape == guided.images.shape


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_the_readmes_cca_command_fine_tunes_the_shipped_model(tmp_path):
    """The README's CCA command as written (a few steps appended), from the shipped model, on Fashion-MNIST."""
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = re.search(r"### Guidance-free sampling \(CCA\)\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    line = next(l for l in block.splitlines() if l.startswith("nextscale train"))
    argv = shlex.split(line)[1:] + [f"out_dir={tmp_path / 'cca'}", "steps=2", "eval_images=16", "eval_every=0",
                                    "checkpoint_every=0", "log_every=1", "global_batch=4"]
    r = subprocess.run([sys.executable, "-m", "nextscale", *argv], cwd=root, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    from nextscale.training.metrics import read_jsonl
    records = read_jsonl(tmp_path / "cca" / "metrics.jsonl")
    assert [rec["step"] for rec in records] == [1, 2]
    # At step 1 the model is the reference: (1 + λ)·ln 2 for the rows with a negative, ln 2 for the null rows.
    lam = 10.0
    assert math.log(2) <= records[0]["cca_loss"] <= (1 + lam) * math.log(2) + 1e-4
    folder = tmp_path / "cca" / "model"
    assert json.loads((folder / "config.json").read_text())["guidance_free"] is True
    out = nextscale.sample(nextscale.load_var(folder), labels=[0, 7], seed=0)  # its recommended cfg 0
    assert out.images.shape == (2, 3, 32, 32)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_the_readmes_cca_benchmark_command_runs(tmp_path):
    """The README's `benchmarks/fmnist_cca.py` command as written, with the shipped model and classifier standing in
    for the fine-tune and the second classifier, and 2 images per class."""
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = re.search(r"### Guidance-free sampling \(CCA\)\n.*?```bash\n(.*?)```", readme, re.S).group(1)
    line = next(l for l in block.replace("\\\n", " ").splitlines() if l.startswith("python benchmarks/fmnist_cca.py"))
    line = line.replace("runs/var_fmnist_cca_l10/model", "src/nextscale/assets/fashion_mnist_var")
    line = line.replace("bench_results/second_classifier", "src/nextscale/assets/fashion_mnist_classifier")
    argv = shlex.split(line)[1:] + ["--num-per-class", "2", "--out", str(tmp_path / "out")]
    r = subprocess.run([sys.executable, *argv], cwd=root, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["models"]) == {"shipped", "cca"} and results["models"]["cca"]["cfg"] == 0.0
    assert set(results["models"]["cca"]["scores"]) == {"project", "second"}
    assert "second acc" in r.stdout
