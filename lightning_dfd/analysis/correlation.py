"""Correlation of image-quality metrics with reader scores (the paper's analysis).

Pure functions on :class:`pandas.DataFrame` tables:

* :func:`mean_reader_scores` turns a long-form reader table (key columns, a ``Reader`` column,
  one column per score) into one row per image with the mean over readers.
* :func:`join_tables` joins a per-image metrics table with those means and reports what did not
  match (:class:`JoinReport`), so nothing is dropped silently.
* :func:`srocc` and :func:`bootstrap_srocc_ci` give the Spearman rank-order correlation and a
  seeded bootstrap confidence interval of it (images resampled with replacement; BCa, see below).
* :func:`abs_interval` turns the interval of the signed SROCC into the interval of ``|SROCC|``.
* :func:`inter_reader_variability` correlates each reader with the mean of the other readers and
  averages (the paper's IRV, its Fig. 4).
* :func:`correlation_table` puts it together for every metric x score, optionally per subgroup.

The paper reports ``|SROCC|`` (distances fall while quality rises); every table here carries
the signed value and the absolute value side by side.

Confidence intervals (:data:`CI_RULE`): the interval is computed for the *signed* rho, as a
bias-corrected and accelerated (BCa, Efron 1987) bootstrap interval: the percentile interval
shifted for the bootstrap distribution's median bias and skew (the jackknife's), which in small
samples can otherwise lie wholly on one side of the estimate. The estimate and every resample use
one definition (Pearson correlation of average ranks), and where the bootstrap distribution lies
(almost) entirely on one side of the estimate, so that even BCa would leave it out (a handful of
images), the interval is extended to the estimate: every estimate lies in its interval. The
``|SROCC|`` interval is derived from the signed one (:func:`abs_interval`) rather than
bootstrapped itself: a bootstrap of ``|rho|`` never reaches 0 and is biased away from it (a
signed interval [-0.333, 0.487] gave [0.009, 0.493]). A correlation is *significant* at the
chosen confidence when its signed interval excludes 0.

Infinite and missing values (:data:`INFINITY_RULE`): ``+inf`` ranks above every finite value and
``-inf`` below (PSNR is ``+inf`` for a perfect reconstruction: the best image, not a missing one);
equal infinities tie. Only NaN is left out, pairwise, and :func:`correlation_table` counts the
images left out in its ``n_nan`` column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = [
    "CI_RULE",
    "DuplicateKeyError",
    "JoinReport",
    "SroccInterval",
    "abs_interval",
    "bootstrap_srocc_ci",
    "correlation_table",
    "duplicated_keys",
    "inter_reader_table",
    "inter_reader_variability",
    "join_tables",
    "mean_reader_scores",
    "srocc",
]

ALL_GROUP = "all"
"""Value of the ``group`` column for rows computed on every image."""

INFINITY_RULE = "+inf ranks highest, -inf lowest, NaN is left out (counted in n_nan)"
"""How SROCC treats non-finite values (the ``srocc.csv`` rule)."""

CI_RULE = (
    "BCa bootstrap interval of the signed SROCC (extended to the estimate where the bootstrap "
    "leaves it out); |SROCC| interval = |signed interval|, from 0 when that contains 0; "
    "significant = the signed interval excludes 0"
)
"""How the confidence intervals and the significance flag are made (the ``srocc.csv`` rule)."""

CI_METHODS = ("bca", "percentile")
"""Bootstrap intervals :func:`bootstrap_srocc_ci` can make (``"bca"`` is the default)."""


class DuplicateKeyError(ValueError):
    """A table holds more than one row for a key that must be unique.

    Attributes:
        table: Name of the offending table (for the message).
        keys: The duplicated keys, one row per key (the key columns only).
    """

    def __init__(self, table: str, keys: pd.DataFrame, max_shown: int = 10) -> None:
        self.table = table
        self.keys = keys
        shown = _format_keys(keys, max_shown)
        super().__init__(
            f"{table}: {len(keys)} duplicated key(s) on columns {list(keys.columns)}: {shown}"
        )


@dataclass
class JoinReport:
    """What an inner join of the metrics and the score tables kept and left out.

    Attributes:
        on: The key columns.
        n_matched: Images present in both tables.
        metrics_only: Keys with metrics but no reader scores.
        scores_only: Keys with reader scores but no metrics.
    """

    on: list[str]
    n_matched: int
    metrics_only: pd.DataFrame = field(default_factory=pd.DataFrame)
    scores_only: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def complete(self) -> bool:
        """True when every row of both tables found a partner."""
        return self.metrics_only.empty and self.scores_only.empty

    def summary(self, max_shown: int = 5) -> str:
        """Human-readable lines: counts and the first few unmatched keys."""
        lines = [f"joined on {self.on}: {self.n_matched} image(s) with metrics and scores"]
        for label, keys in (
            ("with metrics but no reader scores", self.metrics_only),
            ("with reader scores but no metrics", self.scores_only),
        ):
            if not keys.empty:
                lines.append(f"{len(keys)} image(s) {label}: {_format_keys(keys, max_shown)}")
        return "\n".join(lines)

    def unmatched_frame(self) -> pd.DataFrame:
        """All unmatched keys in one table with a ``side`` column (for a CSV)."""
        sides = {"metrics_only": self.metrics_only, "scores_only": self.scores_only}
        parts = [keys.assign(side=side) for side, keys in sides.items() if not keys.empty]
        if not parts:
            return pd.DataFrame(columns=[*self.on, "side"])
        return pd.concat(parts, ignore_index=True)


def _format_keys(keys: pd.DataFrame, max_shown: int) -> str:
    def plain(value: object) -> object:
        return value.item() if isinstance(value, np.generic) else value

    rows = [
        "(" + ", ".join(f"{col}={plain(row[col])!r}" for col in keys.columns) + ")"
        for _, row in keys.head(max_shown).iterrows()
    ]
    more = f" ... and {len(keys) - max_shown} more" if len(keys) > max_shown else ""
    return ", ".join(rows) + more


def _require_columns(table: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [col for col in columns if col not in table.columns]
    if missing:
        raise KeyError(f"{name}: missing column(s) {missing}; available: {list(table.columns)}")


def duplicated_keys(table: pd.DataFrame, on: Sequence[str]) -> pd.DataFrame:
    """Return the distinct keys that occur more than once in ``table``.

    Args:
        table: Any table holding the columns ``on``.
        on: Key columns.

    Returns:
        One row per duplicated key, columns ``on``; empty when all keys are unique.

    Example:
        >>> t = pd.DataFrame({"image": ["a", "a", "b"], "x": [1, 2, 3]})
        >>> duplicated_keys(t, ["image"])["image"].tolist()
        ['a']
    """
    on = list(on)
    mask = table.duplicated(subset=on, keep=False)
    return table.loc[mask, on].drop_duplicates().reset_index(drop=True)


def mean_reader_scores(
    scores: pd.DataFrame,
    on: Sequence[str],
    score_columns: Sequence[str],
    reader_column: str = "Reader",
    carry: Sequence[str] = (),
) -> pd.DataFrame:
    """Average a long-form reader table over readers, one row per image.

    Args:
        scores: Long-form table: key columns, ``reader_column``, one column per score.
        on: Key columns that identify an image.
        score_columns: Score columns to average (missing values are skipped).
        reader_column: Column naming the reader.
        carry: Extra per-image columns (e.g. ``Acceleration``) to keep; each must be constant
            within an image.

    Returns:
        One row per image: ``on``, ``carry``, the mean of each score and ``n_readers``.

    Raises:
        KeyError: A named column is absent.
        DuplicateKeyError: A (key, reader) pair occurs more than once.
        ValueError: A ``carry`` column varies within an image.

    Example:
        >>> s = pd.DataFrame({"image": ["a", "a", "b", "b"], "Reader": [1, 2, 1, 2],
        ...                   "Aliasing": [3, 5, 7, 9]})
        >>> mean_reader_scores(s, ["image"], ["Aliasing"])["Aliasing"].tolist()
        [4.0, 8.0]
    """
    on, carry = list(on), [c for c in carry if c not in on]
    _require_columns(scores, [*on, reader_column, *score_columns, *carry], "reader scores")
    dupes = duplicated_keys(scores, [*on, reader_column])
    if not dupes.empty:
        raise DuplicateKeyError("reader scores", dupes)
    grouped = scores.groupby(on, sort=True, dropna=False)
    means = grouped[list(score_columns)].mean()
    means["n_readers"] = grouped[reader_column].nunique()
    for col in carry:
        varying = grouped[col].nunique(dropna=False)
        if (varying > 1).any():
            bad = varying[varying > 1].index.to_frame(index=False)
            raise ValueError(
                f"reader scores: column {col!r} varies within image(s) {_format_keys(bad, 5)}"
            )
        means[col] = grouped[col].first()
    return means.reset_index()[[*on, *carry, *score_columns, "n_readers"]]


def join_tables(
    metrics: pd.DataFrame, mean_scores: pd.DataFrame, on: Sequence[str]
) -> tuple[pd.DataFrame, JoinReport]:
    """Inner-join per-image metrics and mean reader scores, reporting what did not match.

    Args:
        metrics: One row per image: key columns plus metric columns.
        mean_scores: One row per image (e.g. from :func:`mean_reader_scores`).
        on: Key columns present in both tables.

    Returns:
        ``(joined, report)``: the matched rows and a :class:`JoinReport`.

    Raises:
        KeyError: A key column is absent.
        DuplicateKeyError: A key occurs twice in either table.
        ValueError: A key column has incompatible types in the two tables.

    Example:
        >>> m = pd.DataFrame({"image": ["a", "b", "c"], "psnr": [30.0, 25.0, 20.0]})
        >>> s = pd.DataFrame({"image": ["a", "b", "d"], "Aliasing": [8.0, 6.0, 2.0]})
        >>> joined, report = join_tables(m, s, ["image"])
        >>> len(joined), len(report.metrics_only), len(report.scores_only)
        (2, 1, 1)
    """
    on = list(on)
    _require_columns(metrics, on, "metrics")
    _require_columns(mean_scores, on, "reader scores")
    for name, table in (("metrics", metrics), ("reader scores", mean_scores)):
        dupes = duplicated_keys(table, on)
        if not dupes.empty:
            raise DuplicateKeyError(name, dupes)
    overlap = [c for c in mean_scores.columns if c in metrics.columns and c not in on]
    right = mean_scores.drop(columns=overlap)  # per-image columns in both: keep the metrics' copy
    try:
        keys = metrics[on].merge(right[on], on=on, how="outer", indicator=True, sort=True)
    except ValueError as err:  # e.g. object vs int64 key columns
        raise ValueError(f"cannot join on {on}: {err}") from err
    side = keys.pop("_merge")
    report = JoinReport(
        on=on,
        n_matched=int((side == "both").sum()),
        metrics_only=keys.loc[side == "left_only"].reset_index(drop=True),
        scores_only=keys.loc[side == "right_only"].reset_index(drop=True),
    )
    joined = metrics.merge(right, on=on, how="inner", sort=True)
    return joined, report


def srocc(x: np.ndarray | pd.Series, y: np.ndarray | pd.Series) -> float:
    """Signed Spearman rank-order correlation coefficient (what ``scipy.stats.spearmanr`` computes).

    The Pearson correlation of average ranks, computed exactly as for the bootstrap resamples of
    :func:`bootstrap_srocc` (so an estimate and its interval share one definition). Pairs where
    either value is NaN are left out; ``+inf`` ranks highest and ``-inf`` lowest
    (:data:`INFINITY_RULE`). Returns NaN for fewer than 3 pairs or a constant input.

    Example:
        >>> round(srocc([1, 2, 3, 4], [10, 20, 40, 30]), 3)
        0.8
        >>> srocc([20.0, 30.0, float("inf")], [1, 2, 3])  # a perfect reconstruction ranks first
        1.0
    """
    x, y = _finite_pairs(x, y)
    if len(x) < 3 or _constant(x) or _constant(y):
        return float("nan")
    return float(_rank_correlation(x[None], y[None])[0])


def _constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    """The pairs without NaN on either side (infinities kept: they rank at the ends)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    keep = ~np.isnan(x) & ~np.isnan(y)
    return x[keep], y[keep]


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(denom > 0, (a * b).sum(axis=1) / denom, np.nan), -1.0, 1.0)


