"""FrechetDFD: parity with scipy's sqrtm on its own features, torchmetrics' FID, states, DDP, errors.

The reference takes ``extract()``'s features, fits the Gaussians in float64 numpy and computes
``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 sqrtm(S_r S_f))`` with ``scipy.linalg.sqrtm``; ``extract``
itself is checked against the encoder's feature maps averaged by hand.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lightning_dfd import FrechetDFD, ResNetFD
from lightning_dfd.encoders.resnet import ResNetFDNetwork
from tests.ddp import run_ddp
from tests.metric_fixtures import minmax01

#: small encoders (D = 64, 60, 64 features) so that 40 + 30 images give full-rank covariances
ENCODERS = {
    "resnet_fd": ("resnet_fd", {"weights": "random", "layers": ("layer1.0.conv1",)}),
    "ssfd": ("ssfd", {"weights": "random", "layers": ("block1_relu1", "block2_relu1")}),
    "hf_fd": ("hf_fd", {"layers": (1, 2)}),  # a tiny DINOv2 saved by the test (model_name_or_path)
}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.hf_models import save_tiny

    return save_tiny("dinov2", tmp_path_factory.mktemp("frechet_hf") / "dinov2", seed=3)


def build(name, hf_folder_factory=None, **kwargs):
    encoder, encoder_kwargs = ENCODERS[name]
    if name == "hf_fd":
        encoder_kwargs = {**encoder_kwargs, "model_name_or_path": hf_folder_factory()}
    torch.manual_seed(0)
    return FrechetDFD(encoder, **encoder_kwargs, **kwargs)


def image_sets(n_real=40, n_fake=30, size=32, seed=0):
    """Two distributions: smooth blobs (real) and blurrier, noisier blobs (fake), complex-valued."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")

    def blobs(n, width, noise):
        cx, cy = (torch.rand(n, 1, 1, generator=g) - 0.5 for _ in range(2))
        base = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / width)
        return (base + noise * torch.rand(n, size, size, generator=g)) * torch.exp(1j * 0.3 * xx)

    return blobs(n_real, 0.2, 0.05).to(torch.complex64), blobs(n_fake, 0.4, 0.2).to(torch.complex64)


def scipy_frechet(real: torch.Tensor, fake: torch.Tensor) -> float:
    r, f = real.double().numpy(), fake.double().numpy()
    mu_r, mu_f = r.mean(axis=0), f.mean(axis=0)
    s_r, s_f = np.cov(r, rowvar=False), np.cov(f, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_r @ s_f)
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(s_r) + np.trace(s_f) - 2 * np.trace(covmean).real)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_equals_scipy_sqrtm_on_its_own_features(name, request):
    fd = build(name, lambda: request.getfixturevalue("hf_folder"))
    real, fake = image_sets()
    for chunk in real.split(16):
        fd.update(chunk, real=True)
    for chunk in fake.split(7):
        fd.update(chunk, real=False)
    value = fd.compute()
    fr, ff = fd.extract(real), fd.extract(fake)
    assert fr.shape == (40, fd.num_features) and ff.shape == (30, fd.num_features)
    expected = scipy_frechet(fr, ff)
    assert expected > 1e-3
    assert value.dtype == torch.float32
    assert abs(float(value) - expected) <= 1e-5 * expected, (float(value), expected)


def test_extract_is_the_per_layer_spatial_mean_of_the_features():
    torch.manual_seed(0)
    network = ResNetFDNetwork(weights="random", layers=("layer1.0.conv1", "layer2.0.conv1"))
    fd = FrechetDFD(network)
    images = torch.rand(2, 3, 40, 36, dtype=torch.complex64)  # 2 x 3 channels: 6 images
    feats = fd.extract(images)
    gray = minmax01(images.reshape(6, 40, 36))[:, None]  # channel-major: image 0 ch 0, 1, 2, image 1...
    with torch.no_grad():
        maps = network(gray)
    expected = torch.cat([m.mean(dim=(-2, -1)) for m in maps], dim=1)
    assert feats.shape == (6, 64 + 128) == (6, fd.num_features)
    torch.testing.assert_close(feats, expected, rtol=1e-6, atol=1e-7)


