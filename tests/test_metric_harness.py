"""Every metric through the same checks (``tests/metric_tester.py``), torchmetrics-style.

Class vs functional vs an independent reference, batch by batch and accumulated; after a real
2-process gloo sync, also with an idle process; gradients; half-precision input; clone /
deepcopy / pickle; a plain ``MetricCollection`` with compute groups on.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torchmetrics import MetricCollection

from tests.ddp import run_ddp
from tests.metric_tester import CASE_NAMES, Weights, all_cases, batches, ddp_worker, references

REF_RTOL, REF_ATOL = 1e-4, 1e-6  # vs reference packages (float32 encoders, other op order)
SELF_RTOL, SELF_ATOL = 1e-6, 1e-7  # class vs functional vs copies: the same computation


@pytest.fixture(scope="session")
def weights(torchvision_checkpoint, tmp_path_factory) -> Weights:
    from tests.test_ssfd_metric import published_state

    folder = tmp_path_factory.mktemp("harness_weights")
    # The same seeded torchvision weights the references load from the hub cache, without the
    # classifiers no feature distance uses (a 58 MB VGG file instead of 528 MB: fast builds).
    small = {}
    for arch in ("vgg16", "alexnet", "resnet50"):
        state = torch.load(torchvision_checkpoint(arch), weights_only=True)
        if arch == "resnet50":
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        else:
            state = {k: v for k, v in state.items() if k.startswith("features.")}
        small[arch] = folder / f"{arch}_features.pth"
        torch.save(state, small[arch])
    ssfd = folder / "ssfd.ckpt"
    torch.save({"model_state_dict": published_state()}, ssfd)
    vae = folder / "vaefd.ckpt"
    torch.save({"state_dict": _vae_model().state_dict()}, vae)
    from tests.hf_models import save_tiny

    return Weights(vgg16=small["vgg16"], alexnet=small["alexnet"], resnet50=small["resnet50"],
                   ssfd=ssfd, vaefd=vae, hf=save_tiny("dinov2", folder / "hf_dinov2", seed=5))


_VAE: dict[str, torch.nn.Module] = {}
_REFS: dict[str, object] = {}


def _vae_model() -> torch.nn.Module:
    """The ``medvae`` package's own (small, random, LoRA) model: the VAEFD reference."""
    if "model" not in _VAE:
        from tests.test_vaefd_medvae import _reference_model

        with pytest.MonkeyPatch.context() as mp:
            _VAE["model"] = _reference_model(mp)
    return _VAE["model"]


@pytest.fixture(scope="module")
def cases(weights):
    return {case.name: case for case in all_cases(weights)}


@pytest.fixture
def refs(weights, torchvision_checkpoint, reference_hub):
    """Reference scorers, built once (the hub cache holds the full torchvision checkpoints)."""
    if not _REFS:
        _REFS.update(references(weights, _vae_model(), torchvision_checkpoint("resnet50")))
    return _REFS


def _close(got, expected, rtol=SELF_RTOL, atol=SELF_ATOL, what=""):
    got, expected = torch.as_tensor(got).detach().double(), torch.as_tensor(expected).detach().double()
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert torch.allclose(got, expected, rtol=rtol, atol=atol), (what, got, expected)


