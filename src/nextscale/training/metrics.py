"""Training metrics: a JSONL file (+ TensorBoard when installed), a progress bar, a loss-curve PNG.

Usage:

    drop_records_after("runs/x/metrics.jsonl", resumed_step)       # on resume (rank 0), before the logger opens
    metrics = MetricsLogger("runs/x", enabled=is_main_process())   # writes runs/x/metrics.jsonl
    bar = progress_bar(total=config.steps, initial=start_step, desc="train", enabled=is_main_process())
    for step in ...:
        metrics.log(step, loss=loss.item(), lr=lr)        # one JSON object per step: {"step": .., "loss": ..}
        metrics.log(step, eval_loss=...)                   # (same step: the same line)
        metrics.flush()                                    # the step's line, before its checkpoint
        bar.set_postfix(loss=f"{loss.item():.4f}"); bar.update(1)
    bar.close(); metrics.close()
    plot_curves("runs/x/metrics.jsonl", "runs/x/curves.png",
                keys=[("loss", "eval_loss"), "acc_s*", "lr"], log_y=["lr"])

The plot is drawn with matplotlib (imported only when a plot is made, on its Agg canvas: the
user's pyplot backend is neither read nor changed). Non-main ranks pass `enabled=False` and nothing
is written or shown.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Iterable, Sequence, Union

from tqdm.auto import tqdm

from nextscale.progress import progress_bar as _progress_bar


class MetricsLogger:
    """Appends one `{"step": s, "time": t, **metrics}` line per step to `folder/metrics.jsonl` (rank 0 only)."""

    def __init__(self, folder: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 filename: str = "metrics.jsonl", resumed_step: int = 0):
        self.enabled = enabled
        self.path = Path(folder) / filename
        self._file = None
        self._tb = None
        self._pending: dict | None = None  # the line of the current step, until it is complete
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            try:  # optional: only when the tensorboard package is installed
                from torch.utils.tensorboard import SummaryWriter
                # A resumed run logs the steps after its checkpoint again: purge_step makes TensorBoard drop
                # the earlier run's events from there on (as drop_records_after does for the JSONL file).
                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"),
                                         purge_step=resumed_step + 1 if resumed_step > 0 else None)
            except Exception:
                self._tb = None

    def log(self, step: int, **metrics) -> None:
        """Adds `metrics` to the line of `step`. Values logged for one step (training, held-out) make one line,
        written when a later step is logged or at `flush()` / `close()`: the trainers flush at the end of each
        step, before its checkpoint, so a checkpoint never holds a step whose line is not on disk."""
        if not self.enabled:
            return
        if self._pending is not None and self._pending["step"] != int(step):
            self.flush()
        if self._pending is None:
            self._pending = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in metrics.items():
            value = float(v) if hasattr(v, "item") or isinstance(v, (int, float)) and not isinstance(v, bool) else v
            self._pending[k] = value
            if self._tb is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(k, value, step)

    def flush(self) -> None:
        """Writes the pending step's line."""
        if self._pending is not None and self._file is not None:
            self._file.write(json.dumps(self._pending) + "\n")
            self._file.flush()
        self._pending = None

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def drop_records_after(path: str | os.PathLike, step: int) -> int:
    """Rewrite a metrics JSONL file without the records of steps after `step` (and without torn lines); returns
    how many lines were dropped. A file with nothing to drop or mend is not rewritten.

    A run killed after its last checkpoint logged steps that the resumed run computes and logs again; called
    with the step it resumes from (0 for a fresh start), it keeps one line per step however
    often the run is killed. Also a torn last line (a kill mid-write) goes, instead of gluing itself to the next
    record. The rewrite is atomic (temp file, then rename): a kill during it leaves the old file."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped, changed = [], 0, False
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                changed = True
                continue
            try:
                record = json.loads(line)
                after = int(record["step"]) > step if isinstance(record, dict) and "step" in record else False
            except (ValueError, TypeError):  # a torn line (cut by a kill), or garbage
                after = True
            if after:
                dropped += 1
            else:
                kept.append(line + b"\n")
                changed = changed or raw != line + b"\n"
    if dropped or changed:
        from nextscale.files import atomic_write_bytes
        atomic_write_bytes(path, b"".join(kept))
    return dropped


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file; a truncated last line (a crash mid-write) is ignored."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return records


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", enabled: bool = True,
                 **kwargs) -> tqdm:
    """tqdm with sensible defaults; `enabled=False` on non-main ranks."""
    return _progress_bar(iterable, total=total, desc=desc, disable=not enabled, smoothing=0.05, **kwargs)


# ---------------------------------------------------------------------------- PNG plot
PanelSpec = Union[str, Sequence[str]]
_NOT_METRICS = {"step", "time"}


def _natural_key(name: str):
    """acc_s2 before acc_s10: digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def _numeric(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _series(records: list[dict], name: str, positive: bool) -> list[tuple[int, float]]:
    """(step, value) sorted by step; a step logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, float] = {}
    for r in records:
        v = _numeric(r.get(name))
        if v is None or "step" not in r or (positive and v <= 0):
            continue
        by_step[int(r["step"])] = v
    return sorted(by_step.items())


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _panel_names(spec: PanelSpec, logged: list[str]) -> tuple[str, list[str]]:
    """A panel spec -> (title, metric names): "loss", ("loss", "eval_loss") or a pattern "acc_s*"."""
    if isinstance(spec, str):
        if "*" in spec or "?" in spec:
            return spec, sorted((k for k in logged if fnmatch.fnmatchcase(k, spec)), key=_natural_key)
        return spec, [spec]
    names = [str(n) for n in spec]
    if not names:
        raise ValueError("plot_curves: an empty tuple of metric names in keys")
    return ", ".join(names), names


def curves_figure(records: Sequence[dict] | str | os.PathLike, keys: Sequence[PanelSpec],
                  log_y: Sequence[str] = (), smooth: int = 1):
    """The matplotlib Figure that `plot_curves` saves (not attached to pyplot; inspect it in tests).

    One panel per entry of `keys`: a metric name, a tuple/list of names (one line each, with a legend), or a
    pattern with `*` (every logged metric that matches, in numeric order: acc_s0, acc_s1, ..., acc_s10).
    A panel whose metrics hold no value is left out; when no panel has data the figure says so. Panels that
    name a metric of `log_y` get a logarithmic y axis (non-positive values dropped). `smooth` > 1 draws the
    moving average over that many logged points for series logged at most steps; series logged rarely (a
    held-out metric every N steps) or with few points are drawn unsmoothed, with markers. x ticks are integer
    steps.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, MaxNLocator
    except ImportError as e:  # a dependency of the package; only missing in a broken install
        raise RuntimeError(f"plotting training curves needs matplotlib (pip install 'matplotlib>=3.5'): {e}") from e

    if isinstance(records, (str, os.PathLike)):
        records = read_jsonl(records)
    if isinstance(keys, str):
        keys = [keys]
    smooth = max(1, int(smooth))
    log_y = set(log_y)
    logged = sorted({k for r in records for k, v in r.items() if k not in _NOT_METRICS and _numeric(v) is not None})
    all_steps = {int(r["step"]) for r in records if isinstance(r.get("step"), (int, float))}

    panels = []  # (title, log, [(name, steps, values, sparse)], [names never logged])
    for spec in keys:
        title, names = _panel_names(spec, logged)
        log = any(n in log_y for n in names) or (isinstance(spec, str) and spec in log_y)
        lines, missing = [], []
        for name in names:
            pts = _series(records, name, positive=log)
            if not pts:
                missing.append(name)
                continue
            sparse = len(pts) <= 20 or len(pts) < 0.5 * len(all_steps)
            steps, values = [p[0] for p in pts], [p[1] for p in pts]
            if smooth > 1 and not sparse:
                values = _moving_average(values, smooth)
            lines.append((name, steps, values, sparse))
        if lines:
            panels.append((title, log, lines, missing))

    ncols = 2 if len(panels) >= 4 else 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(6.4 * ncols if ncols > 1 else 8.0, 2.7 * nrows + 0.3), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_axis_off()
        wanted = ", ".join(_panel_names(s, logged)[0] for s in keys) or "none"
        ax.text(0.5, 0.5, f"no metrics logged yet ({wanted})", ha="center", va="center", color="gray",
                transform=ax.transAxes)
        return fig

    step_label = FuncFormatter(lambda v, _pos: f"{int(round(v))}")
    for i, (title, log, lines, missing) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        many = len(lines) > 10
        cmap = None
        if many:
            from matplotlib import colormaps
            cmap = colormaps["viridis"]
        for j, (name, steps, values, sparse) in enumerate(lines):
            style = {"marker": "o", "markersize": 4} if sparse else {}
            if cmap is not None:
                style["color"] = cmap(j / max(len(lines) - 1, 1))
            ax.plot(steps, values, label=name, linewidth=1.5, **style)
        shown = title + ("  (log scale)" if log else "")
        if smooth > 1 and any(not sparse for *_, sparse in lines):
            shown += f"  (moving average of {smooth})"
        if missing:
            shown += f"\n{', '.join(missing)}: not logged yet"
        ax.set_title(shown, fontsize=10, loc="left")
        if log:
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
        xs = [s for _, steps, _, _ in lines for s in steps]
        if min(xs) == max(xs):
            ax.set_xlim(min(xs) - 1, max(xs) + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
        ax.xaxis.set_major_formatter(step_label)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(which="both", labelsize=8)
        ax.grid(True, alpha=0.3)
        if len(lines) > 1 or missing or isinstance(title, str) and title != lines[0][0]:
            if len(lines) > 6:  # beside the panel, not over the curves
                ax.legend(fontsize=7, ncol=math.ceil(len(lines) / 12), loc="upper left", bbox_to_anchor=(1.01, 1.0))
            else:
                ax.legend(fontsize=7, loc="best")
    return fig


def plot_curves(jsonl_path: str | os.PathLike, png_path: str | os.PathLike, keys: Sequence[PanelSpec],
                log_y: Sequence[str] = (), smooth: int = 1) -> Path:
    """Training curves of a metrics JSONL file as a PNG (see `curves_figure` for what `keys` may hold)."""
    fig = curves_figure(jsonl_path, keys, log_y=log_y, smooth=smooth)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    return png_path
