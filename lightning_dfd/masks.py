"""Region-of-interest masks: validation, resizing to feature maps, and the object's foreground.

* :func:`validated_mask` checks a boolean ROI mask against a batch of images and flattens it as
  the images are flattened (each channel an image);
* :func:`resized_mask` area-resizes a float mask to a layer's positions (a partly covered feature
  position gets a fractional weight);
* :func:`foreground_mask` finds the object (the anatomy) in MR magnitude images, separating it from
  the background, i.e. from air, which holds noise only.

How the foreground is found. The magnitude (root-sum-of-squares over channels) is smoothed with a
Gaussian of one pixel. The background of an MR magnitude image is noise (Rayleigh for one coil,
a chi distribution for a root-sum-of-squares of coils): the darkest class of pixels, spatially
white and with a mean of a few noise standard deviations. It is searched from the dark end:
Otsu's threshold of the *logarithm* of the smoothed magnitude splits the pixels (on the log scale
air sits far below every tissue, while on the linear scale Otsu splits bright from dark tissue
when the object fills the field of view); the lower class is taken as the background when it
looks like noise, that is

* white: the spread of its smoothed values is what smoothing leaves of its pixel noise (less than
  :data:`WHITENESS_MAX` times), with a mean of less than :data:`NOISE_LEVEL_MAX` noise standard
  deviations (pixel noise measured from diagonal pixel differences, robust to edges); or
* dark: its median is below :data:`DARK_FRACTION` of the image's bright level (99.9th percentile);

and otherwise split again (the background may be a small fraction of the image, hidden among
dark tissue). The object is then every smoothed pixel above the background's median plus
:data:`NOISE_MARGIN` robust standard deviations of it, closed (3x3), holes filled, optionally
only the largest connected component. An image whose darkest classes are all tissue has no
background: its mask is full. An exactly constant background (noise-free or zero-filled images)
is cut without smoothing (every pixel above it is object). An image of noise only (no object)
gives an empty mask.

Limits: a flat, uniform tissue region with a signal-to-noise ratio below ~20 that is the darkest
thing in an image without air cannot be told from a background of many coils; tissue darker than
the noise floor at the object's edge is left out (inside the object, hole filling keeps it).

Example:
    >>> import torch
    >>> yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    >>> disk = ((yy - 32) ** 2 + (xx - 30) ** 2) < 20**2
    >>> noise = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.complex64)
    >>> image = disk * (0.2 + 0.8 * (xx > 30)) + 0.05 * noise  # dark and bright tissue in noise
    >>> mask = foreground_mask(image)[0]
    >>> bool(mask[32, 15]), bool(mask[32, 45]), bool(mask[2, 2])  # dark tissue, bright, air
    (True, True, False)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_dfd.preprocess import channels_per_image, magnitude

#: Standard deviation (pixels) of the Gaussian that smooths the magnitude before thresholding.
SMOOTHING_SIGMA = 1.0
#: The object starts this many robust standard deviations (of the smoothed background) above the
#: background's median.
NOISE_MARGIN = 5.0
#: A class is noise when the spread of its smoothed values is at most this many times what
#: smoothing leaves of its pixel noise (1 for white noise; texture and shading raise it).
WHITENESS_MAX = 2.0
#: ... and its median at most this many pixel-noise standard deviations (a root-sum-of-squares of
#: ``n`` coils has a background of about ``2 sqrt(n)``: ~11 for 32 coils).
NOISE_LEVEL_MAX = 20.0
#: A class darker than this fraction of the image's bright level (99.9th percentile of the
#: smoothed magnitude) is background whatever its texture.
DARK_FRACTION = 0.05
#: At most this many splits from the dark end before deciding that the image has no background.
MAX_SPLITS = 6
#: A class of fewer pixels is too small to be measured (and to be a background).
MIN_PIXELS = 32
#: Connected pieces of fewer pixels above the noise threshold are noise peaks, not object.
MIN_PIECE = 9


def validated_mask(mask: Tensor, preds: Tensor) -> Tensor:
    """Check a ROI mask against ``preds`` and flatten it to ``(M, 1, H, W)`` float, as the images.

    Accepts a boolean ``(N, H, W)`` mask (every channel), ``(N, 1, H, W)`` (every channel) or
    ``(N, C, H, W)`` (per channel) for ``(N, [C,] H, W)`` images.

    Raises:
        TypeError: a non-tensor or non-boolean mask.
        ValueError: a wrong shape, or an image whose mask is empty.

    Example:
        >>> import torch
        >>> validated_mask(torch.ones(2, 8, 8, dtype=torch.bool), torch.rand(2, 3, 8, 8)).shape
        torch.Size([6, 1, 8, 8])
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"`mask` must be a boolean torch.Tensor, but got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"`mask` must have dtype torch.bool, but got {mask.dtype} (use `mask > 0.5`)")
    n, c = preds.shape[0], channels_per_image(preds)
    h, w = preds.shape[-2:]
    if mask.shape == (n, h, w):
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[0] != n or mask.shape[1] not in (1, c) or mask.shape[2:] != (h, w):
        raise ValueError(f"`mask` must have shape ({n}, {h}, {w}), ({n}, 1, {h}, {w}) or "
                         f"({n}, {c}, {h}, {w}) for images of shape {tuple(preds.shape)}, but got "
                         f"{tuple(mask.shape)}")
    mask = mask.expand(n, c, h, w).reshape(n * c, 1, h, w)
    empty = ~mask.flatten(1).any(dim=1)
    if empty.any():
        raise ValueError(f"`mask` is empty (all False) for images {empty.nonzero().flatten().tolist()} "
                         f"(of {n * c}, counted over batch x channels): nothing to score there")
    return mask.float()


