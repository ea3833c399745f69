"""Numerical parity of every metric with its reference implementation, on the same weights."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
import torch

from lightning_dfd import DISTS, LPIPS, NMSE, PSNR, SSIM, ResNetFD
from lightning_dfd import functional as F
from tests.metric_fixtures import minmax01, mr_like_pair, mr_volumes, rgb

TOL = 1e-5


def per_image(metric, preds, target):
    metric.update(preds, target)
    return metric.compute()


@pytest.mark.parametrize(("net", "arch", "linear"), [
    ("vgg", "vgg16", True), ("alex", "alexnet", True), ("vgg", "vgg16", False)
])
def test_lpips_matches_lpips_package(net, arch, linear, torchvision_checkpoint, reference_hub):
    import lpips

    ckpt = torchvision_checkpoint(arch)
    preds, target = mr_like_pair()
    ours = per_image(LPIPS(net=net, linear=linear, weights=ckpt, reduction="none"), preds, target)
    reference = lpips.LPIPS(net=net, lpips=linear, pretrained=True, verbose=False)
    with torch.no_grad():
        expected = reference(rgb(minmax01(preds)) * 2 - 1, rgb(minmax01(target)) * 2 - 1).flatten()
    assert ours.shape == expected.shape == (3,)
    assert (ours - expected).abs().max() <= TOL
    assert expected.abs().min() > 1e-4  # a real, non-trivial distance was compared


def test_lpips_matches_torchmetrics(torchvision_checkpoint, reference_hub):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    ckpt = torchvision_checkpoint("vgg16")
    preds, target = mr_like_pair(n=4, seed=1)
    ours = per_image(LPIPS(net="vgg", weights=ckpt), preds, target)
    reference = LearnedPerceptualImagePatchSimilarity(net_type="vgg", normalize=True)
    reference.update(rgb(minmax01(preds)), rgb(minmax01(target)))
    expected = reference.compute()
    assert abs(float(ours) - float(expected)) <= TOL
    assert float(functional := F.lpips(preds, target, weights=ckpt)) == pytest.approx(float(ours), abs=1e-6)
    assert functional > 0


def _dists_package_reference():
    """DISTS_pytorch loads its alpha/beta with a CUDA location: map it to the CPU."""
    from DISTS_pytorch import DISTS_pt

    original = torch.load
    DISTS_pt.torch.load = functools.partial(original, map_location="cpu")
    try:
        return DISTS_pt.DISTS()
    finally:
        DISTS_pt.torch.load = original


def test_dists_matches_dists_pytorch_and_torchmetrics(torchvision_checkpoint, reference_hub):
    ckpt = torchvision_checkpoint("vgg16")
    preds, target = mr_like_pair(n=3, seed=2)
    ours = per_image(DISTS(weights=ckpt, reduction="none"), preds, target)
    x, y = rgb(minmax01(preds)), rgb(minmax01(target))
    # DISTS_pytorch's forward(x, y) takes (distorted, reference); it is symmetric anyway.
    expected = _dists_package_reference()(y, x, batch_average=False).flatten()
    assert (ours - expected).abs().max() <= TOL
    assert expected.min() > 1e-4
    if importlib.util.find_spec("torchmetrics.image.dists") is None:  # torchmetrics < 1.7 (lowest)
        return
    from torchmetrics.image.dists import DeepImageStructureAndTextureSimilarity

    tm = DeepImageStructureAndTextureSimilarity()
    tm.update(x, y)
    assert abs(float(ours.mean()) - float(tm.compute())) <= TOL


def _resnet_reference(ckpt, images01):
    """A direct torchvision forward, tapping layer3[3].conv3 with a hook."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    model.eval()
    out = {}
    model.layer3[3].conv3.register_forward_hook(lambda m, i, o: out.setdefault("f", o))
    with torch.no_grad():
        model(rgb(images01) * 2 - 1)
    return out["f"]


def test_resnet_fd_matches_direct_torchvision_forward(torchvision_checkpoint, tmp_path):
    ckpt = torchvision_checkpoint("resnet50")
    preds, target = mr_like_pair(n=2, seed=3)
    ours = per_image(ResNetFD(weights=ckpt, reduction="none"), preds, target)
    fp, ft = _resnet_reference(ckpt, minmax01(preds)), _resnet_reference(ckpt, minmax01(target))
    expected = (fp - ft).pow(2).mean(dim=(1, 2, 3))
    assert (ours - expected).abs().max() <= TOL * expected.abs().max()
    # The published RadImageNet layout: torchvision children[:9] inside `backbone`.
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    wrapper = torch.nn.Module()
    wrapper.backbone = torch.nn.Sequential(*list(model.children())[:9])
    rin = tmp_path / "ResNet50.pt"
    torch.save(wrapper.state_dict(), rin)
    assert next(iter(torch.load(rin))).startswith("backbone.0.")
    ours_rin = per_image(ResNetFD(weights=rin, reduction="none"), preds, target)
    assert torch.equal(ours_rin, ours)
    assert torch.allclose(F.resnet_fd(preds, target, weights=rin, reduction="none"), ours)



def test_psnr_ssim_nmse_match_fastmri_evaluate():
    evaluate = pytest.importorskip("fastmri.evaluate")  # the [recon] extra

    vols = mr_volumes()
    ours = {"psnr": PSNR(), "ssim": SSIM(), "nmse": NMSE()}
    for vid, (pred, gt) in enumerate(vols):
        # Complex inputs: the metrics compare magnitudes, as fastMRI does.
        phase = np.exp(1j * 0.7)
        p = torch.from_numpy(pred * phase).to(torch.complex64)
        t = torch.from_numpy(gt * phase).to(torch.complex64)
        ids = torch.full((gt.shape[0],), vid)
        maxval = torch.full((gt.shape[0],), float(gt.max()))
        for name, metric in ours.items():
            metric.update(p, t, data_range=maxval if name != "nmse" else None, volume_ids=ids)
    expected = {
        "psnr": np.mean([evaluate.psnr(gt, pred) for pred, gt in vols]),
        "ssim": np.mean([evaluate.ssim(gt, pred) for pred, gt in vols]),
        "nmse": np.mean([evaluate.nmse(gt, pred) for pred, gt in vols]),
    }
    for name, metric in ours.items():
        value = float(metric.compute())
        assert abs(value - expected[name]) <= TOL * max(1.0, abs(expected[name])), name
    # PSNR needs no data_range: it takes the volume's max, as fastmri.evaluate.psnr does.
    psnr_default = PSNR()
    for vid, (pred, gt) in enumerate(vols):
        psnr_default.update(torch.from_numpy(pred), torch.from_numpy(gt),
                            volume_ids=torch.full((gt.shape[0],), vid))
    assert abs(float(psnr_default.compute()) - expected["psnr"]) <= TOL * expected["psnr"]


def test_pixel_metrics_per_image_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pred, gt = mr_volumes(seed=1)[2]
    p, t = torch.from_numpy(pred), torch.from_numpy(gt)
    ssim_ours = F.ssim(p, t, reduction="none")
    psnr_ours = F.psnr(p, t, reduction="none")
    for k in range(gt.shape[0]):
        dr = float(gt[k].max())
        assert abs(float(ssim_ours[k]) - structural_similarity(gt[k], pred[k], data_range=dr)) <= TOL
        assert abs(float(psnr_ours[k]) - peak_signal_noise_ratio(gt[k], pred[k], data_range=dr)) <= TOL
