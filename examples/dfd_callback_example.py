"""Add deep feature distances to a LightningModule you already have, without changing it.

``Denoiser`` is an ordinary LightningModule (nothing from lightning-dfd in it) whose
``validation_step`` returns a fastMRI ``MriModule``-style dict. ``DFDCallback`` scores those
outputs with LPIPS-VGG, DISTS and PSNR, logs ``val/<name>`` every epoch, and ``DFDEarlyStopping``
/ ``DFDModelCheckpoint`` monitor the DFD. Random encoder weights keep it offline; use the default
weights (``{"lpips_vgg": {}, ...}``) once ``lightning-dfd weights fetch`` has downloaded them.

Under DDP, give validation a sampler that does not pad (each slice on exactly one process):
``Trainer(use_distributed_sampler=False)`` and ``UnrepeatedDistributedSampler`` as below.

Run:  python examples/dfd_callback_example.py   (~15 s on 2 CPU cores)
"""

from __future__ import annotations

import tempfile

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_dfd import DFDCallback
from lightning_dfd.callbacks import DFDEarlyStopping, DFDModelCheckpoint


class NoisyPhantoms(Dataset):
    """Disc phantoms plus noise, with fastMRI-style ``fname`` / ``slice_num`` / ``max_value``."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
        radius = 0.2 + 0.6 * torch.rand(n, 1, 1, generator=g)
        self.target = (xx**2 + yy**2 < radius).float() + 0.1 * (xx + 1)
        self.image = self.target + 0.3 * torch.randn(n, 48, 48, generator=g)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int):
        return self.image[i], self.target[i], f"vol{i // 4}.h5", i % 4, float(self.target[i].max())


class Denoiser(LightningModule):
    """A small CNN denoiser: the user's own module, unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x.unsqueeze(1)).squeeze(1)

    def training_step(self, batch, batch_idx):
        image, target = batch[0], batch[1]
        loss = nn.functional.l1_loss(self(image), target)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        image, target, fname, slice_num, max_value = batch
        output = self(image)
        self.log("val/loss", nn.functional.l1_loss(output, target), batch_size=len(image))
        return {"output": output, "target": target, "fname": fname, "slice_num": slice_num,
                "max_value": max_value}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)

    def train_dataloader(self):
        return DataLoader(NoisyPhantoms(32, seed=0), batch_size=8, shuffle=True)

    def val_dataloader(self):
        data = NoisyPhantoms(12, seed=1)
        ddp = self.trainer.world_size > 1
        return DataLoader(data, batch_size=4, sampler=UnrepeatedDistributedSampler(data) if ddp else None)


class PrintEpoch(Callback):
    """Print the validation values of every epoch."""

    def on_validation_end(self, trainer, pl_module) -> None:  # noqa: D102
        if not trainer.sanity_checking:
            values = {k: round(float(v), 4) for k, v in sorted(trainer.callback_metrics.items())
                      if k.startswith("val/")}
            print(f"epoch {trainer.current_epoch}: {values}")


def main() -> None:
    """Train 4 epochs and print what the callback logged."""
    seed_everything(0)
    dfds = DFDCallback({"lpips_vgg": {"weights": "random"}, "dists": {"weights": "random"}, "psnr": {}})
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, use_distributed_sampler=False, default_root_dir=folder,
            callbacks=[dfds, DFDEarlyStopping(monitor="val/lpips_vgg", patience=2),
                       DFDModelCheckpoint(monitor="val/lpips_vgg", dirpath=folder), PrintEpoch()],
        )
        trainer.fit(Denoiser())
        best = trainer.checkpoint_callback
        print(f"best val/lpips_vgg {float(best.best_model_score):.4f}; checkpoint without encoder weights")


if __name__ == "__main__":
    main()
