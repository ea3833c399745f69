"""`DFDModelCheckpoint(save_last=True)` keeps `last.ckpt` at the latest epoch, improved or not."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_dfd.callbacks import DFDModelCheckpoint
from recon_models.modules import ReconModule


def test_last_checkpoint_follows_every_epoch(make_datamodule, tmp_path):
    torch.manual_seed(0)
    # lr = 0: the monitored metric never improves after epoch 0, so no top-k save happens later
    module = ReconModule("unet", {"chans": 4, "num_pool_layers": 2}, dfds={}, lr=0.0,
                         log_images_every_n_epochs=0)
    checkpoint = DFDModelCheckpoint(monitor="val/psnr", dirpath=tmp_path, save_last=True,
                                    filename="best-{epoch}")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False,
                         callbacks=[checkpoint], limit_train_batches=2, limit_val_batches=2,
                         num_sanity_val_steps=0, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=make_datamodule(sens_method="rss"))
    assert sorted(p.name for p in tmp_path.glob("best-*.ckpt")) == ["best-epoch=0.ckpt"]
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] == 6
