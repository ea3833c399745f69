"""PSNR, SSIM and NMSE metric classes with fastMRI's per-volume aggregation and DDP sync.

Per-image statistics (and volume ids) are ``cat`` states, so volumes may even be split across
processes: after sync each volume is scored on all of its images, then volumes are averaged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_dfd.functional.dfd import validated_images
from lightning_dfd.functional.pixel import (
    SSIM_WINDOWS,
    data_range_per_image,
    image_groups,
    per_group_values,
    pixel_stats,
)
from lightning_dfd.metrics.sync import IdleRankSafeSync
from lightning_dfd.preprocess import NAN_STRATEGIES, REDUCTIONS, channels_per_image, check_choice
from lightning_dfd.spatial import validated_mask


def _empty(state: list | Tensor) -> bool:
    """A ``cat`` state is a list before sync and a tensor after it."""
    return (isinstance(state, list) and not state) or (isinstance(state, Tensor) and state.numel() == 0)


class _VolumeMetric(IdleRankSafeSync, Metric):
    """Shared body of PSNR / SSIM / NMSE: per-image stats, grouped by volume at compute.

    States: ``<tag>_stats`` ``(M, 3)`` float64 per-image additive statistics, ``<tag>_groups``
    ``(M, 2)`` int64 rows ``[in_volume, id]`` (``in_volume`` 0: the image is scored on its own, so
    no id value is special), ``skipped`` (images dropped by ``nan_strategy="ignore"``).
    ``<tag>`` names what the update computes (metric, SSIM window, NaN policy), so torchmetrics'
    compute groups never merge two metrics whose states only happen to be equal after a first
    batch (e.g. both SSIM windows on ``preds == target``); configurations that differ only in
    ``reduction`` have identical states forever and may share them.
    """

    metric_name: str = ""
    is_differentiable = True
    full_state_update = False

    def __init__(self, reduction: str = "mean", nan_strategy: str = "error", _variant: str = "",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("nan_strategy", nan_strategy, NAN_STRATEGIES)
        self.reduction, self.nan_strategy = reduction, nan_strategy
        tag = "_".join(filter(None, (self.metric_name, _variant, nan_strategy)))
        self._stats_state, self._groups_state = f"{tag}_stats", f"{tag}_groups"
        self.add_state(self._stats_state, [], dist_reduce_fx="cat")
        self.add_state(self._groups_state, [], dist_reduce_fx="cat")
        self.add_state("skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _stats(self, p: Tensor, t: Tensor, dr: Tensor, weights: Tensor | None = None) -> Tensor:
        return pixel_stats(self.metric_name, p, t, dr, weights=weights)

    def update(self, preds: Tensor, target: Tensor, data_range: Tensor | float | None = None,
               volume_ids: Tensor | list | tuple | None = None, mask: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex (compared as magnitudes).
            target: same shape.
            data_range: scalar or ``(N,)``; None uses the target's maximum (over the volume
                when ``volume_ids`` is given, as ``fastmri.evaluate``; SSIM needs it then).
            volume_ids: ``N`` integer ids (any integers, negative included) or ``N`` volume
                names (strings, e.g. fastMRI file names, stored as
                :func:`~lightning_dfd.functional.pixel.volume_key`); images sharing one are
                scored as one volume, also across updates and processes. Booleans are rejected.
            mask: optional boolean ROI mask ``(N, H, W)`` or ``(N, C, H, W)``: PSNR and NMSE over
                the masked pixels (summed per volume as without a mask), SSIM as the mean of its
                map over the window centres inside the mask.
        """
        p, t, keep = validated_images(preds, target, self.nan_strategy)
        weights = None if mask is None else validated_mask(mask, preds)
        n, channels = preds.shape[0], channels_per_image(preds)
        groups = image_groups(volume_ids, n, channels, p.device)
        if volume_ids is not None and data_range is None and self.metric_name == "ssim":
            raise ValueError(
                "SSIM per volume needs `data_range` (the volume's maximum, e.g. fastMRI's "
                "attrs['max']) because it depends on it non-linearly"
            )
        dr = data_range_per_image(t, data_range, n, channels)
        stats = self._stats(p[keep], t[keep], dr[keep],
                            None if weights is None else weights[keep.to(weights.device)])
        # Only now, with every check passed and every value computed, change the state.
        getattr(self, self._stats_state).append(stats)
        getattr(self, self._groups_state).append(groups[keep.to(groups.device)])
        self.skipped += (~keep).sum().to(self.skipped.device)

    def _per_volume(self) -> tuple[Tensor, Tensor, Tensor]:
        return per_group_values(self.metric_name, dim_zero_cat(getattr(self, self._stats_state)),
                                dim_zero_cat(getattr(self, self._groups_state)))

    def compute(self) -> Tensor:
        """Mean over volumes (or images); ``"none"``: per volume sorted by id, then lone images."""
        if _empty(getattr(self, self._stats_state)):
            return torch.tensor(float("nan"), device=self.device)
        values = self._per_volume()[2].float()
        return values.mean() if self.reduction == "mean" else values

    def compute_per_volume(self) -> dict[str, Tensor]:
        """``{"ids", "in_volume", "values"}`` over all processes, one row per volume.

        ``ids`` are the integer ids, or :func:`~lightning_dfd.functional.pixel.volume_key` of the
        names given to ``update``; rows with ``in_volume`` False are images updated without
        ``volume_ids`` (their id is meaningless). Values are float64.
        """
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            if _empty(getattr(self, self._stats_state)):
                empty = torch.zeros(0, device=self.device)
                return {"ids": empty.long(), "in_volume": empty.bool(), "values": empty.double()}
            ids, flags, values = self._per_volume()
        return {"ids": ids, "in_volume": flags, "values": values}

    def plot(self, val: Tensor | None = None, ax: Any = None) -> Any:
        """Plot a value (or the current ``compute()``) with torchmetrics' plotting helper."""
        return self._plot(val, ax)


