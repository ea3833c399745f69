"""Figures of the correlation analysis (PNG, matplotlib without a display).

* :func:`plot_srocc_bars` — |SROCC| per metric with bootstrap CIs and the inter-reader
  variability as a line, one panel per score (the paper's Fig. 1); bars whose signed CI contains
  0 are drawn pale (not significant), and each metric's sign is in its tick label.
* :func:`plot_metric_scatter` — metric value against the mean reader score, one panel per
  metric, coloured (and optionally marked) by grouping columns (the paper's Fig. 2).
* :func:`plot_inter_reader` — each reader against the mean of the other readers (Fig. 4).

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas), so no pyplot
state or display is involved and the functions are safe in worker processes. Axis labels and
titles longer than their panel are wrapped (:func:`wrap_label`), and legends sit outside the
panels, so no text runs into a neighbouring panel or over the data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_dfd.analysis.correlation import ALL_GROUP, srocc
from lightning_dfd.catalog import CATALOG, metric_label

__all__ = [
    "METRIC_LABELS",
    "metric_label",
    "plot_inter_reader",
    "plot_metric_scatter",
    "plot_srocc_bars",
    "wrap_label",
]

_MARKERS = ("o", "x", "s", "^", "D", "v", "P", "*")

#: Axis label (name, unit or range, direction) of every catalog metric: read from the catalog.
METRIC_LABELS: dict[str, str] = {name: spec.axis_label for name, spec in CATALOG.items()}


def wrap_label(text: str, length_inches: float, fontsize: float = 10.0) -> str:
    """Wrap ``text`` into lines that fit ``length_inches`` at ``fontsize`` points.

    The width of a line is estimated at 0.6 em per character (DejaVu Sans averages about 0.55),
    so the wrapped text stays within the length. Lines break after spaces, ``_``, ``/`` and
    ``-`` (column names such as ``lpips_vgg_nolin``); a word longer than a line is split.

    Example:
        >>> print(wrap_label("SSIM (fastMRI 7x7 uniform window; 0-1, higher is better)", 2.0))
        SSIM (fastMRI 7x7 uniform
        window; 0-1, higher is
        better)
        >>> print(wrap_label("noise_metric_with_a_rather_long_name", 2.0))
        noise_metric_with_a_
        rather_long_name
    """
    per_line = max(8, int(length_inches * 72.0 / (0.6 * fontsize)))
    lines: list[str] = []
    current = ""
    for piece in re.split(r"(?<=[ _/-])", str(text)):
        while len(piece) > per_line:  # a word longer than a line
            if current:
                lines.append(current.rstrip())
                current = ""
            lines.append(piece[:per_line])
            piece = piece[per_line:]
        if len((current + piece).rstrip()) > per_line:
            lines.append(current.rstrip())
            current = ""
        current += piece
    lines.append(current.rstrip())
    return "\n".join(line for line in lines if line) or str(text)


def _new_figure(n_panels: int, ncols: int, panel_size: tuple[float, float]):
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    fig.get_layout_engine().set(w_pad=0.06, h_pad=0.06, wspace=0.04, hspace=0.04)
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
    With a ``significant`` column, bars whose signed CI contains 0 are pale; with an ``srocc``
    column each tick label carries the sign of the correlation (``psnr (+)``, ``lpips (-)``);
    with a ``confidence`` column the legend states the CI level.

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
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = table[table["group"].astype(str) == str(group)]
    if rows.empty:
        raise ValueError(f"no rows with group={group!r} in the SROCC table")
    scores = list(dict.fromkeys(rows["score"]))
    n_metrics = rows.groupby("score")["metric"].nunique().max()
    longest = int(rows["metric"].astype(str).str.len().max()) + 4  # + " (+)"
    width = max(4.0, 0.55 * n_metrics + 1.5)
    height = 3.2 + 0.06 * longest  # room for the 45-degree tick labels below the bars
    fig, axes = _new_figure(len(scores), ncols=len(scores), panel_size=(width, height))
    has_significance = "significant" in rows.columns
    solid, pale = "tab:blue", "#b8cfe6"
    for ax, score in zip(axes, scores):
        part = rows[rows["score"] == score]
        centre = part["abs_srocc"].to_numpy(dtype=float)
        err = np.vstack(
            [
                np.clip(centre - part["abs_ci_low"].to_numpy(dtype=float), 0, None),
                np.clip(part["abs_ci_high"].to_numpy(dtype=float) - centre, 0, None),
            ]
        )
        significant = (
            part["significant"].astype(bool).to_numpy() if has_significance else np.ones(len(part), bool)
        )
        positions = np.arange(len(part))
        ax.bar(positions, centre, color=np.where(significant, solid, pale), edgecolor=solid, linewidth=0.6)
        bars = ax.errorbar(positions, centre, yerr=err, fmt="none", ecolor="black", capsize=3, linewidth=1)
        for artist in bars.get_children():
            artist.set_clip_on(False)  # a CI reaching 1 keeps its cap at the top edge
        names = part["metric"].astype(str).tolist()
        if "srocc" in part.columns:
            signs = ["+" if v > 0 else "-" if v < 0 else "0" for v in part["srocc"].to_numpy(dtype=float)]
            names = [f"{name} ({sign})" for name, sign in zip(names, signs)]
        ax.set_xticks(positions, names, rotation=45, ha="right", rotation_mode="anchor")
        level = (irv or {}).get(score, float("nan"))
        low = min(0.0, level - 0.05) if np.isfinite(level) else 0.0
        ax.set_ylim(low, 1)
        if low < 0:
            ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel(wrap_label("|SROCC| with the mean reader score", height - 1.0))
        panel_title = str(score) + (f"  (IRV {level:.2f})" if np.isfinite(level) else "")
        ax.set_title(wrap_label(panel_title, width - 0.8, fontsize=12))
        if np.isfinite(level):
            ax.axhline(level, color="tab:red", linestyle="--", label=f"IRV {level:.2f}")
    confidence = rows["confidence"].iloc[0] if "confidence" in rows.columns else None
    ci_name = f"{100 * confidence:g}% CI" if confidence is not None else "CI"
    handles = [Line2D([], [], color="black", marker="_", markersize=10, linestyle="none",
                      label=f"{ci_name} (bootstrap)")]  # fmt: skip
    if has_significance:
        handles += [
            Patch(facecolor=solid, edgecolor=solid, label=f"signed {ci_name} excludes 0"),
            Patch(facecolor=pale, edgecolor=solid, label=f"signed {ci_name} contains 0 (not significant)"),
        ]
    if any(np.isfinite((irv or {}).get(score, float("nan"))) for score in scores):
        irv_label = "inter-reader variability (IRV)"
        handles.append(Line2D([], [], color="tab:red", linestyle="--", label=irv_label))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2), fontsize="small",
               frameon=False)  # fmt: skip
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
    panel = (3.6, 3.4)
    fig, axes = _new_figure(len(metric_columns), ncols=4, panel_size=panel)
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
        name = wrap_label(str(metric), panel[0] - 0.5, fontsize=11)
        ax.set_title(f"{name}\nSROCC {rho:+.2f}", fontsize=11)
        ax.set_xlabel(wrap_label(f"mean reader score: {score}", panel[0] - 0.6))
        ax.set_ylabel(wrap_label(metric_label(metric), panel[1] - 1.5))
    if color_by or marker_by:
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside upper center", ncols=min(len(handles), 6),
                       fontsize="small", frameon=False)  # fmt: skip
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
    panel = (3.0, 3.0)
    fig, axes = _new_figure(len(readers), ncols=5, panel_size=panel)
    for ax, reader in zip(axes, readers):
        part = table[table[reader_column] == reader]
        rho = (per_reader or {}).get(reader, srocc(part["score"], part["others_mean"]))
        ax.scatter(part["others_mean"], part["score"], s=12, alpha=0.6)
        ax.set_title(wrap_label(f"{reader_column} {reader} (SROCC {rho:.2f})", panel[0] - 0.4, fontsize=12))
        ax.set_xlabel(wrap_label(f"mean of the other readers: {score}".strip(), panel[0] - 0.5))
        ax.set_ylabel(wrap_label(f"reader score: {score}".strip(), panel[1] - 1.2))
    return _save(fig, path, dpi)
