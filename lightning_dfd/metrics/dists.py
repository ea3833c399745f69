"""DISTS for MR images."""

from __future__ import annotations

from typing import Any

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.dists import DISTSNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class DISTS(DeepFeatureDistance):
    """Deep Image Structure and Texture Similarity on magnitude MR images.

    Images are scaled to [0, 1] (after ``normalization``) and replicated to pseudo-RGB; alpha and
    beta are the weights shipped with ``DISTS_pytorch``. ``update(..., mask=...)`` weights every
    channel's mean, variance and covariance by the ROI mask (area-resized to each stage); DISTS
    has no per-pixel form, so :meth:`distance_map` raises :class:`NotImplementedError`.

    Args:
        weights: VGG-16 weights: ``"imagenet"``, a file path, or ``"random"``.
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import torch
        >>> from lightning_dfd import DISTS
        >>> metric = DISTS(weights="random", reduction="none")
        >>> x = torch.rand(2, 1, 64, 64)
        >>> metric.update(x, x)
        >>> metric.compute().abs().max() < 1e-5
        tensor(True)
        >>> roi = torch.zeros(2, 64, 64, dtype=torch.bool)
        >>> roi[:, 16:48, 16:48] = True
        >>> metric.update(x, torch.rand(2, 1, 64, 64), mask=roi)  # DISTS of the region's statistics
        >>> metric.compute().shape
        torch.Size([4])
    """

    plot_upper_bound = 1.0
    def __init__(self, weights: WeightsArg = "imagenet", **kwargs: Any) -> None:
        super().__init__(DISTSNetwork(weights=weights), **kwargs)
        self.weights = weights
