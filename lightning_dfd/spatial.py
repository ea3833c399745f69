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

Maps and masked values come from the features of the one encoder pass
(:class:`~lightning_dfd.encoders.encoder_pass.EncoderPass`) that scores: a metric's
:meth:`~SpatialDFDMixin.distance_map` of a batch it has just scored inside
:meth:`lightning_dfd.metrics.DFDCollection.one_pass` encodes nothing again, and masked updates
use the target-feature cache like unmasked ones.

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

Pixel metrics over a mask (:func:`~lightning_dfd.functional.pixel.masked_psnr`,
:func:`~lightning_dfd.functional.pixel.masked_nmse`, :func:`~lightning_dfd.functional.pixel.masked_ssim`,
re-exported here) use only the masked pixels (SSIM: the mean of the SSIM map over the window
centres inside the mask).
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

from typing import Any

from torch import Tensor

from lightning_dfd.encoders.base import (  # noqa: F401 - layer_maps, masked_layer_means: re-exported
    FeatureDistanceNetwork,
    layer_maps,
    masked_layer_means,
    require_layer_maps,
)
from lightning_dfd.encoders.encoder_pass import (  # noqa: F401 - upsample_maps: re-exported
    EncodedBatch,
    EncoderPass,
    upsample_maps,
)
from lightning_dfd.functional.pixel import masked_nmse, masked_psnr, masked_ssim  # noqa: F401 - re-exported
from lightning_dfd.masks import (  # noqa: F401 - foreground_mask, otsu_threshold: re-exported
    foreground_mask,
    otsu_threshold,
    validated_mask,
)
from lightning_dfd.preprocess import channels_per_image, check_choice


def _functional_pass(network: FeatureDistanceNetwork, normalization: str, max_batch: int | None,
                     nan_strategy: str) -> EncoderPass:
    check_choice("nan_strategy", nan_strategy, ("error", "propagate"))
    return EncoderPass(network, normalization=normalization, max_batch=max_batch, nan_strategy=nan_strategy)


def batch_maps(batch: EncodedBatch, head: FeatureDistanceNetwork, preds: Tensor) -> Tensor:
    """``head``'s per-pixel maps of an encoded batch of ``preds``: ``(N, C, H, W)`` (NaN for dropped images).

    Raises:
        NotImplementedError: ``head`` has no per-position form (DISTS).
    """
    maps = batch.scatter(batch.maps(head))
    return maps.reshape(preds.shape[0], channels_per_image(preds), *batch.size)


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
    encoder = _functional_pass(network, normalization, max_batch, nan_strategy)
    require_layer_maps(network)  # before any encoder work
    return batch_maps(encoder(preds, target), network, preds)


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
    encoder = _functional_pass(network, normalization, max_batch, nan_strategy)
    weights = validated_mask(mask, preds)
    return encoder(preds, target).distances(network, weights)


# ----------------------------------------------------------------------------- foreground mask


class SpatialDFDMixin:
    """Adds :meth:`distance_map` and :meth:`masked_distances` to a DFD metric class.

    Both run on the metric's own encoder pass (``_encode``), so inside a shared-batch scope
    (:meth:`lightning_dfd.metrics.DFDCollection.one_pass`) the features of a batch just scored are
    reused, never encoded again; they touch no metric state.
    """

    network: FeatureDistanceNetwork
    _encode: Any

    def distance_map(self, preds: Tensor, target: Tensor) -> Tensor:
        """Per-pixel contributions ``(N, C, H, W)`` (see :func:`lightning_dfd.spatial.distance_map`).

        Example:
            >>> import torch
            >>> from lightning_dfd import ResNetFD
            >>> ResNetFD(weights="random").distance_map(torch.rand(1, 32, 32), torch.rand(1, 32, 32)).shape
            torch.Size([1, 1, 32, 32])
        """
        require_layer_maps(self.network)  # before any encoder work
        return batch_maps(self._encode(preds, target, None), self.network, preds)

    def masked_distances(self, preds: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Per-image masked values ``(N * C,)`` (see :func:`lightning_dfd.spatial.masked_distances`)."""
        weights = validated_mask(mask, preds)
        batch = self._encode(preds, target, None)
        keep = batch.keep.to(weights.device)
        return batch.scatter(batch.distances(self.network, weights[keep]))
