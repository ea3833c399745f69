"""LPIPS networks (VGG-16 / AlexNet trunks with the `lpips` package's learned linear layers).

The trunk is torchvision's ``features`` cut at the five LPIPS taps; the input scaling layer,
linear layers and their shipped weights (``lpips/weights/v0.1``) come from the ``lpips`` package
itself. The unit normalisation of each tap is ``lpips.normalize_tensor`` made scale-safe
(:func:`~lightning_dfd.encoders.layers.unit_normalize`: bit-identical up to activations of
~1e12; beyond, where ``lpips``' squared norm overflows and every feature becomes 0, the exact
value instead of 0), so ``normalization="none"`` on huge images scores them instead of
returning 0.

Example:
    >>> import torch
    >>> net = LPIPSNetwork("alex", linear=True, weights="random")
    >>> x = torch.rand(2, 1, 64, 64)
    >>> net.distance(net(x), net(x)).tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

import os

import lpips as lpips_pkg
from torch import Tensor, nn

from lightning_dfd.encoders.backbones import (
    WeightsArg,
    alexnet_features,
    freeze,
    resolve_alias,
    vgg16_features,
)
from lightning_dfd.encoders.base import FeatureDistanceNetwork, channel_sum_maps, summed_means
from lightning_dfd.encoders.layers import unit_normalize
from lightning_dfd.preprocess import to_rgb, to_signed_unit
from lightning_dfd.weights import load_checkpoint, seeds_random_init

#: End index (exclusive) of each LPIPS slice in torchvision's ``features``; taps after the ReLUs.
LPIPS_SLICES = {"vgg": (4, 9, 16, 23, 30), "alex": (2, 5, 8, 10, 12)}
LPIPS_CHANNELS = {"vgg": (64, 128, 256, 512, 512), "alex": (64, 192, 384, 256, 256)}
#: smallest image side each trunk accepts (VGG pools 4 times before its last tap; AlexNet's
#: stride-4 11x11 convolution and 3 poolings need 31 pixels), found by trying every size.
LPIPS_MIN_SIZE = {"vgg": 16, "alex": 31}


def backbone_weights(net: str, weights: WeightsArg) -> WeightsArg:
    """``"imagenet"`` -> the registry name of the torchvision ImageNet checkpoint for ``net``."""
    return resolve_alias({"vgg": "vgg16", "alex": "alexnet"}[net], weights)


class LPIPSNetwork(FeatureDistanceNetwork):
    """VGG-16 or AlexNet LPIPS, with or without the learned linear layers.

    Args:
        net: ``"vgg"`` or ``"alex"``.
        linear: use the learned linear layers (LPIPS proper); False averages channels equally
            (the paper's "VGG-16 without linear layers").
        weights: backbone weights: ``"imagenet"``, a registry name, a file path or ``"random"``.
    """

    @seeds_random_init
    def __init__(self, net: str = "vgg", linear: bool = True, weights: WeightsArg = "imagenet"):
        super().__init__()
        if net not in LPIPS_SLICES:
            raise ValueError(f"Argument `net` must be one of {tuple(LPIPS_SLICES)}, but got {net!r}")
        build = vgg16_features if net == "vgg" else alexnet_features
        features = build(backbone_weights(net, weights))
        bounds = (0, *LPIPS_SLICES[net])
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        self.scaling = lpips_pkg.ScalingLayer()
        self.linear = linear
        self.lins = nn.ModuleList(
            lpips_pkg.NetLinLayer(c, use_dropout=True) for c in LPIPS_CHANNELS[net]
        ) if linear else None
        if linear:
            # From the weights table: the wheel's file, its sha256 checked (a tampered head is refused).
            shipped = load_checkpoint(f"lpips-{net}-v0.1")
            self.lins.load_state_dict(
                {k.replace("lin", "", 1): v for k, v in shipped.items()}, strict=True
            )
        self.features_identity = f"lpips-{net}-{os.fspath(weights)}"
        self.identity = f"lpips-{net}-{'lin' if linear else 'nolin'}-{os.fspath(weights)}"
        self.head_prefixes = ("lins.",)
        self.min_size = LPIPS_MIN_SIZE[net]
        freeze(self)

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] grayscale -> [-1, 1] pseudo-RGB (LPIPS' expected input range)."""
        return to_rgb(to_signed_unit(images))

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised activations at the five LPIPS taps (scale-safe, see the module doc)."""
        h = self.scaling(x)
        out = []
        for block in self.slices:
            h = block(h)
            out.append(unit_normalize(h))
        return out

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """Sum over layers of the spatial mean of the (weighted) squared feature difference."""
        return summed_means(self.layer_maps(feats_preds, feats_target))

    def layer_maps(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
        """Per-position contributions ``(M, 1, h_l, w_l)`` per tap, before the spatial average.

        The (weighted) squared feature difference summed over channels: the maps of
        ``lpips.LPIPS(spatial=True)`` before upsampling; ``distance`` is the sum of their means.
        """
        return channel_sum_maps(feats_preds, feats_target, self.lins if self.linear else None)
