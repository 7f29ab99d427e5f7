"""Transformer training: token cache, optimizer, overfitting, DDP parity, exact resume, bad input.

Everything runs on a tiny random tokenizer (8x8 images, 4 scales, 64 codes) and real image files.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
from nextscale.config_schema import ConfigError
from nextscale.model_folder import CheckpointError
from nextscale.training.checkpointing import CheckpointManager, load_checkpoint
from nextscale.training.metrics import read_jsonl
from nextscale.training.optim import build_adamw, param_groups, scaled_lr, warmup_then_linear_decay
from nextscale.training.token_cache import TokenCache, TokenCacheError, build_token_cache, iterate_array_batches
from nextscale.training.var_config import ModelConfig
from nextscale.training.var_model import build_model, load_tokenizer
from nextscale.training.var_trainer import DataOrder, export_checkpoint, train

TOKENIZER = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=64, patch_nums=(1, 2, 3, 4))
MODEL = {"depth": 2, "embed_dim": 64, "num_heads": 2, "drop_path_rate": 0.0}


def make_tokenizer(seed=0, **overrides):
    torch.manual_seed(seed)
    return nextscale.VQVAE(nextscale.VQVAEConfig(**{**TOKENIZER, **overrides})).eval()



@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tokenizer folder and an image folder of 3 classes x 8 images (8x8 RGB PNGs)."""
    root = tmp_path_factory.mktemp("var_training")
    make_tokenizer().save_pretrained(root / "tok")
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "images" / f"class{c}").mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            arr[:, :, c] = 255 - 20 * i  # a class-dependent colour, so classes differ
            Image.fromarray(arr).save(root / "images" / f"class{c}" / f"{i}.png")
    return root


def base_config(workdir, out, **extra):
    cfg = {"out_dir": str(out), "tokenizer": str(workdir / "tok"),
           "data": {"kind": "image_folder", "path": str(workdir / "images"), "resolution": 8, "hflip": False},
           "model": dict(MODEL), "global_batch": 8, "steps": 4, "log_every": 1, "checkpoint_every": 0,
           "resume": "never", "export_at_end": False, "tensorboard": False, "progress": False,
           "threads": 1}  # tiny models: one thread is faster, and robust to a busy machine
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def losses(out, key="loss"):
    return {r["step"]: r[key] for r in read_jsonl(Path(out) / "metrics.jsonl") if key in r}


# ============================================================================ token cache
def test_token_cache_holds_the_tokenizers_tokens_and_flips(tmp_path):
    vae = make_tokenizer()
    images = torch.rand(10, 3, 8, 8) * 2 - 1
    labels = torch.arange(10) % 3
    build_token_cache(vae, iterate_array_batches(images, labels, 4), 10, tmp_path / "c", flip=True, progress=False,
                      classes=["a", "b", "c"])
    cache = TokenCache.open(tmp_path / "c")
    assert cache.tokens.dtype == np.uint16 and cache.tokens.shape == (10, 1 + 4 + 9 + 16)
    assert isinstance(cache.tokens, np.memmap)
    assert torch.equal(torch.from_numpy(cache.tokens[:].astype(np.int64)), torch.cat(vae.encode_tokens(images), 1))
    flipped = torch.cat(vae.encode_tokens(images.flip(-1)), 1)
    assert torch.equal(torch.from_numpy(cache.tokens_flip[:].astype(np.int64)), flipped)
    assert not torch.equal(flipped, torch.cat(vae.encode_tokens(images), 1))
    tokens, got_labels = cache.rows(np.array([3, 1]), flipped=np.array([True, False]))
    assert torch.equal(tokens[0], flipped[3]) and torch.equal(got_labels, torch.tensor([0, 1]))
    assert cache.header["num_classes"] == 3 and cache.header["tokenizer"]["config_hash"] == vae.config.identity_hash()
    cache.check_tokenizer(vae)  # the same tokenizer passes
    with pytest.raises(TokenCacheError, match="weights differ"):
        cache.check_tokenizer(make_tokenizer(seed=1))
    with pytest.raises(TokenCacheError, match="architecture differs.*vocab_size"):
        cache.check_tokenizer(make_tokenizer(vocab_size=32))
    with pytest.raises(TokenCacheError, match="already exists"):
        build_token_cache(vae, iterate_array_batches(images, labels, 4), 10, tmp_path / "c", progress=False)


