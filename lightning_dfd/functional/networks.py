"""Functional LPIPS, DISTS and ResNet-FD: build the network once (cached), score, reduce.

Example:
    >>> import torch
    >>> from lightning_dfd.functional import resnet_fd
    >>> x = torch.rand(2, 32, 32)
    >>> float(resnet_fd(x, x, weights="random"))
    0.0
"""

from __future__ import annotations

from torch import Tensor

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.dists import DISTSNetwork
from lightning_dfd.encoders.lpips import LPIPSNetwork
from lightning_dfd.encoders.resnet import DEFAULT_LAYER, ResNetFDNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def lpips(preds: Tensor, target: Tensor, net: str = "vgg", linear: bool = True,
          weights: WeightsArg = "imagenet", normalization: str = "minmax",
          reduction: str = "mean", max_batch: int | None = None) -> Tensor:
    """LPIPS between ``preds`` and ``target`` (see :class:`lightning_dfd.LPIPS`)."""
    network = cached_network(LPIPSNetwork, preds.device, net=net, linear=linear, weights=weights)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch)


def dists(preds: Tensor, target: Tensor, weights: WeightsArg = "imagenet",
          normalization: str = "minmax", reduction: str = "mean",
          max_batch: int | None = None) -> Tensor:
    """DISTS between ``preds`` and ``target`` (see :class:`lightning_dfd.DISTS`)."""
    network = cached_network(DISTSNetwork, preds.device, weights=weights)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch)


def resnet_fd(preds: Tensor, target: Tensor, weights: WeightsArg = "radimagenet",
              layers: tuple[str, ...] = (DEFAULT_LAYER,),
              input_range: tuple[float, float] = (-1.0, 1.0), distance: str = "mse",
              normalization: str = "minmax", reduction: str = "mean",
              max_batch: int | None = None) -> Tensor:
    """ResNet-50 feature distance (see :class:`lightning_dfd.ResNetFD`)."""
    network = cached_network(ResNetFDNetwork, preds.device, weights=weights, layers=tuple(layers),
                             input_range=tuple(input_range), distance=distance)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch)