def resized_mask(mask: Tensor, like: Tensor) -> Tensor:
    """An ``(M, 1, H, W)`` float mask area-resized to ``like``'s positions: ``(M, 1, h, w)``.

    Each feature position gets the fraction of its input cell the mask covers
    (``F.adaptive_avg_pool2d``), so a non-empty mask never vanishes at a layer and a full mask
    stays exactly 1.

    Example:
        >>> import torch
        >>> mask = torch.zeros(1, 1, 4, 4); mask[..., :2, :1] = 1
        >>> resized_mask(mask, torch.zeros(1, 8, 2, 2)).flatten().tolist()
        [0.5, 0.0, 0.0, 0.0]
    """
    return F.adaptive_avg_pool2d(mask.to(like.dtype), like.shape[-2:])


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold of an array, as ``skimage.filters.threshold_otsu`` (256-bin histogram).

    Example:
        >>> otsu_threshold(np.array([0.0, 0.1, 0.0, 0.9, 1.0, 0.95])) < 0.9
        True
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        return lo
    counts, edges = np.histogram(values, bins=nbins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    mean1 = np.cumsum(counts * centers) / weight1.clip(min=1e-300)
    mean2 = (np.cumsum((counts * centers)[::-1]) / weight2[::-1].clip(min=1e-300))[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centers[int(np.argmax(variance))])


def pixel_noise_std(image: np.ndarray, where: np.ndarray | None = None) -> float:
    """Standard deviation of white pixel noise, from diagonal differences (robust to edges).

    ``(a - b - c + d) / 2`` over each 2x2 block has the pixel noise's standard deviation and no
    response to constant or linear intensity; its median absolute deviation ignores the few blocks
    on an edge. ``where``: only blocks lying entirely inside this boolean region. NaN when fewer
    than 16 blocks are left.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ramp = np.add.outer(np.arange(200.0), np.arange(200.0)) / 100
        >>> round(pixel_noise_std(ramp + rng.normal(0, 0.1, (200, 200))), 2)
        0.1
    """
    d = (image[:-1, :-1] - image[1:, :-1] - image[:-1, 1:] + image[1:, 1:]) / 2
    if where is not None:
        d = d[where[:-1, :-1] & where[1:, :-1] & where[:-1, 1:] & where[1:, 1:]]
    if d.size < 16:
        return float("nan")
    return float(np.median(np.abs(d - np.median(d))) / 0.6744897501960817)


def _smoothing_gain(sigma: float) -> float:
    """How much the smoothing scales the standard deviation of white noise."""
    radius = int(4 * sigma + 1)
    delta = np.zeros((2 * radius + 1, 2 * radius + 1))
    delta[radius, radius] = 1.0
    from scipy import ndimage

    return float(np.sqrt((ndimage.gaussian_filter(delta, sigma) ** 2).sum()))


def _robust_stats(values: np.ndarray) -> tuple[float, float]:
    """Median and the median absolute deviation scaled to a Gaussian standard deviation."""
    med = float(np.median(values))
    return med, 1.482602218505602 * float(np.median(np.abs(values - med)))


def _background_statistics(image: np.ndarray, smooth: np.ndarray, region: np.ndarray,
                           bright: float) -> tuple[bool, float, float]:
    """``(is_background, median, spread)`` of the smoothed values inside ``region`` (off its edges).

    Background: noise (white, a mean of a few noise standard deviations) or dark (below
    :data:`DARK_FRACTION` of ``bright``); see the module docstring.
    """
    core = _interior(region)
    median, spread = _robust_stats(smooth[core])
    noise = pixel_noise_std(image, core)
    for where in (region, None):  # a class of scattered pixels (noise) holds few 2x2 blocks
        if not np.isfinite(noise):
            noise = pixel_noise_std(image, where)
    white = (noise > 0 and spread <= WHITENESS_MAX * _smoothing_gain(SMOOTHING_SIGMA) * noise
             and median <= NOISE_LEVEL_MAX * noise)
    return white or median <= DARK_FRACTION * bright, median, spread


def _interior(region: np.ndarray) -> np.ndarray:
    """``region`` eroded by two pixels (away from edges), or itself when that leaves too little."""
    from scipy import ndimage

    core = ndimage.binary_erosion(region, iterations=2, border_value=1)
    return core if core.sum() >= MIN_PIXELS else region


def _object_pixels(image: np.ndarray) -> np.ndarray:
    """Boolean object mask (before closing / hole filling) of one 2-D magnitude image."""
    from scipy import ndimage

    if float(image.max()) == float(image.min()):
        return np.zeros(image.shape, dtype=bool)  # constant: no object to tell from anything
    smooth = ndimage.gaussian_filter(image, SMOOTHING_SIGMA, mode="nearest")
    bright = float(np.percentile(smooth, 99.9))
    if bright <= 0:
        bright = float(smooth.max())
    log_smooth = np.log(np.maximum(smooth, bright * 1e-9))
    lower = np.ones(image.shape, dtype=bool)
    for _ in range(MAX_SPLITS):
        below = smooth <= np.exp(otsu_threshold(log_smooth[lower]))
        count = int(below.sum())
        if count < MIN_PIXELS or count == int(lower.sum()):
            break
        flat = image[_interior(below)]
        if float(np.ptp(flat)) == 0:  # a noise-free (zero-filled) background: no smoothing needed
            return image > float(flat.max())
        is_background, median, spread = _background_statistics(image, smooth, below, bright)
        if is_background:
            return _without_specks(smooth > _background_threshold(image, smooth, median, spread, bright))
        lower = below
    return np.ones(image.shape, dtype=bool)  # every dark class is tissue: no background in view


def _background_threshold(image: np.ndarray, smooth: np.ndarray, median: float, spread: float,
                          bright: float) -> float:
    """``median + NOISE_MARGIN * spread`` of the background, measured over all of it.

    The class that Otsu's split found may be only the darker part of the background (in an image
    of noise only: its lower half), whose spread is too small: the statistics are re-measured
    over every pixel below the threshold until it settles, and kept if that region still is
    background (else the first estimate stands).
    """
    first = threshold = median + NOISE_MARGIN * max(spread, 1e-3 * bright)
    for _ in range(8):
        is_background, median, spread = _background_statistics(image, smooth, smooth <= threshold, bright)
        if not is_background:
            return first
        refined = median + NOISE_MARGIN * max(spread, 1e-3 * bright)
        if refined <= threshold * (1 + 1e-3):
            return max(refined, threshold)
        threshold = refined
    return first


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its 8-connected pieces of fewer than :data:`MIN_PIECE` pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= MIN_PIECE
    keep[0] = False
    return keep[labels]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    if not mask.any():
        return mask
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1


def _closed(mask: np.ndarray) -> np.ndarray:
    """3x3 closing, padded so that the image border neither opens nor closes anything."""
    from scipy import ndimage

    padded = np.pad(mask, 2, mode="edge")
    return ndimage.binary_closing(padded, structure=np.ones((3, 3), dtype=bool))[2:-2, 2:-2]


def foreground_mask(target: Tensor, threshold: float | None = None, fill_holes: bool = True,
                    largest_component: bool = False, relative: bool = False) -> Tensor:
    """Boolean ``(N, H, W)`` object masks of (complex) MR images: the object, not the air around it.

    The magnitude is used (``(N, C, H, W)``: the root-sum-of-squares over channels, one mask for
    all channels). Runs on the CPU with numpy/scipy; the mask comes back on ``target``'s device.

    Args:
        target: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        threshold: None: each image's own background-noise threshold (see the module docstring:
            smoothed magnitude above the noise floor, closed 3x3); a float: a fixed threshold on
            the (unsmoothed) magnitude, divided by each image's maximum with ``relative=True``.
        fill_holes: fill enclosed background (``scipy.ndimage.binary_fill_holes``), e.g. dark
            bone, fluid or air inside the object.
        largest_component: keep only the largest 8-connected component (drops bright artefacts
            away from the object).
        relative: see ``threshold``.

    Returns:
        Boolean masks; an image of noise only (or a constant one) gives an empty mask.

    Raises:
        ValueError: a wrong shape or non-finite values.

    Example:
        >>> import torch
        >>> yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        >>> ring = ((yy - 16) ** 2 + (xx - 16) ** 2).sqrt()
        >>> image = ((ring > 4) & (ring < 10)).float()[None]  # an annulus: a hole in the middle
        >>> mask = foreground_mask(image)
        >>> bool(mask[0, 16, 16]), bool(mask[0, 0, 0])
        (True, False)
    """
    from scipy import ndimage

    if not isinstance(target, Tensor) or target.ndim not in (3, 4):
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"`target` must be a tensor of shape (N, H, W) or (N, C, H, W), but got {shape}")
    mag = magnitude(target.detach()).double()
    if mag.ndim == 4:
        mag = mag.pow(2).sum(dim=1).sqrt()
    if not torch.isfinite(mag).all():
        raise ValueError("`target` holds NaN or inf: no foreground can be found")
    images = mag.cpu().numpy()
    out = np.zeros(images.shape, dtype=bool)
    for k, image in enumerate(images):
        if threshold is None:
            mask = _closed(_object_pixels(image))
        else:
            values = image / max(float(image.max()), 1e-300) if relative else image
            mask = values > float(threshold)
        if largest_component:
            mask = _largest_component(mask)
        if fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        out[k] = mask
    return torch.from_numpy(out).to(target.device)