class PSNR(_VolumeMetric):
    """Peak signal-to-noise ratio (dB) of magnitude images, as ``fastmri.evaluate.psnr``.

    Example:
        >>> import torch
        >>> from lightning_dfd import PSNR
        >>> target = torch.ones(2, 16, 16, dtype=torch.complex64)
        >>> metric = PSNR()
        >>> metric.update(target * 0.9, target, volume_ids=torch.tensor([3, 3]))
        >>> round(float(metric.compute()), 3)
        20.0
    """

    metric_name = "psnr"
    higher_is_better = True


class SSIM(_VolumeMetric):
    """Structural similarity of magnitude images.

    Args:
        reduction: ``"mean"`` over volumes/images, or ``"none"`` per volume.
        nan_strategy: ``"error"``, ``"ignore"`` or ``"propagate"`` for non-finite predictions.
        window: which SSIM convention.

            - ``"uniform"`` (default): fastMRI's, ``fastmri.evaluate.ssim`` = scikit-image's
              defaults: 7x7 uniform window, sample covariance (``N / (N - 1)``), K1=0.01,
              K2=0.03.
            - ``"gaussian"``: Wang et al. (2004), the paper's SSIM column (meddlr
              ``ssim(method="wang")``): 11x11 Gaussian window with sigma 1.5, population
              covariance, K1=0.01, K2=0.03; equal to skimage ``structural_similarity(
              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` at the same
              ``data_range``, and to torchmetrics ``StructuralSimilarityIndexMeasure``'s map
              averaged over the valid region.

            Both average the map over the valid region only, as meddlr's and skimage's
            pad-then-crop (no padded pixel reaches the mean). torchmetrics 1.9 averages its
            reflect-padded border too, so its scalar differs slightly near edges; its
            ``return_full_image=True`` map cropped by 5 pixels a side equals ours.
            ``data_range`` defaults to each target image's maximum (meddlr's "ref-maxval";
            torchmetrics' own default, max - min over the batch, differs: pass it explicitly).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from lightning_dfd import SSIM
        >>> x = torch.rand(2, 16, 16)
        >>> metric = SSIM()
        >>> metric.update(x, x)
        >>> float(metric.compute())
        1.0
        >>> paper = SSIM(window="gaussian")
        >>> paper.update(x, x.flip(-1), data_range=1.0)
        >>> float(paper.compute()) < 1
        True
    """

    metric_name = "ssim"
    higher_is_better = True
    plot_upper_bound = 1.0

    def __init__(self, reduction: str = "mean", nan_strategy: str = "error", window: str = "uniform",
                 **kwargs: Any) -> None:
        check_choice("window", window, SSIM_WINDOWS)
        super().__init__(reduction=reduction, nan_strategy=nan_strategy, _variant=window, **kwargs)
        self.window = window

    def _stats(self, p: Tensor, t: Tensor, dr: Tensor, weights: Tensor | None = None) -> Tensor:
        return pixel_stats(self.metric_name, p, t, dr, self.window, weights=weights)


class NMSE(_VolumeMetric):
    """Normalised mean squared error ``||t - p||^2 / ||t||^2``, as ``fastmri.evaluate.nmse``.

    Example:
        >>> import torch
        >>> from lightning_dfd import NMSE
        >>> metric = NMSE()
        >>> metric.update(torch.zeros(1, 8, 8), torch.ones(1, 8, 8))
        >>> float(metric.compute())
        1.0
    """

    metric_name = "nmse"
    higher_is_better = False
    plot_lower_bound = 0.0
