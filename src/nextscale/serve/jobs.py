"""One generation at a time: a queue of jobs run in order by a single worker thread.

A job is a function `work(job)` that reports each finished scale with `job.add_scale(...)` and sets
`job.result`. The time limit counts from the moment a job starts running (not while it waits) and is
checked by `add_scale`, that is between scales: a scale that has started finishes first, so a job
may run over the limit by the time of one scale (and of decoding). A stop of the server is checked
there too: the running job ends at its next scale, the waiting ones are answered without running.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from typing import Callable


class QueueFull(Exception):
    """Too many jobs are waiting already, or the server is stopping: no new job is taken."""


class TimeLimitExceeded(Exception):
    """A job ran past the per-request time limit, or the server is stopping."""


class Job:
    def __init__(self, kind: str, work: Callable[["Job"], None], num_scales: int, time_limit: float):
        self.id = secrets.token_hex(8)  # not guessable: one client cannot read another's job by counting
        self.kind = kind
        self.work = work
        self.num_scales = num_scales
        self.status = "queued"  # queued -> running -> done | error
        self.scales: list[dict] = []  # one entry per finished scale, coarse to fine
        self.result: dict | None = None
        self.error: str | None = None
        self.time_limit = time_limit  # seconds from `started`
        self.started = self.finished = None
        self.stop_reason: str | None = None  # set when the server stops: the job ends at its next scale

    def add_scale(self, entry: dict) -> None:
        """Record a finished scale; raise TimeLimitExceeded past the deadline or when the server stops."""
        self.scales.append(entry)
        if len(self.scales) == self.num_scales:
            return
        if self.stop_reason is not None:
            raise TimeLimitExceeded(f"stopped after scale {len(self.scales)} of {self.num_scales}: "
                                    f"{self.stop_reason}")
        if time.monotonic() - self.started > self.time_limit:
            raise TimeLimitExceeded(f"stopped after scale {len(self.scales)} of {self.num_scales}: the time limit "
                                    f"of {self.time_limit:g} s per request was reached (the server's --time-limit)")


class JobQueue:
    def __init__(self, time_limit: float, max_waiting: int = 8, keep: int = 20):
        self.time_limit = time_limit
        self.max_waiting = max_waiting
        self.keep = keep  # finished jobs kept for their clients to read (they hold images: not many)
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.waiting: deque[Job] = deque()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.running: Job | None = None
        self.stopping: str | None = None  # why no more jobs are taken
        self.unread: set[str] = set()  # jobs a stop ended whose clients have not yet read how

    def submit(self, kind: str, work: Callable[[Job], None], num_scales: int) -> Job:
        job = Job(kind, work, num_scales, self.time_limit)
        with self.cond:
            if self.stopping:
                raise QueueFull(f"the server is {self.stopping}: no new request is taken")
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are already waiting (the "
                                f"server's --max-queue): try again when one has finished")
            self.jobs[job.id] = job
            self.waiting.append(job)
            self._forget_old()
            self.cond.notify()
        return job

    def _forget_old(self) -> None:
        finished = [jid for jid, j in self.jobs.items() if j.status in ("done", "error")]
        for jid in finished[:max(0, len(self.jobs) - self.keep)]:
            del self.jobs[jid]

    def status(self, job_id: str, scales_from: int = 0) -> dict | None:
        """What a client polls: status, queue position (1 = next), scales from `scales_from` on, result."""
        with self.cond:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            position = next((i + 1 for i, j in enumerate(self.waiting) if j is job), 0)
            if job.status in ("done", "error"):
                self.unread.discard(job.id)
            seconds = None if job.started is None else round((job.finished or time.monotonic()) - job.started, 2)
            return {"id": job.id, "kind": job.kind, "status": job.status, "position": position,
                    "scales_done": len(job.scales), "num_scales": job.num_scales,
                    "scales": job.scales[scales_from:], "scales_from": scales_from,
                    "result": job.result, "error": job.error,
                    "seconds": seconds}

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="nextscale-worker", daemon=True)
            self.thread.start()

    def stop(self, reason: str = "stopping") -> None:
        """Take no more jobs; answer the waiting ones without running them; end the running one at its next
        scale. `reason` completes "the server is ..." in the messages."""
        with self.cond:
            if self.stopping:
                return
            self.stopping = reason
            now = time.monotonic()
            for job in self.waiting:
                job.status, job.work, job.finished = "error", None, now
                job.error = f"the server is {reason}: this request was not run; send it again once it is back"
                self.unread.add(job.id)
            self.waiting.clear()
            if self.running is not None:
                self.running.stop_reason = f"the server is {reason}"
                self.unread.add(self.running.id)
            self.cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker to end (after stop: the running job's scale under way finishes first);
        -> whether it has."""
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                job = self.waiting.popleft()
                job.status = "running"
                job.started = time.monotonic()
                self.running = job
            try:
                job.work(job)
                status, error = "done", None
            except (TimeLimitExceeded, ValueError) as e:
                status, error = "error", str(e)
            except Exception as e:  # the server stays up; the client sees the message, the console the traceback
                traceback.print_exc(file=sys.stderr)
                status, error = "error", f"internal error: {type(e).__name__}: {e}"
            with self.cond:
                job.status, job.error = status, error
                job.work = None  # frees the request's inputs
                job.finished = time.monotonic()
                self.running = None
