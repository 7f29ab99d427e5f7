"""The README's training journeys, run as they stand in README.md (read from the file, so the document cannot
drift from the code), with step counts small enough for CI appended as overrides.

- "Train on your own images": a synthetic folder of 3 classes -> tokenizer -> token cache -> transformer -> a
  model folder that samples, edits, serves, and is scored by `eval` with a classifier trained on the same folder;
  rerunning the training command resumes instead of starting over.
- "Training recipes": the Fashion-MNIST tokenizer, cache and transformer, from a fresh checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from own_images import make_shapes_folder

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.slow


def section(heading: str) -> str:
    """The text of the README section that starts with `heading` (up to the next `## ` heading)."""
    text = README.read_text()
    start = text.find("\n" + heading + "\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    body = text[start + len(heading) + 2:]
    end = body.find("\n## ")
    return body if end < 0 else body[:end]


def bash_commands(text: str) -> list[str]:
    """The command lines of the ```bash blocks of `text` (continuations joined, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def run_cli(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`nextscale ...` as `python -m nextscale ...` (the interpreter of this test run), one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "nextscale", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"`nextscale {shlex.join(argv)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_answers(argv: list[str], cwd: Path) -> dict:
    """Start `nextscale serve ...` on a free port, read its model summary (/api/info), stop it with SIGTERM."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    log = cwd / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nextscale", *argv, "--port", str(port)], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"`nextscale serve` did not answer:\n{log.read_text()[-2000:]}")
                time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def workspace(tmp_path: Path) -> Path:
    """A folder that looks like a checkout to the README's commands: configs/ is the repository's."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    return tmp_path


# Overrides appended to the README's commands so that CI runs them in seconds; everything else is verbatim.
OWN_IMAGES_CI = {
    "train-tokenizer": ["steps=6", "global_batch=8", "log_every=2", "eval_every=3", "checkpoint_every=3",
                        "eval_images=16", "time_limit_minutes=0"],
    "train": ["steps=6", "global_batch=8", "log_every=2", "eval_every=3", "checkpoint_every=3", "sample.every=0"],
    "train-classifier": ["--epochs", "2"],
    "sample": ["--num-per-class", "4"],
}


def test_train_on_your_own_images_as_the_readme_says(tmp_path):
    commands = bash_commands(section("## Train on your own images"))
    subcommands = [shlex.split(c)[1] for c in commands if c.startswith("nextscale ")]
    for needed in ("train-tokenizer", "tokenize", "train", "sample", "edit", "train-classifier", "eval", "serve"):
        assert needed in subcommands, f"the README's 'Train on your own images' lacks `nextscale {needed}`"
    work = workspace(tmp_path)
    make_shapes_folder(work / "data" / "my_images", per_class=12, size=64)

    outputs = {}
    for line in commands:
        argv = shlex.split(line)
        assert argv[0] == "nextscale", f"unexpected command in the README section: {line}"
        sub = argv[1]
        if sub == "serve":
            info = serve_answers(argv[1:], work)
            assert "circle" in json.dumps(info), f"serve does not show the model's classes: {info}"
            continue
        outputs[sub] = run_cli(argv[1:] + OWN_IMAGES_CI.get(sub, []), work)

    runs = work / "runs"
    assert (runs / "tokenizer_own" / "model" / "config.json").is_file()
    assert (runs / "cache_own" / "header.json").is_file()
    model = runs / "var_own" / "model"
    assert (model / "config.json").is_file() and (model / "tokenizer" / "config.json").is_file()
    assert json.loads((model / "config.json").read_text())["class_names"] == ["blue_circle", "red_circle", "red_square"]
    metrics = [json.loads(l) for l in (runs / "var_own" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in m for m in metrics), "the transformer's held-out loss was not logged"
    assert (runs / "var_own" / "curves.png").is_file()

    report = outputs["eval"].stdout
    for needed in ("class accuracy", "Fréchet distance", "floor", "KID"):
        assert needed in report, f"`nextscale eval` printed no {needed!r}:\n{report}"

    # Running the training command again resumes from the newest checkpoint (2 more steps), not from step 0.
    train_line = next(c for c in commands if shlex.split(c)[1] == "train")
    again = run_cli(shlex.split(train_line)[1:] + OWN_IMAGES_CI["train"][1:] + ["steps=8"], work)
    assert "resumed from" in again.stderr + again.stdout
    steps = [m["step"] for m in (json.loads(l) for l in (runs / "var_own" / "metrics.jsonl").read_text().splitlines())
             if "loss" in m]
    assert steps[-1] == 8 and steps.count(2) == 1, f"the rerun started over: logged steps {steps}"


FMNIST_CI = {
    "train-tokenizer": ["steps=4", "stop_at_step=3", "global_batch=8", "log_every=2", "eval_every=2",
                        "checkpoint_every=2", "eval_images=16", "codebook.restart_until=0"],
    "tokenize": ["data.max_images=256"],
    "train": ["steps=4", "global_batch=8", "log_every=2", "eval_every=2", "checkpoint_every=2", "sample.every=0",
              "eval_images=16"],
}


@pytest.mark.usefixtures("fashion_mnist")
def test_fashion_mnist_recipe_as_the_readme_says(tmp_path):
    commands = [c for c in bash_commands(section("## Training recipes")) if "fashion_mnist" in c
                and not c.startswith("torchrun")]
    subcommands = [shlex.split(c)[1] for c in commands]
    assert subcommands[:5] == ["train-tokenizer", "train-tokenizer", "tokenize", "train", "train"], subcommands
    work = workspace(tmp_path)
    for line in commands[:5]:
        argv = shlex.split(line)[1:]
        run_cli(argv + FMNIST_CI[argv[0]], work)
    assert (work / "runs" / "tokenizer_fmnist" / "model" / "config.json").is_file()
    # Phase 2 started from phase 1 (init_from), and the transformer's tokenizer is phase 2's.
    phase2 = work / "runs" / "tokenizer_fmnist_phase2"
    assert "init_from: runs/tokenizer_fmnist" in (phase2 / "config.yaml").read_text()
    from safetensors.torch import load_file
    inside = load_file(work / "runs" / "var_fmnist" / "model" / "tokenizer" / "model.safetensors")
    trained = load_file(phase2 / "model" / "model.safetensors")
    assert inside.keys() == trained.keys() and all(torch.equal(inside[k], trained[k]) for k in inside)
    assert (work / "runs" / "cache_fmnist_train" / "header.json").is_file()
    assert (work / "runs" / "var_fmnist" / "model" / "config.json").is_file()
    # The transformer's second cycle goes on from the first one's weights.
    phase2 = work / "runs" / "var_fmnist_phase2"
    assert yaml.safe_load((phase2 / "config.yaml").read_text())["model"]["init_from"] == "runs/var_fmnist"
    assert (phase2 / "model" / "config.json").is_file()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_python_snippets_of_the_shipped_model_run():
    """Every README Python block that uses the shipped model (it works offline) runs as written."""
    import nextscale
    blocks = [b for b in python_blocks(README.read_text()) if 'load_pretrained("fashion-mnist")' in b]
    assert len(blocks) >= 2, "the README's shipped-model and per-image-seed snippets are gone"
    for block in blocks:
        namespace = {"nextscale": nextscale}
        exec(compile(block, "README.md", "exec"), namespace)
        out = namespace["out"]
        assert out.images.shape[1:] == (3, 32, 32) and len(out.images) == len(out.labels)
        assert out.labels.max() < 10
