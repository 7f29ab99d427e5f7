"""Training metrics: a JSONL file (+ TensorBoard when installed), a progress bar, a loss-curve PNG.

Usage:

    metrics = MetricsLogger("runs/x", enabled=is_main_process())   # writes runs/x/metrics.jsonl
    bar = progress_bar(total=cfg.steps, initial=start_step, desc="train", enabled=is_main_process())
    for step in ...:
        metrics.log(step, loss=loss.item(), lr=lr)        # one JSON object per line: {"step": .., "loss": ..}
        bar.set_postfix(loss=f"{loss.item():.4f}"); bar.update(1)
    bar.close(); metrics.close()
    plot_curves("runs/x/metrics.jsonl", "runs/x/curves.png", keys=["loss", "acc"])

The plot is drawn with Pillow (already a dependency) rather than matplotlib: a few line charts
with axes and tick labels need ~80 lines, not a 40 MB plotting stack. Non-main ranks pass
`enabled=False` and nothing is written or shown.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Iterable, Sequence

from tqdm.auto import tqdm


class MetricsLogger:
    """Appends `{"step": s, "time": t, **metrics}` lines to `folder/metrics.jsonl` (rank 0 only)."""

    def __init__(self, folder: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 filename: str = "metrics.jsonl"):
        self.enabled = enabled
        self.path = Path(folder) / filename
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)
        if tensorboard:
            try:  # optional: only when the tensorboard package is installed
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
            except Exception:
                self._tb = None

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "time": round(time.time(), 3)}
        for k, v in metrics.items():
            record[k] = float(v) if hasattr(v, "item") or isinstance(v, (int, float)) and not isinstance(v, bool) else v
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, smoothing=0.05, **kwargs)


# ---------------------------------------------------------------------------- PNG plot
def plot_curves(jsonl_path: str | os.PathLike, png_path: str | os.PathLike, keys: Sequence[str],
                smooth: int = 1, log_y: Sequence[str] = ()) -> Path:
    """One line chart per metric key (stacked vertically), x = step; `smooth` = moving-average window."""
    from PIL import Image, ImageDraw, ImageFont

    records = read_jsonl(jsonl_path)
    series = []
    for key in keys:
        pts = [(r["step"], float(r[key])) for r in records if isinstance(r.get(key), (int, float))
               and math.isfinite(float(r[key])) and (key not in log_y or float(r[key]) > 0)]
        if smooth > 1 and pts:
            ys = [p[1] for p in pts]
            pts = [(pts[i][0], sum(ys[max(0, i - smooth + 1):i + 1]) / len(ys[max(0, i - smooth + 1):i + 1]))
                   for i in range(len(pts))]
        series.append((key, pts))

    width, panel_h, margin_l, margin_r, margin_t, margin_b = 800, 260, 80, 40, 30, 40
    image = Image.new("RGB", (width, panel_h * max(1, len(series))), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    for i, (key, pts) in enumerate(series):
        top = i * panel_h
        x0, x1, y0, y1 = margin_l, width - margin_r, top + margin_t, top + panel_h - margin_b
        draw.rectangle([x0, y0, x1, y1], outline="black")
        draw.text((x0, top + 8), key + (" (log scale)" if key in log_y else ""), fill="black", font=font)
        if not pts:
            draw.text((x0 + 10, y0 + 10), "no data", fill="gray", font=font)
            continue
        tf = (lambda v: math.log10(v)) if key in log_y else (lambda v: v)
        xs, ys = [p[0] for p in pts], [tf(p[1]) for p in pts]
        xmin, xmax = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        ymin, ymax = min(ys), max(ys)
        if ymax - ymin < 1e-12:
            ymin, ymax = ymin - 0.5, ymax + 0.5
        to_px = lambda x, y: (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))
        for t in range(5):  # ticks and grid
            yv = ymin + (ymax - ymin) * t / 4
            py = y1 - (y1 - y0) * t / 4
            draw.line([x0, py, x1, py], fill=(225, 225, 225))
            label = f"{10 ** yv:.3g}" if key in log_y else f"{yv:.4g}"
            draw.text((4, py - 7), label, fill="black", font=font)
            xv = xmin + (xmax - xmin) * t / 4
            px = x0 + (x1 - x0) * t / 4
            draw.text((px - 10, y1 + 6), f"{xv:.0f}", fill="black", font=font)
        draw.line([to_px(x, y) for x, y in zip(xs, ys)] if len(xs) > 1 else [to_px(xs[0], ys[0])] * 2,
                  fill=(31, 119, 180), width=2)
    draw.text((width // 2 - 15, image.height - 18), "step", fill="black", font=font)
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(png_path)
    return png_path
