"""ResNet-50 feature distance (RINFD with RadImageNet weights)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.base import parse_layers
from lightning_dfd.encoders.resnet import DEFAULT_LAYER, ResNetFDNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class ResNetFD(DeepFeatureDistance):
    """MSE between ResNet-50 features at ``layer3.3.conv3`` (RINFD when ``weights="radimagenet"``).

    Args:
        weights: ``"radimagenet"`` (default), ``"imagenet"``, ``"random"`` or a file path
            (torchvision layout or the published RadImageNet ``backbone.N`` layout).
        layers: torchvision node names to tap; distances are summed over them.
        input_range: ``(-1, 1)`` as the reference code (default) or ``(0, 1)`` as the paper's text.
        distance: ``"mse"`` or ``"mae"``.
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import torch
        >>> from lightning_dfd import ResNetFD
        >>> metric = ResNetFD(weights="random")
        >>> metric.update(torch.rand(2, 64, 64), torch.rand(2, 64, 64))
        >>> bool(metric.compute() > 0)
        True
    """

    def __init__(
        self,
        weights: WeightsArg = "radimagenet",
        layers: str | Sequence[str] = (DEFAULT_LAYER,),
        input_range: tuple[float, float] = (-1.0, 1.0),
        distance: str = "mse",
        **kwargs: Any,
    ) -> None:
        network = ResNetFDNetwork(weights=weights, layers=parse_layers(layers),
                                  input_range=tuple(input_range), distance=distance)
        super().__init__(network, **kwargs)
        self.weights = weights
