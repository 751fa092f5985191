"""Diagnostics plots of a scoring run, rendered as SVG with matplotlib (no display needed).

A scoring run renders its plots right after publishing and stores them (``run_plots``), so
readers never wait for matplotlib (100-400 ms a plot, more on a process's first import). A run
published before that, or whose rendering failed, is rendered on first request and stored.
"""

from __future__ import annotations

import io
import threading
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from models.purchase import label, purchase_model

if TYPE_CHECKING:
    import psycopg

PLOTS = ("holdout_by_frequency", "p_alive", "tracking")
_RENDER_LOCK = threading.Lock()
LANGUAGES = ("en", "zh-Hans")

# The plots' words, in the console's languages. Text is written into the SVG as text (not glyph
# outlines), so the browser draws it with its own fonts, Chinese included.
_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "actual": "actual", "predicted": "{model} predicted",
        "freq_x": "repeat purchases up to {date} (calibration)",
        "freq_y": "mean purchases in the next {days} days",
        "freq_title": "Held-out purchases by calibration frequency",
        "alive_x": "recency: days from first to last purchase (T = {days} days)",
        "alive_y": "repeat purchases", "alive_title": "P(alive) by frequency and recency ({model})",
        "track_y": "cumulative repeat purchases", "track_end": "end of calibration",
        "track_title": "Repeat purchases: tracked vs predicted",
    },
    "zh-Hans": {
        "actual": "实际", "predicted": "{model} 预测",
        "freq_x": "截至 {date} 的重复购买次数（校准期）",
        "freq_y": "未来 {days} 天的平均购买次数",
        "freq_title": "按校准期频次：留出期购买",
        "alive_x": "最近购买：首次到最近一次购买的天数（T = {days} 天）",
        "alive_y": "重复购买次数", "alive_title": "按频次与最近购买的存活概率（{model}）",
        "track_y": "累计重复购买", "track_end": "校准期结束",
        "track_title": "重复购买：实际与预测",
    },
}


def run_plot(conn: psycopg.Connection, run_id: int, name: str,
             lang: str = "en") -> bytes | None:
    """A run's plot as SVG: stored, or rendered now and stored; None if the run has no data.

    ``conn`` should be in autocommit mode, or the caller commits.
    """
    from crm_service.storage import score_reads as reads

    svg = reads.stored_plot(conn, run_id, name, lang)
    if svg is not None:
        return svg
    data = reads.run_diagnostics(conn, run_id)
    if data is None:
        return None
    svg = render(name, data, lang)
    reads.store_plot(conn, run_id, name, lang, svg)
    return svg


def render(name: str, data: dict[str, Any], lang: str = "en") -> bytes:
    """One plot of a run as SVG bytes; ``data`` is the run's diagnostics plus its models."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    import matplotlib.pyplot as plt

    text = _TEXT[lang]
    # Without a CJK font on the server, matplotlib measures Chinese labels with placeholder
    # boxes (about the right width) and warns; the browser draws them with its own fonts.
    # rc_context and warning filters are process-global: one render at a time (CRM_THREADS > 1).
    with _RENDER_LOCK, warnings.catch_warnings(), \
            matplotlib.rc_context({"svg.fonttype": "none"}):
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
        try:
            {"holdout_by_frequency": _by_frequency, "p_alive": _p_alive,
             "tracking": _tracking}[name](ax, data, text)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="svg")
            return buf.getvalue()
        finally:
            plt.close(fig)


def _by_frequency(ax: Any, data: dict[str, Any], text: dict[str, str]) -> None:
    first = next(iter(data["by_frequency"].values()))
    labels = [r["frequency"] for r in first]
    pos = np.arange(len(labels))
    ax.plot(pos, [r["actual"] for r in first], "ko-", label=text["actual"])
    for name, rows in data["by_frequency"].items():
        ax.plot(pos, [r["predicted"] for r in rows], "--", marker="s",
                label=text["predicted"].format(model=label(name)))
    ax.set_xticks(pos, labels)
    ax.set_xlabel(text["freq_x"].format(date=data["calibration_end"]))
    ax.set_ylabel(text["freq_y"].format(days=data["holdout_days"]))
    ax.set_title(text["freq_title"])
    ax.legend()


def _p_alive(ax: Any, data: dict[str, Any], text: dict[str, str]) -> None:
    models = data["models"]
    selected = models["selected"]
    model = purchase_model(selected, models[selected]["params"])
    big_t = max(float(data["holdout_days"]) * 4, 1.0)
    freq = np.arange(0, 21)
    rec = np.linspace(0, big_t, 60)
    x, t_x = np.meshgrid(freq, rec, indexing="ij")
    t_x = np.where(x == 0, 0.0, t_x)
    alive = model.probability_alive(x.astype(float), t_x, np.full_like(t_x, big_t))
    mesh = ax.pcolormesh(rec, freq, alive, shading="auto", vmin=0, vmax=1, cmap="viridis")
    ax.figure.colorbar(mesh, ax=ax, label="P(alive)")
    ax.set_xlabel(text["alive_x"].format(days=f"{big_t:.0f}"))
    ax.set_ylabel(text["alive_y"])
    ax.set_title(text["alive_title"].format(model=label(selected)))


def _tracking(ax: Any, data: dict[str, Any], text: dict[str, str]) -> None:
    weeks = np.array(data["weeks"], dtype="datetime64[D]")
    ax.plot(weeks, data["actual_cumulative"], "k-", label=text["actual"])
    for name, series in data["predicted_cumulative"].items():
        ax.plot(weeks, series, "--",
                label=text["predicted"].format(model=label(name)))
    ax.axvline(np.datetime64(data["calibration_end"]), color="grey", linestyle=":",
               label=text["track_end"])
    ax.set_ylabel(text["track_y"])
    ax.set_title(text["track_title"])
    ax.legend()
    ax.figure.autofmt_xdate()
