"""Training losses of the reconstruction models: complex L1 in the image or in k-space.

"Complex L1" is the mean modulus of the complex difference, ``mean |a - b|`` (not the L1 of the
real and imaginary parts taken separately).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from recon_models.models.sense import sense_forward


def complex_l1_image_loss(pred: Tensor, target: Tensor, maps: Tensor | None = None) -> Tensor:
    """Mean modulus of the complex image error, ``mean |pred - target|``.

    Args:
        pred: ``(B, H, W)`` complex prediction.
        target: ``(B, H, W)`` complex reference.
        maps: unused; accepted so that every loss has the same signature.

    Example:
        >>> import torch
        >>> complex_l1_image_loss(torch.zeros(1, 2, 2, dtype=torch.complex64),
        ...                       torch.full((1, 2, 2), 3 + 4j))
        tensor(5.)
    """
    _check_same_shape(pred, target)
    return (pred - target).abs().mean()


def complex_l1_kspace_loss(pred: Tensor, target: Tensor, maps: Tensor) -> Tensor:
    """Mean modulus of the complex k-space error over all coils and all lines.

    Both images are taken to multi-coil k-space with the SENSE forward operator on the full grid,
    ``F(S_c * image)`` with no mask, so that the loss sees the lines the model had to infer as well
    as the acquired ones: ``mean |F(S pred) - F(S target)|``. ``F(S * target)`` is the fully-sampled
    k-space of the target as the model's forward operator sees it (it equals the measured k-space
    inside the support of the maps). By linearity it is computed as ``mean |F(S (pred - target))|``.

    Args:
        pred: ``(B, H, W)`` complex prediction.
        target: ``(B, H, W)`` complex reference.
        maps: ``(B, C, H, W)`` complex coil sensitivities.

    Example:
        >>> import torch
        >>> maps = torch.ones(1, 1, 4, 4, dtype=torch.complex64)
        >>> target = torch.zeros(1, 4, 4, dtype=torch.complex64)
        >>> complex_l1_kspace_loss(target, target, maps)
        tensor(0.)
    """
    _check_same_shape(pred, target)
    return sense_forward(pred - target, maps).abs().mean()


LossFunction = Callable[[Tensor, Tensor, Tensor], Tensor]

LOSSES: dict[str, LossFunction] = {
    "image_l1": complex_l1_image_loss,
    "kspace_l1": complex_l1_kspace_loss,
}


def get_loss(name: str) -> LossFunction:
    """Return the loss function registered under ``name`` (``"image_l1"`` or ``"kspace_l1"``).

    Every loss is called as ``loss(pred, target, maps)``.

    Example:
        >>> get_loss("kspace_l1") is complex_l1_kspace_loss
        True
    """
    if name not in LOSSES:
        raise ValueError(f"Argument `loss` must be one of {sorted(LOSSES)}, but got {name!r}")
    return LOSSES[name]


def _check_same_shape(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"Expected `pred` and `target` of the same shape, but got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