def test_interrupted_cache_build_leaves_no_cache(tmp_path):
    def batches():
        yield torch.zeros(2, 3, 8, 8), torch.zeros(2)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_token_cache(make_tokenizer(), batches(), 4, tmp_path / "c", progress=False)
    assert list(tmp_path.iterdir()) == []


# ============================================================================ optimizer, schedule, data order
def test_no_weight_decay_groups_follow_the_spec():
    var = nextscale.VAR(nextscale.VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=3, vocab_size=64,
                                            vae_channels=8, patch_nums=(1, 2), shared_adaln=True))
    decay, no_decay = param_groups(var, 0.05)
    assert set(no_decay["names"]) >= {"pos_start", "pos_1LC", "lvl_embed.weight", "blocks.0.attn.scale_mul_1H11",
                                      "blocks.0.ada_gss", "blocks.0.attn.q_bias", "head.bias", "word_embed.bias"}
    assert set(decay["names"]) >= {"class_emb.weight", "word_embed.weight", "head.weight",
                                   "blocks.1.attn.mat_qkv.weight", "shared_ada_lin.1.weight"}
    assert not set(decay["names"]) & set(no_decay["names"])
    opt = build_adamw(var, 1e-3, 0.05)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.defaults["betas"] == (0.9, 0.95)


def test_learning_rate_schedule():
    assert scaled_lr(1e-4, 768) == pytest.approx(3e-4)
    f = [warmup_then_linear_decay(s, 10, 110, warmup_start=0.0, final=0.0) for s in range(111)]
    assert f[0] == 0 and f[5] == pytest.approx(0.5) and f[10] == 1.0
    assert f[60] == pytest.approx(0.5) and f[110] == 0.0
    assert all(a <= b for a, b in zip(f[:10], f[1:11])) and all(a >= b for a, b in zip(f[10:], f[11:]))


def test_data_order_is_independent_of_world_size():
    order = DataOrder(num_items=50, global_batch=8, seed=3)
    assert order.steps_per_epoch == 6
    for step in (0, 5, 6, 13):
        one = np.concatenate([mb[0] for mb in order.micro_batches(step, 0, 1, 1)])
        two = np.concatenate([mb[0] for r in range(2) for mb in order.micro_batches(step, r, 2, 2)])
        assert np.array_equal(one, two) and len(set(one.tolist())) == 8
    epoch0 = np.concatenate([order.micro_batches(s, 0, 1, 1)[0][0] for s in range(6)])
    assert len(set(epoch0.tolist())) == 48  # no item twice within an epoch
    assert not np.array_equal(order.micro_batches(0, 0, 1, 1)[0][0], order.micro_batches(6, 0, 1, 1)[0][0])


# ============================================================================ training behaviour
def test_overfits_8_images_and_greedy_sampling_reproduces_their_tokens(workdir, tmp_path):
    """8 images, each its own class: the loss goes to ~0 and top-1 sampling without guidance regenerates them."""
    vae = nextscale.load_vae(workdir / "tok")
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    build_token_cache(vae, iterate_array_batches(images, torch.arange(8), 8), 8, tmp_path / "cache", progress=False)
    cfg = base_config(workdir, tmp_path / "run", token_cache=str(tmp_path / "cache"), steps=120, log_every=10,
                      model={"class_drop_prob": 0.0, "embed_dim": 128},
                      optim={"lr": 3e-3, "weight_decay": 0.0, "warmup_steps": 10})
    summary = train(cfg)
    assert summary["loss"] < 0.05 and summary["acc"] == 1.0
    log = losses(tmp_path / "run")
    assert log[10] > 1.0  # it did have to learn
    export_checkpoint(summary["checkpoint"], tmp_path / "model")
    var = nextscale.load_var(tmp_path / "model")
    out = nextscale.sample(var, labels=list(range(8)), seed=0, cfg=0.0, top_k=1)
    expected = vae.encode_tokens(images)
    for k in range(4):
        assert torch.equal(out.tokens[k], expected[k]), f"scale {k} differs"


