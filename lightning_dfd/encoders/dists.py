"""DISTS network: VGG-16 with L2 pooling and the `DISTS_pytorch` package's alpha/beta weights.

DISTS compares global statistics of each channel (means: texture; variances and covariance:
structure), so it has no per-position form and no spatial map. Over a region of interest
(:meth:`DISTSNetwork.masked_distance`) the same statistics are weighted by the mask,
area-resized to each stage (stage 0 is the input image at full resolution); a full mask gives
the unmasked DISTS.

Scale safety (``normalization="none"`` on huge images): ``DISTS_pytorch`` squares features in its
L2 pooling and in every mean, variance and covariance, which overflow float32 beyond ~1e19. Here
both are computed on features divided by a power of two per (image, channel) (exact; exactly 1,
so bit-identical, up to ~1e12: :func:`~lightning_dfd.encoders.layers.downscale_factor`), with the
stabilising constants scaled alike, so huge inputs get their exact DISTS.

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
import torch.nn.functional as F
from DISTS_pytorch.DISTS_pt import L2pooling
from torch import Tensor, nn

from lightning_dfd.encoders.backbones import WeightsArg, freeze, resolve_alias, vgg16_features
from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.encoders.layers import downscale_factor, max_magnitude
from lightning_dfd.masks import resized_mask
from lightning_dfd.preprocess import to_rgb
from lightning_dfd.weights import load_checkpoint, seeds_random_init

DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)
#: (L2-pooling channels, first torchvision feature index, end index) per stage after the first.
_STAGES = ((64, 5, 9), (128, 10, 16), (256, 17, 23), (512, 24, 30))


class ScaleSafeL2pooling(L2pooling):
    """``DISTS_pytorch``'s L2 pooling (same buffer, same values) without overflow of its squares.

    ``sqrt(conv(x ** 2) + 1e-12)`` computed as ``s * sqrt(conv((x / s) ** 2) + 1e-12 / s ** 2)``
    with a power of two ``s`` per (image, channel), exactly 1 up to magnitudes of ~1e12.

    Example:
        >>> import torch
        >>> pool, x = ScaleSafeL2pooling(channels=2), torch.rand(1, 2, 8, 8)
        >>> bool(torch.equal(pool(x), L2pooling.forward(pool, x)))
        True
        >>> bool(torch.allclose(pool(x * 2.0**100) / 2.0**100, pool(x)))
        True
    """

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002, D102 - the name L2pooling uses
        s = downscale_factor(max_magnitude(input, dim=(2, 3))).to(input.dtype)
        x = input / s
        out = F.conv2d(x**2, self.filter, stride=self.stride, padding=self.padding, groups=x.shape[1])
        # out + 1e-12 / s**2, adding 1e-12 as DISTS_pytorch does (bit-identical when s == 1)
        return torch.add(out, s.pow(-2), alpha=1e-12).sqrt() * s


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
            stages.append(nn.Sequential(ScaleSafeL2pooling(channels=channels), *features[start:end]))
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
            # One power of two per (image, channel) for both images: every statistic below and the
            # constants scale by 1 / scale**2, which cancels in s1 and s2 (scale == 1 up to ~1e12).
            scale = downscale_factor(torch.maximum(max_magnitude(x, dim=(2, 3)),
                                                   max_magnitude(y, dim=(2, 3)))).to(x.dtype)
            x, y, inv2 = x / scale, y / scale, scale.pow(-2)
            x_mean = _spatial_mean(x, weights)
            y_mean = _spatial_mean(y, weights)
            s1 = (torch.add(2 * x_mean * y_mean, inv2, alpha=c1)
                  / torch.add(x_mean**2 + y_mean**2, inv2, alpha=c1))
            dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
            x_var = _spatial_mean((x - x_mean) ** 2, weights)
            y_var = _spatial_mean((y - y_mean) ** 2, weights)
            xy_cov = _spatial_mean(x * y, weights) - x_mean * y_mean
            s2 = torch.add(2 * xy_cov, inv2, alpha=c2) / torch.add(x_var + y_var, inv2, alpha=c2)
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
