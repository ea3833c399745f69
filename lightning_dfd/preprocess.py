"""Input checks and preprocessing shared by every metric.

MR images arrive as real or complex tensors of shape ``(N, H, W)`` or ``(N, C, H, W)``. Every metric
sees them the same way: complex values become magnitudes, and each channel is an independent
grayscale image, so ``C`` channels give ``N * C`` image pairs of shape ``(1, H, W)``.

Example:
    >>> import torch
    >>> from lightning_dfd.preprocess import check_pair, to_grayscale_batch, normalize_pair
    >>> preds, target = torch.rand(2, 3, 8, 8, dtype=torch.complex64), torch.rand(2, 3, 8, 8)
    >>> preds = preds.abs()
    >>> check_pair(preds, target)
    >>> to_grayscale_batch(preds).shape
    torch.Size([6, 1, 8, 8])
"""

from __future__ import annotations

from typing import Literal, TypeVar

import torch
from torch import Tensor

Normalization = Literal["minmax", "target", "none"]
NORMALIZATIONS: tuple[str, ...] = ("minmax", "target", "none")
NanStrategy = Literal["error", "ignore", "propagate"]
NAN_STRATEGIES: tuple[str, ...] = ("error", "ignore", "propagate")
REDUCTIONS: tuple[str, ...] = ("mean", "none")

#: An image is constant when its spread is at most this many units of float rounding of its own
#: magnitude (``RELATIVE_EPS * finfo(dtype).eps * max|x|``): a relative guard, so an image in raw
#: k-space units (~1e-9) is scaled like the same image in [0, 1], and a constant one maps to zeros.
RELATIVE_EPS = 8.0


def check_choice(name: str, value: object, valid: tuple) -> None:
    """Raise the project's standard error when ``value`` is not one of ``valid``.

    Example:
        >>> check_choice("reduction", "mean", REDUCTIONS)
    """
    if value not in valid:
        raise ValueError(f"Argument `{name}` must be one of {valid}, but got {value!r}")


def check_pair(preds: Tensor, target: Tensor) -> None:
    """Validate a ``(preds, target)`` pair without touching any state.

    Raises:
        TypeError: for non-tensors, integer/bool dtypes, or complex target with real preds.
        ValueError: for a wrong rank, mismatched shapes or an empty batch.
    """
    for name, x in (("preds", preds), ("target", target)):
        if not isinstance(x, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, but got {type(x).__name__}")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(
                f"`{name}` must have a floating point or complex dtype, but got {x.dtype}; "
                "integer images carry no scale: convert them with `.float()` first"
            )
        if x.ndim not in (3, 4):
            raise ValueError(
                f"`{name}` must have shape (N, H, W) or (N, C, H, W), but got {tuple(x.shape)}"
            )
    if preds.shape != target.shape:
        raise ValueError(
            f"`preds` and `target` must have the same shape, but got {tuple(preds.shape)} "
            f"and {tuple(target.shape)}"
        )
    if preds.shape[0] == 0:
        raise ValueError("`preds` and `target` hold no images (N=0)")
    if min(preds.shape[-2:]) < 1:
        raise ValueError(f"images must be at least 1x1, but got {tuple(preds.shape[-2:])}")
    if target.is_complex() and not preds.is_complex():
        raise TypeError(
            "`target` is complex but `preds` is real: pass both as complex images, or take "
            "`preds.abs()`/`target.abs()` yourself if the prediction already is a magnitude"
        )


def magnitude(x: Tensor) -> Tensor:
    """Complex -> magnitude; real float32/64 unchanged; half precision upcast to float32."""
    if x.is_complex():
        x = x.abs()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def to_grayscale_batch(x: Tensor) -> Tensor:
    """``(N, H, W)`` or ``(N, C, H, W)`` -> ``(N * C, 1, H, W)`` real images (magnitude if complex)."""
    x = magnitude(x)
    if x.ndim == 3:
        return x.unsqueeze(1)
    n, c, h, w = x.shape
    return x.reshape(n * c, 1, h, w)


def channels_per_image(x: Tensor) -> int:
    """Number of grayscale images each batch element contributes."""
    return 1 if x.ndim == 3 else x.shape[1]


def nonfinite_images(x: Tensor) -> Tensor:
    """Boolean ``(M,)`` mask of the images in an ``(M, 1, H, W)`` batch that hold NaN or inf."""
    return ~torch.isfinite(x.detach()).flatten(1).all(dim=1)


