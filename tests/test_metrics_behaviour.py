"""The DFD metric contract: loss use, frozen encoders, checkpoints, bad input, NaN policy."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch

from lightning_dfd import DISTS, LPIPS, NMSE, PSNR, SSIM, ResNetFD, build_metric
from tests.metric_fixtures import mr_like_pair


@pytest.fixture(scope="module")
def alex():
    torch.manual_seed(0)
    return LPIPS(net="alex", weights="random")


def _state(metric):
    return {k: copy.deepcopy(getattr(metric, k)) for k in metric._defaults}


def _same_state(a, b):
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, list):
            assert len(x) == len(y) and all(torch.equal(u, v) for u, v in zip(x, y)), key
        else:
            assert torch.equal(x, y), key


def test_gradients_reach_preds_not_encoder(alex):
    preds, target = mr_like_pair(n=2, h=32, w=32)
    preds = preds.clone().requires_grad_(True)
    loss = alex(preds, target)  # forward: the batch value, with a graph
    loss.backward()
    assert preds.grad is not None and torch.isfinite(preds.grad).all() and preds.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in alex.network.parameters())
    from lightning_dfd.functional import lpips

    x = preds.detach().clone().requires_grad_(True)
    lpips(x, target, net="alex", weights="random").backward()
    assert x.grad.abs().sum() > 0


def test_encoder_stays_eval_and_out_of_state_dict(alex):
    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 2)
            self.metric = LPIPS(net="alex", weights="random")
            self.dists = ResNetFD(weights="random")

    module = Module()
    module.train()
    assert not module.metric.network.training and not module.dists.network.training
    keys = list(module.state_dict())
    assert keys == ["layer.weight", "layer.bias"], keys
    # The encoders are real submodules, frozen: nothing of them is trainable or checkpointed.
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 6
    module.load_state_dict(module.state_dict(), strict=True)
    module.to(torch.float64)  # dtype casts leave the encoder alone; device moves follow .to()
    assert module.metric.network.parameter_dtype == torch.float32


@pytest.mark.parametrize("bad", [
    ("rank", lambda p, t: (p[0, 0], t[0, 0]), ValueError, "shape"),
    ("mismatch", lambda p, t: (p, t[:, :-1]), ValueError, "same shape"),
    ("empty", lambda p, t: (p[:0], t[:0]), ValueError, "N=0"),
    ("integer", lambda p, t: (p.abs().long(), t.abs().long()), TypeError, "integer"),
    ("complex target, real preds", lambda p, t: (p.abs(), t), TypeError, "complex"),
    ("nan", lambda p, t: (p.clone().index_fill_(1, torch.tensor([3]), float("nan")), t), ValueError,
     r"NaN or inf in images \[0, 1\]"),
    ("not a tensor", lambda p, t: (p.numpy(), t), TypeError, "torch.Tensor"),
], ids=lambda b: b[0] if isinstance(b, tuple) else None)
def test_bad_input_raises_and_keeps_state(alex, bad):
    _, make, exc, match = bad
    preds, target = mr_like_pair(n=2, h=32, w=32)
    metric = alex
    metric.reset()
    metric.update(preds, target)
    before = _state(metric)
    bp, bt = make(preds, target)
    with pytest.raises(exc, match=match):
        metric.update(bp, bt)
    _same_state(before, _state(metric))
    assert int(metric.total) == 2


def test_nan_strategies():
    preds, target = mr_like_pair(n=3, h=32, w=32)
    preds = preds.clone()
    preds[1, 0, 0] = float("nan")
    torch.manual_seed(0)
    ignore = ResNetFD(weights="random", nan_strategy="ignore", reduction="none")
    ignore.update(preds, target, sample_ids=torch.tensor([5, 6, 7]))
    assert int(ignore.skipped) == 1
    assert ignore.compute_per_image()["ids"].tolist() == [5, 7]
    torch.manual_seed(0)
    clean = ResNetFD(weights="random", reduction="none")
    clean.update(preds[[0, 2]], target[[0, 2]])
    assert torch.allclose(ignore.compute(), clean.compute())
    torch.manual_seed(0)
    propagate = ResNetFD(weights="random", nan_strategy="propagate", reduction="none")
    propagate.update(preds, target)
    values = propagate.compute()
    assert torch.isnan(values[1]) and torch.isfinite(values[[0, 2]]).all()
    with pytest.raises(ValueError, match="`target` holds NaN"):
        ResNetFD(weights="random").update(target, preds)
    with pytest.raises(ValueError, match="nan_strategy"):
        ResNetFD(weights="random", nan_strategy="skip")


def test_constant_images_are_finite(alex):
    zeros = torch.zeros(2, 32, 32)
    for metric in (alex, DISTS(weights="random"), ResNetFD(weights="random")):
        metric.reset()
        metric.update(zeros, zeros + 3.0)
        assert torch.isfinite(metric.compute()), type(metric).__name__
    for cls in (PSNR, NMSE):
        metric = cls()
        metric.update(zeros + 1, zeros + 2)
        assert torch.isfinite(metric.compute())


def test_channels_are_independent_images_and_normalization_modes(alex):
    preds, target = mr_like_pair(n=2, h=32, w=32)
    stacked_p, stacked_t = torch.stack([preds, preds * 2], 1), torch.stack([target, target * 2], 1)
    per_image = LPIPS(net="alex", weights="random", reduction="none")
    per_image.network.load_state_dict(alex.network.state_dict())
    per_image.update(stacked_p, stacked_t)
    values = per_image.compute()
    assert values.shape == (4,)
    assert torch.allclose(values[0::2], values[1::2], atol=1e-6)  # min-max: scale invariant
    target_mode = LPIPS(net="alex", weights="random", normalization="target", reduction="none")
    target_mode.network.load_state_dict(alex.network.state_dict())
    target_mode.update(preds * 5, target)
    assert not torch.allclose(target_mode.compute(), values[0::2])
    with pytest.raises(ValueError, match="Argument `normalization` must be one of"):
        LPIPS(net="alex", weights="random", normalization="zscore")


def test_half_precision_inputs_are_upcast(alex):
    preds, target = mr_like_pair(n=2, h=32, w=32, complex_=False)
    alex.reset()
    alex.update(preds.half(), target.half())
    half = alex.compute()
    alex.reset()
    alex.update(preds.half().float(), target.half().float())
    assert torch.allclose(half, alex.compute())


def test_max_batch_chunks_give_identical_values(alex):
    preds, target = mr_like_pair(n=5, h=32, w=32)
    full = LPIPS(net="alex", weights="random", reduction="none")
    full.network.load_state_dict(alex.network.state_dict())
    chunked = LPIPS(net="alex", weights="random", reduction="none", max_batch=2)
    chunked.network.load_state_dict(alex.network.state_dict())
    full.update(preds, target)
    chunked.update(preds, target)
    assert torch.allclose(full.compute(), chunked.compute(), atol=1e-6)


def test_build_metric_and_class_attributes():
    assert build_metric("psnr", weights="random").higher_is_better is True
    assert SSIM.higher_is_better and not NMSE.higher_is_better
    metric = build_metric("lpips_vgg_nolin", weights="random")
    assert isinstance(metric, LPIPS) and metric.linear is False and metric.network.lins is None
    assert metric.higher_is_better is False and metric.is_differentiable and not metric.full_state_update
    with pytest.raises(ValueError, match="Unknown metric .fid.; known names: psnr"):
        build_metric("fid")


def test_ssim_per_volume_requires_data_range():
    with pytest.raises(ValueError, match="data_range"):
        SSIM().update(torch.rand(2, 16, 16), torch.rand(2, 16, 16), volume_ids=torch.tensor([0, 0]))


def test_plot_returns_figure(alex):
    alex.reset()
    alex.update(*mr_like_pair(n=1, h=32, w=32))
    fig, ax = alex.plot()
    assert fig is not None and ax is not None
