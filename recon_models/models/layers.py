"""Complex images as two real channels, and a per-sample normalising wrapper for CNNs on them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def complex_to_channels(image: Tensor) -> Tensor:
    """Turn a ``(B, H, W)`` complex image into a ``(B, 2, H, W)`` real one (real, imaginary).

    Example:
        >>> complex_to_channels(torch.tensor([[[1 + 2j]]])).flatten().tolist()
        [1.0, 2.0]
    """
    if not image.is_complex() or image.ndim != 3:
        raise ValueError(
            f"Expected a complex image of shape (B, H, W), but got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    return torch.view_as_real(image).permute(0, 3, 1, 2)


def channels_to_complex(image: Tensor) -> Tensor:
    """Turn a ``(B, 2, H, W)`` real image (real, imaginary) into a ``(B, H, W)`` complex one.

    Example:
        >>> channels_to_complex(torch.tensor([[[[1.0]], [[2.0]]]]))
        tensor([[[1.+2.j]]])
    """
    if image.is_complex() or image.ndim != 4 or image.shape[1] != 2:
        raise ValueError(
            f"Expected a real image of shape (B, 2, H, W), but got {image.dtype} "
            f"{tuple(image.shape)}"
        )
    return torch.view_as_complex(image.permute(0, 2, 3, 1).contiguous())


class NormalizedComplexModel(nn.Module):
    """Run a 2-channel real CNN on a complex image, normalised per sample (fastMRI's ``NormUnet``).

    The real and imaginary channels of each sample are shifted and scaled to zero mean and unit
    standard deviation, padded to a multiple of ``pad_multiple``, passed through ``model``, cropped
    back, and un-normalised with the same statistics. The network thus sees inputs of a fixed
    scale whatever the scaling of the k-space.

    Args:
        model: a module mapping ``(B, 2, H, W)`` to ``(B, 2, H, W)``.
        pad_multiple: pad height and width up to a multiple of this (``2**num_pools`` for a UNet).
        eps: added to the standard deviation so that a constant image does not divide by zero.

    Example:
        >>> wrapped = NormalizedComplexModel(nn.Conv2d(2, 2, 3, padding=1), pad_multiple=4)
        >>> wrapped(torch.randn(2, 6, 5, dtype=torch.complex64)).shape
        torch.Size([2, 6, 5])
    """

    def __init__(self, model: nn.Module, pad_multiple: int = 1, eps: float = 1e-8) -> None:
        super().__init__()
        if pad_multiple < 1:
            raise ValueError(f"Argument `pad_multiple` must be >= 1, but got {pad_multiple}")
        self.model = model
        self.pad_multiple = pad_multiple
        self.eps = eps

    def forward(self, image: Tensor) -> Tensor:
        """Map a ``(B, H, W)`` complex image to a ``(B, H, W)`` complex image."""
        x = complex_to_channels(image)
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), correction=0, keepdim=True) + self.eps
        x = (x - mean) / std
        height, width = x.shape[-2:]
        pad_h = -height % self.pad_multiple
        pad_w = -width % self.pad_multiple
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        x = self.model(x)
        x = x[..., pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width]
        return channels_to_complex(x * std + mean)
