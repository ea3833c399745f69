"""`lightning-dfd evaluate --maps DIR`: per-volume h5 and PNG DFD maps of the scored slices."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from lightning_dfd.cli import main
from lightning_dfd.metrics import LPIPS, ResNetFD

SHAPE = (3, 48, 40)  # slices, H, W (not square: a transposed map would show)


def _phantom(rng: np.random.Generator, shape=SHAPE) -> np.ndarray:
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    disc = ((yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2) < (0.3 * min(shape[1:])) ** 2
    scale = 1.0 + np.arange(shape[0])[:, None, None] * 0.2
    return (scale * (0.1 + disc) + 0.05 * rng.random(shape)).astype(np.float32)


def _write(path: Path, key: str, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset(key, data=data)


def _dataset(root: Path, n_volumes: int = 2, noise: float = 0.05) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    volumes = {}
    for v in range(n_volumes):
        target = _phantom(rng)
        preds = target + noise * (v + 1) * rng.standard_normal(SHAPE).astype(np.float32)
        _write(root / "ref" / f"file{v}.h5", "reconstruction_rss", target)
        _write(root / "rec" / f"file{v}.h5", "reconstruction", preds)
        volumes[f"file{v}"] = (preds, target)
    return volumes


def _argv(root: Path, *extra: str) -> list[str]:
    return ["evaluate", "--target", str(root / "ref"), "--predictions", str(root / "rec"), "--no-progress",
            "--device", "cpu", "--out", str(root / "out" / "results.csv"), "--maps", str(root / "maps"),
            *extra]  # fmt: skip


def _listing(folder: Path) -> list[str]:
    """The maps folder's entries; besides them only the manifest and its lock (no temp file)."""
    names = sorted(p.name for p in folder.iterdir())
    hidden = [name for name in names if name.startswith(".")]
    assert hidden in ([], [".lightning-dfd-maps.json", ".lightning-dfd-maps.json.lock"]), hidden
    return [name for name in names if not name.startswith(".")]


def _read(path: Path) -> dict:
    with h5py.File(path, "r") as handle:
        return {"attrs": dict(handle.attrs), **{k: handle[k][()] for k in handle},
                "dataset_attrs": {k: dict(handle[k].attrs) for k in handle}}


def test_maps_h5_holds_each_dfds_distance_map_of_every_scored_slice(tmp_path, alexnet_random, resnet_random,
                                                                     capsys):
    volumes = _dataset(tmp_path)
    code = main(_argv(tmp_path, "--metrics", "psnr,lpips_alex,resnet_fd", "--batch-size", "2",
                      "--weights", f"lpips_alex={alexnet_random},resnet_fd={resnet_random}"))  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "--maps: no map for psnr (psnr: a pixel metric" in err
    assert "wrote the maps of 2 volume(s)" in err
    lpips = LPIPS(net="alex", weights=alexnet_random, reduction="none")
    resnet = ResNetFD(weights=resnet_random, reduction="none")
    for name, (preds, target) in volumes.items():
        stored = _read(tmp_path / "maps" / f"{name}.h5")
        assert sorted(k for k in stored if k not in ("attrs", "dataset_attrs")) == [
            "lpips_alex", "resnet_fd", "slice_num"]
        assert stored["slice_num"].tolist() == [0, 1, 2] and stored["slice_num"].dtype == np.int32
        assert list(stored["attrs"]["metrics"]) == ["lpips_alex", "resnet_fd"]
        assert stored["attrs"]["protocol"] == "fastmri" and stored["attrs"]["mask"] == "none"
        assert stored["attrs"]["lightning_dfd_version"] == __import__("lightning_dfd").__version__
        assert stored["dataset_attrs"]["lpips_alex"]["normalization"] == "minmax"
        p, t = torch.from_numpy(preds), torch.from_numpy(target)
        expected = lpips.distance_map(p, t)[:, 0].numpy()
        assert stored["lpips_alex"].shape == SHAPE and stored["lpips_alex"].dtype == np.float32
        np.testing.assert_allclose(stored["lpips_alex"], expected, atol=1e-6, rtol=1e-5)
        assert (stored["lpips_alex"] >= 0).all() and stored["lpips_alex"].max() > 0
        np.testing.assert_allclose(stored["resnet_fd"], resnet.distance_map(p, t)[:, 0].numpy(),
                                   atol=1e-6, rtol=1e-5)
    # the noisier volume has the larger maps, and they agree with its larger score
    scores = pd.read_csv(tmp_path / "out" / "results_volumes.csv").set_index("volume")
    m0, m1 = (_read(tmp_path / "maps" / f"file{v}.h5")["lpips_alex"].mean() for v in (0, 1))
    assert m1 > m0 and scores.loc["file1", "lpips_alex"] > scores.loc["file0", "lpips_alex"]


