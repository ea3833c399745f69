"""From one fastMRI slice to a :class:`~recon_models.data.sample.ReconSample`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastmri.data.subsample import MaskFunc

from lightning_dfd.sample_ids import sample_id
from recon_models.data.errors import DataFormatError
from recon_models.data.fastmri_format import (
    KSPACE_KEY,
    MASK_KEY,
    check_finite_kspace,
    list_volumes,
    open_h5,
)
from recon_models.data.maps_cache import SensitivityCache
from recon_models.data.masks import sample_mask, volume_seed
from recon_models.data.sample import ReconSample
from recon_models.data.sensitivity import sense_combine


def distributed_rank() -> int:
    """This process's global rank: from the initialised process group, else ``$RANK``, else 0.

    DataLoader workers forked from a rank inherit its process-group state and environment.

    Example:
        >>> distributed_rank()
        0
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


class ReconTransform:
    """A ``SliceDataset`` transform: masks k-space, adds coil maps and the SENSE reference.

    For each slice: the maps come from the per-volume :class:`SensitivityCache`; the target is
    the SENSE combination of the fully sampled k-space; k-space and target are divided by the
    volume's maximum ``|target|``; the mask is drawn from ``mask_func`` (fixed per volume when
    ``fixed_mask``, else fresh per slice) unless the file carries its own ``mask``.

    Training masks are seeded from torch's global generator, which Lightning seeds per process
    and DataLoader per worker, so workers draw different masks and runs are reproducible. The
    distributed rank is mixed into the seed (:func:`distributed_rank`): every rank is seeded
    alike by ``seed_everything``, and would otherwise draw the same sequence of masks.

    Args:
        mask_func: A fastMRI mask function; ``None`` keeps k-space fully sampled.
        sensitivity: The maps cache (its method defines the reference).
        fixed_mask: Seed the mask from the file name (validation/test): one mask per volume,
            the same in every epoch and process.
        root: Data folder, needed only with a plain ``fastmri.data.SliceDataset`` (whose
            attributes lack the file's path and volume index, which
            :class:`~recon_models.data.dataset.FastMRISliceDataset` adds).

    Example:
        >>> import tempfile
        >>> from fastmri.data import SliceDataset
        >>> from recon_models.data.masks import build_mask_func
        >>> from recon_models.data.synthetic import make_synthetic_dataset
        >>> root = Path(tempfile.mkdtemp()) / "data"
        >>> _ = make_synthetic_dataset(root, 1, slices=2, coils=2, shape=(32, 16),
        ...                            recon_shape=(16, 16))
        >>> transform = ReconTransform(build_mask_func("random", (4,)), SensitivityCache("rss"),
        ...                            fixed_mask=True, root=root)
        >>> sample = SliceDataset(root, "multicoil", transform=transform)[1]
        >>> sample.masked_kspace.shape, sample.mask.shape, int(sample.sample_id)
        (torch.Size([2, 32, 16]), torch.Size([1, 1, 16]), 1)
    """

    def __init__(
        self,
        mask_func: MaskFunc | None,
        sensitivity: SensitivityCache,
        fixed_mask: bool = False,
        root: str | os.PathLike | None = None,
    ):
        self.mask_func = mask_func
        self.sensitivity = sensitivity
        self.fixed_mask = fixed_mask
        self.root = None if root is None else Path(root)
        self._volume_ids: dict[str, int] | None = None

    def _locate(self, fname: str, attrs: Mapping[str, Any]) -> tuple[Path, int]:
        if "path" in attrs and "volume_id" in attrs:
            return Path(attrs["path"]), int(attrs["volume_id"])
        if self.root is None:
            raise ValueError(
                f"cannot locate {fname}: its attributes lack 'path' and 'volume_id' (use "
                "FastMRISliceDataset, or give ReconTransform the data folder as `root`)"
            )
        if self._volume_ids is None:
            self._volume_ids = {p.name: i for i, p in enumerate(list_volumes(self.root))}
        return self.root / fname, self._volume_ids[fname]

    def _mask(self, path: Path, fname: str, width: int, file_mask, attrs) -> torch.Tensor:
        if file_mask is not None:
            file_mask = np.asarray(file_mask)
            if file_mask.shape != (width,):
                raise DataFormatError(
                    path,
                    MASK_KEY,
                    f"shape {file_mask.shape} does not match the k-space width {width}",
                )
            return torch.from_numpy(file_mask.astype(np.float32)).reshape(1, 1, width)
        if self.mask_func is None:
            return torch.ones(1, 1, width)
        if self.fixed_mask:
            seed = volume_seed(fname)
        else:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
            rank = distributed_rank()
            seed = (seed, rank) if rank else seed  # one process: as before
        padding = None
        if "padding_left" in attrs and "padding_right" in attrs:
            padding = (int(attrs["padding_left"]), int(attrs["padding_right"]))
        mask = sample_mask(self.mask_func, width, seed=seed, padding=padding)
        if mask.shape[-1] != width:
            raise DataFormatError(
                path, MASK_KEY, f"mask width {mask.shape[-1]} does not match k-space width {width}"
            )
        return mask

    def __call__(
        self,
        kspace: np.ndarray,
        mask: np.ndarray | None,
        target: np.ndarray | None,
        attrs: Mapping[str, Any],
        fname: str,
        slice_num: int,
    ) -> ReconSample:
        """Build the sample (``SliceDataset``'s transform signature).

        Args:
            kspace: ``(coils, H, W)`` complex, fully sampled.
            mask: The file's ``mask`` (``(W,)``) or ``None``.
            target: The file's ``reconstruction_rss`` slice (unused: the reference is the SENSE
                combination on the full grid).
            attrs: File attributes and header metadata.
            fname: File name.
            slice_num: Slice index.

        Returns:
            The :class:`ReconSample`.
        """
        path, volume_id = self._locate(fname, attrs)
        kspace = np.asarray(kspace)
        if kspace.ndim != 3 or not np.iscomplexobj(kspace):
            raise DataFormatError(
                path,
                KSPACE_KEY,
                f"slice {slice_num}: expected complex (coils, H, W), got shape {kspace.shape} "
                f"dtype {kspace.dtype}",
            )
        check_finite_kspace(path, slice_num, kspace)
        _, height, width = kspace.shape
        maps, volume_max = self.sensitivity.load(path, slice_num, kspace)
        if maps.shape != kspace.shape:
            raise DataFormatError(
                path,
                KSPACE_KEY,
                f"slice {slice_num}: shape {kspace.shape} differs from its cached maps "
                f"{maps.shape} ({self.sensitivity.cache_file(path)})",
            )
        scale = 1.0 / volume_max
        full = torch.from_numpy(kspace.astype(np.complex64)) * scale
        maps_t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.complex64))
        image = sense_combine(full, maps_t)
        mask_t = self._mask(path, fname, width, mask, attrs)
        recon = attrs.get("recon_size", (height, width))
        crop = (min(int(recon[0]), height), min(int(recon[1]), width))
        return ReconSample(
            masked_kspace=full * mask_t + 0.0,
            mask=mask_t,
            maps=maps_t,
            target=image,
            max_value=torch.tensor(1.0),
            crop_size=torch.tensor(crop, dtype=torch.int64),
            volume_id=torch.tensor(volume_id, dtype=torch.int64),
            slice_num=torch.tensor(slice_num, dtype=torch.int64),
            sample_id=torch.tensor(sample_id(volume_id, slice_num), dtype=torch.int64),
            fname=fname,
            num_slices=torch.tensor(self._num_slices(path, attrs), dtype=torch.int64),
        )

    @staticmethod
    def _num_slices(path: Path, attrs: Mapping[str, Any]) -> int:
        if "num_slices" in attrs:
            return int(attrs["num_slices"])
        with open_h5(path) as hf:  # a plain SliceDataset: read the count from the file
            return int(hf[KSPACE_KEY].shape[0])
