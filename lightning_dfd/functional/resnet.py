"""Functional ResNet-50 feature distance (RINFD with RadImageNet weights).

Example:
    >>> import torch
    >>> from lightning_dfd.functional import resnet_fd
    >>> x = torch.rand(2, 32, 32)
    >>> float(resnet_fd(x, x, weights="random"))
    0.0
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.base import parse_layers
from lightning_dfd.encoders.resnet import DEFAULT_LAYER, ResNetFDNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def resnet_fd(preds: Tensor, target: Tensor, weights: WeightsArg = "radimagenet",
              layers: str | Sequence[str] = (DEFAULT_LAYER,),
              input_range: tuple[float, float] = (-1.0, 1.0), distance: str = "mse",
              normalization: str = "minmax", reduction: str = "mean",
              max_batch: int | None = None, precision: str = "fp32") -> Tensor:
    """ResNet-50 feature distance (see :class:`lightning_dfd.ResNetFD`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        weights: ``"radimagenet"``, ``"imagenet"``, ``"random"`` or a file path.
        layers: torchvision node names to tap; distances are summed over them.
        input_range: ``(-1, 1)`` as the reference code or ``(0, 1)``.
        distance: ``"mse"`` or ``"mae"``.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        reduction: ``"mean"`` or ``"none"``.
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    network = cached_network(ResNetFDNetwork, preds.device, weights=weights, layers=parse_layers(layers),
                             input_range=tuple(input_range), distance=distance)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch, precision=precision)
