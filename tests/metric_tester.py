"""A torchmetrics ``MetricTester``-style harness every metric of the package goes through.

torchmetrics tests each metric the same way: the class batch by batch and accumulated against
the functional form and an independent reference, then after a real distributed sync, plus the
generic contracts (differentiability, dtypes, copies). This module describes each metric once as
a :class:`MetricCase`; ``tests/test_metric_harness.py`` runs every check on every case.

Weights: the DFDs are built from seeded random checkpoint files (torchvision layouts for
LPIPS/DISTS/ResNetFD, the published SSFD layout, a small Med-VAE in the ``medvae`` package's
layout, a tiny DINOv2 folder written by ``save_pretrained`` for HFFD). That is ``weights="random"``
made reproducible: the class, its functional form, the reference packages and every DDP process
read exactly the same weights.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_dfd import DISTS, HFFD, LPIPS, NMSE, PSNR, SSFD, SSIM, VAEFD, ResNetFD
from lightning_dfd import functional as F
from tests.metric_fixtures import minmax01, mr_like_pair, rgb

DFD_REDUCTIONS = ("mean", "none")
H = W = 64
BATCH = 3


@dataclass(frozen=True)
class Weights:
    """Checkpoint files shared by every case (plain paths: they travel to DDP workers)."""

    vgg16: Path
    alexnet: Path
    resnet50: Path
    ssfd: Path
    vaefd: Path
    hf: Path  #: a transformers model folder (tiny DINOv2, ``tests/hf_models.py``)


@dataclass(frozen=True)
class MetricCase:
    """One metric configuration and how to score it three independent ways.

    Attributes:
        name: test id, e.g. ``"lpips_vgg-none"``.
        build: a fresh metric instance.
        functional: the functional form, per image (``reduction="none"``).
        reduction: the metric's reduction.
        pixel: a pixel metric (PSNR/SSIM/NMSE: float64 internally, no encoder).
        partner: a different metric with the same state names, for compute-group tests.
        kwargs: the constructor arguments (for the report).
    """

    name: str
    build: Callable[[], Metric]
    functional: Callable[[Tensor, Tensor], Tensor]
    reduction: str
    pixel: bool
    partner: Callable[[], Metric]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def expected(self, per_image: Tensor) -> Tensor:
        """What ``compute``/``forward`` return for these per-image values."""
        return per_image.mean() if self.reduction == "mean" else per_image


def batches(n_batches: int = 2, seed: int = 11) -> list[tuple[Tensor, Tensor]]:
    """MR-like complex ``(BATCH, H, W)`` pairs, different in every batch."""
    return [mr_like_pair(n=BATCH, h=H, w=W, seed=seed + k) for k in range(n_batches)]


def _dfd_cases(weights: Weights) -> list[MetricCase]:
    from lightning_dfd.functional.hf import hf_fd
    from lightning_dfd.functional.ssfd import ssfd
    from lightning_dfd.functional.vaefd import vae_fd as vaefd

    specs: list[tuple[str, type, dict, Callable]] = [
        ("lpips_vgg", LPIPS, {"net": "vgg", "weights": weights.vgg16},
         functools.partial(F.lpips, net="vgg", weights=weights.vgg16)),
        ("lpips_alex", LPIPS, {"net": "alex", "weights": weights.alexnet},
         functools.partial(F.lpips, net="alex", weights=weights.alexnet)),
        ("lpips_vgg_nolin", LPIPS, {"net": "vgg", "linear": False, "weights": weights.vgg16},
         functools.partial(F.lpips, net="vgg", linear=False, weights=weights.vgg16)),
        ("dists", DISTS, {"weights": weights.vgg16}, functools.partial(F.dists, weights=weights.vgg16)),
        ("resnet_fd", ResNetFD, {"weights": weights.resnet50},
         functools.partial(F.resnet_fd, weights=weights.resnet50)),
        ("ssfd", SSFD, {"weights": weights.ssfd}, functools.partial(ssfd, weights=weights.ssfd)),
        ("vaefd", VAEFD, {"weights": weights.vaefd}, functools.partial(vaefd, weights=weights.vaefd)),
        ("hf_fd", HFFD, {"model_name_or_path": weights.hf, "layers": (1, 2)},
         functools.partial(hf_fd, model_name_or_path=weights.hf, layers=(1, 2))),
    ]
    cases = []
    for name, cls, kwargs, fn in specs:
        for reduction in DFD_REDUCTIONS:
            partner_kwargs = ({"net": "alex", "weights": weights.alexnet, "reduction": reduction}
                              if cls is ResNetFD else {"weights": weights.resnet50, "reduction": reduction})
            partner_cls = LPIPS if cls is ResNetFD else ResNetFD
            cases.append(MetricCase(
                name=f"{name}-{reduction}",
                build=functools.partial(cls, reduction=reduction, **kwargs),
                functional=functools.partial(_none, fn),
                reduction=reduction,
                pixel=False,
                partner=functools.partial(partner_cls, **partner_kwargs),
                kwargs=kwargs,
            ))
    return cases


def _none(fn: Callable, preds: Tensor, target: Tensor) -> Tensor:
    return fn(preds, target, reduction="none")


def _pixel_cases() -> list[MetricCase]:
    specs = [
        ("psnr", PSNR, {}, F.psnr, NMSE),
        ("ssim", SSIM, {}, F.ssim, PSNR),
        ("ssim_gaussian", SSIM, {"window": "gaussian"}, functools.partial(F.ssim, window="gaussian"), PSNR),
        ("nmse", NMSE, {}, F.nmse, PSNR),
    ]
    cases = []
    for name, cls, kwargs, fn, partner in specs:
        for reduction in DFD_REDUCTIONS:
            cases.append(MetricCase(
                name=f"{name}-{reduction}",
                build=functools.partial(cls, reduction=reduction, **kwargs),
                functional=functools.partial(_none, fn),
                reduction=reduction,
                pixel=True,
                partner=functools.partial(partner, reduction=reduction),
                kwargs=kwargs,
            ))
    return cases


def all_cases(weights: Weights) -> list[MetricCase]:
    """Every metric class of the package (SSIM in both windows), both reductions."""
    return _dfd_cases(weights) + _pixel_cases()


CASE_NAMES = [f"{n}-{r}" for n in ("lpips_vgg", "lpips_alex", "lpips_vgg_nolin", "dists", "resnet_fd",
                                   "ssfd", "vaefd", "hf_fd", "psnr", "ssim", "ssim_gaussian", "nmse")
              for r in DFD_REDUCTIONS]


# ------------------------------------------------------------------ independent references


def _lpips_reference(net: str, linear: bool) -> Callable[[Tensor, Tensor], Tensor]:
    import lpips

    model = lpips.LPIPS(net=net, lpips=linear, pretrained=True, verbose=False).eval()

    def score(preds: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            return model(rgb(minmax01(preds)) * 2 - 1, rgb(minmax01(target)) * 2 - 1).flatten()

    return score


def _dists_reference() -> Callable[[Tensor, Tensor], Tensor]:
    from tests.test_metrics_parity import _dists_package_reference

    model = _dists_package_reference()

    def score(preds: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            return model(rgb(minmax01(target)), rgb(minmax01(preds)), batch_average=False).flatten()

    return score


def _resnet_reference(ckpt: Path) -> Callable[[Tensor, Tensor], Tensor]:
    from tests.test_metrics_parity import _resnet_reference as forward

    def score(preds: Tensor, target: Tensor) -> Tensor:
        fp, ft = forward(ckpt, minmax01(preds)), forward(ckpt, minmax01(target))
        return (fp - ft).pow(2).mean(dim=(1, 2, 3))

    return score


def _ssfd_reference() -> Callable[[Tensor, Tensor], Tensor]:
    from tests.test_ssfd_metric import direct_taps, published_state, zscore

    state = published_state()

    def score(preds: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            tp = direct_taps(state, zscore(preds.abs().float().unsqueeze(1)))[3]
            tt = direct_taps(state, zscore(target.abs().float().unsqueeze(1)))[3]
        return (tp - tt).pow(2).mean(dim=(1, 2, 3))

    return score


def _vaefd_reference(model: torch.nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    def encode(x: Tensor) -> Tensor:
        return model.encode(((minmax01(x)[:, None] - 0.5) / 0.5).repeat(1, 3, 1, 1)).mean

    def score(preds: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            return (encode(preds) - encode(target)).pow(2).mean(dim=(1, 2, 3))

    return score


def _hf_reference(folder: Path) -> Callable[[Tensor, Tensor], Tensor]:
    """The tiny DINOv2 by its own transformers class: 64 px -> 70 px (5 patches of 14), tokens by hand."""
    from tests.hf_models import mean_std_of, reference_tower

    model = reference_tower("dinov2", folder)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std_of(folder))

    def encode(x: Tensor) -> list[Tensor]:
        x = torch.nn.functional.interpolate(minmax01(x)[:, None], size=(70, 70), mode="bilinear",
                                            align_corners=False)[:, 0]
        states = model(pixel_values=(rgb(x) - mean) / std, output_hidden_states=True).hidden_states
        return [states[i][:, 1:].reshape(len(x), 5, 5, -1) for i in (1, 2)]  # CLS first

    def score(preds: Tensor, target: Tensor) -> Tensor:
        with torch.no_grad():
            return sum((a - b).pow(2).mean(dim=(1, 2, 3)) for a, b in zip(encode(preds), encode(target)))

    return score


def _pixel_reference(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """scikit-image / fastMRI per image, data range = the target image's maximum."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def one(p: np.ndarray, t: np.ndarray) -> float:
        dr = float(t.max())
        if name == "psnr":
            return peak_signal_noise_ratio(t, p, data_range=dr)
        if name == "ssim":
            return structural_similarity(t, p, data_range=dr)
        if name == "ssim_gaussian":
            return structural_similarity(t, p, data_range=dr, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
        return float(np.sum((t - p) ** 2) / np.sum(t**2))  # fastmri.evaluate.nmse

    def score(preds: Tensor, target: Tensor) -> Tensor:
        p, t = preds.abs().double().numpy(), target.abs().double().numpy()
        return torch.tensor([one(p[k], t[k]) for k in range(p.shape[0])], dtype=torch.float64)

    return score


def references(weights: Weights, vae_model: torch.nn.Module,
               resnet_checkpoint: Path) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    """Per-image reference scorers by metric name (``TORCH_HOME`` must hold the checkpoints)."""
    assert os.environ.get("TORCH_HOME"), "the torchvision references need the random hub cache"
    refs: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "lpips_vgg": _lpips_reference("vgg", True),
        "lpips_alex": _lpips_reference("alex", True),
        "lpips_vgg_nolin": _lpips_reference("vgg", False),
        "dists": _dists_reference(),
        "resnet_fd": _resnet_reference(resnet_checkpoint),
        "ssfd": _ssfd_reference(),
        "vaefd": _vaefd_reference(vae_model),
        "hf_fd": _hf_reference(weights.hf),
    }
    for name in ("psnr", "ssim", "ssim_gaussian", "nmse"):
        refs[name] = _pixel_reference(name)
    return refs


# ------------------------------------------------------------------------- DDP body


def ddp_worker(rank: int, world_size: int, weights: Weights) -> dict[str, dict[str, Tensor]]:
    """In each of 2 processes: every case with one batch per rank, then with rank 1 idle."""
    import torch.distributed as dist

    assert world_size == dist.get_world_size() == 2, "the harness must run in 2 real processes"
    data = batches()
    out: dict[str, dict[str, Tensor]] = {"even": {}, "idle": {}, "rank": {"rank": torch.tensor(rank)}}
    for case in all_cases(weights):
        metric = case.build()
        metric.update(*data[rank])
        out["even"][case.name] = metric.compute().detach()
        metric.reset()
        if rank == 0:
            for preds, target in data:
                metric.update(preds, target)
        out["idle"][case.name] = metric.compute().detach()
        del metric
    return out
