"""The SSFD example configs parse and build what they promise (no training)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from lightning_dfd import SSFD
from lightning_dfd.callbacks import DFDEarlyStopping, DFDModelCheckpoint
from lightning_dfd.encoders.ssfd import SSFDEncoder
from recon_models.cli import ReconCLI
from recon_models.data import FastMRIDataModule
from recon_models.data.synthetic import make_synthetic_dataset
from recon_models.modules import ReconModule
from recon_models.modules.ssfd_pretrain import SSFDPretrainModule

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"


def _data(tmp_path: Path) -> Path:
    root = tmp_path / "knee"
    make_synthetic_dataset(root, volumes=3, slices=1, coils=2, shape=(32, 32),
                           recon_shape=(32, 32))
    return root


def test_ssfd_pretrain_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # LightningCLI gets `args`, not pytest's argv
    cli = LightningCLI(
        SSFDPretrainModule, FastMRIDataModule, run=False,
        args=["--config", str(CONFIGS / "ssfd_pretrain.yaml"), "--trainer.logger=false",
              "--data.data_path", str(_data(tmp_path))],
    )
    hp = cli.model.hparams
    assert (hp.patch_size, hp.coverage, hp.export_from) == (16, 0.5, "best")
    assert hp.export_path == "runs/ssfd_pretrain/ssfd_encoder.ckpt"
    stops = [c for c in cli.trainer.callbacks if isinstance(c, DFDEarlyStopping)]
    assert stops and stops[0].monitor == "val/loss" and stops[0].mode == "min"


def test_unet_ssfd_config_logs_and_monitors_ssfd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # LightningCLI gets `args`, not pytest's argv
    encoder = tmp_path / "ssfd_encoder.ckpt"
    torch.save({"model_state_dict": SSFDEncoder().state_dict()}, encoder)
    dfds = {"ssfd": {"weights": str(encoder)}, "lpips_vgg": {"weights": "random"}}
    cli = ReconCLI(
        ReconModule, FastMRIDataModule, run=False,
        args=["--config", str(CONFIGS / "unet_ssfd.yaml"), "--trainer.logger=false",
              "--data.data_path", str(_data(tmp_path)), "--data.sens_method", "rss",
              "--model.dfds", json.dumps(dfds)],
    )
    metrics = dict(cli.model.val_metrics.items(keep_base=True, copy_state=False))
    assert isinstance(metrics["ssfd"], SSFD) and "lpips_vgg" in metrics
    for kind in (DFDEarlyStopping, DFDModelCheckpoint):
        callback = next(c for c in cli.trainer.callbacks if isinstance(c, kind))
        assert callback.monitor == "val/ssfd" and callback.mode == "min"
