r"""``lightning-dfd correlate``: SROCC of image-quality metrics with radiologist reader scores.

Reproduces the paper's analysis: the Spearman rank-order correlation (SROCC) between each
metric and the mean reader score, a seeded bootstrap CI, the inter-reader variability (IRV),
SROCC per subgroup, and the figures (|SROCC| bars with the IRV line, metric-vs-score scatter,
reader-vs-others scatter).

Example:
    lightning-dfd correlate --metrics results.csv --scores reader_scores.csv \
        --on volume,slice --score-columns Aliasing,Cartilage/Meniscus --by Acceleration \
        --out runs/correlate/
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import pandas as pd

from lightning_dfd.analysis import correlation as corr
from lightning_dfd.analysis.commands import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL

__all__ = ["add_parser", "format_table", "run"]

_PREFIX = "lightning-dfd correlate"
DEFAULT_OUT = Path("runs") / "correlate"


def _csv_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return items


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``correlate`` sub-command."""
    parser = subparsers.add_parser(
        "correlate",
        help="SROCC of metrics with reader scores, bootstrap CIs, inter-reader variability",
        description=(
            "Correlate a per-image metrics table (as written by `lightning-dfd evaluate`) with a "
            "long-form reader table (key columns, a Reader column, one column per score). "
            "Writes srocc.csv, irv.csv, per_image.csv, unmatched.csv (if any), PNG figures and "
            "figures.csv (which figure shows which score / subgroup). The printed table marks with "
            "* the correlations whose CI excludes 0. SROCC ranks +inf highest "
            "and -inf lowest (PSNR of a perfect reconstruction); NaN is left out and counted "
            "(n_nan)."
        ),
    )
    parser.add_argument("--metrics", required=True, type=Path, help="per-image metrics CSV")
    parser.add_argument("--scores", required=True, type=Path, help="long-form reader-score CSV")
    parser.add_argument(
        "--on",
        type=_csv_list,
        default=None,
        help="key columns identifying an image (default: the columns both tables share, "
        "except the reader and score columns)",
    )
    parser.add_argument(
        "--score-columns",
        type=_csv_list,
        default=None,
        help="score columns (default: every numeric non-key column of the reader table)",
    )
    parser.add_argument(
        "--metric-columns",
        type=_csv_list,
        default=None,
        help="metric columns (default: every numeric non-key column of the metrics table)",
    )
    parser.add_argument("--reader-column", default="Reader", help="column naming the reader")
    parser.add_argument(
        "--by", default=None, help="grouping column: SROCC and IRV per subgroup as well"
    )
    parser.add_argument(
        "--color-by", default=None, help="column colouring the scatter plots (default: --by)"
    )
    parser.add_argument("--marker-by", default=None, help="column picking scatter markers")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.95,
        help="coverage of the BCa bootstrap CIs of the signed SROCC; a correlation is marked "
        "significant when its CI excludes 0 (|SROCC| CIs are derived from the signed ones)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT}, git-ignored)",
    )
    parser.add_argument("--no-plots", action="store_true", help="write the CSVs only")
    parser.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="instead of failing on duplicated keys, report them, leave every row of those "
        "images out (both tables keep their other images) and analyse the rest",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 when rows of either table found no partner",
    )
    parser.set_defaults(func=run)


