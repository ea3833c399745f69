"""Where a deep feature distance comes from: per-pixel DFD maps and region-of-interest masks.

Most DFDs here are a sum over layers of a spatial mean of per-position contributions. A network
exposes them through ``layer_maps(feats_preds, feats_target) -> [(M, 1, h_l, w_l), ...]`` with
``distance(fp, ft) == sum_l layer_maps_l.mean((-2, -1))``:

* LPIPS: the (linearly weighted) squared difference of unit-normalised features summed over
  channels, i.e. the ``lpips`` package's maps before ``spatial_average``;
* ResNetFD, SSFD, TimmFD ``"mse"`` / ``"mae"``, VAEFD: the squared / absolute feature (VAEFD:
  latent) difference averaged over channels; TimmFD ``"unit"``: as LPIPS without linear layers.

DISTS has none: its texture and structure terms compare global means, variances and
covariances of each channel, so :func:`distance_map` raises :class:`NotImplementedError` for it.

:func:`distance_map` upsamples each layer map to the input size (bilinear,
``align_corners=False``, exactly as ``lpips.LPIPS(spatial=True)``) and sums over layers: a
non-negative ``(N, C, H, W)`` map whose pixel mean is close to (not exactly) the scalar DFD,
since bilinear upsampling by a non-integer factor does not preserve the mean exactly. Vision
transformers built with ``dynamic_img_pad`` see the input padded (right/bottom) to a multiple of
the patch size; their maps are stretched over the unpadded image, misplaced by less than a patch.

:func:`masked_distances` (and every DFD metric's ``update(..., mask=...)``) works for every DFD,
through one hook, ``network.masked_distance(feats_preds, feats_target, mask)``. The mask is
area-resized to each layer (the float mask averaged over each feature position's input cell, so a
partly covered position gets a fractional weight) and

* networks with ``layer_maps`` (the default
  :meth:`~lightning_dfd.encoders.base.FeatureDistanceNetwork.masked_distance`) average each layer
  map over the resized mask instead of over all positions;
* DISTS computes every channel's mean, variance and covariance as mask-weighted statistics in
  each stage (stage 0 is the input image at full resolution) and combines them as usual: the
  texture and structure of the region, still as global statistics of it.

A full mask gives the unmasked value (DISTS: to float rounding, ~1e-7). What masking means:

* a feature position sees a receptive field (LPIPS-VGG's deepest tap: ~200 pixels; ResNetFD's
  ``layer3``: ~400; SSFD's ``block4``: ~100; DISTS' last stage: ~200; ViTs: the whole image
  through attention), so a masked DFD is **not** blind to changes outside the mask: a corruption
  just outside the edge changes feature positions inside it. It down-weights the background, it
  does not cut it out; far-away changes matter much less (``tests/test_spatial.py`` and
  ``tests/test_masks_dists_vaefd.py`` measure the ratio);
* VAEFD's encoder normalises with GroupNorm (statistics over the whole image) and attends over
  all positions in its middle block, so every latent position depends on the whole image: an
  outside corruption moves the masked VAEFD 0.03-0.6x as much as the unmasked one (random
  weights), against < 0.1x for DISTS and < 0.2x for the CNN DFDs, though still > 35x less than
  the same corruption inside the mask;
* min-max normalisation (``normalization="minmax"``) uses the whole image, so a bright artefact
  outside the mask rescales the inside too: use ``normalization="target"`` when that matters;
* SSFD z-scores each whole image before the encoder, with the same caveat.

Pixel metrics (:func:`masked_psnr`, :func:`masked_nmse`, :func:`masked_ssim`) use only the
masked pixels (SSIM: the mean of the SSIM map over the window centres inside the mask).
:func:`~lightning_dfd.masks.foreground_mask` finds the object in a magnitude image, separated from
the background noise (air) around it, e.g. to keep the air out of a score. The mask helpers live in
:mod:`lightning_dfd.masks`; ``foreground_mask``, ``otsu_threshold`` and ``validated_mask`` are
re-exported here.

Example:
    >>> import torch
    >>> from lightning_dfd.encoders.resnet import ResNetFDNetwork
    >>> net = ResNetFDNetwork(weights="random")
    >>> target = torch.rand(2, 64, 64)
    >>> preds = target.clone()
    >>> preds[:, 40:, 40:] += 1.0
    >>> maps = distance_map(net, preds, target)
    >>> maps.shape, bool(maps[:, :, 48:, 48:].mean() > maps[:, :, :16, :16].mean())
    (torch.Size([2, 1, 64, 64]), True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dfd.encoders.base import (  # noqa: F401 - layer_maps, masked_layer_means: re-exported
    FeatureDistanceNetwork,
    layer_maps,
    masked_layer_means,
    require_layer_maps,
)
from lightning_dfd.functional.pixel import masked_ssim_per_image
from lightning_dfd.masks import (  # noqa: F401 - foreground_mask, otsu_threshold: re-exported
    foreground_mask,
    otsu_threshold,
    validated_mask,
)
from lightning_dfd.preprocess import (
    NORMALIZATIONS,
    REDUCTIONS,
    channels_per_image,
    check_choice,
    normalize_pair,
    validated_images,
)


def _device_of(network: FeatureDistanceNetwork) -> torch.device:
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return torch.device("cpu")


def _check_nan_strategy(nan_strategy: str) -> None:
    check_choice("nan_strategy", nan_strategy, ("error", "propagate"))


def encoded_chunks(network: FeatureDistanceNetwork, p: Tensor, t: Tensor, normalization: str,
                   max_batch: int | None = None) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """Features ``(feats_preds, feats_target)`` of validated ``(M, 1, H, W)`` batches, chunk by chunk.

    At most ``max_batch`` image pairs per encoder pass; predictions that require grad keep their
    graph (a map or a masked value as a loss), targets never get one.
    """
    check_choice("normalization", normalization, NORMALIZATIONS)
    if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"Argument `max_batch` must be a positive integer or None, got {max_batch}")
    device = _device_of(network)
    p01, t01 = normalize_pair(p.to(device), t.to(device), normalization)
    m = p01.shape[0]
    step = max_batch or m
    needs_grad = torch.is_grad_enabled() and p01.requires_grad
    for start in range(0, m, step):
        pc, tc = p01[start:start + step], t01[start:start + step]
        if needs_grad:
            with torch.no_grad():
                ft = network(tc)
            yield network(pc), ft
        else:  # one batched encoder pass
            with torch.no_grad():
                both = network(torch.cat([pc, tc]))
            yield [f[:pc.shape[0]] for f in both], [f[pc.shape[0]:] for f in both]


def feature_layer_maps(network: FeatureDistanceNetwork, p: Tensor, t: Tensor, normalization: str,
                       max_batch: int | None = None) -> list[list[Tensor]]:
    """Layer maps of validated ``(M, 1, H, W)`` batches, ``max_batch`` pairs per encoder pass.

    Returns:
        One list of ``(m, 1, h_l, w_l)`` maps per chunk of at most ``max_batch`` images.

    Raises:
        NotImplementedError: the network has no ``layer_maps`` (DISTS), before any encoder pass.
    """
    maps_of = require_layer_maps(network)
    return [maps_of(fp, ft) for fp, ft in encoded_chunks(network, p, t, normalization, max_batch)]


def upsample_maps(maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Sum over layers of the maps upsampled to ``size`` (bilinear, as ``lpips`` spatial=True)."""
    total = None
    for m in maps:
        up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    return total


