"""``VolumeDFD``: 2D DFDs on 3D volumes plane by plane, checked against the 2D metric itself."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.distributed as dist
from torchmetrics import MetricCollection

from lightning_dfd import LPIPS, PSNR, SSFD, ResNetFD, VolumeDFD
from lightning_dfd.metrics import DFDCollection
from lightning_dfd.metrics.volume import isotropic
from tests.ddp import run_ddp

SHAPE = (2, 6, 20, 16)  # N, D, H, W: every plane has a different slice shape


def _pair(shape=SHAPE, seed=0, noise=0.2):
    """Smooth volumes with structure along every axis, and a noisy prediction."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = shape[-3:]
    z, y, x = torch.meshgrid(torch.linspace(-1, 1, d), torch.linspace(-1, 1, h), torch.linspace(-1, 1, w),
                             indexing="ij")
    blob = torch.exp(-((x - 0.2 * z) ** 2 + (y + 0.1) ** 2 + 0.5 * z**2) * 3)
    target = blob + 0.3 * torch.rand(shape, generator=g)
    return target + noise * torch.rand(shape, generator=g), target


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return ResNetFD(weights="random", reduction="none", max_batch=4)


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(1)
    return LPIPS(net="alex", weights="random", reduction="none", max_batch=3)  # 31 px minimum


def _fresh(metric):
    twin = copy.deepcopy(metric)
    twin.reset()
    return twin


def _per_volume_2d(metric, slices_p, slices_t):
    """The 2D metric's own mean over each volume's slices: ``(V, S, h, w)`` -> ``(V,)``."""
    ref = _fresh(metric)
    v, s = slices_p.shape[:2]
    ref.update(slices_p.reshape(v * s, *slices_p.shape[2:]), slices_t.reshape(v * s, *slices_t.shape[2:]))
    return ref.compute().reshape(v, s).double().mean(dim=1)


# ------------------------------------------------------------------ values against the 2D metric


def test_axial_only_is_exactly_the_mean_of_the_2d_metric_over_each_volumes_slices(alex):
    preds, target = _pair((3, 5, 40, 36))
    volume = VolumeDFD(_fresh(alex), planes=("axial",), reduction="none")
    volume.update(preds, target)
    expected = _per_volume_2d(alex, preds, target).float()
    assert torch.equal(volume.compute(), expected)  # same slices, same chunks: bit for bit
    mean = VolumeDFD(_fresh(alex), planes="axial")
    mean.update(preds[:2], target[:2])
    mean.update(preds[2:], target[2:])
    assert float(mean.compute()) == pytest.approx(float(expected.double().mean()), rel=1e-6)


def test_coronal_and_sagittal_are_the_2d_metric_on_the_permuted_volumes(resnet):
    preds, target = _pair()
    for plane, order in (("coronal", (0, 2, 1, 3)), ("sagittal", (0, 3, 1, 2))):
        volume = VolumeDFD(_fresh(resnet), planes=(plane,), reduction="none")
        volume.update(preds, target)
        expected = _per_volume_2d(resnet, preds.permute(order), target.permute(order)).float()
        torch.testing.assert_close(volume.compute(), expected, rtol=1e-6, atol=0)


def test_three_planes_are_the_mean_of_the_three_single_plane_values(resnet):
    preds, target = _pair()
    single = []
    for plane in ("axial", "coronal", "sagittal"):
        metric = VolumeDFD(_fresh(resnet), planes=plane, reduction="none")
        metric.update(preds, target)
        single.append(metric.compute().double())
    three = VolumeDFD(_fresh(resnet), reduction="none")
    three.update(preds, target)
    torch.testing.assert_close(three.compute().double(), torch.stack(single).mean(0), rtol=1e-6, atol=0)
    assert not torch.allclose(single[0], single[1])  # the planes really differ


def test_multi_echo_channels_are_independent_volumes_batch_major(resnet):
    preds, target = _pair((2, 2, 6, 20, 16))  # N, C (echoes), D, H, W
    volume = VolumeDFD(_fresh(resnet), reduction="none")
    volume.update(preds, target)
    flat = VolumeDFD(_fresh(resnet), reduction="none")
    flat.update(preds.reshape(4, 6, 20, 16), target.reshape(4, 6, 20, 16))
    torch.testing.assert_close(volume.compute(), flat.compute(), rtol=1e-6, atol=0)
    assert volume.compute().shape == (4,)


