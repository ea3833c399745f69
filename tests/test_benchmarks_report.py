"""The benchmark report: CSV round trip, merging runs, and the targets' verdicts (no timing)."""

from __future__ import annotations

from benchmarks import report
from benchmarks.run import merge


def _metric_row(case: str, kind: str, x_floor: float, **extra) -> dict:
    row = {"section": "metric", "group": "LPIPS-VGG", "case": case, "kind": kind, "device": "cpu",
           "height": 320, "width": 320, "batch": 8, "median_s": 1.0, "cpu_s": 2.0,
           "images_per_s": 8.0, "x_floor": x_floor, "speedup_vs_package": 2.4 / x_floor,
           "speedup_vs_torchmetrics": 2.3 / x_floor, "repeats": 3, "notes": "a, b"}
    row.update(extra)
    return report.as_dicts([row])[0]


def _rows() -> list[dict]:
    return [
        _metric_row("floor: bare VGG-16, channels_last", "floor", 1.0),
        _metric_row("ours uncached", "ours", 2.1, max_abs_diff=3e-7, rel_diff=1e-6),
        _metric_row("ours cached", "ours", 1.3, max_abs_diff=3e-7, rel_diff=1e-6),
        _metric_row("lpips package", "reference", 2.4, max_abs_diff=0.0, rel_diff=0.0),
        report.as_dicts([{"section": "epoch", "group": "UNet validation epoch",
                          "case": "suite, cached", "median_s": 10.0, "images_per_s": 0.8,
                          "overhead": 0.5, "notes": "8 slices"}])[0],
    ]


def test_csv_round_trip_keeps_types(tmp_path):
    rows = _rows()
    report.write_csv(rows, tmp_path / "results.csv")
    back = report.read_csv(tmp_path / "results.csv")
    assert back == rows
    assert isinstance(back[0]["batch"], int) and back[0]["max_abs_diff"] is None


def test_targets_report_met_and_missed_with_margin():
    metric = [r for r in _rows() if r["section"] == "metric"]
    epoch = [r for r in _rows() if r["section"] == "epoch"]
    lines, missed = report.targets(metric, epoch)
    table = "\n".join(lines)
    assert "| LPIPS-VGG uncached <= 2.2x floor | 2.10x | met |" in table
    assert "LPIPS-VGG cached <= 1.15x floor | 1.30x | **missed** (by 13 %)" in table
    assert "epoch overhead, suite, cached <= 30 % | +50 % | **missed**" in table
    assert {"cached", "epoch", "speedup"} <= missed and "uncached" not in missed


def test_merge_combines_runs_into_one_report(tmp_path):
    rows = _rows()
    for name, part in (("a", rows[:4]), ("b", rows[4:])):
        folder = tmp_path / name
        folder.mkdir()
        report.write_csv(part, folder / "results.csv")
        meta = {"argv": f"--groups {name}", "date": "today", "setup": [f"Load average {name}."]}
        report.write_markdown(part, folder / "RESULTS.md", meta, analysis=[])
    assert merge([tmp_path / "b", tmp_path / "a"], tmp_path / "out") == 0
    text = (tmp_path / "out" / "RESULTS.md").read_text()
    assert "Merged from `python -m benchmarks.run --groups b`" in text
    assert "Load average a." in text and "Load average b." in text
    assert text.index("## LPIPS-VGG") < text.index("## UNet validation epoch")
    merged = report.read_csv(tmp_path / "out" / "results.csv")
    assert [r["section"] for r in merged] == ["metric"] * 4 + ["epoch"]


def test_merge_fills_a_row_measured_in_two_runs(tmp_path):
    timing = _metric_row("ours uncached", "ours", 2.1, max_abs_diff=3e-7, rel_diff=1e-6,
                         peak_mem_gib=6.0)
    memory = report.as_dicts([{k: timing[k] for k in ("section", "group", "case", "kind", "device",
                                                       "height", "width", "batch")}
                              | {"peak_mem_subprocess_gib": 5.5}])[0]
    for name, part in (("t", [timing]), ("m", [memory])):
        (tmp_path / name).mkdir()
        report.write_csv(part, tmp_path / name / "results.csv")
        report.write_markdown(part, tmp_path / name / "RESULTS.md",
                              {"argv": name, "date": "today", "setup": []}, analysis=[])
    merge([tmp_path / "t", tmp_path / "m"], tmp_path / "out")
    (row,) = report.read_csv(tmp_path / "out" / "results.csv")
    assert row["x_floor"] == 2.1 and row["peak_mem_gib"] == 6.0
    assert row["peak_mem_subprocess_gib"] == 5.5
