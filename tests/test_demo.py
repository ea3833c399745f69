"""Fast checks of the pieces of ``make demo``: correlations, weights choice, config, figures, image grids."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from recon_models.modules.base import LABEL_HEIGHT, _label_strip, image_grid

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo_script", ROOT / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["demo_script"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("demo_script", None)


# ------------------------------------------------------------------------------- correlations
def test_average_ranks_match_scipy(demo):
    values = [3.0, 1.0, 3.0, 2.0, 5.0, 1.0, 3.0]
    assert demo.average_ranks(values) == stats.rankdata(values).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(demo, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, size=15).astype(float)  # many ties
    y = -x + rng.normal(0, 2, size=15)
    assert demo.spearman(x.tolist(), y.tolist()) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_spearman_edge_cases(demo):
    assert demo.spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(demo.spearman([1, 2, 3], [5, 5, 5]))  # constant: undefined
    assert math.isnan(demo.spearman([1, 2], [2, 1]))  # too few epochs
    assert demo.spearman([1, 2, math.nan, 3, 4], [4, 3, 0, 2, 1]) == -1.0  # NaN pair dropped
    with pytest.raises(ValueError, match="one length"):
        demo.spearman([1, 2, 3], [1, 2])


def write_metrics_csv(path: Path, psnr, ssim, ssfd, lpips) -> Path:
    """A Lightning-style metrics.csv: a training row and a validation row per epoch."""
    lines = ["epoch,step,train/loss_epoch,val/loss,val/psnr,val/ssim,val/ssfd,val/lpips_vgg"]
    for epoch, values in enumerate(zip(psnr, ssim, ssfd, lpips)):
        lines.append(f"{epoch},{epoch * 10 + 9},{0.1 / (epoch + 1)},,,,,")
        lines.append(f"{epoch},{epoch * 10 + 9},,{0.12 / (epoch + 1)}," + ",".join(map(str, values)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_epoch_table_and_correlation_lines(demo, tmp_path):
    csv = write_metrics_csv(tmp_path / "metrics.csv", psnr=[18, 19, 20, 20.5, 20.4],
                            ssim=[0.3, 0.4, 0.45, 0.5, 0.49], ssfd=[0.5, 0.4, 0.3, 0.25, 0.26],
                            lpips=[0.1, 0.12, 0.11, 0.1, 0.13])
    table = demo.epoch_table(csv)
    assert table["epoch"] == [0, 1, 2, 3, 4]
    assert table["val/psnr"] == [18, 19, 20, 20.5, 20.4]
    assert "train/loss_epoch" not in table
    lines = demo.format_correlations(table)
    assert lines[0] == "Spearman over 5 epochs   vs PSNR   vs SSIM"
    assert lines[1].split()[:3] == ["ssfd", "-1.00", "-1.00"] and lines[1].endswith("yes)")
    rho = stats.spearmanr([0.1, 0.12, 0.11, 0.1, 0.13], [18, 19, 20, 20.5, 20.4])[0]
    assert lines[2].split()[:2] == ["lpips_vgg", f"{rho:.2f}"] and lines[2].endswith("NO)")
    short = {name: values[:2] for name, values in table.items()}
    assert demo.format_correlations(short)[1].split() == ["ssfd", "nan", "nan", "(rho", "vs", "PSNR",
                                                          "<=", "-0.6:", "n/a)"]
    assert demo.best_epoch_by(table, "val/ssfd") == 3
    assert demo.best_epoch_by(table, "val/psnr", mode="max") == 3
    assert demo.best_epoch_by(table, "val/dists") is None
    epochs = demo.format_epochs(table)
    assert epochs[0].split() == ["epoch", "psnr", "ssim", "ssfd", "lpips_vgg"]
    assert epochs[4].split() == ["3", "20.5", "0.5", "0.25", "0.1"]


def test_metric_curve_panels_have_y_labels_with_units(demo, tmp_path):
    csv = write_metrics_csv(tmp_path / "metrics.csv", psnr=[18, 19, 20], ssim=[0.3, 0.4, 0.45],
                            ssfd=[0.5, 0.4, 0.3], lpips=[0.1, 0.09, 0.08])
    fig = demo.metric_curve_figure(csv, best_epoch=2, notes={"val/lpips_vgg": "random weights"})
    labels = {ax.get_title(): ax.get_ylabel().replace("\n", " ") for ax in fig.axes if ax.get_visible()}
    assert labels == {"loss": "image L1 loss (unitless, lower is better)",
                      "val/psnr": "PSNR (dB, higher is better)",
                      "val/ssim": "SSIM (unitless, higher is better)",
                      "val/ssfd": "SSFD (unitless, lower is better)",
                      "val/lpips_vgg (random weights)": "LPIPS-VGG (unitless, lower is better)"}
    loss = next(ax for ax in fig.axes if ax.get_title() == "loss")
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["val", "train"]
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes if ax.get_visible())
    png = demo.plot_metric_curves(csv, tmp_path / "curves.png", best_epoch=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ weights
@pytest.fixture
def empty_weights_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LIGHTNING_DFD_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return home


def test_dfd_weights_random_when_nothing_is_offline(demo, empty_weights_home, monkeypatch):
    monkeypatch.setattr(demo, "ssfd_weights", lambda **kw: ("runs/demo/ssfd-demo.ckpt", "in-domain"))
    choice = demo.dfd_weights()
    assert {name: arg for name, (arg, _) in choice.items()} == {
        "ssfd": "runs/demo/ssfd-demo.ckpt", "lpips_vgg": "random", "dists": "random",
        "resnet_fd": "random"}
    assert "not in the weights home" in choice["lpips_vgg"][1]


def test_dfd_weights_pretrained_when_in_the_weights_home(demo, empty_weights_home, monkeypatch):
    (empty_weights_home / "RadImageNet-ResNet50.pt").write_bytes(b"x")  # no published checksum
    monkeypatch.setattr(demo, "ssfd_weights", lambda **kw: ("x", "y"))
    choice = demo.dfd_weights()
    assert choice["resnet_fd"][0] == "radimagenet"
    assert "resnet50-radimagenet" in choice["resnet_fd"][1]
    assert choice["lpips_vgg"][0] == "random"


def test_ssfd_prefers_the_published_encoder(demo, empty_weights_home, monkeypatch):
    from lightning_dfd.weights import record_pin

    (empty_weights_home / "ssfd-fastmri-knee.ckpt").write_bytes(b"x")
    record_pin("ssfd-fastmri-knee", empty_weights_home / "ssfd-fastmri-knee.ckpt")  # a file the user trusts
    monkeypatch.setattr(demo, "pretrain_ssfd", lambda out: pytest.fail("must not pretrain"))
    arg, what = demo.ssfd_weights()
    assert arg == "ssfd-fastmri-knee" and what.startswith("published encoder")


def test_ssfd_cache_is_reused_only_for_the_same_key(demo, empty_weights_home, monkeypatch, tmp_path):
    out = tmp_path / "ssfd.ckpt"
    calls = []

    def fake_pretrain(path):
        calls.append(path)
        path.write_bytes(b"encoder")
        return path

    monkeypatch.setattr(demo, "pretrain_ssfd", fake_pretrain)
    arg, what = demo.ssfd_weights(out)  # nothing cached: pretrains, writes the key
    assert calls == [out] and "pretrained now" in what
    assert json.loads(out.with_suffix(".json").read_text())["key"] == demo.ssfd_cache_key()
    arg, what = demo.ssfd_weights(out)  # same key: reused
    assert calls == [out] and "cached" in what and arg == str(out.resolve())
    monkeypatch.setitem(demo.DATASET, "volumes", demo.DATASET["volumes"] + 1)
    demo.ssfd_weights(out)  # another dataset: pretrains again
    assert len(calls) == 2


def test_run_config_keeps_demo_yaml_and_sets_weights_and_seed(demo, monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "RUNS", tmp_path)
    weights = {"ssfd": ("runs/demo/ssfd-demo.ckpt", ""), "lpips_vgg": ("random", ""),
               "dists": ("imagenet", ""), "resnet_fd": ("random", "")}
    path = demo.write_run_config(weights, seed=3)
    config, original = yaml.safe_load(path.read_text()), yaml.safe_load(demo.CONFIG.read_text())
    assert config["seed_everything"] == 3
    assert config["model"]["dfds"]["dists"] == {"weights": "imagenet"}
    assert config["model"]["dfds"]["ssfd"] == {"weights": "runs/demo/ssfd-demo.ckpt"}
    assert config["trainer"] == original["trainer"] and config["data"] == original["data"]
    monitors = {cb["init_args"]["monitor"] for cb in config["trainer"]["callbacks"]}
    assert monitors == {demo.MONITOR}


# -------------------------------------------------------------------------------- image grids
def test_image_grid_upscales_small_images_to_readable_tiles():
    target = torch.rand(48, 40)
    images = {"target": target, "zero_filled": target / 2, "reconstruction": target, "error": target}
    grid = image_grid(images, scale=1.0)
    factor = 7  # smallest integer with 40 * factor >= 256
    tile_h, tile_w = LABEL_HEIGHT + 48 * factor, 40 * factor
    assert grid.shape == (3, tile_h + 4, 4 * tile_w + 5 * 2)
    first = grid[0, 2 + LABEL_HEIGHT: 2 + tile_h, 2: 2 + tile_w]
    expected = target.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    torch.testing.assert_close(first, expected)  # nearest neighbour: pixels copied, not blurred
    second = grid[0, 2 + LABEL_HEIGHT: 2 + tile_h, 4 + tile_w: 4 + 2 * tile_w]
    torch.testing.assert_close(second, expected / 2)


def test_image_grid_labels_every_tile():
    images = {name: torch.zeros(48, 48) for name in ("target", "zero_filled", "reconstruction", "error")}
    grid = image_grid(images)
    width = 48 * 6
    strips = [grid[0, 2: 2 + LABEL_HEIGHT, 2 + i * (width + 2): 2 + i * (width + 2) + width]
              for i in range(4)]
    for strip, label in zip(strips, ("target", "zero-filled", "reconstruction", "error")):
        torch.testing.assert_close(strip, _label_strip(label, width))
        assert strip.max() > 0.9 and (strip > 0.5).float().mean() > 0.01  # text is drawn
    assert not torch.equal(strips[0], strips[1])
    assert not torch.equal(_label_strip("target", width), _label_strip("error", width))


def test_image_grid_keeps_large_images_and_can_skip_labels():
    grid = image_grid({"a": torch.ones(320, 320) * 2.0, "b": torch.zeros(320, 320)}, scale=4.0,
                      labels=False)
    assert grid.shape == (3, 324, 646)
    assert torch.all(grid[:, 2:322, 2:322] == 0.5)  # divided by scale, not upscaled


def test_image_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one image"):
        image_grid({})
    with pytest.raises(ValueError, match="one shape"):
        image_grid({"a": torch.zeros(8, 8), "b": torch.zeros(8, 9)})
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        image_grid({"a": torch.zeros(1, 8, 8)})


def test_log_image_grid_sends_the_labelled_grid_to_image_loggers():
    from recon_models.modules import ReconModule

    calls = []
    tensorboard = SimpleNamespace(experiment=SimpleNamespace(
        add_image=lambda tag, grid, global_step: calls.append((tag, grid, global_step))))
    csv_logger = SimpleNamespace(experiment=SimpleNamespace())  # no add_image: skipped
    module = ReconModule(network_kwargs={"chans": 2, "num_pool_layers": 1}, dfds={})
    module._trainer = SimpleNamespace(loggers=[tensorboard, csv_logger], current_epoch=4)
    images = {"target": torch.ones(48, 48), "error": torch.zeros(48, 48)}
    module.log_image_grid("val/images", images, scale=torch.tensor(2.0))
    assert len(calls) == 1
    tag, grid, step = calls[0]
    assert tag == "val/images" and step == 4
    torch.testing.assert_close(grid, image_grid(images, torch.tensor(2.0)))


def test_ssfd_demo_is_the_demo_with_the_in_domain_ssfd(monkeypatch):
    spec = importlib.util.spec_from_file_location("ssfd_demo_script", ROOT / "examples" / "ssfd_demo.py")
    ssfd_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ssfd_demo)
    seen = []
    real = ssfd_demo.load_demo

    def fake_load():
        module = real()
        monkeypatch.setattr(module, "main", lambda argv: seen.append(argv) or 0)
        return module

    monkeypatch.setattr(ssfd_demo, "load_demo", fake_load)
    assert ssfd_demo.main(["--max-epochs", "2"]) == 0
    assert seen == [["--ssfd", "in-domain", "--max-epochs", "2"]]


def test_ssfd_source_in_domain_ignores_the_published_encoder(demo, empty_weights_home, monkeypatch,
                                                             tmp_path):
    from lightning_dfd.weights import record_pin

    (empty_weights_home / "ssfd-fastmri-knee.ckpt").write_bytes(b"x")
    record_pin("ssfd-fastmri-knee", empty_weights_home / "ssfd-fastmri-knee.ckpt")  # a file the user trusts
    monkeypatch.setattr(demo, "pretrain_ssfd", lambda out: out.write_bytes(b"enc") or out)
    arg, what = demo.ssfd_weights(tmp_path / "enc.ckpt", source="in-domain")
    assert arg == str((tmp_path / "enc.ckpt").resolve()) and "in-domain" in what
    with pytest.raises(ValueError, match="source"):
        demo.ssfd_weights(tmp_path / "enc.ckpt", source="bogus")


def test_ssfd_is_pretrained_on_the_demo_training_split_only():
    demo_cfg = yaml.safe_load((ROOT / "examples" / "configs" / "demo.yaml").read_text())
    pretrain = yaml.safe_load((ROOT / "examples" / "configs" / "demo_ssfd_pretrain.yaml").read_text())
    for key in ("data_path", "split", "sens_method"):
        assert pretrain["data"][key] == demo_cfg["data"][key], key
    assert pretrain["data"].get("seed", 0) == demo_cfg["data"].get("seed", 0)  # the volume split
    assert demo_cfg["model"]["dfds"]["ssfd"] == {"weights": "runs/demo/ssfd-demo.ckpt"}
    assert pretrain["model"]["export_path"] == "runs/demo/ssfd-demo.ckpt"
    assert pretrain["model"]["coverage"] == 0.5  # the paper's 50 % of the image


def test_dataset_refresh_removes_only_the_files_an_earlier_demo_wrote(demo, monkeypatch, tmp_path):
    small = {"volumes": 2, "slices": 1, "coils": 2, "shape": (32, 16), "recon_shape": (16, 16), "seed": 0}
    monkeypatch.setattr(demo, "DATASET", dict(small))
    data = tmp_path / "synthetic_knee"
    first = demo.ensure_dataset(data)
    assert [p.name for p in first] == ["file_synth0000.h5", "file_synth0001.h5"]
    (data / "notes.txt").write_text("mine")
    monkeypatch.setitem(demo.DATASET, "volumes", 1)  # another version of the demo: one volume
    assert [p.name for p in demo.ensure_dataset(data)] == ["file_synth0000.h5"]
    assert sorted(p.name for p in data.iterdir()) == ["demo_dataset.json", "file_synth0000.h5", "notes.txt"]

    (data / "file_synth0007.h5").write_bytes(b"a user's volume")  # no marker accounts for it
    monkeypatch.setitem(demo.DATASET, "volumes", 2)
    with pytest.raises(SystemExit, match="file_synth0007.h5, not written by an earlier demo"):
        demo.ensure_dataset(data)
    assert (data / "file_synth0007.h5").read_bytes() == b"a user's volume"
    assert (data / "file_synth0000.h5").is_file()  # refused before anything was removed

    user = tmp_path / "my_data"  # a folder without the demo's marker: nothing in it is the demo's
    user.mkdir()
    (user / "file_synth0000.h5").write_bytes(b"mine too")
    with pytest.raises(SystemExit, match="removes only its own files"):
        demo.ensure_dataset(user)
    assert (user / "file_synth0000.h5").read_bytes() == b"mine too"
