"""Resuming after kills, for both trainers: one metrics line per step, no leftover temp files, damaged checkpoints.

- metrics.jsonl used to repeat the steps between the last checkpoint and a kill (the resumed run logs them again);
  on resume the lines after the checkpoint's step are now dropped (atomic rewrite) before training continues.
- A kill during a checkpoint write left `.step_N.pt.XXXX.tmp`, as large as a checkpoint, that nothing removed;
  a run removes them when it starts.
- A newest checkpoint that does not load (truncated) was an error; resume=auto now falls back to the newest one
  that loads, with a one-line warning, and keeps the damaged file as step_N.pt.damaged. resume=PATH to a damaged
  file stays an error.
The kills are real: SIGKILL of a subprocess training a tiny config, right after a metrics line or in the middle of
writing a checkpoint.
"""

import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import nextscale
from nextscale.training.checkpointing import CheckpointManager, DamagedCheckpointWarning
from nextscale.training.config import load_config
from nextscale.training.metrics import MetricsLogger, drop_records_after, read_jsonl
from nextscale.training.tokenizer_trainer import TokenizerTrainConfig, train_tokenizer
from nextscale.training.var_trainer import train


# ---------------------------------------------------------------------------- the pieces
def test_stale_checkpoint_temp_files_are_removed_and_only_those(tmp_path):
    ckpts = CheckpointManager(tmp_path)
    ckpts.save(2, {"w": torch.ones(2)}, config=None)
    ours = [".step_00000004.pt.k3j_x9a1.tmp", ".step_00000004.yaml.a8b2c1.tmp"]
    theirs = [".other.pt.abc.tmp", "step_00000004.pt.tmp", ".step_00000004.pt.abc.tmp.keep", "notes.tmp",
              ".config.yaml.x1.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x" * 100)
    removed = ckpts.remove_stale_temp_files()
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + ["step_00000002.pt"])
    assert CheckpointManager(tmp_path / "missing").remove_stale_temp_files() == []


