"""Every DFD on images scaled by 1e-30, 1e20 and 1e30: a right value or ``nan_strategy``, never a wrong one.

Issue 19: LPIPS-alex with ``normalization="none"`` on images scaled by 1e20 or 1e30 returned
exactly 0.0 for clearly different images, fp32 and bf16, without an error: ``lpips``' unit
normalisation squared activations of ~1e21, the norm overflowed to inf and every feature became 0.
TimmFD's ``"unit"`` distance, Med-VAE's GroupNorm and the LayerNorms of timm models (ConvNeXt,
ViT) failed the same way (0, or NaN); DISTS' statistics and L2 pooling overflowed to NaN. (SSFD's
z-score was already exact on the CPU; its power-of-two prescaling is checked bit for bit.)

What must hold, for every DFD of the catalog, scale, and precision (fp32 and bf16):

- ``normalization="minmax"``: the value equals the value of the unscaled images (every DFD is
  scale-invariant after min-max scaling).
- ``normalization="none"``: the value is finite and equals a float64 reference (the same network
  converted to double, its prepare / features / distance run by hand), or it is not finite, and
  then only because the exact value itself does not fit float32 (an MSE of features ~1e20 is
  ~1e40 > 3.4e38: ResNetFD, TimmFD ``"mse"`` / ``"mae"``), and ``nan_strategy="error"`` raises
  while ``"ignore"`` skips the image. The scale-1 value is not the target here: the encoders'
  input layers shift intensities by fixed amounts (LPIPS' [-1, 1] mapping, ImageNet mean / std),
  so the math itself is not scale-free. At 1e-30 both images are black to those layers and the
  exact value (float64 too) is 0; at 1e20 and 1e30 the shifts are negligible and a finite value
  must be the same at both scales, or 1e10 times larger for a mean absolute distance of
  unnormalised features (checked beside the reference).

On the code before the fix (5c332a2) the LPIPS (all four), DISTS, VAEFD and TimmFD ``"unit"`` /
ConvNeXt / ViT cases fail at 1e20 / 1e30 (0.0 or NaN against references of 0.03-0.7).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_dfd import DISTS, HFFD, LPIPS, SSFD, VAEFD, ResNetFD, TimmFD
from lightning_dfd.encoders.layers import GroupNorm
from lightning_dfd.encoders.medvae import MedVAEConfig
from lightning_dfd.encoders.ssfd import zscore
from lightning_dfd.encoders.timm import unit_normalize
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
    "hf_dinov2_mse": lambda **kw: HFFD(_TINY_HF["dinov2"], layers=(1, 2), **kw),
    "hf_dinov2_unit": lambda **kw: HFFD(_TINY_HF["dinov2"], layers=(1, 2), distance="unit", **kw),
}
#: kind -> folder of a tiny saved transformers model (written under pytest's tmp folder)
_TINY_HF: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _tiny_hf_models(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.hf_models import save_tiny

    _TINY_HF["dinov2"] = save_tiny("dinov2", tmp_path_factory.mktemp("hf") / "dinov2")
#: every DFD of the catalog -> the case that tests it (random weights stand in for the presets' files)
CATALOG_CASES = {"lpips_vgg": "lpips_vgg", "lpips_alex": "lpips_alex", "lpips_vgg_nolin": "lpips_vgg_nolin",
                 "dists": "dists", "resnet_fd": "resnetfd", "rinfd": "resnetfd", "ssfd": "ssfd",
                 "vaefd": "vaefd", "timm_fd": "timm_resnet18_mse", "hf_fd": "hf_dinov2_mse"}
#: degree k of value(s * images) = s**k * value(images) for huge s (0: every other case, whose
#: features are normalised; a mean squared distance has k = 2 but overflows float32 there)
HOMOGENEITY_DEGREE = {"resnetfd_mae": 1, "timm_resnet18_mae": 1, "resnetfd": 2, "timm_resnet18_mse": 2,
                      "hf_dinov2_mse": 2}
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
    """The metric's network in float64 (fp32, no options), on the same float32 inputs: ``(N,)``."""
    network = copy.deepcopy(metric.network)
    network.double()
    with torch.no_grad():
        p, t = (network.features(network.prepare(x.double()[:, None])) for x in (preds, target))
        return network.distance(p, t)


