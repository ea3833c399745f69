"""lightning-dfd: deep feature distances for MR image reconstruction, as torchmetrics metrics.

``import lightning_dfd`` imports nothing heavy: each public name is imported from its module on
first use (``from lightning_dfd import LPIPS`` imports torch and the metrics), so that the
``lightning-dfd`` command line answers ``--help`` and ``--version`` without loading torch.

Example:
    >>> import torch
    >>> from lightning_dfd import PSNR
    >>> metric = PSNR()
    >>> metric.update(torch.rand(2, 16, 16), torch.rand(2, 16, 16))
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Every public name and the module it comes from (imported on first access, then kept here).
__all__ = ["DFDCallback", "DFDCollection", "DFDLoss", "DISTS", "HFFD", "LPIPS", "NMSE", "PSNR", "SSFD",
           "SSIM", "VAEFD", "DeepFeatureDistance", "FrechetDFD", "ResNetFD", "TimmFD", "VolumeDFD",
           "build_metric", "build_suite", "is_dfd"]
_EXPORTS = {name: "lightning_dfd.metrics" for name in __all__}
_EXPORTS.update(DFDCallback="lightning_dfd.callbacks", DFDLoss="lightning_dfd.losses")

if TYPE_CHECKING:  # what static tools and IDEs see: the same names, imported eagerly
    from lightning_dfd.callbacks import DFDCallback
    from lightning_dfd.losses import DFDLoss
    from lightning_dfd.metrics import (
        DISTS,
        HFFD,
        LPIPS,
        NMSE,
        PSNR,
        SSFD,
        SSIM,
        VAEFD,
        DeepFeatureDistance,
        DFDCollection,
        FrechetDFD,
        ResNetFD,
        TimmFD,
        VolumeDFD,
        build_metric,
        build_suite,
        is_dfd,
    )


class _DFDCallbackNeedsLightning:
    """Stand-in for :class:`lightning_dfd.callbacks.DFDCallback` when lightning is missing."""

    __name__ = __qualname__ = "DFDCallback"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ImportError("DFDCallback needs the `lightning` package, which the core install "
                          "of lightning-dfd does not include: pip install 'lightning-dfd[recon]'")


def _load(name: str) -> Any:
    module = _EXPORTS[name]
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as err:  # DFDCallback needs lightning (the [recon] extra); metrics do not
        missing = err.name or ""
        if name != "DFDCallback" or not (missing == "lightning" or missing.startswith("lightning.")):
            raise
        return _DFDCallbackNeedsLightning


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule, ``lightning_dfd.weights``) on first access."""
    if name in _EXPORTS:
        value = _load(name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
