"""Spatial DFD maps, ROI-masked DFDs, the foreground helper and masked pixel metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dfd import DISTS, LPIPS, SSFD, ResNetFD, TimmFD
from lightning_dfd import functional as F
from lightning_dfd.preprocess import normalize_pair, validated_images
from lightning_dfd.spatial import (
    SpatialDFDMixin,
    distance_map,
    layer_maps,
    masked_distances,
    masked_nmse,
    masked_psnr,
    masked_ssim,
)
from tests.metric_fixtures import minmax01, mr_like_pair, rgb

H = W = 96
#: the corrupted square (preds only) and the ROI, far from each other
CORRUPT = (slice(70, 90), slice(70, 90))
ROI = (slice(8, 40), slice(8, 40))

NETWORKS = {
    "lpips_alex": lambda: LPIPS(net="alex", weights="random"),
    "lpips_vgg_nolin": lambda: LPIPS(net="vgg", linear=False, weights="random"),
    "resnet_mse": lambda: ResNetFD(weights="random"),
    "resnet_mae_2layers": lambda: ResNetFD(weights="random", layers=("layer2.3.conv3", "layer3.3.conv3"),
                                           distance="mae"),
    "ssfd_2layers": lambda: SSFD(weights="random", layers=("block2_relu1", "block4_relu1")),
    "timm_unit": lambda: TimmFD(model_name="resnet18", layers=(1, 2), weights="random", distance="unit"),
    "timm_mae": lambda: TimmFD(model_name="resnet18", layers=(2,), weights="random", distance="mae"),
    "timm_vit_mse": lambda: TimmFD(model_name="vit_tiny_patch16_224", layers=(-1,), weights="random"),
}


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request):
    if request.param.startswith("timm"):
        pytest.importorskip("timm")  # the [timm] extra
    torch.manual_seed(0)
    return NETWORKS[request.param]().network


def phantom(n: int = 2, seed: int = 0) -> torch.Tensor:
    """A textured disk on faint noise, ``(n, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    disk = ((xx**2 + yy**2) < 0.6).float() * (0.6 + 0.3 * torch.sin(6 * xx) * torch.cos(5 * yy))
    return disk[None].repeat(n, 1, 1) + 0.02 * torch.rand(n, H, W, generator=g)


def pair_with_corruption(n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(target, preds, corrupted preds)``: mild global noise, plus a local corruption."""
    g = torch.Generator().manual_seed(1)
    target = phantom(n)
    preds = target + 0.02 * torch.randn(n, H, W, generator=g)
    corrupted = preds.clone()
    corrupted[:, CORRUPT[0], CORRUPT[1]] += 0.5 * torch.rand(n, 20, 20, generator=g)
    return target, preds, corrupted


def roi_mask(n: int = 2) -> torch.Tensor:
    mask = torch.zeros(n, H, W, dtype=torch.bool)
    mask[:, ROI[0], ROI[1]] = True
    return mask


def encoded(network, preds, target, normalization):
    p, t, _ = validated_images(preds, target, "error")
    p01, t01 = normalize_pair(p, t, normalization)
    return network(p01), network(t01)


# ----------------------------------------------------------------------------------------- maps


@pytest.mark.parametrize(("net", "arch", "linear"), [
    ("vgg", "vgg16", True), ("alex", "alexnet", True), ("vgg", "vgg16", False)
])
def test_lpips_map_matches_lpips_package_spatial(net, arch, linear, torchvision_checkpoint, reference_hub):
    import lpips

    ckpt = torchvision_checkpoint(arch)
    preds, target = mr_like_pair()
    ours = distance_map(LPIPS(net=net, linear=linear, weights=ckpt).network, preds, target)
    reference = lpips.LPIPS(net=net, lpips=linear, pretrained=True, spatial=True, verbose=False)
    with torch.no_grad():
        expected = reference(rgb(minmax01(preds)) * 2 - 1, rgb(minmax01(target)) * 2 - 1)
    assert ours.shape == expected.shape == (3, 1, 64, 48)
    assert (ours - expected).abs().max() <= 1e-5
    assert expected.amax() > 1e-3  # a real map was compared


@pytest.mark.parametrize("normalization", ["minmax", "target"])
def test_distance_is_sum_of_layer_map_means_and_map_mean_is_close(network, normalization):
    target, preds, _ = pair_with_corruption()
    fp, ft = encoded(network, preds, target, normalization)
    maps = layer_maps(network, fp, ft)
    assert len(maps) == len(fp) and all(m.shape[:2] == (2, 1) for m in maps)
    assert all(m.shape[-2:] == f.shape[-2:] for m, f in zip(maps, fp, strict=True))
    scalar = network.distance(fp, ft)
    torch.testing.assert_close(sum(m.mean(dim=(-2, -1)).flatten() for m in maps), scalar,
                               rtol=1e-6, atol=1e-9)
    full = distance_map(network, preds, target, normalization)
    assert full.shape == (2, 1, H, W) and (full >= 0).all()
    torch.testing.assert_close(full.mean(dim=(1, 2, 3)), scalar, rtol=1e-3, atol=0)
    assert scalar.min() > 0


def test_identical_images_give_an_all_zero_map(network):
    target = phantom()
    assert distance_map(network, target, target.clone()).abs().max() == 0


def test_local_corruption_is_larger_inside_the_region(network):
    target, _, corrupted = pair_with_corruption()
    # the same target alone, so nothing but the corruption differs
    preds = target.clone()
    preds[:, CORRUPT[0], CORRUPT[1]] = corrupted[:, CORRUPT[0], CORRUPT[1]]
    m = distance_map(network, preds, target, normalization="target")
    inside = m[:, :, CORRUPT[0], CORRUPT[1]].mean(dim=(1, 2, 3))
    outside = m[:, :, :50, :50].mean(dim=(1, 2, 3))
    assert (inside > 5 * outside).all(), (inside, outside)


def test_complex_multichannel_maps_are_per_channel():
    net = ResNetFD(weights="random").network
    preds, target = (torch.randn(2, 3, 48, 40, dtype=torch.complex64) for _ in range(2))
    m = distance_map(net, preds, target)
    assert m.shape == (2, 3, 48, 40)
    torch.testing.assert_close(m[:, 1:2], distance_map(net, preds[:, 1].abs(), target[:, 1].abs()))


def test_map_chunks_equal_one_pass_and_keep_gradients():
    net = LPIPS(net="alex", weights="random").network
    target, preds, _ = pair_with_corruption(n=3)
    torch.testing.assert_close(distance_map(net, preds, target, max_batch=2),
                               distance_map(net, preds, target), rtol=1e-5, atol=1e-7)
    preds = preds.clone().requires_grad_(True)
    distance_map(net, preds, target).sum().backward()
    assert preds.grad is not None and preds.grad.abs().sum() > 0


def test_networks_without_per_position_form_raise_naming_the_dfd():
    with pytest.raises(NotImplementedError, match="DISTSNetwork"):
        distance_map(DISTS(weights="random").network, phantom(1), phantom(1))


def test_non_finite_predictions_error_or_propagate():
    net = ResNetFD(weights="random").network
    preds, target = phantom(2), phantom(2, seed=3)
    preds[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        distance_map(net, preds, target)
    m = distance_map(net, preds, target, nan_strategy="propagate")
    assert torch.isfinite(m[0]).all() and torch.isnan(m[1]).all()
    with pytest.raises(ValueError, match="nan_strategy"):
        distance_map(net, preds, target, nan_strategy="ignore")


def test_mixin_uses_the_metrics_options():
    assert issubclass(LPIPS, SpatialDFDMixin)  # every DFD has distance_map / masked_distances
    metric = LPIPS(net="alex", weights="random", normalization="target")
    target, preds, _ = pair_with_corruption()
    torch.testing.assert_close(metric.distance_map(preds, target),
                               distance_map(metric.network, preds, target, "target"))
    metric.update(preds, target)
    full = torch.ones(2, H, W, dtype=torch.bool)
    torch.testing.assert_close(metric.masked_distances(preds, target, full).mean(), metric.compute(),
                               rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("normalization", ["minmax", "target", "none"])
def test_full_mask_equals_unmasked_value(network, normalization):
    target, preds, _ = pair_with_corruption()
    full = torch.ones(2, H, W, dtype=torch.bool)
    fp, ft = encoded(network, preds, target, normalization)
    torch.testing.assert_close(masked_distances(network, preds, target, full, normalization),
                               network.distance(fp, ft), rtol=1e-5, atol=1e-9)


def test_corruption_outside_the_mask_barely_changes_the_masked_dfd(network):
    target, preds, corrupted = pair_with_corruption()
    mask, full = roi_mask(), torch.ones(2, H, W, dtype=torch.bool)
    d = {(name, p_name): masked_distances(network, p, target, m, normalization="target")
         for name, m in (("roi", mask), ("full", full)) for p_name, p in (("a", preds), ("b", corrupted))}
    masked_change = (d["roi", "b"] - d["roi", "a"]).abs()
    unmasked_change = (d["full", "b"] - d["full", "a"]).abs()
    assert (unmasked_change > 0).all()
    assert (masked_change < 0.2 * unmasked_change).all(), (masked_change, unmasked_change)


def test_minmax_normalisation_lets_an_outside_artefact_in():
    """The documented caveat: a bright artefact rescales the whole image under "minmax"."""
    net = LPIPS(net="alex", weights="random").network
    target, preds, corrupted = pair_with_corruption()
    mask, full = roi_mask(), torch.ones(2, H, W, dtype=torch.bool)

    def change(m, normalization):
        return (masked_distances(net, corrupted, target, m, normalization)
                - masked_distances(net, preds, target, m, normalization)).abs()

    leak = {norm: change(mask, norm) / change(full, norm) for norm in ("minmax", "target")}
    assert (leak["minmax"] > 0.05).all() and (leak["minmax"] > 2 * leak["target"]).all(), leak


def test_mask_inside_the_corruption_sees_it_most():
    net = ResNetFD(weights="random").network
    target, preds, corrupted = pair_with_corruption()
    inside = torch.zeros(2, H, W, dtype=torch.bool)
    inside[:, CORRUPT[0], CORRUPT[1]] = True
    full = torch.ones_like(inside)
    values = {name: masked_distances(net, corrupted, target, m, "target")
              for name, m in (("inside", inside), ("full", full), ("roi", roi_mask()))}
    assert (values["inside"] > 2 * values["full"]).all() and (values["full"] > values["roi"]).all(), values


def test_mask_shapes_channels_and_errors():
    net = SSFD(weights="random").network
    preds, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 4:20, 6:30] = True
    per_image = masked_distances(net, preds, target, mask)
    assert per_image.shape == (6,)
    torch.testing.assert_close(masked_distances(net, preds, target, mask[:, None]), per_image)
    torch.testing.assert_close(masked_distances(net, preds, target, mask[:, None].expand(2, 3, 32, 32)),
                               per_image)
    torch.testing.assert_close(masked_distances(net, preds[:, 2], target[:, 2], mask), per_image[2::3])
    torch.testing.assert_close(masked_distances(net, preds, target, mask, max_batch=4), per_image)
    with pytest.raises(TypeError, match="torch.bool"):
        masked_distances(net, preds, target, mask.float())
    with pytest.raises(ValueError, match="must have shape"):
        masked_distances(net, preds, target, mask[:, :16])
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ValueError, match=r"empty .* images \[3, 4, 5\]"):
        masked_distances(net, preds, target, empty)


def test_a_single_pixel_mask_never_vanishes_at_deep_layers():
    net = ResNetFD(weights="random").network  # 1/16 resolution
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 33, 17] = True
    value = masked_distances(net, torch.rand(1, 64, 64), torch.rand(1, 64, 64), mask)
    assert torch.isfinite(value).all() and value > 0


# ---------------------------------------------------------------------------------- pixel metrics


def test_masked_pixel_metrics_with_a_full_mask_equal_the_unmasked_ones():
    preds, target = mr_like_pair(n=3)
    full = torch.ones(3, 64, 48, dtype=torch.bool)
    for masked, plain in ((masked_psnr, F.psnr), (masked_ssim, F.ssim)):
        torch.testing.assert_close(masked(preds, target, full, reduction="none").float(),
                                   plain(preds, target, reduction="none").float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(masked_nmse(preds, target, full, reduction="none").float(),
                               F.nmse(preds, target, reduction="none").float(), rtol=1e-6, atol=1e-9)


def test_masked_pixel_metrics_equal_references_on_the_masked_pixels():
    metrics = pytest.importorskip("skimage.metrics")
    preds, target = mr_like_pair(n=2, seed=4)
    mask = torch.zeros(2, 64, 48, dtype=torch.bool)
    mask[:, 10:50, 5:30] = True
    mask[1, 40:60, 30:45] = True
    p, t = preds.abs().double().numpy(), target.abs().double().numpy()
    psnr, nmse, ssim = (f(preds, target, mask, reduction="none")
                        for f in (masked_psnr, masked_nmse, masked_ssim))
    for k in range(2):
        m = mask[k].numpy()
        dr = t[k].max()
        mse = ((p[k] - t[k])[m] ** 2).mean()
        assert float(psnr[k]) == pytest.approx(10 * np.log10(dr**2 / mse), rel=1e-10)
        expected_nmse = ((p[k] - t[k])[m] ** 2).sum() / (t[k][m] ** 2).sum()
        assert float(nmse[k]) == pytest.approx(expected_nmse, rel=1e-10)
        _, s_map = metrics.structural_similarity(t[k], p[k], data_range=dr, full=True)
        r = 3
        inner = m[r:-r, r:-r]
        assert float(ssim[k]) == pytest.approx(s_map[r:-r, r:-r][inner].mean(), rel=1e-8)


def test_masked_pixel_metrics_ignore_errors_outside_the_mask():
    target = phantom(1)
    preds = target.clone()
    preds[0, CORRUPT[0], CORRUPT[1]] += 1.0
    mask = roi_mask(1)
    assert float(masked_nmse(preds, target, mask)) == 0.0
    assert float(masked_ssim(preds, target, mask)) == pytest.approx(1.0)
    assert torch.isinf(masked_psnr(preds, target, mask))
    edge = torch.zeros(1, H, W, dtype=torch.bool)
    edge[0, :2] = True
    with pytest.raises(ValueError, match="border"):
        masked_ssim(preds, target, edge)


def test_metric_update_with_mask_equals_the_masked_function_and_full_mask_equals_unmasked():
    from lightning_dfd import ResNetFD
    from lightning_dfd.spatial import masked_distances

    torch.manual_seed(0)
    preds, target = torch.rand(3, 2, 48, 48), torch.rand(3, 2, 48, 48)
    mask = torch.zeros(3, 48, 48, dtype=torch.bool)
    mask[:, 8:40, 10:30] = True
    metric = ResNetFD(weights="random", reduction="none")
    metric.update(preds, target, sample_ids=torch.arange(3), mask=mask)
    expected = masked_distances(metric.network, preds, target, mask, normalization=metric.normalization)
    torch.testing.assert_close(metric.compute(), expected)
    assert metric.compute_per_image()["ids"].tolist() == [0, 0, 1, 1, 2, 2]
    full, plain = metric.clone(), metric.clone()
    full.reset(), plain.reset()
    full.update(preds, target, mask=torch.ones(3, 48, 48, dtype=torch.bool))
    plain.update(preds, target)
    torch.testing.assert_close(full.compute(), plain.compute(), rtol=1e-5, atol=1e-7)
    before = metric.compute().clone()
    with pytest.raises(ValueError, match="mask"):
        metric.update(preds, target, mask=torch.ones(2, 48, 48, dtype=torch.bool))
    torch.testing.assert_close(metric.compute(), before)  # a rejected mask changes no state


@pytest.mark.parametrize("name", ["psnr", "ssim", "nmse"])
def test_pixel_metric_update_with_mask(name):
    evaluate = pytest.importorskip("fastmri.evaluate")  # the [recon] extra

    from lightning_dfd import NMSE, PSNR, SSIM
    from lightning_dfd.spatial import masked_nmse, masked_psnr, masked_ssim

    cls = {"psnr": PSNR, "ssim": SSIM, "nmse": NMSE}[name]
    torch.manual_seed(0)
    target = torch.rand(4, 24, 24)
    preds = target + 0.1 * torch.randn(4, 24, 24)
    full = torch.ones(4, 24, 24, dtype=torch.bool)
    mask = torch.zeros(4, 24, 24, dtype=torch.bool)
    mask[:, 4:20, 6:18] = True
    # a full mask is the unmasked metric, per volume as fastmri.evaluate
    plain, masked_full = cls(), cls()
    ids, dr = [0, 0, 1, 1], torch.ones(4)
    plain.update(preds, target, data_range=dr, volume_ids=ids)
    masked_full.update(preds, target, data_range=dr, volume_ids=ids, mask=full)
    torch.testing.assert_close(masked_full.compute(), plain.compute())
    # per image (no volume ids): the masked functions of lightning_dfd.spatial
    per_image = cls(reduction="none")
    per_image.update(preds, target, data_range=dr, mask=mask)
    if name == "nmse":
        expected = masked_nmse(preds, target, mask, reduction="none")
    else:
        expected = {"psnr": masked_psnr, "ssim": masked_ssim}[name](preds, target, mask, dr, reduction="none")
    torch.testing.assert_close(per_image.compute().double(), expected.double(), rtol=1e-6, atol=1e-9)
    if name == "psnr":  # per volume: the masked pixels of all its slices pooled, as fastMRI pools voxels
        vol = cls()
        vol.update(preds, target, data_range=dr, volume_ids=ids, mask=mask)
        values = []
        for v in (0, 1):
            rows = [i for i, x in enumerate(ids) if x == v]
            m = mask[rows].numpy()
            values.append(evaluate.psnr(target[rows].numpy()[m].astype(np.float64),
                                        preds[rows].numpy()[m].astype(np.float64), maxval=1.0))
        assert float(vol.compute()) == pytest.approx(np.mean(values), rel=1e-6)
    before = [s.clone() for s in getattr(per_image, per_image._stats_state)]
    with pytest.raises(ValueError, match="mask"):
        per_image.update(preds, target, mask=torch.zeros(4, 24, 24, dtype=torch.bool))
    after = getattr(per_image, per_image._stats_state)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("cls_name", ["LPIPS", "DISTS", "ResNetFD"])
def test_masked_second_epoch_hits_the_feature_cache_with_equal_values(cls_name):
    """Issue: masked updates ran their own encoder loop and never read the target-feature cache."""
    import lightning_dfd

    torch.manual_seed(0)
    preds, target = torch.rand(4, 48, 48), torch.rand(4, 48, 48)
    mask = torch.zeros(4, 48, 48, dtype=torch.bool)
    mask[:, 6:42, 8:36] = True
    ids = torch.arange(4)
    kwargs = {"net": "alex"} if cls_name == "LPIPS" else {}
    metric = getattr(lightning_dfd, cls_name)(weights="random", reduction="none", feature_cache=True,
                                              **kwargs)
    values = []
    for _epoch in range(2):
        metric.reset()
        for part in (slice(0, 2), slice(2, 4)):
            metric.update(preds[part], target[part], sample_ids=ids[part], mask=mask[part])
        values.append(metric.compute())
    stats = metric.feature_cache.stats
    assert stats.misses == 4 and stats.hits == 4  # every image of the second epoch from the cache
    torch.testing.assert_close(values[1], values[0], rtol=1e-6, atol=1e-8)