def test_identical_volumes_give_all_zero_maps_and_protocol_paper_maps_the_centre_slice(tmp_path,
                                                                                      alexnet_random):
    rng = np.random.default_rng(3)
    target = _phantom(rng)
    _write(tmp_path / "ref" / "same.h5", "reconstruction_rss", target)
    _write(tmp_path / "rec" / "same.h5", "reconstruction", target)
    assert main(_argv(tmp_path, "--metrics", "lpips_alex", "--weights", str(alexnet_random),
                      "--protocol", "paper")) == 0  # fmt: skip
    stored = _read(tmp_path / "maps" / "same.h5")
    assert stored["slice_num"].tolist() == [SHAPE[0] // 2]
    assert stored["lpips_alex"].shape == (1, *SHAPE[1:])
    assert float(np.abs(stored["lpips_alex"]).max()) == 0.0
    assert stored["attrs"]["protocol"] == "paper" and stored["attrs"]["scale"] == "target_max"
    assert stored["dataset_attrs"]["lpips_alex"]["png_vmax"] == 1.0  # all-zero map: scale 1


def test_pngs_decode_at_the_image_size_with_the_documented_scale(tmp_path, alexnet_random):
    from PIL import Image

    from lightning_dfd.analysis.maps import png_scale, to_rgb

    rng = np.random.default_rng(4)
    target = _phantom(rng)
    preds = target.copy()
    preds[:, 30:42, 24:36] += 0.8  # a local corruption, bottom right
    _write(tmp_path / "ref" / "vol.h5", "reconstruction_rss", target)
    _write(tmp_path / "rec" / "vol.h5", "reconstruction", preds)
    assert main(_argv(tmp_path, "--metrics", "lpips_alex", "--weights", str(alexnet_random))) == 0
    stored = _read(tmp_path / "maps" / "vol.h5")
    vmax = stored["dataset_attrs"]["lpips_alex"]["png_vmax"]
    assert vmax == pytest.approx(float(np.percentile(stored["lpips_alex"].astype(np.float64), 99)))
    assert vmax == png_scale(stored["lpips_alex"])
    files = sorted(p.name for p in (tmp_path / "maps" / "vol").iterdir())
    assert files == [f"lpips_alex_slice{s:03d}.png" for s in range(SHAPE[0])]
    for s in range(SHAPE[0]):
        with Image.open(tmp_path / "maps" / "vol" / f"lpips_alex_slice{s:03d}.png") as image:
            assert image.size == (SHAPE[2], SHAPE[1]) and image.mode == "RGB"
            assert float(image.text["png_vmax"]) == vmax and image.text["colormap"] == "magma"
            pixels = np.asarray(image)
        np.testing.assert_array_equal(pixels, to_rgb(stored["lpips_alex"][s], vmax))
        # brighter (larger map) inside the corrupted patch than in the far corner
        brightness = pixels.astype(float).sum(-1)
        assert brightness[30:42, 24:36].mean() > brightness[:10, :10].mean()
    assert _listing(tmp_path / "maps") == ["vol", "vol.h5"]  # no temp left


def test_mask_foreground_zeroes_the_maps_outside_the_object(tmp_path, alexnet_random):
    from lightning_dfd.spatial import foreground_mask

    volumes = _dataset(tmp_path, n_volumes=1, noise=0.1)
    assert main(_argv(tmp_path, "--metrics", "lpips_alex", "--weights", str(alexnet_random),
                      "--mask", "foreground")) == 0  # fmt: skip
    (preds, target), = volumes.values()
    stored = _read(tmp_path / "maps" / "file0.h5")
    t, p = torch.from_numpy(target), torch.from_numpy(preds)
    mask = foreground_mask(t, largest_component=True).numpy()
    assert 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(stored["mask"], mask.astype(np.uint8))
    assert stored["attrs"]["mask"] == "foreground"
    maps = stored["lpips_alex"]
    assert float(np.abs(maps[~mask]).max()) == 0.0 and maps[mask].min() >= 0 and maps[mask].max() > 0
    full = LPIPS(net="alex", weights=alexnet_random, reduction="none").distance_map(p, t)[:, 0].numpy()
    np.testing.assert_allclose(maps, full * mask, atol=1e-6, rtol=1e-5)
    assert stored["dataset_attrs"]["lpips_alex"]["png_vmax"] == pytest.approx(
        float(np.percentile(maps[mask].astype(np.float64), 99)))


def test_a_dfd_without_maps_is_skipped_with_one_note_and_the_run_succeeds(tmp_path, alexnet_random,
                                                                        resnet_random, capsys, monkeypatch):
    # A DFD without a per-position form: ResNetFD made to raise as DISTS does (which DFDs have maps
    # changes as encoders gain them; the mechanism must not).
    def no_map(self, preds, target):
        raise NotImplementedError("ResNetFDNetwork (test) has no per-position distance (no `layer_maps`)")

    monkeypatch.setattr(ResNetFD, "distance_map", no_map)
    _dataset(tmp_path)
    code = main(_argv(tmp_path, "--metrics", "lpips_alex,resnet_fd,ssim", "--batch-size", "2",
                      "--weights", f"lpips_alex={alexnet_random},resnet_fd={resnet_random}"))  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "--maps: no map for" in line]
    assert len(notes) == 1, err
    assert notes[0].split(" (")[0].endswith("no map for resnet_fd, ssim")
    assert "resnet_fd: ResNetFDNetwork (test) has no per-position distance (no `layer_maps`)" in notes[0]
    stored = _read(tmp_path / "maps" / "file0.h5")
    assert "resnet_fd" not in stored and "lpips_alex" in stored
    assert list(stored["attrs"]["metrics"]) == ["lpips_alex"]
    assert sorted(p.name for p in (tmp_path / "maps" / "file0").iterdir())[0].startswith("lpips_alex_")
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results["resnet_fd"].notna().all()  # the score itself is kept


