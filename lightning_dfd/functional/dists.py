"""Functional DISTS (the network is built once per arguments and device, then reused).

Example:
    >>> import torch
    >>> from lightning_dfd.functional import dists
    >>> x = torch.rand(2, 32, 32)
    >>> abs(float(dists(x, x, weights="random"))) < 1e-6
    True
"""

from __future__ import annotations

from torch import Tensor

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.dists import DISTSNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def dists(preds: Tensor, target: Tensor, weights: WeightsArg = "imagenet",
          normalization: str = "minmax", reduction: str = "mean",
          max_batch: int | None = None, precision: str = "fp32") -> Tensor:
    """DISTS between ``preds`` and ``target`` (see :class:`lightning_dfd.DISTS`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        weights: VGG-16 weights: ``"imagenet"``, a file path, or ``"random"``.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        reduction: ``"mean"`` or ``"none"``.
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    network = cached_network(DISTSNetwork, preds.device, weights=weights)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch, precision=precision)
