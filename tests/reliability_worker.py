"""Test-only callbacks and entry point for the reliability tests (DDP exactness, SIGKILL resume).

The callbacks are named by ``class_path`` in the YAML configs the tests write, so they run
inside ``recon-train`` (``python -m recon_models.cli``) started from the repository root:

- :class:`KillAtStep`: ``SIGKILL`` this process at a chosen global step, when the environment
  variable ``RELIABILITY_KILL_AT_STEP`` says so (a crash no Python handler can intercept).
- :class:`DiskFeatureCache`: give every DFD one on-disk :class:`TargetFeatureCache` and append
  its counters to ``stats.jsonl`` after each validation.
- :class:`PerImageValues`: score validation images with an extra ``reduction="none"`` DFD and
  save its ``compute_per_image()`` (gathered over processes, sorted by sample id) on rank 0.

``python -m tests.reliability_worker --plain-val-sampler <recon-train args>`` runs recon-train
with a validation loader that has no sampler of its own, so that under DDP Lightning injects its
default (padding) ``DistributedSampler`` instead of ``VolumeShardSampler``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.metrics import build_metric
from lightning_dfd.metrics.base import DeepFeatureDistance
from recon_models.cli import ReconCLI, run_cli
from recon_models.data import FastMRIDataModule
from recon_models.modules import ReconModule, center_crop

KILL_ENV = "RELIABILITY_KILL_AT_STEP"


class KillAtStep(Callback):
    """``SIGKILL`` the process before training batch ``global_step == $RELIABILITY_KILL_AT_STEP``."""

    def __init__(self) -> None:
        value = os.environ.get(KILL_ENV)
        self.step = None if value in (None, "") else int(value)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.step is not None and trainer.global_step == self.step:
            print(f"SIGKILL at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                  f"batch {batch_idx})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


class DiskFeatureCache(Callback):
    """One on-disk target-feature cache for every DFD of the module; counters to stats.jsonl."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.cache = TargetFeatureCache(directory=self.directory)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for metric in pl_module.val_metrics.values(copy_state=False):
            if isinstance(metric, DeepFeatureDistance):
                metric.feature_cache = self.cache

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stats = self.cache.stats
        line = {"epoch": trainer.current_epoch, "hits": stats.hits, "misses": stats.misses,
                "disk_hits": stats.disk_hits}
        with open(self.directory / "stats.jsonl", "a") as file:
            file.write(json.dumps(line) + "\n")


class PerImageValues(Callback):
    """Per-image values of one more DFD (``reduction="none"``), saved by rank 0 per epoch.

    The DFD is built with a fixed seed (same random weights in every process) and scores the
    centre-cropped magnitudes of the module's predictions, recomputed in eval mode. After each
    validation epoch ``compute_per_image()`` (a collective call) is saved to
    ``<log_dir>/<filename>`` as ``{"ids", "values", "world_size"}``.

    Args:
        name: the DFD (``lightning_dfd.metrics.METRICS``).
        kwargs: its ``build_metric`` arguments (default: random weights).
        filename: the file name in the trainer's log folder.
    """

    def __init__(self, name: str = "dists", kwargs: dict[str, Any] | None = None,
                 filename: str = "per_image.pt") -> None:
        self.name = name
        self.kwargs = {"weights": "random"} if kwargs is None else dict(kwargs)
        self.filename = filename
        self.metric: DeepFeatureDistance | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(1234)
            self.metric = build_metric(self.name, reduction="none", **self.kwargs)
        self.metric.to(pl_module.device)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: ReconModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        with torch.no_grad():
            pred = pl_module(batch.masked_kspace, batch.mask, batch.maps).abs()
        for row in range(pred.shape[0]):
            size = batch.crop_size[row].tolist()
            self.metric.update(center_crop(pred[row : row + 1], size),
                               center_crop(batch.target[row : row + 1].abs(), size),
                               sample_ids=batch.sample_id[row : row + 1])

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        result = self.metric.compute_per_image()  # every rank: gathers across processes
        self.metric.reset()
        log_dir = trainer.log_dir  # every rank: a broadcast under DDP
        if trainer.is_global_zero and not trainer.sanity_checking:
            torch.save({**{k: v.cpu() for k, v in result.items()}, "world_size": trainer.world_size},
                       Path(log_dir) / self.filename)


class PlainValSamplerDataModule(FastMRIDataModule):
    """``FastMRIDataModule`` whose validation loader has no sampler (Lightning adds its own)."""

    def val_dataloader(self) -> DataLoader:
        if "val" not in self.datasets:
            self.setup("validate")
        return DataLoader(self.datasets["val"], batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)


def main(argv: list[str]) -> None:
    """recon-train, or with ``--plain-val-sampler`` first, recon-train on the unguarded loader."""
    if argv[:1] == ["--plain-val-sampler"]:
        ReconCLI(ReconModule, PlainValSamplerDataModule, args=argv[1:],
                 save_config_kwargs={"overwrite": True})
    else:
        run_cli(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