def test_a_failing_file_gets_no_maps_an_error_row_and_loses_its_earlier_maps(tmp_path, alexnet_random):
    volumes = _dataset(tmp_path)
    common = ["--metrics", "lpips_alex", "--weights", str(alexnet_random)]
    assert main(_argv(tmp_path, *common)) == 0
    assert (tmp_path / "maps" / "file1.h5").exists() and (tmp_path / "maps" / "file1").is_dir()
    before = _read(tmp_path / "maps" / "file0.h5")["lpips_alex"]
    (tmp_path / "rec" / "file1.h5").write_bytes(b"not an h5 file" * 20)  # corrupt now
    preds, target = volumes["file0"]
    nan_preds = preds.copy()
    nan_preds[2, 5, 5] = np.nan  # fails in the last batch, after two slices were mapped
    _write(tmp_path / "rec" / "nan.h5", "reconstruction", nan_preds)
    _write(tmp_path / "ref" / "nan.h5", "reconstruction_rss", target)
    assert main(_argv(tmp_path, *common, "--batch-size", "2")) == 1
    errors = pd.read_csv(tmp_path / "out" / "results_errors.csv")
    assert errors[["file", "stage"]].values.tolist() == [["file1.h5", "read"], ["nan.h5", "score"]]
    assert _listing(tmp_path / "maps") == ["file0", "file0.h5"]  # file1's earlier maps gone, none for nan.h5
    np.testing.assert_allclose(_read(tmp_path / "maps" / "file0.h5")["lpips_alex"], before, atol=1e-6)


def test_a_failing_map_write_leaves_no_file_and_keeps_the_scores(tmp_path, alexnet_random, monkeypatch,
                                                                 capsys):
    import errno

    from lightning_dfd.analysis.maps import MapWriter

    _dataset(tmp_path)
    real = MapWriter._write_pngs

    def full_disk(folder, arrays, slices, scales):
        real(folder, arrays, slices, scales)  # the PNGs are there under the temp name ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(MapWriter, "_write_pngs", staticmethod(full_disk))
    argv = _argv(tmp_path, "--metrics", "psnr,lpips_alex", "--weights", f"lpips_alex={alexnet_random}")
    assert main(argv) == 1
    errors = pd.read_csv(tmp_path / "out" / "results_errors.csv")
    assert errors["stage"].tolist() == ["maps", "maps"]
    assert errors["error"].str.startswith("maps not written: ").all()
    assert errors["error"].str.contains("No space left on device").all()
    err = capsys.readouterr().err
    assert "scored file0.h5: maps not written" in err and "the maps of 2 file(s) not written" in err
    assert "not scored" not in err
    assert _listing(tmp_path / "maps") == []  # no h5, no PNG folder, no temp file
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 2 * SHAPE[0]  # scores kept


