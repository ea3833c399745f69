"""DFDs with identical features share one encoder pass, with values equal to separate updates."""

from __future__ import annotations

import pytest
import torch

from lightning_dfd import DISTS, LPIPS, PSNR, ResNetFD
from lightning_dfd.analysis.evaluation import build_metrics
from lightning_dfd.encoders.encoder_pass import sharing
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.metrics import DFDCollection
from tests.metric_fixtures import mr_like_pair


class PassCounter:
    """Counts forward calls of a module and the images they carried."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = self.images = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.images += args[0].shape[0]


@pytest.fixture
def vgg_file(torchvision_checkpoint):
    return torchvision_checkpoint("vgg16")


def _lpips_pair(vgg_file, **kwargs):
    return (LPIPS(weights=vgg_file, **kwargs), LPIPS(linear=False, weights=vgg_file, **kwargs))


def test_sharing_key_groups_identical_features_only(vgg_file):
    lin, nolin = _lpips_pair(vgg_file)
    assert lin.cache_namespace == nolin.cache_namespace
    assert lin.sharing_key == nolin.sharing_key
    other_trunk = LPIPS(linear=False, weights="random")
    assert other_trunk.sharing_key != lin.sharing_key  # other weights
    assert LPIPS(weights=vgg_file, normalization="target").sharing_key != lin.sharing_key
    assert LPIPS(weights=vgg_file, max_batch=2).sharing_key != lin.sharing_key
    assert DISTS(weights=vgg_file).sharing_key != lin.sharing_key  # L2 pooling: other features
    mse = ResNetFD(weights="random")
    mae = ResNetFD(weights="random", distance="mae")
    mae.network.load_state_dict(mse.network.state_dict())
    assert mse.sharing_key == mae.sharing_key


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_collection_equals_separate_metrics_with_one_pass(vgg_file, reduction):
    preds, target = mr_like_pair(n=5, h=48, w=40, seed=1)
    alone = _lpips_pair(vgg_file, reduction=reduction, max_batch=2)
    linked = _lpips_pair(vgg_file, reduction=reduction, max_batch=2)
    suite = DFDCollection({"lin": linked[0], "nolin": linked[1], "psnr": PSNR()})
    counter, idle = PassCounter(linked[0].network), PassCounter(linked[1].network)
    for _ in range(2):
        suite.update(preds, target, data_range=target.abs().flatten(1).amax(1))
        for metric in alone:
            metric.update(preds, target)
    assert counter.calls == 2 * 3  # 5 pairs in chunks of 2, twice
    assert counter.images == 2 * 2 * 5  # predictions and targets together
    assert idle.calls == 0
    values = suite.compute()
    for key, metric in zip(("lin", "nolin"), alone, strict=True):
        torch.testing.assert_close(values[key], metric.compute(), rtol=0, atol=0)
    assert "psnr" in values


def test_collection_forward_returns_batch_values(vgg_file):
    preds, target = mr_like_pair(n=3, h=40, w=40, seed=2)
    alone = _lpips_pair(vgg_file)
    suite = DFDCollection(dict(zip(("lin", "nolin"), _lpips_pair(vgg_file), strict=True)))
    counter = PassCounter(suite["lin"].network)
    batch = suite(preds, target)
    assert counter.calls == 1
    for key, metric in zip(("lin", "nolin"), alone, strict=True):
        torch.testing.assert_close(batch[key], metric(preds, target), rtol=0, atol=0)
        torch.testing.assert_close(suite[key].compute(), metric.compute(), rtol=0, atol=0)


def test_shared_cache_serves_every_member(vgg_file):
    preds, target = mr_like_pair(n=4, h=40, w=32, seed=3)
    ids = torch.arange(4)
    cache = TargetFeatureCache()
    lin, nolin = _lpips_pair(vgg_file, feature_cache=cache, reduction="none")
    suite = DFDCollection({"lin": lin, "nolin": nolin})
    counter = PassCounter(lin.network)
    suite.update(preds, target, sample_ids=ids)
    assert counter.images == 8
    suite.update(preds, target, sample_ids=ids)  # second epoch: targets from the cache
    assert counter.images == 8 + 4
    reference = _lpips_pair(vgg_file, reduction="none")
    for metric, ref in zip((lin, nolin), reference, strict=True):
        ref.update(preds, target)
        torch.testing.assert_close(metric.compute(), ref.compute().repeat(2), rtol=1e-5, atol=1e-6)


def test_bad_batch_leaves_every_member_untouched(vgg_file):
    preds, target = mr_like_pair(n=2, h=32, w=32, seed=4)
    suite = DFDCollection(dict(zip(("lin", "nolin"), _lpips_pair(vgg_file), strict=True)))
    suite.update(preds, target)
    before = {k: v.clone() for k, v in suite.compute().items()}
    bad = preds.clone()
    bad[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        suite.update(bad, target)
    with pytest.raises(ValueError, match="shape"):
        suite.update(preds[:, :16], target)
    for key, value in suite.compute().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    suite.update(preds, target)  # and the group still works afterwards
    for key, metric in zip(("lin", "nolin"), _lpips_pair(vgg_file), strict=True):
        metric.update(preds, target)
        metric.update(preds, target)
        torch.testing.assert_close(suite[key].compute(), metric.compute(), rtol=0, atol=0)


def test_linked_metric_alone_computes_for_itself(vgg_file):
    preds, target = mr_like_pair(n=2, h=32, w=32, seed=5)
    lin, nolin = _lpips_pair(vgg_file)
    counter = PassCounter(lin.network)
    with sharing([lin.encoder_pass, nolin.encoder_pass]):
        lin.update(preds, target)
        nolin.update(preds, target)  # the features of lin's pass
    assert counter.calls == 1 and PassCounter(nolin.network).calls == 0
    lin.update(preds, target)  # outside a scope: no pending values, no leak
    nolin.update(preds, target)
    ref = _lpips_pair(vgg_file)
    for metric, other in zip((lin, nolin), ref, strict=True):
        other.update(preds, target)
        torch.testing.assert_close(metric.compute(), other.compute(), rtol=0, atol=0)


def test_collection_as_loss_shares_the_prediction_graph(vgg_file):
    preds, target = mr_like_pair(n=2, h=32, w=32, seed=6)
    preds = preds.abs().requires_grad_(True)
    suite = DFDCollection(dict(zip(("lin", "nolin"), _lpips_pair(vgg_file), strict=True)))
    counter = PassCounter(suite["lin"].network)
    values = suite(preds, target.abs())
    (values["lin"] + values["nolin"]).backward()
    assert counter.calls == 2  # targets (no graph), then predictions (with graph)
    assert preds.grad is not None and preds.grad.abs().sum() > 0


def test_evaluate_links_lpips_variants(vgg_file, tmp_path):
    from lightning_dfd.analysis.evaluation import EvaluationConfig

    config = EvaluationConfig(metrics=("lpips_vgg", "lpips_vgg_nolin", "psnr"),
                              weights={"lpips_vgg": str(vgg_file), "lpips_vgg_nolin": str(vgg_file)})
    per_image, per_volume = build_metrics(config)
    assert per_image.shared_groups() == [["lpips_vgg", "lpips_vgg_nolin"]]
    assert list(per_volume.keys()) == ["psnr"]
