"""The fastMRI multi-coil ``LightningDataModule``: splits, masks, coil maps, loaders."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from recon_models.data.dataset import FastMRISliceDataset
from recon_models.data.fastmri_format import list_volumes
from recon_models.data.maps_cache import SensitivityCache
from recon_models.data.masks import build_mask_func
from recon_models.data.samplers import VolumeShardSampler
from recon_models.data.transforms import ReconTransform

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_counts(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Split ``total`` volumes by ``fractions``.

    Every non-zero fraction gets at least one volume while there are enough; the rest go by
    largest remainder.

    Args:
        total: Number of volumes.
        fractions: Non-negative fractions summing to 1.

    Returns:
        One count per fraction, summing to ``total``.

    Example:
        >>> split_counts(5, (0.6, 0.2, 0.2)), split_counts(3, (0.6, 0.2, 0.2))
        ([3, 1, 1], [1, 1, 1])
    """
    exact = [fraction * total for fraction in fractions]
    counts = [int(np.floor(value)) for value in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, fraction in enumerate(fractions):
        donor = max(range(len(counts)), key=lambda j: counts[j])
        if fraction > 0 and counts[i] == 0 and counts[donor] > 1:
            counts[i], counts[donor] = 1, counts[donor] - 1
    return counts


class FastMRIDataModule(pl.LightningDataModule):
    """fastMRI multi-coil knee data (real or synthetic) as :class:`ReconSample` batches.

    Give either ``data_path`` (one folder, split by volume with ``seed`` into ``split``
    fractions) or the explicit ``train_path`` / ``val_path`` / ``test_path`` folders (e.g.
    fastMRI's ``multicoil_train`` and ``multicoil_val``). Coil maps are estimated once per
    volume in :meth:`prepare_data` (one process per node) and cached beside the data folder
    (see :class:`~recon_models.data.maps_cache.SensitivityCache`).

    Training draws a new mask per slice and shuffles (under DDP Lightning's
    ``DistributedSampler`` shards it). Validation and test use one mask per volume (seeded by
    the file name) and :class:`~recon_models.data.samplers.VolumeShardSampler`, which gives
    each process whole volumes without padding, so every slice is counted exactly once.

    Args:
        data_path: One folder of ``.h5`` volumes, split by volume into train/val/test.
        train_path: Training folder (instead of ``data_path``).
        val_path: Validation folder (instead of ``data_path``).
        test_path: Test folder (instead of ``data_path``).
        split: Fractions of ``data_path``'s volumes for train, val and test (sum 1).
        mask_type: fastMRI mask type: ``"random"``, ``"equispaced"``, ``"equispaced_fraction"``,
            ``"magic"`` or ``"magic_fraction"``.
        accelerations: Undersampling factors (one drawn per slice when several).
        center_fractions: Fully sampled centre fraction per acceleration; ``None`` uses
            fastMRI's rule ``0.32 / acceleration`` (4x: 0.08, 8x: 0.04, 2x: 0.16, 6x: 0.053).
        sens_method: Coil maps and reference: ``"espirit"``, ``"jsense"`` or ``"rss"`` (RSS
            image as reference, no maps model).
        cache_dir: Folder for the maps cache; ``None`` puts it beside each data folder as
            ``<folder>_sense_cache``. Never inside a data folder.
        calib_width: Side of the fully sampled k-space centre used to estimate maps.
        maps_device: Device for ESPIRiT in :meth:`prepare_data` (e.g. ``"cuda"``; keep
            ``precompute_maps`` on, since forked DataLoader workers cannot use CUDA); ``None``
            uses the CPU. At fastMRI knee size (15 coils, 640x368) ESPIRiT takes about 19 s
            per slice on one CPU core.
        batch_size: Slices per batch (keep 1 for real fastMRI data, whose widths vary).
        num_workers: DataLoader worker processes.
        seed: Seed of the volume split and of ``sample_rate``'s selection.
        sample_rate: Fraction of each split's volumes to use (at least one), chosen with
            ``seed`` so that every process agrees.
        precompute_maps: Estimate all maps in :meth:`prepare_data`; otherwise each volume's
            maps are estimated on first use.
        pin_memory: DataLoader ``pin_memory``.

    Example:
        >>> import tempfile
        >>> from recon_models.data.synthetic import make_synthetic_dataset
        >>> root = Path(tempfile.mkdtemp()) / "knee"
        >>> _ = make_synthetic_dataset(root, 5, slices=2, coils=2, shape=(32, 16),
        ...                            recon_shape=(16, 16))
        >>> dm = FastMRIDataModule(data_path=str(root), sens_method="rss")
        >>> {name: len(files) for name, files in dm.split_files().items()}
        {'train': 3, 'val': 1, 'test': 1}
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.val_dataloader()))
        >>> batch.masked_kspace.shape, batch.mask.shape
        (torch.Size([1, 2, 32, 16]), torch.Size([1, 1, 1, 16]))
    """

    def __init__(
        self,
        data_path: str | None = None,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        split: tuple[float, float, float] = (0.6, 0.2, 0.2),
        mask_type: str = "random",
        accelerations: tuple[int, ...] = (4,),
        center_fractions: tuple[float, ...] | None = None,
        sens_method: str = "espirit",
        cache_dir: str | None = None,
        calib_width: int = 24,
        maps_device: str | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        sample_rate: float = 1.0,
        precompute_maps: bool = True,
        pin_memory: bool = False,
    ):
        super().__init__()
        explicit = (train_path, val_path, test_path)
        if data_path is None and all(p is None for p in explicit):
            raise ValueError("give `data_path` or at least one of `train_path`/`val_path`/`test_path`")
        if data_path is not None and any(p is not None for p in explicit):
            raise ValueError(
                "give either `data_path` (split by volume) or `train_path`/`val_path`/`test_path`, not both"
            )
        split = tuple(float(f) for f in split)
        if len(split) != 3 or any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(
                f"Argument `split` must be three non-negative fractions summing to 1, but got {split}"
            )
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"Argument `sample_rate` must be in (0, 1], but got {sample_rate}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"Arguments `batch_size` >= 1 and `num_workers` >= 0 required, got {batch_size}, "
                f"{num_workers}"
            )
        self.save_hyperparameters()
        self.data_path = data_path
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        self.split = split
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.sample_rate = sample_rate
        self.precompute_maps = precompute_maps
        self.pin_memory = pin_memory
        # Validate masks and maps parameters now, not in a worker process later.
        self.mask_func = build_mask_func(mask_type, accelerations, center_fractions)
        self.sensitivity = SensitivityCache(
            sens_method, cache_dir, calib_width=calib_width, device=maps_device
        )
        self.datasets: dict[str, FastMRISliceDataset] = {}

    def split_files(self) -> dict[str, list[Path]]:
        """The volumes of each split (sorted; empty list for a split without data).

        Returns:
            ``{"train": [...], "val": [...], "test": [...]}``.
        """
        if self.data_path is not None:
            files = list_volumes(self.data_path)
            order = np.random.default_rng(self.seed).permutation(len(files))
            bounds = np.cumsum([0, *split_counts(len(files), self.split)])
            chosen = {
                name: sorted(files[i] for i in order[bounds[k] : bounds[k + 1]])
                for k, name in enumerate(SPLITS)
            }
        else:
            chosen = {
                name: list_volumes(path) if path is not None else [] for name, path in self.paths.items()
            }
        if self.sample_rate < 1.0:
            rng = np.random.default_rng([self.seed, 1])
            for name, files in chosen.items():
                keep = max(1, int(round(len(files) * self.sample_rate))) if files else 0
                chosen[name] = sorted(files[i] for i in sorted(rng.permutation(len(files))[:keep]))
        return chosen

    def prepare_data(self) -> None:
        """Estimate and cache the coil maps of every volume (once per node)."""
        if not self.precompute_maps:
            return
        files = [path for paths in self.split_files().values() for path in paths]
        start = time.perf_counter()
        for path in files:
            self.sensitivity.ensure(path)
        log.info(
            "%s maps ready for %d volumes (%d estimated) in %.1f s",
            self.sensitivity.method,
            len(files),
            self.sensitivity.misses,
            time.perf_counter() - start,
        )

    def _dataset(self, name: str) -> FastMRISliceDataset:
        files = self.split_files()[name]
        if not files:
            where = self.data_path if self.data_path is not None else f"`{name}_path`"
            raise ValueError(f"the {name} split is empty (data {where}, split {self.split}); give it volumes")
        transform = ReconTransform(self.mask_func, self.sensitivity, fixed_mask=name != "train")
        return FastMRISliceDataset(files[0].parent, transform, files=[f.name for f in files])

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a stage needs.

        Args:
            stage: ``"fit"``, ``"validate"``, ``"test"``, ``"predict"`` or ``None`` (all
                non-empty splits).
        """
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage or "", None)
        if needed is None:
            files = self.split_files()
            needed = tuple(name for name in SPLITS if files[name])
        for name in needed:
            if name not in self.datasets:
                self.datasets[name] = self._dataset(name)

    def _loader(self, name: str, train: bool) -> DataLoader:
        if name not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[name])
        dataset = self.datasets[name]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            sampler=None if train else VolumeShardSampler(dataset),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training slices (Lightning adds a ``DistributedSampler`` under DDP)."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation slices, whole volumes per process, each slice once."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test slices, whole volumes per process, each slice once."""
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split (Lightning wraps samplers for prediction itself)."""
        return self._loader("test", train=False)
