"""PSNR/SSIM/NMSE: volume ids (ints or names, no special values) and the paper's Gaussian SSIM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_dfd import NMSE, PSNR, SSIM, build_metric
from lightning_dfd import functional as F
from lightning_dfd.functional.pixel import volume_id_tensor, volume_key
from tests.metric_fixtures import mr_like_pair, mr_volumes

TOL = 1e-5



# ---------------------------------------------------------------- volume_ids (issue 11, bug 4)


@pytest.mark.parametrize("cls", [PSNR, NMSE, SSIM])
def test_negative_volume_id_is_an_ordinary_id(cls):
    """Bug 4: ids -1 used to mean "no volume" (PSNR 26.52 vs 9.16 with id 5 on the same slices)."""
    from fastmri import evaluate

    pred, gt = mr_volumes()[2]
    p, t = torch.from_numpy(pred), torch.from_numpy(gt)
    kw = {"data_range": torch.full((4,), float(gt.max()))} if cls is SSIM else {}
    values = {}
    for vid in (-1, 5, -(2**62)):
        metric = cls()
        metric.update(p, t, volume_ids=torch.full((4,), vid), **kw)
        values[vid] = float(metric.compute())
    reference = getattr(evaluate, cls.metric_name)(gt, pred)
    for vid, value in values.items():
        assert value == pytest.approx(reference, rel=TOL), vid
    # and -1 is one volume, not four lone images
    lone = cls()
    lone.update(p, t, **({"data_range": kw["data_range"]} if kw else {}))
    if cls is PSNR:  # SSIM is a mean over slices either way; NMSE differs little
        assert abs(float(lone.compute()) - values[-1]) > 1e-3


def test_negative_ids_mix_with_lone_images():
    """A volume with id -1 and images without a volume stay apart (no sentinel collision)."""
    vols = mr_volumes()
    (p0, t0), (p1, t1) = vols[0], vols[2]
    metric = PSNR(reduction="none")
    metric.update(torch.from_numpy(p0), torch.from_numpy(t0), volume_ids=[-1, -1, -1])
    metric.update(torch.from_numpy(p1), torch.from_numpy(t1))  # 4 lone images
    out = metric.compute_per_volume()
    assert out["in_volume"].tolist() == [True, False, False, False, False]
    assert out["ids"][0] == -1
    from fastmri import evaluate
    from skimage.metrics import peak_signal_noise_ratio

    assert float(out["values"][0]) == pytest.approx(evaluate.psnr(t0, p0), rel=TOL)
    for k in range(4):
        expected = peak_signal_noise_ratio(t1[k], p1[k], data_range=float(t1[k].max()))
        assert float(out["values"][1 + k]) == pytest.approx(expected, rel=TOL)
    assert torch.allclose(metric.compute().double(), out["values"], rtol=1e-6)


@pytest.mark.parametrize("as_type", [list, tuple, np.array])
def test_string_volume_ids_equal_fastmri_per_volume(as_type):
    """fastMRI names volumes by file: names work, and each volume equals fastmri.evaluate."""
    from fastmri import evaluate

    vols = mr_volumes(seed=3)
    names = ["file1000001.h5", "file1000002.h5", "file_ü.h5"]
    metrics = {"psnr": PSNR(reduction="none"), "ssim": SSIM(reduction="none"),
               "nmse": NMSE(reduction="none")}
    # Interleave two volumes across updates: volumes are grouped by name, not by update.
    order = [(0, slice(0, 2)), (2, slice(0, 3)), (1, slice(0, 1)), (0, slice(2, 3)), (2, slice(3, 4))]
    for vid, sl in order:
        pred, gt = vols[vid]
        k = gt[sl].shape[0]
        ids = as_type([names[vid]] * k)
        for name, metric in metrics.items():
            dr = torch.full((k,), float(gt.max())) if name == "ssim" else None
            metric.update(torch.from_numpy(pred[sl]), torch.from_numpy(gt[sl]), data_range=dr,
                          volume_ids=ids)
    for name, metric in metrics.items():
        out = metric.compute_per_volume()
        assert out["in_volume"].all()
        by_id = dict(zip(out["ids"].tolist(), out["values"].tolist(), strict=True))
        assert len(by_id) == 3
        for vid, (pred, gt) in enumerate(vols):
            expected = getattr(evaluate, name)(gt, pred)
            assert by_id[volume_key(names[vid])] == pytest.approx(expected, rel=TOL), (name, vid)
        mean = np.mean([getattr(evaluate, name)(gt, pred) for pred, gt in vols])
        values = metric.compute()
        assert values.shape == (3,)
        assert float(values.double().mean()) == pytest.approx(mean, rel=TOL)
    # The functional forms group names the same way.
    pred = np.concatenate([v[0] for v in vols])
    gt = np.concatenate([v[1] for v in vols])
    ids = [names[v] for v, (_, g) in enumerate(vols) for _ in range(g.shape[0])]
    expected = np.mean([evaluate.psnr(g, p) for p, g in vols])
    assert float(F.psnr(torch.from_numpy(pred), torch.from_numpy(gt), volume_ids=ids)) == pytest.approx(
        expected, rel=TOL)


def test_volume_key_is_stable_blake2b():
    import hashlib

    digest = hashlib.blake2b(b"file1000000.h5", digest_size=8).digest()
    assert volume_key("file1000000.h5") == int.from_bytes(digest, "little", signed=True)
    assert len({volume_key(f"file{k}.h5") for k in range(10_000)}) == 10_000
    assert volume_id_tensor(np.array(["a", "b"]), 2).tolist() == [volume_key("a"), volume_key("b")]
    assert volume_id_tensor(np.array([3, -4], dtype=np.int16), 2).tolist() == [3, -4]


@pytest.mark.parametrize(("ids", "match"), [
    (torch.tensor([True, False]), "boolean"),
    ([True, False], "boolean"),
    (np.array([True, True]), "bool"),
    (torch.tensor([0.0, 1.0]), "float"),
    (torch.tensor([0, 1, 2]), r"shape \(2,\)"),
    (torch.tensor([[0, 1]]), r"shape \(2,\)"),
    ([0, 1, 2], "3 ids"),
    (["a.h5"], "1 ids"),
    ("ab", "str"),
    ([0, "a.h5"], "int, str"),
    ([[0], [1]], "list"),
    ([2**63, 0], "2 integers"),
    (5, "int"),
])
@pytest.mark.parametrize("cls", [PSNR, SSIM, NMSE])
def test_bad_volume_ids_raise_and_leave_state(cls, ids, match):
    x = torch.rand(2, 16, 16) + 0.5
    metric = cls()
    metric.update(x, x * 0.9, data_range=2.0, volume_ids=[1, 1])
    before = float(metric.compute())
    with pytest.raises(ValueError, match=match):
        metric.update(x, x.flip(-1), data_range=2.0, volume_ids=ids)
    assert float(metric.compute()) == before
    assert len(getattr(metric, metric._stats_state)) == 1
    assert len(getattr(metric, metric._groups_state)) == 1
    fn = getattr(F, cls.metric_name)
    kwargs = {} if cls is NMSE else {"data_range": 2.0}
    with pytest.raises(ValueError, match=match):
        fn(x, x, volume_ids=ids, **kwargs)


def test_volume_ids_with_channels_and_ignore():
    """Each batch element's channels belong to its volume; skipped images leave their volume."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 2, 16, 16, generator=g) + 1
    p = t + 0.1 * torch.randn(3, 2, 16, 16, generator=g)
    p_bad = p.clone()
    p_bad[1, 0] = float("nan")
    metric = PSNR(nan_strategy="ignore", reduction="none")
    metric.update(p_bad, t, volume_ids=["x", "y", "x"])
    keep = [0, 1, 3, 4, 5]
    pm, tm = p.flatten(0, 1)[keep], t.flatten(0, 1)[keep]
    expected = F.psnr(pm, tm, volume_ids=["x", "x", "y", "x", "x"], reduction="none")
    out = metric.compute_per_volume()
    assert metric.skipped == 1
    order = torch.argsort(torch.tensor([volume_key("x"), volume_key("y")]))
    assert torch.allclose(out["values"], expected)
    assert out["ids"].tolist() == torch.tensor([volume_key("x"), volume_key("y")])[order].tolist()


