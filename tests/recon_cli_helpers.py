"""Test-only callbacks named by ``class_path`` on ``recon-train`` command lines in the CLI tests."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class RecordTrainStart(Callback):
    """Save the network weights and learning rate the moment training starts (after a resume)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        torch.save({"state_dict": state, "lr": lr, "epoch": trainer.current_epoch}, self.path)
