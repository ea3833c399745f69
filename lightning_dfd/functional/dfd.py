"""Stateless deep-feature-distance computation shared by the metric classes and functional forms.

Example:
    >>> import torch
    >>> from lightning_dfd.encoders.resnet import ResNetFDNetwork
    >>> net = ResNetFDNetwork(weights="random")
    >>> preds, target = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    >>> p, t, keep = validated_images(preds, target, "error")
    >>> feature_distances(net, p, t, "minmax").shape
    torch.Size([2])
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.preprocess import (
    NAN_STRATEGIES,
    NORMALIZATIONS,
    REDUCTIONS,
    check_choice,
    check_pair,
    nonfinite_images,
    normalize_pair,
    to_grayscale_batch,
)


def validated_images(
    preds: Tensor, target: Tensor, nan_strategy: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Check a pair and flatten it to ``(M, 1, H, W)`` grayscale batches.

    Returns:
        ``(preds_images, target_images, keep)`` where ``keep`` is a boolean ``(M,)`` mask of the
        images to score (all True unless ``nan_strategy="ignore"`` dropped some).

    Raises:
        ValueError: non-finite targets (always), non-finite predictions with ``"error"``.
    """
    check_choice("nan_strategy", nan_strategy, NAN_STRATEGIES)
    check_pair(preds, target)
    p, t = to_grayscale_batch(preds), to_grayscale_batch(target)
    bad_target = nonfinite_images(t)
    if bad_target.any():
        raise ValueError(
            f"`target` holds NaN or inf in images {bad_target.nonzero().flatten().tolist()} "
            f"(of {t.shape[0]}, counted over batch x channels); a reference must be finite"
        )
    bad = nonfinite_images(p)
    if bad.any() and nan_strategy == "error":
        raise ValueError(
            f"`preds` holds NaN or inf in images {bad.nonzero().flatten().tolist()} "
            f"(of {p.shape[0]}, counted over batch x channels); pass nan_strategy='ignore' to skip "
            "them or 'propagate' to score them as NaN"
        )
    keep = ~bad if nan_strategy == "ignore" else torch.ones_like(bad)
    return p, t, keep


def _split(feats: list[Tensor], n: int) -> tuple[list[Tensor], list[Tensor]]:
    return [f[:n] for f in feats], [f[n:] for f in feats]


@dataclass
class CacheLookup:
    """Where target features may be found: a cache, a namespace and one key per image."""

    cache: TargetFeatureCache
    namespace: str
    keys: list[tuple[int, int]]


def _cached_targets(lookup: CacheLookup | None, chunk: slice, targets: Tensor):
    """Per-image cached features (None where missing) for one chunk."""
    if lookup is None:
        return [None] * targets.shape[0]
    return [lookup.cache.get(lookup.namespace, key, image)
            for key, image in zip(lookup.keys[chunk], targets, strict=True)]


def feature_distances(
    network: FeatureDistanceNetwork,
    preds: Tensor,
    target: Tensor,
    normalization: str,
    max_batch: int | None = None,
    cache: CacheLookup | None = None,
) -> Tensor:
    """Per-image distances between ``(M, 1, H, W)`` batches, ``max_batch`` pairs at a time.

    Predictions keep their graph when gradients are enabled (usable as a loss); target features
    never get one. Without gradients, predictions and the targets missing from ``cache`` share
    one batched encoder pass.

    Args:
        network: the distance network (already on the images' device).
        preds: prediction images.
        target: target images.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        max_batch: at most this many image pairs per encoder pass (None: all at once).
        cache: where target features may already be, and where new ones are stored.
    """
    return shared_feature_distances([network], preds, target, normalization, max_batch, cache)[0]


def shared_feature_distances(
    networks: Sequence[FeatureDistanceNetwork],
    preds: Tensor,
    target: Tensor,
    normalization: str,
    max_batch: int | None = None,
    cache: CacheLookup | None = None,
) -> list[Tensor]:
    """:func:`feature_distances` for several networks with identical features, one encoder pass.

    ``networks[0]`` encodes; every network's :meth:`~FeatureDistanceNetwork.distance` is applied
    to those features (e.g. LPIPS-VGG with and without its linear layers). The caller guarantees
    that the networks share ``features_identity`` and feature weights
    (:func:`lightning_dfd.metrics.shared.sharing_key` does).

    Returns:
        One ``(M,)`` tensor per network, in order.
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"Argument `max_batch` must be a positive integer or None, got {max_batch}")
    network = networks[0]
    p01, t01 = normalize_pair(preds, target, normalization)
    m = p01.shape[0]
    step = max_batch or m
    needs_grad = torch.is_grad_enabled() and p01.requires_grad
    out: list[list[Tensor]] = [[] for _ in networks]
    for start in range(0, m, step):
        chunk = slice(start, min(start + step, m))
        pc, tc = p01[chunk], t01[chunk]
        cached = _cached_targets(cache, chunk, tc)
        missing = [i for i, f in enumerate(cached) if f is None]
        with torch.no_grad():
            if needs_grad:
                new = network(tc[missing]) if missing else None
            else:  # one batched pass over the predictions and the missing targets
                both = network(torch.cat([pc, tc[missing]])) if missing else network(pc)
                fp, new = _split(both, pc.shape[0]) if missing else (both, None)
        if needs_grad:
            fp = network(pc)
        if cache is not None:
            for j, i in enumerate(missing):
                cache.cache.put(cache.namespace, cache.keys[chunk][i], tc[i], [f[j] for f in new])
        if len(missing) == len(cached):
            for values, head in zip(out, networks, strict=True):
                values.append(head.distance(fp, new))
            continue
        for j, i in enumerate(missing):
            cached[i] = [f[j] for f in new]
        # Image by image against views of the cached maps: stacking them into a batch would copy
        # every cached feature map on every update (~50 MB per 320x320 LPIPS-VGG target).
        for values, head in zip(out, networks, strict=True):
            values.append(torch.cat([
                head.distance([f[i : i + 1] for f in fp], [f.unsqueeze(0) for f in feats])
                for i, feats in enumerate(cached)
            ]))
    return [torch.cat(values) for values in out]


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
) -> Tensor:
    """Validate, score and reduce in one call (the body of every functional DFD)."""
    check_choice("reduction", reduction, REDUCTIONS)
    p, t, keep = validated_images(preds, target, nan_strategy)
    values = feature_distances(network, p[keep], t[keep], normalization, max_batch)
    return reduce(values, reduction)
