"""Inputs, random weights and the implementations we compare against.

Nothing here downloads: seeded random torchvision checkpoints are written under torchvision's
own file names into a private torch-hub cache (``TORCH_HOME``), so the ``lpips`` package,
``DISTS_pytorch`` and torchmetrics load exactly the file our metrics get as an explicit path.

Every reference takes the same complex ``(N, H, W)`` batch our metrics take and returns
per-image values; the input preparation each one needs (magnitude, per-image min-max, pseudo-RGB)
is written here independently of the library and counted in its time.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

TORCHVISION_FILES = {"vgg16": "vgg16-397923af.pth", "resnet50": "resnet50-0676ba61.pth"}
#: a seeded random SSFD encoder in the published checkpoint layout, next to the torchvision files
SSFD_FILE = "ssfd-random.ckpt"


def write_random_checkpoints(torch_home: Path, seed: int = 0) -> dict[str, Path]:
    """Seeded random VGG-16 and ResNet-50 checkpoints in ``torch_home/hub/checkpoints``."""
    folder = Path(torch_home) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arch, name in TORCHVISION_FILES.items():
        path = folder / name
        if not path.exists():
            torch.manual_seed(seed)
            torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
        paths[arch] = path
    path = folder / SSFD_FILE
    if not path.exists():
        from lightning_dfd.encoders.ssfd import SSFDEncoder

        torch.manual_seed(seed)
        torch.save({"model_state_dict": SSFDEncoder().state_dict()}, path)
    paths["ssfd"] = path
    return paths


def checkpoint_paths() -> dict[str, Path]:
    """The checkpoints under ``$TORCH_HOME`` (written by :func:`write_random_checkpoints`)."""
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    paths = {arch: folder / name for arch, name in TORCHVISION_FILES.items()}
    paths["ssfd"] = folder / SSFD_FILE
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"benchmark checkpoints missing: {missing}")
    return paths


def mr_like_batch(n: int, h: int, w: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Complex ``(n, h, w)`` predictions and targets: ellipses with a smooth phase, and a blurred,
    noisy prediction of each (values differ per image)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    images = []
    for _ in range(n):
        c = torch.rand(6, generator=g)
        body = ((xx / (0.7 + 0.2 * c[0])) ** 2 + (yy / (0.85 + 0.1 * c[1])) ** 2 < 1).float()
        inner = (((xx - 0.3 * c[2] + 0.15) / 0.25) ** 2 + ((yy - 0.3 * c[3]) / 0.4) ** 2 < 1).float()
        texture = 0.1 * torch.sin(20 * (xx * c[4] + yy * c[5]))
        images.append(body * (0.6 + texture) + 0.4 * inner)
    target_mag = torch.stack(images)
    phase = torch.exp(1j * torch.pi * 0.3 * (xx + yy))
    blurred = nn.functional.avg_pool2d(target_mag[:, None], 3, 1, 1)[:, 0]
    pred_mag = blurred + 0.05 * torch.randn(n, h, w, generator=g)
    return (pred_mag * phase).to(torch.complex64), (target_mag * phase).to(torch.complex64)


def minmax01(x: Tensor) -> Tensor:
    """Complex ``(N, H, W)`` -> per-image min-max scaled magnitudes ``(N, H, W)``."""
    m = x.abs().float()
    lo = m.flatten(1).min(1).values[:, None, None]
    hi = m.flatten(1).max(1).values[:, None, None]
    return (m - lo) / (hi - lo)


def rgb(x: Tensor) -> Tensor:
    """``(N, H, W)`` -> contiguous ``(N, 3, H, W)``."""
    return x[:, None].repeat(1, 3, 1, 1)


def _vgg16(path: Path) -> nn.Module:
    model = torchvision.models.vgg16(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def vgg_floor(path: Path) -> nn.Module:
    """Torchvision VGG-16 ``features[:30]`` (up to relu5_3, the last LPIPS tap)."""
    return _vgg16(path).features[:30]


def dists_floor(path: Path) -> nn.Module:
    """The DISTS encoder: VGG-16 to relu5_3 with max-pooling replaced by L2 pooling."""
    from DISTS_pytorch.DISTS_pt import L2pooling

    layers = list(_vgg16(path).features[:30])
    for index, channels in ((4, 64), (9, 128), (16, 256), (23, 512)):
        layers[index] = L2pooling(channels=channels)
    return nn.Sequential(*layers).eval().requires_grad_(False)


def _resnet50(path: Path) -> nn.Module:
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


def resnet_floor(path: Path) -> nn.Module:
    """Torchvision ResNet-50 up to ``layer3.3.conv3`` and nothing after (the ResNetFD tap)."""
    m = _resnet50(path)
    block = m.layer3[3]
    return nn.Sequential(
        m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, *m.layer3[:3],
        block.conv1, block.bn1, block.relu, block.conv2, block.bn2, block.relu, block.conv3,
    ).eval().requires_grad_(False)


def lpips_package() -> Callable[[Tensor, Tensor], Tensor]:
    """``lpips.LPIPS(net="vgg")`` on the hub checkpoint: per-image values of a complex batch."""
    import lpips

    model = lpips.LPIPS(net="vgg", pretrained=True, verbose=False).eval()

    def score(preds: Tensor, target: Tensor) -> Tensor:
        x, y = rgb(minmax01(preds)) * 2 - 1, rgb(minmax01(target)) * 2 - 1
        return model(x, y).flatten()

    score.module = model
    return score


def torchmetrics_lpips() -> Callable[[Tensor, Tensor], Tensor]:
    """torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` (VGG), one ``update`` per batch."""
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="vgg", normalize=True, reduction="mean")

    def score(preds: Tensor, target: Tensor) -> Tensor:
        metric.update(rgb(minmax01(preds)), rgb(minmax01(target)))
        values = metric.all_scores[-1].flatten()
        metric.reset()
        return values

    score.module = metric
    return score


def dists_package() -> Callable[[Tensor, Tensor], Tensor]:
    """``DISTS_pytorch.DISTS`` (its alpha/beta are saved with a CUDA location: mapped to CPU)."""
    from DISTS_pytorch import DISTS_pt

    original = DISTS_pt.torch.load
    DISTS_pt.torch.load = functools.partial(original, map_location="cpu")
    try:
        model = DISTS_pt.DISTS().eval()
    finally:
        DISTS_pt.torch.load = original

    def score(preds: Tensor, target: Tensor) -> Tensor:
        # forward(distorted, reference); the score is symmetric.
        return model(rgb(minmax01(target)), rgb(minmax01(preds)), batch_average=False).flatten()

    score.module = model
    return score


def torchmetrics_dists(prebuilt: bool) -> Callable[[Tensor, Tensor], Tensor]:
    """torchmetrics' DISTS: the metric class (which rebuilds its VGG-16 in every ``update``), or
    its ``DISTSNetwork`` built once (``prebuilt=True``) to separate that cost from the rest."""
    from torchmetrics.functional.image.dists import DISTSNetwork
    from torchmetrics.image.dists import DeepImageStructureAndTextureSimilarity

    if prebuilt:
        network = DISTSNetwork().eval()

        def score(preds: Tensor, target: Tensor) -> Tensor:
            return network(rgb(minmax01(preds)), rgb(minmax01(target))).flatten()

        score.module = network
        return score
    metric = DeepImageStructureAndTextureSimilarity(reduction="mean")

    def score_class(preds: Tensor, target: Tensor) -> Tensor:
        metric.update(rgb(minmax01(preds)), rgb(minmax01(target)))
        value = metric.compute()
        metric.reset()
        return value.reshape(1)  # the class keeps only a sum: compared as a batch mean

    score_class.module = metric
    return score_class


def resnet_reference(floor: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """ResNetFD by hand on the bare torchvision layers: MSE of ``layer3.3.conv3`` features."""

    def score(preds: Tensor, target: Tensor) -> Tensor:
        fp = floor(rgb(minmax01(preds)) * 2 - 1)
        ft = floor(rgb(minmax01(target)) * 2 - 1)
        return (fp - ft).pow(2).flatten(1).mean(1)

    return score


class _SSFDTap(nn.Module):
    """The SSFD encoder's levels up to ``block4_relu1`` (the default tap), nothing deeper."""

    def __init__(self, encoder: nn.Module, depth: int = 4) -> None:
        super().__init__()
        self.encoder, self.depth = encoder, depth

    def forward(self, x: Tensor) -> Tensor:
        taps, _ = self.encoder(x, depth=self.depth)
        return taps[-1]


def ssfd_floor(path: Path) -> nn.Module:
    """The SSFD encoder (published layout checkpoint at ``path``) up to ``block4_relu1``."""
    from lightning_dfd.encoders.ssfd import SSFDEncoder

    encoder = SSFDEncoder()
    encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"])
    return _SSFDTap(encoder.eval().requires_grad_(False)).eval()


def zscore(x: Tensor) -> Tensor:
    """Per-image z-score of ``(N, 1, H, W)`` (SSFD's preprocessing: unbiased std, floor 1e-8)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / std.clamp_min(1e-8)


def ssfd_reference(floor: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    """SSFD by hand: z-scored magnitudes, MSE of the ``block4_relu1`` features."""

    def score(preds: Tensor, target: Tensor) -> Tensor:
        fp = floor(zscore(preds.abs().float()[:, None]))
        ft = floor(zscore(target.abs().float()[:, None]))
        return (fp - ft).pow(2).flatten(1).mean(1)

    score.module = floor
    return score
