"""Figures of the correlation analysis (PNG, matplotlib without a display).

* :func:`plot_srocc_bars` — |SROCC| per metric with bootstrap CIs and the inter-reader
  variability as a line, one panel per score (the paper's Fig. 1).
* :func:`plot_metric_scatter` — metric value against the mean reader score, one panel per
  metric, coloured (and optionally marked) by grouping columns (the paper's Fig. 2).
* :func:`plot_inter_reader` — each reader against the mean of the other readers (Fig. 4).

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas), so no pyplot
state or display is involved and the functions are safe in worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_dfd.analysis.correlation import ALL_GROUP, srocc
from lightning_dfd.catalog import CATALOG, metric_label

__all__ = ["METRIC_LABELS", "metric_label", "plot_inter_reader", "plot_metric_scatter", "plot_srocc_bars"]

_MARKERS = ("o", "x", "s", "^", "D", "v", "P", "*")

#: Axis label (name, unit or range, direction) of every catalog metric: read from the catalog.
METRIC_LABELS: dict[str, str] = {name: spec.axis_label for name, spec in CATALOG.items()}


def _new_figure(n_panels: int, ncols: int, panel_size: tuple[float, float]):
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def plot_srocc_bars(
    table: pd.DataFrame,
    path: str | Path,
    irv: Mapping[str, float] | None = None,
    group: object = ALL_GROUP,
    dpi: int = 120,
    title: str | None = None,
) -> Path:
    """Bar chart of |SROCC| per metric with CIs and the IRV line, one panel per score.

    The y axis spans [0, 1], extended below 0 when an IRV is negative so its line stays visible.

    Args:
        table: Output of :func:`lightning_dfd.analysis.correlation.correlation_table`.
        path: PNG file to write.
        irv: Inter-reader variability per score (drawn as a dashed line when finite).
        group: Which rows of ``table`` to draw (``"all"``: every image).
        dpi: Resolution.
        title: Figure title; by default ``"subgroup <group>"`` for a subgroup, none for ``"all"``.

    Returns:
        The written path.

    Example:
        >>> import tempfile
        >>> t = pd.DataFrame({"metric": ["psnr", "lpips"], "score": ["Aliasing"] * 2,
        ...     "group": ["all"] * 2, "abs_srocc": [0.5, 0.8], "abs_ci_low": [0.4, 0.7],
        ...     "abs_ci_high": [0.6, 0.9]})
        >>> out = plot_srocc_bars(t, tempfile.mkdtemp() + "/bars.png", irv={"Aliasing": 0.85})
        >>> out.stat().st_size > 0
        True
    """
    rows = table[table["group"].astype(str) == str(group)]
    if rows.empty:
        raise ValueError(f"no rows with group={group!r} in the SROCC table")
    scores = list(dict.fromkeys(rows["score"]))
    n_metrics = rows.groupby("score")["metric"].nunique().max()
    width = max(4.0, 0.55 * n_metrics + 1.5)
    fig, axes = _new_figure(len(scores), ncols=len(scores), panel_size=(width, 4.0))
    for ax, score in zip(axes, scores):
        part = rows[rows["score"] == score]
        centre = part["abs_srocc"].to_numpy(dtype=float)
        err = np.vstack(
            [
                np.clip(centre - part["abs_ci_low"].to_numpy(dtype=float), 0, None),
                np.clip(part["abs_ci_high"].to_numpy(dtype=float) - centre, 0, None),
            ]
        )
        positions = np.arange(len(part))
        ax.bar(positions, centre, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(positions, part["metric"].astype(str), rotation=45, ha="right")
        level = (irv or {}).get(score, float("nan"))
        low = min(0.0, level - 0.05) if np.isfinite(level) else 0.0
        ax.set_ylim(low, 1)
        if low < 0:
            ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("|SROCC| with mean reader score")
        ax.set_title(str(score))
        if np.isfinite(level):
            ax.axhline(level, color="tab:red", linestyle="--", label=f"IRV {level:.2f}")
            ax.legend(loc="best")
    if title is None and str(group) != ALL_GROUP:
        title = f"subgroup {group}"
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


def plot_metric_scatter(
    data: pd.DataFrame,
    metric_columns: Sequence[str],
    score: str,
    path: str | Path,
    color_by: str | None = None,
    marker_by: str | None = None,
    dpi: int = 120,
) -> Path:
    """Metric value against the mean reader score, one panel per metric.

    Args:
        data: One row per image with the metric and score columns.
        metric_columns: Metrics to draw (one panel each).
        score: Score column on the x axis.
        path: PNG file to write.
        color_by: Optional column whose values pick the colour.
        marker_by: Optional column whose values pick the marker.
        dpi: Resolution.

    Returns:
        The written path.

    Example:
        >>> import tempfile
        >>> d = pd.DataFrame({"psnr": [20.0, 25, 30], "Aliasing": [2.0, 5, 8], "R": [4, 2, 2]})
        >>> out = plot_metric_scatter(d, ["psnr"], "Aliasing", tempfile.mkdtemp() + "/s.png",
        ...                           color_by="R")
        >>> out.stat().st_size > 0
        True
    """
    fig, axes = _new_figure(len(metric_columns), ncols=4, panel_size=(3.6, 3.2))
    colour_values = list(pd.unique(data[color_by])) if color_by else [None]
    marker_values = list(pd.unique(data[marker_by])) if marker_by else [None]
    for ax, metric in zip(axes, metric_columns):
        for c_index, c_value in enumerate(colour_values):
            for m_index, m_value in enumerate(marker_values):
                mask = np.ones(len(data), dtype=bool)
                if color_by:
                    mask &= (data[color_by] == c_value).to_numpy()
                if marker_by:
                    mask &= (data[marker_by] == m_value).to_numpy()
                if not mask.any():
                    continue
                label = ", ".join(
                    f"{col}={val}"
                    for col, val in ((color_by, c_value), (marker_by, m_value))
                    if col
                )
                ax.scatter(
                    data.loc[mask, score],
                    data.loc[mask, metric],
                    s=14,
                    color=f"C{c_index % 10}",
                    marker=_MARKERS[m_index % len(_MARKERS)],
                    label=label or None,
                )
        rho = srocc(data[metric], data[score])
        ax.set_title(f"{metric}  (SROCC {rho:+.2f})")
        ax.set_xlabel(f"mean reader score: {score}")
        ax.set_ylabel(metric_label(metric))
    if color_by or marker_by:
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            axes[0].legend(handles, labels, fontsize="small")
    return _save(fig, path, dpi)


def plot_inter_reader(
    table: pd.DataFrame,
    path: str | Path,
    reader_column: str = "Reader",
    per_reader: Mapping[object, float] | None = None,
    score: str = "",
    dpi: int = 120,
) -> Path:
    """Each reader's score against the mean of the other readers, one panel per reader.

    Args:
        table: Output of :func:`lightning_dfd.analysis.correlation.inter_reader_table`.
        path: PNG file to write.
        reader_column: Column naming the reader.
        per_reader: SROCC per reader for the panel titles (computed when absent).
        score: Score name for the axis labels.
        dpi: Resolution.

    Returns:
        The written path.
    """
    readers = list(dict.fromkeys(sorted(table[reader_column].unique(), key=str)))
    if not readers:
        raise ValueError("no readers to plot")
    fig, axes = _new_figure(len(readers), ncols=5, panel_size=(3.0, 3.0))
    for ax, reader in zip(axes, readers):
        part = table[table[reader_column] == reader]
        rho = (per_reader or {}).get(reader, srocc(part["score"], part["others_mean"]))
        ax.scatter(part["others_mean"], part["score"], s=12, alpha=0.6)
        ax.set_title(f"{reader_column} {reader} (SROCC {rho:.2f})")
        ax.set_xlabel(f"mean of other readers {score}".strip())
        ax.set_ylabel(f"reader score {score}".strip())
    return _save(fig, path, dpi)
