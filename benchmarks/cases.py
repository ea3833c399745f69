"""The metric cases: ours (uncached, cached), the reference packages, and the bare-encoder floor.

A :class:`Case` scores a complex ``(N, H, W)`` batch of predictions against targets and returns
per-image values (a floor returns None: it only runs the encoder over the prepared predictions).
Cases of one group share inputs and weights, so their times and values compare directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from benchmarks import references as R

GROUPS = ("LPIPS-VGG", "DISTS", "ResNetFD", "SSFD")
#: per group: the reference every row's values are compared with
VALUE_REFERENCE = {"LPIPS-VGG": "lpips package", "DISTS": "DISTS_pytorch",
                   "ResNetFD": "torchvision by hand", "SSFD": "SSFD encoder by hand"}
#: bf16 rows (``precision="bf16"``: bf16 autocast around the encoder) -> their fp32 twin
BF16_CASES = {"ours bf16 uncached": "ours uncached", "ours bf16 cached": "ours cached"}
#: bf16 rows with ``compile=True`` (inductor, frozen weights; compiled during the warm-up call,
#: 1-2 min per shape on 2 cores, so only where a target needs it: DISTS) -> their fp32 twin
COMPILED_CASES = {"ours bf16 compiled uncached": "ours uncached"}
TWINS = {**BF16_CASES, **COMPILED_CASES}
#: a cache large enough for every target of the largest configuration (no eviction while timing)
CACHE_BYTES = 8 << 30
#: LPIPS-VGG with and without linear layers, updated together through a DFDCollection
SHARED_CASE = "ours uncached, lin + nolin in one DFDCollection"


@dataclass
class Case:
    """One implementation of one DFD.

    Attributes:
        group: ``"LPIPS-VGG"``, ``"DISTS"`` or ``"ResNetFD"``.
        name: the row label.
        kind: ``"floor"``, ``"ours"`` or ``"reference"``.
        run: ``run(*prepare(preds, target))`` -> per-image values (None for a floor).
        prepare: untimed input preparation (the floor's pseudo-RGB predictions).
        reset: called before each new input configuration (clears a feature cache).
        cache_bytes: bytes of cached target features (cached rows only).
    """

    group: str
    name: str
    kind: str
    run: Callable[..., Tensor | None]
    prepare: Callable[[Tensor, Tensor], tuple] = lambda p, t: (p, t)
    reset: Callable[[], None] = lambda: None
    cache_bytes: Callable[[], int] | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _floor(group: str, name: str, module: nn.Module, scale: Callable[[Tensor], Tensor],
           device: torch.device, channels_last: bool = True, rgb: bool = True) -> Case:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(device).to(memory_format=fmt)

    def prepare(preds: Tensor, target: Tensor) -> tuple:
        x01 = R.minmax01(preds)
        x = scale((R.rgb(x01) if rgb else x01[:, None]).to(device))
        return (x.contiguous(memory_format=fmt),)

    def run(x: Tensor) -> None:
        with torch.inference_mode():
            module(x)

    return Case(group, name, "floor", run, prepare=prepare)


def _ours(group: str, name: str, factory: Callable[..., nn.Module], device: torch.device, *,
          cached: bool, channels_last: bool, max_batch: int | None = 8,
          precision: str = "fp32", compile: bool = False) -> Case:
    from lightning_dfd.feature_cache import TargetFeatureCache

    cache = TargetFeatureCache(max_bytes=CACHE_BYTES) if cached else None
    metric = factory(reduction="none", channels_last=channels_last, feature_cache=cache,
                     max_batch=max_batch, precision=precision, compile=compile).to(device)

    def run(preds: Tensor, target: Tensor) -> Tensor:
        ids = torch.arange(preds.shape[0], device=device) if cached else None
        metric.update(preds, target, sample_ids=ids)
        values = metric.values[-1]
        metric.reset()
        return values

    def prepare(preds: Tensor, target: Tensor) -> tuple:
        return preds.to(device), target.to(device)

    return Case(group, name, "ours", run, prepare=prepare,
                reset=cache.clear if cache is not None else (lambda: None),
                cache_bytes=(lambda: cache.nbytes) if cache is not None else None,
                extra={"metric": metric})


def _ours_shared(group: str, name: str, vgg, device: torch.device) -> Case:
    """LPIPS-VGG with and without linear layers in one DFDCollection: one VGG pass for both."""
    from lightning_dfd import LPIPS
    from lightning_dfd.metrics import DFDCollection

    options = {"weights": vgg, "reduction": "none", "channels_last": True}
    suite = DFDCollection({"lin": LPIPS(**options), "nolin": LPIPS(linear=False, **options)})
    suite = suite.to(device)

    def run(preds: Tensor, target: Tensor) -> Tensor:
        suite.update(preds, target)
        values = suite["lin"].values[-1]
        suite.reset()
        return values

    def prepare(preds: Tensor, target: Tensor) -> tuple:
        return preds.to(device), target.to(device)

    return Case(group, name, "ours", run, prepare=prepare,
                notes="two metrics (values of the linear one); compare with 'ours uncached'")


def _reference(group: str, name: str, score: Callable[[Tensor, Tensor], Tensor],
               device: torch.device, notes: str = "") -> Case:
    module = getattr(score, "module", None)
    if module is not None:
        module.to(device)

    def prepare(preds: Tensor, target: Tensor) -> tuple:
        return preds.to(device), target.to(device)

    return Case(group, name, "reference", score, prepare=prepare, notes=notes)


def _signed(x: Tensor) -> Tensor:
    return x * 2 - 1


def _imagenet(x: Tensor) -> Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def case_names(group: str) -> list[str]:
    """Row labels of a group, in table order."""
    return {
        "LPIPS-VGG": ["floor: bare VGG-16, channels_last", "floor: bare VGG-16, contiguous",
                      "ours uncached", "ours cached", *BF16_CASES, "ours uncached, library defaults",
                      "ours uncached, max_batch=4", SHARED_CASE, "lpips package",
                      "torchmetrics LPIPS"],
        "DISTS": ["floor: bare DISTS VGG-16, channels_last", "ours uncached", "ours cached",
                  *BF16_CASES, *COMPILED_CASES, "ours uncached, library defaults",
                  "ours uncached, max_batch=4",
                  "DISTS_pytorch", "torchmetrics DISTS (network built once)",
                  "torchmetrics DISTS (metric class)"],
        "ResNetFD": ["floor: bare ResNet-50 to layer3.3.conv3, channels_last", "ours uncached",
                     "ours cached", *BF16_CASES, "ours uncached, library defaults",
                     "torchvision by hand"],
        "SSFD": ["floor: bare SSFD encoder to block4_relu1, channels_last", "ours uncached",
                 "ours cached", *BF16_CASES, "SSFD encoder by hand"],
    }[group]


def build_case(group: str, name: str, device: torch.device) -> Case:
    """Build one case (loads its weights from ``$TORCH_HOME``)."""
    from lightning_dfd import DISTS, LPIPS, SSFD, ResNetFD

    paths = R.checkpoint_paths()
    vgg, resnet, ssfd = paths["vgg16"], paths["resnet50"], paths["ssfd"]
    factories = {
        "LPIPS-VGG": lambda **kw: LPIPS(net="vgg", weights=vgg, **kw),
        "DISTS": lambda **kw: DISTS(weights=vgg, **kw),
        "ResNetFD": lambda **kw: ResNetFD(weights=resnet, **kw),
        "SSFD": lambda **kw: SSFD(weights=ssfd, **kw),
    }
    if name in TWINS:
        return _ours(group, name, factories[group], device, cached=name == "ours bf16 cached",
                     channels_last=True, precision="bf16", compile=name in COMPILED_CASES)
    if name == "ours uncached":
        return _ours(group, name, factories[group], device, cached=False, channels_last=True)
    if name == "ours cached":
        return _ours(group, name, factories[group], device, cached=True, channels_last=True)
    if name == "ours uncached, max_batch=4":
        return _ours(group, name, factories[group], device, cached=False, channels_last=True,
                     max_batch=4)
    if name == SHARED_CASE:
        return _ours_shared(group, name, vgg, device)
    if name == "ours uncached, library defaults":
        return _ours(group, name, factories[group], device, cached=False, channels_last=False)
    builders: dict[str, Callable[[], Case]] = {
        "floor: bare VGG-16, channels_last":
            lambda: _floor(group, name, R.vgg_floor(vgg), _signed, device),
        "floor: bare VGG-16, contiguous":
            lambda: _floor(group, name, R.vgg_floor(vgg), _signed, device, channels_last=False),
        "lpips package": lambda: _reference(group, name, R.lpips_package(), device),
        "torchmetrics LPIPS": lambda: _reference(group, name, R.torchmetrics_lpips(), device),
        "floor: bare DISTS VGG-16, channels_last":
            lambda: _floor(group, name, R.dists_floor(vgg), _imagenet, device),
        "DISTS_pytorch": lambda: _reference(group, name, R.dists_package(), device),
        "torchmetrics DISTS (network built once)":
            lambda: _reference(group, name, R.torchmetrics_dists(prebuilt=True), device),
        "torchmetrics DISTS (metric class)":
            lambda: _reference(group, name, R.torchmetrics_dists(prebuilt=False), device,
                               notes="rebuilds and reloads VGG-16 in every update(); batch mean"),
        "floor: bare ResNet-50 to layer3.3.conv3, channels_last":
            lambda: _floor(group, name, R.resnet_floor(resnet), _signed, device),
        "floor: bare SSFD encoder to block4_relu1, channels_last":
            lambda: _floor(group, name, R.ssfd_floor(ssfd), R.zscore, device, rgb=False),
        "SSFD encoder by hand": lambda: _reference(
            group, name, R.ssfd_reference(R.ssfd_floor(ssfd).to(device)), device,
            notes="preds + targets, contiguous"),
        "torchvision by hand": lambda: _reference(
            group, name, R.resnet_reference(R.resnet_floor(resnet).to(device)), device,
            notes="preds + targets, contiguous"),
    }
    if name not in builders:
        raise ValueError(f"unknown case {name!r} for group {group!r}")
    return builders[name]()
