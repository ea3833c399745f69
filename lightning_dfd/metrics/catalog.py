"""Metrics by name, for configs and command lines (``val/lpips_vgg`` and friends).

Example:
    >>> from lightning_dfd.metrics import build_metric
    >>> type(build_metric("lpips_alex", weights="random")).__name__
    'LPIPS'
"""

from __future__ import annotations

import importlib
from typing import Any

from torchmetrics import Metric

#: name -> (module, class, preset keyword arguments)
METRICS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "psnr": ("lightning_dfd.metrics.pixel", "PSNR", {}),
    "ssim": ("lightning_dfd.metrics.pixel", "SSIM", {}),
    "nmse": ("lightning_dfd.metrics.pixel", "NMSE", {}),
    "lpips_vgg": ("lightning_dfd.metrics.lpips", "LPIPS", {"net": "vgg", "linear": True}),
    "lpips_alex": ("lightning_dfd.metrics.lpips", "LPIPS", {"net": "alex", "linear": True}),
    "lpips_vgg_nolin": ("lightning_dfd.metrics.lpips", "LPIPS", {"net": "vgg", "linear": False}),
    "dists": ("lightning_dfd.metrics.dists", "DISTS", {}),
    "resnet_fd": ("lightning_dfd.metrics.resnet", "ResNetFD", {}),
    "rinfd": ("lightning_dfd.metrics.resnet", "ResNetFD", {"weights": "radimagenet"}),
    "ssfd": ("lightning_dfd.metrics.ssfd", "SSFD", {}),
    "vaefd": ("lightning_dfd.metrics.vaefd", "VAEFD", {}),
    "timm_fd": ("lightning_dfd.metrics.timm", "TimmFD", {}),
    "hf_fd": ("lightning_dfd.metrics.hf", "HFFD", {}),
}
#: The one list of pixel metrics (every other catalog name is a DFD).
PIXEL_METRICS: tuple[str, ...] = ("psnr", "ssim", "nmse")


def metric_class(name: str) -> type[Metric]:
    """The class behind a metric name."""
    if name not in METRICS:
        raise ValueError(f"Argument `name` must be one of {tuple(METRICS)}, but got {name!r}")
    module, cls, _ = METRICS[name]
    return getattr(importlib.import_module(module), cls)


def build_metric(name: str, **kwargs: Any) -> Metric:
    """Instantiate a metric by name; ``kwargs`` override the preset (e.g. ``weights="random"``)."""
    preset = dict(METRICS[name][2]) if name in METRICS else {}
    cls = metric_class(name)
    if name in PIXEL_METRICS:
        kwargs.pop("weights", None)  # a suite-wide `weights` means nothing to pixel metrics
    return cls(**{**preset, **kwargs})
