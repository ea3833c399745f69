"""The bf16 fidelity benchmark's pieces: rank statistics, the degradation set, the scoring path,
and the new SSFD / bf16 benchmark rows (no timing)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from benchmarks import fidelity as F
from benchmarks import references as R
from benchmarks import report


def test_rank_stats_match_scipy_and_brute_force():
    rng = np.random.default_rng(0)
    a = rng.random(40)
    b = a + 0.05 * rng.standard_normal(40)
    b[3] = b[7]  # a tie in one of them
    got = F.rank_stats(a, b)
    assert got["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert got["kendall"] == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-12)
    brute = sum((a[i] - a[j]) * (b[i] - b[j]) < 0 for i, j in itertools.combinations(range(40), 2))
    assert got["discordant"] == brute > 0
    assert got["max_abs"] == pytest.approx(np.abs(a - b).max())
    assert got["max_rel"] == pytest.approx((np.abs(a - b) / np.abs(a)).max())
    assert got["n"] == 40


def test_rank_stats_identical_order_and_bad_input():
    a = np.array([0.1, 0.3, 0.2, 0.9])
    same = F.rank_stats(a, a * 1.01)  # a monotone change keeps every rank
    assert same["spearman"] == pytest.approx(1.0) and same["kendall"] == pytest.approx(1.0)
    assert same["discordant"] == 0 and same["max_rel"] == pytest.approx(0.01)
    assert np.isnan(F.rank_stats(np.ones(3), np.arange(3.0))["spearman"])
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        F.rank_stats(a, a[:3])


def test_grouped_stats_split_by_key():
    a = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    b = np.array([1.0, 2.0, 3.0, 30.0, 20.0, 10.0])  # second group reversed
    got = F.grouped_stats(a, b, ["x", "x", "x", "y", "y", "y"])
    assert list(got) == ["x", "y"]
    assert got["x"]["spearman"] == pytest.approx(1.0)
    assert got["y"]["spearman"] == pytest.approx(-1.0) and got["y"]["discordant"] == 3


@pytest.fixture(scope="module")
def small_set():
    return F.build_degradation_set(targets=2, size=64, unet_steps=(1, 2), log=lambda m: None)


def test_degradation_set_is_graded(small_set):
    s = small_set
    per_target = 8 + len(F.NOISE_LEVELS) + 2 * 2 * 2  # zero-filled, noise, UNet (2 snapshots)
    assert len(s.pairs) == s.preds.shape[0] == 2 * per_target
    assert tuple(s.targets.shape) == (2, 64, 64)
    assert [p["family"] for p in s.pairs].count("noise") == 2 * len(F.NOISE_LEVELS)
    err = np.array([float((s.preds[i] - s.targets[p["target"]]).pow(2).mean())
                    for i, p in enumerate(s.pairs)])
    for t in range(2):
        noise = [err[i] for i, p in enumerate(s.pairs) if p["target"] == t and p["family"] == "noise"]
        assert np.all(np.diff(noise) > 0), noise  # more noise, larger error
        zf = [err[i] for i, p in enumerate(s.pairs)
              if p["target"] == t and p["family"] == "zero-filled equispaced"]
        assert zf[0] < zf[-1]  # 2x closer to the target than 8x
    assert (s.targets >= 0).all() and torch.isfinite(s.preds).all()


def test_score_dfd_equals_the_metric_path(small_set):
    scored = F.score_dfd("LPIPS-VGG", small_set, heads=("LPIPS-VGG-nolin",), log=lambda m: None)
    assert set(scored) == {"LPIPS-VGG", "LPIPS-VGG-nolin"}
    for name, result in scored.items():
        assert result["values"]["fp32"].shape == (len(small_set.pairs),)
        checks = F.metric_path_check(name, small_set, result)
        assert checks["fp32"] < 1e-5, checks
        assert checks["bf16"] < 5e-2, checks
    summary = F.summarise("LPIPS-VGG", small_set, scored["LPIPS-VGG"])
    assert summary["overall"]["n"] == len(small_set.pairs)
    assert len(summary["layers"]) == 5 and len(summary["layer_err"]) == 5
    lines = F.markdown([summary], small_set, ["meta"])
    assert lines[0] == "<!-- section:fidelity -->" and lines[-1] == "<!-- end:fidelity -->"
    assert any(line.startswith("| LPIPS-VGG | ") for line in lines)


def test_replace_section_appends_then_replaces(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# head\n\nbody\n")
    F.replace_section(path, ["<!-- section:x -->", "one", "<!-- end:x -->"], "x")
    F.replace_section(path, ["<!-- section:y -->", "why", "<!-- end:y -->"], "y")
    F.replace_section(path, ["<!-- section:x -->", "two", "<!-- end:x -->"], "x")
    text = path.read_text()
    assert text.startswith("# head\n\nbody\n") and "one" not in text
    assert text.index("two") < text.index("why") and text.count("<!-- section:x -->") == 1


def test_ssfd_reference_matches_the_metric(tmp_path):
    from lightning_dfd import SSFD
    from lightning_dfd.encoders.ssfd import SSFDEncoder

    torch.manual_seed(0)
    path = tmp_path / "ssfd.ckpt"
    torch.save({"model_state_dict": SSFDEncoder().state_dict()}, path)
    preds, target = R.mr_like_batch(3, 48, 40, seed=2)
    ours = SSFD(weights=path, reduction="none")
    ours.update(preds, target)
    ref = R.ssfd_reference(R.ssfd_floor(path))(preds, target)
    torch.testing.assert_close(ours.compute(), ref, rtol=1e-5, atol=1e-7)


def test_bf16_targets_and_column_in_the_report():
    rows = report.as_dicts([
        {"group": "LPIPS-VGG", "case": "ours bf16 uncached", "kind": "ours", "height": 320,
         "width": 320, "batch": 8, "x_floor": 0.7, "speedup_vs_package": 3.3,
         "speedup_vs_fp32": 3.1, "speedup_vs_fp32_wall": 3.0},
        {"group": "LPIPS-VGG", "case": "ours bf16 cached", "kind": "ours", "height": 320,
         "width": 320, "batch": 8, "x_floor": 0.4, "speedup_vs_package": 5.5},
        {"group": "ResNetFD", "case": "ours bf16 uncached", "kind": "ours", "height": 320,
         "width": 320, "batch": 8, "x_floor": 0.9, "speedup_vs_fp32": 2.4},
    ])
    lines, missed = report.targets(rows, [])
    text = "\n".join(lines)
    assert "| LPIPS-VGG ours bf16 uncached >= 3.0x the lpips package | 3.30x | met |" in text
    assert "| LPIPS-VGG ours bf16 cached >= 6.0x the lpips package | 5.50x | **missed** (by 8 %) |" in text
    assert "| ResNetFD ours bf16 uncached >= 2.0x its fp32 | 2.40x | met |" in text
    assert "bf16" in missed
    table = report._metric_table(rows[:1])
    assert "vs ours fp32" in table[0] and "3.10 (3.00)" in table[2]


def test_embed_puts_a_report_under_one_section(tmp_path):
    source, dest = tmp_path / "run.md", tmp_path / "RESULTS.md"
    source.write_text("# Benchmarks\n\nGenerated by x.\n\n## Targets of the issue\n\n| a |\n")
    dest.write_text("# Main\n\n## LPIPS-VGG\n")
    report.embed(source, dest, "bf16", "bf16 rows")
    report.embed(source, dest, "bf16", "bf16 rows")  # again: replaced, not appended
    text = dest.read_text()
    assert text.startswith("# Main\n\n## LPIPS-VGG\n")
    assert text.count("<!-- section:bf16 -->") == 1 and "### Targets of the issue" in text
    assert "# Benchmarks" not in text


def test_regenerated_report_keeps_the_sections(tmp_path):
    dest = tmp_path / "RESULTS.md"
    dest.write_text("# old\n")
    F.replace_section(dest, ["<!-- section:fidelity -->", "kept", "<!-- end:fidelity -->"], "fidelity")
    report.write_markdown([], dest, {"argv": "", "date": "now", "setup": []}, analysis=[])
    text = dest.read_text()
    assert "# old" not in text and "kept" in text and text.count("<!-- section:fidelity -->") == 1