def is_constant(spread: Tensor, magnitude: Tensor) -> Tensor:
    """True where ``spread`` (max - min, or a std) is float rounding noise of ``magnitude``.

    Relative to the values' own scale, so no absolute floor decides it: ``(1e-9, 2e-9)`` is an
    image, ``(1.0, 1.0 + 1e-9)`` in float32 is not.

    Example:
        >>> is_constant(torch.tensor([1e-9, 0.0, 1e-9]), torch.tensor([2e-9, 0.0, 1.0])).tolist()
        [False, True, True]
    """
    floor = RELATIVE_EPS * torch.finfo(spread.dtype).eps * magnitude
    return spread.detach() <= floor.detach()


def _minmax(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    spread = hi - lo
    constant = is_constant(spread, torch.maximum(lo.abs(), hi.abs()))
    # A constant reference is only shifted (it maps to zeros; other images keep their units).
    return (x - lo) / torch.where(constant, torch.ones_like(spread), spread)


def normalize_pair(preds: Tensor, target: Tensor, mode: Normalization) -> tuple[Tensor, Tensor]:
    """Scale ``(M, 1, H, W)`` image batches to [0, 1] (out of place).

    ``"minmax"`` scales each image by its own min/max (the reference code's behaviour); ``"target"``
    scales both images of a pair by the target's min/max; ``"none"`` passes values through.

    Example:
        >>> p, t = torch.rand(2, 1, 4, 4) * 5, torch.rand(2, 1, 4, 4) * 5
        >>> p01, t01 = normalize_pair(p, t, "minmax")
        >>> float(p01.amin()), float(p01.amax()) <= 1.0
        (0.0, True)
    """
    check_choice("normalization", mode, NORMALIZATIONS)
    if mode == "none":
        return preds, target
    t_lo = target.amin(dim=(1, 2, 3), keepdim=True)
    t_hi = target.amax(dim=(1, 2, 3), keepdim=True)
    if mode == "target":
        return _minmax(preds, t_lo, t_hi), _minmax(target, t_lo, t_hi)
    p_lo = preds.amin(dim=(1, 2, 3), keepdim=True)
    p_hi = preds.amax(dim=(1, 2, 3), keepdim=True)
    return _minmax(preds, p_lo, p_hi), _minmax(target, t_lo, t_hi)


def normalize_images(x: Tensor, mode: Normalization) -> Tensor:
    """Per-image min-max (``"minmax"`` / ``"target"`` applied to the target itself) or pass-through."""
    check_choice("normalization", mode, NORMALIZATIONS)
    if mode == "none":
        return x
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return _minmax(x, lo, hi)


def to_signed_unit(x01: Tensor) -> Tensor:
    """Map [0, 1] to [-1, 1]."""
    return x01 * 2 - 1


def to_rgb(x: Tensor) -> Tensor:
    """Replicate a ``(M, 1, H, W)`` grayscale batch to 3 channels (a view, no copy)."""
    return x.expand(-1, 3, -1, -1)


Array = TypeVar("Array")


def center_crop(image: Array, size: tuple[int, int] | list[int] | Tensor) -> Array:
    """Crop the last two dimensions of a tensor or numpy array around the centre (fastMRI's).

    A crop larger than the image keeps the image's own extent in that dimension, as fastMRI's
    evaluation does for ``reconSpace`` wider than the k-space.

    Example:
        >>> center_crop(torch.arange(16.0).reshape(4, 4), (2, 2))
        tensor([[ 5.,  6.],
                [ 9., 10.]])
    """
    height, width = image.shape[-2:]  # type: ignore[attr-defined]
    crop_h, crop_w = min(int(size[0]), height), min(int(size[1]), width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image[..., top : top + crop_h, left : left + crop_w]  # type: ignore[index]


def complex_from_real_pair(x: Tensor) -> Tensor:
    """FastMRI's "complex as a last dimension of size 2" layout -> a complex tensor.

    Never guessed from shapes: call it explicitly for tensors that use that layout.

    Example:
        >>> complex_from_real_pair(torch.zeros(2, 8, 8, 2)).dtype
        torch.complex64
    """
    if x.shape[-1] != 2:
        raise ValueError(f"expected a last dimension of size 2 (real, imag), got {tuple(x.shape)}")
    return torch.view_as_complex(x.float().contiguous())


def real_pair_hint(x: Tensor) -> str:
    """For an error about ``x``'s image size: a hint when ``x`` looks like the (real, imag) layout.

    Only used to explain an error; such tensors are never converted implicitly.

    Example:
        >>> real_pair_hint(torch.zeros(2, 64, 2)).startswith("; a last dimension of 2")
        True
        >>> real_pair_hint(torch.zeros(2, 64, 64))
        ''
    """
    if x.ndim >= 3 and x.shape[-1] == 2 and x.shape[-2] > 2 and not x.is_complex():
        return ("; a last dimension of 2 looks like fastMRI's (real, imaginary) layout: convert it "
                "with lightning_dfd.preprocess.complex_from_real_pair(x) first")
    return ""


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
