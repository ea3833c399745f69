"""Functional SSFD (the network is built once per arguments and device, then reused).

Example:
    >>> import torch
    >>> x = torch.rand(2, 32, 32)
    >>> float(ssfd(x, x, weights="random"))
    0.0
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor

from lightning_dfd.encoders.base import parse_layers
from lightning_dfd.encoders.ssfd import DEFAULT_LAYER, SSFD_WEIGHTS, SSFDNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def ssfd(
    preds: Tensor,
    target: Tensor,
    weights: str | os.PathLike = SSFD_WEIGHTS,
    layers: Sequence[str] = (DEFAULT_LAYER,),
    distance: str = "mse",
    reduction: str = "mean",
    max_batch: int | None = None,
    precision: str = "fp32",
) -> Tensor:
    """SSFD between ``preds`` and ``target`` (see :class:`lightning_dfd.SSFD`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        weights: ``"ssfd-fastmri-knee"``, a checkpoint path, or ``"random"``.
        layers: feature taps, summed.
        distance: ``"mse"`` or ``"mae"``.
        reduction: ``"mean"`` or ``"none"`` (one value per image and channel).
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    layers = parse_layers(layers)
    network = cached_network(
        SSFDNetwork, preds.device, weights=weights, layers=layers, distance=distance
    )
    # z-scoring makes the [0, 1] normalisation irrelevant: "none" skips it.
    return functional_distance(
        network, preds, target, normalization="none", reduction=reduction, max_batch=max_batch,
        precision=precision,
    )
