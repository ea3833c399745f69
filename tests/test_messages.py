"""Error messages that lead somewhere: random weights, offline fetch, (real, imag) layout, DFD names."""

from __future__ import annotations

import pytest
import torch

from lightning_dfd import LPIPS, SSIM
from lightning_dfd import weights as W
from lightning_dfd.cli import main as dfd_cli
from lightning_dfd.metrics import METRICS, PIXEL_METRICS
from lightning_dfd.preprocess import complex_from_real_pair


@pytest.fixture
def offline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_DFD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LIGHTNING_DFD_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "home"


def test_offline_missing_weights_mention_random(offline_home):
    with pytest.raises(W.MissingWeightsError) as err:
        LPIPS(net="vgg")
    message = str(err.value)
    assert 'weights="random"' in message and "--weights random" in message
    assert "lightning-dfd weights fetch vgg16-imagenet" in message  # the way to get the file


def test_weights_fetch_offline_does_not_send_the_user_to_weights_fetch(offline_home, capsys):
    dfd_cli(["weights", "fetch", "vgg16-imagenet"])
    out = capsys.readouterr().out
    assert "fetch failed" in out and "offline" in out
    assert "run `lightning-dfd weights fetch" not in out
    assert "unset $LIGHTNING_DFD_OFFLINE" in out and 'weights="random"' in out
    assert not list(offline_home.glob("*.pth"))


def test_real_imag_layout_points_to_complex_from_real_pair():
    x = torch.rand(2, 64, 64, 2)  # fastMRI: (..., H, W, 2) real / imaginary
    for metric in (LPIPS(net="vgg", weights="random"), SSIM()):
        with pytest.raises(ValueError, match="complex_from_real_pair") as err:
            metric.update(x, x)
        assert "(64, 2)" in str(err.value)
    z = complex_from_real_pair(x).abs()  # the way out works
    metric = LPIPS(net="vgg", weights="random")
    metric.update(z, z)
    assert float(metric.compute()) == pytest.approx(0.0, abs=1e-6)


def test_a_small_image_without_that_layout_gets_no_such_hint():
    x = torch.rand(2, 8, 8)
    with pytest.raises(ValueError) as err:
        LPIPS(net="vgg", weights="random").update(x, x)
    assert "complex_from_real_pair" not in str(err.value)


def test_unknown_dfd_name_lists_the_names():
    from recon_models.modules import ReconModule

    with pytest.raises(ValueError) as err:
        ReconModule(dfds={"lpip": {}})
    message = str(err.value)
    assert "'lpip'" in message
    dfds = [name for name in METRICS if name not in PIXEL_METRICS]
    assert all(name in message for name in dfds)
    assert "psnr" not in message.split("known DFDs:")[1]
