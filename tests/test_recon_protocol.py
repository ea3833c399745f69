"""The paper's validation protocol: DFDs on the centre slice / every n-th epoch, pixel metrics on all."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_dfd.callbacks import DFDEarlyStopping, DFDModelCheckpoint
from recon_models.modules import ReconModule, center_crop
from recon_models.modules.base import dfd_slice_rows

TINY = {"chans": 4, "num_pool_layers": 2}
LPIPS = {"lpips_vgg": {"weights": "random"}}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _module(**kwargs) -> ReconModule:
    torch.manual_seed(0)  # same network and same random LPIPS weights in every module
    return ReconModule("unet", TINY, dfds=LPIPS, log_images_every_n_epochs=0, **kwargs)


def _trainer(**kwargs) -> pl.Trainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**options, **kwargs})


def test_center_slice_dfd_equals_the_metric_over_centre_slices_and_psnr_uses_every_slice(make_datamodule):
    datamodule = make_datamodule(sens_method="rss", split=(0.2, 0.6, 0.2), batch_size=2)
    center = _module(dfd_slices="center")
    [logged] = _trainer().validate(center, datamodule=datamodule, verbose=False)
    [every] = _trainer().validate(_module(), datamodule=datamodule, verbose=False)
    assert logged["val/psnr"] == pytest.approx(every["val/psnr"], rel=1e-6)  # all slices
    assert logged["val/ssim"] == pytest.approx(every["val/ssim"], rel=1e-6)
    assert logged["val/lpips_vgg"] != pytest.approx(every["val/lpips_vgg"], rel=1e-4)

    # direct: the same metric over the centre slice (n // 2) of each volume only
    metric = center.val_metrics["lpips_vgg"]
    metric.reset()
    seen = []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            pred = center(batch.masked_kspace, batch.mask, batch.maps).abs()
            for row in range(pred.shape[0]):
                if int(batch.slice_num[row]) != int(batch.num_slices[row]) // 2:
                    continue
                size = batch.crop_size[row].tolist()
                metric.update(center_crop(pred[row : row + 1], size),
                              center_crop(batch.target[row : row + 1].abs(), size),
                              sample_ids=batch.sample_id[row : row + 1])
                seen.append((int(batch.volume_id[row]), int(batch.slice_num[row])))
    assert len(seen) == len(datamodule.split_files()["val"]) == 3  # one slice per volume
    assert float(metric.compute()) == pytest.approx(logged["val/lpips_vgg"], rel=1e-5)


def test_dfd_slice_rows_rules():
    slices, counts = torch.tensor([0, 1, 2, 3, 0, 1, 2]), torch.tensor([4, 4, 4, 4, 3, 3, 3])
    assert dfd_slice_rows("center", slices, counts).tolist() == [0, 0, 1, 0, 0, 1, 0]
    assert dfd_slice_rows(2, slices, counts).tolist() == [0, 1, 1, 0, 1, 1, 0]
    assert dfd_slice_rows(5, slices, counts).all()
    with pytest.raises(ValueError, match="needs each sample's `slice_num` and `num_slices`"):
        dfd_slice_rows("center", slices, torch.full((7,), -1))
    with pytest.raises(ValueError, match="Argument `dfd_slices` must be"):
        ReconModule("unet", TINY, dfds={}, dfd_slices="middle")
    with pytest.raises(ValueError, match="Argument `dfd_every_n_epochs` must be an integer >= 1"):
        ReconModule("unet", TINY, dfds={}, dfd_every_n_epochs=0)


def test_early_stopping_and_checkpointing_with_dfds_every_second_epoch(make_datamodule, tmp_path):
    # lr = 0: the model never changes, so the second DFD evaluation (epoch 2) is no improvement
    module = _module(lr=0.0, dfd_every_n_epochs=2, dfd_slices="center")
    stopping = DFDEarlyStopping(monitor="val/lpips_vgg", patience=1, min_delta=1e-6)
    checkpoint = DFDModelCheckpoint(monitor="val/lpips_vgg", dirpath=tmp_path / "ckpt",
                                    filename="best-{epoch}", save_last=True)
    trainer = _trainer(max_epochs=8, limit_train_batches=1, callbacks=[stopping, checkpoint],
                       enable_checkpointing=True, logger=CSVLogger(tmp_path, name="csv"))
    trainer.fit(module, datamodule=make_datamodule(sens_method="rss"))
    # epoch 1 had no DFD: not an error, not counted (an old value would have stopped it at 1)
    assert stopping.stopped_epoch == 2 and trainer.current_epoch == 3
    metrics = pd.read_csv(Path(trainer.log_dir) / "metrics.csv")
    assert sorted(metrics.dropna(subset=["val/lpips_vgg"])["epoch"]) == [0, 2]
    assert sorted(metrics.dropna(subset=["val/psnr"])["epoch"]) == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("best-*.ckpt")) == ["best-epoch=0.ckpt"]
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2
    assert module.skipped_metrics == frozenset()  # the last validation (epoch 2) computed it


@pytest.mark.slow
@pytest.mark.ddp
def test_center_slice_protocol_under_ddp_equals_one_process(tmp_path, monkeypatch):
    """2 gloo processes (whole volumes each, unequal step counts) log what one process logs."""
    import os
    import socket
    import subprocess
    import sys

    import yaml

    from recon_models.cli import run_cli
    from recon_models.data.synthetic import make_synthetic_dataset

    root = Path(__file__).resolve().parents[1]
    val = tmp_path / "val"
    for index, slices in enumerate((3, 4, 6)):
        make_synthetic_dataset(val, 1, slices=slices, coils=2, shape=(32, 16), recon_shape=(16, 16),
                               seed=3, start_index=index)

    def config(run_dir: Path) -> list[str]:
        run_dir.mkdir()
        override = {
            "seed_everything": 0,
            "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                        "enable_model_summary": False,
                        "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                    "init_args": {"save_dir": str(run_dir), "name": "csv"}}]},
            "model": {"network_kwargs": TINY, "dfds": {"lpips_vgg": {"weights": "random", "max_batch": 2}},
                      "log_images_every_n_epochs": 0, "dfd_slices": "center"},
            "data": {"data_path": None, "val_path": str(val), "sens_method": "rss", "batch_size": 2,
                     "num_workers": 0},
        }  # fmt: skip
        (run_dir / "override.yaml").write_text(yaml.safe_dump(override))
        return ["validate", "--config", str(root / "examples/configs/unet.yaml"),
                "--config", str(run_dir / "override.yaml")]

    def logged(run_dir: Path) -> pd.Series:
        (path,) = run_dir.glob("csv/**/metrics.csv")
        return pd.read_csv(path).iloc[-1].drop(["epoch", "step"], errors="ignore")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    ddp = subprocess.Popen([sys.executable, "-m", "recon_models.cli", *config(tmp_path / "ddp"),
                            "--trainer.strategy", "ddp", "--trainer.devices", "2"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monkeypatch.setattr(sys, "argv", ["recon-train"])
    monkeypatch.chdir(tmp_path)
    run_cli(config(tmp_path / "single"))
    output, _ = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, output[-4000:]
    assert "Starting with 2 processes" in output
    single, two = logged(tmp_path / "single"), logged(tmp_path / "ddp")
    assert {"val/lpips_vgg", "val/psnr", "val/ssim", "val/nmse"} <= set(single.dropna().index)
    for column in single.dropna().index:
        assert two[column] == pytest.approx(single[column], rel=1e-6, abs=1e-6), column


@pytest.mark.parametrize("failure", ["validate", "update"])
def test_centre_slice_protocol_update_is_all_or_nothing(failure, monkeypatch):
    """A DFD that rejects (or fails on) the centre rows leaves PSNR/SSIM/NMSE as they were."""
    module = _module(dfd_slices="center")
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 32, 32, generator=g)
    preds = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    args = dict(data_range=target.flatten(1).amax(1), volume_ids=torch.tensor([0, 0, 0]),
                sample_ids=torch.tensor([1, 2, 3]), slice_num=torch.tensor([0, 1, 2]),
                num_slices=torch.tensor([3, 3, 3]))
    module.update_val_metrics(preds, target, **args)
    before = {k: v.detach().clone() for k, v in module.val_metrics.compute().items()}
    metric = module.val_metrics["lpips_vgg"]

    def broken(*_args, **_kwargs):
        raise RuntimeError("encoder failed")

    monkeypatch.setattr(metric, failure, broken)
    with pytest.raises(RuntimeError, match="encoder failed"):
        module.update_val_metrics(preds.flip(0), target, **{**args, "sample_ids": torch.tensor([4, 5, 6])})
    monkeypatch.undo()
    after = module.val_metrics.compute()
    assert set(after) == set(before)
    for name, value in before.items():  # the rejected batch reached no metric
        torch.testing.assert_close(after[name], value, msg=name)
