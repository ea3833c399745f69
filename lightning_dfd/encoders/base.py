"""The contract every deep-feature-distance network fulfils.

A network turns grayscale images scaled to [0, 1] (``(M, 1, H, W)``) into its own input
(:meth:`prepare`: range, channels), a list of feature maps (:meth:`features`), and compares two
lists of features image by image (:meth:`distance` -> ``(M,)``). Metrics and functional forms only
talk to this interface, so a new DFD is one subclass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def mean_squared_distance(feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
    """Mean of squared differences over channels and positions, summed over layers: ``(M,)``."""
    total = None
    for a, b in zip(feats_a, feats_b, strict=True):
        d = (a - b).pow(2).flatten(1).mean(dim=1)
        total = d if total is None else total + d
    return total


def mean_absolute_distance(feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
    """Mean of absolute differences over channels and positions, summed over layers: ``(M,)``."""
    total = None
    for a, b in zip(feats_a, feats_b, strict=True):
        d = (a - b).abs().flatten(1).mean(dim=1)
        total = d if total is None else total + d
    return total


class FeatureDistanceNetwork(nn.Module, ABC):
    """A frozen encoder plus the distance computed on its features."""

    #: a short identity of architecture + weights + preprocessing, used to key feature caches.
    identity: str = ""
    #: what the *features* depend on (identity minus distance-only options): networks with equal
    #: ``features_identity`` and equal feature weights compute identical features, so they can
    #: share one encoder pass and one target-feature cache (empty: same as ``identity``).
    features_identity: str = ""
    #: names (prefixes) of parameters/buffers used only by :meth:`distance`, left out of the
    #: feature-weights digest (LPIPS' linear layers, DISTS' alpha/beta).
    head_prefixes: tuple[str, ...] = ()
    #: run convolutions in channels-last layout (faster on CPU and tensor cores; same values
    #: up to float rounding, <= 1e-5 relative in our tests).
    channels_last: bool = False
    #: run the encoder under bf16 autocast (GPU option; features come back as float32).
    autocast: bool = False

    @abstractmethod
    def prepare(self, images: Tensor) -> Tensor:
        """``(M, 1, H, W)`` images in [0, 1] (or raw, for normalization="none") -> network input."""

    @abstractmethod
    def features(self, x: Tensor) -> list[Tensor]:
        """Network input -> list of feature maps, each ``(M, C_l, H_l, W_l)``."""

    @abstractmethod
    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """Per-image distance ``(M,)`` between two feature lists."""

    def forward(self, images: Tensor) -> list[Tensor]:
        """Features of ``(M, 1, H, W)`` images: :meth:`prepare` then :meth:`features`."""
        x = self.prepare(images.to(self.parameter_dtype))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.autocast:
            return self.features(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            feats = self.features(x)
        return [f.float() for f in feats]

    def set_options(self, channels_last: bool = False, autocast: bool = False) -> None:
        """Switch the channels-last layout and bf16 autocast on or off."""
        self.channels_last, self.autocast = channels_last, autocast
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    @property
    def parameter_dtype(self) -> torch.dtype:
        """The floating dtype of the network's weights (float32 unless converted)."""
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def train(self, mode: bool = True) -> FeatureDistanceNetwork:
        """Always eval: dropout and batch-norm statistics of a metric never change."""
        return super().train(False)
