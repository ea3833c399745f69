"""`lightning-dfd evaluate --volumetric`: one row per (D, H, W) volume, DFDs as VolumeDFD."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from fastmri import evaluate as fastmri_evaluate

from lightning_dfd import LPIPS, ResNetFD, VolumeDFD
from lightning_dfd.analysis.commands.evaluate import volumes_path
from lightning_dfd.cli import main

METRICS = "psnr,ssim,nmse,lpips_alex,resnet_fd"
COLUMNS = ["volume", "n_slices", "psnr", "ssim", "nmse", "lpips_alex", "resnet_fd"]


def _volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    d, h, w = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    blob = np.exp(-((x - 0.2 * z) ** 2 + y**2 + 0.5 * z**2) * 3)
    return (blob + 0.05 * rng.random(shape)).astype(np.float32)


def _write(path: Path, key: str, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset(key, data=data)


def _dataset(root: Path, shapes=((6, 32, 32), (7, 32, 36))) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    volumes = {}
    for index, shape in enumerate(shapes):
        target = _volume(rng, shape)
        preds = target + (0.02 + 0.03 * index) * rng.standard_normal(shape).astype(np.float32)
        name = f"file{index}"
        _write(root / "ref" / f"{name}.h5", "reconstruction_rss", target)
        _write(root / "rec" / f"{name}.h5", "reconstruction", preds)
        volumes[name] = (preds, target)
    return volumes


def _argv(root: Path, *extra: str) -> list[str]:
    return ["evaluate", "--target", str(root / "ref"), "--predictions", str(root / "rec"), "--no-progress",
            "--device", "cpu", *extra]


def _weights(alexnet: Path, resnet: Path) -> list[str]:
    """Seeded random checkpoints, so the test's own metrics load what the command loads."""
    return ["--weights", f"lpips_alex={alexnet},resnet_fd={resnet}"]


def test_one_row_per_volume_equal_to_volume_dfd_and_fastmri(tmp_path, alexnet_random, resnet_random, capsys):
    volumes = _dataset(tmp_path)
    out = tmp_path / "out" / "results.csv"
    argv = _argv(tmp_path, "--volumetric", "--metrics", METRICS, *_weights(alexnet_random, resnet_random),
                 "--out", str(out))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "scored 2 file(s), 2 volume(s)" in captured.err
    # LPIPS-AlexNet needs 31 px: both volumes' coronal/sagittal planes are skipped, said once
    skipped = [str(w.message) for w in caught if "VolumeDFD" in str(w.message)]
    assert len(skipped) == 1 and "LPIPS's encoder needs slices of at least 31x31" in skipped[0], skipped
    rows = pd.read_csv(out)
    assert list(rows.columns) == COLUMNS and rows["volume"].tolist() == ["file0", "file1"]
    pd.testing.assert_frame_equal(rows, pd.read_csv(volumes_path(out)))
    lpips = VolumeDFD(LPIPS(net="alex", weights=alexnet_random), reduction="none")
    resnet = VolumeDFD(ResNetFD(weights=resnet_random), reduction="none")
    for name, (preds, target) in volumes.items():
        row = rows.set_index("volume").loc[name]
        assert row["n_slices"] == target.shape[0]
        assert row["psnr"] == pytest.approx(fastmri_evaluate.psnr(target, preds), rel=1e-5)
        assert row["ssim"] == pytest.approx(fastmri_evaluate.ssim(target, preds), rel=1e-5)
        assert row["nmse"] == pytest.approx(fastmri_evaluate.nmse(target, preds), rel=1e-5)
        p, t = torch.from_numpy(preds)[None], torch.from_numpy(target)[None]
        for column, metric in (("lpips_alex", lpips), ("resnet_fd", resnet)):
            metric.reset()
            metric.update(p, t)
            assert row[column] == pytest.approx(float(metric.compute()), rel=1e-5), column
    conventions = pd.read_csv(tmp_path / "out" / "results_columns.csv").set_index("column")["convention"]
    assert "VolumeDFD" in conventions["resnet_fd"] and "axial, coronal, sagittal" in conventions["resnet_fd"]
    assert "one value per volume as fastmri.evaluate" in conventions["psnr"]


def test_axial_plane_equals_the_slice_mean_of_a_per_image_run(tmp_path, resnet_random):
    """--planes axial: each DFD is the per-volume mean of the per-slice rows of a plain run."""
    _dataset(tmp_path)
    common = ["--metrics", "psnr,ssim,nmse,resnet_fd", "--weights", f"resnet_fd={resnet_random}"]
    assert main(_argv(tmp_path, *common, "--out", str(tmp_path / "slices" / "r.csv"))) == 0
    assert main(_argv(tmp_path, *common, "--volumetric", "--planes", "axial",
                      "--out", str(tmp_path / "volumes" / "r.csv"))) == 0
    per_slice = pd.read_csv(tmp_path / "slices" / "r_volumes.csv").set_index("volume")
    per_volume = pd.read_csv(tmp_path / "volumes" / "r.csv").set_index("volume")
    pd.testing.assert_frame_equal(per_volume, per_slice, rtol=1e-5)


