"""lightning-dfd: deep feature distances for MR image reconstruction, as torchmetrics metrics.

Example:
    >>> import torch
    >>> from lightning_dfd import PSNR
    >>> metric = PSNR()
    >>> metric.update(torch.rand(2, 16, 16), torch.rand(2, 16, 16))
"""

from importlib import import_module
from typing import Any

from lightning_dfd.metrics import DISTS, LPIPS, NMSE, PSNR, SSIM, ResNetFD, build_metric
from lightning_dfd.metrics.timm import TimmFD

__version__ = "0.1.0"
__all__ = ["DISTS", "LPIPS", "NMSE", "PSNR", "SSFD", "SSIM", "VAEFD", "ResNetFD", "TimmFD", "build_metric"]

_LAZY = {"SSFD": "lightning_dfd.metrics.ssfd", "VAEFD": "lightning_dfd.metrics.vaefd"}


def __getattr__(name: str) -> Any:
    """SSFD and VAEFD are imported on first use."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_dfd' has no attribute {name!r}")