def test_load_latest_falls_back_to_the_newest_checkpoint_that_loads(tmp_path):
    ckpts = CheckpointManager(tmp_path, keep_last=5)
    for step in (1, 2, 3):
        ckpts.save(step, {"step": step, "w": torch.full((1000,), float(step))}, config=None)
    (tmp_path / "step_00000002.yaml").write_text("step: 2\n")
    data = (tmp_path / "step_00000003.pt").read_bytes()
    (tmp_path / "step_00000003.pt").write_bytes(data[:len(data) // 2])  # truncated
    (tmp_path / "step_00000002.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(DamagedCheckpointWarning) as caught:
        path, state = ckpts.load_latest()
    assert path.name == "step_00000001.pt" and state["step"] == 1
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("\n" not in m for m in messages)
    assert "step_00000003.pt" in messages[0] and "kept as step_00000003.pt.damaged" in messages[0]
    assert "step_00000002.pt" in messages[1]
    # Kept (not deleted), out of the way of the next resume and of keep-last pruning.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000001.pt", "step_00000002.pt.damaged", "step_00000002.yaml.damaged", "step_00000003.pt.damaged"]
    assert (tmp_path / "step_00000003.pt.damaged").read_bytes() == data[:len(data) // 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ckpts.load_latest()[0].name == "step_00000001.pt"
    # Damaged again at the same step later: the first damaged file is not overwritten.
    (tmp_path / "step_00000003.pt").write_bytes(b"again")
    with pytest.warns(DamagedCheckpointWarning, match=r"kept as step_00000003.pt.damaged.1"):
        ckpts.load_latest()
    # Nothing loads: None (a fresh start), with the warnings.
    (tmp_path / "step_00000001.pt").write_bytes(b"")
    with pytest.warns(DamagedCheckpointWarning):
        assert ckpts.load_latest() is None


def test_metrics_logger_writes_one_line_per_step_when_a_later_step_is_logged_or_flushed(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, loss=1.0)
    logger.log(1, eval_loss=2.0)
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # the step may get more values
    logger.log(2, loss=0.5)  # a later step: step 1's line is complete
    assert [(r["step"], r.get("loss"), r.get("eval_loss")) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 1.0, 2.0)]
    logger.flush()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    logger.flush()  # nothing pending: nothing written
    logger.log(3, loss=0.25)
    logger.close()  # the pending line is not lost
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_drop_records_after_keeps_one_line_per_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4, 5):
        logger.log(step, loss=float(step))
        if step % 2 == 0:
            logger.log(step, eval_loss=10.0 * step)
    logger.close()
    with open(path, "a") as f:
        f.write('{"step": 6, "lo')  # a kill mid-line
    assert drop_records_after(path, 3) == 3  # steps 4 (training and held-out in one line), 5 and the torn line
    assert [(r["step"], sorted(k for k in r if k not in ("step", "time"))) for r in read_jsonl(path)] == [
        (1, ["loss"]), (2, ["eval_loss", "loss"]), (3, ["loss"])]
    assert path.read_text().endswith("}\n")
    before = path.stat().st_mtime_ns, path.read_bytes()
    assert drop_records_after(path, 3) == 0 and (path.stat().st_mtime_ns, path.read_bytes()) == before
    assert drop_records_after(path, 0) == 3 and path.read_text() == ""  # a fresh start: nothing of the old run
    assert drop_records_after(tmp_path / "missing.jsonl", 0) == 0


# ---------------------------------------------------------------------------- real kills of both trainers
KILL_SCRIPT = r"""
import os, signal, sys
import torch
from nextscale.training import metrics

trainer, mode, at, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "after_log":  # killed right after the metrics line of step `at` is written
    flush = metrics.MetricsLogger.flush
    def flush_then_die(self):
        step = (self._pending or {}).get("step")
        flush(self)
        if step == at:
            die()
    metrics.MetricsLogger.flush = flush_then_die
elif mode == "sigterm_after_log":  # SIGTERM (the trainer's handler: finish the step, checkpoint, exit) at `at`
    flush = metrics.MetricsLogger.flush
    def flush_then_term(self):
        step = (self._pending or {}).get("step")
        flush(self)
        if step == at:
            os.kill(os.getpid(), signal.SIGTERM)
    metrics.MetricsLogger.flush = flush_then_term
elif mode == "in_checkpoint_write":  # killed half-way through writing the checkpoint of step `at`
    save = torch.save
    def torn_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == at:
            f.write(b"PK\x03\x04" + b"\0" * 4096)
            f.flush()
            die()
        return save(obj, f, *args, **kwargs)
    torch.save = torn_save

if trainer == "tokenizer":
    from nextscale.training.config import load_config
    from nextscale.training.tokenizer_trainer import TokenizerTrainConfig, train_tokenizer
    train_tokenizer(load_config(TokenizerTrainConfig, None, overrides))
else:
    from nextscale.training.var_trainer import config_from, train
    train(config_from({}, overrides))
"""


def run_killed(tmp_path, trainer, mode, at, overrides):
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), trainer, mode, str(at), *overrides], capture_output=True,
                          text=True, env=env, timeout=600)


def write_images(folder, classes=2, per_class=6, size=8):
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            path = folder / f"class{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = rng.integers(0, 256, (size // 2, size // 2, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
            Image.fromarray(arr).save(path)
    return folder


def tokenizer_overrides(tmp_path, *extra):
    data = tmp_path / "images"
    if not data.exists():
        write_images(data)
    return [f"out_dir={tmp_path / 'run'}", "steps=6", "global_batch=4", "threads=1", "data.kind=image_folder",
            f"data.path={data}", f"data.eval_path={data}", "data.resolution=8", "model.ch=32", "model.ch_mult=1,2",
            "model.num_res_blocks=1", "model.z_channels=8", "model.vocab_size=32", "model.patch_nums=1,2,4",
            "codebook.restart_every=2", "optim.warmup_steps=2", "log_every=1", "eval_every=2", "eval_images=4",
            "checkpoint_every=3", "keep_checkpoints=5", *extra]


