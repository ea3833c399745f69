"""Med-VAE feature distance: MSE between Med-VAE posterior means."""

from __future__ import annotations

import os
from typing import Any

from lightning_dfd.encoders.medvae import MEDVAE_WEIGHTS, MedVAEConfig, MedVAENetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class VAEFD(DeepFeatureDistance):
    """Mean squared distance between Med-VAE 8x / 4-channel bottleneck latents (Med-VAEFD).

    Each image is scaled to [0, 1] (``normalization``), replicated to the checkpoint's input
    channels (3), normalised with mean 0.5 / std 0.5 and encoded; the feature is the posterior
    mean. The checkpoint's LoRA adapters are merged into the weights on load. Spatial maps
    (:meth:`distance_map`) and ROI masks (``update(..., mask=...)``) use the squared latent
    difference averaged over channels at 1/8 resolution; GroupNorm and the middle attention make
    every latent position depend on the whole image (see :mod:`lightning_dfd.spatial`).

    Args:
        weights: ``"medvae-8x4c-2d"`` (``vae_8x_4c_2D.ckpt``, via the weights registry), a
            Med-VAE checkpoint path, or ``"random"``.
        config: encoder architecture for ``weights="random"`` (default: latent diffusion's kl-f8).
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import torch
        >>> from lightning_dfd import VAEFD
        >>> from lightning_dfd.encoders.medvae import MedVAEConfig
        >>> small = MedVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
        >>> metric = VAEFD(weights="random", config=small)
        >>> x = torch.rand(2, 32, 32)
        >>> metric.update(x, x)
        >>> float(metric.compute())
        0.0
    """

    def __init__(
        self,
        weights: str | os.PathLike = MEDVAE_WEIGHTS,
        config: MedVAEConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(MedVAENetwork(weights=weights, config=config), **kwargs)
        self.weights = weights
