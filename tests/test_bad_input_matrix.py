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


# --- more rows (composition, weights, masks, precision, data content, CLI outputs) -----------


def _lpips(**kwargs):
    return LPIPS(net="alex", weights="random", **kwargs)


def _pair(n=2, h=32, w=32):
    return mr_like_pair(n=n, h=h, w=w)


def _psnr_after_good_update(**bad_kwargs):
    def run(tmp, metric):
        psnr = PSNR()
        preds, target = _pair()
        psnr.update(preds, target, volume_ids=[0, 1])
        before = _snapshot(psnr)
        try:
            psnr.update(preds, target, **bad_kwargs)
        finally:
            after = _snapshot(psnr)
            for key, value in before.items():  # `cat` states are lists of tensors
                pairs = (zip(value, after[key], strict=True) if isinstance(value, list)
                         else [(value, after[key])])
                assert all(torch.equal(a, b) for a, b in pairs), key
    return run


def _weights_directory(tmp, metric):
    (tmp / "folder.pth").mkdir()
    return ResNetFD(weights=tmp / "folder.pth")


def _weights_symlink_loop(tmp, metric):
    link = tmp / "loop.pth"
    link.symlink_to(link)
    return ResNetFD(weights=link)


def _wrong_shapes(path):
    from torchvision.models import resnet50

    state = resnet50().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, path)


def _poisoned_kspace(value):
    def run(tmp, metric):
        path = _one_volume(tmp)
        with h5py.File(path, "r+") as hf:
            kspace = hf["kspace"][()]
            kspace[...] = value
            hf["kspace"][...] = kspace
        from recon_models.data import FastMRIDataModule

        data = FastMRIDataModule(data_path=str(path.parent), split=(1, 0, 0), sens_method="rss")
        return data.prepare_data()
    return run


def _negative_recon_space(tmp, metric):
    import re

    from recon_models.data.fastmri_format import check_volume, ismrmrd_header

    path = _one_volume(tmp)
    xml = ismrmrd_header(SIZE["shape"], (-16, 16), 2, SIZE["coils"]).decode()
    xml = re.sub(r"(<encodedSpace><matrixSize><x>)\d+", rf"\g<1>{SIZE['shape'][0]}", xml)
    with h5py.File(path, "r+") as hf:
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = xml.encode()
    return check_volume(path)


def _evaluate_dirs(tmp):
    target, preds = tmp / "ref", tmp / "pred"
    for folder in (target, preds):
        folder.mkdir()
        with h5py.File(folder / "vol.h5", "w") as hf:
            hf["reconstruction_rss" if folder == target else "reconstruction"] = np.random.rand(2, 24, 24)
    return target, preds


def _evaluate_out_is_a_folder(tmp, metric):
    target, preds = _evaluate_dirs(tmp)
    (tmp / "out.csv").mkdir()
    return dfd_cli(["evaluate", "--target", str(target), "--predictions", str(preds),
                    "--metrics", "psnr", "--out", str(tmp / "out.csv")])


def _evaluate_no_pairs(tmp, metric):
    (tmp / "ref").mkdir(), (tmp / "pred").mkdir()
    return dfd_cli(["evaluate", "--target", str(tmp / "ref"), "--predictions", str(tmp / "pred"),
                    "--metrics", "psnr", "--out", str(tmp / "out" / "r.csv")])


def _correlate_non_numeric(tmp, metric):
    metrics = pd.DataFrame({"image": [1, 2, 3, 4], "psnr": [30.0, 28.0, 25.0, 20.0]})
    scores = pd.DataFrame({"image": [1, 2, 3, 4], "Reader": ["A"] * 4, "Aliasing": [8, 7, "bad", 2]})
    metrics.to_csv(tmp / "m.csv", index=False)
    scores.to_csv(tmp / "s.csv", index=False)
    return dfd_cli(["correlate", "--metrics", str(tmp / "m.csv"), "--scores", str(tmp / "s.csv"),
                    "--on", "image", "--score-columns", "Aliasing", "--out", str(tmp / "out")])


