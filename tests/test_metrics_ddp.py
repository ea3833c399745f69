"""Distributed sync: 2 gloo processes, each with half of the data, equal one process on all."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_dfd import LPIPS, NMSE, PSNR, SSIM, ResNetFD
from lightning_dfd.functional.pixel import volume_key
from lightning_dfd.metrics.sync import IdleRankSafeSync
from tests.ddp import run_ddp
from tests.metric_fixtures import mr_like_pair

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


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
        "psnr_named_none": PSNR(reduction="none"),
        "ssim_gaussian_named_none": SSIM(window="gaussian", reduction="none"),
    }


def _update(metrics, preds, target, ids, volumes):
    for name, metric in metrics.items():
        if "named" in name:  # fastMRI names volumes by file: strings survive the sync
            names = [f"file{int(v)}.h5" for v in volumes]
            metric.update(preds, target, data_range=torch.ones(len(ids)), volume_ids=names)
        elif name.startswith(("psnr", "ssim")):
            metric.update(preds, target, data_range=torch.ones(len(ids)), volume_ids=volumes)
        else:
            metric.update(preds, target, sample_ids=ids)


def _results(metrics):
    out = {name: metric.compute() for name, metric in metrics.items()}
    per_image = metrics["resnet_none"].compute_per_image()
    out["resnet_per_image_ids"] = per_image["ids"]
    out["resnet_per_image_values"] = per_image["values"]
    named = metrics["psnr_named_none"].compute_per_volume()
    out["named_ids"], out["named_values"] = named["ids"], named["values"]
    return out


def _rank_fn(rank, world_size):
    assert world_size == dist.get_world_size() == 2
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
    assert results[1]["named_ids"].tolist() == sorted(volume_key(f"file{v}.h5") for v in (0, 1, 2))
    assert torch.equal(results[0]["named_values"], results[1]["named_values"])
    assert results[0]["psnr_named_none"].shape == (3,)  # volume 2, split across ranks, met again


# ----------------------------------------------------- idle rank (issue 11, bug 5)


def _idle_metrics():
    torch.manual_seed(0)  # identical random encoders in every process
    return {
        "psnr": PSNR(), "psnr_none": PSNR(reduction="none"),
        "ssim": SSIM(), "ssim_gaussian_none": SSIM(window="gaussian", reduction="none"),
        "nmse": NMSE(), "nmse_none": NMSE(reduction="none"),
        "resnet_mean": ResNetFD(weights="random"),
        "resnet_none": ResNetFD(weights="random", reduction="none"),
    }


def _idle_update(metrics, preds, target, volumes):
    for name, metric in metrics.items():
        if name.startswith(("psnr", "ssim", "nmse")):
            dr = torch.ones(len(volumes)) if name.startswith("ssim") else None
            metric.update(preds, target, data_range=dr, volume_ids=volumes)
        else:  # int64 ids next to float values: the idle stand-in matched neither
            metric.update(preds, target, sample_ids=torch.arange(len(volumes)) * 10)


class _Rows(IdleRankSafeSync, Metric):
    """A toy ``cat`` state whose trailing shape a test can choose per process."""

    def __init__(self):
        super().__init__()
        self.add_state("rows", [], dist_reduce_fx="cat")

    def update(self, x):
        self.rows.append(x)

    def compute(self):
        return torch.zeros(0) if isinstance(self.rows, list) and not self.rows else dim_zero_cat(self.rows)


def _idle_rank_fn(rank, world_size):
    assert world_size == dist.get_world_size() == 2
    preds, target, _, volumes = _dataset()
    metrics = _idle_metrics()
    if rank == 0:  # rank 1 gets no update at all (e.g. an uneven last validation batch)
        _idle_update(metrics, preds, target, volumes)
    out = {name: metric.compute() for name, metric in metrics.items()}
    out["resnet_none_ids"] = metrics["resnet_none"].compute_per_image()["ids"]
    out["rank"] = dist.get_rank()
    # Idle everywhere: no collective mismatch, the "nothing seen" values.
    nothing = _idle_metrics()
    out["nothing_psnr"] = nothing["psnr"].compute()
    out["nothing_resnet_none"] = nothing["resnet_none"].compute()
    # Busy ranks with different dtypes are promoted; different trailing shapes raise everywhere.
    promoted = _Rows()
    promoted.update(torch.ones(2, 3, dtype=torch.float16 if rank == 0 else torch.float64))
    out["promoted"] = promoted.compute()
    bad = _Rows()
    bad.update(torch.ones(2, 3 + rank))
    try:
        bad.compute()
        out["mismatch"] = "no error"
    except RuntimeError as err:
        out["mismatch"] = str(err)
    return out


def test_idle_rank_equals_single_process(tmp_path):
    """Bug 5: a rank with no update aborted every ``cat`` state sync (gloo collective mismatch)."""
    preds, target, _, volumes = _dataset()
    single = _idle_metrics()
    _idle_update(single, preds, target, volumes)
    expected = {name: metric.compute() for name, metric in single.items()}
    results = run_ddp(_idle_rank_fn, tmp_path=tmp_path)
    assert [r["rank"] for r in results] == [0, 1]  # both processes really answered
    for rank_result in results:
        for key, value in expected.items():
            got = rank_result[key]
            assert got.shape == value.shape, key
            assert torch.allclose(got.double(), value.double(), atol=1e-6, rtol=1e-6), key
    assert expected["resnet_none"].shape == (5,) and expected["psnr_none"].shape == (3,)
    for r in results:
        assert torch.equal(r["resnet_none_ids"], torch.arange(5) * 10)
        assert torch.isnan(r["nothing_psnr"]) and r["nothing_resnet_none"].shape == (0,)
        assert r["promoted"].dtype == torch.float64 and r["promoted"].shape == (4, 3)
        assert "different trailing shapes" in r["mismatch"], r["mismatch"]
