"""SSFD: the published checkpoint layout loads strictly, and the metric equals a direct forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_dfd import SSFD
from lightning_dfd.encoders.ssfd import SSFD_LAYERS, SSFDEncoder
from lightning_dfd.functional.ssfd import ssfd
from lightning_dfd.weights import CorruptWeightsError, MissingWeightsError, record_pin

# The published layout, written out from the description (not from our module).
PREFIXES = ["firstblock", "encoder1.conv_block", "encoder2.conv_block", "encoder3.conv_block",
            "encoder4.conv_block"]
CHANNELS = [1, 20, 40, 80, 160, 320]


def published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for level, prefix in enumerate(PREFIXES):
        c_in, c = CHANNELS[level], CHANNELS[level + 1]
        state[f"{prefix}.conv1.weight"] = torch.randn(c, c_in, 3, 3, generator=g) / (3 * c_in**0.5)
        state[f"{prefix}.conv1.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{prefix}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g)
        state[f"{prefix}.conv2.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{prefix}.GN.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{prefix}.GN.bias"] = 0.1 * torch.randn(c, generator=g)
    return state


@pytest.fixture()
def published_ckpt(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"model_state_dict": published_state()}, path)
    return path


def direct_taps(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """An independent forward of the published encoder: the relu1 tap of every level."""
    taps = []
    for level, prefix in enumerate(PREFIXES):
        if level > 0:
            x = F.max_pool2d(x, 2)
        relu1 = F.relu(F.conv2d(x, state[f"{prefix}.conv1.weight"], state[f"{prefix}.conv1.bias"],
                                padding=1))
        w = state[f"{prefix}.conv2.weight"]
        w_std = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (
            w.reshape(w.shape[0], -1).std(dim=1).view(-1, 1, 1, 1) + 1e-5)
        y = F.relu(F.conv2d(relu1, w_std, state[f"{prefix}.conv2.bias"], padding=1))
        x = F.group_norm(y, 10, state[f"{prefix}.GN.weight"], state[f"{prefix}.GN.bias"])
        taps.append(relu1)
    return taps


def zscore(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    return (x - flat.mean(1).view(-1, 1, 1, 1)) / flat.std(1).view(-1, 1, 1, 1)


def test_published_layout_loads_strictly(published_ckpt):
    assert set(published_state()) == set(SSFDEncoder().state_dict())
    metric = SSFD(weights=published_ckpt)
    loaded = metric.network.encoder.state_dict()
    for key, value in published_state().items():
        assert torch.equal(loaded[key], value), key


def test_ssfd_equals_direct_forward(published_ckpt):
    torch.manual_seed(0)
    target = torch.rand(3, 48, 40, dtype=torch.complex64)
    preds = target + 0.2 * torch.randn(3, 48, 40, dtype=torch.complex64)
    metric = SSFD(weights=published_ckpt, reduction="none")
    metric.update(preds, target)
    got = metric.compute()

    state = published_state()
    with torch.no_grad():
        tp = direct_taps(state, zscore(preds.abs().unsqueeze(1)))[3]  # block4_relu1
        tt = direct_taps(state, zscore(target.abs().unsqueeze(1)))[3]
    expected = (tp - tt).pow(2).mean(dim=(1, 2, 3))
    assert tp.shape == (3, 160, 6, 5)  # 160 channels at 1/8 resolution
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert (got > 0).all()
    torch.testing.assert_close(ssfd(preds, target, weights=published_ckpt, reduction="none"),
                               expected, rtol=1e-4, atol=1e-6)


def test_several_layers_sum_and_mae(published_ckpt):
    torch.manual_seed(1)
    preds, target = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    per_layer = [ssfd(preds, target, weights=published_ckpt, layers=(name,), reduction="none")
                 for name in ("block1_relu1", "block5_relu1")]
    both = ssfd(preds, target, weights=published_ckpt, layers=("block1_relu1", "block5_relu1"),
                reduction="none")
    torch.testing.assert_close(both, per_layer[0] + per_layer[1])
    state = published_state()
    taps_p = direct_taps(state, zscore(preds))
    taps_t = direct_taps(state, zscore(target))
    mae = ssfd(preds, target, weights=published_ckpt, layers="block2_relu1", distance="mae",
               reduction="none")
    torch.testing.assert_close(mae, (taps_p[1] - taps_t[1]).abs().mean(dim=(1, 2, 3)))


def test_registry_name_resolves_from_home(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError, match="ssfd-fastmri-knee"):
        SSFD()  # offline in tests, and no file placed yet: a clear error, never random weights
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("LIGHTNING_DFD_HOME", str(home))
    torch.save({"model_state_dict": published_state(3)}, home / "ssfd-fastmri-knee.ckpt")
    record_pin("ssfd-fastmri-knee", home / "ssfd-fastmri-knee.ckpt")  # not the published sha256
    metric = SSFD(weights="ssfd-fastmri-knee")
    first = metric.network.encoder.firstblock.conv1.weight
    assert torch.equal(first, published_state(3)["firstblock.conv1.weight"])


def test_bad_checkpoints_raise(tmp_path):
    state = published_state()
    del state["encoder3.conv_block.GN.bias"]
    path = tmp_path / "missing_key.ckpt"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CorruptWeightsError, match="encoder3.conv_block.GN.bias"):
        SSFD(weights=path)
    lightning_like = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model.encoder.firstblock.conv1.weight": torch.zeros(1)}},
               lightning_like)
    with pytest.raises(CorruptWeightsError, match="model_state_dict"):
        SSFD(weights=lightning_like)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="`layers`"):
        SSFD(weights="random", layers=("block4_relu2",))
    with pytest.raises(ValueError, match="`distance`"):
        SSFD(weights="random", distance="l1")
    assert SSFD_LAYERS[3] == "block4_relu1"


def test_constant_images_and_gradients(published_ckpt):
    metric = SSFD(weights=published_ckpt)
    flat = torch.ones(2, 32, 32)
    metric.update(flat, flat)
    assert float(metric.compute()) == 0.0
    preds = torch.rand(2, 32, 32, requires_grad=True)
    loss = ssfd(preds, torch.rand(2, 32, 32), weights=published_ckpt)
    loss.backward()
    assert preds.grad is not None and torch.isfinite(preds.grad).all() and preds.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in metric.network.parameters())
    assert "network" not in "".join(metric.state_dict())  # encoder stays out of checkpoints
