"""The reconstruction sample: what the data pipeline hands to every reconstruction model."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ReconSample(NamedTuple):
    """One slice, ready for a SENSE-based reconstruction model.

    k-space and target are scaled by one factor per volume so that ``max |target|`` over the
    volume is 1. After the default collate every tensor gets a leading batch dimension ``B``
    (``mask`` becomes ``(B, 1, 1, W)``) and ``fname`` becomes a list of strings.

    The SENSE forward model is ``y_c = M * F(S_c * x)`` and its adjoint
    ``x = sum_c conj(S_c) * F^-1(M * y_c)``, with ``F`` fastMRI's centred orthonormal 2-D FFT.

    Attributes:
        masked_kspace: ``(coils, H, W)`` complex64, centred k-space times the mask, scaled.
        mask: ``(1, 1, W)`` float32 in {0, 1}; broadcasts over coils and rows.
        maps: ``(coils, H, W)`` complex64 coil sensitivities, ``sum_c |S_c|^2 = 1`` inside the
            object.
        target: ``(H, W)`` complex64 SENSE-combined fully sampled reference on the full k-space
            grid.
        max_value: ``()`` float32, max ``|target|`` over the whole volume (after scaling, 1).
        crop_size: ``(2,)`` int64, the ``reconSpace`` ``(H, W)`` from the ISMRMRD header, where
            metrics are computed.
        volume_id: ``()`` int64, index of the volume in the sorted file list of its split.
        slice_num: ``()`` int64.
        sample_id: ``()`` int64, ``lightning_dfd.sample_ids.sample_id(volume_id, slice_num)``
            (unique, stable across processes).
        fname: The volume's file name.
        num_slices: ``()`` int64, slices in the volume (``-1``: unknown), for slice-subset
            protocols such as ``ReconModule(dfd_slices="center")``.

    Example:
        >>> import torch
        >>> sample = ReconSample(
        ...     masked_kspace=torch.zeros(4, 32, 16, dtype=torch.complex64),
        ...     mask=torch.ones(1, 1, 16), maps=torch.zeros(4, 32, 16, dtype=torch.complex64),
        ...     target=torch.zeros(32, 16, dtype=torch.complex64), max_value=torch.tensor(1.0),
        ...     crop_size=torch.tensor([16, 16]), volume_id=torch.tensor(0),
        ...     slice_num=torch.tensor(3), sample_id=torch.tensor(3), fname="file_synth0000.h5")
        >>> sample.target.shape
        torch.Size([32, 16])
    """

    masked_kspace: Tensor
    mask: Tensor
    maps: Tensor
    target: Tensor
    max_value: Tensor
    crop_size: Tensor
    volume_id: Tensor
    slice_num: Tensor
    sample_id: Tensor
    fname: str
    num_slices: Tensor | int = -1

