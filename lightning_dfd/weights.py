"""Registry of known checkpoints and their offline-first resolution.

A weights argument is one of: a registry name (``"vgg16-imagenet"``), a path to a file, or the
explicit string ``"random"`` (handled by the encoders, never chosen for you). Names resolve, in order:

1. ``$LIGHTNING_DFD_HOME/<file name>`` (default ``~/.cache/lightning_dfd``);
2. torch hub's checkpoint cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (where torchvision,
   ``lpips`` and torchmetrics look too);
3. a download from the registered URL into ``$LIGHTNING_DFD_HOME``, unless ``LIGHTNING_DFD_OFFLINE=1``.

Every file is checked against its sha256 (or the sha256 prefix torchvision puts in its file names)
and loaded with ``torch.load(weights_only=True)``: a checkpoint that carries code is refused.

Example:
    >>> from lightning_dfd import weights
    >>> weights.get_spec("vgg16-imagenet").filename
    'vgg16-397923af.pth'
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

OFFLINE_ENV = "LIGHTNING_DFD_OFFLINE"
HOME_ENV = "LIGHTNING_DFD_HOME"


class WeightsError(RuntimeError):
    """A checkpoint could not be found, verified or read."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """No file for a registered checkpoint, and downloading is off or failed."""


class ChecksumError(WeightsError, ValueError):
    """A checkpoint file does not match its registered sha256."""


class CorruptWeightsError(WeightsError, ValueError):
    """A checkpoint file is truncated, not a checkpoint, or carries pickled code."""


@dataclass(frozen=True)
class WeightSpec:
    """One known checkpoint.

    Attributes:
        name: registry key, e.g. ``"resnet50-radimagenet"``.
        filename: the file's name on disk (torchvision's names keep their hash prefix).
        url: where the file is published.
        arch: which architecture it fits (``"vgg16"``, ``"alexnet"``, ``"resnet50"``, ...).
        sha256: full sha256 of the file, when it is known.
        sha256_prefix: leading hex digits of the sha256 (torchvision's file-name convention).
        description: one line for ``lightning-dfd weights list``.
    """

    name: str
    filename: str
    url: str
    arch: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    description: str = ""

    @property
    def checksum(self) -> str | None:
        """The most specific known checksum, for messages."""
        return self.sha256 or (f"{self.sha256_prefix}..." if self.sha256_prefix else None)


_REGISTRY: dict[str, WeightSpec] = {}


def register(spec: WeightSpec, *, overwrite: bool = False) -> WeightSpec:
    """Add a checkpoint to the registry (encoder modules register theirs at import)."""
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ValueError(f"weights name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registry() -> Mapping[str, WeightSpec]:
    """A read-only view of every registered checkpoint."""
    return dict(_REGISTRY)


def get_spec(name: str) -> WeightSpec:
    """The registered spec for ``name``; a clear error listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown weights {name!r}: known names are {sorted(_REGISTRY)}, or pass a file path"
        ) from None


register(WeightSpec(
    name="vgg16-imagenet",
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    arch="vgg16",
    sha256_prefix="397923af",
    description="torchvision VGG-16 (IMAGENET1K_V1): the LPIPS and DISTS backbone",
))
register(WeightSpec(
    name="alexnet-imagenet",
    filename="alexnet-owt-7be5be79.pth",
    url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    arch="alexnet",
    sha256_prefix="7be5be79",
    description="torchvision AlexNet (IMAGENET1K_V1): the LPIPS-Alex backbone",
))
register(WeightSpec(
    name="resnet50-imagenet",
    filename="resnet50-0676ba61.pth",
    url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
    arch="resnet50",
    sha256_prefix="0676ba61",
    description="torchvision ResNet-50 (IMAGENET1K_V1)",
))
register(WeightSpec(
    name="resnet50-radimagenet",
    filename="RadImageNet-ResNet50.pt",
    url="https://huggingface.co/philadamson93/RINFD/resolve/main/ResNet50/ResNet50.pt",
    arch="resnet50",
    description="RadImageNet ResNet-50 (the RINFD encoder; `backbone.N` layout)",
))

#: timm backbones for ``TimmFD(model_name=..., weights=<name>)``: the name is timm's own
#: ``<model>.<pretrained tag>``, ``arch`` is ``timm:<model>``. Files are the timm organisation's
#: ``model.safetensors`` on the Hugging Face hub, saved locally under a distinct name. The hub
#: publishes no sha256 next to them that could be checked here offline: unpinned (pin a trusted
#: copy with ``lightning-dfd weights verify``).
TIMM_WEIGHTS = [
    WeightSpec(name=f"{model}.{tag}", filename=f"timm-{model}.{tag}.safetensors",
               url=f"https://huggingface.co/timm/{model}.{tag}/resolve/main/model.safetensors",
               arch=f"timm:{model}", description=f"timm {model} ({what})")
    for model, tag, what in (
        ("convnext_tiny", "fb_in1k", "ConvNeXt-T, ImageNet-1k"),
        ("convnext_tiny", "in12k_ft_in1k", "ConvNeXt-T, ImageNet-12k fine-tuned on 1k"),
        ("efficientnet_b0", "ra_in1k", "EfficientNet-B0, ImageNet-1k, RandAugment"),
        ("vit_small_patch14_dinov2", "lvd142m", "DINOv2 ViT-S/14, self-supervised on LVD-142M"),
        ("vit_small_patch16_224", "augreg_in21k_ft_in1k", "ViT-S/16, ImageNet-21k fine-tuned on 1k"),
        ("resnet50", "a1_in1k", "ResNet-50, ImageNet-1k, timm A1 recipe"),
    )
]
for _spec in TIMM_WEIGHTS:
    register(_spec)


