"""`make fashion-mnist-model`'s script rebuilds the shipped model's pipeline end to end (every step tiny here):
both tokenizer phases, the token cache, both cycles of the transformer and of the raster-AR baseline, each step
timed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
KIND = {"var": "var", "ar": "raster_ar"}


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_rebuild_script_runs_every_step_and_times_it(tmp_path):
    runs = tmp_path / "rebuild"
    env = dict(os.environ, OMP_NUM_THREADS="1", NEXTSCALE=f"{sys.executable} -m nextscale",
               TOKENIZER_ARGS="steps=4 stop_at_step=3 global_batch=8 log_every=1 eval_every=3 eval_images=16 "
                              "checkpoint_every=3 codebook.restart_until=0",
               TOKENIZE_ARGS="data.max_images=128",
               VAR_ARGS="steps=2 global_batch=8 log_every=1 eval_every=2 eval_images=16 checkpoint_every=2 "
                        "sample.every=0")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "rebuild_fashion_mnist.sh"), str(runs)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    steps = [line.split(":")[0] for line in (runs / "times.txt").read_text().splitlines()]
    assert sorted(steps) == sorted(["tokenizer phase 1", "tokenizer phase 2", "token cache", "transformer",
                                    "raster-AR baseline", "transformer phase 2", "raster-AR baseline phase 2"]), steps
    assert "init_from: " + str(runs / "tokenizer_phase1") in (runs / "tokenizer" / "config.yaml").read_text()
    for model in ("var", "ar", "var_phase2", "ar_phase2"):
        assert (runs / model / "model" / "config.json").is_file()
    # Each second cycle goes on from its own first cycle's weights (and trains them further).
    for model in ("var", "ar"):
        recorded = yaml.safe_load((runs / f"{model}_phase2" / "config.yaml").read_text())
        assert recorded["model"]["init_from"] == str(runs / model) and recorded["model"]["kind"] == KIND[model]
        first = load_file(runs / model / "model" / "model.safetensors")
        second = load_file(runs / f"{model}_phase2" / "model" / "model.safetensors")
        assert first.keys() == second.keys() and not all(torch.equal(first[k], second[k]) for k in first)
    # The transformer carries phase 2's tokenizer, not phase 1's.
    inside = load_file(runs / "var_phase2" / "model" / "tokenizer" / "model.safetensors")
    phase2 = load_file(runs / "tokenizer" / "model" / "model.safetensors")
    phase1 = load_file(runs / "tokenizer_phase1" / "model" / "model.safetensors")
    assert inside.keys() == phase2.keys() and all(torch.equal(inside[k], phase2[k]) for k in inside)
    assert not all(torch.equal(phase1[k], phase2[k]) for k in phase1)


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_sigterm_stops_the_running_step_with_a_checkpoint(tmp_path):
    """`kill` of the script reaches the training it runs: it saves a checkpoint and stops, and nothing is left
    running (a rerun resumes it)."""
    import signal
    import time
    runs = tmp_path / "rebuild"
    env = dict(os.environ, OMP_NUM_THREADS="1", NEXTSCALE=f"{sys.executable} -m nextscale",
               TOKENIZER_ARGS="steps=5000 global_batch=8 log_every=1 eval_every=0 checkpoint_every=0 "
                              "codebook.restart_until=0")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "rebuild_fashion_mnist.sh"), str(runs)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = runs / "tokenizer_phase1" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert "stopped; run the same command again to resume" in err
    assert list((runs / "tokenizer_phase1" / "checkpoints").glob("step_*.pt"))
    assert str(runs) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