def _fetch_offline(tmp, metric):
    import os

    os.environ["LIGHTNING_DFD_OFFLINE"] = "1"
    try:
        return dfd_cli(["weights", "fetch", "resnet50-radimagenet"])
    finally:
        del os.environ["LIGHTNING_DFD_OFFLINE"]


MORE_CASES = [
    Case("image below the encoder's minimum size",
         lambda tmp, m: _lpips().update(*_pair(h=16, w=16)), ValueError, "at least 31x31"),
    Case("weights=None", lambda tmp, m: ResNetFD(weights=None), TypeError, "weights"),
    Case("weights path is a directory", _weights_directory, W.WeightsError, "directory"),
    Case("weights path is a symlink loop", _weights_symlink_loop, W.WeightsError, "loop"),
    Case("right keys, wrong shapes", _weights_file(_wrong_shapes), W.CorruptWeightsError,
         r"conv1\.weight"),
    Case("unknown precision", lambda tmp, m: _lpips(precision="fp16"), ValueError, "precision"),
    Case("feature_cache of a wrong type", lambda tmp, m: _lpips(feature_cache="yes"), TypeError,
         "feature_cache"),
    Case("max_batch=0", lambda tmp, m: _lpips(max_batch=0), ValueError, "max_batch"),
    Case("unknown normalization", lambda tmp, m: _lpips(normalization="zscore"), ValueError,
         "normalization"),
    Case("sample_ids of the wrong length",
         lambda tmp, m: m.update(*_pair(), sample_ids=torch.tensor([0, 1, 2])), ValueError, "sample_ids"),
    Case("mask of the wrong shape",
         lambda tmp, m: m.update(*_pair(), mask=torch.ones(3, 32, 32, dtype=torch.bool)), ValueError,
         "`mask` must have shape"),
    Case("mask not boolean",
         lambda tmp, m: m.update(*_pair(), mask=torch.ones(2, 32, 32)), TypeError, "torch.bool"),
    Case("empty mask",
         lambda tmp, m: m.update(*_pair(), mask=torch.zeros(2, 32, 32, dtype=torch.bool)), ValueError,
         "empty"),
    Case("non-finite result from finite inputs",
         lambda tmp, m: ResNetFD(weights="random", normalization="none").update(
             *(x.abs() * 1e30 for x in _pair())), ValueError, "not finite"),
    Case("DISTS has no spatial map",
         lambda tmp, m: __import__("lightning_dfd").DISTS(weights="random").distance_map(*_pair()),
         NotImplementedError, "DISTS"),
    Case("boolean volume_ids", _psnr_after_good_update(volume_ids=[True, False]), ValueError, "bool"),
    Case("volume_ids of the wrong length", _psnr_after_good_update(volume_ids=["a.h5"]), ValueError,
         "volume_ids"),
    Case("negative data_range", _psnr_after_good_update(data_range=-1.0), ValueError, "data_range"),
    Case("unknown SSIM window", lambda tmp, m: __import__("lightning_dfd").SSIM(window="box"),
         ValueError, "window"),
    Case("NaN k-space", _poisoned_kspace(np.nan), DataFormatError, "NaN"),
    Case("all-inf k-space", _poisoned_kspace(np.inf), DataFormatError, "inf"),
    Case("negative reconSpace in the header", _negative_recon_space, DataFormatError, "must be positive"),
    Case("evaluate --out is a folder", _evaluate_out_is_a_folder, 2, "out"),
    Case("evaluate with no file pairs", _evaluate_no_pairs, 2, "no"),
    Case("correlate with a non-numeric score", _correlate_non_numeric, 2, "aliasing"),
    Case("weights fetch while offline", _fetch_offline, 1, "offline"),
]
CASES += MORE_CASES


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


def test_matrix_has_at_least_45_cases():
    assert len(CASES) >= 45


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
