"""ReconModule: metric wiring (crop, magnitude, data range, volumes), image grids, callbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastmri import evaluate
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_dfd.callbacks import DFDEarlyStopping, DFDModelCheckpoint, metric_mode
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
                slice_num=torch.tensor(s), sample_id=torch.tensor(volume * 10_000 + s),
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
    # 4 crops in a row, each 12 px upscaled x22 to >= 256 px under a 28 px label strip, padding 2
    assert (grid.height, grid.width) == (28 + 12 * 22 + 4, 4 * 12 * 22 + 10)


class _LogsFixedValues(LightningModule):
    """Logs a given sequence of `val/lpips_vgg` values, one per epoch."""

    def __init__(self, values):
        super().__init__()
        self.values = values
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.log("val/lpips_vgg", self.values[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_early_stopping_and_checkpoint_follow_the_metrics_direction(tmp_path):
    # lower is better for LPIPS: best 0.4 at epoch 1, no improvement in 2 and 3 -> stop at 3
    values = [0.5, 0.4, 0.41, 0.42, 0.43, 0.1]
    stopper = DFDEarlyStopping(monitor="val/lpips_vgg", patience=2)
    checkpoint = DFDModelCheckpoint(monitor="val/lpips_vgg", dirpath=tmp_path,
                                    filename="best-{epoch}")
    assert stopper.mode == checkpoint.mode == "min"
    trainer = Trainer(accelerator="cpu", max_epochs=len(values), logger=False,
                      callbacks=[stopper, checkpoint], enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0)
    data = DataLoader(torch.zeros(2, 1))
    trainer.fit(_LogsFixedValues(values), data, data)
    assert stopper.stopped_epoch == 3
    assert checkpoint.best_model_path.endswith("best-epoch=1.ckpt")
    assert float(checkpoint.best_model_score) == pytest.approx(0.4)


def test_metric_mode_by_name():
    assert metric_mode("val/psnr") == "max" and metric_mode("val/ssim") == "max"
    assert metric_mode("val/dists") == "min" and metric_mode("train/loss") == "min"
    assert DFDEarlyStopping(monitor="val/lpips_vgg", mode="max").mode == "max"  # explicit wins
    with pytest.raises(ValueError, match="give `mode`"):
        DFDEarlyStopping(monitor="val/sharpness")


def test_per_image_dfd_is_logged_as_mean_and_written_per_sample(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    samples = _volumes([(12, 12), (10, 14)], slices=2)
    torch.manual_seed(0)
    module = ReconModule("unet", SMALL_UNET, log_images_every_n_epochs=0,
                         dfds={"resnet_fd": {"weights": "random", "reduction": "none"}})
    trainer = Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    (logged,) = trainer.validate(module, DataLoader(samples, batch_size=3))
    found = module.per_image_values["resnet_fd"]
    assert found["ids"].tolist() == [0, 1, 10_000, 10_001]
    assert logged["val/resnet_fd"] == pytest.approx(float(found["values"].mean()), rel=1e-6)
    lines = (Path(trainer.log_dir) / "per_image" / "epoch=000.csv").read_text().splitlines()
    assert lines[0] == "sample_id,volume_id,slice,resnet_fd"
    assert [line.split(",")[:3] for line in lines[1:]] == [
        ["0", "0", "0"], ["1", "0", "1"], ["10000", "1", "0"], ["10001", "1", "1"]]
    written = [float(line.split(",")[3]) for line in lines[1:]]
    assert written == pytest.approx(found["values"].tolist(), rel=1e-6)


def test_dfd_precision_auto_follows_the_hardware_and_is_announced_with_the_cache_line(monkeypatch, capsys):
    import lightning_dfd.encoders.base as encoders_base

    monkeypatch.setattr(encoders_base, "fast_bf16", lambda: (True, "CPU has amx_bf16"))
    module = ReconModule("unet", SMALL_UNET, dfds={"resnet_fd": {"weights": "random"},
                                                   "ssfd": {"weights": "random", "precision": "fp32"}},
                         dfd_precision="auto")
    metrics = dict(module.val_metrics.items(keep_base=True, copy_state=False))
    assert metrics["resnet_fd"].precision == "bf16" and metrics["ssfd"].precision == "fp32"
    monkeypatch.setattr(encoders_base, "fast_bf16", lambda: (False, "no bf16 units found"))
    assert ReconModule("unet", SMALL_UNET, dfds={}, dfd_precision="auto").dfd_precision == "fp32"
    with pytest.raises(ValueError, match="precision"):
        ReconModule("unet", SMALL_UNET, dfds={}, dfd_precision="fp16")

    samples = _volumes([(12, 12), (12, 12)])
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(samples, batch_size=4))
    first = capsys.readouterr().out
    assert "[dfd] resnet_fd: encoder precision bf16 (auto: CPU has amx_bf16)" in first
    assert "[dfd] ssfd: encoder precision fp32" in first and "feature cache" not in first
    trainer.validate(module, DataLoader(samples, batch_size=4))  # the cache now knows its entry size
    second = capsys.readouterr().out
    assert f"x {len(samples)} images" in second and "feature cache for resnet_fd" in second
