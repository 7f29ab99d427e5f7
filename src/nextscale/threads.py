"""How many CPU threads torch may use: the cores that are free, not all of them.

On a machine that is doing other things, torch's default (one thread per core) makes its threads wait for the one
that shares a core with another program at every parallel step: with one busy core on a 2-core machine, var-d16
sampling ran 2.3x (AMD EPYC) to 4.2x (Intel Xeon) slower than idle, although half the machine was free; one
thread on the free core ran at its idle speed. So by default every command (and `sample()` / `edit()`) uses the
cores the OS lets this process use (affinity, cgroup quota), less those other programs keep busy, measured over
a tenth of a second at the start from `/proc/stat`; at least 1, at most torch's own default; when no core is free,
torch's default (all threads share time with the other programs then, and more threads get more of it). `--threads N` (or
`threads: N` in a training recipe, or the OMP_NUM_THREADS environment variable) chooses instead.

    set_threads(0)        # 0: the free cores; N > 0: N. For the whole process (a command, a trainer)
    announce_threads()    # "threads: 1 (2 cores usable, 1.0 busy with other programs; ...)": the first progress bar
                          # calls it, so a command refused before any work prints only its error
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import sys
import time

MEASURE_SECONDS = 0.1  # /proc/stat counts in 10 ms ticks: 10 per core in this window
CALL_CACHE_SECONDS = 10.0  # sample()/edit() called in a loop measure at most this often
_torch_default: int | None = None  # torch's own thread count, read before nextscale first changes it
_process_choice: "ThreadChoice | None" = None  # set by set_threads (a command, a trainer): calls keep it
_call_cache: tuple[float, int] | None = None  # (monotonic time, threads) of the last measurement for a call
_announcement: str | None = None  # set_threads's line, printed when the work starts


@dataclasses.dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # "requested", "OMP_NUM_THREADS", "free cores"
    usable: int  # cores the OS lets this process use
    busy: float | None = None  # cores kept busy by other programs (None: not measured)

    def describe(self) -> str:
        if self.reason == "requested":
            return f"threads: {self.threads} (requested; {self.usable} cores usable)"
        if self.reason == "OMP_NUM_THREADS":
            return f"threads: {self.threads} (from OMP_NUM_THREADS)"
        busy = "not measured" if self.busy is None else f"{self.busy:.1f} busy with other programs"
        return (f"threads: {self.threads} ({self.usable} cores usable, {busy}; --threads N / threads: N to "
                f"choose)")


def usable_cores() -> int:
    """Cores the OS lets this process run on: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # "max 100000" (no quota) or "200000 100000" (2 cores' worth)
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _cpu_ticks(cpus: set[int] | None) -> tuple[int, int, int] | None:
    """(busy ticks, all ticks, cpus counted) summed over `cpus` from /proc/stat; None where there is none."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    busy = total = counted = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + values[4]
        busy += sum(values) - idle
        total += sum(values)
        counted += 1
    return (busy, total, counted) if counted else None


def _own_ticks() -> int:
    """CPU ticks this process (all its threads) has used: /proc/self/stat utime + stime."""
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def busy_cores(seconds: float = MEASURE_SECONDS) -> float | None:
    """How many cores other programs keep busy, averaged over `seconds` (this process's own use left out);
    None where it cannot be measured (no /proc: macOS, Windows)."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cpus = None
    try:
        before, own_before = _cpu_ticks(cpus), _own_ticks()
        time.sleep(seconds)
        after, own_after = _cpu_ticks(cpus), _own_ticks()
    except (OSError, ValueError, IndexError):
        return None
    if before is None or after is None or after[2] != before[2]:
        return None
    per_cpu = (after[1] - before[1]) / after[2]  # ticks that passed on each core
    if per_cpu <= 0:
        return None
    return max(0.0, (after[0] - before[0] - (own_after - own_before)) / per_cpu)


def torch_default_threads() -> int:
    """torch's own choice (one thread per physical core), as it was before nextscale changed it."""
    global _torch_default
    if _torch_default is None:
        import torch
        _torch_default = torch.get_num_threads()
    return _torch_default


def choose_threads(requested: int | None = 0, world_size: int = 1) -> ThreadChoice:
    """requested > 0: that many. Otherwise OMP_NUM_THREADS when set, else the free cores split between the
    `world_size` processes of this machine (torchrun), at least 1 each, at most torch's default."""
    usable = usable_cores()
    if requested:
        return ThreadChoice(int(requested), "requested", usable)
    default = torch_default_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return ThreadChoice(default, "OMP_NUM_THREADS", usable)
    busy = busy_cores() if usable > 1 else None
    # A core counts as busy from half its time: a program that keeps a core half busy still makes a thread
    # placed there wait half of the time.
    free = usable - (math.floor(busy + 0.5) if busy is not None else 0)
    if free < 1:
        # No core is free: every thread shares a core anyway, and the OS shares time by thread, so fewer threads
        # only get less of it (2-core AMD EPYC, two busy programs: a training step 0.88x with one thread).
        free = usable
    threads = max(1, min(default, free // max(1, world_size)))
    return ThreadChoice(threads, "free cores", usable, busy)


def apply(choice: ThreadChoice) -> None:
    import torch
    torch_default_threads()  # remember torch's default before changing it
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)


def set_threads(requested: int | None = 0, world_size: int = 1, announce: bool = True) -> ThreadChoice:
    """choose_threads + apply, for the whole process (a command, a trainer). Later `sample()` / `edit()` calls keep
    it. With `announce`, a choice nextscale made (not one the user asked for) is printed on stderr once, when the
    work starts (`announce_threads`, which the first progress bar calls): a command refused for a bad input prints
    its one error line and nothing else."""
    global _process_choice, _announcement
    choice = choose_threads(requested, world_size)
    apply(choice)
    _process_choice = choice
    _announcement = choice.describe() if announce and choice.reason == "free cores" else None
    return choice


def announce_threads(show: bool = True) -> None:
    """Prints the pending choice of `set_threads` (once); show=False forgets it (a command that ended without a
    progress bar: the next one, in the same process, does not print it)."""
    global _announcement
    if _announcement and show:
        print(_announcement, file=sys.stderr, flush=True)
    _announcement = None


@contextlib.contextmanager
def free_cores_during_call(device):
    """Around one `sample()` / `edit()` called from Python: torch uses the free cores, then its thread count is
    put back. Does nothing on a GPU, after `set_threads` (a command chose), when OMP_NUM_THREADS is set, or when
    the user has changed torch's thread count (`torch.set_num_threads`): theirs is a choice. The measurement (a
    tenth of a second) is reused for CALL_CACHE_SECONDS, so a loop of small calls does not pay it each time."""
    global _call_cache
    import torch
    if (getattr(device, "type", str(device)) != "cpu" or _process_choice is not None
            or os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads() != torch_default_threads()):
        yield
        return
    now = time.monotonic()
    if _call_cache is None or now - _call_cache[0] > CALL_CACHE_SECONDS:
        _call_cache = (now, choose_threads(0).threads)
    before = torch.get_num_threads()
    if _call_cache[1] != before:
        torch.set_num_threads(_call_cache[1])
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def uses_free_cores(function):
    """Decorates `sample(var, ...)` / `edit(var, ...)`: the call runs in `free_cores_during_call` on var's device."""
    @functools.wraps(function)
    def call(var, *args, **kwargs):
        device = next(var.parameters()).device
        with free_cores_during_call(device):
            return function(var, *args, **kwargs)
    return call