def test_equals_torchmetrics_fid_with_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    fd = build("resnet_fd")

    class Pooled(nn.Module):
        num_features = fd.num_features

        def forward(self, x):
            return fd.extract(x)

    fid = FrechetInceptionDistance(feature=Pooled())
    real, fake = image_sets(seed=1)
    real, fake = real.abs(), fake.abs()
    for metric in (fd, fid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    torch.testing.assert_close(fd.compute(), fid.compute().float(), rtol=1e-6, atol=1e-6)


def test_a_set_against_itself_is_zero_and_other_sets_are_not():
    fd = build("ssfd")
    real, fake = image_sets()
    fd.update(real, real=True)
    fd.update(real, real=False)
    scale = float(torch.trace(torch.cov(fd.extract(real).double().T)))
    assert abs(float(fd.compute())) <= 1e-6 * scale
    fd.reset()
    fd.update(real, real=True)
    fd.update(fake, real=False)
    assert float(fd.compute()) > 1e-3 * scale


def test_reset_keeps_the_real_statistics_when_asked():
    real, fake = image_sets()
    keep = build("resnet_fd", reset_real_features=False)
    keep.update(real, real=True)
    keep.update(fake[:10], real=False)
    keep.reset()
    assert int(keep.real_features_num_samples) == 40 and int(keep.fake_features_num_samples) == 0
    keep.update(fake[10:], real=False)
    fresh = build("resnet_fd")
    fresh.update(real, real=True)
    fresh.update(fake[10:], real=False)
    torch.testing.assert_close(keep.compute(), fresh.compute(), rtol=0, atol=0)
    forget = build("resnet_fd")
    forget.update(real, real=True)
    forget.reset()
    assert int(forget.real_features_num_samples) == 0
    assert float(forget.real_features_cov_sum.abs().sum()) == 0


def test_encoder_forms_states_copies_and_dtypes():
    torch.manual_seed(0)
    dfd = ResNetFD(weights="random", layers=("layer1.0.conv1",))
    fd = FrechetDFD(dfd)
    assert fd.network is dfd.network  # shared, not copied
    assert FrechetDFD(dfd.network).num_features == 64
    real, fake = image_sets(n_real=6, n_fake=5)
    fd.update(real, real=True)
    fd.update(fake, real=False)
    assert fd.real_features_sum.dtype == fd.real_features_cov_sum.dtype == torch.float64
    assert fd.state_dict() == {}  # torchmetrics states are not persistent by default, the encoder never
    fd.persistent(True)
    assert set(fd.state_dict()) == {f"{s}_features_{p}" for s in ("real", "fake")
                                    for p in ("sum", "cov_sum", "num_samples")}
    for dup in (copy.deepcopy(fd), pickle.loads(pickle.dumps(fd)), fd.clone()):
        torch.testing.assert_close(dup.compute(), fd.compute(), rtol=0, atol=0)
    fd.to(torch.float16)  # sums stay float64, the encoder stays float32
    assert fd.real_features_sum.dtype == torch.float64 and fd.network.parameter_dtype == torch.float32
    fig, _ = fd.plot()
    assert fig is not None


def test_bad_inputs_give_clear_errors_and_change_nothing():
    fd = build("resnet_fd")
    real, _ = image_sets(n_real=4)
    fd.update(real[:1], real=True)
    with pytest.raises(RuntimeError, match=r"at least 2 real and 2 fake.*1 real and 0 fake"):
        fd.compute()
    before = fd.real_features_sum.clone()
    bad = real.abs().clone()
    bad[2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in images \[2\]"):
        fd.update(bad, real=True)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\)"):
        fd.update(torch.rand(32, 32), real=True)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, C, H, W\)"):
        fd.update(torch.rand(1, 1, 1, 32, 32), real=True)
    with pytest.raises(ValueError, match="no images"):
        fd.update(torch.rand(0, 32, 32), real=True)
    with pytest.raises(TypeError, match="floating point or complex"):
        fd.update(torch.ones(2, 32, 32, dtype=torch.uint8), real=True)
    with pytest.raises(TypeError, match="`real` must be True or False"):
        fd.update(real, real="yes")
    with pytest.raises(ValueError, match=r"needs images of at least \d+x\d+ pixels"):
        FrechetDFD("lpips_alex", weights="random").update(torch.rand(2, 4, 4), real=True)
    assert torch.equal(fd.real_features_sum, before) and int(fd.real_features_num_samples) == 1
    with pytest.raises(ValueError, match=r"`encoder` must be a DFD name.*'psnr'"):
        FrechetDFD("psnr")
    with pytest.raises(ValueError, match="only apply to an encoder given by name"):
        FrechetDFD(ResNetFD(weights="random"), weights="random")
    with pytest.raises(TypeError, match="`encoder`"):
        FrechetDFD(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="`normalization`"):
        FrechetDFD("resnet_fd", weights="random", normalization="target")
    with pytest.raises(ValueError, match="`reset_real_features`"):
        FrechetDFD("resnet_fd", weights="random", reset_real_features=0)


def _ddp_worker(rank, world_size):
    real, fake = image_sets(n_real=12, n_fake=9)
    fd = build("resnet_fd")
    shard_real = real[:8] if rank == 0 else real[8:]  # uneven
    fd.update(shard_real, real=True)
    if rank == 0:  # rank 1 sees no fake image at all
        fd.update(fake, real=False)
    return {"value": fd.compute()}


@pytest.mark.ddp
@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    real, fake = image_sets(n_real=12, n_fake=9)
    single = build("resnet_fd")
    single.update(real, real=True)
    single.update(fake, real=False)
    expected = single.compute()
    results = run_ddp(_ddp_worker, tmp_path=tmp_path)
    for result in results:
        torch.testing.assert_close(result["value"], expected, rtol=1e-6, atol=1e-7)
