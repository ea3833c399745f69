"""`lightning-dfd evaluate`: h5 predictions vs references, per-image and per-volume tables."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from fastmri import evaluate as fastmri_evaluate

from lightning_dfd.analysis.commands.evaluate import volumes_path
from lightning_dfd.cli import main
from lightning_dfd.metrics import LPIPS, NMSE, PSNR, SSIM

SHAPE = (3, 32, 32)  # slices, H, W
METRICS = "psnr,ssim,nmse,lpips_alex"


def _phantom(rng: np.random.Generator, shape=SHAPE, air: bool = False) -> np.ndarray:
    """A bright blob over the whole view; ``air``: cut to a disk with noise only around it."""
    yy, xx = np.mgrid[: shape[1], : shape[2]] / shape[1]
    base = np.exp(-((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * 8)
    if air:
        base = base * (((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.42**2)
    scale = 1.0 + np.arange(shape[0])[:, None, None] * 0.2  # slices differ in brightness
    return (scale * base + 0.05 * rng.random(shape)).astype(np.float32)


def _write(path: Path, key: str, data: np.ndarray) -> None:
    """fastMRI layout: the reconstruction `save_reconstructions` writes, or a reference."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset(key, data=data)


def _make_dataset(root: Path, n_volumes: int = 2,
                  air: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    volumes = {}
    for v in range(n_volumes):
        target = _phantom(rng, air=air)
        preds = target + (0.02 + 0.03 * v) * rng.standard_normal(SHAPE).astype(np.float32)
        name = f"file{1000 + v}"
        _write(root / "ref" / f"{name}.h5", "reconstruction_rss", target)
        _write(root / "rec" / f"{name}.h5", "reconstruction", preds)
        volumes[name] = (preds, target)
    return volumes


def _argv(root: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--target",
        str(root / "ref"),
        "--predictions",
        str(root / "rec"),
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def test_evaluate_agrees_with_the_metric_classes(tmp_path, alexnet_random, capsys):
    volumes = _make_dataset(tmp_path)
    out = tmp_path / "results" / "results.csv"
    code = main(
        _argv(
            tmp_path,
            "--metrics",
            METRICS,
            "--weights",
            f"lpips_alex={alexnet_random}",
            "--out",
            str(out),
            "--batch-size",
            "2",
        )
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean" in printed and "lpips_alex" in printed

    images = pd.read_csv(out)
    assert list(images.columns) == ["volume", "slice", "psnr", "ssim", "nmse", "lpips_alex"]
    assert images[["volume", "slice"]].values.tolist() == [
        [name, s] for name in volumes for s in range(SHAPE[0])
    ]
    summary = pd.read_csv(volumes_path(out))
    assert list(summary.columns) == ["volume", "n_slices", "psnr", "ssim", "nmse", "lpips_alex"]

    lpips = LPIPS(net="alex", weights=alexnet_random, reduction="none")
    for name, (preds, target) in volumes.items():
        p, t = torch.from_numpy(preds), torch.from_numpy(target)
        volume_max = float(target.max())
        rows = images[images["volume"] == name]
        for cls, column in ((PSNR, "psnr"), (SSIM, "ssim"), (NMSE, "nmse")):
            metric = cls(reduction="none")
            metric.update(p, t, data_range=torch.full((SHAPE[0],), volume_max))
            np.testing.assert_allclose(rows[column], metric.compute().numpy(), rtol=1e-5)
        lpips.reset()
        lpips.update(p, t)
        np.testing.assert_allclose(rows["lpips_alex"], lpips.compute().numpy(), rtol=1e-5)
        # the per-volume summary follows fastMRI's evaluate.py
        vol = summary.set_index("volume").loc[name]
        assert vol["n_slices"] == SHAPE[0]
        assert vol["psnr"] == pytest.approx(fastmri_evaluate.psnr(target, preds), rel=1e-5)
        assert vol["ssim"] == pytest.approx(fastmri_evaluate.ssim(target, preds), rel=1e-5)
        assert vol["nmse"] == pytest.approx(fastmri_evaluate.nmse(target, preds), rel=1e-5)
        assert vol["lpips_alex"] == pytest.approx(rows["lpips_alex"].mean(), rel=1e-6)
    # the noisier second volume scores worse on every metric
    worse = summary.set_index("volume")
    assert worse.loc["file1001", "psnr"] < worse.loc["file1000", "psnr"]
    assert worse.loc["file1001", "lpips_alex"] > worse.loc["file1000", "lpips_alex"]


def test_center_slice_complex_reference_and_the_correlate_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for v in range(4):
        target = _phantom(rng, (5, 24, 24)) * np.exp(1j * 0.3).astype(np.complex64)
        preds = np.abs(target) + 0.01 * (v + 1) * rng.standard_normal((5, 24, 24))
        _write(tmp_path / "ref" / f"vol{v}.h5", "target", target.astype(np.complex64))
        _write(tmp_path / "rec" / f"vol{v}.h5", "reconstruction", preds.astype(np.float32))
    out = tmp_path / "results.csv"
    assert (
        main(
            _argv(
                tmp_path,
                "--metrics",
                "psnr,nmse",
                "--target-key",
                "target",
                "--slices",
                "center",
                "--out",
                str(out),
            )
        )
        == 0
    )
    images = pd.read_csv(out)
    assert images["slice"].tolist() == [2, 2, 2, 2]
    with h5py.File(tmp_path / "ref" / "vol0.h5") as f, h5py.File(tmp_path / "rec" / "vol0.h5") as g:
        target, preds = np.abs(f["target"][2:3]), g["reconstruction"][2:3]
        volume_max = np.abs(f["target"][()]).max()
    assert images.loc[0, "psnr"] == pytest.approx(
        fastmri_evaluate.psnr(target, preds, maxval=volume_max), rel=1e-5
    )
    assert images["psnr"].is_monotonic_decreasing

    # evaluate's table is correlate's input as it stands
    scores = pd.DataFrame(
        [
            {"volume": f"vol{v}", "slice": 2, "Reader": r, "Aliasing": 9 - v - (r == "B")}
            for v in range(4)
            for r in "ABC"
        ]
    )
    scores.to_csv(tmp_path / "scores.csv", index=False)
    capsys.readouterr()
    assert (
        main(
            [
                "correlate",
                "--metrics",
                str(out),
                "--scores",
                str(tmp_path / "scores.csv"),
                "--no-plots",
                "--n-boot",
                "20",
                "--out",
                str(tmp_path / "corr"),
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "corr" / "srocc.csv").set_index("metric")
    assert table.loc["psnr", "srocc"] == pytest.approx(1.0)
    assert table.loc["nmse", "srocc"] == pytest.approx(-1.0)


def test_bad_files_are_named_and_the_rest_is_still_scored(tmp_path, capsys):
    volumes = _make_dataset(tmp_path, n_volumes=2)  # file1000 and file1001 are fine
    preds, target = volumes["file1000"]
    _write(tmp_path / "rec" / "orphan.h5", "reconstruction", preds)  # no reference
    _write(tmp_path / "ref" / "unpredicted.h5", "reconstruction_rss", target)  # no prediction
    _write(tmp_path / "rec" / "wrongkey.h5", "recon", preds)
    _write(tmp_path / "ref" / "wrongkey.h5", "reconstruction_rss", target)
    _write(tmp_path / "rec" / "wrongshape.h5", "reconstruction", preds[:, :30])
    _write(tmp_path / "ref" / "wrongshape.h5", "reconstruction_rss", target)
    nan_preds = preds.copy()
    nan_preds[1, 3, 3] = np.nan
    _write(tmp_path / "rec" / "nan.h5", "reconstruction", nan_preds)
    _write(tmp_path / "ref" / "nan.h5", "reconstruction_rss", target)
    out = tmp_path / "results.csv"

    code = main(_argv(tmp_path, "--metrics", "psnr,ssim", "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 1
    assert "skipped orphan.h5: no reference file of that name in" in err
    assert "skipped unpredicted.h5: no prediction file of that name in" in err
    assert "skipped wrongkey.h5: no dataset 'reconstruction' in wrongkey.h5; datasets: ['recon']" in err
    assert (
        "skipped wrongshape.h5: shape mismatch: prediction 'reconstruction' (3, 30, 32) vs "
        "reference 'reconstruction_rss' (3, 32, 32)"
    ) in err
    assert "skipped nan.h5:" in err and "5 file(s) not scored" in err
    images = pd.read_csv(out)
    assert sorted(images["volume"].unique()) == ["file1000", "file1001"]
    # the good files give the same numbers as a run without the bad ones
    for name in ("orphan", "unpredicted", "wrongkey", "wrongshape", "nan"):
        for folder in ("rec", "ref"):
            (tmp_path / folder / f"{name}.h5").unlink(missing_ok=True)
    assert main(_argv(tmp_path, "--metrics", "psnr,ssim", "--out", str(tmp_path / "clean.csv"))) == 0
    pd.testing.assert_frame_equal(images, pd.read_csv(tmp_path / "clean.csv"))


def test_bad_arguments_exit_2_with_a_clear_message(tmp_path, capsys, monkeypatch):
    _make_dataset(tmp_path, n_volumes=1)
    assert main(_argv(tmp_path, "--metrics", "psnr,sharpness")) == 2
    assert "Unknown metric 'sharpness'; known names: psnr" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # where the default --out (runs/evaluate) would go
    assert main(["evaluate", "--target", str(tmp_path / "nope"), "--predictions", str(tmp_path / "rec")]) == 2
    assert not (tmp_path / "runs").exists()  # bad inputs leave no output folder behind
    assert "target folder not found" in capsys.readouterr().err
    # the default ImageNet weights are not there offline: say which file is missing
    assert main(_argv(tmp_path, "--metrics", "lpips_alex", "--out", str(tmp_path / "r.csv"))) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "alexnet" in err.lower()
    assert not (tmp_path / "r.csv").exists()


def test_files_are_sharded_whole_without_padding_and_an_idle_rank_gets_an_empty_batch(tmp_path):
    from lightning_dfd.analysis.engine import FileShardSampler, SlicePairDataset, index_files
    from lightning_dfd.analysis.evaluation import EvaluationConfig, pair_files

    rng = np.random.default_rng(2)
    for index, slices in enumerate((3, 4, 6)):
        target = _phantom(rng, (slices, 16, 16))
        _write(tmp_path / "ref" / f"v{index}.h5", "reconstruction_rss", target)
        _write(tmp_path / "rec" / f"v{index}.h5", "reconstruction", target * 0.9)
    pairs, _ = pair_files(tmp_path / "rec", tmp_path / "ref")
    config = EvaluationConfig(metrics=("psnr",), batch_size=2)
    entries, problems = index_files(pairs, config)
    dataset = SlicePairDataset(entries, config)
    assert not problems and len(dataset) == 13
    for world in (1, 2, 3, 4):
        shards = [list(FileShardSampler(dataset, 2, world, rank)) for rank in range(world)]
        seen = [i for shard in shards for batch in shard for i in batch]
        assert sorted(seen) == list(range(13))  # every slice once: no padding, no repeat
        for shard in shards:
            for batch in shard:  # a batch never mixes files
                assert len({dataset.items[i][0] for i in batch}) <= 1 and len(batch) <= 2
        if world == 2:  # 6 slices on one rank, 3 + 4 on the other
            files = [sorted({dataset.items[i][0] for b in shard for i in b}) for shard in shards]
            assert files == [[2], [0, 1]]
        if world == 4:
            assert shards[3] == [[]]  # idle, but it runs the loop (and the gather) with the others


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ddp_processes_give_the_single_process_table_row_by_row(tmp_path, alexnet_random):
    """strategy=ddp, 2 gloo processes on CPU (Lightning re-launches the command): same rows."""
    import os
    import subprocess
    import sys

    rng = np.random.default_rng(4)
    for index, slices in enumerate((3, 4, 6)):  # 13 slices: a padding sampler would repeat one
        target = _phantom(rng, (slices, 32, 32))
        preds = target + 0.03 * (index + 1) * rng.standard_normal(target.shape).astype(np.float32)
        _write(tmp_path / "ref" / f"file{index}.h5", "reconstruction_rss", target)
        _write(tmp_path / "rec" / f"file{index}.h5", "reconstruction", preds)
    tiny = _phantom(rng, (2, 8, 8))  # fails on whichever rank scores it: reported once
    _write(tmp_path / "ref" / "tiny.h5", "reconstruction_rss", tiny)
    _write(tmp_path / "rec" / "tiny.h5", "reconstruction", tiny)
    # resnet_fd on random weights: equal rows only if every rank builds the same (seeded) weights
    common = ["--metrics", "psnr,ssim,nmse,lpips_alex,resnet_fd",
              "--weights", f"lpips_alex={alexnet_random},resnet_fd=random", "--batch-size", "2"]  # fmt: skip
    assert main(_argv(tmp_path, *common, "--out", str(tmp_path / "one" / "r.csv"))) == 1
    command = [sys.executable, "-m", "lightning_dfd.cli",
               *_argv(tmp_path, *common, "--out", str(tmp_path / "two" / "r.csv")),
               "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu"]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-4000:]
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output, output[-4000:]
    assert output.count("skipped tiny.h5") == 1
    for name in ("r.csv", "r_volumes.csv", "r_errors.csv"):
        one, two = pd.read_csv(tmp_path / "one" / name), pd.read_csv(tmp_path / "two" / name)
        if "resnet_fd" in one:  # 1 thread per rank vs 2: float sums in another order (rel ~1e-5)
            pd.testing.assert_series_equal(one.pop("resnet_fd"), two.pop("resnet_fd"), rtol=1e-4)
        pd.testing.assert_frame_equal(one, two, rtol=1e-6, obj=name)
    rows = pd.read_csv(tmp_path / "two" / "r.csv")
    assert rows[["volume", "slice"]].values.tolist() == [
        [f"file{v}", s] for v, n in enumerate((3, 4, 6)) for s in range(n)
    ]  # each slice exactly once
    assert pd.read_csv(tmp_path / "two" / "r_errors.csv")["file"].tolist() == ["tiny.h5"]


# --- robustness: every per-file failure caught, outputs checked first and written atomically ---


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_too_small_for_the_encoder_bad_h5_and_zero_slices_are_reported_not_fatal(
    tmp_path, alexnet_random, capsys
):
    _make_dataset(tmp_path, n_volumes=2)
    rng = np.random.default_rng(5)
    tiny = _phantom(rng, (2, 8, 8))  # AlexNet's pooling cannot run on 8x8: RuntimeError
    _write(tmp_path / "ref" / "tiny.h5", "reconstruction_rss", tiny)
    _write(tmp_path / "rec" / "tiny.h5", "reconstruction", tiny * 0.9)
    (tmp_path / "rec" / "garbage.h5").write_bytes(b"not an h5 file at all" * 10)
    _write(tmp_path / "ref" / "garbage.h5", "reconstruction_rss", tiny)
    _write(tmp_path / "ref" / "empty.h5", "reconstruction_rss", np.zeros((0, 32, 32), np.float32))
    _write(tmp_path / "rec" / "empty.h5", "reconstruction", np.zeros((0, 32, 32), np.float32))
    out = tmp_path / "out" / "results.csv"
    common = ["--metrics", "psnr,lpips_alex", "--weights", f"lpips_alex={alexnet_random}"]

    code = main(_argv(tmp_path, *common, "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 1
    assert "skipped tiny.h5: " in err and "[score]" in err
    assert "skipped garbage.h5:" in err
    assert (
        "skipped empty.h5: dataset 'reconstruction_rss' in empty.h5 holds no image: shape (0, 32, 32)"
    ) in err
    assert "zero-size array" not in err and "3 file(s) not scored" in err
    errors = pd.read_csv(volumes_path(out).with_name("results_errors.csv"))
    assert errors.columns.tolist() == ["file", "stage", "error"]
    assert errors[["file", "stage"]].values.tolist() == [
        ["empty.h5", "read"], ["garbage.h5", "read"], ["tiny.h5", "score"]
    ]
    images = pd.read_csv(out)
    assert sorted(images["volume"].unique()) == ["file1000", "file1001"]
    # the good files are scored exactly as in a run without the bad ones
    for name in ("tiny", "garbage", "empty"):
        for folder in ("rec", "ref"):
            (tmp_path / folder / f"{name}.h5").unlink()
    assert main(_argv(tmp_path, *common, "--out", str(tmp_path / "clean.csv"))) == 0
    pd.testing.assert_frame_equal(images, pd.read_csv(tmp_path / "clean.csv"))
    assert pd.read_csv(tmp_path / "clean_errors.csv").empty


def test_no_pairs_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path / "ref" / "a.h5", "reconstruction_rss", np.ones((1, 8, 8), np.float32))
    _write(tmp_path / "rec" / "b.h5", "reconstruction", np.ones((1, 8, 8), np.float32))
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(tmp_path / "r.csv"))) == 2
    assert "has a reference of the same name" in capsys.readouterr().err
    assert not (tmp_path / "r.csv").exists()


@pytest.fixture
def no_scoring(monkeypatch):
    """Fail the test if any file gets scored."""
    from lightning_dfd.analysis import engine

    def refuse(*args, **kwargs):
        raise AssertionError("scoring started although --out is unusable")

    monkeypatch.setattr(engine, "evaluate", refuse)


def test_bad_out_is_refused_before_any_scoring(tmp_path, capsys, monkeypatch, no_scoring):
    import tempfile

    _make_dataset(tmp_path, n_volumes=1)
    (tmp_path / "folder.csv").mkdir()
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(tmp_path / "folder.csv"))) == 2
    assert "folder.csv is a folder; give a file name" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(tmp_path / "a_file" / "r.csv"))) == 2
    assert "a_file exists and is not a folder" in capsys.readouterr().err

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)  # a read-only folder (we run as root)
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(tmp_path / "ro" / "r.csv"))) == 2
    err = capsys.readouterr().err
    assert "cannot write into" in err and "Permission denied" in err


