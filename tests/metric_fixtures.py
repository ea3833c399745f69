"""Fixtures for metric tests: random-but-fixed torchvision checkpoints and MR-like image pairs.

The checkpoints are written once per session in torchvision's file names inside a torch-hub
cache, so the reference packages (``lpips``, ``DISTS_pytorch``, torchmetrics), which load
"pretrained" torchvision weights, read exactly the file our metrics get as an explicit path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

TORCHVISION_FILES = {
    "vgg16": "vgg16-397923af.pth",
    "alexnet": "alexnet-owt-7be5be79.pth",
    "resnet50": "resnet50-0676ba61.pth",
}


def write_random_checkpoint(arch: str, folder: Path, seed: int = 0) -> Path:
    """Save a seeded random torchvision ``arch`` state dict as torchvision names it."""
    path = folder / TORCHVISION_FILES[arch]
    if not path.exists():
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def alexnet_random(tmp_path_factory) -> Path:
    """A seeded random AlexNet checkpoint, so a test and the command it runs use the same weights."""
    return write_random_checkpoint("alexnet", tmp_path_factory.mktemp("alexnet_random"), seed=0)


@pytest.fixture(scope="session")
def resnet_random(tmp_path_factory) -> Path:
    """A seeded random ResNet-50 checkpoint (see :func:`alexnet_random`)."""
    return write_random_checkpoint("resnet50", tmp_path_factory.mktemp("resnet_random"), seed=1)


@pytest.fixture(scope="session")
def hub_dir(tmp_path_factory) -> Path:
    """A torch-hub home whose checkpoints/ folder the torchvision checkpoints are written to."""
    return tmp_path_factory.mktemp("torch_home")


@pytest.fixture(scope="session")
def torchvision_checkpoint(hub_dir):
    """``torchvision_checkpoint("vgg16")`` -> path of a random checkpoint in the hub cache."""

    def get(arch: str) -> Path:
        return write_random_checkpoint(arch, hub_dir / "hub" / "checkpoints")

    return get


@pytest.fixture
def reference_hub(hub_dir, monkeypatch):
    """Point torch hub (hence torchvision 'pretrained' loading) at the random checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(hub_dir))
    return hub_dir


def mr_like_pair(n: int = 3, h: int = 64, w: int = 48, seed: int = 0, complex_: bool = True):
    """A complex target with smooth structure and a noisy, slightly blurred prediction."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([
        (torch.exp(-((xx - 0.3 * k / n) ** 2 + yy**2) * 4) + 0.3 * (xx**2 + yy**2 < 0.5).float())
        for k in range(n)
    ])
    phase = torch.exp(1j * torch.pi * 0.3 * (xx + yy))
    target = base * phase if complex_ else base
    noise = 0.05 * torch.randn(n, h, w, generator=g)
    preds = torch.nn.functional.avg_pool2d(base[:, None], 3, 1, 1)[:, 0] + noise
    preds = preds * phase if complex_ else preds
    return preds.to(torch.complex64 if complex_ else torch.float32), target.to(
        torch.complex64 if complex_ else torch.float32
    )


def minmax01(x: torch.Tensor) -> torch.Tensor:
    """Per-image min-max of magnitudes, written independently of the library's preprocessing."""
    m = x.abs().float()
    flat = m.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (m - lo) / (hi - lo)


def rgb(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, 3, H, W)."""
    return x[:, None].repeat(1, 3, 1, 1)


def mr_volumes(seed: int = 0) -> list:
    """Three volumes with unequal slice counts: ``(preds, target)`` float32 magnitude arrays each."""
    rng = np.random.default_rng(seed)
    vols = []
    for slices in (3, 1, 4):
        gt = np.abs(rng.normal(size=(slices, 40, 32)) + 2.0).astype(np.float32)
        pred = np.abs(gt + rng.normal(scale=0.3, size=gt.shape)).astype(np.float32)
        vols.append((pred, gt))
    return vols
