"""``fastmri.data.SliceDataset`` with file selection, validation and errors that name the file."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from fastmri.data import SliceDataset

from recon_models.data.errors import DataFormatError
from recon_models.data.fastmri_format import (
    KSPACE_KEY,
    MASK_KEY,
    RSS_KEY,
    check_volume,
    list_volumes,
    open_h5,
)


class FastMRISliceDataset(SliceDataset):
    """fastMRI's multi-coil ``SliceDataset`` restricted to chosen files, with checked inputs.

    Differences from the parent: only the named ``.h5`` files of ``root`` are read (any other
    entry is skipped, so one folder can be split by volume); every file is checked with
    :func:`~recon_models.data.fastmri_format.check_volume` when the dataset is built, and read
    errors later are raised as :class:`DataFormatError` naming the file and key; the
    attributes handed to the transform gain ``path`` (the file) and ``volume_id`` (its index
    in the sorted list of selected files).

    Args:
        root: Data folder.
        transform: ``transform(kspace, mask, target, attrs, fname, slice_num)``.
        files: File names inside ``root`` to use (default: every ``.h5`` file).

    Raises:
        FileNotFoundError: ``root`` is missing or has no ``.h5`` file, or a named file is absent.
        DataFormatError: A file is unreadable or malformed.

    Example:
        >>> import tempfile
        >>> from recon_models.data.synthetic import make_synthetic_dataset
        >>> root = tempfile.mkdtemp()
        >>> _ = make_synthetic_dataset(root, 2, slices=3, coils=2, shape=(32, 16),
        ...                            recon_shape=(16, 16))
        >>> dataset = FastMRISliceDataset(root, files=["file_synth0001.h5"])
        >>> len(dataset), dataset.raw_samples[0].metadata["volume_id"]
        (3, 0)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        files: Sequence[str] | None = None,
    ):
        root = Path(root)
        available = [p.name for p in list_volumes(root)]
        if files is None:
            selected = available
        else:
            missing = sorted(set(files) - set(available))
            if missing:
                raise FileNotFoundError(f"data folder {root} lacks the files {missing}")
            selected = sorted(set(files))
        self.files = [root / name for name in selected]
        self._volume_ids = {name: index for index, name in enumerate(selected)}
        super().__init__(root, challenge="multicoil", transform=transform, use_dataset_cache=False)

    def _retrieve_metadata(self, fname):
        fname = Path(fname)
        if fname.name not in self._volume_ids:
            return {}, 0  # not selected (another split's volume, or not an .h5 file)
        check_volume(fname)
        try:
            metadata, num_slices = super()._retrieve_metadata(fname)
        except (OSError, KeyError, RuntimeError) as err:
            raise DataFormatError(fname, None, f"fastMRI cannot read its metadata: {err}") from err
        metadata["path"] = str(fname)
        metadata["num_slices"] = int(num_slices)
        metadata["volume_id"] = self._volume_ids[fname.name]
        return metadata, num_slices

    def __getitem__(self, i: int):
        fname, slice_num, metadata = self.raw_samples[i]
        key = None
        try:
            with open_h5(fname) as hf:
                key = KSPACE_KEY
                kspace = np.asarray(hf[KSPACE_KEY][slice_num])
                key = MASK_KEY
                mask = np.asarray(hf[MASK_KEY]) if MASK_KEY in hf else None
                key = RSS_KEY
                target = hf[RSS_KEY][slice_num] if RSS_KEY in hf else None
                key = None
                attrs = dict(hf.attrs)
        except (OSError, KeyError) as err:
            raise DataFormatError(fname, key, f"slice {slice_num} cannot be read: {err}") from err
        attrs.update(metadata)
        if self.transform is None:
            return kspace, mask, target, attrs, fname.name, slice_num
        return self.transform(kspace, mask, target, attrs, fname.name, slice_num)

    @property
    def slices_per_volume(self) -> dict[str, int]:
        """Number of slices of each selected file, by file name."""
        counts = {path.name: 0 for path in self.files}
        for raw_sample in self.raw_samples:
            counts[Path(raw_sample.fname).name] += 1
        return counts
