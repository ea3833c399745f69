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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dfd.masks import validated_mask
from lightning_dfd.preprocess import (
    REDUCTIONS,
    channels_per_image,
    check_choice,
    real_pair_hint,
    validated_images,
)
from lightning_dfd.sample_ids import volume_key  # noqa: F401 - re-exported (was defined here)

SSIM_WIN_SIZE = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
GAUSSIAN_WIN_SIZE, GAUSSIAN_SIGMA = 11, 1.5
SSIM_WINDOWS = ("uniform", "gaussian")


def _bad_volume_ids(n: int, got: str) -> ValueError:
    return ValueError(f"`volume_ids` must hold one id per batch element, {n} integers or {n} "
                      f"strings (a list/tuple, or an integer tensor/array of shape ({n},)); got {got}")


def volume_id_tensor(volume_ids: object, n: int, device: torch.device | str = "cpu") -> Tensor:
    """``(n,)`` int64 ids from integer ids or volume names (see :func:`volume_key`).

    Every integer is an ordinary id (negative ones included); booleans, floats, nested or
    mixed sequences and a wrong length are errors.

    Example:
        >>> from lightning_dfd.functional.pixel import volume_id_tensor
        >>> volume_id_tensor([-1, 3], 2).tolist()
        [-1, 3]
        >>> ids = volume_id_tensor(("file1.h5", "file1.h5", "file2.h5"), 3)
        >>> bool(ids[0] == ids[1]), bool(ids[0] == ids[2])
        (True, False)
    """
    if isinstance(volume_ids, np.ndarray):
        if volume_ids.dtype.kind in "USO":
            volume_ids = volume_ids.tolist()
        elif volume_ids.dtype.kind in "iu":
            volume_ids = torch.from_numpy(volume_ids.astype(np.int64))
        else:
            raise _bad_volume_ids(n, f"a {volume_ids.dtype} array")
    if isinstance(volume_ids, Tensor):
        if volume_ids.dtype == torch.bool:
            raise ValueError("`volume_ids` must be integer ids or volume names, got a boolean tensor "
                             "(True/False would silently become volumes 1 and 0)")
        if volume_ids.is_floating_point() or volume_ids.is_complex():
            raise _bad_volume_ids(n, f"a {volume_ids.dtype} tensor")
        if volume_ids.shape != (n,):
            raise _bad_volume_ids(n, f"a tensor of shape {tuple(volume_ids.shape)}")
        return volume_ids.to(device=device, dtype=torch.long)
    if isinstance(volume_ids, (str, bytes)) or not isinstance(volume_ids, (list, tuple)):
        raise _bad_volume_ids(n, f"{type(volume_ids).__name__} {volume_ids!r:.60}")
    if len(volume_ids) != n:
        raise _bad_volume_ids(n, f"{len(volume_ids)} ids")
    if any(isinstance(v, (bool, np.bool_)) for v in volume_ids):
        raise ValueError("`volume_ids` must be integer ids or volume names, got booleans "
                         "(True/False would silently become volumes 1 and 0)")
    if all(isinstance(v, str) for v in volume_ids):
        return torch.tensor([volume_key(v) for v in volume_ids], dtype=torch.long, device=device)
    if all(isinstance(v, (int, np.integer)) for v in volume_ids):
        try:
            return torch.tensor([int(v) for v in volume_ids], dtype=torch.long, device=device)
        except (RuntimeError, OverflowError, ValueError) as err:  # beyond int64
            raise _bad_volume_ids(n, f"{err}") from None
    kinds = sorted({type(v).__name__ for v in volume_ids})
    raise _bad_volume_ids(n, f"elements of type {', '.join(kinds)} (all ints or all strings)")


def image_groups(volume_ids: object, n: int, channels: int, device: torch.device | str) -> Tensor:
    """``(n * channels, 2)`` int64 rows ``[in_volume, id]``: each image's volume, or none.

    ``in_volume`` is 0 for images scored on their own (no ``volume_ids``): no id value is special.
    """
    if volume_ids is None:
        groups = torch.zeros((n, 2), dtype=torch.long, device=device)
    else:
        ids = volume_id_tensor(volume_ids, n, device)
        groups = torch.stack([torch.ones_like(ids), ids], dim=1)
    return groups.repeat_interleave(channels, dim=0)


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


