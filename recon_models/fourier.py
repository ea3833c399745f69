"""Centred orthonormal 2-D FFTs on complex tensors (``fastmri.fft2c`` / ``ifft2c`` semantics).

fastMRI's functions take real tensors with a trailing dimension of 2; these take complex
tensors and give the same numbers.
"""

from __future__ import annotations

import torch


def check_complex(tensor: torch.Tensor, name: str) -> None:
    """Raise a ``TypeError`` naming ``name`` unless ``tensor`` is complex."""
    if not tensor.is_complex():
        raise TypeError(f"Expected `{name}` to be a complex tensor, but got dtype {tensor.dtype}")


def fft2c(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions.

    Args:
        image: ``(..., H, W)`` complex.

    Returns:
        ``(..., H, W)`` complex k-space, DC at ``(H // 2, W // 2)``.

    Example:
        >>> x = torch.randn(2, 8, 4, dtype=torch.complex64)
        >>> torch.allclose(ifft2c(fft2c(x)), x, atol=1e-6)
        True
    """
    check_complex(image, "image")
    dims = (-2, -1)
    shifted = torch.fft.ifftshift(image, dim=dims)
    return torch.fft.fftshift(torch.fft.fft2(shifted, dim=dims, norm="ortho"), dim=dims)


def ifft2c(kspace: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two dimensions.

    Args:
        kspace: ``(..., H, W)`` complex, DC at ``(H // 2, W // 2)``.

    Returns:
        ``(..., H, W)`` complex image.

    Example:
        >>> k = torch.zeros(4, 4, dtype=torch.complex64); k[2, 2] = 4
        >>> ifft2c(k).abs().unique()
        tensor([1.])
    """
    check_complex(kspace, "kspace")
    dims = (-2, -1)
    shifted = torch.fft.ifftshift(kspace, dim=dims)
    return torch.fft.fftshift(torch.fft.ifft2(shifted, dim=dims, norm="ortho"), dim=dims)
