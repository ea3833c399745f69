"""Distributed sync: 2 gloo processes, each with half of the data, equal one process on all."""

from __future__ import annotations

import pytest
import torch

from lightning_dfd import LPIPS, PSNR, SSIM, ResNetFD
from tests.ddp import run_ddp
from tests.metric_fixtures import mr_like_pair

pytestmark = pytest.mark.ddp


def _dataset():
    preds, target = mr_like_pair(n=5, h=48, w=40, seed=7)
    ids = torch.arange(5) * 10
    volumes = torch.tensor([0, 0, 1, 2, 2])
    return preds, target, ids, volumes


def _metrics():
    torch.manual_seed(0)  # identical random encoders in every process
    return {
        "resnet_mean": ResNetFD(weights="random"),
        "resnet_none": ResNetFD(weights="random", reduction="none"),
        "lpips_alex_none": LPIPS(net="alex", weights="random", reduction="none"),
        "psnr_volume": PSNR(),
        "ssim_volume": SSIM(),
    }


def _update(metrics, preds, target, ids, volumes):
    for name, metric in metrics.items():
        if name.startswith(("psnr", "ssim")):
            metric.update(preds, target, data_range=torch.ones(len(ids)), volume_ids=volumes)
        else:
            metric.update(preds, target, sample_ids=ids)


def _results(metrics):
    out = {name: metric.compute() for name, metric in metrics.items()}
    per_image = metrics["resnet_none"].compute_per_image()
    out["resnet_per_image_ids"] = per_image["ids"]
    out["resnet_per_image_values"] = per_image["values"]
    return out


def _rank_fn(rank, world_size):
    preds, target, ids, volumes = _dataset()
    # Uneven shards; volume 2 is even split across the two processes.
    part = [0, 1, 3] if rank == 0 else [2, 4]
    metrics = _metrics()
    _update(metrics, preds[part], target[part], ids[part], volumes[part])
    return _results(metrics)


def test_two_processes_equal_one(tmp_path):
    preds, target, ids, volumes = _dataset()
    single = _metrics()
    _update(single, preds, target, ids, volumes)
    expected = _results(single)
    results = run_ddp(_rank_fn, tmp_path=tmp_path)
    for rank_result in results:
        for key, value in expected.items():
            got = rank_result[key]
            if key.endswith("_none"):  # cat order differs across processes: compare as sets
                got, value = got.sort().values, value.sort().values
            assert got.shape == value.shape, key
            assert torch.allclose(got.double(), value.double(), atol=1e-6), key
    assert torch.equal(results[0]["resnet_per_image_ids"], ids)
