"""On a shared machine: the thread policy (nextscale.threads) and progress output that suits a log file.

The busy program here is real (a Python busy loop in another process), and the commands run as a user runs them,
their output going to a pipe (not a terminal), as in CI, `nohup` or `> log`.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import time

import pytest

from nextscale import threads
from nextscale.progress import progress_bar


@pytest.fixture
def busy_program():
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)  # running before anything measures
    yield proc
    proc.kill()
    proc.wait()


def run_python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (the thread count and OpenMP settings are per process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def run_cli(argv: list[str], cwd) -> subprocess.CompletedProcess:
    """`nextscale ...` as a user runs it (no OMP_NUM_THREADS), its output to pipes."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    return subprocess.run([sys.executable, "-m", "nextscale", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


# ---------------------------------------------------------------------------- choosing threads
def test_requested_threads_and_omp_num_threads_win_over_the_measurement():
    choice = threads.choose_threads(3)
    assert (choice.threads, choice.reason, choice.busy) == (3, "requested", None)
    assert "requested" in choice.describe()
    r = run_python("from nextscale import threads; c = threads.choose_threads(0); print(c.threads, c.reason)",
                   {"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "OMP_NUM_THREADS"]


@pytest.mark.skipif(threads.usable_cores() < 2, reason="needs 2 usable cores to leave one free")
def test_a_busy_program_is_measured_and_its_core_left_to_it(busy_program):
    busy = threads.busy_cores(0.3)
    assert busy is not None and busy >= 0.7, f"a busy loop measured as {busy} busy cores"
    choice = threads.choose_threads(0)
    assert choice.reason == "free cores" and choice.busy >= 0.7
    free = threads.usable_cores() - math.floor(choice.busy + 0.5)
    if free >= 1:  # the busy program's core is left to it
        assert 1 <= choice.threads <= free
    else:  # (other work on this machine keeps every core busy: no core to leave, torch's default count)
        assert choice.threads == threads.torch_default_threads()
    assert f"{choice.threads} (" in choice.describe() and "busy with other programs" in choice.describe()
    # torchrun's processes share the free cores: never more threads in all than free cores (at least 1 each).
    assert threads.choose_threads(0, world_size=64).threads == 1


def test_nextscale_lowers_openmp_spinning_only_when_it_loads_first_and_the_user_set_nothing():
    code = "import {first}, {second}, os; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert run_python(code.format(first="nextscale", second="torch")).stdout.strip() == "10000"
    assert run_python(code.format(first="torch", second="nextscale")).stdout.strip() == "None"
    assert run_python(code.format(first="nextscale", second="torch"), {"GOMP_SPINCOUNT": "5"}).stdout.strip() == "5"
    assert run_python(code.format(first="nextscale", second="torch"),
                      {"OMP_WAIT_POLICY": "PASSIVE"}).stdout.strip() == "None"


SAMPLE_CALLS = r"""
import torch, nextscale
from nextscale import threads
var = nextscale.load_pretrained("fashion-mnist")
seen = []
var.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
default = torch.get_num_threads()
nextscale.sample(var, labels=[0], seed=0)
print("during", max(seen), "after", torch.get_num_threads(), "default", default)
torch.set_num_threads(default + 1); seen.clear()   # the user's own choice: left alone
nextscale.sample(var, labels=[0], seed=0)
print("chosen", max(seen) - default, torch.get_num_threads() - default)
"""


@pytest.mark.skipif(threads.usable_cores() < 2, reason="needs 2 usable cores to leave one free")
def test_sample_in_python_uses_the_free_cores_then_puts_torchs_count_back(busy_program):
    busy = threads.busy_cores(0.3)
    r = run_python(SAMPLE_CALLS)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict((line.split()[0], line.split()[1:]) for line in r.stdout.splitlines())
    during, after, default = int(lines["during"][0]), int(lines["during"][2]), int(lines["during"][4])
    assert during <= default and after == default  # restored after the call
    if busy < threads.usable_cores() - 0.5:  # a core was free (nothing else keeps them all busy): fewer threads
        assert during <= threads.usable_cores() - 1
    assert lines["chosen"] == ["1", "1"]  # default + 1 during the call and after it


def test_images_do_not_depend_on_the_thread_count():
    """The policy picks the thread count from the machine's load: a seed must still give the same images."""
    code = ("import sys, torch, nextscale, hashlib; torch.set_num_threads(int(sys.argv[1]))\n"
            "out = nextscale.sample(nextscale.load_pretrained('fashion-mnist'), labels=list(range(10)) * 2, seed=3)\n"
            "print(hashlib.sha256(out.images.numpy().tobytes()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True,
                              timeout=300).stdout.strip() for n in (1, 2)}
    assert len(digests) == 1 and len(next(iter(digests))) == 64


def test_commands_print_their_choice_once_when_work_starts_and_refuse_a_bad_thread_count(tmp_path):
    r = run_cli(["sample", "--class", "0", "--num-per-class", "2", "--out", str(tmp_path / "s")], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [line for line in r.stderr.splitlines() if line.startswith("threads: ")] == [
        next(line for line in r.stderr.splitlines() if line.startswith("threads: "))], r.stderr  # one line
    r = run_cli(["sample", "--threads", "1", "--class", "0", "--num-per-class", "1", "--out", str(tmp_path / "t")],
                tmp_path)
    assert r.returncode == 0 and "threads: " not in r.stderr  # the user's own choice is not repeated back
    r = run_cli(["sample", "--threads", "-1", "--out", str(tmp_path / "u")], tmp_path)
    assert r.returncode == 2 and "--threads" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "u").exists()


# ---------------------------------------------------------------------------- progress output
class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_non_terminal_is_a_few_whole_lines_on_a_terminal_a_live_bar(monkeypatch):
    log = io.StringIO()
    for _ in progress_bar(range(5000), desc="work", file=log):
        pass
    assert log.getvalue() == ""  # done within the interval (30 s): nothing, not 5000 updates
    monkeypatch.setenv("NEXTSCALE_PROGRESS_SECONDS", "0.05")
    log = io.StringIO()
    bar = progress_bar(total=100, desc="train", file=log)
    started = time.monotonic()
    for step in range(100):  # as the trainers do: a new postfix at every log step
        time.sleep(0.005)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        bar.update(1)
    bar.close()
    seconds = time.monotonic() - started
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 2 <= len(lines) <= 2 + seconds / 0.05, lines  # one per interval, not one per update or postfix
    assert "100/100" in lines[-1] and "loss=0.0100" in lines[-1]
    monkeypatch.setenv("NEXTSCALE_PROGRESS_SECONDS", "0")  # every update gets a line: the bound is the time
    log = io.StringIO()
    for _ in progress_bar(range(50), desc="work", file=log):
        pass
    assert len(log.getvalue().splitlines()) > 10
    terminal = FakeTerminal()
    for _ in progress_bar(range(50), desc="work", file=terminal, mininterval=0):
        pass
    assert terminal.getvalue().count("\r") > 10  # a live bar redrawn in place


@pytest.mark.slow
def test_a_command_writing_to_a_log_file_keeps_its_progress_output_small(tmp_path):
    """The complaint: a journey's log held 1,435 carriage-return-separated bar updates. Now one batch per image
    (20 batches x 7 scales = 140 updates) writes at most a line per interval (0.2 s here, 30 s by default) and the
    last state."""
    log = tmp_path / "log.txt"
    started = time.monotonic()
    with open(log, "w") as out:
        r = subprocess.run([sys.executable, "-m", "nextscale", "sample", "--class", "0,1", "--num-per-class", "10",
                            "--batch-size", "1", "--out", str(tmp_path / "s")], stdout=out, stderr=subprocess.STDOUT,
                           cwd=tmp_path, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "NEXTSCALE_PROGRESS_SECONDS": "0.2"})
    seconds = time.monotonic() - started
    text = log.read_text()
    assert r.returncode == 0, text[-2000:]
    progress = [line for line in text.splitlines() if line.startswith("sampling")]
    assert "\r" not in text and 1 <= len(progress) <= 2 + seconds / 0.2, text
    assert "140/140" in progress[-1]  # 20 batches x 7 scales
    assert len(text) < 2000, text


