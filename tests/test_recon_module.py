"""ReconModule: metric wiring (crop, magnitude, data range, volumes), image grids, callbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastmri import evaluate
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_dfd.sample_ids import sample_id
from recon_models.data.sample import ReconSample
from recon_models.modules import ReconModule, build_metric_collection, center_crop
from tests.test_models_networks import make_slice

SMALL_UNET = {"chans": 4, "num_pool_layers": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _volumes(crops: list[tuple[int, int]], slices: int = 3) -> list[ReconSample]:
    """Slices of len(crops) volumes, 16x16, 2 coils; each volume with its own crop size."""
    samples = []
    for volume, crop in enumerate(crops):
        parts = [make_slice(16, 16, coils=2, seed=10 * volume + s) for s in range(slices)]
        max_value = max(float(target.abs().max()) for *_, target in parts)
        for s, (kspace, mask, maps, target) in enumerate(parts):
            samples.append(ReconSample(
                masked_kspace=kspace[0] / max_value, mask=mask[0], maps=maps[0],
                target=target[0] / max_value, max_value=torch.tensor(1.0),
                crop_size=torch.tensor(crop), volume_id=torch.tensor(volume),
                slice_num=torch.tensor(s), sample_id=torch.tensor(sample_id(volume, s)),
                fname=f"file{volume}.h5",
            ))  # fmt: skip
    return samples


def test_optimizer_defaults_are_the_papers():
    module = ReconModule("unrolled", {"num_unrolls": 1, "chans": 4, "num_res_blocks": 1}, dfds={})
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["weight_decay"] == 1e-4
    assert module.loss_name == "kspace_l1"
    assert ReconModule("unet", SMALL_UNET, loss="kspace_l1", dfds={}).loss_name == "kspace_l1"


def test_default_dfds_and_modes():
    module = ReconModule("unet", SMALL_UNET, dfds={name: {"weights": "random"}
                                                   for name in ("lpips_vgg", "dists", "resnet_fd")})
    assert module.metric_modes == {
        "val/psnr": "max", "val/ssim": "max", "val/nmse": "min",
        "val/lpips_vgg": "min", "val/dists": "min", "val/resnet_fd": "min",
    }  # fmt: skip
    # encoders stay out of the checkpoint: only the network is saved
    assert all(key.startswith("network.") for key in module.state_dict())


def test_metric_collection_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown deep feature distance 'psnr2'"):
        build_metric_collection({"psnr2": {}})
    with pytest.raises(ValueError, match="`pixel_metrics` must hold names from"):
        build_metric_collection({}, ["lpips_vgg"])


def test_center_crop_clamps_to_image():
    image = torch.arange(6.0 * 4).reshape(1, 6, 4)
    assert center_crop(image, (2, 2)).tolist() == [[[9.0, 10.0], [13.0, 14.0]]]
    assert center_crop(image, (4, 10)).shape == (1, 4, 4)


def test_validation_metrics_match_fastmri_evaluate_per_volume(tmp_path):
    # volume 2 has another crop, and the second batch mixes volumes 1 and 2
    crops = [(12, 12), (12, 12), (10, 14)]
    samples = _volumes(crops)
    torch.manual_seed(0)
    module = ReconModule("unet", SMALL_UNET, dfds={"resnet_fd": {"weights": "random"}},
                         log_images_every_n_epochs=1)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = Trainer(accelerator="cpu", logger=logger, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(module, DataLoader(samples, batch_size=4))

    module.eval()
    with torch.no_grad():
        preds = [module(s.masked_kspace[None], s.mask[None], s.maps[None])[0] for s in samples]
    expected = {"psnr": [], "ssim": [], "nmse": []}
    fd_metric = dict(module.val_metrics.items(keep_base=True, copy_state=False))["resnet_fd"]
    fd_metric.reset()
    for volume, crop in enumerate(crops):
        rows = [i for i, s in enumerate(samples) if int(s.volume_id) == volume]
        gt = torch.stack([center_crop(samples[i].target.abs(), crop) for i in rows])
        pred = torch.stack([center_crop(preds[i].abs(), crop) for i in rows])
        fd_metric.update(pred, gt)
        gt_np, pred_np = gt.numpy().astype(np.float64), pred.numpy().astype(np.float64)
        expected["psnr"].append(evaluate.psnr(gt_np, pred_np, maxval=1.0))
        expected["ssim"].append(evaluate.ssim(gt_np, pred_np, maxval=1.0))
        expected["nmse"].append(evaluate.nmse(gt_np, pred_np))
    for name, values in expected.items():
        assert logged[f"val/{name}"] == pytest.approx(np.mean(values), rel=1e-4), name
    assert logged["val/resnet_fd"] == pytest.approx(float(fd_metric.compute()), rel=1e-5)
    assert logged["val/loss"] > 0

    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert "val/images" in events.Tags()["images"]
    grid = events.Images("val/images")[0]
    # 4 crops and the ResNetFD map in a row, each 12 px upscaled x22 to >= 256 px under a 28 px
    # label strip, padding 2
    assert (grid.height, grid.width) == (28 + 12 * 22 + 4, 5 * 12 * 22 + 12)


def test_image_grid_has_a_dfd_map_tile_of_the_first_dfd_with_a_map(monkeypatch):
    module = ReconModule("unet", SMALL_UNET, dfds={"dists": {"weights": "random"},
                                                   "resnet_fd": {"weights": "random"}})
    logged = {}
    monkeypatch.setattr(module, "log_image_grid", lambda tag, images, scale: logged.update(images))
    sample = _volumes([(12, 12)])[0]  # 16x16 slice, 12x12 crop: rows/columns 2..13
    batch = ReconSample(*(x[None] if isinstance(x, torch.Tensor) else [x] for x in sample))
    pred = batch.target.clone()
    pred[0, 8:14, 8:14] += 0.5  # a local error in the crop's lower-right quarter (crop 6..11)
    name, maps = module._first_dfd_map(pred[:, 2:14, 2:14].abs(), batch.target[:, 2:14, 2:14].abs())
    module._log_images(batch, pred, (name, maps[0]))  # validation_step hands in the scored map
    # the labels say what a tile's brightness means: the error amplified, the map relative to its max
    assert list(logged) == ["target", "zero_filled", "reconstruction", "error x5", "resnet_fd map (0 to max)"]
    crop = (slice(2, 14), slice(2, 14))
    error = (pred[0].abs()[crop] - batch.target[0].abs()[crop]).abs() * 5
    torch.testing.assert_close(logged["error x5"], error)
    dfd_map = logged["resnet_fd map (0 to max)"]  # DISTS has no spatial map: the first DFD with one is used
    assert dfd_map.shape == (12, 12) and float(dfd_map.max()) == pytest.approx(1.0, rel=1e-5)
    metric = dict(module.val_metrics.items(keep_base=True, copy_state=False))["resnet_fd"]
    expected = metric.distance_map(pred[0].abs()[crop][None], batch.target[0].abs()[crop][None])[0, 0]
    torch.testing.assert_close(dfd_map, expected / expected.max())  # localisation: tests/test_spatial.py