def test_gradient_accumulation_matches_one_big_batch(workdir, tmp_path):
    common = dict(model={"class_drop_prob": 0.0}, steps=3, optim={"lr": 1e-3})
    train(base_config(workdir, tmp_path / "big", **common))
    train(base_config(workdir, tmp_path / "accum", micro_batch=2, **common))
    a = load_checkpoint(CheckpointManager(tmp_path / "big" / "checkpoints").latest())["model"]
    b = load_checkpoint(CheckpointManager(tmp_path / "accum" / "checkpoints").latest())["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert losses(tmp_path / "big")[1] == pytest.approx(losses(tmp_path / "accum")[1], abs=1e-6)


def test_weight_decay_schedule_and_no_decay_group(workdir, tmp_path):
    summary = train(base_config(workdir, tmp_path / "run", steps=5,
                                optim={"weight_decay": 0.05, "final_weight_decay": 0.09}))
    groups = load_checkpoint(summary["checkpoint"])["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(0.09) and groups[1]["weight_decay"] == 0.0


def test_writes_samples_curves_and_a_loadable_model(workdir, tmp_path):
    cfg = base_config(workdir, tmp_path / "run", export_at_end=True, sample={"every": 2, "per_class": 2},
                      checkpoint_every=2, keep_checkpoints=1)
    summary = train(cfg)
    run = tmp_path / "run"
    assert (run / "samples" / "step_00000002.png").is_file() and (run / "curves.png").is_file()
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["step_00000004.pt"]  # keep_last=1
    assert (run / "checkpoints" / "step_00000004.yaml").is_file() and (run / "config.yaml").is_file()
    var = nextscale.load_var(summary["model"])
    assert var.tokenizer is not None and var.num_classes == 3
    assert var.extra_config["class_names"] == ["class0", "class1", "class2"]
    record = read_jsonl(run / "metrics.jsonl")[-1]
    assert {"loss", "acc", "lr", "img_per_s", "acc_s0", "acc_s3", "loss_s3", "grad_norm"} <= set(record)
    assert Image.open(run / "samples" / "step_00000004.png").size[0] > 8


def test_raster_ar_baseline_trains_with_the_same_loop(workdir, tmp_path):
    cfg = base_config(workdir, tmp_path / "run", model={"kind": "raster_ar"}, export_at_end=False,
                      sample={"per_class": 1})
    summary = train(cfg)
    assert summary["step"] == 4 and np.isfinite(summary["loss"])
    assert Path(summary["samples"]).is_file()
    state = load_checkpoint(summary["checkpoint"])
    assert state["model_kind"] == "raster_ar" and state["model_config"]["seq_len"] == 30
    export_checkpoint(summary["checkpoint"], tmp_path / "model")
    model = nextscale.load_raster_ar(tmp_path / "model")
    assert model.tokenizer is not None
    torch.testing.assert_close(model.state_dict()["head.weight"], state["model"]["head.weight"])
    with pytest.raises(nextscale.CheckpointError, match="holds a 'raster_ar' model, not a 'var'"):
        nextscale.load_var(tmp_path / "model")


def test_raster_ar_baseline_starts_from_a_trained_baseline(workdir, tmp_path):
    """model.init_from for the baseline: the second learning-rate cycle of the README's VAR-vs-AR comparison."""
    cfg = base_config(workdir, tmp_path / "run", model={"kind": "raster_ar"}, export_at_end=True)
    train(cfg)
    trained = nextscale.load_raster_ar(tmp_path / "run")
    vae = load_tokenizer(str(workdir / "tok"))
    model = build_model(ModelConfig(**MODEL, kind="raster_ar", init_from=str(tmp_path / "run")), vae, num_classes=3)
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)
    with pytest.raises(ConfigError, match="does not match the model to train.*depth 2 vs 3"):
        build_model(ModelConfig(**{**MODEL, "depth": 3}, kind="raster_ar", init_from=str(tmp_path / "run")), vae, 3)
    nextscale.VAR(nextscale.VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=3, vocab_size=64,
                                      vae_channels=8, patch_nums=(1, 2, 3, 4))).save_pretrained(tmp_path / "var")
    with pytest.raises(ConfigError, match="model.init_from.*'var' model, not a 'raster_ar'"):
        build_model(ModelConfig(**MODEL, kind="raster_ar", init_from=str(tmp_path / "var")), vae, 3)


