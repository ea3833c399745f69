"""`lightning-dfd correlate`: SROCC, bootstrap CI, IRV, subgroups, plots, key-join problems."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lightning_dfd.analysis import correlation as corr
from lightning_dfd.analysis.commands import correlate

N_BOOT = 200
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lightning-dfd")
    correlate.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["correlate", *argv])


def _run(argv: list[str]) -> int:
    args = _parse(argv)
    return args.func(args)


def _make_tables(n_volumes: int = 8, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Images keyed by (volume, slice) with a latent quality that drives metrics and scores."""
    rng = np.random.default_rng(seed)
    rows, score_rows = [], []
    for v in range(n_volumes):
        for acceleration in (2, 4, 6):
            quality = 9.0 - acceleration + rng.normal(0, 0.8)
            key = {"volume": f"file{1000 + v}", "slice": acceleration * 10}
            rows.append(
                {
                    **key,
                    "psnr": 20 + 2 * quality + rng.normal(0, 1.0),
                    "lpips_vgg": 0.5 - 0.05 * quality + rng.normal(0, 0.03),
                    "noise": rng.normal(),
                }
            )
            for reader in ("R1", "R2", "R3"):
                score_rows.append(
                    {
                        **key,
                        "Reader": reader,
                        "Acceleration": acceleration,
                        "Aliasing": float(np.clip(round(quality + rng.normal(0, 1)), 1, 9)),
                        "Cartilage/Meniscus": float(
                            np.clip(round(quality + rng.normal(0, 1.5)), 1, 9)
                        ),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(score_rows)


@pytest.fixture()
def tables(tmp_path: Path) -> tuple[Path, Path, pd.DataFrame, pd.DataFrame]:
    metrics, scores = _make_tables()
    metrics_csv, scores_csv = tmp_path / "results.csv", tmp_path / "reader_scores.csv"
    metrics.to_csv(metrics_csv, index=False)
    scores.to_csv(scores_csv, index=False)
    return metrics_csv, scores_csv, metrics, scores


def _expected_join(metrics: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    mean = scores.groupby(["volume", "slice"])[["Aliasing", "Cartilage/Meniscus"]].mean()
    return metrics.merge(mean.reset_index(), on=["volume", "slice"])


def test_srocc_matches_scipy_with_subgroups_plots_and_irv(tables, tmp_path, capsys):
    metrics_csv, scores_csv, metrics, scores = tables
    out = tmp_path / "out"
    code = _run(
        [
            "--metrics",
            str(metrics_csv),
            "--scores",
            str(scores_csv),
            "--by",
            "Acceleration",
            "--n-boot",
            str(N_BOOT),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "lpips_vgg" in printed.out and "|SROCC| 95% CI" in printed.out
    assert "joining on ['volume', 'slice']" in printed.err

    table = pd.read_csv(out / "srocc.csv")
    joined = _expected_join(metrics, scores)
    joined["Acceleration"] = joined["slice"] // 10
    assert set(table["metric"]) == {"psnr", "lpips_vgg", "noise"}
    assert set(table["score"]) == {"Aliasing", "Cartilage/Meniscus"}
    for _, row in table.iterrows():
        in_group = joined["Acceleration"].astype(str) == row["group"]
        part = joined if row["group"] == "all" else joined[in_group]
        expected = stats.spearmanr(part[row["metric"]], part[row["score"]]).statistic
        assert row["srocc"] == pytest.approx(expected, abs=1e-12)
        assert row["abs_srocc"] == pytest.approx(abs(expected), abs=1e-12)
        assert row["n"] == len(part)
    overall = table[table["group"] == "all"].set_index(["metric", "score"])
    # the known rank structure: psnr rises with quality, lpips falls, noise is unrelated
    assert overall.loc[("psnr", "Aliasing"), "srocc"] > 0.5
    assert overall.loc[("lpips_vgg", "Aliasing"), "srocc"] < -0.5
    assert overall.loc[("noise", "Aliasing"), "abs_srocc"] < 0.5
    # the CI contains the point estimate where the correlation is strong
    for metric in ("psnr", "lpips_vgg"):
        row = overall.loc[(metric, "Aliasing")]
        assert row["ci_low"] <= row["srocc"] <= row["ci_high"]
        assert row["abs_ci_low"] <= row["abs_srocc"] <= row["abs_ci_high"]
    assert set(table.loc[table["group"] != "all", "group"].astype(int)) == {2, 4, 6}

    irv = pd.read_csv(out / "irv.csv")
    overall_irv = irv[(irv["group"] == "all") & (irv["score"] == "Aliasing")].set_index("reader")
    assert set(overall_irv.index) == {"R1", "R2", "R3", "IRV"}
    wide = scores.pivot_table(index=["volume", "slice"], columns="Reader", values="Aliasing")
    per_reader = [
        stats.spearmanr(wide[r], wide.drop(columns=r).mean(axis=1)).statistic for r in wide
    ]
    assert overall_irv.loc["IRV", "srocc"] == pytest.approx(np.mean(per_reader), abs=1e-12)
    assert overall.loc[("psnr", "Aliasing"), "irv"] == pytest.approx(np.mean(per_reader))

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(
        [
            "srocc_bars.png",
            "srocc_bars_Acceleration=2.png",
            "srocc_bars_Acceleration=4.png",
            "srocc_bars_Acceleration=6.png",
            "scatter_Aliasing.png",
            "scatter_Cartilage_Meniscus.png",
            "irv_Aliasing.png",
            "irv_Cartilage_Meniscus.png",
        ]
    )
    for name in pngs:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name
    assert len(pd.read_csv(out / "per_image.csv")) == len(metrics)
    assert not (out / "unmatched.csv").exists()


def test_bootstrap_is_deterministic_under_a_seed(tables, tmp_path):
    metrics_csv, scores_csv, _, _ = tables
    common = [
        "--metrics",
        str(metrics_csv),
        "--scores",
        str(scores_csv),
        "--no-plots",
        "--n-boot",
        str(N_BOOT),
    ]
    assert _run([*common, "--seed", "7", "--out", str(tmp_path / "a")]) == 0
    assert _run([*common, "--seed", "7", "--out", str(tmp_path / "b")]) == 0
    assert _run([*common, "--seed", "8", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (pd.read_csv(tmp_path / name / "srocc.csv") for name in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["ci_low"], c["ci_low"])
    pd.testing.assert_series_equal(a["srocc"], c["srocc"])


def test_bootstrap_matches_scipy_on_each_resample():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    x[::5] = x[0]  # ties
    rhos = corr.bootstrap_srocc(x, y, n_boot=20, seed=11)
    index = np.random.default_rng(11).integers(0, 30, size=(20, 30))
    expected = [stats.spearmanr(x[i], y[i]).statistic for i in index]
    np.testing.assert_allclose(rhos, expected, atol=1e-12)
    low, high, abs_low, abs_high = corr.bootstrap_srocc_ci(x, y, n_boot=500, seed=1)
    assert low <= corr.srocc(x, y) <= high and 0 <= abs_low <= abs_high <= 1
    assert corr.srocc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_irv_equals_hand_computed_value():
    # 4 images, 3 readers; each reader against the mean of the other two:
    # R1 [1,2,3,4] vs [1.5,1.5,3.5,3.5] -> 4/sqrt(20); R2 [1,2,4,3] vs [1.5,1.5,3,4] ->
    # 3.5/sqrt(22.5); R3 [2,1,3,4] vs [1,2,3.5,3.5] -> 3.5/sqrt(22.5) (Pearson of ranks).
    scores = pd.DataFrame(
        {
            "image": [0, 1, 2, 3] * 3,
            "Reader": ["R1"] * 4 + ["R2"] * 4 + ["R3"] * 4,
            "Aliasing": [1, 2, 3, 4, 1, 2, 4, 3, 2, 1, 3, 4],
        }
    )
    irv, per_reader = corr.inter_reader_variability(scores, ["image"], "Aliasing")
    hand = {"R1": 4 / math.sqrt(20), "R2": 3.5 / math.sqrt(22.5), "R3": 3.5 / math.sqrt(22.5)}
    assert per_reader.to_dict() == pytest.approx(hand, abs=1e-12)
    assert irv == pytest.approx((4 / math.sqrt(20) + 7 / math.sqrt(22.5)) / 3, abs=1e-12)
    assert irv == pytest.approx(0.790052, abs=1e-6)


def test_duplicate_reader_keys_fail_naming_them_and_drop_mode_keeps_the_rest(
    tables, tmp_path, capsys
):
    metrics_csv, _, metrics, scores = tables
    bad = pd.concat([scores, scores.iloc[[0, 2]]], ignore_index=True)  # (file1000, 20, R1/R3)
    bad_csv = tmp_path / "bad_scores.csv"
    bad.to_csv(bad_csv, index=False)
    out = tmp_path / "dupes"
    common = ["--metrics", str(metrics_csv), "--no-plots", "--n-boot", str(N_BOOT)]
    code = _run([*common, "--scores", str(bad_csv), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "reader scores: 2 duplicated key(s)" in err
    assert "volume='file1000', slice=20, Reader='R1'" in err
    assert "volume='file1000', slice=20, Reader='R3'" in err
    assert not out.exists()

    # --drop-duplicates: the duplicated image is left out (reported); the rest is unchanged
    assert _run([*common, "--scores", str(bad_csv), "--out", str(out), "--drop-duplicates"]) == 0
    err = capsys.readouterr().err
    assert "left out" in err and "with metrics but no reader scores" in err
    good_scores = scores[~((scores["volume"] == "file1000") & (scores["slice"] == 20))]
    good_metrics = metrics[~((metrics["volume"] == "file1000") & (metrics["slice"] == 20))]
    good_scores.to_csv(tmp_path / "good_scores.csv", index=False)
    good_metrics.to_csv(tmp_path / "good_metrics.csv", index=False)
    assert (
        _run(
            [
                "--metrics",
                str(tmp_path / "good_metrics.csv"),
                "--no-plots",
                "--n-boot",
                str(N_BOOT),
                "--scores",
                str(tmp_path / "good_scores.csv"),
                "--out",
                str(tmp_path / "good"),
            ]
        )
        == 0
    )
    for name in ("srocc.csv", "irv.csv", "per_image.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(out / name), pd.read_csv(tmp_path / "good" / name), obj=name
        )
    unmatched = pd.read_csv(out / "unmatched.csv")
    assert unmatched.to_dict("records") == [
        {"volume": "file1000", "slice": 20, "side": "metrics_only"}
    ]


def test_duplicate_metric_keys_fail(tables, tmp_path, capsys):
    _, scores_csv, metrics, _ = tables
    bad_csv = tmp_path / "bad_metrics.csv"
    pd.concat([metrics, metrics.iloc[[3]]]).to_csv(bad_csv, index=False)
    code = _run(
        [
            "--metrics",
            str(bad_csv),
            "--scores",
            str(scores_csv),
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    assert (
        "metrics: 1 duplicated key(s) on columns ['volume', 'slice']: (volume='file1001', "
        "slice=20)" in capsys.readouterr().err
    )


def test_unmatched_rows_are_reported_and_analysis_runs_on_the_rest(tables, tmp_path, capsys):
    _, _, metrics, scores = tables
    metrics = metrics.iloc[2:]  # two images without metrics
    scores = scores[scores["volume"] != "file1007"]  # three images without scores
    metrics.to_csv(tmp_path / "m.csv", index=False)
    scores.to_csv(tmp_path / "s.csv", index=False)
    argv = [
        "--metrics",
        str(tmp_path / "m.csv"),
        "--scores",
        str(tmp_path / "s.csv"),
        "--no-plots",
        "--n-boot",
        "50",
        "--on",
        "volume,slice",
        "--score-columns",
        "Aliasing",
        "--out",
        str(tmp_path / "o"),
    ]
    assert _run(argv) == 0
    err = capsys.readouterr().err
    assert "19 image(s) with metrics and scores" in err
    assert "3 image(s) with metrics but no reader scores: (volume='file1007', slice=20)" in err
    assert "2 image(s) with reader scores but no metrics: (volume='file1000', slice=20)" in err
    unmatched = pd.read_csv(tmp_path / "o" / "unmatched.csv")
    assert unmatched["side"].value_counts().to_dict() == {"metrics_only": 3, "scores_only": 2}
    table = pd.read_csv(tmp_path / "o" / "srocc.csv")
    assert set(table["score"]) == {"Aliasing"} and (table["n"] == 19).all()
    joined = _expected_join(metrics, scores)
    expected = stats.spearmanr(joined["psnr"], joined["Aliasing"]).statistic
    assert table.set_index("metric").loc["psnr", "srocc"] == pytest.approx(expected)
    assert _run([*argv, "--strict"]) == 1


def test_bad_columns_give_clear_errors(tables, tmp_path, capsys):
    metrics_csv, scores_csv, _, _ = tables
    common = [
        "--metrics",
        str(metrics_csv),
        "--scores",
        str(scores_csv),
        "--no-plots",
        "--out",
        str(tmp_path / "o"),
    ]
    assert _run([*common, "--score-columns", "Sharpness"]) == 2
    assert "missing column(s) ['Sharpness']" in capsys.readouterr().err
    assert _run([*common, "--reader-column", "Radiologist"]) == 2
    assert "no reader column 'Radiologist'" in capsys.readouterr().err
    assert _run([*common, "--on", "patient"]) == 2
    assert "key column(s) ['patient'] missing" in capsys.readouterr().err
    assert _run([*common[:2], "--scores", str(tmp_path / "nope.csv"), "--out", "x"]) == 2
    assert "reader scores file not found" in capsys.readouterr().err


def test_join_reports_and_key_types():
    metrics = pd.DataFrame({"image": [1, 2, 3], "psnr": [1.0, 2.0, 3.0]})
    scores = pd.DataFrame({"image": [2, 3, 4], "Aliasing": [5.0, 6.0, 7.0]})
    joined, report = corr.join_tables(metrics, scores, ["image"])
    assert joined["image"].tolist() == [2, 3]
    assert report.metrics_only["image"].tolist() == [1]
    assert report.scores_only["image"].tolist() == [4]
    assert "1 image(s) with metrics but no reader scores: (image=1)" in report.summary()
    with pytest.raises(corr.DuplicateKeyError, match=r"metrics: 1 duplicated key\(s\)"):
        corr.join_tables(pd.concat([metrics, metrics.iloc[[0]]]), scores, ["image"])


# --- issue 12: bad values, name collisions, infinities; issue 14: figures that say what they show


def test_a_non_numeric_score_or_metric_names_the_column_and_first_bad_value(tables, tmp_path, capsys):
    metrics_csv, scores_csv, metrics, scores = tables
    bad = scores.astype({"Aliasing": object})
    bad.loc[4, "Aliasing"] = "five"
    bad.to_csv(tmp_path / "bad_scores.csv", index=False)
    common = ["--no-plots", "--n-boot", "20", "--out", str(tmp_path / "o")]
    for extra in ([], ["--score-columns", "Aliasing"]):  # guessed or named
        scores_arg = ["--scores", str(tmp_path / "bad_scores.csv")]
        code = _run(["--metrics", str(metrics_csv), *scores_arg, *common, *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "reader scores: column 'Aliasing' must hold numbers, but row 5 (line 6 of" in err
        assert "holds 'five'" in err and "Traceback" not in err
    bad_metrics = metrics.astype({"psnr": object})
    bad_metrics.loc[2, "psnr"] = "31.2dB"
    bad_metrics.to_csv(tmp_path / "bad_metrics.csv", index=False)
    code = _run(["--metrics", str(tmp_path / "bad_metrics.csv"), "--scores", str(scores_csv),
                 "--metric-columns", "psnr,lpips_vgg", *common])  # fmt: skip
    assert code == 2
    assert "metrics: column 'psnr' must hold numbers, but row 3 (line 4 of" in capsys.readouterr().err


def test_infinite_metric_values_are_ranked_and_nan_is_counted():
    # image 3 is a perfect reconstruction: PSNR = +inf must rank it best, not drop it
    data = pd.DataFrame({
        "psnr": [20.0, 25.0, 30.0, math.inf, np.nan, 22.0],
        "mse": [0.3, 0.2, 0.1, 0.0, 0.5, -math.inf],
        "Aliasing": [2.0, 4.0, 6.0, 9.0, 5.0, 3.0],
    })  # fmt: skip
    table = corr.correlation_table(data, ["psnr", "mse"], ["Aliasing"], n_boot=50).set_index("metric")
    assert table.loc["psnr", "n"] == 5 and table.loc["psnr", "n_nan"] == 1
    assert table.loc["psnr", "srocc"] == pytest.approx(1.0)  # inf highest, as the scores say
    ranks = stats.rankdata([0.3, 0.2, 0.1, 0.0, 0.5, -1e300])  # -inf ranks lowest
    expected = stats.spearmanr(ranks, data["Aliasing"]).statistic
    assert table.loc["mse", "n"] == 6 and table.loc["mse", "srocc"] == pytest.approx(expected)
    assert np.isfinite(table.loc["psnr", "ci_low"]) and table.loc["psnr", "ci_high"] == pytest.approx(1.0)


def test_figure_names_are_unique_and_indexed_and_figures_are_labelled(tmp_path, monkeypatch):
    from lightning_dfd.analysis import plots

    metrics, scores = _make_tables()
    scores["A/B"] = scores["Aliasing"]
    scores["A B"] = 10 - scores["Cartilage/Meniscus"]
    metrics.to_csv(tmp_path / "m.csv", index=False)
    scores.to_csv(tmp_path / "s.csv", index=False)
    figures = {}
    real_save = plots._save

    def keep(fig, path, dpi):
        figures[Path(path).name] = fig
        return real_save(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", keep)
    out = tmp_path / "o"
    argv = ["--metrics", str(tmp_path / "m.csv"), "--scores", str(tmp_path / "s.csv"), "--n-boot", "20",
            "--score-columns", "Aliasing,Cartilage/Meniscus,A/B,A B", "--by", "Acceleration",
            "--out", str(out)]  # fmt: skip
    assert _run(argv) == 0
    index = pd.read_csv(out / "figures.csv")
    scatter = index[index["figure"] == "scatter"].set_index("score")["file"].to_dict()
    assert scatter["Cartilage/Meniscus"] == "scatter_Cartilage_Meniscus.png"
    assert scatter["Aliasing"] == "scatter_Aliasing.png"
    assert scatter["A/B"] != scatter["A B"] and scatter["A/B"].startswith("scatter_A_B-")
    assert sorted(p.name for p in out.glob("*.png")) == sorted(index["file"])  # nothing overwritten
    assert len(set(index["file"])) == len(index) == 1 + 3 + 2 * 4
    # subgroup bars say which subgroup they show; metric panels carry units
    for group in (2, 4, 6):
        title = figures[f"srocc_bars_Acceleration={group}.png"]._suptitle.get_text()
        assert title.startswith(f"subgroup Acceleration = {group} (8 images)")
    assert figures["srocc_bars.png"]._suptitle is None
    labels = [_unwrap(ax.get_ylabel()) for ax in figures["scatter_Aliasing.png"].axes if ax.get_visible()]
    assert labels == ["PSNR (dB, higher is better)", "LPIPS-VGG distance (lower is better)", "noise"]


def _unwrap(label: str) -> str:
    """Undo :func:`lightning_dfd.analysis.plots.wrap_label` (it breaks after spaces, ``_ / -``)."""
    import re

    return re.sub(r"(?<=[_/-])\n", "", label).replace("\n", " ")


def test_a_negative_irv_line_is_drawn_inside_the_axis(tmp_path, monkeypatch):
    from lightning_dfd.analysis import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi: figures.append(fig) or Path(path))
    table = pd.DataFrame({"metric": ["psnr", "lpips"], "score": ["Aliasing"] * 2,
                          "group": ["all"] * 2, "abs_srocc": [0.5, 0.8],
                          "abs_ci_low": [0.4, 0.7], "abs_ci_high": [0.6, 0.9]})  # fmt: skip
    plots.plot_srocc_bars(table, tmp_path / "bars.png", irv={"Aliasing": -0.3})
    (ax,) = figures[0].axes
    low, high = ax.get_ylim()
    irv_lines = [line for line in ax.get_lines() if line.get_label().startswith("IRV")]
    assert irv_lines and irv_lines[0].get_ydata()[0] == pytest.approx(-0.3)
    assert low < -0.3 < high and high == 1
    plots.plot_srocc_bars(table, tmp_path / "bars.png", irv={"Aliasing": 0.85})
    assert figures[1].axes[0].get_ylim() == (0, 1)


def test_default_output_folder_is_under_runs(tables, tmp_path, monkeypatch):
    metrics_csv, scores_csv, _, _ = tables
    monkeypatch.chdir(tmp_path)
    argv = ["--metrics", str(metrics_csv), "--scores", str(scores_csv), "--no-plots", "--n-boot", "20"]
    assert _run(argv) == 0
    assert (tmp_path / "runs" / "correlate" / "srocc.csv").is_file()
    assert not (tmp_path / "correlation").exists()


def test_an_unusable_out_folder_is_refused_before_the_analysis(tables, tmp_path, capsys):
    metrics_csv, scores_csv, _, _ = tables
    (tmp_path / "a_file").write_text("x")
    argv = ["--metrics", str(metrics_csv), "--scores", str(scores_csv), "--no-plots"]
    assert _run([*argv, "--out", str(tmp_path / "a_file" / "o")]) == 2
    assert "a_file exists and is not a folder" in capsys.readouterr().err


def test_an_out_folder_where_a_table_would_replace_an_input_is_refused(tables, tmp_path, capsys):
    _, scores_csv, metrics, _ = tables
    folder = tmp_path / "earlier"
    folder.mkdir()
    metrics.to_csv(folder / "per_image.csv", index=False)  # an earlier correlate's table as input
    before = (folder / "per_image.csv").read_bytes()
    argv = ["--metrics", str(folder / "per_image.csv"), "--scores", str(scores_csv), "--no-plots",
            "--n-boot", "20"]
    assert _run([*argv, "--out", str(tmp_path / "earlier" / "." )]) == 2
    err = capsys.readouterr().err
    assert "per_image.csv would replace the --metrics file" in err
    assert (folder / "per_image.csv").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["per_image.csv"]
    assert _run([*argv, "--out", str(tmp_path / "new")]) == 0


# --- issue 21: |SROCC| intervals derived from the signed one, estimates inside, significance


@pytest.mark.parametrize(
    ("signed", "expected"),
    [
        ((-0.333, 0.487), (0.0, 0.487)),  # the example: the bootstrap of |rho| gave [0.009, 0.493]
        ((-0.547, 0.521), (0.0, 0.547)),  # contains 0: from 0 to the larger bound
        ((0.2, 0.6), (0.2, 0.6)),  # positive: unchanged
        ((-0.9, -0.4), (0.4, 0.9)),  # negative: |.| of the bounds, in order
        ((0.0, 0.3), (0.0, 0.3)),  # touches 0: contains it
        ((-1.0, 1.0), (0.0, 1.0)),
    ],
)
def test_abs_interval_is_derived_from_the_signed_one(signed, expected):
    assert corr.abs_interval(*signed) == pytest.approx(expected, abs=0)
    ci = corr.SroccInterval(*signed, *corr.abs_interval(*signed))
    assert ci.significant == (signed[0] > 0 or signed[1] < 0)


def test_abs_interval_holds_the_abs_of_every_signed_value_and_rejects_bad_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        low, high = np.sort(rng.uniform(-1, 1, 2))
        abs_low, abs_high = corr.abs_interval(low, high)
        inside = np.abs(np.linspace(low, high, 101))
        assert abs_low == pytest.approx(inside.min(), abs=0.02) and abs_high == pytest.approx(inside.max())
        assert abs_low <= inside.min() and inside.max() <= abs_high
    # the newcomer's run: |SROCC| 0.002 printed with [0.006, 0.547]; derived, 0.002 lies inside
    abs_low, abs_high = corr.abs_interval(-0.547, 0.512)
    assert abs_low <= 0.002 <= abs_high
    assert all(math.isnan(v) for v in corr.abs_interval(float("nan"), 0.3))
    with pytest.raises(ValueError, match="must be <= `high`"):
        corr.abs_interval(0.5, 0.2)


def test_an_uncorrelated_metric_gets_abs_ci_from_0_and_is_not_significant():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=40), rng.normal(size=40)
    rho = corr.srocc(x, y)
    ci = corr.bootstrap_srocc_ci(x, y, n_boot=500, seed=0)
    assert ci.low < 0 < ci.high and not ci.significant
    assert ci.abs_low == 0.0 and ci.abs_high == max(-ci.low, ci.high)
    assert ci.low <= rho <= ci.high and ci.abs_low <= abs(rho) <= ci.abs_high
    # what the old code did: percentiles of |rho*| never reach 0 (biased away from it)
    biased_low = np.percentile(np.abs(corr.bootstrap_srocc(x, y, n_boot=500, seed=0)), 2.5)
    assert biased_low > 0.0


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_correlated_and_anti_correlated_metrics_are_significant(sign):
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = sign * x + 0.3 * rng.normal(size=30)
    rho = corr.srocc(x, y)
    ci = corr.bootstrap_srocc_ci(x, y, n_boot=500, seed=0)
    assert ci.significant and np.sign(ci.low) == np.sign(ci.high) == sign
    assert ci.low <= rho <= ci.high and ci.abs_low <= abs(rho) <= ci.abs_high
    assert (ci.abs_low, ci.abs_high) == (min(abs(ci.low), abs(ci.high)), max(abs(ci.low), abs(ci.high)))


def test_bca_interval_equals_scipys_bca_on_the_same_resamples():
    def spearman_rows(x, y, axis=-1):
        return corr._rank_correlation(np.atleast_2d(x), np.atleast_2d(y)).reshape(np.shape(x)[:-1])

    rng = np.random.default_rng(5)
    for n in (12, 40):
        x = rng.normal(size=n)
        y = x + 1.5 * rng.normal(size=n)
        ours = corr.bootstrap_srocc_ci(x, y, n_boot=1000, confidence=0.9, seed=3)
        options = dict(paired=True, vectorized=True, n_resamples=1000, confidence_level=0.9, method="BCa")
        try:  # scipy >= 1.15 names the generator `rng`; older releases `random_state`
            reference = stats.bootstrap((x, y), spearman_rows, **options, rng=np.random.default_rng(3))
        except TypeError:
            generator = np.random.default_rng(3)
            reference = stats.bootstrap((x, y), spearman_rows, **options, random_state=generator)
        assert (ours.low, ours.high) == pytest.approx(tuple(reference.confidence_interval), abs=1e-12)


def test_the_percentile_interval_can_exclude_the_estimate_the_default_interval_cannot():
    # 5 images, 4 tied scores: every resample ranks at least as well as the sample itself
    x, y = np.arange(5.0), np.array([3.0, 8, 8, 8, 8])
    rho = corr.srocc(x, y)
    percentile = corr.bootstrap_srocc_ci(x, y, n_boot=1000, confidence=0.8, seed=0, method="percentile")
    assert rho < percentile.low  # the plain percentile interval leaves its estimate out
    default = corr.bootstrap_srocc_ci(x, y, n_boot=1000, confidence=0.8, seed=0)
    assert default.low <= rho <= default.high
    # and over many small samples with ties, at several coverages: always inside, signed and |.|
    rng = np.random.default_rng(2)
    for trial in range(150):
        n = int(rng.integers(3, 12))
        x = rng.normal(size=n)
        y = np.round(x + rng.choice([0.0, 0.3, 1.0, 3.0]) * rng.normal(size=n))
        rho = corr.srocc(x, y)
        if not np.isfinite(rho):
            continue
        for confidence in (0.5, 0.8, 0.95):
            ci = corr.bootstrap_srocc_ci(x, y, n_boot=300, confidence=confidence, seed=trial)
            assert ci.low <= rho <= ci.high, (x, y, confidence, ci)
            assert ci.abs_low <= abs(rho) <= ci.abs_high, (x, y, confidence, ci)
    with pytest.raises(ValueError, match="Argument `method` must be one of"):
        corr.bootstrap_srocc_ci(x, y, method="basic")


def test_correlate_marks_significance_and_keeps_every_estimate_inside_its_interval(tmp_path, capsys):
    metrics, scores = _make_tables(seed=1)  # seed 1: "noise" is unrelated to the scores (rho -0.008)
    metrics_csv, scores_csv = tmp_path / "m.csv", tmp_path / "s.csv"
    metrics.to_csv(metrics_csv, index=False)
    scores.to_csv(scores_csv, index=False)
    out = tmp_path / "out"
    argv = ["--metrics", str(metrics_csv), "--scores", str(scores_csv), "--by", "Acceleration",
            "--n-boot", str(N_BOOT), "--confidence", "0.9", "--no-plots", "--out", str(out)]  # fmt: skip
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "srocc.csv")
    assert {"significant", "confidence"} <= set(table.columns)
    assert (table["confidence"] == 0.9).all()
    for _, row in table.iterrows():  # every row, subgroups (8 images) included
        assert row["ci_low"] <= row["srocc"] <= row["ci_high"], row.to_dict()
        assert row["abs_ci_low"] <= row["abs_srocc"] <= row["abs_ci_high"], row.to_dict()
        expected = corr.abs_interval(row["ci_low"], row["ci_high"])
        assert (row["abs_ci_low"], row["abs_ci_high"]) == pytest.approx(expected, abs=1e-12)
        assert row["significant"] == bool(row["ci_low"] > 0 or row["ci_high"] < 0)
    overall = table[table["group"] == "all"].set_index(["metric", "score"])
    assert overall.loc[("psnr", "Aliasing"), "significant"]  # correlated
    assert overall.loc[("lpips_vgg", "Aliasing"), "significant"]  # anti-correlated
    noise = overall.loc[("noise", "Aliasing")]
    assert not noise["significant"] and noise["abs_ci_low"] == 0.0  # unrelated
    lines = printed.splitlines()
    header = lines[0]
    assert "|SROCC| 90% CI" in header and "SROCC 90% CI" in header and "sig" in header
    assert "sig * : the 90% CI of the signed SROCC excludes 0" in printed
    assert f"BCa bootstrap over images ({N_BOOT} resamples, seed 0)" in printed
    psnr_line = next(line for line in lines if line.split()[:3] == ["psnr", "Aliasing", "all"])
    noise_line = next(line for line in lines if line.split()[:3] == ["noise", "Aliasing", "all"])
    assert " * " in psnr_line and "*" not in noise_line
    assert f"[0.000, {noise['abs_ci_high']:.3f}]" in noise_line


def _text_boxes(fig):
    """Window extents of every visible, non-empty text of each visible axes, after a draw."""
    renderer = fig.canvas.get_renderer()
    boxes = {}
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label]
        for ticks, labels, (low, high) in ((ax.get_xticks(), ax.get_xticklabels(), sorted(ax.get_xlim())),
                                           (ax.get_yticks(), ax.get_yticklabels(), sorted(ax.get_ylim()))):
            span = 1e-9 * (high - low)  # labels of ticks outside the view are not drawn
            texts += [label for tick, label in zip(ticks, labels) if low - span <= tick <= high + span]
        boxes[ax] = [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]
    return boxes


def _assert_no_text_overlaps(fig):
    from matplotlib.transforms import Bbox

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = _text_boxes(fig)
    page = Bbox.from_extents(0, 0, *fig.canvas.get_width_height())
    legends = [legend.get_window_extent(renderer) for legend in fig.legends]
    for ax, texts in boxes.items():
        for box in texts:  # nothing cut off at the edge of the figure
            assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1, box
            assert page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, box
        for other, other_texts in boxes.items():
            if other is ax:
                continue
            panel = other.get_window_extent(renderer)
            for box in texts:  # no text of one panel on another panel's texts or plot area
                assert not box.overlaps(panel), (ax.get_title(), box, other.get_title())
                for other_box in other_texts:
                    assert not box.overlaps(other_box), (ax.get_title(), box, other.get_title(), other_box)
        for legend in legends:  # figure legends sit outside the panels
            assert not legend.overlaps(ax.get_window_extent(renderer)), ax.get_title()
            assert not any(legend.overlaps(box) for box in texts), ax.get_title()


def test_figures_with_long_metric_names_have_no_overlapping_text(tmp_path, monkeypatch):
    from lightning_dfd.analysis import plots

    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi: figures.setdefault(Path(path).name, fig)
                        and Path(path))  # fmt: skip
    rng = np.random.default_rng(0)
    names = [*plots.METRIC_LABELS, "noise_metric_with_a_rather_long_name", "a very long metric column name"]
    data = pd.DataFrame({name: rng.normal(size=30) for name in names})
    data["Cartilage/Meniscus"] = rng.integers(1, 10, size=30).astype(float)
    data["Acceleration"] = np.repeat([2, 4, 6], 10)
    plots.plot_metric_scatter(data, names, "Cartilage/Meniscus", tmp_path / "scatter.png",
                              color_by="Acceleration")
    table = corr.correlation_table(data.assign(Aliasing=data["Cartilage/Meniscus"]), names,
                                   ["Aliasing", "Cartilage/Meniscus"], n_boot=20)  # fmt: skip
    plots.plot_srocc_bars(table, tmp_path / "bars.png", irv={"Aliasing": 0.8, "Cartilage/Meniscus": 0.7})
    readers = pd.DataFrame({"Reader": np.repeat(["R1", "a_reader_with_a_long_name", "R3"], 10),
                            "score": rng.integers(1, 10, 30), "others_mean": rng.uniform(1, 9, 30)})
    plots.plot_inter_reader(readers, tmp_path / "irv.png", score="Cartilage/Meniscus")
    assert sorted(figures) == ["bars.png", "irv.png", "scatter.png"]
    for fig in figures.values():
        _assert_no_text_overlaps(fig)
    scatter = figures["scatter.png"]
    ylabels = [ax.get_ylabel() for ax in scatter.axes if ax.get_visible()]
    assert [_unwrap(label) for label in ylabels[:2]] == [plots.METRIC_LABELS[n] for n in ("psnr", "ssim")]
    assert "\n" in ylabels[1]  # wrapped, not shortened
    assert len(scatter.legends) == 1 and not any(ax.get_legend() for ax in scatter.axes)