def _rank_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of ``(rows, n)`` arrays (average ranks; NaN if constant)."""
    return _rowwise_pearson(stats.rankdata(x, axis=1), stats.rankdata(y, axis=1))


def _jackknife_srocc(x: np.ndarray, y: np.ndarray, max_elements: int = 4_000_000) -> np.ndarray:
    """SROCC with each pair left out in turn (``len(x)`` values), in chunks of bounded memory."""
    n = len(x)
    rest = np.arange(n - 1)
    chunk = max(1, max_elements // max(1, n))
    out = []
    for start in range(0, n, chunk):
        left_out = np.arange(start, min(n, start + chunk))
        index = rest[None, :] + (rest[None, :] >= left_out[:, None])  # skips the left-out pair
        out.append(_rank_correlation(x[index], y[index]))
    return np.concatenate(out)


def bootstrap_srocc(
    x: np.ndarray | pd.Series,
    y: np.ndarray | pd.Series,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """SROCC of ``n_boot`` bootstrap resamples of the image pairs (seeded).

    Each resample draws ``len(x)`` pairs with replacement from
    ``numpy.random.default_rng(seed)``; the statistic is Spearman's rho with average ranks for
    ties (what ``scipy.stats.spearmanr`` computes), vectorised over resamples. Resamples with a
    constant side give NaN.

    Example:
        >>> rhos = bootstrap_srocc(np.arange(10.0), np.arange(10.0) ** 2, n_boot=5)
        >>> rhos.tolist()
        [1.0, 1.0, 1.0, 1.0, 1.0]
    """
    x, y = _finite_pairs(x, y)
    if n_boot < 1:
        raise ValueError(f"Argument `n_boot` must be >= 1, but got {n_boot}")
    if len(x) < 3:
        return np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(x), size=(n_boot, len(x)))
    return _rank_correlation(x[index], y[index])


class SroccInterval(NamedTuple):
    """A confidence interval of the signed SROCC and the ``|SROCC|`` interval derived from it.

    Attributes:
        low: Lower bound of the signed interval.
        high: Upper bound of the signed interval.
        abs_low: Lower bound of the ``|SROCC|`` interval (:func:`abs_interval`).
        abs_high: Upper bound of the ``|SROCC|`` interval.
    """

    low: float
    high: float
    abs_low: float
    abs_high: float

    @property
    def significant(self) -> bool:
        """True when the signed interval excludes 0 (False when it is NaN)."""
        return bool(self.low > 0 or self.high < 0)


def abs_interval(low: float, high: float) -> tuple[float, float]:
    """The interval of ``|rho|`` implied by an interval ``[low, high]`` of the signed rho.

    ``|.|`` of the bounds, in order; when the signed interval contains 0 the ``|rho|`` interval
    starts at 0 and ends at ``max(|low|, |high|)``. Any rho in ``[low, high]`` has its ``|rho|``
    in the result. NaN bounds give NaN.

    Example:
        >>> abs_interval(-0.333, 0.487)  # contains 0: not significant
        (0.0, 0.487)
        >>> abs_interval(-0.9, -0.4)  # anti-correlated: |.| of the bounds, in order
        (0.4, 0.9)
    """
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        return float("nan"), float("nan")
    if low > high:
        raise ValueError(f"Argument `low` must be <= `high`, but got [{low}, {high}]")
    if low <= 0.0 <= high:
        return 0.0, max(-low, high)
    return min(abs(low), abs(high)), max(abs(low), abs(high))


def _bca_levels(
    rhos: np.ndarray, estimate: float, jackknife: np.ndarray, confidence: float
) -> tuple[float, float]:
    """BCa quantile levels of the bootstrap distribution (Efron & Tibshirani 1993, 14.3)."""
    # Bias correction: where the estimate lies in the bootstrap distribution (ties count half,
    # kept half a resample inside (0, 1) so that the correction stays finite).
    share = (np.sum(rhos < estimate) + np.sum(rhos <= estimate)) / (2.0 * rhos.size)
    share = np.clip(share, 0.5 / rhos.size, 1.0 - 0.5 / rhos.size)
    z0 = special.ndtri(share)
    # Acceleration: the skewness of the jackknife values.
    jackknife = jackknife[np.isfinite(jackknife)]
    spread = jackknife.mean() - jackknife if jackknife.size else np.zeros(1)
    denominator = 6.0 * np.sum(spread**2) ** 1.5
    accel = float(np.sum(spread**3) / denominator) if denominator > 0 else 0.0
    levels = []
    for z in (special.ndtri((1.0 - confidence) / 2.0), special.ndtri((1.0 + confidence) / 2.0)):
        shifted = z0 + z
        with np.errstate(divide="ignore", invalid="ignore"):
            level = special.ndtr(z0 + shifted / (1.0 - accel * shifted))
        levels.append(float(np.clip(np.nan_to_num(level, nan=special.ndtr(z)), 0.0, 1.0)))
    return levels[0], levels[1]


def bootstrap_srocc_ci(
    x: np.ndarray | pd.Series,
    y: np.ndarray | pd.Series,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "bca",
) -> SroccInterval:
    """Bootstrap confidence interval of the signed SROCC, and the ``|SROCC|`` interval from it.

    The signed interval is a BCa interval (``method="bca"``, default; the module docstring
    says why) or the plain percentile interval (``"percentile"``) of the :func:`bootstrap_srocc`
    resamples that give a finite rho. With ``"bca"`` it is extended, where needed, to contain the
    estimate :func:`srocc` ``(x, y)``. The ``|SROCC|`` interval is :func:`abs_interval` of it.

    Args:
        x: Metric values, one per image.
        y: Scores, one per image.
        n_boot: Number of resamples.
        confidence: Coverage of the interval, in (0, 1).
        seed: Seed of ``numpy.random.default_rng``; equal seeds give equal intervals.
        method: ``"bca"`` or ``"percentile"``.

    Returns:
        ``(low, high, abs_low, abs_high)`` as a :class:`SroccInterval` (with ``.significant``);
        NaN when the estimate is NaN or no resample gives a finite rho.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.arange(50.0); y = x + rng.normal(0, 10, 50)
        >>> ci = bootstrap_srocc_ci(x, y, n_boot=200)
        >>> bool(ci.low <= srocc(x, y) <= ci.high), ci.significant
        (True, True)
        >>> noise = bootstrap_srocc_ci(x, rng.normal(size=50), n_boot=200)
        >>> noise.abs_low, noise.significant  # the signed interval contains 0
        (0.0, False)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"Argument `confidence` must be in (0, 1), but got {confidence}")
    if method not in CI_METHODS:
        raise ValueError(f"Argument `method` must be one of {CI_METHODS}, but got {method!r}")
    x, y = _finite_pairs(x, y)
    estimate = srocc(x, y)
    rhos = bootstrap_srocc(x, y, n_boot=n_boot, seed=seed)
    rhos = rhos[np.isfinite(rhos)]
    if rhos.size == 0 or not np.isfinite(estimate):
        return SroccInterval(*(float("nan"),) * 4)
    if method == "percentile":
        levels = ((1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0)
    else:
        levels = _bca_levels(rhos, estimate, _jackknife_srocc(x, y), confidence)
    low, high = (float(v) for v in np.quantile(rhos, levels))
    if method == "bca":
        low, high = min(low, estimate), max(high, estimate)
    return SroccInterval(low, high, *abs_interval(low, high))


def inter_reader_table(
    scores: pd.DataFrame,
    on: Sequence[str],
    score_column: str,
    reader_column: str = "Reader",
) -> pd.DataFrame:
    """Each reader's score next to the mean score of the other readers, per image.

    Args:
        scores: Long-form reader table.
        on: Key columns that identify an image.
        score_column: The score to compare.
        reader_column: Column naming the reader.

    Returns:
        Long table with ``on``, ``reader_column``, ``score`` (that reader's) and ``others_mean``
        (mean of the other readers of the same image, NaN when there are none).

    Raises:
        DuplicateKeyError: A (key, reader) pair occurs more than once.
    """
    on = list(on)
    _require_columns(scores, [*on, reader_column, score_column], "reader scores")
    dupes = duplicated_keys(scores, [*on, reader_column])
    if not dupes.empty:
        raise DuplicateKeyError("reader scores", dupes)
    table = scores[[*on, reader_column, score_column]].rename(columns={score_column: "score"})
    table = table.dropna(subset=["score"]).reset_index(drop=True)
    grouped = table.groupby(on, sort=False, dropna=False)["score"]
    total, count = grouped.transform("sum"), grouped.transform("count")
    with np.errstate(invalid="ignore", divide="ignore"):
        table["others_mean"] = (total - table["score"]) / (count - 1).where(count > 1)
    return table


def inter_reader_variability(
    scores: pd.DataFrame,
    on: Sequence[str],
    score_column: str,
    reader_column: str = "Reader",
) -> tuple[float, pd.Series]:
    """Inter-reader variability: mean over readers of SROCC(reader, mean of the others).

    For each reader, the SROCC between that reader's scores and the mean score of the other
    readers on the same images (images that reader did not score are left out); the IRV is the
    mean of these per-reader correlations (the paper's Appendix 6.4, Fig. 4: 0.85).

    Args:
        scores: Long-form reader table.
        on: Key columns that identify an image.
        score_column: The score to analyse.
        reader_column: Column naming the reader.

    Returns:
        ``(irv, per_reader)``: the signed mean SROCC and a Series of per-reader SROCCs indexed by
        reader. NaN with fewer than two readers.

    Example:
        >>> s = pd.DataFrame({"image": [0, 0, 1, 1, 2, 2], "Reader": ["A", "B"] * 3,
        ...                   "Aliasing": [1, 2, 3, 4, 5, 6]})
        >>> irv, per_reader = inter_reader_variability(s, ["image"], "Aliasing")
        >>> irv, per_reader.to_dict()
        (1.0, {'A': 1.0, 'B': 1.0})
    """
    table = inter_reader_table(scores, on, score_column, reader_column)
    per_reader = {
        reader: srocc(part["score"], part["others_mean"])
        for reader, part in table.groupby(reader_column, sort=True)
    }
    series = pd.Series(per_reader, name=score_column, dtype=float)
    series.index.name = reader_column
    irv = float(series.mean()) if len(series) >= 2 and series.notna().any() else float("nan")
    return irv, series


def _subsets(data: pd.DataFrame, by: str | None):
    yield None, ALL_GROUP, data
    if by is not None:
        for value, part in data.groupby(by, sort=True, dropna=False):
            yield by, value, part


def correlation_table(
    data: pd.DataFrame,
    metric_columns: Sequence[str],
    score_columns: Sequence[str],
    by: str | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """SROCC with bootstrap CIs for every metric x score, overall and per subgroup.

    Args:
        data: One row per image with metric and (mean) score columns, e.g. from
            :func:`join_tables`.
        metric_columns: Metric columns.
        score_columns: Score columns.
        by: Optional grouping column; adds one row per value of it.
        n_boot: Bootstrap resamples (the same seed for every cell, so cells are comparable).
        confidence: Coverage of the intervals.
        seed: Seed of the bootstrap.

    Returns:
        Columns ``metric, score, by, group, n, n_nan, srocc, ci_low, ci_high, abs_srocc,
        abs_ci_low, abs_ci_high, significant, confidence, p_value``; ``by`` is empty and
        ``group`` is ``"all"`` for the overall rows; ``n`` images were ranked (infinite values
        included), ``n_nan`` left out; ``ci_low, ci_high`` is the BCa bootstrap interval of the
        signed ``srocc`` and ``abs_ci_low, abs_ci_high`` the ``|SROCC|`` interval derived from it
        (:data:`CI_RULE`); ``significant`` (bool): the signed interval excludes 0; ``confidence``:
        the intervals' coverage; ``p_value``: scipy's two-sided test of rho = 0 (t distribution).

    Example:
        >>> d = pd.DataFrame({"psnr": [20.0, 25, 30, 35], "Aliasing": [2.0, 4, 5, 8]})
        >>> correlation_table(d, ["psnr"], ["Aliasing"], n_boot=10)["srocc"].tolist()
        [1.0]
    """
    _require_columns(data, [*metric_columns, *score_columns, *([by] if by else [])], "data")
    rows = []
    for by_column, group, part in _subsets(data, by):
        for score in score_columns:
            for metric in metric_columns:
                x, y = _finite_pairs(part[metric], part[score])
                rho = srocc(x, y)
                p_value = (
                    float(stats.spearmanr(stats.rankdata(x), stats.rankdata(y)).pvalue)
                    if np.isfinite(rho)
                    else float("nan")
                )
                ci = bootstrap_srocc_ci(x, y, n_boot=n_boot, confidence=confidence, seed=seed)
                rows.append(
                    {
                        "metric": metric,
                        "score": score,
                        "by": by_column or "",
                        "group": group,
                        "n": len(x),
                        "n_nan": len(part) - len(x),
                        "srocc": rho,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "abs_srocc": abs(rho),
                        "abs_ci_low": ci.abs_low,
                        "abs_ci_high": ci.abs_high,
                        "significant": ci.significant,
                        "confidence": confidence,
                        "p_value": p_value,
                    }
                )
    return pd.DataFrame(rows)