@pytest.mark.slow
def test_the_shared_machine_benchmark_compares_the_policies_beside_a_busy_program(tmp_path):
    from pathlib import Path
    import json
    import re
    import shlex
    root = Path(__file__).resolve().parents[1]
    # The README's command (make bench-shared), as the Makefile runs it, with a tiny model and one round.
    readme = (root / "README.md").read_text()
    block = re.search(r"### On a busy machine\n\n```bash\n(.*?)```", readme, re.S).group(1)
    assert block.split()[:2] == ["make", "bench-shared"]
    recipe = re.search(r"^bench-shared:.*\n\t(.*)$", (root / "Makefile").read_text(), re.M).group(1)
    argv = shlex.split(recipe.replace("$(BIN)/python", sys.executable))
    assert argv[1] == "benchmarks/shared_machine.py"
    out = tmp_path / "shared.json"
    r = subprocess.run([*argv, "--smoke", "--busy", "0,1", "--policies", "today,nextscale", "--rounds", "1",
                        "--repeats", "1", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vs today" in r.stdout and "cores usable" in r.stdout
    rows = {(row["busy_programs"], row["policy"]): row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {(0, "today"), (0, "nextscale"), (1, "today"), (1, "nextscale")}
    assert rows[(1, "nextscale")]["spin"] == "10000" and rows[(1, "today")]["spin"] is None
    assert all(row["sampling_s"]["median"] > 0 and row["train_step_s"]["median"] > 0 for row in rows.values())
    busy = rows[(1, "nextscale")]["busy_measured"]
    assert busy >= 0.7  # the busy program was seen
    if busy < threads.usable_cores() - 0.5:  # a core was free (nothing else ran): the policy left the busy one
        assert rows[(1, "nextscale")]["threads"] < rows[(1, "today")]["threads"]
