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
from lightning_dfd.functional.pixel import data_range_per_image, per_group_values, pixel_stats
from lightning_dfd.preprocess import NAN_STRATEGIES, REDUCTIONS, channels_per_image, check_choice


class _VolumeMetric(Metric):
    """Shared body of PSNR / SSIM / NMSE: per-image stats, grouped by volume at compute."""

    metric_name: str = ""
    is_differentiable = True
    full_state_update = False

    def __init__(self, reduction: str = "mean", nan_strategy: str = "error", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("nan_strategy", nan_strategy, NAN_STRATEGIES)
        self.reduction, self.nan_strategy = reduction, nan_strategy
        self.add_state("stats", [], dist_reduce_fx="cat")
        self.add_state("groups", [], dist_reduce_fx="cat")
        self.add_state("skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, data_range: Tensor | float | None = None,
               volume_ids: Tensor | None = None) -> None:
        """Add a batch.

        Args:
            preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex (compared as magnitudes).
            target: same shape.
            data_range: scalar or ``(N,)``; None uses the target's maximum (over the volume
                when ``volume_ids`` is given, as ``fastmri.evaluate``; SSIM needs it then).
            volume_ids: ``(N,)`` integer ids; images sharing one are scored as one volume.
        """
        p, t, keep = validated_images(preds, target, self.nan_strategy)
        n, channels = preds.shape[0], channels_per_image(preds)
        if volume_ids is not None:
            volume_ids = torch.as_tensor(volume_ids, device=p.device)
            if volume_ids.shape != (n,) or volume_ids.is_floating_point():
                raise ValueError(f"`volume_ids` must be an integer tensor of shape ({n},), got "
                                 f"{volume_ids.dtype} {tuple(volume_ids.shape)}")
            if data_range is None and self.metric_name == "ssim":
                raise ValueError(
                    "SSIM per volume needs `data_range` (the volume's maximum, e.g. fastMRI's "
                    "attrs['max']) because it depends on it non-linearly"
                )
        dr = data_range_per_image(t, data_range, n, channels)
        groups = (torch.full((p.shape[0],), -1, dtype=torch.long, device=p.device)
                  if volume_ids is None else volume_ids.long().repeat_interleave(channels))
        stats = pixel_stats(self.metric_name, p[keep], t[keep], dr[keep])
        self.stats.append(stats)
        self.groups.append(groups[keep])
        self.skipped += (~keep).sum().to(self.skipped.device)

    def compute(self) -> Tensor:
        """Mean over volumes (or images), or per-volume values sorted by id (``"none"``)."""
        if isinstance(self.stats, list) and not self.stats:
            return torch.tensor(float("nan"), device=self.device)
        _, values = per_group_values(self.metric_name, dim_zero_cat(self.stats),
                                     dim_zero_cat(self.groups))
        values = values.float()
        return values.mean() if self.reduction == "mean" else values

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
    """Structural similarity of magnitude images, as ``fastmri.evaluate.ssim``.

    Example:
        >>> import torch
        >>> from lightning_dfd import SSIM
        >>> x = torch.rand(2, 16, 16)
        >>> metric = SSIM()
        >>> metric.update(x, x)
        >>> float(metric.compute())
        1.0
    """

    metric_name = "ssim"
    higher_is_better = True
    plot_upper_bound = 1.0


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
