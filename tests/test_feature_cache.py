"""Target-feature cache: identical values, real hits, invalidation, eviction, disk store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dfd import LPIPS, ResNetFD
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.weights import seeded_random_weights
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
    small = TargetFeatureCache(max_bytes=2 * per_image, directory=tmp_path, policy="lru")
    values = _epoch(_metric(network, feature_cache=small), preds, target, ids)
    assert len(small) == 2 and small.stats.evictions == 2 and small.nbytes <= 2 * per_image
    keep = TargetFeatureCache(max_bytes=2 * per_image)  # the default policy keeps the first two
    _epoch(_metric(network, feature_cache=keep), preds, target, ids)
    assert len(keep) == 2 and keep.stats.evictions == 0 and keep.stats.rejected == 2
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
    with seeded_random_weights(1):
        first = ResNetFD(weights="random", reduction="none",
                         feature_cache={"directory": str(tmp_path), "max_bytes": 1 << 24})
    first.update(preds, target, sample_ids=ids)
    assert first.feature_cache.directory == str(tmp_path) and first.feature_cache.stats.misses == 2
    with seeded_random_weights(2):  # another random initialisation under the same identity string
        second = ResNetFD(weights="random", reduction="none",
                          feature_cache={"directory": str(tmp_path)})
    second.update(preds, target, sample_ids=ids)
    assert second.feature_cache.stats.disk_hits == 0 and second.feature_cache.stats.misses == 2
    with seeded_random_weights(1):  # the same weights again: the disk store is reused
        third = ResNetFD(weights="random", reduction="none", feature_cache={"directory": str(tmp_path)})
    third.update(preds, target, sample_ids=ids)
    assert third.feature_cache.stats.disk_hits == 2
    assert torch.allclose(third.compute(), first.compute(), atol=1e-6)
    with pytest.raises(TypeError, match="feature_cache"):
        ResNetFD(weights="random", feature_cache="yes")


# -- policy, stored precision, keys, the validation-start line ---------------------------------


def _cyclic_hit_rates(cache, n_images=20, epochs=10, size=256):
    """Visit ``n_images`` in the same order every epoch; per-epoch memory hit rates."""
    images = [torch.full((1, 4, 4), float(i)) for i in range(n_images)]
    rates = []
    for _ in range(epochs):
        before = cache.stats.hits
        for i, image in enumerate(images):
            if cache.get("net", (i, 0), image) is None:
                cache.put("net", (i, 0), image, [torch.full((size,), float(i))])
        rates.append((cache.stats.hits - before) / n_images)
    return rates


def test_keep_policy_resists_cyclic_scans_lru_thrashes():
    per_image = 256 * 4
    keep = TargetFeatureCache(max_bytes=10 * per_image)  # 50 % of a 20-image set
    lru = TargetFeatureCache(max_bytes=10 * per_image, policy="lru")
    keep_rates, lru_rates = _cyclic_hit_rates(keep), _cyclic_hit_rates(lru)
    assert keep_rates[0] == 0 and lru_rates[0] == 0
    assert all(rate >= 0.9 * 0.5 for rate in keep_rates[1:]), keep_rates
    assert all(rate == 0 for rate in lru_rates[1:]), lru_rates  # today's policy: every entry evicted
    assert keep.expected_hit_rate(20, per_image) == 0.5 and lru.expected_hit_rate(20, per_image) == 0
    with pytest.raises(ValueError, match="policy"):
        TargetFeatureCache(policy="fifo")


def test_keep_policy_replaces_stale_entries():
    cache = TargetFeatureCache(max_bytes=4 * 64)
    old = [torch.full((1, 2, 2), float(i)) for i in range(4)]
    new = [torch.full((1, 2, 2), 100.0 + i) for i in range(4)]
    for i, image in enumerate(old):
        cache.put("net", (i,), image, [torch.zeros(16)])
    for _ in range(6):  # the validation set changed: the old entries are never asked for again
        for i, image in enumerate(new):
            if cache.get("net", (100 + i,), image) is None:
                cache.put("net", (100 + i,), image, [torch.ones(16)])
    assert cache.get("net", (100,), new[0]) is not None and cache.get("net", (0,), old[0]) is None
    assert cache.stats.evictions == 4


def test_bf16_storage_halves_bytes_and_rounds_only():
    torch.manual_seed(0)
    image = torch.rand(1, 8, 8)
    features = [torch.randn(3, 16, 16) * 5, torch.randn(7)]
    full = TargetFeatureCache()
    half = TargetFeatureCache(store_dtype="bf16")
    full.put("net", (1, 0), image, features)
    half.put("net", (1, 0), image, features)
    assert half.nbytes * 2 == full.nbytes
    back = half.get("net", (1, 0), image)
    for got, want in zip(back, features, strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want.to(torch.bfloat16).float())  # exactly bf16 rounding
        assert torch.allclose(got, want, rtol=2 ** -8, atol=0)
    with pytest.raises(ValueError, match="store_dtype"):
        TargetFeatureCache(store_dtype="int8")


def test_bf16_storage_in_a_metric_within_rounding(network, tmp_path):
    preds, target = mr_like_pair(n=4, h=48, w=48)
    ids = torch.arange(4)
    plain = _epoch(_metric(network), preds, target, ids)
    cache = TargetFeatureCache(store_dtype=torch.bfloat16, directory=tmp_path)
    metric = _metric(network, feature_cache=cache)
    _epoch(metric, preds, target, ids)
    cached = _epoch(metric, preds, target, ids)
    assert cache.stats.hits == 4
    assert torch.allclose(cached, plain, rtol=1e-2, atol=1e-5)
    restarted = TargetFeatureCache(store_dtype="bf16", directory=tmp_path)
    again = _epoch(_metric(network, feature_cache=restarted), preds, target, ids)
    assert restarted.stats.disk_hits == 4 and torch.equal(again, cached)


def test_keys_are_tuples_of_ints_and_strings(tmp_path):
    image = torch.rand(1, 4, 4)
    cache = TargetFeatureCache(directory=tmp_path)
    cache.put("net", ("file1000001.h5", 17, 0), image, [torch.ones(3)])
    cache.put("net", ("file1000001.h5", 17, 1), image, [torch.zeros(3)])
    assert torch.equal(cache.get("net", ("file1000001.h5", 17, 0), image)[0], torch.ones(3))
    disk = TargetFeatureCache(directory=tmp_path)
    assert torch.equal(disk.get("net", ("file1000001.h5", 17, 1), image)[0], torch.zeros(3))
    disk.put("net", (np.int64(5), torch.tensor(2)), image, [torch.ones(1)])  # ints of any kind
    assert torch.equal(disk.get("net", (5, 2), image)[0], torch.ones(1))
    for bad in ((1.5, 0), (True, 0), [1, 0], ()):
        with pytest.raises(TypeError, match="key"):
            cache.get("net", bad, image)


def test_plan_line_names_bytes_set_budget_and_hit_rate():
    cache = TargetFeatureCache(max_bytes=100 << 20)
    line = cache.plan(7100, 48 << 20, name="lpips_vgg")
    assert "48.0 MiB per image" in line and "7100 images" in line and "holds 2 " in line
    assert "expected hit rate from epoch 2: 0.0 %" in line  # 2 / 7100 rounds to 0.0
    assert "unknown" in cache.plan(10, namespace="net", name="x")
    cache.put("net", (0,), torch.rand(1, 2, 2), [torch.zeros(1 << 18)])  # 1 MiB per image
    line = cache.plan(200, namespace="net", name="x")
    assert "1.0 MiB per image" in line and "holds 100 (50.0 %)" in line and "50.0 %" in line
    lru = TargetFeatureCache(max_bytes=100 << 20, policy="lru")
    assert "hit rate from epoch 2: 0.0 % (policy lru)" in lru.plan(200, 1 << 20)


def test_cache_copies_pickles_and_config_values(tmp_path):
    import copy
    import pickle

    cache = TargetFeatureCache(max_bytes=2e6, directory=tmp_path, store_dtype="bf16")
    assert cache.max_bytes == 2_000_000
    image = torch.rand(1, 4, 4)
    cache.put("net", (1, 0), image, [torch.ones(8)])
    for other in (copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert torch.equal(other.get("net", (1, 0), image)[0], torch.ones(8))
        assert other.policy == "keep" and other.store_dtype == torch.bfloat16
    for bad in (-1, 1.5, "2GB", True):
        with pytest.raises(ValueError, match="max_bytes"):
            TargetFeatureCache(max_bytes=bad)


# ------------------------------------------------------------------ disk entries checked whole


def _edit_every_entry(folder, edit):
    files = sorted(folder.rglob("*.pt"))
    assert files
    for path in files:
        entry = torch.load(path, weights_only=True)
        edit(entry)
        torch.save(entry, path)  # the checksum is left as it was: a hand edit or a foreign writer
    return len(files)


@pytest.mark.parametrize("dtypes", [["torch.float16"], ["torch.nn"], ["os.system"]],
                         ids=["float16", "torch.nn", "os.system"])
def test_an_edited_header_is_a_counted_miss_never_a_value_or_a_crash(network, tmp_path, dtypes):
    preds, target = mr_like_pair(n=2, h=48, w=48)
    ids = torch.arange(2)
    plain = _epoch(_metric(network), preds, target, ids)
    _epoch(_metric(network, feature_cache=TargetFeatureCache(directory=tmp_path)), preds, target, ids)

    def edit(entry):
        entry["dtypes"] = dtypes * len(entry["features"])

    n_files = _edit_every_entry(tmp_path, edit)
    restarted = TargetFeatureCache(directory=tmp_path)
    with pytest.warns(UserWarning, match="checksum") as caught:
        again = _epoch(_metric(network, feature_cache=restarted), preds, target, ids)
    assert torch.equal(again, plain)
    assert restarted.stats.bad_files == n_files and restarted.stats.disk_hits == 0
    assert len([w for w in caught if "feature cache" in str(w.message)]) == n_files  # one per file


def test_a_bf16_store_never_answers_an_exact_cache(network, tmp_path):
    preds, target = mr_like_pair(n=2, h=48, w=48)
    ids = torch.arange(2)
    plain = _epoch(_metric(network), preds, target, ids)
    _epoch(_metric(network, feature_cache=TargetFeatureCache(directory=tmp_path, store_dtype="bf16")),
           preds, target, ids)
    exact = TargetFeatureCache(directory=tmp_path)
    values = _epoch(_metric(network, feature_cache=exact), preds, target, ids)
    assert exact.stats.disk_hits == 0 and torch.equal(values, plain)
    # An entry moved by hand into the exact store's folder is refused by its header.
    bf16_files = sorted(tmp_path.rglob("*.pt"))
    exact_folder = next(p.parent for p in bf16_files
                        if torch.load(p, weights_only=True)["store_dtype"] == "None")
    for path in bf16_files:
        if path.parent != exact_folder:
            path.replace(exact_folder / path.name)
    moved = TargetFeatureCache(directory=tmp_path)
    with pytest.warns(UserWarning, match="stored as torch.bfloat16"):
        values = _epoch(_metric(network, feature_cache=moved), preds, target, ids)
    assert torch.equal(values, plain) and moved.stats.bad_files == 2
