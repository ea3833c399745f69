"""Functional HFFD (the network is built once per arguments and device, then cached).

Example:
    >>> import tempfile, torch
    >>> from transformers import ViTConfig, ViTModel
    >>> tmp = tempfile.TemporaryDirectory(); folder = tmp.name
    >>> ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                    intermediate_size=64, patch_size=8, image_size=32)).save_pretrained(folder)
    >>> x = torch.rand(2, 32, 32)
    >>> float(hf_fd(x, x, model_name_or_path=folder))
    0.0
    >>> tmp.cleanup()
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from torch import Tensor

from lightning_dfd.encoders.hf import HFFDNetwork
from lightning_dfd.functional.dfd import cached_network, functional_distance


def hf_fd(
    preds: Tensor,
    target: Tensor,
    model_name_or_path: str | os.PathLike = "microsoft/rad-dino",
    layers: int | Iterable[int] = (-1,),
    weights: str | None = None,
    distance: str = "mse",
    input_size: int | Sequence[int] | None = None,
    normalization: str = "minmax",
    reduction: str = "mean",
    max_batch: int | None = None,
    precision: str = "fp32",
) -> Tensor:
    """HFFD between ``preds`` and ``target`` (see :class:`lightning_dfd.HFFD`).

    Args:
        preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        target: same shape.
        model_name_or_path: a registered folder's name or hub id, a local folder, or a hub id.
        layers: indices into the model's ``hidden_states``, summed.
        weights: None (the model's own) or ``"random"``.
        distance: ``"mse"``, ``"mae"`` or ``"unit"``.
        input_size: None (nearest multiple of the patch size) or a fixed size.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        reduction: ``"mean"`` or ``"none"`` (one value per image and channel).
        max_batch: at most this many image pairs per encoder pass.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"``.
    """
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    size = input_size if input_size is None or isinstance(input_size, int) else tuple(input_size)
    network = cached_network(HFFDNetwork, preds.device, model_name_or_path=model_name_or_path,
                             layers=layers, weights=weights, distance=distance, input_size=size)
    return functional_distance(network, preds, target, normalization=normalization,
                               reduction=reduction, max_batch=max_batch, precision=precision)