# ============================================================================ multi-process and resume
def run_cli(args, env_extra=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout)


def write_yaml(path, cfg):
    import yaml
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def one_process_run(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_process")
    cfg = write_yaml(out / "one.yaml", base_config(workdir, out / "run", model={"class_drop_prob": 0.0}, steps=3,
                                                   optim={"lr": 1e-3}, eval_every=2,
                                                   data={"eval_path": str(workdir / "images")}))
    r = run_cli(["-m", "nextscale.cli", "train", str(cfg)])
    assert r.returncode == 0, r.stderr
    return out / "run"


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process(workdir, tmp_path, one_process_run, parallel):
    """torchrun --nproc_per_node 2 (gloo) with the same global batch ends with the same parameters."""
    two = write_yaml(tmp_path / "two.yaml", base_config(workdir, tmp_path / "two", model={"class_drop_prob": 0.0},
                                                        steps=3, optim={"lr": 1e-3}, parallel=parallel, eval_every=2,
                                                        data={"eval_path": str(workdir / "images")}))
    r = run_cli(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "nextscale.cli", "train", str(two)])
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("trained 3 steps") == 1  # only rank 0 reports
    a = load_checkpoint(one_process_run / "checkpoints" / "step_00000003.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "step_00000003.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    assert a["model"].keys() == b["model"].keys()
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    assert diff < 1e-5
    la, lb = losses(one_process_run), losses(tmp_path / "two")
    assert la.keys() == lb.keys() == {1, 2, 3}
    assert all(abs(la[s] - lb[s]) < 1e-5 for s in la)
    assert la[3] < la[1] - 1e-3  # the parameters did move
    # Held-out metrics (at step 2 and at the end), each process evaluating half of the images.
    ea, eb = losses(one_process_run, "eval_loss"), losses(tmp_path / "two", "eval_loss")
    assert ea.keys() == eb.keys() == {2, 3}
    assert all(abs(ea[s] - eb[s]) < 1e-5 for s in ea)


KILL_SCRIPT = """
import os, signal, sys
from nextscale.training.var_trainer import train, config_from
cfg, kill_at, sig = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def hook(step, record):
    if step == kill_at:
        os.kill(os.getpid(), sig)
summary = train(config_from(cfg), on_step=hook)
sys.exit(128 + summary["stopped_by_signal"] if summary["stopped_by_signal"] else 0)
"""


@pytest.mark.slow
def test_resume_after_sigkill_and_sigterm_continues_exactly(workdir, tmp_path):
    """Class dropout and drop path on, shuffled data with flips: resumed losses equal uninterrupted ones."""
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    common = dict(steps=9, checkpoint_every=3, model={"class_drop_prob": 0.5, "drop_path_rate": 0.1},
                  data={"hflip": True, "eval_path": str(workdir / "images")}, optim={"lr": 1e-3, "warmup_steps": 2},
                  resume="auto", eval_every=2, eval_images=8)
    ref_cfg = write_yaml(tmp_path / "ref.yaml", base_config(workdir, tmp_path / "ref", **common))
    assert run_cli([str(script), str(ref_cfg), "-1", "9"]).returncode == 0
    reference = losses(tmp_path / "ref")
    assert sorted(reference) == list(range(1, 10))

    # SIGKILL right after step 5: the newest checkpoint is step 3; steps 4.. are recomputed.
    cfg = write_yaml(tmp_path / "run.yaml", base_config(workdir, tmp_path / "run", **common))
    r = run_cli([str(script), str(cfg), "5", str(int(signal.SIGKILL))])
    assert r.returncode == -signal.SIGKILL
    assert max(losses(tmp_path / "run")) == 5
    assert [s for s, _ in CheckpointManager(tmp_path / "run" / "checkpoints").all()] == [3]
    # SIGTERM during step 7 of the resumed run: it finishes the step, checkpoints step 7 and exits 143.
    r = run_cli([str(script), str(cfg), "7", str(int(signal.SIGTERM))])
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert CheckpointManager(tmp_path / "run" / "checkpoints").latest().name == "step_00000007.pt"
    r = run_cli([str(script), str(cfg), "-1", "9"])
    assert r.returncode == 0, r.stderr
    records = [rec for rec in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "loss" in rec]
    # One line per step: the resume from step 3 dropped the killed run's lines of steps 4-5 before training them again.
    assert [rec["step"] for rec in records] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    for rec in records:
        assert rec["loss"] == reference[rec["step"]], f"step {rec['step']}: {rec['loss']} vs {reference[rec['step']]}"
    # Held-out evaluation draws no random numbers: the resumed run's held-out losses are the reference's too.
    ref_eval, run_eval = losses(tmp_path / "ref", "eval_loss"), losses(tmp_path / "run", "eval_loss")
    assert sorted(ref_eval) == [2, 4, 6, 8, 9] and run_eval == ref_eval


# ============================================================================ bad input (clear errors before training)
def test_empty_dataset_is_an_error(workdir, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = base_config(workdir, tmp_path / "run", data={"path": str(tmp_path / "empty")})
    with pytest.raises(ValueError, match="no readable image"):
        train(cfg)


def test_label_outside_the_models_classes_is_an_error(workdir, tmp_path):
    with pytest.raises(ConfigError, match=r"outside the model's classes 0..1.*num_classes to at least 3"):
        train(base_config(workdir, tmp_path / "run", model={"num_classes": 2}))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tokenizer_that_does_not_match_the_transformer_is_an_error(workdir, tmp_path):
    """Fine-tuning a transformer with a tokenizer of another vocabulary / channels / scales."""
    var = nextscale.VAR(nextscale.VARConfig(depth=2, embed_dim=64, num_heads=2, num_classes=3, vocab_size=32,
                                            vae_channels=4, patch_nums=(1, 2, 3, 4)))
    var.save_pretrained(tmp_path / "pretrained")
    cfg = base_config(workdir, tmp_path / "run", model={"init_from": str(tmp_path / "pretrained")})
    with pytest.raises(ConfigError, match=r"vocab_size 32 vs 64; vae_channels 4 vs 8"):
        train(cfg)
    make_tokenizer(patch_nums=(1, 2, 4)).save_pretrained(tmp_path / "tok3")
    cfg = base_config(workdir, tmp_path / "run", tokenizer=str(tmp_path / "tok3"))
    cfg["model"]["patch_nums"] = [1, 2, 3, 4]
    with pytest.raises(ConfigError, match="does not fit the tokenizer"):
        train(cfg)


def test_image_size_that_does_not_fit_the_tokenizer_is_an_error(workdir, tmp_path):
    with pytest.raises(ConfigError, match="data.resolution=8 data.channels=3"):
        train(base_config(workdir, tmp_path / "run", data={"resolution": 16}))


def test_cache_from_another_tokenizer_is_an_error(workdir, tmp_path):
    other = make_tokenizer(seed=5)
    build_token_cache(other, iterate_array_batches(torch.zeros(8, 3, 8, 8), torch.zeros(8), 8), 8,
                      tmp_path / "cache", progress=False)
    with pytest.raises(TokenCacheError, match="made by another tokenizer: weights differ"):
        train(base_config(workdir, tmp_path / "run", token_cache=str(tmp_path / "cache")))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupt_images_are_skipped_and_counted(workdir, tmp_path):
    import shutil
    shutil.copytree(workdir / "images", tmp_path / "images")
    (tmp_path / "images" / "class1" / "broken.png").write_bytes(b"not a png at all")
    cfg = base_config(workdir, tmp_path / "run", data={"path": str(tmp_path / "images"), "verify": True}, steps=1)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        summary = train(cfg)
    assert summary["skipped_images"] == 1 and summary["step"] == 1


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(workdir, tmp_path, monkeypatch):
    cfg = base_config(workdir, tmp_path / "run", steps=2)
    train(cfg)
    good = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    before = good.read_bytes()

    def failing_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train({**cfg, "steps": 4, "resume": "auto"})
    monkeypatch.undo()
    assert good.read_bytes() == before and load_checkpoint(good)["step"] == 2
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")) == ["step_00000002.pt"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))  # the partial file was removed


def test_cli_reports_bad_config_in_one_line(workdir, tmp_path):
    r = run_cli(["-m", "nextscale.cli", "train", f"tokenizer={workdir / 'tok'}", "model.depht=3"])
    assert r.returncode == 2
    assert "unknown config key(s) in model: model.depht" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["-m", "nextscale.cli", "train", "steps=1"])
    assert r.returncode == 2 and "no tokenizer given" in r.stderr


def test_cli_tokenize_train_export(workdir, tmp_path):
    data = [f"tokenizer={workdir / 'tok'}", "data.kind=image_folder", f"data.path={workdir / 'images'}",
            "data.resolution=8"]
    r = run_cli(["-m", "nextscale.cli", "tokenize", *data, "--flip", "--out", str(tmp_path / "cache")])
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "cache" / "header.json").read_text())["num_images"] == 24
    r = run_cli(["-m", "nextscale.cli", "train", *data, f"token_cache={tmp_path / 'cache'}", "data.hflip=true",
                 f"out_dir={tmp_path / 'run'}", "steps=2", "global_batch=8", "model.depth=1", "model.embed_dim=32",
                 "model.num_heads=1", "export_at_end=false", "progress=false", "tensorboard=false"])
    assert r.returncode == 0, r.stderr
    r = run_cli(["-m", "nextscale.cli", "export", str(tmp_path / "run"), str(tmp_path / "model")])
    assert r.returncode == 0, r.stderr
    var = nextscale.load_var(tmp_path / "model")
    assert var.config.depth == 1 and var.extra_config["trained_steps"] == 2


