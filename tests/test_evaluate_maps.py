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


def _upscaled(rgb: np.ndarray, factor: int) -> np.ndarray:
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def test_pngs_show_the_map_upscaled_with_a_colour_bar_of_the_stored_scale(tmp_path, alexnet_random):
    from PIL import Image

    from lightning_dfd.analysis.maps import COLORBAR_WIDTH, colorbar_panel, png_scale, to_rgb

    rng = np.random.default_rng(4)
    target = _phantom(rng)
    preds = target.copy()
    preds[:, 30:42, 24:36] += 0.8  # a local corruption, bottom right
    _write(tmp_path / "ref" / "vol.h5", "reconstruction_rss", target)
    _write(tmp_path / "rec" / "vol.h5", "reconstruction", preds)
    assert main(_argv(tmp_path, "--metrics", "lpips_alex", "--weights", str(alexnet_random))) == 0
    stored = _read(tmp_path / "maps" / "vol.h5")
    assert stored["lpips_alex"].shape == SHAPE  # the h5 keeps the native size
    vmax = stored["dataset_attrs"]["lpips_alex"]["png_vmax"]
    assert vmax == pytest.approx(float(np.percentile(stored["lpips_alex"].astype(np.float64), 99)))
    assert vmax == png_scale(stored["lpips_alex"])
    files = sorted(p.name for p in (tmp_path / "maps" / "vol").iterdir())
    assert files == [f"lpips_alex_slice{s:03d}.png" for s in range(SHAPE[0])]
    k = 7  # 40 px * 7 = 280 >= 256: the smallest integer factor to a 256 px shorter side
    height, width = SHAPE[1] * k, SHAPE[2] * k
    panel = colorbar_panel(height, vmax, "lpips_alex")
    for s in range(SHAPE[0]):
        with Image.open(tmp_path / "maps" / "vol" / f"lpips_alex_slice{s:03d}.png") as image:
            assert image.size == (width + COLORBAR_WIDTH, height) and image.mode == "RGB"
            assert float(image.text["png_vmax"]) == vmax and image.text["colormap"] == "magma"
            assert image.text["upscale"] == str(k) and image.text["map_box"] == f"0,0,{width},{height}"
            assert image.text["underlay"] == "none" and image.text["metric"] == "lpips_alex"
            pixels = np.asarray(image)
        # the map region is the stored map in the stored scale, each pixel a k x k block
        expected = _upscaled(to_rgb(stored["lpips_alex"][s], vmax), k)
        np.testing.assert_array_equal(pixels[:, :width], expected)
        np.testing.assert_array_equal(pixels[:, width:], panel)  # the colour bar of that scale
        # brighter (larger map) inside the corrupted patch than in the far corner
        brightness = pixels[:, :width].astype(float).sum(-1)
        assert brightness[30 * k:42 * k, 24 * k:36 * k].mean() > brightness[:10 * k, :10 * k].mean()
    assert _listing(tmp_path / "maps") == ["vol", "vol.h5"]  # no temp left


@pytest.mark.parametrize(("shape", "factor"), [((48, 48), 6), ((640, 368), 1), ((48, 40), 7)])
def test_render_png_upscales_to_256_px_and_appends_the_colour_bar(shape, factor):
    from lightning_dfd.analysis.maps import COLORBAR_WIDTH, render_png, to_rgb, upscale_factor

    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    assert upscale_factor(shape) == factor and min(shape) * factor >= 256
    pixels = render_png(image, 0.5, "lpips_vgg")
    assert pixels.shape == (shape[0] * factor, shape[1] * factor + COLORBAR_WIDTH, 3)
    np.testing.assert_array_equal(pixels[:, : shape[1] * factor], _upscaled(to_rgb(image, 0.5), factor))