# --------------------------------------------------------- the paper's SSIM (issue 14, Wang et al.)


def _ssim_pairs(seed=0):
    preds, target = mr_like_pair(n=3, h=64, w=48, seed=seed)
    return preds.abs().double(), target.abs().double()


def test_gaussian_ssim_matches_torchmetrics():
    """torchmetrics' SSIM map cropped to the valid region equals ours (and meddlr's, skimage's).

    torchmetrics 1.9 reflect-pads by the window radius and then averages the *whole* map, the
    padded border included, where meddlr and skimage crop it: its scalar differs at the border.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    p, t = _ssim_pairs()
    ours = F.ssim(p, t, reduction="none", window="gaussian")
    for k in range(3):
        dr = float(t[k].max())
        full_mean, ssim_map = tm_ssim(p[k][None, None], t[k][None, None], gaussian_kernel=True,
                                      sigma=1.5, kernel_size=11, data_range=dr, k1=0.01, k2=0.03,
                                      return_full_image=True)
        expected = ssim_map[..., 5:-5, 5:-5].mean()
        assert abs(float(ours[k]) - float(expected)) <= TOL
        assert abs(float(ours[k]) - float(full_mean)) > 1e-4  # the documented border difference
    # The class, on a shared data range, batch by batch.
    tm = StructuralSimilarityIndexMeasure(data_range=2.0, return_full_image=True, reduction="none")
    _, ssim_map = tm(p[:, None], t[:, None])
    expected = ssim_map[..., 5:-5, 5:-5].flatten(1).mean(1)
    assert (F.ssim(p, t, data_range=2.0, window="gaussian", reduction="none") - expected).abs().max() <= TOL
    assert 0.1 < float(expected.mean()) < 0.99  # a real, non-trivial similarity was compared


def test_gaussian_ssim_matches_skimage_and_class():
    from skimage.metrics import structural_similarity

    p, t = _ssim_pairs(seed=1)
    pc, tc = mr_like_pair(n=3, h=64, w=48, seed=1)  # complex: compared as magnitudes
    metric = SSIM(window="gaussian", reduction="none")
    metric.update(pc, tc)
    ours = metric.compute()
    uniform = F.ssim(p, t, reduction="none")
    for k in range(3):
        pk, tk = p[k].numpy(), t[k].numpy()
        dr = float(tk.max())
        expected = structural_similarity(tk, pk, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=dr)
        assert abs(float(ours[k]) - expected) <= TOL
        assert abs(float(uniform[k]) - structural_similarity(tk, pk, data_range=dr)) <= TOL
        assert abs(float(uniform[k]) - expected) > 1e-3  # the two conventions really differ


def test_gaussian_ssim_per_volume_and_build_metric():
    from skimage.metrics import structural_similarity

    pred, gt = mr_volumes(seed=2)[2]
    dr = float(gt.max())
    metric = build_metric("ssim", window="gaussian")
    assert isinstance(metric, SSIM) and metric.window == "gaussian"
    metric.update(torch.from_numpy(pred), torch.from_numpy(gt), data_range=torch.full((4,), dr),
                  volume_ids=["v"] * 4)
    expected = np.mean([structural_similarity(gt[k], pred[k], gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=dr)
                        for k in range(4)])
    assert float(metric.compute()) == pytest.approx(expected, abs=TOL)


def test_ssim_window_checks():
    with pytest.raises(ValueError, match="window"):
        SSIM(window="box")
    with pytest.raises(ValueError, match="window"):
        F.ssim(torch.rand(1, 16, 16), torch.rand(1, 16, 16), window="box")
    with pytest.raises(ValueError, match="11x11"):
        F.ssim(torch.rand(1, 10, 16), torch.rand(1, 10, 16), window="gaussian")
    x = torch.rand(1, 10, 16)
    assert float(F.ssim(x, x)) == 1.0  # 7x7 still fits


def test_gaussian_ssim_is_differentiable():
    p, t = _ssim_pairs()
    p = p.clone().requires_grad_(True)
    F.ssim(p, t, window="gaussian").backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_collection_never_merges_the_two_ssim_windows():
    """Equal states after an adversarial first batch (preds == target) must not merge windows."""
    from torchmetrics import MetricCollection

    (p, t), (p2, t2) = mr_like_pair(n=2, h=32, w=32, seed=4), mr_like_pair(n=2, h=32, w=32, seed=5)
    def members():
        return {"uniform": SSIM(nan_strategy="ignore"),
                "gaussian": SSIM(window="gaussian", nan_strategy="ignore"),
                "ignore": PSNR(nan_strategy="ignore"), "propagate": PSNR(nan_strategy="propagate")}

    collection, alone = MetricCollection(members()), members()
    bad = p2.clone()
    bad[0, 0, 0] = float("nan")
    for preds, target in ((t, t.clone()), (p, t), (bad, t2)):
        collection.update(preds, target)
        for m in alone.values():
            m.update(preds, target)
    values = collection.compute()
    for key, m in alone.items():
        expected = m.compute()
        assert torch.allclose(values[key], expected, equal_nan=True), key
    assert abs(float(values["uniform"]) - float(values["gaussian"])) > 1e-3
    assert torch.isnan(values["propagate"]) and not torch.isnan(values["ignore"])  # inf: t == t
