"""The multi-coil SENSE operator on complex tensors, with fastMRI's centred orthonormal FFT.

Forward model ``A``: ``y_c = M * F(S_c * x)``;
adjoint ``A^H``: ``x = sum_c conj(S_c) * F^-1(M * y_c)``,
where ``F`` is the centred orthonormal 2-D FFT (``fastmri.fft2c`` semantics) over the last two
dimensions, ``S_c`` the coil sensitivity maps and ``M`` the sampling mask (0/1). Because ``F`` is
unitary and ``sum_c |S_c|^2 <= 1``, ``||A|| <= 1``.

Shapes: image ``(B, H, W)`` complex, k-space and maps ``(B, C, H, W)`` complex, mask broadcastable
to ``(B, C, H, W)`` (the data pipeline gives ``(B, 1, 1, W)``), or ``None`` for the full grid.
"""

from __future__ import annotations

from torch import Tensor

from recon_models.fourier import check_complex, fft2c, ifft2c


def sense_forward(image: Tensor, maps: Tensor, mask: Tensor | None = None) -> Tensor:
    """Apply ``A``: coil images ``S_c * x`` to (masked) k-space.

    Args:
        image: ``(B, H, W)`` complex image.
        maps: ``(B, C, H, W)`` complex coil sensitivities.
        mask: sampling mask broadcastable to ``(B, C, H, W)``, or ``None`` for all lines.

    Returns:
        ``(B, C, H, W)`` complex k-space.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 8, 8, dtype=torch.complex64)
        >>> maps = torch.ones(1, 2, 8, 8, dtype=torch.complex64) / 2**0.5
        >>> sense_forward(x, maps, torch.ones(1, 1, 1, 8)).shape
        torch.Size([1, 2, 8, 8])
    """
    _check_pair(image, maps)
    kspace = fft2c(image.unsqueeze(1) * maps)
    return kspace if mask is None else kspace * mask


def sense_adjoint(kspace: Tensor, maps: Tensor, mask: Tensor | None = None) -> Tensor:
    """Apply ``A^H``: (masked) k-space to the coil-combined image ``sum_c conj(S_c) F^-1(M y_c)``.

    Applied to the masked k-space this is the zero-filled SENSE reconstruction.

    Args:
        kspace: ``(B, C, H, W)`` complex k-space.
        maps: ``(B, C, H, W)`` complex coil sensitivities.
        mask: sampling mask broadcastable to ``(B, C, H, W)``, or ``None`` for all lines.

    Returns:
        ``(B, H, W)`` complex image.

    Example:
        >>> import torch
        >>> x = torch.randn(1, 8, 8, dtype=torch.complex128)
        >>> maps = torch.ones(1, 2, 8, 8, dtype=torch.complex128) / 2**0.5
        >>> torch.allclose(sense_adjoint(sense_forward(x, maps), maps), x)
        True
    """
    check_complex(kspace, "kspace")
    if kspace.ndim != 4 or kspace.shape != maps.shape:
        raise ValueError(
            f"Expected `kspace` and `maps` of the same shape (B, C, H, W), but got "
            f"{tuple(kspace.shape)} and {tuple(maps.shape)}"
        )
    if mask is not None:
        kspace = kspace * mask
    return (maps.conj() * ifft2c(kspace)).sum(dim=1)


def _check_pair(image: Tensor, maps: Tensor) -> None:
    check_complex(image, "image")
    check_complex(maps, "maps")
    if image.ndim != 3 or maps.ndim != 4 or maps.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"Expected `image` (B, H, W) and `maps` (B, C, H, W) with the same H, W, but got "
            f"{tuple(image.shape)} and {tuple(maps.shape)}"
        )
