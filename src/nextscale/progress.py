"""Progress bars that suit where the output goes.

On a terminal: tqdm's live bar. Anywhere else (a log file, CI, `nohup`, a pipe), a live bar writes one
carriage-return-separated update per step: the own-images journey once wrote 1,435 of them (174 kB) into its
log, which most viewers show as that many lines. There the bar prints a plain line at most every
NON_TERMINAL_SECONDS (and its last state when it closes; a bar done sooner prints nothing), so a log grows with
the run's duration, not its steps.

    from nextscale.progress import progress_bar
    for x in progress_bar(items, desc="tokenizing", unit="img"): ...
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

NON_TERMINAL_SECONDS = 30.0  # NEXTSCALE_PROGRESS_SECONDS overrides it


class _LinesOnly:
    """A file wrapper for tqdm on a non-terminal: each status update becomes one line; clears are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:  # tqdm clears a finished bar with "\r" and spaces: nothing to keep
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """tqdm for a non-terminal: a new postfix or description shows in the next timed line, not in a line of its
    own (tqdm redraws at once on set_postfix / set_description by default, i.e. at every training log step)."""

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def non_terminal_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("NEXTSCALE_PROGRESS_SECONDS", NON_TERMINAL_SECONDS)))
    except ValueError:
        return NON_TERMINAL_SECONDS


def progress_bar(iterable=None, *, total=None, desc: str | None = None, disable: bool = False, file=None,
                 **kwargs) -> tqdm:
    """tqdm with nextscale's defaults: a live bar on a terminal, a line every NON_TERMINAL_SECONDS elsewhere. The
    first bar of a command also prints the thread count the command chose (nextscale.threads)."""
    if not disable:  # (a disabled bar means little work: no line for it either)
        from nextscale.threads import announce_threads
        announce_threads()
    stream = file if file is not None else sys.stderr
    in_notebook = file is None and "ipykernel" in sys.modules  # tqdm.auto draws a widget there
    if in_notebook or is_terminal(stream):
        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, total=total, desc=desc, disable=disable, file=stream, **kwargs)
    seconds = non_terminal_seconds()
    # At most one line every `seconds` (mininterval), the first after `seconds` (delay: a bar done sooner writes
    # nothing, not a 0% and a 100% line); miniters=1 lets the time alone decide (tqdm's monitor thread forces a
    # refresh only when miniters > 1); leave=True keeps the last state as the bar's final line.
    kwargs.update(mininterval=seconds, maxinterval=seconds, delay=seconds, miniters=1, ncols=100, ascii=True,
                  leave=True)
    return _LogBar(iterable, total=total, desc=desc, disable=disable, file=_LinesOnly(stream), **kwargs)