def var_overrides(tmp_path, *extra):
    data = tmp_path / "images"
    if not data.exists():
        write_images(data, classes=3, per_class=4)
    if not (tmp_path / "tok").exists():
        torch.manual_seed(0)
        nextscale.VQVAE(nextscale.VQVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, vocab_size=64,
                                              patch_nums=(1, 2, 3, 4))).save_pretrained(tmp_path / "tok")
    return [f"out_dir={tmp_path / 'run'}", f"tokenizer={tmp_path / 'tok'}", "data.kind=image_folder",
            f"data.path={data}", f"data.eval_path={data}", "data.resolution=8", "model.depth=2",
            "model.embed_dim=64", "model.num_heads=2", "model.drop_path_rate=0.0", "global_batch=4", "steps=6",
            "log_every=1", "eval_every=2", "eval_images=4", "checkpoint_every=3", "keep_checkpoints=5",
            "optim.lr=1e-3", "export_at_end=false", "tensorboard=false", "progress=false", "threads=1", *extra]


def steps_of(run, key):
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if key in r]


def leftovers(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["tokenizer", "var"])
def test_killed_twice_then_resumed_logs_each_step_once_and_leaves_no_temp_files(tmp_path, trainer):
    overrides = (tokenizer_overrides if trainer == "tokenizer" else var_overrides)(tmp_path)
    train_key = "rec_loss" if trainer == "tokenizer" else "loss"
    eval_key = "eval_psnr" if trainer == "tokenizer" else "eval_loss"
    run = tmp_path / "run"

    # SIGKILL after the metrics line of step 5: checkpoint 3 is the newest, steps 4-5 are logged.
    r = run_killed(tmp_path, trainer, "after_log", 5, overrides)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert steps_of(run, train_key) == [1, 2, 3, 4, 5] and steps_of(run, eval_key) == [2, 4]
    assert steps_of(run, "step") == [1, 2, 3, 4, 5]
    assert [s for s, _ in CheckpointManager(run / "checkpoints").all()] == [3]

    # Resumed from 3, SIGKILL half-way through writing the checkpoint of step 6 (the last one).
    r = run_killed(tmp_path, trainer, "in_checkpoint_write", 6, overrides)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert "resumed from" in r.stdout + r.stderr
    assert steps_of(run, train_key) == [1, 2, 3, 4, 5, 6]  # once each already: 4-5 were dropped at the resume
    assert len(leftovers(run)) == 1 and leftovers(run)[0].startswith(".step_00000006.pt.")
    assert [s for s, _ in CheckpointManager(run / "checkpoints").all()] == [3]

    # Resumed from 3 again, to the end: one line per step, the temp file gone.
    r = run_killed(tmp_path, trainer, "none", 0, overrides)
    assert r.returncode == 0, r.stderr[-3000:]
    assert steps_of(run, train_key) == [1, 2, 3, 4, 5, 6]
    assert steps_of(run, eval_key) == [2, 4, 6]
    assert steps_of(run, "step") == [1, 2, 3, 4, 5, 6]  # one line per step: training and held-out values together
    assert leftovers(run) == []
    assert [s for s, _ in CheckpointManager(run / "checkpoints").all()] == [3, 6]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["tokenizer", "var"])
def test_sigterm_then_resume_then_rerun_after_the_end_log_each_step_once(tmp_path, trainer):
    overrides = (tokenizer_overrides if trainer == "tokenizer" else var_overrides)(tmp_path)
    run = tmp_path / "run"
    r = run_killed(tmp_path, trainer, "sigterm_after_log", 4, overrides)  # between checkpoints 3 and 6
    assert r.returncode == 0, r.stderr[-3000:]
    # The trainer finishes the step it is in (the tokenizer trainer has read its stop flag for step 4 already: 5).
    stopped = [s for s, _ in CheckpointManager(run / "checkpoints").all()]
    assert stopped[0] == 3 and stopped[-1] in (4, 5) and len(stopped) == 2
    assert steps_of(run, "step") == list(range(1, stopped[-1] + 1))
    for _ in range(2):  # resumed to the end, then run again once finished (it trains and logs nothing)
        r = run_killed(tmp_path, trainer, "none", 0, overrides)
        assert r.returncode == 0, r.stderr[-3000:]
        assert steps_of(run, "step") == [1, 2, 3, 4, 5, 6]
    eval_key = "eval_psnr" if trainer == "tokenizer" else "eval_loss"
    assert steps_of(run, eval_key)[-1] == 6