# ============================================================================ held-out metrics, config vocabulary, run folders
def test_held_out_loss_and_accuracy_every_eval_every_steps_and_at_the_end(workdir, tmp_path):
    cfg = base_config(workdir, tmp_path / "run", steps=5, log_every=2, eval_every=2, eval_images=6,
                      data={"eval_path": str(workdir / "images")})
    summary = train(cfg)
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]
    for r in evals:
        assert r["eval_loss"] > 0 and 0 <= r["eval_acc"] <= 1
        assert {f"eval_acc_s{k}" for k in range(4)} <= set(r)
        # Per-scale held-out loss (the scaling benchmark's last-scale loss): the overall loss is their
        # token-weighted mean, so it lies between the smallest and the largest.
        scale_losses = [v for k, v in r.items() if k.startswith("eval_loss_s")]
        assert len(scale_losses) == len([k for k in r if k.startswith("eval_acc_s")]) >= 4
        assert all(v > 0 for v in scale_losses)
        assert min(scale_losses) - 1e-6 <= r["eval_loss"] <= max(scale_losses) + 1e-6
    assert summary["eval_loss"] == evals[-1]["eval_loss"]


def test_held_out_fraction_of_the_training_folder(workdir, tmp_path, capsys):
    # No held-out data: a one-line notice and no eval records.
    train(base_config(workdir, tmp_path / "none", steps=2, eval_every=1))
    assert "held-out metrics skipped: no held-out images" in capsys.readouterr().out
    assert not any("eval_loss" in r for r in read_jsonl(tmp_path / "none" / "metrics.jsonl"))
    # data.eval_fraction holds out a quarter of each class (2 of 8): 18 training images, 6 held out.
    summary = train(base_config(workdir, tmp_path / "frac", steps=2, eval_every=1, data={"eval_fraction": 0.25}))
    assert "held-out metrics on 6 images" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(tmp_path / "frac" / "metrics.jsonl") if "eval_loss" in r] == [1, 2]
    assert load_checkpoint(summary["checkpoint"])["data"]["num_items"] == 18


