"""Diagnostics plots of a scoring run, rendered as SVG with matplotlib (no display needed).

A scoring run renders its plots right after publishing and stores them (``run_plots``), so
readers never wait for matplotlib (100-400 ms a plot, more on a process's first import). A run
published before that, or whose rendering failed, is rendered on first request and stored.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from models.purchase import purchase_model

if TYPE_CHECKING:
    import psycopg

PLOTS = ("holdout_by_frequency", "p_alive", "tracking")
_LABELS = {"bgnbd": "BG/NBD", "pareto_nbd": "Pareto/NBD"}


def run_plot(conn: psycopg.Connection, run_id: int, name: str) -> bytes | None:
    """A run's plot as SVG: stored, or rendered now and stored; None if the run has no data.

    ``conn`` should be in autocommit mode, or the caller commits.
    """
    from crm_service import score_store

    svg = score_store.stored_plot(conn, run_id, name)
    if svg is not None:
        return svg
    data = score_store.run_diagnostics(conn, run_id)
    if data is None:
        return None
    svg = render(name, data)
    score_store.store_plot(conn, run_id, name, svg)
    return svg


def render(name: str, data: dict[str, Any]) -> bytes:
    """One plot of a run as SVG bytes; ``data`` is the run's diagnostics plus its models."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    try:
        {"holdout_by_frequency": _by_frequency, "p_alive": _p_alive,
         "tracking": _tracking}[name](ax, data)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="svg")
        return buf.getvalue()
    finally:
        plt.close(fig)


def _by_frequency(ax: Any, data: dict[str, Any]) -> None:
    first = next(iter(data["by_frequency"].values()))
    labels = [r["frequency"] for r in first]
    pos = np.arange(len(labels))
    ax.plot(pos, [r["actual"] for r in first], "ko-", label="actual")
    for name, rows in data["by_frequency"].items():
        ax.plot(pos, [r["predicted"] for r in rows], "--", marker="s",
                label=f"{_LABELS.get(name, name)} predicted")
    ax.set_xticks(pos, labels)
    ax.set_xlabel(f"repeat purchases up to {data['calibration_end']} (calibration)")
    ax.set_ylabel(f"mean purchases in the next {data['holdout_days']} days")
    ax.set_title("Held-out purchases by calibration frequency")
    ax.legend()


def _p_alive(ax: Any, data: dict[str, Any]) -> None:
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
    ax.set_xlabel(f"recency: days from first to last purchase (T = {big_t:.0f} days)")
    ax.set_ylabel("repeat purchases")
    ax.set_title(f"P(alive) by frequency and recency ({_LABELS.get(selected, selected)})")


def _tracking(ax: Any, data: dict[str, Any]) -> None:
    weeks = np.array(data["weeks"], dtype="datetime64[D]")
    ax.plot(weeks, data["actual_cumulative"], "k-", label="actual")
    for name, series in data["predicted_cumulative"].items():
        ax.plot(weeks, series, "--", label=f"{_LABELS.get(name, name)} predicted")
    ax.axvline(np.datetime64(data["calibration_end"]), color="grey", linestyle=":",
               label="end of calibration")
    ax.set_ylabel("cumulative repeat purchases")
    ax.set_title("Repeat purchases: tracked vs predicted")
    ax.legend()
    ax.figure.autofmt_xdate()