def gaussian_window(size: int = GAUSSIAN_WIN_SIZE, sigma: float = GAUSSIAN_SIGMA,
                    dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """Normalised 1-D Gaussian taps ``exp(-x**2 / (2 sigma**2))``, ``x`` = -size//2 .. size//2."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_per_image(preds: Tensor, target: Tensor, data_range: Tensor,
                   window: str = "uniform") -> Tensor:
    """Mean SSIM of each ``(M, 1, H, W)`` image pair, in float64 (the mean of :func:`ssim_map`)."""
    return ssim_map(preds, target, data_range, window).flatten(1).mean(dim=1)


def ssim_map(preds: Tensor, target: Tensor, data_range: Tensor, window: str = "uniform") -> Tensor:
    """SSIM map ``(M, 1, H - w + 1, W - w + 1)`` of ``(M, 1, H, W)`` image pairs, in float64.

    ``"uniform"``: as ``skimage.metrics.structural_similarity`` defaults / ``fastmri.evaluate``:
    7x7 uniform window, sample covariance (``N / (N - 1)``), K1=0.01, K2=0.03.
    ``"gaussian"``: Wang et al. (2004) as meddlr ``ssim(method="wang")``, torchmetrics
    ``structural_similarity_index_measure`` and skimage ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False``: 11x11 Gaussian window, sigma 1.5, population covariance.
    Both average the SSIM map over the valid region only (every position whose window lies
    inside the image). This equals meddlr's and skimage's pad-then-crop: they pad by the window
    radius (reflect), filter, and crop that radius again, so padded pixels never reach the mean.
    torchmetrics 1.9 pads the same way but averages the whole map, border included; its map
    cropped by 5 pixels on each side (``return_full_image=True``) equals ``"gaussian"`` here.
    """
    check_choice("window", window, SSIM_WINDOWS)
    size = SSIM_WIN_SIZE if window == "uniform" else GAUSSIAN_WIN_SIZE
    if min(preds.shape[-2:]) < size:
        raise ValueError(
            f"SSIM (window={window!r}) needs images of at least {size}x{size}, got "
            f"{tuple(preds.shape[-2:])}{real_pair_hint(preds)}"
        )
    x, y = target.double(), preds.double()
    if window == "uniform":
        def mean(z: Tensor) -> Tensor:
            return F.avg_pool2d(z, size, stride=1)

        npix = size * size
        cov_norm = npix / (npix - 1)
    else:
        g = gaussian_window(size, GAUSSIAN_SIGMA, torch.float64, x.device)

        def mean(z: Tensor) -> Tensor:
            return F.conv2d(F.conv2d(z, g.view(1, 1, size, 1)), g.view(1, 1, 1, size))

        cov_norm = 1.0
    ux, uy = mean(x), mean(y)
    uxx, uyy, uxy = mean(x * x), mean(y * y), mean(x * y)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    dr = data_range.view(-1, 1, 1, 1)
    c1, c2 = (SSIM_K1 * dr) ** 2, (SSIM_K2 * dr) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def squared_error_stats(preds: Tensor, target: Tensor,
                        weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ``(sum of squared errors, sum of squared target, pixel count)`` in float64.

    With ``weights`` (an ``(M, 1, H, W)`` ROI mask as 0/1 floats) only the masked pixels count.
    """
    p, t = preds.double().flatten(1), target.double().flatten(1)
    if weights is None:
        count = torch.full((p.shape[0],), p.shape[1], dtype=torch.float64, device=p.device)
        return (p - t).pow(2).sum(dim=1), t.pow(2).sum(dim=1), count
    w = weights.double().flatten(1).to(p.device)
    return ((p - t).pow(2) * w).sum(dim=1), (t.pow(2) * w).sum(dim=1), w.sum(dim=1)


def masked_ssim_per_image(preds: Tensor, target: Tensor, data_range: Tensor, weights: Tensor,
                          window: str = "uniform") -> Tensor:
    """Mean SSIM map over the window centres inside an ``(M, 1, H, W)`` mask (borders excluded)."""
    s = ssim_map(preds, target, data_range, window)
    r = (weights.shape[-1] - s.shape[-1]) // 2
    w = weights.double().to(s.device)[..., r:r + s.shape[-2], r:r + s.shape[-1]]
    total = w.flatten(1).sum(dim=1)
    if bool((total == 0).any()):
        raise ValueError(f"`mask` has no pixel at least {r} pixels from the border in images "
                         f"{(total == 0).nonzero().flatten().tolist()}: SSIM is undefined there")
    return (s * w).flatten(1).sum(dim=1) / total


def group_index(groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row -> group index for ``(M, 2)`` ``[in_volume, id]`` rows.

    Returns ``(index, ids, in_volume)``: volumes first, sorted by id, then every image that belongs
    to no volume as its own group, in the order seen.
    """
    in_vol = groups[:, 0] != 0
    uniq, inverse = torch.unique(groups[in_vol, 1], sorted=True, return_inverse=True)
    n_own = int((~in_vol).sum())
    index = torch.empty(groups.shape[0], dtype=torch.long, device=groups.device)
    index[in_vol] = inverse
    index[~in_vol] = uniq.numel() + torch.arange(n_own, device=groups.device)
    ids = torch.cat([uniq, groups.new_zeros(n_own)])
    flags = torch.cat([torch.ones_like(uniq, dtype=torch.bool),
                       torch.zeros(n_own, dtype=torch.bool, device=groups.device)])
    return index, ids, flags


def group_reduce(values: Tensor, index: Tensor, n_groups: int, how: str) -> Tensor:
    """Sum (``"sum"``) or maximum (``"amax"``) of ``(M, ...)`` rows per group ``index``."""
    out = values.new_zeros((n_groups, *values.shape[1:]))
    if how == "sum":
        return out.index_add_(0, index, values)
    return out.scatter_reduce_(0, index, values, reduce="amax", include_self=False)


def pixel_stats(metric: str, preds: Tensor, target: Tensor, data_range: Tensor,
                window: str = "uniform", weights: Tensor | None = None) -> Tensor:
    """Per-image additive statistics ``(M, 3)`` for one metric (see :func:`stats_to_values`).

    ``weights``: an optional ``(M, 1, H, W)`` ROI mask (0/1 floats): PSNR / NMSE over its pixels,
    SSIM as the mean of its map over the window centres inside it.
    """
    if metric == "ssim":
        if weights is None:
            s = ssim_per_image(preds, target, data_range, window)
        else:
            s = masked_ssim_per_image(preds, target, data_range, weights, window)
        return torch.stack([s, torch.ones_like(s), data_range], dim=1)
    sse, energy, count = squared_error_stats(preds, target, weights)
    if metric == "psnr":
        return torch.stack([sse, count, data_range], dim=1)
    return torch.stack([sse, energy, data_range], dim=1)


def stats_to_values(metric: str, summed: Tensor, range_max: Tensor) -> Tensor:
    """Per-group values from summed statistics (column 2 of ``summed`` is ignored)."""
    if metric == "psnr":
        mse = summed[:, 0] / summed[:, 1]
        return 10 * torch.log10(range_max**2 / mse)
    return summed[:, 0] / summed[:, 1]  # SSIM: mean over slices; NMSE: sse / energy


def per_group_values(metric: str, stats: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, in_volume, values)`` per group from per-image stats and ``[in_volume, id]`` rows.

    Statistics are summed per volume; a volume's data range is the maximum of its images'.
    """
    index, ids, flags = group_index(groups)
    summed = group_reduce(stats[:, :2], index, ids.numel(), "sum")
    range_max = group_reduce(stats[:, 2], index, ids.numel(), "amax")
    return ids, flags, stats_to_values(metric, summed, range_max)


def _pixel_metric(metric: str, preds: Tensor, target: Tensor, data_range: Tensor | float | None,
                  volume_ids: object, reduction: str, window: str = "uniform") -> Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("window", window, SSIM_WINDOWS)
    p, t, _ = validated_images(preds, target, "error")
    n, channels = preds.shape[0], channels_per_image(preds)
    groups = image_groups(volume_ids, n, channels, p.device)
    if metric == "ssim" and volume_ids is not None and data_range is None:
        raise ValueError(
            "SSIM per volume needs `data_range` (the volume's maximum, e.g. fastMRI's attrs['max']) "
            "because it depends on it non-linearly; pass it, or leave out `volume_ids`"
        )
    dr = data_range_per_image(t, data_range, n, channels)
    stats = pixel_stats(metric, p, t, dr, window)
    _, _, values = per_group_values(metric, stats, groups)
    return values.mean() if reduction == "mean" else values


def psnr(preds: Tensor, target: Tensor, data_range: Tensor | float | None = None,
         volume_ids: Tensor | list | tuple | None = None, reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB (per volume when ``volume_ids`` is given).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex (compared as magnitudes).
        target: same shape.
        data_range: scalar or ``(N,)``; None: the target's maximum (per volume with ids).
        volume_ids: ``N`` integer ids or ``N`` volume names (strings, e.g. fastMRI file names);
            images sharing one are scored as one volume. None: every image on its own.
        reduction: ``"mean"`` over volumes/images, or ``"none"``: one value per volume (sorted
            by id, see :func:`volume_key` for names), then per image without a volume.

    Example:
        >>> import torch
        >>> from lightning_dfd.functional import psnr
        >>> t = torch.ones(3, 8, 8)
        >>> psnr(0.9 * t, t, volume_ids=["a.h5", "a.h5", "b.h5"], reduction="none")
        tensor([20.0000, 20.0000], dtype=torch.float64)
    """
    return _pixel_metric("psnr", preds, target, data_range, volume_ids, reduction)


def ssim(preds: Tensor, target: Tensor, data_range: Tensor | float | None = None,
         volume_ids: Tensor | list | tuple | None = None, reduction: str = "mean",
         window: str = "uniform") -> Tensor:
    """Structural similarity (per volume = mean over its slices when ``volume_ids`` is given).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex (compared as magnitudes).
        target: same shape.
        data_range: scalar or ``(N,)``; None: each target image's maximum (needed with ids).
        volume_ids: as :func:`psnr`.
        reduction: as :func:`psnr`.
        window: ``"uniform"`` (fastMRI / skimage default: 7x7 uniform, sample covariance) or
            ``"gaussian"`` (Wang et al.: 11x11 Gaussian, sigma 1.5, as meddlr / torchmetrics);
            see :func:`ssim_per_image`.

    Example:
        >>> import torch
        >>> from lightning_dfd.functional import ssim
        >>> x = torch.rand(2, 16, 16)
        >>> float(ssim(x, x, window="gaussian"))
        1.0
    """
    return _pixel_metric("ssim", preds, target, data_range, volume_ids, reduction, window)


def nmse(preds: Tensor, target: Tensor, volume_ids: Tensor | list | tuple | None = None,
         reduction: str = "mean") -> Tensor:
    """Normalised MSE ``||target - preds||^2 / ||target||^2`` (per volume with ``volume_ids``).

    Example:
        >>> import torch
        >>> from lightning_dfd.functional import nmse
        >>> float(nmse(torch.zeros(2, 8, 8), torch.ones(2, 8, 8), volume_ids=[7, 7]))
        1.0
    """
    return _pixel_metric("nmse", preds, target, None, volume_ids, reduction)


# ------------------------------------------------------------------- over a region of interest


def _masked_pixels(preds: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    p, t, _ = validated_images(preds, target, "error")
    return p.double(), t.double(), validated_mask(mask.to(p.device), preds).double()


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
    dr = data_range_per_image(t, data_range, preds.shape[0], channels_per_image(preds))
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
    dr = data_range_per_image(t, data_range, preds.shape[0], channels_per_image(preds))
    return _reduce(masked_ssim_per_image(p, t, dr, w), reduction)  # fastMRI's 7x7 uniform window