def weights_home() -> Path:
    """``$LIGHTNING_DFD_HOME``, or ``~/.cache/lightning_dfd``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "lightning_dfd")


def offline() -> bool:
    """True when ``LIGHTNING_DFD_OFFLINE`` is set to a true value."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def search_paths(spec: WeightSpec) -> list[Path]:
    """Where a registered file is looked for, in order."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [weights_home() / spec.filename, hub / spec.filename]


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_ok(path: Path, spec: WeightSpec) -> bool | None:
    """True/False against the known checksum; None when the spec has none."""
    if spec.sha256 is None and spec.sha256_prefix is None:
        return None
    digest = sha256_of(path)
    if spec.sha256 is not None:
        return digest == spec.sha256.lower()
    return digest.startswith(spec.sha256_prefix.lower())


def verify(path: Path, spec: WeightSpec) -> None:
    """Raise :class:`ChecksumError` when ``path`` does not match ``spec``'s checksum."""
    if checksum_ok(path, spec) is False:
        raise ChecksumError(
            f"checksum mismatch for weights {spec.name!r}: file {path} has sha256 "
            f"{sha256_of(path)}, expected {spec.checksum}. Delete it and download {spec.url} "
            f"again into {weights_home()}"
        )


def _missing_message(spec: WeightSpec, reason: str) -> str:
    places = ", ".join(str(p) for p in search_paths(spec))
    checksum = spec.checksum or "not published"
    return (
        f"weights {spec.name!r} ({spec.description or spec.arch}) not found: {reason}. "
        f"Download {spec.url} (sha256 {checksum}) and save it as {weights_home() / spec.filename} "
        f"(or set ${HOME_ENV}); looked in: {places}"
    )


def download(spec: WeightSpec) -> Path:
    """Download a registered file into :func:`weights_home`, checking its checksum."""
    dst = weights_home() / spec.filename
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(spec.url, str(dst), hash_prefix=None, progress=True)
    except Exception as err:  # network errors come in many types
        raise MissingWeightsError(_missing_message(spec, f"download failed ({err})")) from err
    verify(dst, spec)
    return dst


def resolve(name_or_path: str | os.PathLike, *, allow_download: bool | None = None) -> Path:
    """Find the file for a registry name or an explicit path.

    Args:
        name_or_path: a registry name, or a path to a checkpoint file.
        allow_download: override ``LIGHTNING_DFD_OFFLINE`` (None: download unless offline).

    Raises:
        MissingWeightsError: nothing found (the message names the file, URL, sha256 and folder).
        ChecksumError: a found file does not match the registered checksum.
    """
    key = os.fspath(name_or_path)
    if key == "random":
        raise ValueError("`weights='random'` has no file: build the encoder without loading weights")
    if key not in _REGISTRY:
        path = Path(key).expanduser()
        if not path.is_file():
            hint = "" if os.sep in key or path.suffix else f"; known names are {sorted(_REGISTRY)}"
            raise MissingWeightsError(f"weights file {path} does not exist{hint}")
        return path
    spec = _REGISTRY[key]
    for path in search_paths(spec):
        if path.is_file():
            verify(path, spec)
            return path
    if allow_download is False or (allow_download is None and offline()):
        raise MissingWeightsError(_missing_message(spec, f"offline (${OFFLINE_ENV}=1)"))
    return download(spec)


def load_checkpoint(name_or_path: str | os.PathLike) -> Any:
    """Resolve and read a checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".pt"); torch.save({"w": torch.zeros(1)}, path)
        >>> list(load_checkpoint(path))
        ['w']
    """
    path = resolve(name_or_path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "Unpickler" in text:
            reason = "it carries pickled Python objects/code, which weights_only=True refuses"
        else:
            reason = f"it is truncated or not a torch checkpoint ({type(err).__name__})"
        raise CorruptWeightsError(f"cannot load weights file {path}: {reason}") from err


def state_dict_from(checkpoint: Any, *keys: str) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint to a flat state dict, trying the nested ``keys`` in order.

    Strips a leading ``module.`` (DataParallel) from every key.
    """
    obj = checkpoint
    for key in keys:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptWeightsError(
            f"checkpoint is not a state dict of tensors (looked under {list(keys) or 'the top level'})"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the first bad keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        own, given = set(module.state_dict()), set(state)
        missing, unexpected = sorted(own - given)[:5], sorted(given - own)[:5]
        raise CorruptWeightsError(
            f"weights {source} do not fit {type(module).__name__}: missing keys {missing}, "
            f"unexpected keys {unexpected} ({str(err).splitlines()[0]})"
        ) from err


def status(spec: WeightSpec) -> tuple[str, Path | None]:
    """``("found" | "missing" | "checksum mismatch" | "found (no checksum)", path)``."""
    for path in search_paths(spec):
        if path.is_file():
            ok = checksum_ok(path, spec)
            state = {True: "found", False: "checksum mismatch", None: "found (no checksum)"}[ok]
            return state, path
    return "missing", None
