"""lightning-dfd: deep feature distances for MR image reconstruction, as torchmetrics metrics.

Example:
    >>> import torch
    >>> from lightning_dfd import PSNR
    >>> metric = PSNR()
    >>> metric.update(torch.rand(2, 16, 16), torch.rand(2, 16, 16))
"""

from typing import Any

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
    TimmFD,
    VolumeDFD,
    build_metric,
    is_dfd,
)

try:  # DFDCallback needs lightning (the [recon] extra); the metrics do not.
    from lightning_dfd.callbacks import DFDCallback
except ModuleNotFoundError as _err:
    if _err.name != "lightning" and not (_err.name or "").startswith("lightning."):
        raise

    class DFDCallback:  # type: ignore[no-redef]
        """Stand-in for :class:`lightning_dfd.callbacks.DFDCallback` when lightning is missing."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("DFDCallback needs the `lightning` package, which the core install "
                              "of lightning-dfd does not include: pip install 'lightning-dfd[recon]'")

__version__ = "0.1.0"
__all__ = ["DFDCallback", "DFDCollection", "DISTS", "LPIPS", "NMSE", "PSNR", "SSFD", "SSIM", "VAEFD",
           "DeepFeatureDistance", "ResNetFD", "TimmFD", "VolumeDFD", "build_metric",
           "is_dfd"]
