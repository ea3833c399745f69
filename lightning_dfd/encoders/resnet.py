"""ResNet-50 feature distance network (RINFD with RadImageNet weights).

The feature is the output of ``layer3.3.conv3`` (the paper's "l = 23"), tapped with torchvision's
feature extraction, so layer 4 and the head are never computed.

Example:
    >>> import torch
    >>> net = ResNetFDNetwork(weights="random")
    >>> [f.shape for f in net(torch.rand(1, 1, 64, 64))]
    [torch.Size([1, 1024, 4, 4])]
"""

from __future__ import annotations

import os

from torch import Tensor
from torchvision.models.feature_extraction import create_feature_extractor

from lightning_dfd.encoders.backbones import WeightsArg, freeze, resnet50, resolve_alias
from lightning_dfd.encoders.base import (
    FeatureDistanceNetwork,
    difference_maps,
    mean_absolute_distance,
    mean_squared_distance,
    parse_layers,
)
from lightning_dfd.preprocess import to_rgb
from lightning_dfd.weights import seeds_random_init

DEFAULT_LAYER = "layer3.3.conv3"


class ResNetFDNetwork(FeatureDistanceNetwork):
    """ResNet-50 features at one or more named layers, compared by MSE (or MAE).

    Args:
        weights: ``"radimagenet"``, ``"imagenet"``, ``"random"``, a registry name or a file path.
        layers: torchvision node names to tap (default: ``layer3.3.conv3``).
        input_range: ``(-1, 1)`` as the reference code, or ``(0, 1)`` as the paper's text says.
        distance: ``"mse"`` or ``"mae"``.
    """

    @seeds_random_init
    def __init__(
        self,
        weights: WeightsArg = "radimagenet",
        layers: tuple[str, ...] = (DEFAULT_LAYER,),
        input_range: tuple[float, float] = (-1.0, 1.0),
        distance: str = "mse",
    ):
        super().__init__()
        if distance not in ("mse", "mae"):
            raise ValueError(f"Argument `distance` must be one of ('mse', 'mae'), but got {distance!r}")
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise ValueError(f"Argument `input_range` must be (low, high) with high > low, got {input_range}")
        layers = parse_layers(layers)
        self.body = create_feature_extractor(resnet50(resolve_alias("resnet50", weights)),
                                             return_nodes=list(layers))
        self.layers = tuple(layers)
        self.lo, self.hi = lo, hi
        self._distance = mean_squared_distance if distance == "mse" else mean_absolute_distance
        self.features_identity = f"resnet50-{os.fspath(weights)}-{'+'.join(layers)}-{lo},{hi}"
        self.identity = f"{self.features_identity}-{distance}"
        self.min_size = 1  # every stride pads: a 1x1 image still reaches layer4
        freeze(self)

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] grayscale -> ``input_range`` pseudo-RGB."""
        return to_rgb(images * (self.hi - self.lo) + self.lo)

    def features(self, x: Tensor) -> list[Tensor]:
        """Activations at the requested layers, in order."""
        out = self.body(x)
        return [out[name] for name in self.layers]

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """MSE (or MAE) over channels and positions, summed over layers."""
        return self._distance(feats_preds, feats_target)

    def layer_maps(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
        """Per-position contributions ``(M, 1, h_l, w_l)`` per layer; ``distance`` = sum of their means.

        The squared (MSE) or absolute (MAE) feature difference averaged over channels.
        """
        return difference_maps(feats_preds, feats_target, absolute=self._distance is mean_absolute_distance)