def distance_map(network: FeatureDistanceNetwork, preds: Tensor, target: Tensor,
                 normalization: str = "minmax", max_batch: int | None = None,
                 nan_strategy: str = "error") -> Tensor:
    """Per-pixel DFD contributions at input resolution: ``(N, C, H, W)``, non-negative.

    Inputs as every metric: real or complex ``(N, H, W)`` / ``(N, C, H, W)`` (complex ->
    magnitude, each channel an independent image; ``(N, H, W)`` gives ``C = 1``).

    Args:
        network: a network with ``layer_maps`` (LPIPS, ResNetFD, SSFD, TimmFD, VAEFD; not DISTS).
        preds: predictions.
        target: targets, same shape.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``, as the metrics.
        max_batch: at most this many image pairs per encoder pass (None: all at once).
        nan_strategy: ``"error"`` or ``"propagate"`` (a non-finite prediction gives a NaN map).

    Raises:
        NotImplementedError: DISTS (global channel statistics, no per-pixel form); its masked
            values work (:func:`masked_distances`).

    Example:
        >>> import torch
        >>> from lightning_dfd.encoders.lpips import LPIPSNetwork
        >>> net = LPIPSNetwork("alex", weights="random")
        >>> x = torch.rand(2, 3, 48, 40, dtype=torch.complex64)
        >>> m = distance_map(net, x, x)
        >>> m.shape, float(m.abs().max())
        (torch.Size([2, 3, 48, 40]), 0.0)
    """
    _check_nan_strategy(nan_strategy)
    p, t, _ = validated_images(preds, target, nan_strategy)
    size = tuple(p.shape[-2:])
    chunks = [upsample_maps(maps, size) for maps in feature_layer_maps(network, p, t, normalization,
                                                                       max_batch)]
    n, c = preds.shape[0], channels_per_image(preds)
    return torch.cat(chunks).reshape(n, c, *size)


