"""Target-feature cache: identical values, real hits, invalidation, eviction, disk store."""

from __future__ import annotations

import pytest
import torch

from lightning_dfd import LPIPS, ResNetFD
from lightning_dfd.feature_cache import TargetFeatureCache
from tests.metric_fixtures import mr_like_pair


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return LPIPS(net="alex", weights="random").network


def _metric(network, **kwargs):
    metric = LPIPS(net="alex", weights="random", reduction="none", **kwargs)
    metric.network.load_state_dict(network.state_dict())
    return metric


def _epoch(metric, preds, target, ids):
    metric.reset()
    for start in range(0, len(ids), 2):
        part = slice(start, start + 2)
        metric.update(preds[part], target[part], sample_ids=ids[part])
    return metric.compute()


def test_cached_values_equal_uncached_and_hit(network):
    preds, target = mr_like_pair(n=5, h=48, w=48)
    ids = torch.arange(5) + 100
    plain = _epoch(_metric(network), preds, target, ids)
    cache = TargetFeatureCache()
    cached = _metric(network, feature_cache=cache)
    first = _epoch(cached, preds, target, ids)
    assert cache.stats.misses == 5 and cache.stats.hits == 0 and len(cache) == 5
    second = _epoch(cached, preds * 1.1 + 0.01, target, ids)  # new predictions, same targets
    assert cache.stats.hits == 5 and cache.stats.misses == 5
    assert torch.equal(first, plain)
    expected = _epoch(_metric(network), preds * 1.1 + 0.01, target, ids)
    assert torch.allclose(second, expected, atol=1e-6)
    without_ids = _metric(network, feature_cache=cache)
    without_ids.update(preds, target)  # no ids: the cache is not consulted
    assert cache.stats.hits == 5 and cache.stats.misses == 5


def test_changed_target_or_network_is_a_miss(network):
    preds, target = mr_like_pair(n=2, h=32, w=32)
    ids = torch.tensor([1, 2])
    cache = TargetFeatureCache()
    _epoch(_metric(network, feature_cache=cache), preds, target, ids)
    changed = target.clone()
    changed[0] = changed[0].flip(-1)
    values = _epoch(_metric(network, feature_cache=cache), preds, changed, ids)
    assert cache.stats.misses == 3 and cache.stats.hits == 1
    assert torch.allclose(values, _epoch(_metric(network), preds, changed, ids), atol=1e-6)
    other = ResNetFD(weights="random", feature_cache=cache, reduction="none")
    other.update(preds, target, sample_ids=ids)
    assert cache.stats.misses == 5  # another network never reads LPIPS features


def test_eviction_and_disk_store(network, tmp_path):
    preds, target = mr_like_pair(n=4, h=32, w=32)
    ids = torch.arange(4)
    probe = TargetFeatureCache()
    _epoch(_metric(network, feature_cache=probe), preds, target, ids)
    per_image = probe.nbytes // 4
    small = TargetFeatureCache(max_bytes=2 * per_image, directory=tmp_path)
    values = _epoch(_metric(network, feature_cache=small), preds, target, ids)
    assert len(small) == 2 and small.stats.evictions == 2 and small.nbytes <= 2 * per_image
    restarted = TargetFeatureCache(directory=tmp_path)  # a new process: features come from disk
    again = _epoch(_metric(network, feature_cache=restarted), preds, target, ids)
    assert restarted.stats.disk_hits == 4 and restarted.stats.misses == 0
    assert torch.allclose(values, again, atol=1e-6)


def test_channels_last_within_tolerance(network):
    preds, target = mr_like_pair(n=2, h=48, w=48)
    torch.manual_seed(0)
    fast = ResNetFD(weights="random", channels_last=True, reduction="none")
    torch.manual_seed(0)
    exact = ResNetFD(weights="random", reduction="none")
    fast.update(preds, target)
    exact.update(preds, target)
    assert torch.allclose(fast.compute(), exact.compute(), rtol=1e-5, atol=1e-7)


def test_cache_from_config_dict_and_random_weights_never_share(network, tmp_path):
    preds, target = mr_like_pair(n=2, h=32, w=32)
    ids = torch.tensor([1, 2])
    torch.manual_seed(1)
    first = ResNetFD(weights="random", reduction="none",
                     feature_cache={"directory": str(tmp_path), "max_bytes": 1 << 24})
    first.update(preds, target, sample_ids=ids)
    assert first.feature_cache.directory == str(tmp_path) and first.feature_cache.stats.misses == 2
    torch.manual_seed(2)  # another random initialisation under the same identity string
    second = ResNetFD(weights="random", reduction="none",
                      feature_cache={"directory": str(tmp_path)})
    second.update(preds, target, sample_ids=ids)
    assert second.feature_cache.stats.disk_hits == 0 and second.feature_cache.stats.misses == 2
    torch.manual_seed(1)  # the same weights again: the disk store is reused
    third = ResNetFD(weights="random", reduction="none", feature_cache={"directory": str(tmp_path)})
    third.update(preds, target, sample_ids=ids)
    assert third.feature_cache.stats.disk_hits == 2
    assert torch.allclose(third.compute(), first.compute(), atol=1e-6)
    with pytest.raises(TypeError, match="feature_cache"):
        ResNetFD(weights="random", feature_cache="yes")
