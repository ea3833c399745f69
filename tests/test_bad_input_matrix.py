"""One table of bad inputs across the metric API, weights, data pipeline and CLIs.

Each row: what is wrong, the exception type (or exit code) expected, a pattern its message must
contain, and a check that what was already accumulated (metric state, output table) is unchanged.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from lightning_dfd import LPIPS, PSNR, ResNetFD
from lightning_dfd import weights as W
from lightning_dfd.cli import main as dfd_cli
from recon_models.data import DataFormatError, FastMRISliceDataset
from recon_models.data.synthetic import make_synthetic_dataset
from tests.metric_fixtures import mr_like_pair

SIZE = dict(coils=2, shape=(32, 16), recon_shape=(16, 16))


@dataclass
class Case:
    name: str
    run: Callable[[Path], object]  # raises, or returns an exit code
    expected: type[BaseException] | int
    match: str


@pytest.fixture(scope="module")
def metric():
    torch.manual_seed(0)
    m = LPIPS(net="alex", weights="random")
    m.update(*mr_like_pair(n=2, h=32, w=32))  # the accumulated state every case must keep
    return m


def _metric_call(make_inputs, **metric_kwargs):
    """Update the shared metric (or a variant sharing its encoder) with bad inputs."""

    def run(tmp, metric):
        target_metric = metric
        if metric_kwargs:
            target_metric = LPIPS(net="alex", weights="random", **metric_kwargs)
            target_metric.network.load_state_dict(metric.network.state_dict())
        preds, target = make_inputs(*mr_like_pair(n=2, h=32, w=32))
        target_metric.update(preds, target)
        return target_metric

    return run


def _weights_file(writer):
    def run(tmp, metric):
        path = tmp / "weights.pth"
        writer(path)
        return ResNetFD(weights=path)

    return run


def _save_pickled_code(path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    with open(path, "wb") as f:
        pickle.dump({"fc.weight": Payload()}, f)


def _checksum_mismatch(tmp, metric):
    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.zeros(1)}, home / "resnet50-0676ba61.pth")
    return ResNetFD(weights="imagenet")


def _one_volume(tmp) -> Path:
    [path] = make_synthetic_dataset(tmp / "data", 1, slices=2, **SIZE)
    return path


def _missing_kspace(tmp, metric):
    path = _one_volume(tmp)
    with h5py.File(path, "a") as hf:
        del hf["kspace"]
    return FastMRISliceDataset(path.parent)


def _truncated_h5(tmp, metric):
    path = _one_volume(tmp)
    path.write_bytes(path.read_bytes()[:4000])
    return FastMRISliceDataset(path.parent)


def _mask_wrong_width(tmp, metric):
    path = _one_volume(tmp)
    with h5py.File(path, "a") as hf:
        hf["mask"] = np.ones(SIZE["shape"][1] - 1, dtype=np.float32)
    return FastMRISliceDataset(path.parent)


def _empty_folder(tmp, metric):
    (tmp / "empty").mkdir()
    return FastMRISliceDataset(tmp / "empty")


def _duplicate_reader_keys(tmp, metric):
    metrics = pd.DataFrame({"image": [1, 2, 3, 4], "psnr": [30.0, 28.0, 25.0, 20.0]})
    scores = pd.DataFrame({"image": [1, 1, 2, 3, 4], "Reader": ["A", "A", "A", "A", "A"],
                           "Aliasing": [8, 7, 6, 4, 2]})
    metrics.to_csv(tmp / "m.csv", index=False)
    scores.to_csv(tmp / "s.csv", index=False)
    return dfd_cli(["correlate", "--metrics", str(tmp / "m.csv"), "--scores", str(tmp / "s.csv"),
                    "--on", "image", "--score-columns", "Aliasing", "--out", str(tmp / "out")])


CASES = [
    Case("wrong rank", _metric_call(lambda p, t: (p[0, 0], t[0, 0])), ValueError, r"\(N, H, W\)"),
    Case("shape mismatch", _metric_call(lambda p, t: (p[:, :, :-1], t)), ValueError, "same shape"),
    Case("N=0", _metric_call(lambda p, t: (p[:0], t[:0])), ValueError, "N=0"),
    Case("integer input", _metric_call(lambda p, t: (p.abs().int(), t.abs().int())), TypeError,
         "floating point or complex"),
    Case("complex target, real preds", _metric_call(lambda p, t: (p.abs(), t)), TypeError,
         "`target` is complex"),
    Case("NaN in preds (nan_strategy=error)",
         _metric_call(lambda p, t: (torch.where(p.abs() > 0.5, float("nan"), p), t)),
         ValueError, r"`preds` holds NaN or inf in images"),
    Case("inf in target", _metric_call(lambda p, t: (p, t.clone().fill_(float("inf")))), ValueError,
         "`target` holds NaN or inf"),
    Case("bad sample_ids", lambda tmp, m: m.update(*mr_like_pair(n=2, h=32, w=32),
                                                  sample_ids=torch.tensor([0.5, 1.5])),
         ValueError, "sample_ids"),
    Case("missing weights file", lambda tmp, m: ResNetFD(weights=tmp / "absent.pth"),
         FileNotFoundError, "absent.pth does not exist"),
    Case("missing registered weights (offline)", lambda tmp, m: ResNetFD(weights="radimagenet"),
         W.MissingWeightsError, "ResNet50.pt"),
    Case("truncated weights file",
         _weights_file(lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 64)),
         W.CorruptWeightsError, "truncated or not a torch checkpoint"),
    Case("garbage weights file", _weights_file(lambda p: p.write_text("hello")),
         W.CorruptWeightsError, "weights.pth"),
    Case("checksum mismatch", _checksum_mismatch, W.ChecksumError, "0676ba61"),
    Case("pickled checkpoint carrying code", _weights_file(_save_pickled_code),
         W.CorruptWeightsError, "pickled"),
    Case("weights of another architecture",
         _weights_file(lambda p: torch.save({"conv.weight": torch.zeros(1)}, p)),
         W.CorruptWeightsError, "do not fit"),
    Case("h5 file missing kspace", _missing_kspace, DataFormatError, r"key 'kspace'"),
    Case("truncated h5 file", _truncated_h5, DataFormatError, r"\.h5"),
    Case("mask of the wrong width", _mask_wrong_width, DataFormatError, r"key 'mask'"),
    Case("empty data folder", _empty_folder, FileNotFoundError, "no .h5 files"),
    Case("reader-score CSV with duplicate keys", _duplicate_reader_keys, 2, "duplicate"),
]


def _snapshot(metric):
    return {k: copy.deepcopy(getattr(metric, k)) for k in metric._defaults}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case, metric, tmp_path, capsys):
    before = _snapshot(metric)
    if isinstance(case.expected, int):
        assert case.run(tmp_path, metric) == case.expected
        out = capsys.readouterr()
        assert case.match in (out.out + out.err).lower()
    else:
        with pytest.raises(case.expected, match=case.match):
            case.run(tmp_path, metric)
    after = _snapshot(metric)
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"{case.name} changed state {key}"
    assert int(metric.total) == 2


def test_matrix_has_at_least_15_cases():
    assert len(CASES) >= 15


def test_accepted_edge_cases_keep_meaning(metric):
    """Half precision is upcast, NaN can be skipped, constant images stay finite."""
    preds, target = mr_like_pair(n=2, h=32, w=32, complex_=False)
    half = LPIPS(net="alex", weights="random", reduction="none")
    half.network.load_state_dict(metric.network.state_dict())
    half.update(preds.half(), target.half())
    full = LPIPS(net="alex", weights="random", reduction="none")
    full.network.load_state_dict(metric.network.state_dict())
    full.update(preds.half().float(), target.half().float())
    assert torch.allclose(half.compute(), full.compute())
    skip = ResNetFD(weights="random", nan_strategy="ignore")
    bad = preds.clone()
    bad[0, 0, 0] = float("inf")
    skip.update(bad, target)
    assert int(skip.skipped) == 1 and int(skip.total) == 1
    constant = PSNR()
    constant.update(torch.ones(1, 8, 8), torch.ones(1, 8, 8) * 2)
    assert torch.isfinite(constant.compute())