def test_complex_volumes_are_scored_as_magnitudes_also_when_resampled(resnet):
    preds, target = _pair()
    phase = torch.exp(1j * torch.linspace(0, 3, SHAPE[-1]))
    for spacing in (None, (2.0, 1.0, 1.0)):
        as_complex = VolumeDFD(_fresh(resnet), spacing=spacing, reduction="none")
        as_complex.update(preds * phase, target * phase)
        as_magnitude = VolumeDFD(_fresh(resnet), spacing=spacing, reduction="none")
        as_magnitude.update((preds * phase).abs(), (target * phase).abs())
        torch.testing.assert_close(as_complex.compute(), as_magnitude.compute(), rtol=1e-5, atol=0)


def test_per_volume_values_with_volume_ids_across_updates(resnet):
    preds, target = _pair((3, 6, 20, 16))
    volume = VolumeDFD(_fresh(resnet), reduction="none")
    volume.update(preds[1:], target[1:], volume_ids=torch.tensor([30, 10]))
    volume.update(preds[:1], target[:1], volume_ids=torch.tensor([20]))
    alone = []
    for i in range(3):
        metric = VolumeDFD(_fresh(resnet), reduction="none")
        metric.update(preds[i : i + 1], target[i : i + 1])
        alone.append(metric.compute().reshape(1))  # torchmetrics squeezes one value
    per_volume = volume.compute_per_volume()
    assert per_volume["ids"].tolist() == [10, 20, 30]
    torch.testing.assert_close(per_volume["values"], torch.cat([alone[2], alone[0], alone[1]]),
                               rtol=1e-6, atol=0)
    mean = VolumeDFD(_fresh(resnet))
    mean.update(preds, target)
    assert float(mean.compute()) == pytest.approx(float(torch.cat(alone).double().mean()), rel=1e-6)
    with pytest.raises(RuntimeError, match="needs reduction='none'"):
        mean.compute_per_volume()


# ------------------------------------------------------------------ thin planes