def test_overrides_that_would_not_take_effect_are_refused(workdir, tmp_path):
    from nextscale.training.var_trainer import config_from
    recipe = base_config(workdir, tmp_path / "run", optim={"lr": 6e-4})
    with pytest.raises(ConfigError, match=r"^optim.base_lr has no effect while optim.lr=0.0006 is set; set optim.lr "
                                          r"instead \(or optim.lr=null to use base_lr\)$"):
        config_from(recipe, ["optim.base_lr=1e-3"])
    assert config_from(recipe, ["optim.base_lr=1e-3", "optim.lr=null"]).optim.base_lr == 1e-3
    assert config_from(base_config(workdir, tmp_path / "run"), ["optim.base_lr=1e-3"]).optim.base_lr == 1e-3
    with pytest.raises(ConfigError, match="epochs has no effect while steps=4 is set"):
        config_from(recipe, ["epochs=3"])
    assert config_from(recipe, ["epochs=3", "steps=null"]).epochs == 3
    with pytest.raises(ConfigError, match="optim.warmup_epochs has no effect while optim.warmup_steps=5 is set"):
        config_from(recipe, ["optim.warmup_steps=5", "optim.warmup_epochs=1"])
    fmnist = {"tokenizer": "x", "data": {"path": None}}
    with pytest.raises(ConfigError, match="data.eval_path has no effect: Fashion-MNIST"):
        config_from(fmnist, [f"data.eval_path={workdir / 'images'}"])
    # The same check guards the YAML recipes on the command line.
    r = run_cli(["-m", "nextscale.cli", "train", str(Path(__file__).parents[1] / "configs" / "var_fashion_mnist.yaml"), "optim.base_lr=1e-3",
                 "--print-config"])
    assert r.returncode == 2 and "optim.base_lr has no effect while optim.lr=0.0006 is set" in r.stderr


