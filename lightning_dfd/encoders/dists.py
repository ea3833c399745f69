"""DISTS network: VGG-16 with L2 pooling and the `DISTS_pytorch` package's alpha/beta weights.

DISTS compares global statistics of each channel (means: texture; variances and covariance:
structure), so it has no per-position form and no spatial map. Over a region of interest
(:meth:`DISTSNetwork.masked_distance`) the same statistics are weighted by the mask,
area-resized to each stage (stage 0 is the input image at full resolution); a full mask gives
the unmasked DISTS.

Example:
    >>> import torch
    >>> net = DISTSNetwork(weights="random")
    >>> x = torch.rand(1, 1, 64, 64)
    >>> abs(net.distance(net(x), net(x)).item()) < 1e-6
    True
"""

from __future__ import annotations

import os

import torch
from DISTS_pytorch.DISTS_pt import L2pooling
from torch import Tensor, nn

from lightning_dfd.encoders.backbones import WeightsArg, freeze, resolve_alias, vgg16_features
from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.masks import resized_mask
from lightning_dfd.preprocess import to_rgb
from lightning_dfd.weights import load_checkpoint, seeds_random_init

DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
#: (L2-pooling channels, first torchvision feature index, end index) per stage after the first.
_STAGES = ((64, 5, 9), (128, 10, 16), (256, 17, 23), (512, 24, 30))


class DISTSNetwork(FeatureDistanceNetwork):
    """Deep Image Structure and Texture Similarity on a VGG-16 trunk.

    Args:
        weights: VGG-16 weights: ``"imagenet"``, a registry name, a file path or ``"random"``.
    """

    @seeds_random_init
    def __init__(self, weights: WeightsArg = "imagenet"):
        super().__init__()
        features = vgg16_features(resolve_alias("vgg16", weights))
        stages = [features[0:4]]
        for channels, start, end in _STAGES:
            stages.append(nn.Sequential(L2pooling(channels=channels), *features[start:end]))
        self.stages = nn.ModuleList(stages)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, -1, 1, 1))
        # The weights table finds the wheel's file and checks its sha256 (a tampered file is refused).
        shipped = load_checkpoint("dists-alpha-beta")
        self.register_buffer("alpha", shipped["alpha"].float())
        self.register_buffer("beta", shipped["beta"].float())
        self.identity = f"dists-{os.fspath(weights)}"
        self.head_prefixes = ("alpha", "beta")
        self.min_size = 1  # L2 pooling pads: any size encodes (tried down to 1x1)
        freeze(self)

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] grayscale -> [0, 1] pseudo-RGB (DISTS' expected input)."""
        return to_rgb(images)

    def features(self, x: Tensor) -> list[Tensor]:
        """The input itself, then the five stage outputs."""
        out = [x]
        h = (x - self.mean) / self.std
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """``1 - sum_k (alpha_k * S1_k + beta_k * S2_k)`` with SSIM-like texture/structure terms."""
        return self._dists(feats_preds, feats_target, None)

    def masked_distance(self, feats_preds: list[Tensor], feats_target: list[Tensor], mask: Tensor) -> Tensor:
        """DISTS with every channel mean, variance and covariance weighted by ``mask``: ``(M,)``.

        Args:
            feats_preds: features of the predictions (:meth:`features`).
            feats_target: features of the targets.
            mask: ``(M, 1, H, W)`` float weights at the input resolution, area-resized to each
                stage (:func:`~lightning_dfd.masks.resized_mask`).

        Example:
            >>> import torch
            >>> net = DISTSNetwork(weights="random")
            >>> x, y = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
            >>> fx, fy = net(x), net(y)
            >>> full = torch.ones(2, 1, 32, 32)
            >>> bool(torch.allclose(net.masked_distance(fx, fy, full), net.distance(fx, fy), atol=1e-6))
            True
        """
        return self._dists(feats_preds, feats_target, mask)

    def _dists(self, feats_preds: list[Tensor], feats_target: list[Tensor], mask: Tensor | None) -> Tensor:
        c1 = c2 = 1e-6
        w_sum = self.alpha.sum() + self.beta.sum()
        alpha = torch.split(self.alpha / w_sum, DISTS_CHANNELS, dim=1)
        beta = torch.split(self.beta / w_sum, DISTS_CHANNELS, dim=1)
        dist1 = dist2 = 0
        for k, (x, y) in enumerate(zip(feats_preds, feats_target, strict=True)):
            weights = None if mask is None else _normalized(resized_mask(mask, x))
            x_mean = _spatial_mean(x, weights)
            y_mean = _spatial_mean(y, weights)
            s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            x_var = _spatial_mean((x - x_mean) ** 2, weights)
            y_var = _spatial_mean((y - y_mean) ** 2, weights)
            xy_cov = _spatial_mean(x * y, weights) - x_mean * y_mean
            s2 = (2 * xy_cov + c2) / (x_var + y_var + c2)
            dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
        return (1 - (dist1 + dist2)).flatten()


def _normalized(weights: Tensor) -> Tensor:
    """``(M, 1, h, w)`` weights scaled to sum to 1 per image."""
    return weights / weights.sum([2, 3], keepdim=True)


def _spatial_mean(x: Tensor, weights: Tensor | None) -> Tensor:
    """Per-channel mean over positions ``(M, C, 1, 1)``, weighted by normalised ``(M, 1, h, w)`` weights."""
    if weights is None:
        return x.mean([2, 3], keepdim=True)
    return (x * weights).sum([2, 3], keepdim=True)
