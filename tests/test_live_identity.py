"""An encoder's identity is its live state: every weight mutation re-keys the cache and the compile.

Issue: a feature cache served features of the old weights after ``load_state_dict`` or an in-place
op (0.552 vs 0.0297), and a compiled encoder kept old weights after ``param.data = new`` on a
non-first conv. Each mutation below is followed by an update that must equal an uncached, eager
metric holding the new weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_dfd import LPIPS
from lightning_dfd.weights import seeded_random_weights

IDS = torch.arange(3)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(3, 48, 48, generator=g)
    return (target + 0.1 * torch.randn(3, 48, 48, generator=g)).clamp(0, 1), target


def _other_state(network: nn.Module) -> dict:
    with seeded_random_weights(123):  # random weights are seeded (0) by default: ask for others
        return LPIPS(net="alex", weights="random").network.state_dict()


def _conv(network: nn.Module) -> nn.Conv2d:
    return getattr(network.slices[2], "6")  # the third conv: not the first parameter


def _load_state_dict(network):
    network.load_state_dict(_other_state(network))


def _in_place(network):
    with torch.no_grad():
        _conv(network).weight.mul_(1.5)


def _data_assignment(network):
    _conv(network).weight.data = _conv(network).weight.detach() * 1.5


def _new_parameter(network):
    conv = _conv(network)
    conv.weight = nn.Parameter(conv.weight.detach() * 1.5, requires_grad=False)


def _round_trip(network):
    network.to(torch.float64).to(torch.float32)  # new storage, same values: a hit stays right


MUTATIONS = [_load_state_dict, _in_place, _data_assignment, _new_parameter, _round_trip]


def _score(metric, preds, target, **kwargs) -> torch.Tensor:
    metric.reset()
    with torch.inference_mode():
        metric.update(preds, target, **kwargs)
    return metric.compute()


def _reference(network, preds, target) -> torch.Tensor:
    fresh = LPIPS(net="alex", weights="random", reduction="none")
    fresh.network.load_state_dict(network.state_dict())
    return _score(fresh, preds, target)


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__.strip("_"))
def test_feature_cache_follows_every_weight_mutation(mutate):
    preds, target = _pair()
    metric = LPIPS(net="alex", weights="random", reduction="none", feature_cache=True)
    before = _score(metric, preds, target, sample_ids=IDS)
    namespace = metric.cache_namespace
    mutate(metric.network)
    after = _score(metric, preds, target, sample_ids=IDS)
    torch.testing.assert_close(after, _reference(metric.network, preds, target), rtol=1e-6, atol=1e-8)
    if mutate is _round_trip:
        assert metric.cache_namespace == namespace and metric.feature_cache.stats.hits == 3
        torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-8)
    else:
        assert metric.cache_namespace != namespace and not torch.allclose(after, before)


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__.strip("_"))
def test_compiled_encoder_is_rebuilt_after_every_weight_mutation(mutate):
    preds, target = _pair()
    metric = LPIPS(net="alex", weights="random", reduction="none", compile="aot_eager")
    _score(metric, preds, target)
    built = metric.encoder.__dict__["_compiled"]
    mutate(metric.network)
    after = _score(metric, preds, target)
    assert metric.encoder.__dict__["_compiled"] is not built  # the graph was rebuilt
    torch.testing.assert_close(after, _reference(metric.network, preds, target), rtol=1e-6, atol=1e-8)
