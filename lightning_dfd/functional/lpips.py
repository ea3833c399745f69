"""Functional LPIPS (the network is built once per arguments and device, then reused).

Example:
    >>> import torch
    >>> from lightning_dfd.functional import lpips
    >>> x = torch.rand(2, 32, 32)
    >>> float(lpips(x, x, net="alex", weights="random"))
    0.0
"""

from __future__ import annotations

from torch import Tensor

from lightning_dfd.encoders.backbones import WeightsArg
from lightning_dfd.encoders.lpips import LPIPSNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def lpips(preds: Tensor, target: Tensor, net: str = "vgg", linear: bool = True,
          weights: WeightsArg = "imagenet", normalization: str = "minmax",
          reduction: str = "mean", max_batch: int | None = None, precision: str = "fp32") -> Tensor:
    """LPIPS between ``preds`` and ``target`` (see :class:`lightning_dfd.LPIPS`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        net: ``"vgg"`` or ``"alex"``.
        linear: apply the learned linear layers.
        weights: backbone weights: ``"imagenet"``, a file path, or ``"random"``.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        reduction: ``"mean"`` or ``"none"`` (one value per image and channel).
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    network = cached_network(LPIPSNetwork, preds.device, net=net, linear=linear, weights=weights)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch, precision=precision)