def _note(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    table = pd.read_csv(path)
    if table.empty:
        raise ValueError(f"{what} file has no rows: {path}")
    return table


def first_non_numeric(table: pd.DataFrame, column: str) -> tuple[int, object] | None:
    """``(row, value)`` of the first value of ``column`` that is not a number, else None.

    ``row`` counts data rows from 1 (the CSV line is ``row + 1``); empty cells are missing
    values, not errors; ``inf``/``-inf`` are numbers.

    Example:
        >>> first_non_numeric(pd.DataFrame({"s": ["3", "", "n/a", "x"]}), "s")
        (3, 'n/a')
    """
    values = table[column]
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return None
    parsed = pd.to_numeric(values, errors="coerce")
    blank = values.isna() | values.astype(str).str.strip().eq("")
    bad = parsed.isna() & ~blank
    if not bad.any():
        return None
    position = int(bad.to_numpy().argmax())
    return position + 1, values.iloc[position]


def _require_numeric(table: pd.DataFrame, columns: list[str], what: str, path: Path) -> pd.DataFrame:
    """Raise naming the column and its first bad value; return the table with numbers parsed."""
    for col in columns:
        found = first_non_numeric(table, col)
        if found is not None:
            row, value = found
            raise ValueError(
                f"{what}: column {col!r} must hold numbers, but row {row} (line {row + 1} of "
                f"{path}) holds {value!r}"
            )
        if not pd.api.types.is_numeric_dtype(table[col]):
            table = table.assign(**{col: pd.to_numeric(table[col], errors="coerce")})
    return table


def _numeric_columns(table: pd.DataFrame, exclude: set[str]) -> list[str]:
    return [
        col
        for col in table.columns
        if col not in exclude and pd.api.types.is_numeric_dtype(table[col])
    ]


def _guess_score_columns(
    scores: pd.DataFrame, on: list[str], reader: str, extra: list[str], path: Path
) -> list[str]:
    """Numeric columns that differ between readers of some image (constant ones are attributes)."""
    for col in scores.columns:  # a score column with one typo would be silently skipped
        if col in {*on, reader, *extra} or pd.api.types.is_numeric_dtype(scores[col]):
            continue
        parsed = pd.to_numeric(scores[col], errors="coerce")
        if parsed.notna().sum() >= max(1, len(scores) // 2):
            _require_numeric(scores, [col], "reader scores", path)
    candidates = _numeric_columns(scores, {*on, reader, *extra})
    varying = scores.groupby(on, dropna=False)[candidates].nunique(dropna=False).max() > 1
    score_columns = [c for c in candidates if varying[c]]
    attributes = [c for c in candidates if not varying[c]]
    if not score_columns:
        raise ValueError(
            f"reader scores: no numeric column varies between readers (candidates "
            f"{candidates}); name the scores with --score-columns"
        )
    note = f"score columns {score_columns}"
    if attributes:
        note += f"; {attributes} constant within each image, treated as image attributes"
    _note(note + " (set --score-columns to change)")
    return score_columns


def _align_key_types(
    metrics: pd.DataFrame, scores: pd.DataFrame, on: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compare keys as text where the two tables read them with different types."""
    for col in on:
        if metrics[col].dtype != scores[col].dtype:
            _note(
                f"key column {col!r} is {metrics[col].dtype} in the metrics and "
                f"{scores[col].dtype} in the scores; comparing as text"
            )
            metrics = metrics.assign(**{col: metrics[col].astype(str)})
            scores = scores.assign(**{col: scores[col].astype(str)})
    return metrics, scores


def _drop_duplicated(
    table: pd.DataFrame, unique: list[str], on: list[str], name: str, allow: bool
) -> pd.DataFrame:
    """Fail on rows duplicated on ``unique``, or (``allow``) drop every row of those images."""
    dupes = corr.duplicated_keys(table, unique)
    if dupes.empty:
        return table
    if not allow:
        raise corr.DuplicateKeyError(name, dupes)
    _note(f"{corr.DuplicateKeyError(name, dupes)} -- every row of these images left out")
    images = dupes[on].drop_duplicates().assign(_dupe=True)
    flagged = table.merge(images, on=on, how="left")["_dupe"].notna().to_numpy()
    return table.loc[~flagged].reset_index(drop=True)


def _safe_name(text: object) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text)).strip("_") or "x"


def figure_names(names: list[str]) -> dict[str, str]:
    """File-name parts for column names, unique even where sanitising makes two names equal.

    Characters other than letters, digits and ``_ . = -`` become ``_`` (``Cartilage/Meniscus``
    -> ``Cartilage_Meniscus``); names that would then collide each get ``-`` and the first 6 hex
    digits of the SHA-1 of the original name.

    Example:
        >>> figure_names(["Aliasing", "Cartilage/Meniscus"])
        {'Aliasing': 'Aliasing', 'Cartilage/Meniscus': 'Cartilage_Meniscus'}
        >>> sorted(figure_names(["A/B", "A B"]).values())
        ['A_B-239c02', 'A_B-8aabb8']
    """
    safe = {name: _safe_name(name) for name in names}
    counts: dict[str, int] = {}
    for value in safe.values():
        counts[value] = counts.get(value, 0) + 1
    return {
        name: value if counts[value] == 1 else f"{value}-{hashlib.sha1(str(name).encode()).hexdigest()[:6]}"
        for name, value in safe.items()
    }


def _format_interval(low: float, high: float, signed: bool) -> str:
    spec = "+.3f" if signed else ".3f"
    return f"[{low:{spec}}, {high:{spec}}]"


def format_table(table: pd.DataFrame, confidence: float, n_boot: int, seed: int) -> str:
    """The printed SROCC table: |SROCC| and signed SROCC with their intervals and significance.

    The header states the confidence level; a ``*`` in column ``sig`` marks a signed interval
    that excludes 0; the lines below the table say how the intervals were made.

    Example:
        >>> t = pd.DataFrame({"metric": ["psnr", "noise"], "score": ["Aliasing"] * 2,
        ...     "group": ["all"] * 2, "n": [30, 30], "srocc": [0.8, -0.1], "ci_low": [0.6, -0.45],
        ...     "ci_high": [0.9, 0.3], "abs_srocc": [0.8, 0.1], "abs_ci_low": [0.6, 0.0],
        ...     "abs_ci_high": [0.9, 0.45], "significant": [True, False], "irv": [0.85, 0.85]})
        >>> print(format_table(t, 0.95, 1000, 0))  # doctest: +NORMALIZE_WHITESPACE
        metric    score  n |SROCC| |SROCC| 95% CI  SROCC    SROCC 95% CI sig   IRV
          psnr Aliasing 30   0.800 [0.600, 0.900] +0.800 [+0.600, +0.900]   * 0.850
         noise Aliasing 30   0.100 [0.000, 0.450] -0.100 [-0.450, +0.300]     0.850
        sig * : the 95% CI of the signed SROCC excludes 0 (significant at that level).
        CIs: BCa bootstrap over images (1000 resamples, seed 0); the |SROCC| CI is |signed CI|,
        from 0 where that contains 0.
    """
    level = f"{100 * confidence:g}%"
    shown = pd.DataFrame(
        {
            "metric": table["metric"],
            "score": table["score"],
            "group": table["group"],
            "n": table["n"],
            "|SROCC|": table["abs_srocc"].map("{:.3f}".format),
            f"|SROCC| {level} CI": [
                _format_interval(lo, hi, signed=False)
                for lo, hi in zip(table["abs_ci_low"], table["abs_ci_high"])
            ],
            "SROCC": table["srocc"].map("{:+.3f}".format),
            f"SROCC {level} CI": [
                _format_interval(lo, hi, signed=True)
                for lo, hi in zip(table["ci_low"], table["ci_high"])
            ],
            "sig": ["*" if flag else "" for flag in table["significant"].astype(bool)],
            "IRV": table["irv"].map("{:.3f}".format),
        }
    )
    if (shown["group"].astype(str) == corr.ALL_GROUP).all():
        shown = shown.drop(columns="group")
    legend = [
        f"sig * : the {level} CI of the signed SROCC excludes 0 (significant at that level).",
        f"CIs: BCa bootstrap over images ({n_boot} resamples, seed {seed}); the |SROCC| CI is "
        "|signed CI|, from 0 where that contains 0.",
    ]
    return "\n".join([shown.to_string(index=False), *legend])


def run(args: argparse.Namespace) -> int:
    """Run the analysis; return the exit code (0 ok, 1 unmatched with --strict, 2 bad input)."""
    from lightning_dfd.analysis.outputs import OutputError

    try:
        return _run(args)
    except (FileNotFoundError, KeyError, ValueError, OutputError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        _note(f"error: {message}")
        return EXIT_BAD_INPUT


#: The tables ``correlate`` writes into ``--out``.
OUTPUT_TABLES = ("srocc.csv", "irv.csv", "per_image.csv", "unmatched.csv", "figures.csv")


def _check_inputs_kept(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` where a table would replace ``--metrics`` or ``--scores``."""
    from lightning_dfd.analysis.outputs import OutputError
    from lightning_dfd.files import overlap

    for name in OUTPUT_TABLES:
        for option, source in (("--metrics", args.metrics), ("--scores", args.scores)):
            if overlap(source, args.out / name) == "same":
                raise OutputError(f"--out {args.out}: {name} would replace the {option} file {source}; "
                                  "choose another --out folder")


def _run(args: argparse.Namespace) -> int:
    from lightning_dfd.analysis.outputs import check_output_dir

    _check_inputs_kept(args)
    check_output_dir(args.out)  # before the bootstrap, not after it
    metrics = _read_csv(args.metrics, "metrics")
    scores = _read_csv(args.scores, "reader scores")
    reader = args.reader_column
    if reader not in scores.columns:
        raise KeyError(
            f"reader scores: no reader column {reader!r} in {args.scores}; "
            f"available: {list(scores.columns)} (set --reader-column)"
        )
    score_columns = args.score_columns
    color_by = args.color_by or args.by
    extra = [c for c in dict.fromkeys([args.by, color_by, args.marker_by]) if c]

    on = args.on
    if on is None:
        skip = {reader, *(score_columns or [])}
        on = [c for c in metrics.columns if c in scores.columns and c not in skip]
        if not on:
            raise ValueError(
                "the metrics and score tables share no column to join on; name the key "
                "columns with --on"
            )
        _note(f"joining on {on} (the columns both tables share; set --on to change)")
    for name, table in (("metrics", metrics), ("reader scores", scores)):
        missing = [c for c in on if c not in table.columns]
        if missing:
            raise KeyError(
                f"{name}: key column(s) {missing} missing; available: {list(table.columns)}"
            )
    for col in extra:
        if col not in metrics.columns and col not in scores.columns:
            raise KeyError(f"grouping column {col!r} is in neither table")

    if score_columns is None:
        score_columns = _guess_score_columns(scores, on, reader, extra, args.scores)
    missing = [c for c in score_columns if c not in scores.columns]
    if missing:
        raise KeyError(
            f"reader scores: missing column(s) {missing}; available: {list(scores.columns)}"
        )
    scores = _require_numeric(scores, score_columns, "reader scores", args.scores)
    metric_columns = args.metric_columns or _numeric_columns(metrics, {*on, *extra})
    if not metric_columns:
        raise ValueError("metrics: no numeric metric column found; set --metric-columns")
    missing = [c for c in metric_columns if c not in metrics.columns]
    if missing:
        raise KeyError(
            f"metrics: metric column(s) {missing} missing; available: {list(metrics.columns)}"
        )
    metrics = _require_numeric(metrics, metric_columns, "metrics", args.metrics)

    metrics, scores = _align_key_types(metrics, scores, on)
    metrics = _drop_duplicated(metrics, on, on, "metrics", args.drop_duplicates)
    scores = _drop_duplicated(scores, [*on, reader], on, "reader scores", args.drop_duplicates)
    carry = [c for c in extra if c in scores.columns and c not in on]
    mean_scores = corr.mean_reader_scores(scores, on, score_columns, reader, carry=carry)
    joined, report = corr.join_tables(metrics, mean_scores, on)
    _note(report.summary())
    if report.n_matched < 3:
        raise ValueError(f"only {report.n_matched} image(s) matched on {on}; need at least 3")

    table = corr.correlation_table(
        joined,
        metric_columns,
        score_columns,
        by=args.by,
        n_boot=args.n_boot,
        confidence=args.confidence,
        seed=args.seed,
    )
    irv_rows = _inter_reader(scores, joined, on, score_columns, reader, args.by)
    irv_mean = irv_rows[irv_rows["reader"] == "IRV"][["score", "group", "srocc"]]
    irv_mean = irv_mean.rename(columns={"srocc": "irv"})
    table["_group_key"] = table["group"].astype(str)
    irv_mean = irv_mean.assign(_group_key=irv_mean["group"].astype(str)).drop(columns="group")
    table = table.merge(irv_mean, on=["score", "_group_key"], how="left").drop(columns="_group_key")

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "srocc.csv", index=False)
    irv_rows.to_csv(out / "irv.csv", index=False)
    joined.to_csv(out / "per_image.csv", index=False)
    unmatched = report.unmatched_frame()
    if not unmatched.empty:
        unmatched.to_csv(out / "unmatched.csv", index=False)
    if not args.no_plots:
        figures = _plots(out, table, joined, scores, on, metric_columns, score_columns, reader, args)
        figures.to_csv(out / "figures.csv", index=False)

    print(format_table(table, args.confidence, args.n_boot, args.seed))
    _note(f"wrote {out}/srocc.csv, irv.csv, per_image.csv" + ("" if args.no_plots else " and PNGs"))
    if args.strict and not report.complete:
        return EXIT_PARTIAL
    return EXIT_OK


def _inter_reader(
    scores: pd.DataFrame,
    joined: pd.DataFrame,
    on: list[str],
    score_columns: list[str],
    reader: str,
    by: str | None,
) -> pd.DataFrame:
    """IRV on the matched images, overall and per subgroup; one row per reader plus 'IRV'."""
    key_cols = [*on, by] if by and by not in on else on
    matched = scores.drop(columns=[c for c in key_cols if c not in on and c in scores.columns])
    matched = matched.merge(joined[key_cols].drop_duplicates(), on=on, how="inner")
    subsets = [("", corr.ALL_GROUP, matched)]
    if by:
        subsets += [(by, value, part) for value, part in matched.groupby(by, sort=True)]
    rows = []
    for by_column, group, part in subsets:
        for score in score_columns:
            irv, per_reader = corr.inter_reader_variability(part, on, score, reader)
            n_images = part[on].drop_duplicates().shape[0]
            rows += [
                {
                    "score": score,
                    "by": by_column,
                    "group": group,
                    "reader": name,
                    "srocc": value,
                    "n_images": n_images,
                }
                for name, value in per_reader.items()
            ]
            rows.append(
                {
                    "score": score,
                    "by": by_column,
                    "group": group,
                    "reader": "IRV",
                    "srocc": irv,
                    "n_images": n_images,
                }
            )
    return pd.DataFrame(rows)


def _plots(out, table, joined, scores, on, metric_columns, score_columns, reader, args) -> pd.DataFrame:
    """Write every figure; return the index ``file, figure, score, group`` (``figures.csv``)."""
    from lightning_dfd.analysis import plots  # matplotlib only when figures are asked for
    from lightning_dfd.files import contained_path

    def place(name: str) -> Path:  # names come from column and group values: proven inside --out
        return contained_path(out, name, what="figure name")

    written = []
    overall = table[table["group"].astype(str) == corr.ALL_GROUP]
    irv = dict(zip(overall["score"], overall["irv"]))
    plots.plot_srocc_bars(table, place("srocc_bars.png"), irv=irv)
    written.append(("srocc_bars.png", "srocc_bars", "", corr.ALL_GROUP))
    if args.by:
        groups = list(table.loc[table["by"] == args.by, "group"].unique())
        group_names = figure_names([str(group) for group in groups])
        by_name = _safe_name(args.by)
        for group in groups:
            rows = table[table["group"].astype(str) == str(group)]
            name = f"srocc_bars_{by_name}={group_names[str(group)]}.png"
            plots.plot_srocc_bars(
                rows,
                place(name),
                irv=dict(zip(rows["score"], rows["irv"])),
                group=group,
                title=f"subgroup {args.by} = {group} ({int(rows['n'].max())} images)",
            )
            written.append((name, "srocc_bars", "", f"{args.by}={group}"))
    matched = scores.merge(joined[on].drop_duplicates(), on=on, how="inner")
    names = figure_names(score_columns)
    for score in score_columns:
        name = f"scatter_{names[score]}.png"
        plots.plot_metric_scatter(
            joined,
            metric_columns,
            score,
            place(name),
            color_by=args.color_by or args.by,
            marker_by=args.marker_by,
        )
        written.append((name, "scatter", score, corr.ALL_GROUP))
        pairs = corr.inter_reader_table(matched, on, score, reader)
        name = f"irv_{names[score]}.png"
        plots.plot_inter_reader(pairs, place(name), reader_column=reader, score=score)
        written.append((name, "irv", score, corr.ALL_GROUP))
    return pd.DataFrame(written, columns=["file", "figure", "score", "group"])
