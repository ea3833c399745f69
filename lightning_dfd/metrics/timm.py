"""Any timm encoder as a deep feature distance (``features_only`` taps)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from lightning_dfd.encoders.timm import TimmFDNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class TimmFD(DeepFeatureDistance):
    """Distance between the features of any timm model (ConvNeXt, EfficientNet, ViT, DINOv2...).

    The encoder is ``timm.create_model(model_name, features_only=True, out_indices=layers)``;
    weights are loaded and checked by lightning-dfd (every feature parameter must be in the
    file). Images are min-max scaled to [0, 1] (``normalization``), replicated to 3 channels and
    normalised with the model's own ``pretrained_cfg`` mean / std. Needs the ``timm`` package
    (``pip install 'lightning-dfd[timm]'``), imported when the metric is built.

    Args:
        model_name: a timm model name, e.g. ``"convnext_tiny"``, ``"efficientnet_b0"``,
            ``"vit_small_patch14_dinov2"``.
        layers: timm ``out_indices`` (stages of a CNN, blocks of a ViT); distances are summed.
        weights: ``"random"``, a registry name (``"convnext_tiny.fb_in1k"``...), a file path
            (timm full-model state dict, ``.safetensors`` or torch file), or None for the model's
            registered default.
        distance: ``"mse"``, ``"mae"`` or ``"unit"`` (LPIPS-style channel-unit-normalised squared
            difference, averaged over positions, summed over layers).
        model_kwargs: more arguments of ``timm.create_model`` (ViTs default to
            ``dynamic_img_size=True, dynamic_img_pad=True``: any image size).
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import torch
        >>> from lightning_dfd import TimmFD
        >>> _ = torch.manual_seed(0)
        >>> metric = TimmFD("resnet18", layers=(1, 2), weights="random", distance="unit")
        >>> x = torch.rand(2, 48, 48)
        >>> metric.update(x, x)
        >>> float(metric.compute())
        0.0
    """

    def __init__(
        self,
        model_name: str = "convnext_tiny",
        layers: int | Iterable[int] = (2,),
        weights: str | os.PathLike | None = None,
        distance: str = "mse",
        model_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        network = TimmFDNetwork(model_name=model_name, layers=layers, weights=weights,
                                distance=distance, model_kwargs=model_kwargs)
        super().__init__(network, **kwargs)
        self.model_name, self.layers, self.weights = model_name, network.layers, weights
        self.distance = distance