def masked_feature_distances(network: FeatureDistanceNetwork, p: Tensor, t: Tensor, mask: Tensor,
                             normalization: str, max_batch: int | None = None) -> Tensor:
    """Masked DFDs ``(M,)`` of validated ``(M, 1, H, W)`` images and an ``(M, 1, H, W)`` float mask.

    The metric-side entry point (``update(..., mask=...)``): images already flattened by
    :func:`~lightning_dfd.functional.dfd.validated_images`, mask by :func:`validated_mask`. Each
    chunk goes through ``network.masked_distance`` (layer maps averaged over the resized mask;
    DISTS: mask-weighted statistics).
    """
    step = max_batch or max(p.shape[0], 1)
    device = _device_of(network)
    values = [network.masked_distance(fp, ft, mask[k * step:(k + 1) * step].to(device))
              for k, (fp, ft) in enumerate(encoded_chunks(network, p, t, normalization, max_batch))]
    return torch.cat(values) if values else torch.zeros(0, device=device)


def masked_distances(network: FeatureDistanceNetwork, preds: Tensor, target: Tensor, mask: Tensor,
                     normalization: str = "minmax", max_batch: int | None = None,
                     nan_strategy: str = "error") -> Tensor:
    """Per-image DFDs ``(N * C,)`` with every layer averaged over the ROI ``mask`` only.

    A full mask gives the unmasked distance. See the module docstring for what masking means
    (receptive fields reach past the mask edge; DISTS: mask-weighted channel statistics).

    Args:
        network: any DFD network (its ``masked_distance``).
        preds: predictions, ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: targets, same shape.
        mask: boolean ``(N, H, W)``, ``(N, 1, H, W)`` or ``(N, C, H, W)``; True = score here.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        max_batch: at most this many image pairs per encoder pass.
        nan_strategy: ``"error"`` or ``"propagate"``.

    Example:
        >>> import torch
        >>> from lightning_dfd.encoders.ssfd import SSFDNetwork
        >>> net = SSFDNetwork(weights="random")
        >>> preds, target = torch.rand(2, 64, 64), torch.rand(2, 64, 64)
        >>> full = torch.ones(2, 64, 64, dtype=torch.bool)
        >>> torch.allclose(masked_distances(net, preds, target, full),
        ...                net.distance(net(preds[:, None]), net(target[:, None])), rtol=1e-5)
        True
    """
    _check_nan_strategy(nan_strategy)
    p, t, _ = validated_images(preds, target, nan_strategy)
    return masked_feature_distances(network, p, t, validated_mask(mask, preds), normalization,
                                    max_batch)


# ------------------------------------------------------------------------------ pixel metrics


