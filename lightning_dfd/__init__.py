"""lightning-dfd: deep feature distances for MR image reconstruction, as torchmetrics metrics.

Example:
    >>> import torch
    >>> from lightning_dfd import PSNR
    >>> metric = PSNR()
    >>> metric.update(torch.rand(2, 16, 16), torch.rand(2, 16, 16))
"""

from lightning_dfd.metrics import (
    DISTS,
    LPIPS,
    NMSE,
    PSNR,
    SSFD,
    SSIM,
    VAEFD,
    DeepFeatureDistance,
    DFDCollection,
    ResNetFD,
    build_metric,
    is_dfd,
)

__version__ = "0.1.0"
__all__ = ["DFDCollection", "DISTS", "LPIPS", "NMSE", "PSNR", "SSFD", "SSIM", "VAEFD", "DeepFeatureDistance",
           "ResNetFD", "build_metric", "is_dfd"]
