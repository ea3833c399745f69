"""Reconstruction networks: plain ``nn.Module``s that know nothing of Lightning.

Every model is called as ``model(masked_kspace, mask, maps) -> image`` with ``(B, C, H, W)``
complex k-space and maps, a ``(B, 1, 1, W)`` mask, and returns a ``(B, H, W)`` complex image.
Each model names the loss it is trained with in ``default_loss`` (see :mod:`.losses`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from recon_models.models.layers import (
    NormalizedComplexModel,
    channels_to_complex,
    complex_to_channels,
)
from recon_models.models.losses import (
    complex_l1_image_loss,
    complex_l1_kspace_loss,
    get_loss,
)
from recon_models.models.sense import sense_adjoint, sense_forward
from recon_models.models.unet import ComplexUnet
from recon_models.models.unrolled import FISTAStep, ResNetProx, UnrolledFISTA

MODELS: dict[str, type[nn.Module]] = {"unet": ComplexUnet, "unrolled": UnrolledFISTA}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a reconstruction model by name.

    Args:
        name: ``"unet"`` (:class:`ComplexUnet`) or ``"unrolled"`` (:class:`UnrolledFISTA`).
        **kwargs: arguments of the model's constructor.

    Example:
        >>> model = build_model("unrolled", num_unrolls=2, chans=8)
        >>> type(model).__name__, model.default_loss
        ('UnrolledFISTA', 'kspace_l1')
    """
    if name not in MODELS:
        raise ValueError(f"Argument `name` must be one of {sorted(MODELS)}, but got {name!r}")
    return MODELS[name](**kwargs)


__all__ = [
    "MODELS",
    "ComplexUnet",
    "FISTAStep",
    "NormalizedComplexModel",
    "ResNetProx",
    "UnrolledFISTA",
    "build_model",
    "channels_to_complex",
    "complex_l1_image_loss",
    "complex_l1_kspace_loss",
    "complex_to_channels",
    "get_loss",
    "sense_adjoint",
    "sense_forward",
]