def test_every_metric_class_is_covered(cases):
    from lightning_dfd.metrics.base import DeepFeatureDistance
    from lightning_dfd.metrics.pixel import _VolumeMetric

    assert sorted(cases) == sorted(CASE_NAMES)
    classes = {type(case.build()).__name__ for case in cases.values()}
    assert classes == {"LPIPS", "DISTS", "ResNetFD", "SSFD", "VAEFD", "HFFD", "PSNR", "SSIM", "NMSE"}
    for case in cases.values():
        assert isinstance(case.build(), _VolumeMetric if case.pixel else DeepFeatureDistance)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_class_functional_reference(name, cases, refs):
    """Batch by batch (``forward``) and accumulated (``compute``), three ways, one value."""
    case = cases[name]
    reference = refs[name.rsplit("-", 1)[0]]
    metric = case.build()
    seen = []
    for preds, target in batches():
        expected = reference(preds, target)
        assert expected.abs().min() > 1e-4 or case.pixel  # a real, non-trivial distance
        functional = case.functional(preds, target)
        _close(functional, expected, REF_RTOL, REF_ATOL, f"{name}: functional vs reference")
        batch_value = metric(preds, target)
        _close(batch_value, case.expected(functional), what=f"{name}: forward vs functional")
        seen.append(expected)
    _close(metric.compute(), case.expected(torch.cat(seen)), REF_RTOL, REF_ATOL,
           f"{name}: accumulated vs reference")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_process_sync_and_idle_rank(cases, weights, tmp_path):
    """After a real gloo sync (one batch per process, and with process 1 idle) = one process."""
    data = batches()
    expected = {}
    for name, case in cases.items():
        metric = case.build()
        for preds, target in data:
            metric.update(preds, target)
        expected[name] = metric.compute().detach()
    results = run_ddp(ddp_worker, weights, tmp_path=tmp_path)
    assert [int(r["rank"]["rank"]) for r in results] == [0, 1]  # both processes answered
    failures = []
    for rank, result in enumerate(results):
        for mode in ("even", "idle"):
            for name, value in expected.items():
                got = result[mode][name]
                if got.shape != value.shape or not torch.allclose(got.double(), value.double(),
                                                                  rtol=1e-5, atol=1e-7):
                    failures.append(f"rank {rank} {mode} {name}: {got} != {value}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_differentiable(name, cases):
    case = cases[name]
    metric = case.build()
    assert metric.is_differentiable
    preds, target = batches(1)[0]
    preds, target = preds.abs(), target.abs()  # real: |z| has no gradient at 0
    preds.requires_grad_(True)
    value = metric(preds, target)
    value.sum().backward()
    assert preds.grad is not None, name
    assert torch.isfinite(preds.grad).all() and preds.grad.abs().sum() > 0, name
    preds.grad = None
    case.functional(preds, target).sum().backward()
    assert torch.isfinite(preds.grad).all() and preds.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", CASE_NAMES)
def test_half_precision_input(name, cases):
    """float16/bfloat16 inputs are accepted and cast up: equal to float32 on the same numbers."""
    case = cases[name]
    preds, target = batches(1)[0]
    preds, target = preds.abs(), target.abs()
    for dtype in (torch.float16, torch.bfloat16):
        p, t = preds.to(dtype), target.to(dtype)
        metric = case.build()
        metric.update(p, t)
        full = case.build()
        full.update(p.float(), t.float())
        _close(metric.compute(), full.compute(), 1e-5, 1e-7, f"{name} {dtype}")


COPIES = {"clone": lambda m: m.clone(), "deepcopy": copy.deepcopy,
          "pickle": lambda m: pickle.loads(pickle.dumps(m))}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_copies_equal_original(name, cases):
    """clone / deepcopy / pickle: same state, same further values, the original untouched."""
    case = cases[name]
    (p1, t1), (p2, t2) = batches()
    metric = case.build()
    metric.update(p1, t1)
    fresh = case.build()
    fresh.update(p1, t1)
    fresh.update(p2, t2)
    alone = case.build()  # the value of one image must not depend on its batch (eval mode)
    alone.update(p2[:1], t2[:1])
    for how, make in COPIES.items():
        dup = make(metric)
        _close(dup.compute(), metric.compute(), what=f"{name} {how}: state")
        dup.update(p2, t2)
        _close(dup.compute(), fresh.compute(), what=f"{name} {how}: after a further batch")
        dup.reset()
        dup.update(p2[:1], t2[:1])
        _close(dup.compute(), alone.compute(), what=f"{name} {how}: batch composition")
    metric.update(p2, t2)
    _close(metric.compute(), fresh.compute(), what=f"{name}: original after copying")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_metric_collection_compute_groups(name, cases):
    """The adversarial first batch (preds == target: equal states) must not merge two metrics."""
    case = cases[name]
    (p, t), _ = batches()
    collection = MetricCollection({"metric": case.build(), "partner": case.partner()})
    alone = {"metric": case.build(), "partner": case.partner()}
    for preds, target in ((t, t.clone()), (p, t)):
        collection.update(preds, target)
        for m in alone.values():
            m.update(preds, target)
    values = collection.compute()
    for key, m in alone.items():
        _close(values[key], m.compute(), what=f"{name}: {key} in a collection")
