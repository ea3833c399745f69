"""Functional TimmFD (the network is built once per arguments and device, then cached).

Example:
    >>> import torch
    >>> x = torch.rand(2, 32, 32)
    >>> float(timm_fd(x, x, model_name="resnet18", layers=(1,), weights="random"))
    0.0
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from lightning_dfd.encoders.timm import TimmFDNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def timm_fd(
    preds: Tensor,
    target: Tensor,
    model_name: str = "convnext_tiny",
    layers: int | Iterable[int] = (2,),
    weights: str | os.PathLike | None = None,
    distance: str = "mse",
    model_kwargs: Mapping[str, Any] | None = None,
    normalization: str = "minmax",
    reduction: str = "mean",
    max_batch: int | None = None,
    precision: str = "fp32",
) -> Tensor:
    """TimmFD between ``preds`` and ``target`` (see :class:`lightning_dfd.TimmFD`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        model_name: a timm model name.
        layers: timm ``out_indices``, summed.
        weights: ``"random"``, a registry name, a file path, or None (the model's default).
        distance: ``"mse"``, ``"mae"`` or ``"unit"``.
        model_kwargs: more arguments of ``timm.create_model`` (hashable values).
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        reduction: ``"mean"`` or ``"none"`` (one value per image and channel).
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    network = cached_network(
        TimmFDNetwork, preds.device, model_name=model_name, layers=layers, weights=weights,
        distance=distance, model_kwargs=tuple(sorted(dict(model_kwargs or {}).items())),
    )
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch, precision=precision)
