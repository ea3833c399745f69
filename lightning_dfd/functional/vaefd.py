"""Functional Med-VAE feature distance (network built once per arguments and device, reused).

Example:
    >>> import torch
    >>> from lightning_dfd.encoders.medvae import MedVAEConfig
    >>> small = MedVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    >>> x = torch.rand(2, 32, 32)
    >>> float(vae_fd(x, x, weights="random", config=small))
    0.0
"""

from __future__ import annotations

import os

from torch import Tensor

from lightning_dfd.encoders.medvae import MEDVAE_WEIGHTS, MedVAEConfig, MedVAENetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def vae_fd(
    preds: Tensor,
    target: Tensor,
    weights: str | os.PathLike = MEDVAE_WEIGHTS,
    config: MedVAEConfig | None = None,
    normalization: str = "minmax",
    reduction: str = "mean",
    max_batch: int | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Med-VAE feature distance between ``preds`` and ``target`` (see :class:`lightning_dfd.VAEFD`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        weights: ``"medvae-8x4c-2d"``, a checkpoint path, or ``"random"``.
        config: encoder architecture for ``weights="random"``.
        normalization: ``"minmax"``, ``"target"`` or ``"none"`` (to [0, 1] before the encoder).
        reduction: ``"mean"`` or ``"none"``.
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    network = cached_network(MedVAENetwork, preds.device, weights=weights, config=config)
    return functional_distance(
        network, preds, target, normalization=normalization, reduction=reduction,
        max_batch=max_batch, precision=precision,
    )
