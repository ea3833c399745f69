"""PSNR, SSIM and NMSE for (complex) MR images with fastMRI's conventions.

Images are compared as magnitudes. fastMRI scores a whole volume at once (PSNR and NMSE over all
its voxels, SSIM averaged over slices, ``data_range`` = the volume's maximum) and then averages
over volumes; pass ``volume_ids`` for that, or leave it out to score every image on its own.
Values equal ``fastmri.evaluate`` (which wraps scikit-image) on the same arrays.

Example:
    >>> import torch
    >>> from lightning_dfd.functional import psnr, ssim, nmse
    >>> _ = torch.manual_seed(0)
    >>> target = torch.rand(4, 32, 32)
    >>> preds = target + 0.05 * torch.randn_like(target)
    >>> vol = torch.tensor([0, 0, 1, 1])
    >>> round(float(psnr(preds, target, volume_ids=vol)), 2) > 20
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dfd.functional.dfd import validated_images
from lightning_dfd.preprocess import REDUCTIONS, check_choice

SSIM_WIN_SIZE = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def data_range_per_image(target: Tensor, data_range: Tensor | float | None, n: int,
                         channels: int) -> Tensor:
    """``(M,)`` float64 data ranges: given per batch element / scalar, or each target's max."""
    m = target.shape[0]
    if data_range is None:
        return target.detach().double().flatten(1).amax(dim=1)
    dr = torch.as_tensor(data_range, dtype=torch.float64, device=target.device)
    if dr.ndim == 0:
        dr = dr.expand(m)
    elif dr.shape == (n,):
        dr = dr.repeat_interleave(channels)
    else:
        raise ValueError(f"`data_range` must be a scalar or have shape ({n},), got {tuple(dr.shape)}")
    if not torch.isfinite(dr).all() or (dr <= 0).any():
        raise ValueError(f"`data_range` must be finite and positive, got {dr.tolist()}")
    return dr


def ssim_per_image(preds: Tensor, target: Tensor, data_range: Tensor,
                   win_size: int = SSIM_WIN_SIZE) -> Tensor:
    """Mean SSIM of each ``(M, 1, H, W)`` image pair, as ``skimage.metrics.structural_similarity``.

    Uniform ``win_size`` window, sample covariance, K1=0.01, K2=0.03, borders excluded (the
    valid region of the window), computed in float64.
    """
    if min(preds.shape[-2:]) < win_size:
        raise ValueError(
            f"SSIM needs images of at least {win_size}x{win_size}, got {tuple(preds.shape[-2:])}"
        )
    x, y = target.double(), preds.double()
    mean = lambda z: F.avg_pool2d(z, win_size, stride=1)  # noqa: E731 - the uniform window
    ux, uy = mean(x), mean(y)
    uxx, uyy, uxy = mean(x * x), mean(y * y), mean(x * y)
    npix = win_size * win_size
    cov_norm = npix / (npix - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    dr = data_range.view(-1, 1, 1, 1)
    c1, c2 = (SSIM_K1 * dr) ** 2, (SSIM_K2 * dr) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def squared_error_stats(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ``(sum of squared errors, sum of squared target, pixel count)`` in float64."""
    p, t = preds.double().flatten(1), target.double().flatten(1)
    count = torch.full((p.shape[0],), p.shape[1], dtype=torch.float64, device=p.device)
    return (p - t).pow(2).sum(dim=1), t.pow(2).sum(dim=1), count


def group_reduce(values: Tensor, groups: Tensor, how: str) -> tuple[Tensor, Tensor]:
    """Reduce ``(M, ...)`` rows by integer ``groups`` (sum or amax); returns ``(group ids, values)``.

    Rows whose group is negative are their own group each (images scored on their own).
    """
    own = groups < 0
    if own.any():  # give standalone rows unique ids past every real one
        base = groups.max().clamp_min(-1) + 1
        groups = groups.clone()
        groups[own] = base + torch.arange(int(own.sum()), device=groups.device)
    uniq, inverse = torch.unique(groups, sorted=True, return_inverse=True)
    shape = (uniq.numel(), *values.shape[1:])
    out = values.new_zeros(shape)
    if how == "sum":
        out.index_add_(0, inverse, values)
    else:
        out = out.scatter_reduce_(0, inverse, values, reduce="amax", include_self=False)
    return uniq, out


def pixel_stats(metric: str, preds: Tensor, target: Tensor, data_range: Tensor) -> Tensor:
    """Per-image additive statistics ``(M, 3)`` for one metric (see :func:`stats_to_values`)."""
    if metric == "ssim":
        s = ssim_per_image(preds, target, data_range)
        return torch.stack([s, torch.ones_like(s), data_range], dim=1)
    sse, energy, count = squared_error_stats(preds, target)
    if metric == "psnr":
        return torch.stack([sse, count, data_range], dim=1)
    return torch.stack([sse, energy, data_range], dim=1)


def stats_to_values(metric: str, summed: Tensor, range_max: Tensor) -> Tensor:
    """Per-group values from summed statistics (column 2 of ``summed`` is ignored)."""
    if metric == "psnr":
        mse = summed[:, 0] / summed[:, 1]
        return 10 * torch.log10(range_max**2 / mse)
    if metric == "ssim":
        return summed[:, 0] / summed[:, 1]
    return summed[:, 0] / summed[:, 1]


def per_group_values(metric: str, stats: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """``(group ids, values)`` from per-image stats: sums per group, data range = its max."""
    uniq, summed = group_reduce(stats[:, :2], groups, "sum")
    _, range_max = group_reduce(stats[:, 2], groups, "amax")
    return uniq, stats_to_values(metric, summed, range_max)


def _pixel_metric(metric: str, preds: Tensor, target: Tensor, data_range, volume_ids,
                  reduction: str) -> Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    p, t, _ = validated_images(preds, target, "error")
    n, channels = preds.shape[0], (1 if preds.ndim == 3 else preds.shape[1])
    if metric == "ssim" and volume_ids is not None and data_range is None:
        raise ValueError(
            "SSIM per volume needs `data_range` (the volume's maximum, e.g. fastMRI's attrs['max']) "
            "because it depends on it non-linearly; pass it, or leave out `volume_ids`"
        )
    dr = data_range_per_image(t, data_range, n, channels)
    stats = pixel_stats(metric, p, t, dr)
    groups = (torch.full((p.shape[0],), -1, device=p.device) if volume_ids is None
              else torch.as_tensor(volume_ids, device=p.device).long().repeat_interleave(channels))
    _, values = per_group_values(metric, stats, groups)
    return values.mean() if reduction == "mean" else values


def psnr(preds: Tensor, target: Tensor, data_range: Tensor | float | None = None,
         volume_ids: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB (per volume when ``volume_ids`` is given)."""
    return _pixel_metric("psnr", preds, target, data_range, volume_ids, reduction)


def ssim(preds: Tensor, target: Tensor, data_range: Tensor | float | None = None,
         volume_ids: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Structural similarity (7x7 uniform window, as fastMRI/scikit-image)."""
    return _pixel_metric("ssim", preds, target, data_range, volume_ids, reduction)


def nmse(preds: Tensor, target: Tensor, volume_ids: Tensor | None = None,
         reduction: str = "mean") -> Tensor:
    """Normalised MSE ``||target - preds||^2 / ||target||^2``."""
    return _pixel_metric("nmse", preds, target, None, volume_ids, reduction)
