"""``compile=`` on every DFD: torch.compile of the encoder, equal values, no state, safe copies.

Inductor compiles C++ kernels (tens of seconds on a cold cache), so one test uses it on a small
ResNetFD; the others use the ``aot_eager`` backend (the same dynamo/AOT tracing without code
generation) or ``eager`` (dynamo tracing only).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lightning_dfd import LPIPS, SSFD, ResNetFD
from lightning_dfd.metrics import build_metric


def _pair(n: int = 3, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, size, size, generator=g)
    return (target + 0.1 * torch.randn(n, size, size, generator=g)).clamp(0, 1), target


def _twins(cls, compile, **kwargs):
    eager = cls(weights="random", reduction="none", **kwargs)
    compiled = cls(weights="random", reduction="none", compile=compile, **kwargs)
    compiled.network.load_state_dict(eager.network.state_dict())
    return eager, compiled


def _score(metric, preds, target) -> torch.Tensor:
    metric.reset()
    with torch.inference_mode():
        metric.update(preds, target)
    return metric.compute()


def test_inductor_equals_eager_and_follows_weight_changes():
    preds, target = _pair()
    eager, compiled = _twins(ResNetFD, True)
    torch.testing.assert_close(_score(compiled, preds, target), _score(eager, preds, target),
                               rtol=1e-5, atol=1e-7)
    assert compiled.encoder.__dict__["_compiled"] is not None  # it really ran compiled
    # Inductor freezes the weights into the graph: an in-place change must rebuild it.
    with torch.no_grad():
        for net in (eager.network, compiled.network):
            next(net.parameters()).mul_(0.5)
    torch.testing.assert_close(_score(compiled, preds, target), _score(eager, preds, target),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [LPIPS, SSFD, ResNetFD])
def test_compiled_metric_equals_eager(cls):
    preds, target = _pair(size=48 if cls is LPIPS else 32)
    eager, compiled = _twins(cls, "aot_eager")
    torch.testing.assert_close(_score(compiled, preds, target), _score(eager, preds, target),
                               rtol=1e-6, atol=1e-8)
    key = compiled.encoder.__dict__["_compiled"][0]
    assert key[0][3] == "aot_eager"  # (options key, live weights token)


def test_compile_holds_no_state_and_copies_compile_their_own():
    preds, target = _pair()
    eager, compiled = _twins(ResNetFD, "eager")  # dynamo tracing only: four copies stay quick
    expected = _score(eager, preds, target)
    _score(compiled, preds, target)
    assert set(compiled.state_dict()) == set(eager.state_dict())
    for copied in (compiled.clone(), copy.deepcopy(compiled), pickle.loads(pickle.dumps(compiled))):
        assert "_compiled" not in copied.encoder.__dict__
        torch.testing.assert_close(_score(copied, preds, target), expected, rtol=1e-6, atol=1e-8)
        assert copied.encoder.__dict__["_compiled"] is not None


def test_gradients_run_eager_and_flow():
    preds, target = _pair(n=2)
    eager, compiled = _twins(ResNetFD, "aot_eager")
    x = preds[:, None].clone().requires_grad_(True)
    distance = compiled.network.distance(compiled.network(x), eager.network(target[:, None]))
    distance.sum().backward()
    assert "_compiled" not in compiled.encoder.__dict__  # never compiled with gradients on
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_compiled_and_eager_never_share_a_cache_namespace():
    eager, compiled = _twins(ResNetFD, "aot_eager")
    assert eager.cache_namespace != compiled.cache_namespace
    assert eager.sharing_key != compiled.sharing_key


def test_build_metric_passes_compile_and_bad_values_are_named():
    metric = build_metric("resnet_fd", weights="random", compile="aot_eager")
    assert metric.options.compile == "aot_eager" and "compile='aot_eager'" in repr(metric.encoder)
    for bad in ("no_such_backend", 1, ""):
        with pytest.raises(ValueError, match="compile"):
            ResNetFD(weights="random", compile=bad)