def test_every_catalog_dfd_is_covered():
    """A DFD added to the catalog must get a case here (same class, same preset options)."""
    from lightning_dfd.catalog import METRICS, PIXEL_METRICS

    assert sorted(CATALOG_CASES) == sorted(set(METRICS) - set(PIXEL_METRICS))
    for name, case in CATALOG_CASES.items():
        metric = build(case)
        assert type(metric).__name__ == METRICS[name][1], (name, case)
        for key, value in METRICS[name][2].items():
            if key != "weights":  # the presets' weight files are stood in for by random weights
                assert getattr(metric, key) == value, (name, case, key)


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
    huge = {}
    for scale in SCALES:
        preds, target = (x * scale for x in pair)
        values = huge[scale] = scores(metric, preds, target)
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
    # Beyond ~1e7 the encoders' fixed input shifts are negligible and every layer is homogeneous,
    # so the value scales as (1e30 / 1e20) ** degree: a check independent of the reference.
    if torch.isfinite(huge[1e20]).all() and torch.isfinite(huge[1e30]).all():
        expected_1e30 = huge[1e20] * 1e10 ** HOMOGENEITY_DEGREE.get(case, 0)
        torch.testing.assert_close(huge[1e30], expected_1e30, rtol=rtol, atol=atol)


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


def test_compiled_encoder_is_scale_safe_too(pair):
    """The scale-safe normalisations trace under torch.compile (aot_eager: no code generation)."""
    preds, target = (x * 1e20 for x in pair)
    eager = build("lpips_alex", normalization="none")
    compiled = build("lpips_alex", normalization="none", compile="aot_eager")
    with torch.inference_mode():
        torch.testing.assert_close(scores(compiled, preds, target), scores(eager, preds, target))
    assert compiled.encoder.__dict__["_compiled"] is not None


# ------------------------------------------------------------------- the scale-safe building blocks


def test_group_norm_is_exact_per_group_at_any_scale():
    """Each (image, group) is scaled on its own: a group of ~1 beside a group of ~1e30 stays exact."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 6, generator=g) + 0.5
    x[:, :4] *= 1e30  # group 0 huge, group 1 ordinary (2 groups)
    x[1] *= 1e-30
    norm = GroupNorm(2, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
        expected = F.group_norm(x.double(), 2, norm.weight.double(), norm.bias.double(), norm.eps)
        for layout in (torch.contiguous_format, torch.channels_last):
            torch.testing.assert_close(norm(x.contiguous(memory_format=layout)).double(), expected,
                                       rtol=1e-5, atol=1e-5)
        plain = F.group_norm(x, 2, norm.weight, norm.bias, norm.eps)  # nn.GroupNorm: overflowed
        assert not torch.allclose(plain.double(), expected, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("scale", [2.0**-100, 1e-30, 1.0, 1e20, 2.0**100, 1e30])
def test_unit_normalize_and_zscore_against_float64(scale):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 5, 5, generator=g) * scale
    exact = x.double() / (x.double().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
    torch.testing.assert_close(unit_normalize(x).double(), exact, rtol=1e-6, atol=1e-30)
    images = torch.rand(3, 1, 16, 16, generator=g)
    z = zscore(images * scale)
    flat = (images * scale).double().flatten(1)
    z64 = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    torch.testing.assert_close(z.double().flatten(1), z64, rtol=1e-5, atol=1e-5)
    if scale in (2.0**-100, 2.0**100):  # an exact power of two cancels bit for bit
        assert torch.equal(z, zscore(images))


def test_timm_norm_hooks_scale_each_unit_on_its_own():
    """ConvNeXt's LayerNorm2d (channels of each position), ViT's LayerNorm (each token), GroupNorm."""
    from timm.layers import LayerNorm2d

    from lightning_dfd.encoders.timm import make_norms_scale_safe

    g = torch.Generator().manual_seed(2)
    maps = torch.randn(2, 8, 4, 4, generator=g)
    maps[:, :, :2] *= 1e25  # huge positions beside ordinary ones: each position is its own unit
    tokens = torch.randn(2, 5, 8, generator=g)
    tokens[:, :2] *= 1e25

    def layer_norm_2d(x, m):
        return F.layer_norm(x.permute(0, 2, 3, 1), (8,), *params(m), m.eps).permute(0, 3, 1, 2)

    def params(m):
        return m.weight.double(), m.bias.double()

    cases = [(LayerNorm2d(8), maps, layer_norm_2d),
             (nn.LayerNorm(8), tokens, lambda x, m: F.layer_norm(x, (8,), *params(m), m.eps)),
             (nn.GroupNorm(2, 8), maps, lambda x, m: F.group_norm(x, 2, *params(m), m.eps))]
    for module, x, reference in cases:
        with torch.no_grad():
            module.weight.uniform_(0.5, 1.5, generator=g)
            module.bias.uniform_(-0.5, 0.5, generator=g)
            plain = module(x)
            assert make_norms_scale_safe(module) == 1
            expected = reference(x.double(), module)
            torch.testing.assert_close(module(x).double(), expected, rtol=1e-5, atol=1e-5)
            assert not torch.allclose(plain.double(), expected, atol=1e-3)  # unhooked: overflowed
