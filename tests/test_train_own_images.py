"""The own-images path through the command line, with the repository's recipes as they stand: a folder of class
subfolders -> train-tokenizer -> tokenize -> train, each command reading what the previous one wrote (run folders,
the recipe's token_cache), held-out metrics from data.eval_fraction, and a rerun that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from own_images import make_shapes_folder

ROOT = Path(__file__).resolve().parents[1]

TOKENIZER_CI = ["steps=3", "global_batch=4", "log_every=1", "eval_every=2", "checkpoint_every=2", "eval_images=8",
                "time_limit_minutes=0"]
VAR_CI = ["steps=3", "global_batch=4", "log_every=1", "eval_every=2", "checkpoint_every=2", "sample.every=0",
          "model.depth=1", "model.embed_dim=32", "model.num_heads=1", "tensorboard=false", "progress=false"]



@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder that looks like a checkout: configs/ is the repository's, data/my_images a 3-class folder."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    make_shapes_folder(tmp_path / "data" / "my_images", per_class=6, size=64)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_folder_to_tokenizer_to_cache_to_transformer(workspace, capsys):
    import nextscale
    from nextscale.cli import main

    assert main(["train-tokenizer", "configs/tokenizer_own_images.yaml", *TOKENIZER_CI]) == 0
    tok_run = workspace / "runs" / "tokenizer_own"
    assert (tok_run / "model" / "config.json").is_file() and not (tok_run / "export").exists()
    tok_metrics = records(tok_run / "metrics.jsonl")
    assert [r["step"] for r in tok_metrics if "eval_psnr" in r] == [2, 3]  # eval_fraction gives held-out images

    # tokenize: the recipe's tokenizer is the run folder; the cache goes to the recipe's token_cache.
    assert main(["tokenize", "configs/var_own_images.yaml"]) == 0
    header = json.loads((workspace / "runs" / "cache_own" / "header.json").read_text())
    assert header["classes"] == ["blue_circle", "red_circle", "red_square"]
    assert header["num_images"] == 15  # 18 images, one of each class held out (data.eval_fraction=0.1)

    assert main(["train", "configs/var_own_images.yaml", *VAR_CI]) == 0
    run = workspace / "runs" / "var_own"
    var = nextscale.load_var(run / "model")
    assert var.num_classes == 3 and var.extra_config["class_names"] == ["blue_circle", "red_circle", "red_square"]
    metrics = records(run / "metrics.jsonl")
    evals = [r for r in metrics if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 3] and all("eval_acc_s5" in r for r in evals)
    assert (run / "curves.png").is_file()
    captured = capsys.readouterr()
    assert "held-out metrics on 3 images" in captured.out and "held-out loss" in captured.err

    # The same command again with more steps resumes instead of starting over.
    assert main(["train", "configs/var_own_images.yaml", *VAR_CI[1:], "steps=4"]) == 0
    assert "resumed from" in capsys.readouterr().out
    steps = [r["step"] for r in records(run / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3, 4]
    # Rerunning a finished run trains nothing and logs nothing new; so does rerunning the tokenizer's.
    before = (run / "metrics.jsonl").read_text()
    assert main(["train", "configs/var_own_images.yaml", *VAR_CI[1:], "steps=4"]) == 0
    assert (run / "metrics.jsonl").read_text() == before
    before = (tok_run / "metrics.jsonl").read_text()
    assert main(["train-tokenizer", "configs/tokenizer_own_images.yaml", *TOKENIZER_CI]) == 0
    assert (tok_run / "metrics.jsonl").read_text() == before
    assert main(["tokenize", "configs/var_own_images.yaml"]) == 0  # the cache is up to date


def test_print_config_shows_one_vocabulary_in_both_recipes(workspace, capsys):
    import yaml

    from nextscale.cli import main
    assert main(["train-tokenizer", "configs/tokenizer_own_images.yaml", "--print-config"]) == 0
    tok = yaml.safe_load(capsys.readouterr().out)
    assert main(["train", "configs/var_own_images.yaml", "--print-config"]) == 0
    var = yaml.safe_load(capsys.readouterr().out)
    for key in ("global_batch", "precision", "resume", "eval_every", "eval_images", "log_every", "checkpoint_every"):
        assert key in tok and key in var, key
    assert tok["precision"] == var["precision"] == "float32" and tok["resume"] == var["resume"] == "auto"
    assert tok["optim"]["lr"] and var["optim"]["lr"]
    assert tok["data"]["kind"] == var["data"]["kind"] == "auto"
    assert tok["data"]["path"] == var["data"]["path"] == "data/my_images"
    assert tok["data"]["eval_fraction"] == var["data"]["eval_fraction"]
    assert var["tokenizer"] == tok["out_dir"]  # the transformer reads the tokenizer's run folder


def test_every_recipe_uses_the_new_keys(capsys):
    import yaml
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert "batch_size" not in data, path
        assert data.get("precision", "float32") in ("float32", "bfloat16", "float16"), path
        assert data["data"]["kind"] == "auto", path
        assert "export" not in str(data.get("tokenizer")), path
    fmnist = yaml.safe_load((ROOT / "configs" / "var_fashion_mnist.yaml").read_text())
    assert fmnist["tokenizer"] == "runs/tokenizer_fmnist_phase2" and fmnist["token_cache"] == "runs/cache_fmnist_train"


def test_the_recipe_starts_from_the_shipped_colour_tokenizer_and_scratch_is_one_override_away(workspace, capsys):
    """init_from: colour-tokenizer-64 (the shipped weights, exactly, at step 0); another architecture is refused
    in one line naming the key; init_from=null trains from scratch."""
    import nextscale
    from nextscale.cli import main
    from nextscale.training.tokenizer_config import TokenizerTrainConfig
    from nextscale.training.tokenizer_trainer import train_tokenizer
    from nextscale.training.config import load_config

    shipped = nextscale.load_vae("colour-tokenizer-64")
    assert shipped.config.norm_groups == 1 and shipped.resolution == 64
    cfg = load_config(TokenizerTrainConfig, "configs/tokenizer_own_images.yaml", TOKENIZER_CI + ["steps=1"])
    assert cfg.init_from == "colour-tokenizer-64"
    cfg.optim.lr = 1e-12  # one step that changes (almost) nothing: the weights are the shipped ones
    trained = train_tokenizer(cfg)["vae"]
    assert torch.allclose(trained.decoder.conv_out.weight, shipped.decoder.conv_out.weight, atol=1e-6)
    capsys.readouterr()
    code = main(["train-tokenizer", "configs/tokenizer_own_images.yaml", *TOKENIZER_CI, "model.vocab_size=64",
                 "out_dir=runs/other"])
    err = capsys.readouterr().err
    assert code == 2 and "model.vocab_size=64 (init_from has 512)" in err and "init_from=null" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train-tokenizer", "configs/tokenizer_own_images.yaml", *TOKENIZER_CI, "model.vocab_size=64",
                 "init_from=null", "out_dir=runs/scratch"]) == 0
    scratch = nextscale.load_vae("runs/scratch")
    assert scratch.vocab_size == 64


def test_fashion_mnist_kind_with_an_image_folder_says_what_to_set(workspace, capsys):
    from nextscale.cli import main
    code = main(["train-tokenizer", "configs/tokenizer_own_images.yaml", "data.kind=fashion_mnist", *TOKENIZER_CI])
    assert code == 2
    err = capsys.readouterr().err
    assert "set data.kind=image_folder (or auto)" in err and "Traceback" not in err
