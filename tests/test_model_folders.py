"""One rule for what load_vae / load_var accept: model folders, training run folders, and (refused, with
the way out) training checkpoints. The folders are written by real tiny trainings (a few seconds)."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nextscale
from nextscale import CheckpointError
from test_tokenizer_training import tiny_config
from test_var_training import base_config


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A train-tokenizer run (root/run) and a `nextscale train` run on it (root/var_run), 2 steps each."""
    from nextscale.training.tokenizer_trainer import train_tokenizer
    from nextscale.training.var_trainer import train
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("model_folders")
    train_tokenizer(tiny_config(root, "steps=2", "checkpoint_every=2", "loss.gan_weight=0",
                                "loss.perceptual_weight=0"))
    tok_run = root / "run"
    var_run = root / "var_run"
    train(base_config(root, var_run, tokenizer=str(tok_run), steps=2, checkpoint_every=1, export_at_end=True))
    torch.set_num_threads(threads)
    assert (tok_run / "model" / "config.json").is_file() and (var_run / "model" / "config.json").is_file()
    return {"tok_run": tok_run, "var_run": var_run, "root": root,
            "tok_ckpt": sorted((tok_run / "checkpoints").glob("step_*.pt"))[-1],
            "var_ckpt": sorted((var_run / "checkpoints").glob("step_*.pt"))[-1]}


def unfinished_copy(run: Path, dest: Path) -> Path:
    """The run as it is before training ends: no model/ yet."""
    shutil.copytree(run, dest)
    shutil.rmtree(dest / "model")
    return dest


# ============================================================================ transformer runs
def test_load_var_of_a_run_folder_is_its_model(runs):
    run = runs["var_run"]
    from_model = nextscale.load_var(run / "model")
    for path in (run, run / "checkpoints", run / "model" / "model.safetensors", str(run)):
        var = nextscale.load_var(path)
        assert isinstance(var, nextscale.VAR) and var.tokenizer is not None, path
        assert same_weights(var, from_model)
        assert same_weights(var.tokenizer, from_model.tokenizer)


def test_load_var_of_a_training_checkpoint_says_use_model_or_export(runs):
    ckpt, run = runs["var_ckpt"], runs["var_run"]
    with pytest.raises(CheckpointError) as err:
        nextscale.load_var(ckpt)
    msg = str(err.value)
    assert "training checkpoint (optimizer state included), not a model" in msg
    assert f"use {run / 'model'}" in msg and f"`nextscale export {ckpt} OUT`" in msg
    assert "\n" not in msg


def test_unfinished_var_run_says_how_to_export_and_the_advice_works(runs, tmp_path):
    run = unfinished_copy(runs["var_run"], tmp_path / "var run")  # a space: the command must be quoted
    for path in (run, run / "checkpoints"):
        with pytest.raises(CheckpointError) as err:
            nextscale.load_var(path)
        msg = str(err.value)
        assert f"{run} holds training checkpoints but no model/ yet (training has not finished)" in msg
        assert "writes the newest checkpoint as a model folder" in msg
    command = re.search(r"`(nextscale export [^`]+)`", msg).group(1)
    argv = shlex.split(command)
    assert argv[2:] == [str(run), str(run / "model")]
    script = Path(sys.executable).parent / "nextscale"
    cli = [str(script)] if script.is_file() else [sys.executable, "-c", "import sys; from nextscale.cli import main; "
                                                                         "sys.exit(main())"]
    done = subprocess.run(cli + argv[1:], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    var = nextscale.load_var(run)  # the advice worked: the run folder now loads
    assert same_weights(var, nextscale.load_var(runs["var_run"]))  # the newest checkpoint is the final model


def test_load_vae_of_a_transformer_run_is_the_runs_tokenizer(runs, tmp_path):
    run = runs["var_run"]
    tokenizer = nextscale.load_vae(runs["tok_run"])
    for path in (run, run / "model", unfinished_copy(run, tmp_path / "unfinished")):
        vae = nextscale.load_vae(path)
        assert isinstance(vae, nextscale.VQVAE), path
        assert same_weights(vae, tokenizer)


def test_load_vae_of_a_transformer_checkpoint_points_at_the_runs_tokenizer(runs):
    with pytest.raises(CheckpointError, match=r"transformer training checkpoint, not a tokenizer.*"
                                              + re.escape(str(runs["var_run"] / "tokenizer"))):
        nextscale.load_vae(runs["var_ckpt"])


# ============================================================================ tokenizer runs
def test_load_vae_of_a_tokenizer_run_and_its_legacy_export_folder(runs, tmp_path):
    run = runs["tok_run"]
    vae = nextscale.load_vae(run)
    assert same_weights(vae, nextscale.load_vae(run / "model"))
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    (legacy / "model").rename(legacy / "export")
    assert same_weights(nextscale.load_vae(legacy), vae)
    assert same_weights(nextscale.load_vae(legacy), vae)


def test_tokenizer_training_checkpoint_is_refused_with_the_model_folder(runs):
    run, ckpt = runs["tok_run"], runs["tok_ckpt"]
    with pytest.raises(CheckpointError) as err:
        nextscale.load_vae(ckpt)
    msg = str(err.value)
    assert "training checkpoint of `nextscale train-tokenizer`" in msg and "not a model" in msg
    assert f"use {run / 'model'}" in msg
    with pytest.raises(CheckpointError, match="tokenizer training checkpoint, not a transformer"):
        nextscale.load_var(ckpt)


def test_load_var_of_a_tokenizer_run_or_folder_says_load_vae(runs):
    with pytest.raises(CheckpointError, match=r"tokenizer training run .*load_vae"):
        nextscale.load_var(runs["tok_run"])
    with pytest.raises(CheckpointError, match=r"holds a tokenizer, not a transformer: load it with load_vae"):
        nextscale.load_var(runs["tok_run"] / "model")


def test_tokenizer_run_without_model_says_resume(runs, tmp_path):
    run = unfinished_copy(runs["tok_run"], tmp_path / "tok")
    with pytest.raises(CheckpointError, match="holds training checkpoints but no model/ yet.*train-tokenizer"):
        nextscale.load_vae(run)


# ============================================================================ other folders
def test_folders_that_hold_no_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="not a transformer model folder .* nor a training run folder"):
        nextscale.load_var(empty)
    with pytest.raises(CheckpointError, match="not a tokenizer model folder"):
        nextscale.load_vae(empty)
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text("steps: 10\n")
    with pytest.raises(CheckpointError, match="training run folder without a model or a checkpoint yet"):
        nextscale.load_var(started)
