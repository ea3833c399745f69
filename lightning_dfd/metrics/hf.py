"""Any Hugging Face ``transformers`` vision backbone as a deep feature distance (hidden states)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from lightning_dfd.encoders.hf import HFFDNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance


class HFFD(DeepFeatureDistance):
    """Distance between patch-token features of a transformers vision model (RAD-DINO, MedSAM...).

    The encoder is ``AutoModel.from_pretrained(model_name_or_path)`` (its vision tower for CLIP
    and SAM), frozen; the features are its ``hidden_states`` at ``layers``, patch tokens reshaped
    to ``(hidden_size, h, w)`` maps (CLS and register tokens dropped), so spatial maps and ROI
    masks work as for every DFD. Images are min-max scaled to [0, 1] (``normalization``), resized
    (bilinear) to a multiple of the patch size (SAM: to its fixed ``image_size``), replicated to 3
    channels and normalised with the model's own image-processor mean / std (ImageNet's when the
    folder has no processor config). Loading, offline use and the registered folders
    (``rad-dino``, ``medsam-vit-base``, ``dinov2-small``, ``dinov2-base``) are described in
    :mod:`lightning_dfd.encoders.hf`. Needs ``transformers`` (``pip install 'lightning-dfd[hf]'``),
    imported when the metric is built.

    Args:
        model_name_or_path: a registered folder's name or hub id (``"microsoft/rad-dino"``), a
            local ``save_pretrained`` folder, or any hub id transformers can load.
        layers: indices into ``hidden_states`` (0: embeddings, -1: the last block); distances are
            summed over them.
        weights: None (the model's own weights) or ``"random"`` (its ``config.json``, randomly
            initialised: for trying an architecture, never chosen for you).
        distance: ``"mse"``, ``"mae"`` or ``"unit"`` (LPIPS-style channel-unit-normalised squared
            difference, averaged over positions, summed over layers).
        input_size: None (each side rounded to the nearest multiple of the patch size), or a
            fixed ``size`` / ``(height, width)`` in multiples of the patch size.
        kwargs: see :class:`~lightning_dfd.metrics.base.DeepFeatureDistance`.

    Example:
        >>> import tempfile, torch
        >>> from transformers import Dinov2Config, Dinov2Model
        >>> from lightning_dfd import HFFD
        >>> tmp = tempfile.TemporaryDirectory(); folder = tmp.name
        >>> _ = torch.manual_seed(0)
        >>> Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                          intermediate_size=64, patch_size=14)).save_pretrained(folder)
        >>> metric = HFFD(folder, layers=(1, 2), distance="unit")
        >>> x = torch.rand(2, 56, 56)
        >>> metric.update(x, x)
        >>> float(metric.compute())
        0.0
        >>> tmp.cleanup()
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = "microsoft/rad-dino",
        layers: int | Iterable[int] = (-1,),
        weights: str | None = None,
        distance: str = "mse",
        input_size: int | Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        network = HFFDNetwork(model_name_or_path=model_name_or_path, layers=layers, weights=weights,
                              distance=distance, input_size=input_size)
        super().__init__(network, **kwargs)
        self.model_name_or_path, self.layers, self.weights = model_name_or_path, network.layers, weights
        self.distance = distance