def test_var_config_accepts_the_tokenizer_trainers_spellings():
    from nextscale.training.var_trainer import config_from
    cfg = config_from({}, ["precision=bf16", "resume=false"])
    assert (cfg.precision, cfg.resume) == ("bfloat16", "never")
    assert config_from({}, ["resume=true"]).resume == "auto"
    with pytest.raises(ConfigError, match="precision must be float32, bfloat16 or float16"):
        config_from({}, ["precision=fp8"])


def test_tokenizer_may_be_a_train_tokenizer_run_folder(workdir, tmp_path):
    import shutil
    shutil.copytree(workdir / "tok", tmp_path / "tok_run" / "model")
    (tmp_path / "tok_run" / "checkpoints").mkdir()
    summary = train(base_config(workdir, tmp_path / "run", tokenizer=str(tmp_path / "tok_run"), steps=1))
    assert summary["step"] == 1
    shutil.copytree(workdir / "tok", tmp_path / "legacy_run" / "export")  # runs of older versions
    assert train(base_config(workdir, tmp_path / "run2", tokenizer=str(tmp_path / "legacy_run"), steps=1))["step"] == 1
    (tmp_path / "early_run" / "checkpoints").mkdir(parents=True)  # a tokenizer run before its first checkpoint
    with pytest.raises(CheckpointError, match="training run folder without a model or a checkpoint yet"):
        train(base_config(workdir, tmp_path / "run3", tokenizer=str(tmp_path / "early_run")))
    (tmp_path / "early_run" / "checkpoints" / "step_00000010.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="run the same `nextscale train-tokenizer` command again"):
        train(base_config(workdir, tmp_path / "run3", tokenizer=str(tmp_path / "early_run")))


def test_tokenize_writes_to_the_configs_token_cache_and_accepts_a_run_folder(workdir, tmp_path, capsys):
    import shutil

    from nextscale.cli import main
    shutil.copytree(workdir / "tok", tmp_path / "tok_run" / "model")
    data = [f"tokenizer={tmp_path / 'tok_run'}", f"data.path={workdir / 'images'}", "data.resolution=8"]
    assert main(["tokenize", *data, f"token_cache={tmp_path / 'cache'}"]) == 0
    assert json.loads((tmp_path / "cache" / "header.json").read_text())["num_images"] == 24
    assert main(["tokenize", *data]) == 2
    assert "pass --out FOLDER or set token_cache=FOLDER" in capsys.readouterr().err
    # Rerunning the same command keeps the cache; other settings or another tokenizer ask for --overwrite.
    before = (tmp_path / "cache" / "tokens.npy").stat().st_mtime_ns
    assert main(["tokenize", *data, f"token_cache={tmp_path / 'cache'}"]) == 0
    assert "is up to date" in capsys.readouterr().out
    assert (tmp_path / "cache" / "tokens.npy").stat().st_mtime_ns == before
    assert main(["tokenize", *data, f"token_cache={tmp_path / 'cache'}", "--flip"]) == 2
    assert "was made without flipped copies: pass --overwrite" in capsys.readouterr().err
    assert main(["tokenize", *data, f"token_cache={tmp_path / 'cache'}", "data.eval_fraction=0.25"]) == 2
    assert "was made from other images or settings" in capsys.readouterr().err
    make_tokenizer(seed=3).save_pretrained(tmp_path / "other_tok")
    assert main(["tokenize", *data, f"token_cache={tmp_path / 'cache'}", f"tokenizer={tmp_path / 'other_tok'}"]) == 2
    assert "was made by another tokenizer: pass --overwrite" in capsys.readouterr().err
    assert main(["tokenize", *data, f"token_cache={tmp_path / 'cache'}", "--flip", "--overwrite"]) == 0
    assert json.loads((tmp_path / "cache" / "header.json").read_text())["flip"] is True


def test_held_out_metrics_need_the_data_the_cache_was_made_from(workdir, tmp_path, capsys):
    from nextscale.cli import main
    data = [f"tokenizer={workdir / 'tok'}", f"data.path={workdir / 'images'}", "data.resolution=8"]
    assert main(["tokenize", *data, "data.eval_fraction=0.25", "--out", str(tmp_path / "cache")]) == 0
    # The cache's own folder, the same held-out images left out: evaluated.
    cfg = base_config(workdir, tmp_path / "run", token_cache=str(tmp_path / "cache"), steps=1, eval_every=1,
                      data={"eval_fraction": 0.25})
    train(cfg)
    assert "held-out metrics on 6 images" in capsys.readouterr().out
    # Another held-out fraction than the cache's: the held-out images may be in the cache.
    train({**cfg, "out_dir": str(tmp_path / "run1"), "data": {**cfg["data"], "eval_fraction": 0.5}})
    assert "the token cache was made with data.eval_fraction=0.25, not 0.5" in capsys.readouterr().out
    # data.* left at Fashion-MNIST while the cache holds an image folder: no held-out metrics from the wrong data.
    cfg = base_config(workdir, tmp_path / "run2", token_cache=str(tmp_path / "cache"), steps=1, eval_every=1,
                      data={"kind": "auto", "path": None, "resolution": 8})
    train(cfg)
    out = capsys.readouterr().out
    assert "held-out metrics skipped: the token cache was made from the image folder" in out
    assert not any("eval_loss" in r for r in read_jsonl(tmp_path / "run2" / "metrics.jsonl"))
