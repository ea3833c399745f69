"""Every DFD on images scaled by 1e-30, 1e20 and 1e30: a right value or ``nan_strategy``, never a wrong one.

Issue 19: LPIPS-alex with ``normalization="none"`` on images scaled by 1e20 or 1e30 returned
exactly 0.0 for clearly different images, fp32 and bf16, without an error: ``lpips``' unit
normalisation squared activations of ~1e21, the norm overflowed to inf and every feature became 0.
SSFD's z-score (its variance), Med-VAE's GroupNorm and the LayerNorms of timm models (ConvNeXt,
ViT) failed the same way; DISTS' statistics and L2 pooling overflowed to NaN.

What must hold, for every DFD, scale, and precision (fp32 and bf16):

- ``normalization="minmax"``: the value equals the value of the unscaled images (every DFD is
  scale-invariant after min-max scaling).
- ``normalization="none"``: the value is finite and equals a float64 reference (the same network
  converted to double, its prepare / features / distance run by hand), or it is not finite, and
  then only because the exact value itself does not fit float32 (an MSE of features ~1e20 is
  ~1e40 > 3.4e38), and ``nan_strategy="error"`` raises while ``"ignore"`` skips the image.

The LPIPS, SSFD, VAEFD, TimmFD ``"unit"`` and ConvNeXt / ViT cases at 1e20 / 1e30 fail on the code
before the fix (0.0, or the same value for every image, against a reference of ~0.1).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from lightning_dfd import DISTS, LPIPS, SSFD, VAEFD, ResNetFD, TimmFD
from lightning_dfd.encoders.medvae import MedVAEConfig
from lightning_dfd.metrics.base import DeepFeatureDistance

pytest.importorskip("timm")

SCALES = (1e-30, 1e20, 1e30)
FP32_MAX = torch.finfo(torch.float32).max
#: a small encoder with Med-VAE's layout: 8x compression, 4 latent channels, middle attention
SMALL_VAE = MedVAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)

#: name -> metric factory (keyword arguments: the metric options under test)
CASES: dict[str, Callable[..., DeepFeatureDistance]] = {
    "lpips_alex": lambda **kw: LPIPS(net="alex", weights="random", **kw),
    "lpips_alex_nolin": lambda **kw: LPIPS(net="alex", linear=False, weights="random", **kw),
    "lpips_vgg": lambda **kw: LPIPS(net="vgg", weights="random", **kw),
    "lpips_vgg_nolin": lambda **kw: LPIPS(net="vgg", linear=False, weights="random", **kw),
    "dists": lambda **kw: DISTS(weights="random", **kw),
    "ssfd": lambda **kw: SSFD(weights="random", **kw),
    "resnetfd": lambda **kw: ResNetFD(weights="random", **kw),
    "resnetfd_mae": lambda **kw: ResNetFD(weights="random", distance="mae", **kw),
    "vaefd": lambda **kw: VAEFD(weights="random", config=SMALL_VAE, **kw),
    "timm_resnet18_mse": lambda **kw: TimmFD("resnet18", layers=(1, 2), weights="random", **kw),
    "timm_resnet18_mae": lambda **kw: TimmFD("resnet18", layers=(1, 2), weights="random",
                                             distance="mae", **kw),
    "timm_resnet18_unit": lambda **kw: TimmFD("resnet18", layers=(1, 2), weights="random",
                                              distance="unit", **kw),
    "timm_convnext_mse": lambda **kw: TimmFD("convnext_atto", layers=(1, 2), weights="random", **kw),
    "timm_vit_unit": lambda **kw: TimmFD("vit_tiny_patch16_224", layers=(1, 3), weights="random",
                                         distance="unit", **kw),
}
#: relative / absolute tolerance against the float64 reference (and against scale 1 for minmax)
TOLERANCE = {"fp32": (1e-3, 1e-6), "bf16": (5e-2, 1e-4)}


def build(case: str, **options) -> DeepFeatureDistance:
    """The metric of ``case``, with the same random weights on every call."""
    torch.manual_seed(0)
    return CASES[case](reduction="none", **options)


def images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two clearly different pairs of 64x64 images in [0, 1] (smooth structure plus texture)."""
    g = torch.Generator().manual_seed(19)
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    target = torch.stack([0.5 + 0.4 * torch.sin(6 * x + 3 * y), (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.1])
    target = 0.8 * target.float() + 0.2 * torch.rand(2, 64, 64, generator=g)
    preds = torch.rand(2, 64, 64, generator=g)
    return preds, target


def scores(metric: DeepFeatureDistance, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    metric.reset()
    with torch.no_grad():
        metric.update(preds, target)
    return metric.compute().double()


def float64_reference(metric: DeepFeatureDistance, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The metric's network in float64 (fp32 options), on the same (float32) inputs: ``(N,)``."""
    network = copy.deepcopy(metric.network)
    network.set_options()
    network.double()
    with torch.no_grad():
        p, t = (network.features(network.prepare(x.double()[:, None])) for x in (preds, target))
        return network.distance(p, t)


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    return images()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_minmax_value_does_not_depend_on_the_scale(case, precision, pair):
    preds, target = pair
    metric = build(case, precision=precision)
    base = scores(metric, preds, target)
    assert torch.isfinite(base).all() and (base > 0).all(), base
    rtol, atol = TOLERANCE[precision]
    for scale in SCALES:
        torch.testing.assert_close(scores(metric, preds * scale, target * scale), base, rtol=rtol, atol=atol,
                                   msg=lambda m, s=scale: f"{case} {precision} scale {s}: {m}")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_unnormalised_value_is_exact_or_follows_nan_strategy(case, precision, pair):
    metric = build(case, precision=precision, normalization="none", nan_strategy="propagate")
    rtol, atol = TOLERANCE[precision]
    for scale in SCALES:
        preds, target = (x * scale for x in pair)
        values = scores(metric, preds, target)
        expected = float64_reference(metric, preds, target)
        assert torch.isfinite(expected).all(), (case, scale, expected)
        finite = torch.isfinite(values)
        where = f"{case} {precision} scale {scale}"
        # Finite: the exact value (never 0 for these clearly different images, as before the fix).
        torch.testing.assert_close(values[finite], expected[finite], rtol=rtol, atol=atol,
                                   msg=lambda m, w=where: f"{w}: {m}")
        if scale > 1:
            assert (values[finite] != 0).all(), (where, values)
        # Not finite: only where the exact value itself overflows float32 ...
        assert (expected[~finite] > FP32_MAX).all(), (where, values, expected)
        if finite.all():
            continue
        # ... and then nan_strategy decides: "error" raises, "ignore" skips and counts.
        strict = build(case, precision=precision, normalization="none", nan_strategy="error")
        with pytest.raises(ValueError, match=r"not finite \(NaN or inf\) for images .*nan_strategy='ignore'"):
            strict.update(preds, target)
        assert strict.skipped == 0 and strict.values == []  # a refused batch leaves no trace
        lenient = build(case, precision=precision, normalization="none", nan_strategy="ignore")
        kept = scores(lenient, preds, target)
        assert int(lenient.skipped) == int((~finite).sum())
        torch.testing.assert_close(kept, values[finite])


def test_issue_case_lpips_alex_at_1e20_is_the_exact_value_not_zero(pair):
    """The reported case: 0.0 for clearly different images, fp32 and bf16, no error."""
    preds, target = pair
    for precision in ("fp32", "bf16"):
        metric = build("lpips_alex", precision=precision, normalization="none")
        for scale in (1e20, 1e30):
            values = scores(metric, preds * scale, target * scale)
            expected = float64_reference(metric, preds * scale, target * scale)
            assert (expected > 0.01).all()
            torch.testing.assert_close(values, expected, rtol=TOLERANCE[precision][0], atol=0)
