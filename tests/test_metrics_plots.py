"""Training curves through matplotlib: panel kinds, log axes, integer step ticks, sparse series, empty panels."""

import json
import math

import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from nextscale.training.metrics import curves_figure, plot_curves  # noqa: E402


def write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


@pytest.fixture
def long_run(tmp_path):
    """500 logged steps: loss every step, held-out loss every 50, 12 per-scale accuracies, a tiny rec_loss."""
    records = []
    for s in range(1, 501):
        r = {"step": s, "time": 1000.0 + s, "loss": 3 * math.exp(-s / 100) + 0.01 * (s % 7),
             "lr": 1e-4 * min(1.0, s / 50), "rec_loss": 5.658e-4 * math.exp(-s / 60) + 3.38e-5}
        for k in range(12):
            r[f"acc_s{k}"] = k / 12 + 0.001 * (s % 5)
        if s % 50 == 0:
            r["eval_loss"] = 3 * math.exp(-s / 100) + 0.2
        records.append(r)
    return write_jsonl(tmp_path / "long.jsonl", records)


@pytest.fixture
def short_run(tmp_path):
    """3 records at steps 170..172 (a short resumed run), no held-out metric yet."""
    return write_jsonl(tmp_path / "short.jsonl", [
        {"step": s, "time": 0.0, "loss": 1.0 / s, "rec_loss": 3.38e-5 * s} for s in (170, 171, 172)])


def tick_texts(fig, ax, axis="x"):
    fig.canvas.draw()
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    locs = ax.get_xticks() if axis == "x" else ax.get_yticks()
    return [t.get_text() for t, v in zip(ticks, locs) if lo <= v <= hi and t.get_text()]


def test_panel_kinds_long_run(long_run, tmp_path):
    fig = curves_figure(long_run, [("loss", "eval_loss"), "acc_s*", "lr", "rec_loss", "never_logged"],
                        log_y=["rec_loss"], smooth=5)
    axes = fig.axes
    titles = [ax.get_title(loc="left") for ax in axes]
    assert len(axes) == 4, titles  # the never-logged metric gets no empty panel
    assert not any("never_logged" in t for t in titles)

    pair = axes[0]
    assert [ln.get_label() for ln in pair.get_lines()] == ["loss", "eval_loss"]
    assert pair.get_legend() is not None
    loss_line, eval_line = pair.get_lines()
    assert len(eval_line.get_xdata()) == 10 and eval_line.get_marker() == "o"  # sparse: markers
    assert len(loss_line.get_xdata()) == 500 and loss_line.get_marker() in ("None", None, "")
    assert list(eval_line.get_xdata()) == list(range(50, 501, 50))

    acc = axes[1]
    assert [ln.get_label() for ln in acc.get_lines()] == [f"acc_s{k}" for k in range(12)]  # numeric order

    assert axes[3].get_yscale() == "log" and axes[0].get_yscale() == "linear"

    for ax in axes:
        xt = tick_texts(fig, ax)
        assert len(xt) >= 3 and len(set(xt)) == len(xt), xt
        assert all(t.lstrip("-").isdigit() for t in xt), xt  # steps are integers
        yt = tick_texts(fig, ax, "y")
        assert len(set(yt)) == len(yt), yt

    png = plot_curves(long_run, tmp_path / "out" / "curves.png", [("loss", "eval_loss"), "acc_s*", "lr", "rec_loss"],
                      log_y=["rec_loss"], smooth=5)
    assert png.is_file() and png.name == "curves.png"
    with Image.open(png) as im:
        assert im.width >= 600 and im.height >= 400


def test_smoothing_applies_to_dense_series_only(long_run):
    raw = curves_figure(long_run, [("loss", "eval_loss")], smooth=1).axes[0].get_lines()
    smoothed = curves_figure(long_run, [("loss", "eval_loss")], smooth=25).axes[0].get_lines()
    assert list(raw[1].get_ydata()) == list(smoothed[1].get_ydata())  # held-out points untouched
    raw_y, sm_y = list(raw[0].get_ydata()), list(smoothed[0].get_ydata())
    assert raw_y != sm_y
    assert sm_y[100] == pytest.approx(sum(raw_y[76:101]) / 25)


def test_short_run_has_distinct_integer_ticks(short_run, tmp_path):
    fig = curves_figure(short_run, [("loss", "eval_loss"), "acc_s*", "rec_loss"], log_y=["rec_loss"])
    axes = fig.axes
    assert len(axes) == 2  # acc_s* matched nothing: left out
    assert "eval_loss: not logged yet" in axes[0].get_title(loc="left")
    assert [ln.get_label() for ln in axes[0].get_lines()] == ["loss"]
    for ax in axes:
        xt = tick_texts(fig, ax)
        assert xt and len(set(xt)) == len(xt), xt  # not "170 170 170 171 171"
        assert set(xt) <= {"169", "170", "171", "172", "173"}, xt
    assert plot_curves(short_run, tmp_path / "short.png", ["loss", "rec_loss"], log_y=["rec_loss"]).is_file()


def test_single_record_and_no_data(tmp_path):
    one = write_jsonl(tmp_path / "one.jsonl", [{"step": 10, "time": 0.0, "loss": 2.5}])
    fig = curves_figure(one, ["loss"])
    assert len(fig.axes) == 1
    xt = tick_texts(fig, fig.axes[0])
    assert "10" in xt and len(set(xt)) == len(xt)

    fig = curves_figure(one, ["eval_loss", "acc_s*"])  # nothing logged: one message, no axes with ticks
    assert len(fig.axes) == 1 and not fig.axes[0].axison
    assert any("not logged yet" in t.get_text() or "no metrics" in t.get_text() for t in fig.axes[0].texts)
    assert plot_curves(one, tmp_path / "empty.png", ["eval_loss"]).is_file()


def test_log_axis_drops_nonpositive_and_resumed_steps_keep_last(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"step": 1, "loss": 0.0}, {"step": 2, "loss": 1e-3}, {"step": 3, "loss": float("nan")},
        {"step": 3, "loss": 5e-4}, {"step": 2, "loss": 2e-3}, {"step": 4, "loss": 1e-4}, {"step": 5, "flag": True}])
    line = curves_figure(path, ["loss"], log_y=["loss"]).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [2, 3, 4]
    assert list(line.get_ydata()) == [2e-3, 5e-4, 1e-4]


def test_matplotlib_is_imported_lazily_and_pyplot_never(short_run, tmp_path):
    import subprocess
    import sys
    code = ("import sys, nextscale; assert 'matplotlib' not in sys.modules, 'import nextscale loads matplotlib'\n"
            "from nextscale.training.metrics import plot_curves\n"
            f"plot_curves({str(short_run)!r}, {str(tmp_path / 'c.png')!r}, ['loss'])\n"
            "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "c.png").is_file()


def test_small_values_get_one_consistent_tick_format(long_run):
    """Not '0.0005658' beside '3.38e-05': linear ticks share one format (and a 1e-4 multiplier when tiny)."""
    fig = curves_figure(long_run, ["rec_loss", "lr"])
    for ax in fig.axes:
        labels = tick_texts(fig, ax, "y")
        assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
        cleaned = [t.replace("\u2212", "-") for t in labels]
        assert len({("e" in t, len(t.split(".")[1]) if "." in t else 0) for t in cleaned}) == 1, labels
        assert all(len(t) <= 6 for t in cleaned), labels  # short labels; the power of ten goes to the offset text
        assert ax.yaxis.get_offset_text().get_text() != "", "tiny values are scaled by a shown power of ten"