def test_a_thin_plane_is_skipped_with_one_warning_per_metric(alex):
    preds, target = _pair((2, 8, 40, 36))  # coronal 8x36 and sagittal 8x40 < AlexNet's 31 px
    volume = VolumeDFD(_fresh(alex), reduction="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume.update(preds, target)
        volume.update(preds, target)
    messages = [str(w.message) for w in caught if "VolumeDFD" in str(w.message)]
    assert len(messages) == 1, messages
    assert "coronal (8x36)" in messages[0] and "sagittal (8x40)" in messages[0] and "31x31" in messages[0]
    axial = VolumeDFD(_fresh(alex), planes="axial", reduction="none")
    axial.update(preds, target)
    torch.testing.assert_close(volume.compute(), axial.compute().repeat(2), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="skipped"):  # a new metric warns again
        VolumeDFD(_fresh(alex)).update(preds, target)


def test_no_plane_left_is_a_clear_error_that_changes_nothing(alex):
    preds, target = _pair((1, 8, 40, 36))
    volume = VolumeDFD(_fresh(alex), planes=("coronal", "sagittal"), reduction="none")
    good_p, good_t = _pair((1, 32, 32, 32))
    volume.update(good_p, good_t)
    before = volume.compute().clone()
    with pytest.raises(ValueError, match=r"no plane of volumes \(D, H, W\) = \(8, 40, 36\).*31x31.*coronal"):
        volume.update(preds, target)
    with pytest.raises(ValueError, match="no plane"):
        volume.validate(preds, target)
    assert torch.equal(volume.compute(), before)
    torch.manual_seed(0)
    ssfd = VolumeDFD(SSFD(weights="random"), planes="axial")  # 8 px minimum
    with pytest.raises(ValueError, match="SSFD's encoder needs slices of at least 8x8"):
        ssfd.update(*_pair((1, 4, 6, 9)))


# ------------------------------------------------------------------ anisotropic spacing


def _linear_in_z(d: int, h: int = 24, w: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes a(y, x) + z b(y, x): trilinear resampling along z reproduces them exactly."""
    g = torch.Generator().manual_seed(seed)
    z = torch.arange(d, dtype=torch.float64).reshape(d, 1, 1) / (d - 1)
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    a = torch.exp(-(x**2 + y**2) * 3) + 0.2 * torch.rand(1, h, w, generator=g)
    b = torch.cos(3 * x) * y + 0.2 * torch.rand(1, h, w, generator=g)
    target = a + z * b
    preds = target + 0.2 * torch.rand(1, h, w, generator=g) + z * 0.2 * torch.rand(1, h, w, generator=g)
    return preds.float()[None], target.float()[None]


def test_spacing_resamples_a_thick_slice_volume_to_the_isotropic_one(resnet):
    """dz = 2 dx: every other slice of an isotropic volume, resampled, scores as the full volume."""
    preds, target = _linear_in_z(15)
    thick_p, thick_t = preds[:, ::2], target[:, ::2]  # 8 slices, 2 mm apart; 1 mm in-plane
    torch.testing.assert_close(isotropic(thick_t, (2.0, 1.0, 1.0)), target, rtol=0, atol=1e-6)
    iso = VolumeDFD(_fresh(resnet), reduction="none")
    iso.update(preds, target)
    resampled = VolumeDFD(_fresh(resnet), spacing=(2.0, 1.0, 1.0), reduction="none")
    resampled.update(thick_p, thick_t)
    torch.testing.assert_close(resampled.compute(), iso.compute(), rtol=1e-4, atol=0)
    as_given = VolumeDFD(_fresh(resnet), reduction="none")  # the same data without spacing
    as_given.update(thick_p, thick_t)
    assert abs(float(as_given.compute() / iso.compute()) - 1) > 1e-2  # so the check above means something
    # the spacing is in any order and unit: the finest axis sets the grid
    same = VolumeDFD(_fresh(resnet), spacing=(4.0, 2.0, 2.0), reduction="none")
    same.update(thick_p, thick_t)
    torch.testing.assert_close(same.compute(), resampled.compute(), rtol=0, atol=0)


def test_spacing_of_a_smooth_volume_agrees_within_interpolation_error(resnet):
    """A volume that is not linear along z: the resampled value is close, the raw one is not."""
    preds, target = _pair((1, 17, 24, 20), seed=3, noise=0.1)
    preds, target = [torch.nn.functional.avg_pool3d(x[None], 3, 1, 1, count_include_pad=False)[0]
                     for x in (preds, target)]  # smooth along z too
    iso = VolumeDFD(_fresh(resnet), planes=("coronal", "sagittal"))
    iso.update(preds, target)
    resampled = VolumeDFD(_fresh(resnet), planes=("coronal", "sagittal"), spacing=(2, 1, 1))
    resampled.update(preds[:, ::2], target[:, ::2])
    raw = VolumeDFD(_fresh(resnet), planes=("coronal", "sagittal"))
    raw.update(preds[:, ::2], target[:, ::2])
    resampled_error = abs(float(resampled.compute() / iso.compute()) - 1)
    raw_error = abs(float(raw.compute() / iso.compute()) - 1)
    print(f"relative error: resampled {resampled_error:.4f}, as given {raw_error:.4f}")
    assert resampled_error < 0.05 and resampled_error < raw_error / 2, (resampled_error, raw_error)


def test_isotropic_keeps_isotropic_volumes_and_sizes_each_axis():
    x = torch.rand(1, 5, 6, 7)
    assert isotropic(x, (1.5, 1.5, 1.5)) is x
    assert isotropic(x, (1.0, 3.0, 1.0)).shape == (1, 5, 16, 7)  # (6 - 1) * 3 + 1
    assert isotropic(x, (1.0, 1.0, 2.5)).shape == (1, 5, 6, 16)  # round((7 - 1) * 2.5) + 1
    with pytest.raises(TypeError, match="magnitude"):
        isotropic(x.to(torch.complex64), (2.0, 1.0, 1.0))


# ------------------------------------------------------------------ gradients, direction, chunking


def test_gradients_reach_preds_through_resampling_and_every_plane(resnet):
    preds, target = _pair((1, 6, 20, 16))
    preds.requires_grad_(True)
    volume = VolumeDFD(_fresh(resnet), spacing=(2.0, 1.0, 1.0))
    loss = volume(preds, target)
    loss.backward()
    assert preds.grad is not None and torch.isfinite(preds.grad).all() and preds.grad.abs().sum() > 0
    assert volume.is_differentiable is True and volume.higher_is_better is False
    assert volume.plot_lower_bound == 0.0


def test_slices_go_through_the_2d_metrics_max_batch_chunks(resnet):
    preds, target = _pair((2, 6, 20, 16))
    metric = _fresh(resnet)  # max_batch=4
    sizes = []
    handle = metric.network.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    try:
        VolumeDFD(metric).update(preds, target)
    finally:
        handle.remove()
    # each chunk encodes <= 4 prediction slices and their 4 targets in one pass
    assert max(sizes) <= 8 and sum(sizes) == 2 * 2 * (6 + 20 + 16)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("preds", "target", "kwargs", "error", "match"),
    [
        (torch.rand(6, 20, 16), torch.rand(6, 20, 16), {}, ValueError, r"add a batch dimension"),
        (torch.rand(1, 6, 20, 16), torch.rand(1, 6, 20, 17), {}, ValueError, "same shape"),
        (torch.ones(1, 6, 20, 16, dtype=torch.long), torch.ones(1, 6, 20, 16), {}, TypeError, "integer"),
        (torch.rand(1, 6, 20, 16), torch.rand(1, 6, 20, 16, dtype=torch.complex64), {}, TypeError, "complex"),
        (torch.rand(0, 6, 20, 16), torch.rand(0, 6, 20, 16), {}, ValueError, "no voxel"),
        (torch.rand(2, 6, 20, 16), torch.rand(2, 6, 20, 16), {"volume_ids": torch.tensor([1.0, 2.0])},
         ValueError, "volume_ids"),
        (torch.rand(2, 6, 20, 16), torch.rand(2, 6, 20, 16), {"volume_ids": torch.tensor([1])},
         ValueError, "volume_ids"),
        (torch.rand(2, 6, 20, 16), torch.rand(2, 6, 20, 16).index_put_((torch.tensor([1]),), torch.tensor(
            float("nan"))), {}, ValueError, r"`target` holds NaN or inf in volumes \[1\]"),
        (torch.rand(2, 6, 20, 16).index_put_((torch.tensor([0]), torch.tensor([3])), torch.tensor(
            float("inf"))), torch.rand(2, 6, 20, 16), {}, ValueError,
         r"`preds` holds NaN or inf in volumes \[0\]"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_no_state(resnet, preds, target, kwargs, error, match):
    volume = VolumeDFD(_fresh(resnet), reduction="none")
    good = _pair((1, 6, 20, 16))
    volume.update(*good, volume_ids=torch.tensor([7]))
    before = volume.compute().clone()
    with pytest.raises(error, match=match):
        volume.validate(preds, target, **kwargs)
    with pytest.raises(error, match=match):
        volume.update(preds, target, **kwargs)
    assert torch.equal(volume.compute(), before)
    assert volume.compute_per_volume()["ids"].tolist() == [7]


def test_nan_predictions_follow_the_2d_metrics_nan_strategy_per_volume():
    preds, target = _pair((3, 6, 20, 16))
    preds[1, 2, 3, 4] = float("nan")
    values = {}
    for strategy in ("ignore", "propagate"):
        torch.manual_seed(0)
        volume = VolumeDFD("resnet_fd", weights="random", nan_strategy=strategy, reduction="none")
        volume.update(preds, target, volume_ids=torch.tensor([0, 1, 2]))
        values[strategy] = volume.compute_per_volume()
        assert int(volume.skipped) == (1 if strategy == "ignore" else 0)
    assert values["ignore"]["ids"].tolist() == [0, 2]
    assert torch.isnan(values["propagate"]["values"][1])
    torch.testing.assert_close(values["propagate"]["values"][[0, 2]], values["ignore"]["values"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"planes": ("axial", "transverse")}, ValueError, r"`planes` must be .*transverse"),
        ({"planes": ()}, ValueError, "`planes` must be a non-empty"),
        ({"planes": ("axial", "axial")}, ValueError, "distinct"),
        ({"spacing": (1.0, 1.0)}, ValueError, r"`spacing` must be three positive"),
        ({"spacing": (1.0, 0.0, 1.0)}, ValueError, r"`spacing` must be three positive"),
        ({"spacing": (1.0, float("nan"), 1.0)}, ValueError, r"`spacing` must be three positive"),
        ({"spacing": "1,1,1"}, ValueError, r"`spacing` must be three positive"),
        ({"spacing": (True, 1.0, 1.0)}, ValueError, r"`spacing` must be three positive"),
        ({"reduction": "sum"}, ValueError, "`reduction` must be one of"),
    ],
)
def test_bad_options_are_refused_when_built(kwargs, error, match):
    with pytest.raises(error, match=match):
        VolumeDFD("resnet_fd", weights="random", **kwargs)


def test_only_2d_deep_feature_distances_are_wrapped(resnet):
    with pytest.raises(ValueError, match="must be a deep feature distance among"):
        VolumeDFD("psnr")
    with pytest.raises(TypeError, match="must be a 2D deep feature distance"):
        VolumeDFD(PSNR())
    with pytest.raises(TypeError, match=r"2D-metric arguments \['weights'\] with a metric instance"):
        VolumeDFD(_fresh(resnet), weights="random")
    torch.manual_seed(0)
    built = VolumeDFD("lpips_alex", weights="random", max_batch=2, sync_on_compute=False)
    assert type(built.metric).__name__ == "LPIPS" and built.metric.max_batch == 2
    assert built.sync_on_compute is False and built.metric.sync_on_compute is True


# ------------------------------------------------------------------ composition


def test_a_metric_collection_with_compute_groups_and_clone_give_each_its_own_value(resnet, alex):
    batches = [_pair((1, 4, 32, 32), seed=5, noise=0.0), _pair((2, 4, 32, 32), seed=6)]
    batches[0] = (batches[0][1].clone(), batches[0][1])  # preds == target first: all values 0
    members = {
        "axial": VolumeDFD(_fresh(resnet), planes="axial"),
        "three": VolumeDFD(_fresh(resnet)),
        "alex": VolumeDFD(_fresh(alex), planes="axial"),
    }
    alone = {}
    for name, metric in members.items():
        fresh = copy.deepcopy(metric)
        for p, t in batches:
            fresh.update(p, t)
        alone[name] = fresh.compute()
    collection = MetricCollection(copy.deepcopy(members), compute_groups=True)
    for p, t in batches:
        collection.update(p, t)
    assert len(collection.compute_groups) == 3  # equal zeros after batch one, yet never merged
    for name, value in collection.compute().items():
        torch.testing.assert_close(value, alone[name], rtol=1e-6, atol=0)
    suite = DFDCollection({"three": copy.deepcopy(members["three"]), "psnr": PSNR()})
    with pytest.raises(ValueError, match="same shape"):  # all-or-nothing: validate() is asked first
        suite.update(batches[1][0], batches[1][1][..., :-1])
    clone = members["three"].clone()
    for p, t in batches:
        clone.update(p, t)
    torch.testing.assert_close(clone.compute(), alone["three"], rtol=1e-6, atol=0)
    restored = pickle.loads(pickle.dumps(clone))
    torch.testing.assert_close(restored.compute(), alone["three"], rtol=0, atol=0)
    assert not any(key.startswith("metric.network") for key in clone.state_dict())  # no encoder weights


# ------------------------------------------------------------------ DDP


def _ddp_metrics():
    def build(**kwargs):
        torch.manual_seed(0)  # the same random encoder in every metric and every process
        return VolumeDFD("resnet_fd", weights="random", **kwargs)

    return {"mean": build(spacing=(2, 1, 1)), "none": build(reduction="none"),
            "idle": build(reduction="none")}


def _ddp_data():
    preds, target = _pair((3, 6, 20, 16), seed=9)
    return preds, target, torch.tensor([5, 3, 8])


def _ddp_update(metrics, preds, target, ids):
    for name in ("mean", "none"):
        metrics[name].update(preds, target, volume_ids=ids)


def _ddp_results(metrics, per_volume=("none", "idle")):
    return {"mean": metrics["mean"].compute(),
            **{f"{name}_per_volume": metrics[name].compute_per_volume() for name in per_volume}}


def _rank_fn(rank, world_size):
    assert world_size == dist.get_world_size() == 2
    preds, target, ids = _ddp_data()
    part = [0, 2] if rank == 0 else [1]  # uneven shards
    metrics = _ddp_metrics()
    _ddp_update(metrics, preds[part], target[part], ids[part])
    if rank == 0:  # "idle" gets every volume on rank 0 and nothing on rank 1
        metrics["idle"].update(preds, target, volume_ids=ids)
    return _ddp_results(metrics)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_processes_equal_one(tmp_path):
    preds, target, ids = _ddp_data()
    single = _ddp_metrics()
    _ddp_update(single, preds, target, ids)
    expected = _ddp_results(single, per_volume=("none",))
    # chunks of slices differ from one process (batch composition, 1 thread): float rounding only
    for result in run_ddp(_rank_fn, tmp_path=tmp_path):
        torch.testing.assert_close(result["mean"], expected["mean"], rtol=1e-5, atol=0)
        for key in ("none_per_volume", "idle_per_volume"):
            assert result[key]["ids"].tolist() == [3, 5, 8]
            torch.testing.assert_close(result[key]["values"], expected["none_per_volume"]["values"],
                                       rtol=1e-5, atol=0)