def test_an_interrupted_run_leaves_no_current_looking_result(tmp_path, capsys, monkeypatch):
    from lightning_dfd.analysis import engine

    _make_dataset(tmp_path, n_volumes=1)
    out = tmp_path / "results.csv"
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(out))) == 0
    earlier = out.read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(_argv(tmp_path, "--metrics", "psnr", "--out", str(out)))
    # the earlier result is kept, but only under a name that says it is not this run's
    assert not out.exists() and not volumes_path(out).exists()
    assert (tmp_path / "results.csv.previous").read_text() == earlier
    assert not list(tmp_path.glob(".*tmp"))
    monkeypatch.undo()
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(out))) == 0
    assert out.read_text() == earlier and not (tmp_path / "results.csv.previous").exists()


def test_a_full_disk_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import errno

    _make_dataset(tmp_path, n_volumes=1)
    out = tmp_path / "results.csv"
    real_to_csv = pd.DataFrame.to_csv
    calls = []

    def full_disk(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the first file is written, the disk fills on the second
            Path(path).write_text("volume,sl")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert "the disk is full; nothing was written" in err
    assert _listing(tmp_path) == ["rec", "ref"]  # neither real names nor temp files


# --- outputs under runs/, column conventions, the paper's protocol ---------------------------


def test_default_outputs_go_under_runs_and_each_column_names_its_convention(tmp_path, monkeypatch):
    _make_dataset(tmp_path, n_volumes=1)
    monkeypatch.chdir(tmp_path)
    assert main(_argv(tmp_path, "--metrics", "psnr,ssim,nmse")) == 0
    folder = tmp_path / "runs" / "evaluate"
    assert _listing(folder) == [
        "results.csv", "results_columns.csv", "results_errors.csv", "results_volumes.csv"
    ]  # fmt: skip
    columns = pd.read_csv(folder / "results_columns.csv").set_index("column")["convention"]
    assert list(columns.index) == ["volume", "slice", "psnr", "ssim", "nmse"]
    assert "fastMRI convention" in columns["ssim"] and "7x7 uniform window" in columns["ssim"]
    assert "maximum of the reference volume" in columns["psnr"]
    assert not (tmp_path / "results.csv").exists()


def _paper_reference_psnr(preds: np.ndarray, target: np.ndarray) -> float:
    """meddlr's psnr: 20 log10(max |target| / RMSE) of one image."""
    rmse = np.sqrt(np.mean((preds.astype(np.float64) - target) ** 2))
    return float(20 * np.log10(target.max() / rmse))


def test_protocol_paper_scores_the_centre_slice_scaled_by_its_reference_max(tmp_path):
    volumes = _make_dataset(tmp_path, n_volumes=2)
    out = tmp_path / "paper.csv"
    assert main(_argv(tmp_path, "--metrics", "psnr,nmse", "--protocol", "paper", "--out", str(out))) == 0
    images = pd.read_csv(out)
    assert images["slice"].tolist() == [1, 1]  # the centre of 3 slices
    for name, (preds, target) in volumes.items():
        row = images.set_index("volume").loc[name]
        assert row["psnr"] == pytest.approx(_paper_reference_psnr(preds[1], target[1]), rel=1e-5)
        assert row["nmse"] == pytest.approx(fastmri_evaluate.nmse(target[1:2], preds[1:2]), rel=1e-5)
    columns = pd.read_csv(tmp_path / "paper_columns.csv").set_index("column")["convention"]
    assert "centre slice" in columns["slice"] and "maximum of each reference slice" in columns["psnr"]
    assert "divided by its reference slice's maximum" in columns["psnr"]
    # the fastMRI protocol on the centre slice differs: its data range is the volume's maximum
    fastmri_argv = _argv(tmp_path, "--metrics", "psnr", "--slices", "center", "--out", str(tmp_path / "f"))
    assert main(fastmri_argv) == 0
    assert not np.allclose(pd.read_csv(tmp_path / "f")["psnr"], images["psnr"])


@pytest.mark.skipif(
    "window" not in __import__("inspect").signature(SSIM).parameters,
    reason="SSIM(window='gaussian') comes with the pixel-metrics branch",
)
def test_protocol_paper_ssim_is_the_gaussian_window_ssim(tmp_path):
    from skimage.metrics import structural_similarity  # meddlr's ssim(method="wang") equals it

    volumes = _make_dataset(tmp_path, n_volumes=2)
    out = tmp_path / "paper.csv"
    assert main(_argv(tmp_path, "--metrics", "psnr,ssim", "--protocol", "paper", "--out", str(out))) == 0
    images = pd.read_csv(out).set_index("volume")
    assert list(images.columns) == ["slice", "psnr", "ssim_gaussian"]
    for name, (preds, target) in volumes.items():
        peak = float(target[1].max())
        expected = structural_similarity(
            target[1].astype(np.float64) / peak, preds[1].astype(np.float64) / peak,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
        )  # fmt: skip
        assert images.loc[name, "ssim_gaussian"] == pytest.approx(expected, rel=1e-5)
    columns = pd.read_csv(tmp_path / "paper_columns.csv").set_index("column")["convention"]
    assert "11x11 Gaussian window, sigma 1.5" in columns["ssim_gaussian"]


@pytest.mark.skipif(
    "precision" not in __import__("inspect").signature(LPIPS).parameters
    and "precision" not in __import__("inspect").signature(LPIPS.__mro__[1]).parameters,
    reason="DFD precision='bf16' comes with the metric-core branch",
)
def test_precision_bf16_scores_the_dfds_in_bf16_and_says_so(tmp_path, alexnet_random):
    _make_dataset(tmp_path, n_volumes=1)
    common = ["--metrics", "psnr,lpips_alex", "--weights", f"lpips_alex={alexnet_random}"]
    assert main(_argv(tmp_path, *common, "--out", str(tmp_path / "fp32.csv"))) == 0
    assert main(_argv(tmp_path, *common, "--precision", "bf16", "--out", str(tmp_path / "bf16.csv"))) == 0
    fp32, bf16 = pd.read_csv(tmp_path / "fp32.csv"), pd.read_csv(tmp_path / "bf16.csv")
    pd.testing.assert_series_equal(fp32["psnr"], bf16["psnr"])  # pixel metrics untouched
    np.testing.assert_allclose(bf16["lpips_alex"], fp32["lpips_alex"], rtol=0.05)
    columns = pd.read_csv(tmp_path / "bf16_columns.csv").set_index("column")["convention"]
    assert columns["lpips_alex"].endswith("encoder in bf16")


def test_ctrl_c_inside_the_lightning_loop_leaves_no_current_looking_result(tmp_path, monkeypatch):
    import signal

    from lightning_dfd.analysis.engine import EvaluationModule

    _make_dataset(tmp_path, n_volumes=2)
    out = tmp_path / "results.csv"
    assert main(_argv(tmp_path, "--metrics", "psnr", "--out", str(out))) == 0
    earlier = out.read_text()
    real_score, calls = EvaluationModule._score, []

    def interrupt_on_second_file(self, batch, state):
        calls.append(batch["file"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second file is scored
        return real_score(self, batch, state)

    monkeypatch.setattr(EvaluationModule, "_score", interrupt_on_second_file)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown ends with exit(1)
            main(_argv(tmp_path, "--metrics", "psnr", "--out", str(out)))
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT while it shuts down
    assert calls == [0, 1]
    assert _listing(tmp_path) == ["rec", "ref", "results.csv.previous", "results_columns.csv.previous",
                                  "results_errors.csv.previous", "results_volumes.csv.previous"]  # fmt: skip
    assert (tmp_path / "results.csv.previous").read_text() == earlier


def test_mask_foreground_scores_the_object_only(tmp_path):
    from lightning_dfd.spatial import foreground_mask, masked_psnr

    volumes = _make_dataset(tmp_path, n_volumes=1, air=True)  # an object with air around it
    out = tmp_path / "masked.csv"
    argv = _argv(tmp_path, "--metrics", "psnr,nmse", "--data-range", "image", "--out", str(out))
    assert main([*argv, "--mask", "foreground"]) == 0
    masked = pd.read_csv(out)
    (name, (preds, target)), = volumes.items()
    t, p = torch.from_numpy(target), torch.from_numpy(preds)
    mask = foreground_mask(t, largest_component=True)
    assert 0 < int(mask.sum()) < mask.numel()
    expected = masked_psnr(p, t, mask, t.flatten(1).amax(1), reduction="none")
    np.testing.assert_allclose(masked["psnr"], expected.numpy(), rtol=1e-5)
    assert main([*argv[:-1], str(tmp_path / "plain.csv")]) == 0
    assert not np.allclose(pd.read_csv(tmp_path / "plain.csv")["psnr"], masked["psnr"])
    columns = pd.read_csv(tmp_path / "masked_columns.csv").set_index("column")["convention"]
    assert "foreground" in columns["psnr"]


def test_mask_foreground_reports_a_slice_of_noise_only(tmp_path, capsys):
    volumes = _make_dataset(tmp_path, n_volumes=2, air=True)
    noise = np.random.default_rng(3).rayleigh(0.05, SHAPE[1:]).astype(np.float32)
    target = volumes["file1001"][1].copy()
    target[1] = noise  # a slice past the anatomy: air only
    _write(tmp_path / "ref" / "file1001.h5", "reconstruction_rss", target)
    out = tmp_path / "masked.csv"
    assert main(_argv(tmp_path, "--metrics", "psnr", "--mask", "foreground", "--out", str(out))) == 1
    assert "skipped file1001.h5: " in capsys.readouterr().err
    errors = pd.read_csv(tmp_path / "masked_errors.csv")
    assert errors[["file", "stage"]].values.tolist() == [["file1001.h5", "score"]]
    assert "no foreground in reference slice(s) [1]" in errors["error"][0]
    assert pd.read_csv(out)["volume"].unique().tolist() == ["file1000"]


def test_random_weights_are_seeded_and_the_seed_is_recorded(tmp_path):
    _make_dataset(tmp_path, n_volumes=1)
    common = ["--metrics", "lpips_alex", "--weights", "random"]
    tables = {}
    runs = {"a": (1, []), "b": (2, ["--seed", "0"]), "c": (1, ["--seed", "7"])}
    for run, (global_seed, extra) in runs.items():
        torch.manual_seed(global_seed)  # the process's own RNG state must not matter
        assert main(_argv(tmp_path, *common, *extra, "--out", str(tmp_path / f"{run}.csv"))) == 0
        tables[run] = pd.read_csv(tmp_path / f"{run}.csv")["lpips_alex"].to_numpy()
    np.testing.assert_array_equal(tables["a"], tables["b"])  # default seed 0 == --seed 0
    assert not np.allclose(tables["a"], tables["c"])
    for run, seed in (("a", 0), ("c", 7)):
        columns = pd.read_csv(tmp_path / f"{run}_columns.csv").set_index("column")["convention"]
        assert f"weights random (seed {seed}," in columns["lpips_alex"]
    assert main(_argv(tmp_path, *common, "--seed", "-1", "--out", str(tmp_path / "d.csv"))) == 2
    assert not (tmp_path / "d.csv").exists()