@pytest.mark.parametrize("height", [288, 336, 640])
def test_the_colour_bar_spans_0_to_the_stored_scale_with_labelled_ticks_and_the_metric(height):
    from matplotlib import colormaps
    from matplotlib.transforms import Bbox

    from lightning_dfd.analysis.maps import COLORBAR_WIDTH, colorbar_figure, colorbar_panel

    vmax = 0.0123
    fig = colorbar_figure(height, vmax, "lpips_vgg_nolin")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (bar,) = fig.axes
    assert bar.get_ylim() == pytest.approx((0.0, vmax))
    ticks = [t for t in bar.get_yticklabels() if t.get_text()]
    assert [t.get_text() for t in ticks] == ["0", "0.00615", "0.0123 p99"]
    assert bar.get_yticks()[[0, -1]].tolist() == pytest.approx([0.0, vmax])
    assert "lpips_vgg_nolin" in bar.get_ylabel().replace("\n", "")
    page = Bbox.from_extents(0, 0, COLORBAR_WIDTH, height)
    for text in [*ticks, bar.yaxis.label]:  # nothing cut off at the edge of the PNG
        box = text.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1, box
    # the bar's colours: magma from 0 (bottom) to vmax (top), sampled along its centre column
    pixels = colorbar_panel(height, vmax, "lpips_vgg_nolin")
    assert pixels.shape == (height, COLORBAR_WIDTH, 3)
    box = bar.get_window_extent(renderer)
    column = int(round((box.x0 + box.x1) / 2))
    lut = colormaps["magma"]
    for fraction in (0.05, 0.25, 0.5, 0.75, 0.95):
        y = box.y0 + fraction * box.height  # the axes box spans 0..vmax; the triangle lies above
        row = height - 1 - int(y)
        expected = np.asarray(lut(fraction)[:3]) * 255
        found = pixels[row, column].astype(float)
        assert np.abs(found - expected).max() <= 12, (fraction, found, expected)


def test_maps_underlay_draws_the_png_maps_over_the_reference_and_leaves_the_h5_unchanged(tmp_path,
                                                                                        alexnet_random):
    from PIL import Image

    from lightning_dfd.analysis.maps import UNDERLAY_OPACITY, to_rgb

    volumes = _dataset(tmp_path, n_volumes=1)
    (preds, target), = volumes.values()
    common = ["--metrics", "lpips_alex", "--weights", str(alexnet_random)]
    assert main(_argv(tmp_path, *common)) == 0
    plain = _read(tmp_path / "maps" / "file0.h5")
    with Image.open(tmp_path / "maps" / "file0" / "lpips_alex_slice001.png") as image:
        plain_png = np.asarray(image)
    assert main(_argv(tmp_path, *common, "--maps-underlay")) == 0
    under = _read(tmp_path / "maps" / "file0.h5")
    for key in ("lpips_alex", "slice_num"):  # the h5 maps do not change
        np.testing.assert_array_equal(under[key], plain[key])
        assert under[key].dtype == plain[key].dtype
    assert under["dataset_attrs"] == plain["dataset_attrs"]
    vmax = under["dataset_attrs"]["lpips_alex"]["png_vmax"]
    scale = float(np.percentile(np.abs(target).astype(np.float64), 99.5))  # the reference volume's white
    k, width = 7, SHAPE[2] * 7
    for s in range(SHAPE[0]):
        with Image.open(tmp_path / "maps" / "file0" / f"lpips_alex_slice{s:03d}.png") as image:
            assert image.text["underlay"] == "reference"
            assert float(image.text["underlay_scale"]) == pytest.approx(scale)
            pixels = np.asarray(image)
        expected = to_rgb(under["lpips_alex"][s], vmax, underlay=target[s], underlay_scale=scale)
        np.testing.assert_array_equal(pixels[:, :width], _upscaled(expected, k))
        if s == 1:
            np.testing.assert_array_equal(pixels[:, width:], plain_png[:, width:])  # the same colour bar
    # by hand: the gray reference, and the map's colour over it with opacity rising with the value
    value, ref = under["lpips_alex"][0], target[0]
    gray = np.clip(np.abs(ref) / scale, 0, 1)[..., None] * 255
    alpha = UNDERLAY_OPACITY * np.clip(value / vmax, 0, 1)[..., None]
    by_hand = (1 - alpha) * gray + alpha * to_rgb(value, vmax).astype(float)
    assert np.abs(to_rgb(value, vmax, underlay=ref, underlay_scale=scale) - by_hand).max() <= 0.5 + 1e-9
    low = value < 1e-3 * vmax  # where the map is ~0 the anatomy shows through in gray
    if low.any():
        shown = to_rgb(value, vmax, underlay=ref, underlay_scale=scale)[low].astype(int)
        assert np.abs(shown - gray[low].round()).max() <= 1


def test_maps_underlay_needs_png_maps(tmp_path, capsys):
    _dataset(tmp_path, n_volumes=1)
    argv = _argv(tmp_path, "--metrics", "psnr", "--maps-underlay")
    assert main([*argv, "--maps-format", "h5"]) == 2
    assert "`maps_underlay` draws the PNG maps over the reference" in capsys.readouterr().err
    without_maps = [a for a in argv if a not in ("--maps", str(tmp_path / "maps"))]
    assert main(without_maps) == 2
    assert "it needs `maps_dir`" in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.csv").exists()


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

    def full_disk(folder, arrays, slices, scales, *rest):
        real(folder, arrays, slices, scales, *rest)  # the PNGs are there under the temp name ...
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