def test_a_failing_map_computation_is_a_maps_problem_and_keeps_the_scores(tmp_path, alexnet_random,
                                                                         monkeypatch):
    from lightning_dfd.metrics import LPIPS as LPIPSClass

    _dataset(tmp_path)
    real = LPIPSClass.distance_map

    def out_of_memory_on_file1(self, preds, target):
        if float(target.mean()) == pytest.approx(float(torch.from_numpy(target_1).mean()), rel=1e-6):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, preds, target)

    with h5py.File(tmp_path / "ref" / "file1.h5", "r") as handle:
        target_1 = handle["reconstruction_rss"][()]
    monkeypatch.setattr(LPIPSClass, "distance_map", out_of_memory_on_file1)
    code = main(_argv(tmp_path, "--metrics", "lpips_alex", "--weights", str(alexnet_random)))
    assert code == 1
    errors = pd.read_csv(tmp_path / "out" / "results_errors.csv")
    assert errors.values.tolist() == [["file1.h5", "maps",
                                       "maps not computed: RuntimeError: CUDA out of memory (simulated)"]]
    assert _listing(tmp_path / "maps") == ["file0", "file0.h5"]
    assert len(pd.read_csv(tmp_path / "out" / "results.csv")) == 2 * SHAPE[0]


def test_maps_format_h5_only_and_bf16_maps(tmp_path, alexnet_random):
    volumes = _dataset(tmp_path, n_volumes=1)
    common = ["--metrics", "lpips_alex", "--weights", str(alexnet_random), "--maps-format", "h5"]
    assert main(_argv(tmp_path, *common, "--precision", "bf16")) == 0
    assert _listing(tmp_path / "maps") == ["file0.h5"]
    stored = _read(tmp_path / "maps" / "file0.h5")
    assert stored["attrs"]["precision"] == "bf16" and stored["lpips_alex"].dtype == np.float32
    (preds, target), = volumes.values()
    p, t = torch.from_numpy(preds), torch.from_numpy(target)
    bf16 = LPIPS(net="alex", weights=alexnet_random, reduction="none", precision="bf16")
    np.testing.assert_allclose(stored["lpips_alex"], bf16.distance_map(p, t)[:, 0].numpy(), atol=1e-6,
                               rtol=1e-5)  # fmt: skip
    fp32 = LPIPS(net="alex", weights=alexnet_random, reduction="none").distance_map(p, t)[:, 0].numpy()
    assert np.abs(stored["lpips_alex"] - fp32).mean() < 0.05 * fp32.mean()  # bf16 is close, not equal
    assert not np.array_equal(stored["lpips_alex"], fp32)


def test_bad_maps_arguments_exit_2_before_scoring(tmp_path, capsys):
    _dataset(tmp_path, n_volumes=1)
    (tmp_path / "maps").write_text("a file, not a folder")
    assert main(_argv(tmp_path, "--metrics", "psnr")) == 2
    assert "--maps:" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.csv").exists()
    with pytest.raises(SystemExit):
        main(_argv(tmp_path, "--metrics", "psnr", "--maps-format", "png,jpeg"))
    assert "--maps-format: expected some of png,h5, got 'png,jpeg'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ddp_processes_write_the_maps_of_their_own_files(tmp_path, alexnet_random):
    """strategy=ddp, 2 gloo processes: every volume's maps written once, equal to one process's."""
    import os
    import socket
    import subprocess
    import sys

    _dataset(tmp_path, n_volumes=3)
    common = ["--metrics", "lpips_alex", "--weights", str(alexnet_random), "--batch-size", "2"]
    one = _argv(tmp_path, *common)
    one[one.index("--maps") + 1] = str(tmp_path / "maps_one")
    assert main(one) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "lightning_dfd.cli", *_argv(tmp_path, *common), "--strategy", "ddp",
               "--devices", "2", "--accelerator", "cpu"]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Starting with 2 processes" in output and "wrote the maps of 3 volume(s)" in output, output[-4000:]
    assert _listing(tmp_path / "maps") == _listing(tmp_path / "maps_one")
    from lightning_dfd.analysis.maps import MapWriter

    manifest = MapWriter(tmp_path / "maps")  # both processes' records kept (a locked update each)
    assert [len(manifest.recorded(f"file{v}")) for v in range(3)] == [1 + SHAPE[0]] * 3
    for v in range(3):
        two, single = _read(tmp_path / "maps" / f"file{v}.h5"), _read(tmp_path / "maps_one" / f"file{v}.h5")
        np.testing.assert_allclose(two["lpips_alex"], single["lpips_alex"], atol=1e-6)