def test_spacing_resamples_before_scoring(tmp_path, resnet_random):
    volumes = _dataset(tmp_path, shapes=((5, 24, 24),))
    common = ["--metrics", "resnet_fd,psnr", "--weights", f"resnet_fd={resnet_random}", "--volumetric"]
    spacing = ["--spacing", "3,1.5,1.5"]
    assert main(_argv(tmp_path, *common, *spacing, "--out", str(tmp_path / "a" / "r.csv"))) == 0
    assert main(_argv(tmp_path, *common, "--out", str(tmp_path / "b" / "r.csv"))) == 0
    resampled, as_stored = pd.read_csv(tmp_path / "a" / "r.csv"), pd.read_csv(tmp_path / "b" / "r.csv")
    preds, target = volumes["file0"]
    metric = VolumeDFD(ResNetFD(weights=resnet_random), spacing=(3.0, 1.5, 1.5))
    metric.update(torch.from_numpy(preds)[None], torch.from_numpy(target)[None])
    assert resampled.loc[0, "resnet_fd"] == pytest.approx(float(metric.compute()), rel=1e-5)
    assert resampled.loc[0, "resnet_fd"] != pytest.approx(as_stored.loc[0, "resnet_fd"], rel=1e-3)
    assert resampled.loc[0, "psnr"] == as_stored.loc[0, "psnr"]  # pixel metrics on the stored voxels
    columns = pd.read_csv(tmp_path / "a" / "r_columns.csv").set_index("column")["convention"]
    assert "(3.0, 1.5, 1.5) mm to isotropic voxels of 1.5 mm" in columns["resnet_fd"]


def test_a_volume_too_thin_for_every_plane_is_reported_and_the_others_are_scored(tmp_path, alexnet_random,
                                                                                 capsys):
    _dataset(tmp_path, shapes=((6, 32, 32),))
    rng = np.random.default_rng(3)
    thin = _volume(rng, (4, 24, 24))  # every plane < 31 px for AlexNet
    _write(tmp_path / "ref" / "thin.h5", "reconstruction_rss", thin)
    _write(tmp_path / "rec" / "thin.h5", "reconstruction", thin)
    out = tmp_path / "r.csv"
    code = main(_argv(tmp_path, "--volumetric", "--metrics", "psnr,lpips_alex", "--weights",
                      f"lpips_alex={alexnet_random}", "--out", str(out)))
    assert code == 1
    err = capsys.readouterr().err
    assert "skipped thin.h5: VolumeDFD: no plane of volumes (D, H, W) = (4, 24, 24)" in err
    assert pd.read_csv(out)["volume"].tolist() == ["file0"]
    errors = pd.read_csv(tmp_path / "r_errors.csv")
    assert errors[["file", "stage"]].values.tolist() == [["thin.h5", "score"]]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--volumetric", "--protocol", "paper"], "volumetric scoring takes every slice"),
        (["--volumetric", "--slices", "center"], "'slices': 'center'"),
        (["--volumetric", "--mask", "foreground"], "'mask': 'foreground'"),
        (["--planes", "axial"], "apply to volumetric scoring only"),
        (["--spacing", "2,1,1"], "apply to volumetric scoring only"),
    ],
)
def test_options_that_do_not_apply_to_volumes_exit_2(tmp_path, capsys, extra, message):
    _dataset(tmp_path, shapes=((3, 16, 16),))
    out = tmp_path / "r.csv"
    assert main(_argv(tmp_path, "--metrics", "psnr", *extra, "--out", str(out))) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [("--planes", "axial,transverse"), ("--spacing", "2,0,1"),
                                               ("--spacing", "2,1")])
def test_bad_planes_and_spacing_are_refused_by_the_parser(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(_argv(tmp_path, "--volumetric", option, value))
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ddp_processes_give_the_single_process_rows(tmp_path, resnet_random):
    """strategy=ddp, 2 gloo processes on CPU (Lightning re-launches the command): same rows."""
    _dataset(tmp_path, shapes=((4, 24, 24), (6, 24, 24), (5, 28, 24)))
    common = ["--volumetric", "--metrics", "psnr,ssim,nmse,resnet_fd",
              "--weights", f"resnet_fd={resnet_random}"]
    assert main(_argv(tmp_path, *common, "--out", str(tmp_path / "one" / "r.csv"))) == 0
    command = [sys.executable, "-m", "lightning_dfd.cli",
               *_argv(tmp_path, *common, "--out", str(tmp_path / "two" / "r.csv")),
               "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu"]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output, output[-4000:]
    for name in ("r.csv", "r_volumes.csv", "r_errors.csv"):
        one, two = pd.read_csv(tmp_path / "one" / name), pd.read_csv(tmp_path / "two" / name)
        pd.testing.assert_frame_equal(one, two, rtol=1e-5, obj=name)
    assert pd.read_csv(tmp_path / "two" / "r.csv")["volume"].tolist() == ["file0", "file1", "file2"]