def _masked_pixels(preds: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    p, t, _ = validated_images(preds, target, "error")
    return p.double(), t.double(), validated_mask(mask.to(p.device), preds).double()


def _data_range(t: Tensor, data_range: Tensor | float | None, n: int, c: int) -> Tensor:
    if data_range is None:
        return t.flatten(1).amax(dim=1)
    dr = torch.as_tensor(data_range, dtype=torch.float64, device=t.device)
    dr = dr.expand(t.shape[0]) if dr.ndim == 0 else dr.repeat_interleave(c) if dr.shape == (n,) else None
    if dr is None:
        raise ValueError(f"`data_range` must be a scalar or have shape ({n},), got {tuple(data_range.shape)}")
    if not torch.isfinite(dr).all() or (dr <= 0).any():
        raise ValueError(f"`data_range` must be finite and positive, got {dr.tolist()}")
    return dr


def _reduce(values: Tensor, reduction: str) -> Tensor:
    return values.mean() if reduction == "mean" else values


def masked_psnr(preds: Tensor, target: Tensor, mask: Tensor, data_range: Tensor | float | None = None,
                reduction: str = "mean") -> Tensor:
    """PSNR (dB) over the masked pixels of each image; ``data_range`` default: the target's max.

    Example:
        >>> import torch
        >>> t = torch.rand(2, 16, 16)
        >>> full = torch.ones(2, 16, 16, dtype=torch.bool)
        >>> from lightning_dfd.functional import psnr
        >>> bool(torch.allclose(masked_psnr(t + 0.1, t, full, reduction="none"),
        ...                     psnr(t + 0.1, t, reduction="none").double()))
        True
    """
    check_choice("reduction", reduction, REDUCTIONS)
    p, t, w = _masked_pixels(preds, target, mask)
    dr = _data_range(t, data_range, preds.shape[0], channels_per_image(preds))
    mse = ((p - t).pow(2) * w).flatten(1).sum(dim=1) / w.flatten(1).sum(dim=1)
    return _reduce(10 * torch.log10(dr**2 / mse), reduction)


def masked_nmse(preds: Tensor, target: Tensor, mask: Tensor, reduction: str = "mean") -> Tensor:
    """``||(target - preds) * mask||^2 / ||target * mask||^2`` per image.

    Example:
        >>> import torch
        >>> t = torch.ones(1, 8, 8)
        >>> p = t.clone(); p[0, :4] = 0  # wrong only in the top half
        >>> bottom = torch.zeros(1, 8, 8, dtype=torch.bool); bottom[0, 4:] = True
        >>> float(masked_nmse(p, t, bottom)), float(masked_nmse(p, t, ~bottom))
        (0.0, 1.0)
    """
    check_choice("reduction", reduction, REDUCTIONS)
    p, t, w = _masked_pixels(preds, target, mask)
    return _reduce(((p - t).pow(2) * w).flatten(1).sum(dim=1) / (t.pow(2) * w).flatten(1).sum(dim=1),
                   reduction)


def masked_ssim(preds: Tensor, target: Tensor, mask: Tensor, data_range: Tensor | float | None = None,
                reduction: str = "mean") -> Tensor:
    """Mean of the SSIM map over the window centres inside the mask (borders excluded as skimage).

    Raises:
        ValueError: a mask with no pixel in the valid (border-free) region of some image.

    Example:
        >>> import torch
        >>> t = torch.rand(2, 16, 16)
        >>> full = torch.ones(2, 16, 16, dtype=torch.bool)
        >>> float(masked_ssim(t, t, full))
        1.0
    """
    check_choice("reduction", reduction, REDUCTIONS)
    p, t, w = _masked_pixels(preds, target, mask)
    dr = _data_range(t, data_range, preds.shape[0], channels_per_image(preds))
    return _reduce(masked_ssim_per_image(p, t, dr, w), reduction)  # fastMRI's 7x7 uniform window


# ------------------------------------------------------------------------------------ the mixin


class SpatialDFDMixin:
    """Adds :meth:`distance_map` and :meth:`masked_distances` to a DFD metric class.

    Uses the metric's ``network``, ``normalization`` and ``max_batch``; touches no metric state.

    Example:
        >>> import torch
        >>> from lightning_dfd.encoders.resnet import ResNetFDNetwork
        >>> class Probe(SpatialDFDMixin):
        ...     network, normalization, max_batch = ResNetFDNetwork(weights="random"), "minmax", 4
        >>> Probe().distance_map(torch.rand(1, 32, 32), torch.rand(1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    network: FeatureDistanceNetwork
    normalization: str

    def _spatial_options(self) -> dict[str, Any]:
        nan = getattr(self, "nan_strategy", "error")
        return {"normalization": self.normalization, "max_batch": getattr(self, "max_batch", None),
                "nan_strategy": "propagate" if nan in ("ignore", "propagate") else "error"}

    def distance_map(self, preds: Tensor, target: Tensor) -> Tensor:
        """Per-pixel contributions ``(N, C, H, W)`` (see :func:`lightning_dfd.spatial.distance_map`)."""
        return distance_map(self.network, preds, target, **self._spatial_options())

    def masked_distances(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-image masked values ``(N * C,)`` (see :func:`lightning_dfd.spatial.masked_distances`)."""
        return masked_distances(self.network, preds, target, mask, **self._spatial_options())
