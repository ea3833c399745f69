"""SSFD: self-supervised feature distance (UNet encoder pretrained by MR inpainting)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lightning_dfd.encoders.base import parse_layers
from lightning_dfd.encoders.ssfd import DEFAULT_LAYER, SSFD_WEIGHTS, SSFDNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class SSFD(DeepFeatureDistance):
    """MSE between SSFD encoder features (default: ``block4_relu1``, the paper's 7th conv layer).

    Each magnitude image is z-scored on its own (so ``normalization`` has no effect on the value)
    and encoded by the SSFD UNet encoder.

    Args:
        weights: ``"ssfd-fastmri-knee"`` (the published checkpoint, via the weights registry), a
            checkpoint path in the published layout (``{"model_state_dict": ...}``, as written by
            ``SSFDPretrainModule`` / ``recon-train export-ssfd``), or ``"random"``.
        layers: taps among ``block1_relu1`` .. ``block5_relu1``; distances are summed over them.
        distance: ``"mse"`` (default, the paper's) or ``"mae"``.
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import torch
        >>> from lightning_dfd import SSFD
        >>> _ = torch.manual_seed(0)
        >>> metric = SSFD(weights="random")
        >>> target = torch.rand(2, 64, 64, dtype=torch.complex64)
        >>> metric.update(target, target)
        >>> float(metric.compute())
        0.0
    """

    def __init__(
        self,
        weights: str | os.PathLike = SSFD_WEIGHTS,
        layers: Sequence[str] = (DEFAULT_LAYER,),
        distance: str = "mse",
        **kwargs: Any,
    ) -> None:
        layers = parse_layers(layers)
        super().__init__(SSFDNetwork(weights=weights, layers=layers, distance=distance), **kwargs)
        self.weights, self.layers, self.distance = weights, layers, distance
