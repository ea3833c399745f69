"""LPIPS for MR images (VGG-16 / AlexNet, with or without the learned linear layers)."""

from __future__ import annotations

from typing import Any

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.lpips import LPIPSNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class LPIPS(DeepFeatureDistance):
    """Learned Perceptual Image Patch Similarity on magnitude MR images.

    Each image is scaled to [-1, 1] (after ``normalization``), replicated to pseudo-RGB and
    compared at the five LPIPS taps; the linear layers are the ones shipped with ``lpips``.

    Args:
        net: ``"vgg"`` (default) or ``"alex"``.
        linear: apply the learned linear layers (False: the paper's "VGG-16 without linear").
        weights: backbone weights: ``"imagenet"`` (torchvision's checkpoint via the weights
            registry), a file path, or ``"random"``.
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import torch
        >>> from lightning_dfd import LPIPS
        >>> _ = torch.manual_seed(0)
        >>> metric = LPIPS(net="alex", weights="random")
        >>> preds = torch.rand(2, 64, 64, dtype=torch.complex64)
        >>> metric.update(preds, preds)
        >>> float(metric.compute())
        0.0
    """

    def __init__(self, net: str = "vgg", linear: bool = True, weights: WeightsArg = "imagenet",
                 **kwargs: Any) -> None:
        super().__init__(LPIPSNetwork(net=net, linear=linear, weights=weights), **kwargs)
        self.net, self.linear, self.weights = net, linear, weights
