"""Cartesian undersampling masks, built on ``fastmri.data.subsample``.

Masks subsample the phase-encoding columns (``W``) and always keep a fully sampled centre of
``round(W * center_fraction)`` columns. fastMRI pairs 4x with a centre fraction of 0.08 and 8x
with 0.04, i.e. ``center_fraction = 0.32 / acceleration``; we extend that rule to every other
acceleration (2x: 0.16, 6x: 0.053), so the centre is always about a third of the sampled columns.

Training draws a new mask for every slice; validation and test masks are fixed per volume,
seeded from the file name exactly as fastMRI does (``tuple(map(ord, fname))``), so metrics are
reproducible across epochs and processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type

MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
CENTER_FRACTION_TIMES_ACCELERATION = 0.32


def default_center_fraction(acceleration: float) -> float:
    """The fastMRI centre fraction for an acceleration: 0.32 / acceleration, 3 decimals.

    Args:
        acceleration: The undersampling factor.

    Returns:
        The fraction of central columns to keep.

    Example:
        >>> [default_center_fraction(r) for r in (2, 4, 6, 8)]
        [0.16, 0.08, 0.053, 0.04]
    """
    if acceleration < 1:
        raise ValueError(f"Argument `acceleration` must be >= 1, but got {acceleration}")
    return round(CENTER_FRACTION_TIMES_ACCELERATION / acceleration, 3)


def build_mask_func(
    mask_type: str = "random",
    accelerations: Sequence[int] = (4,),
    center_fractions: Sequence[float] | None = None,
) -> MaskFunc:
    """A fastMRI ``MaskFunc`` (one acceleration drawn per call when several are given).

    Args:
        mask_type: One of :data:`MASK_TYPES` (fastMRI's names).
        accelerations: Undersampling factors.
        center_fractions: One per acceleration; ``None`` uses :func:`default_center_fraction`.

    Returns:
        The mask function.

    Raises:
        ValueError: An unknown type, or mismatched or out-of-range values.

    Example:
        >>> func = build_mask_func("equispaced_fraction", accelerations=(4,))
        >>> mask = sample_mask(func, width=64, seed=(1, 2, 3))
        >>> mask.shape, round(64 / float(mask.sum()))
        (torch.Size([1, 1, 64]), 4)
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"Argument `mask_type` must be one of {MASK_TYPES}, but got {mask_type!r}")
    accelerations = [int(a) for a in accelerations]
    if not accelerations or any(a < 1 for a in accelerations):
        raise ValueError(f"Argument `accelerations` must be integers >= 1, but got {accelerations}")
    if center_fractions is None:
        center_fractions = [default_center_fraction(a) for a in accelerations]
    center_fractions = [float(c) for c in center_fractions]
    if len(center_fractions) != len(accelerations):
        raise ValueError(
            "Argument `center_fractions` must have one value per acceleration, but got "
            f"{center_fractions} for accelerations {accelerations}"
        )
    for fraction, acceleration in zip(center_fractions, accelerations):
        if not 0 < fraction <= 1 / acceleration:
            raise ValueError(
                f"Argument `center_fractions` must be in (0, 1/acceleration], but got {fraction} "
                f"for acceleration {acceleration}"
            )
    return create_mask_for_mask_type(mask_type, center_fractions, accelerations)


def volume_seed(fname: str) -> tuple[int, ...]:
    """The fastMRI per-volume mask seed: the character codes of the file name.

    Args:
        fname: The file name (no folder).

    Returns:
        The seed for ``MaskFunc.__call__``.

    Example:
        >>> volume_seed("ab.h5")
        (97, 98, 46, 104, 53)
    """
    return tuple(map(ord, fname))


def sample_mask(
    mask_func: MaskFunc,
    width: int,
    seed: int | tuple[int, ...] | None = None,
    padding: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Draw one column mask in the ``(1, 1, W)`` float32 layout.

    Args:
        mask_func: A fastMRI mask function.
        width: Number of phase-encoding columns ``W``.
        seed: Seed (``None`` draws from the mask function's own generator).
        padding: ``(left, right)``: columns outside ``[left, right)`` were never acquired (zero
            padded in the file) and are masked out, as fastMRI's transforms do.

    Returns:
        ``(1, 1, W)`` float32 in {0, 1}.

    Example:
        >>> func = build_mask_func("random", (4,))
        >>> bool((sample_mask(func, 32, seed=0) == sample_mask(func, 32, seed=0)).all())
        True
    """
    mask, _ = mask_func((1, 1, width, 1), None, seed)
    mask = mask.reshape(1, 1, width).to(torch.float32)
    if padding is not None:
        left, right = padding
        mask[..., :left] = 0
        mask[..., right:] = 0
    return mask


def acceleration_of(mask: torch.Tensor) -> float:
    """Achieved acceleration of a column mask: columns / sampled columns.

    Args:
        mask: ``(..., W)`` mask in {0, 1}.

    Returns:
        ``W / sum(mask)``.

    Example:
        >>> acceleration_of(torch.tensor([1.0, 0.0, 1.0, 0.0]))
        2.0
    """
    return mask.shape[-1] / float(mask.reshape(-1, mask.shape[-1])[0].sum())