# ---------------------------------------------------------------------------- damaged newest checkpoint
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return data[:len(data) // 2]


def falls_back_past_a_damaged_checkpoint(tmp_path, run, cfg, metric: str) -> dict:
    """Train 4 steps (checkpoints at 2 and 4) with `run(cfg())`, truncate step 4's checkpoint, then: resume=PATH
    of it is a ValueError naming it; resume=auto sets it aside (kept as .damaged, its bytes unchanged), resumes
    from step 2 and ends at step 4 with one `metric` line per step. -> the summary of the resumed run."""
    run(cfg())
    ckpt_dir = tmp_path / "run" / "checkpoints"
    damaged = truncate(ckpt_dir / "step_00000004.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint .*step_00000004.pt"):
        run(cfg(f"resume={ckpt_dir / 'step_00000004.pt'}", f"out_dir={tmp_path / 'other'}"))
    with pytest.warns(DamagedCheckpointWarning, match=r"step_00000004.pt \(kept as step_00000004.pt.damaged\)"):
        summary = run(cfg())
    assert summary["step"] == 4
    assert (ckpt_dir / "step_00000004.pt.damaged").read_bytes() == damaged
    assert [s for s, _ in CheckpointManager(ckpt_dir).all()] == [2, 4]
    assert steps_of(tmp_path / "run", metric) == [1, 2, 3, 4]
    return summary


def test_tokenizer_resume_auto_falls_back_past_a_damaged_checkpoint(tmp_path):
    cfg = lambda *extra: load_config(TokenizerTrainConfig, None, tokenizer_overrides(
        tmp_path, "steps=4", "checkpoint_every=2", "eval_every=0", *extra))
    falls_back_past_a_damaged_checkpoint(tmp_path, train_tokenizer, cfg, "rec_loss")


def test_var_resume_auto_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
    from nextscale.training.var_trainer import config_from
    cfg = lambda *extra: config_from({}, var_overrides(tmp_path, "steps=4", "checkpoint_every=2", "eval_every=0",
                                                       *extra))
    summary = falls_back_past_a_damaged_checkpoint(tmp_path, train, cfg, "loss")
    assert summary["start_step"] == 2
    assert "resumed from" in capsys.readouterr().out


class _RecordingSummaryWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is not a dependency): records how the
    logger opened it and what it wrote."""
    opened: list = []

    def __init__(self, logdir, purge_step=None):
        self.opened.append({"logdir": logdir, "purge_step": purge_step})
        self.steps = []

    def add_scalar(self, tag, value, step):
        self.steps.append(step)

    def close(self):
        pass


@pytest.fixture
def recording_tensorboard(monkeypatch):
    import types
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = _RecordingSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    _RecordingSummaryWriter.opened = []
    return _RecordingSummaryWriter.opened


def test_a_resumed_run_purges_tensorboard_events_after_its_checkpoint(tmp_path, recording_tensorboard):
    """TensorBoard keeps every event file of a run folder: a resumed run must tell it to drop the killed run's
    events from the resume step on, or the curves show those steps twice (as metrics.jsonl did)."""
    MetricsLogger(tmp_path, resumed_step=0).close()
    MetricsLogger(tmp_path, resumed_step=300).close()
    assert [o["purge_step"] for o in recording_tensorboard] == [None, 301]


def test_the_var_trainer_opens_tensorboard_with_its_resume_step(tmp_path, recording_tensorboard):
    from nextscale.training.var_trainer import config_from, train
    overrides = var_overrides(tmp_path)
    train(config_from({}, [*overrides, "steps=3", "tensorboard=true"]))
    train(config_from({}, [*overrides, "steps=6", "tensorboard=true"]))  # resumes at its step-3 checkpoint
    assert [o["purge_step"] for o in recording_tensorboard] == [None, 4]
