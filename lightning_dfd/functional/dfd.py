"""The body of every functional DFD: validate, encode (one pass, no cache), distance, reduce.

Stateless: networks are built once per arguments and device (:func:`cached_network`), nothing is
written anywhere, and a cached network is never changed: each call builds its own
:class:`~lightning_dfd.encoders.encoder_pass.EncoderPass` (no feature cache) with its own
:class:`~lightning_dfd.encoders.options.EncoderOptions`, so functional and class values are the
same computation.

Example:
    >>> import torch
    >>> from lightning_dfd.encoders.resnet import ResNetFDNetwork
    >>> net = ResNetFDNetwork(weights="random")
    >>> functional_distance(net, torch.rand(2, 32, 32), torch.rand(2, 32, 32), reduction="none").shape
    torch.Size([2])
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.encoders.encoder_pass import EncoderPass
from lightning_dfd.encoders.options import EncoderOptions
from lightning_dfd.preprocess import REDUCTIONS, check_choice, validated_images

__all__ = ["cached_network", "functional_distance", "reduce", "validated_images"]


def reduce(values: Tensor, reduction: str) -> Tensor:
    """``"mean"`` over images, or ``"none"`` (per-image values)."""
    check_choice("reduction", reduction, REDUCTIONS)
    return values.mean() if reduction == "mean" else values


@functools.lru_cache(maxsize=8)
def _cached(factory: Callable[..., FeatureDistanceNetwork], key: tuple, device: str):
    return factory(**dict(key)).to(device)


def cached_network(
    factory: Callable[..., FeatureDistanceNetwork], device: torch.device, **kwargs
) -> FeatureDistanceNetwork:
    """Build a network once per (factory, arguments, device) for the functional forms."""
    key = tuple(sorted((k, os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in kwargs.items()))
    return _cached(factory, key, str(device))


def functional_distance(
    network: FeatureDistanceNetwork,
    preds: Tensor,
    target: Tensor,
    *,
    normalization: str = "minmax",
    reduction: str = "mean",
    nan_strategy: str = "propagate",
    max_batch: int | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Validate, encode, score and reduce in one call (no state, no cache).

    Args:
        network: the distance network (on the images' device).
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        reduction: ``"mean"`` or ``"none"`` (one value per image and channel).
        nan_strategy: ``"propagate"`` (default), ``"error"`` or ``"ignore"`` (drop those images).
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    options = EncoderOptions(normalization=normalization, nan_strategy=nan_strategy,
                             max_batch=max_batch, precision=precision)
    values = EncoderPass(network, options)(preds, target).distances(network)
    return reduce(values, reduction)
