"""The one table of known checkpoints, and their offline-first, verified resolution.

A weights argument is one of: a registry name (``"vgg16-imagenet"``), a path to a file, or the
explicit string ``"random"`` (handled by the encoders, never chosen for you). Every checkpoint the
package knows is in :data:`TABLE` — the torchvision backbones, RadImageNet, SSFD (the default file
and the hub's published variants), Med-VAE, and the head weights shipped inside the ``lpips`` and
``DISTS_pytorch`` wheels — so :func:`registry` is the same in every interpreter, whatever was
imported before. Names resolve, in order:

1. ``$LIGHTNING_DFD_HOME/<file name>`` (default ``~/.cache/lightning_dfd``);
2. torch hub's checkpoint cache, ``torch.hub.get_dir()/checkpoints/<file name>`` (where torchvision,
   ``lpips`` and torchmetrics look too);
3. a download from the registered URL into ``$LIGHTNING_DFD_HOME``, unless ``LIGHTNING_DFD_OFFLINE=1``.

Files shipped in a package (``source="package"``) are only looked for inside that installed package.

**Provenance.** A file is accepted when its sha256 equals the published one (``sha256``), starts
with torchvision's file-name prefix (``sha256_prefix``), or equals a sha256 you pinned with
``lightning-dfd weights verify --record NAME PATH`` (kept in ``$LIGHTNING_DFD_HOME/pins.json``). A
spec with neither a published hash nor a pin of yours is *unpinned*: it is used, and its sha256 is
printed so that you can pin it. Hub files can change in place (SSFD's ``default/model.ckpt`` did,
twice): a file that differs from the pinned version is refused with its own and the pinned sha256.

**Downloads** go to a temporary name next to the destination, with a timeout per network read
(``$LIGHTNING_DFD_DOWNLOAD_TIMEOUT`` seconds, default 60), and are renamed into place only when
complete and verified: an interrupted or wrong download never sits under the real name.

**Model folders** (the Hugging Face rows of ``HFFD``, ``arch="hf:<model_type>"``) are the folder
``$LIGHTNING_DFD_HOME/<name>/`` holding ``model.safetensors`` (the registered ``filename``
``<name>/model.safetensors``: the one file resolved, checked against pins and pinned) and its
``companions`` ``config.json`` and ``preprocessor_config.json`` (fetched with it, not checksummed).

Every file is loaded with ``torch.load(weights_only=True)``: a checkpoint that carries code is
refused, and the code never runs.

**Random weights are seeded.** ``weights="random"`` builds the encoder under a fixed seed
(:func:`random_weights_seed`, default :data:`DEFAULT_RANDOM_SEED`; change it with
:func:`set_random_weights_seed` or, for one block, :func:`seeded_random_weights`): two metrics built
with random weights are equal, in every process and on every rank, and the global RNG state is left
as it was (``torch.random.fork_rng``).

Example:
    >>> from lightning_dfd import weights
    >>> weights.get_spec("vgg16-imagenet").filename
    'vgg16-397923af.pth'
    >>> {"ssfd-fastmri-knee", "medvae-8x4c-2d", "lpips-vgg-v0.1"} <= set(weights.registry())
    True
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_dfd.files import check_plain_name, contained_path, locked, write_text_atomically

OFFLINE_ENV = "LIGHTNING_DFD_OFFLINE"
HOME_ENV = "LIGHTNING_DFD_HOME"
TIMEOUT_ENV = "LIGHTNING_DFD_DOWNLOAD_TIMEOUT"
#: Seconds a download may wait for the server on any one read.
DEFAULT_TIMEOUT = 60.0
PINS_FILE = "pins.json"
#: The seed ``weights="random"`` encoders are built under unless told otherwise.
DEFAULT_RANDOM_SEED = 0
_random_seed = DEFAULT_RANDOM_SEED


def _checked_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"a random-weights seed must be an int in [0, 2**63), got {seed!r}")
    return seed


def random_weights_seed() -> int:
    """The seed encoders with ``weights="random"`` are built under now.

    Example:
        >>> random_weights_seed()
        0
    """
    return _random_seed


def set_random_weights_seed(seed: int = DEFAULT_RANDOM_SEED) -> None:
    """Build every later ``weights="random"`` encoder under ``seed`` (no argument: the default).

    Example:
        >>> set_random_weights_seed(7); random_weights_seed()
        7
        >>> set_random_weights_seed(); random_weights_seed()
        0
    """
    global _random_seed
    _random_seed = _checked_seed(seed)


@contextlib.contextmanager
def seeded_random_weights(seed: int) -> Iterator[None]:
    """Build ``weights="random"`` encoders under ``seed`` inside the block.

    Example:
        >>> from lightning_dfd import LPIPS
        >>> with seeded_random_weights(1):
        ...     a = LPIPS(weights="random")
        >>> b, c = LPIPS(weights="random"), LPIPS(weights="random")
        >>> first = lambda m: next(m.network.parameters())
        >>> bool(first(b).equal(first(c))), bool(first(a).equal(first(b)))
        (True, False)
    """
    global _random_seed
    before, _random_seed = _random_seed, _checked_seed(seed)
    try:
        yield
    finally:
        _random_seed = before


def seeds_random_init(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a network's ``__init__`` taking ``weights``: run it under the seed when they are random.

    The global RNG state is forked, so the caller's random stream is untouched. Nested decorated
    constructors (a network built inside another) re-seed the same way, so the result depends only
    on the seed.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        bound = signature.bind(*args, **kwargs)
        weights = bound.arguments.get("weights", signature.parameters["weights"].default)
        if not isinstance(weights, str | os.PathLike) or os.fspath(weights) != "random":
            return init(*args, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_random_seed)
            return init(*args, **kwargs)

    return wrapper


class WeightsError(RuntimeError):
    """A checkpoint could not be found, verified or read."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """No file for a registered checkpoint, and downloading is off or failed."""


class ChecksumError(WeightsError, ValueError):
    """A checkpoint file does not match its registered sha256."""


class CorruptWeightsError(WeightsError, ValueError):
    """A checkpoint file is truncated, not a checkpoint, or carries pickled code."""


class UnpinnedWeightsWarning(UserWarning):
    """A downloaded file has no published sha256 and no pin of yours."""


@dataclass(frozen=True)
class WeightSpec:
    """One known checkpoint.

    Attributes:
        name: registry key, e.g. ``"resnet50-radimagenet"``.
        filename: the file's name on disk (torchvision's names keep their hash prefix); for
            ``source="package"`` its path inside the installed package.
        url: where the file is published.
        arch: which architecture it fits (``"vgg16"``, ``"alexnet"``, ``"resnet50"``, ...).
        sha256: full sha256 of the published file, when it is known.
        sha256_prefix: leading hex digits of the sha256 (torchvision's file-name convention).
        size: the published file's size in bytes, when known (for messages).
        description: one line for ``lightning-dfd weights list``.
        source: ``"url"`` (downloadable) or ``"package"`` (shipped inside ``package``).
        package: the installed package that ships the file (``source="package"``).
        prefix_paths: other places the package's installer may put it, relative to ``sys.prefix``.
        license: the license of the weights as their publisher states it (SPDX id where there is
            one; "see model card" where this table does not know), shown by ``weights list``.
        companions: other files of a model *folder*, published next to ``url`` and fetched into
            the folder of ``filename`` with it (a Hugging Face folder: ``config.json``,
            ``preprocessor_config.json``); only ``filename`` itself is checked against sha256s.
    """

    name: str
    filename: str
    url: str
    arch: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    size: int | None = None
    description: str = ""
    source: str = "url"
    package: str | None = None
    prefix_paths: tuple[str, ...] = ()
    license: str = "see model card"
    companions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # The file name decides where a download is written: one plain name inside the weights
        # home (a model folder with companions: ``folder/file``, both plain); a package file is a
        # relative path that stays inside its package / sys.prefix.
        if self.source == "url":
            parts = Path(self.filename).parts
            if len(parts) != (2 if self.companions else 1):
                check_plain_name(self.filename, f"weights {self.name!r}: file name")
            for name in (*parts, *self.companions):
                check_plain_name(name, f"weights {self.name!r}: file name")
        for relative in (self.filename, *self.prefix_paths):
            if Path(relative).is_absolute():
                raise ValueError(f"weights {self.name!r}: {relative!r} must be a relative path")
            for part in Path(relative).parts:
                check_plain_name(part, f"weights {self.name!r}: path part")

    @property
    def checksum(self) -> str | None:
        """The most specific published checksum, for messages."""
        return self.sha256 or (f"{self.sha256_prefix}..." if self.sha256_prefix else None)

    @property
    def origin(self) -> str:
        """Where the file comes from: its URL, or ``package <name>``."""
        return f"package {self.package} ({self.filename})" if self.source == "package" else self.url

    @property
    def hub_id(self) -> str | None:
        """The Hugging Face repository of a model-folder row (``arch="hf:..."``), else None."""
        prefix = "https://huggingface.co/"
        if not self.arch.startswith("hf:") or not self.url.startswith(prefix):
            return None
        return "/".join(self.url[len(prefix):].split("/")[:2])


_SSFD_HUB = "https://huggingface.co/philadamson93/SSFD/resolve/main/"
_SSFD_ARCH = "ssfd-unet-encoder"
#: The hub's published SSFD variants (``<folder>/model.ckpt``), by registry name. None are pinned:
#: their sha256 is not published; pin a copy you trust with ``weights verify --record``.
SSFD_VARIANTS: dict[str, str] = {
    "ssfd-fat-suppressed": "FatSuppression/FatSuppressed",
    "ssfd-non-fat-suppressed": "FatSuppression/nonFatSuppressed",
    **{f"ssfd-percent-data-{p}": f"SSL_percent_data/{p}" for p in (5, 10, 25, 50, 100)},
    **{f"ssfd-patch-coverage-{p}": f"SSL_pretext_tasks/PatchCoverage/{p}" for p in (10, 25, 50, 75)},
    **{f"ssfd-patch-size-{p}": f"SSL_pretext_tasks/PatchSize/{p}" for p in (1, 4, 8, 16, 64)},
    "ssfd-percent-zero-filled-25": "percent_zero_filled/25",
}

#: Every checkpoint the package knows. Hashes of the package-shipped files were computed from the
#: installed wheels (lpips 0.1.4, DISTS_pytorch 0.1).
#: timm backbones for ``TimmFD(model_name=..., weights=<name>)``: the name is timm's own
#: ``<model>.<pretrained tag>``, ``arch`` is ``timm:<model>``. Files are the timm organisation's
#: ``model.safetensors`` on the Hugging Face hub, saved locally under a distinct name. The hub
#: publishes no sha256 next to them that could be checked here offline: unpinned (pin a trusted
#: copy with ``lightning-dfd weights verify``).
TIMM_WEIGHTS = [
    WeightSpec(name=f"{model}.{tag}", filename=f"timm-{model}.{tag}.safetensors",
               url=f"https://huggingface.co/timm/{model}.{tag}/resolve/main/model.safetensors",
               arch=f"timm:{model}", description=f"timm {model} ({what})", license=license)
    for model, tag, what, license in (
        ("convnext_tiny", "fb_in1k", "ConvNeXt-T, ImageNet-1k", "see model card"),
        ("convnext_tiny", "in12k_ft_in1k", "ConvNeXt-T, ImageNet-12k fine-tuned on 1k", "see model card"),
        ("efficientnet_b0", "ra_in1k", "EfficientNet-B0, ImageNet-1k, RandAugment", "Apache-2.0"),
        ("vit_small_patch14_dinov2", "lvd142m", "DINOv2 ViT-S/14, self-supervised on LVD-142M",
         "Apache-2.0"),
        ("vit_small_patch16_224", "augreg_in21k_ft_in1k", "ViT-S/16, ImageNet-21k fine-tuned on 1k",
         "Apache-2.0"),
        ("resnet50", "a1_in1k", "ResNet-50, ImageNet-1k, timm A1 recipe", "Apache-2.0"),
    )
]

#: Hugging Face model folders for ``HFFD(model_name_or_path=<name or hub id>)``: ``arch`` is
#: ``hf:<model_type>``. A row is the folder ``$LIGHTNING_DFD_HOME/<name>/`` holding the hub's
#: ``model.safetensors`` (``filename``: the file that is checked, pinned and resolved) and its
#: ``companions`` (``config.json``, ``preprocessor_config.json``: fetched with it, not checksummed).
#: The hub publishes no sha256 that could be checked here offline: unpinned (``weights verify
#: --record <name> <folder>/model.safetensors`` pins a copy you trust).
HF_FOLDERS = [
    WeightSpec(name=name, filename=f"{name}/model.safetensors",
               url=f"https://huggingface.co/{hub_id}/resolve/main/model.safetensors",
               arch=f"hf:{model_type}", description=f"{what} ({hub_id}; transformers folder)",
               license=license, companions=("config.json", "preprocessor_config.json"))
    for name, hub_id, model_type, what, license in (
        ("rad-dino", "microsoft/rad-dino", "dinov2",
         "RAD-DINO: DINOv2 ViT-B/14 trained on chest X-rays", "MIT"),
        ("medsam-vit-base", "wanglab/medsam-vit-base", "sam",
         "MedSAM: SAM ViT-B fine-tuned on medical image-mask pairs", "Apache-2.0"),
        ("dinov2-small", "facebook/dinov2-small", "dinov2", "DINOv2 ViT-S/14 (LVD-142M)", "Apache-2.0"),
        ("dinov2-base", "facebook/dinov2-base", "dinov2", "DINOv2 ViT-B/14 (LVD-142M)", "Apache-2.0"),
    )
]


TABLE: tuple[WeightSpec, ...] = (
    WeightSpec(
        name="vgg16-imagenet", filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth", arch="vgg16",
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        sha256_prefix="397923af", license="BSD-3-Clause",
        description="torchvision VGG-16 (IMAGENET1K_V1): the LPIPS and DISTS backbone",
    ),
    WeightSpec(
        name="alexnet-imagenet", filename="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", arch="alexnet",
        sha256_prefix="7be5be79", license="BSD-3-Clause",
        description="torchvision AlexNet (IMAGENET1K_V1): the LPIPS-Alex backbone",
    ),
    WeightSpec(
        name="resnet50-imagenet", filename="resnet50-0676ba61.pth",
        url="https://download.pytorch.org/models/resnet50-0676ba61.pth", arch="resnet50",
        sha256_prefix="0676ba61", license="BSD-3-Clause",
        description="torchvision ResNet-50 (IMAGENET1K_V1)",
    ),
    WeightSpec(
        name="resnet50-radimagenet", filename="RadImageNet-ResNet50.pt",
        url="https://huggingface.co/philadamson93/RINFD/resolve/main/ResNet50/ResNet50.pt",
        arch="resnet50",
        description="RadImageNet ResNet-50 (the RINFD encoder; `backbone.N` layout; unpinned)",
    ),
    WeightSpec(
        name="ssfd-fastmri-knee", filename="ssfd-fastmri-knee.ckpt",
        url=_SSFD_HUB + "default/model.ckpt", arch=_SSFD_ARCH,
        sha256="e8ea5e89518e9b1de20154c881d136e3f85ae27785422dc15e85f5d44ad50086", size=7_380_093,
        description="SSFD encoder, masked-inpainting pretrained on fastMRI knee (hub default/model.ckpt; "
                    "earlier versions of that file differ)",
    ),
    *(
        WeightSpec(
            name=name, filename=f"{name}.ckpt", url=f"{_SSFD_HUB}{folder}/model.ckpt", arch=_SSFD_ARCH,
            description=f"SSFD encoder, hub variant {folder} (unpinned)",
        )
        for name, folder in SSFD_VARIANTS.items()
    ),
    WeightSpec(
        name="medvae-8x4c-2d", filename="vae_8x_4c_2D.ckpt",
        url="https://huggingface.co/stanfordmimi/MedVAE/resolve/main/model_weights/vae_8x_4c_2D.ckpt",
        arch="medvae-autoencoderkl-2d",
        description="Med-VAE 2-D autoencoder, 8x compression, 4 latent channels (LoRA merged; unpinned)",
    ),
    *(
        WeightSpec(
            name=f"lpips-{net}-{version}", filename=f"weights/{version}/{net}.pth",
            url="https://pypi.org/project/lpips/0.1.4/", arch=f"lpips-linear-{net}", sha256=digest,
            size=size, source="package", package="lpips", license="BSD-2-Clause",
            description=f"LPIPS linear layers for {net} ({version}), shipped in the lpips wheel",
        )
        for net, version, digest, size in (
            ("alex", "v0.1", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", 6009),
            ("vgg", "v0.1", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", 7289),
            ("squeeze", "v0.1", "4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76", 10811),
            ("alex", "v0.0", "18720f55913d0af89042f13faa7e536a6ce1444a0914e6db9461355ece1e8cd5", 5455),
            ("vgg", "v0.0", "b9e4236260c3dd988fc79d2a48d645d885afcbb21f9fd595e6744cf7419b582c", 6735),
            ("squeeze", "v0.0", "c27abd3a0145541baa50990817df58d3759c3f8154949f42af3b59b4e042d0bf", 10057),
        )
    ),
    WeightSpec(
        name="dists-alpha-beta", filename="weights.pt", url="https://pypi.org/project/DISTS-pytorch/0.1/",
        arch="dists-alpha-beta",
        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218", size=12288,
        source="package", package="DISTS_pytorch", prefix_paths=("weights.pt",), license="MIT",
        description="DISTS alpha/beta, shipped in the DISTS_pytorch wheel (inside it or at sys.prefix)",
    ),
    *TIMM_WEIGHTS,
    *HF_FOLDERS,
)

_REGISTRY: dict[str, WeightSpec] = {spec.name: spec for spec in TABLE}


def register(spec: WeightSpec, *, overwrite: bool = False) -> WeightSpec:
    """Add a checkpoint of your own to this process's registry (the shipped ones are in :data:`TABLE`)."""
    if spec.name in _REGISTRY and not overwrite and _REGISTRY[spec.name] != spec:
        raise ValueError(f"weights name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registry() -> Mapping[str, WeightSpec]:
    """A copy of every registered checkpoint, by name."""
    return dict(_REGISTRY)


def get_spec(name: str) -> WeightSpec:
    """The registered spec for ``name``; a clear error listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown weights {name!r}: known names are {sorted(_REGISTRY)}, or pass a file path"
        ) from None


def check_weights_arg(weights: object, argument: str = "weights") -> str:
    """``weights`` as a string (name, path or ``"random"``); anything else is a clear TypeError.

    Example:
        >>> check_weights_arg(None)
        Traceback (most recent call last):
        ...
        TypeError: Argument `weights` must be a registry name (see `lightning-dfd weights list`), \
a file path or 'random', but got None
    """
    if isinstance(weights, bytes) or not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"Argument `{argument}` must be a registry name (see `lightning-dfd weights "
                        f"list`), a file path or 'random', but got {weights!r}")
    value = os.fspath(weights)
    if not value:
        raise ValueError(f"Argument `{argument}` must be a registry name, a file path or 'random', "
                         "but got an empty string")
    return value



def weights_home() -> Path:
    """``$LIGHTNING_DFD_HOME``, or ``~/.cache/lightning_dfd``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "lightning_dfd")


def offline() -> bool:
    """True when ``LIGHTNING_DFD_OFFLINE`` is set to a true value."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def download_timeout() -> float:
    """Seconds per network read: ``$LIGHTNING_DFD_DOWNLOAD_TIMEOUT`` or 60."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"${TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return value


def _package_dir(package: str) -> Path | None:
    found = importlib.util.find_spec(package)  # finds a top-level package without importing it
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def search_paths(spec: WeightSpec) -> list[Path]:
    """Where a registered file is looked for, in order."""
    if spec.source == "package":
        folder = _package_dir(spec.package or "")
        inside = [folder / spec.filename] if folder is not None else []
        return inside + [Path(sys.prefix) / p for p in spec.prefix_paths]
    if spec.companions:  # a model folder lives in the weights home only
        return [weights_home() / spec.filename]
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    return [weights_home() / spec.filename, hub / spec.filename]


def missing_companions(spec: WeightSpec, path: Path) -> list[str]:
    """The companion files of a model-folder row that are not next to ``path`` (its main file)."""
    return [name for name in spec.companions if not (path.parent / name).is_file()]


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- pins of your own ------------------------------------------------------------------------------


def pins_path() -> Path:
    """``$LIGHTNING_DFD_HOME/pins.json``: the sha256 of files you trust, by registry name."""
    return weights_home() / PINS_FILE


def user_pins() -> dict[str, list[dict[str, Any]]]:
    """Your pins, ``{name: [{"sha256", "size", "file", "recorded"}, ...]}`` (empty when none).

    Raises:
        WeightsError: the pins file exists but is not valid JSON of that shape (named).
    """
    path = pins_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise WeightsError(f"cannot read your weights pins {path}: {err}") from err
    try:
        pins = json.loads(text)
        if not isinstance(pins, dict) or not all(
            isinstance(v, list) and all(isinstance(p, dict) and isinstance(p.get("sha256"), str) for p in v)
            for v in pins.values()
        ):
            raise ValueError("expected {name: [{'sha256': ...}, ...]}")
    except ValueError as err:
        raise WeightsError(f"your weights pins file {path} is not valid ({err}); fix or delete it") from err
    return pins


def pinned_sha256(spec: WeightSpec) -> list[str]:
    """The sha256 values you pinned for ``spec``."""
    return [p["sha256"].lower() for p in user_pins().get(spec.name, [])]


def record_pin(name: str, path: str | os.PathLike) -> dict[str, Any]:
    """Pin the sha256 of ``path`` as a trusted file for registry name ``name``.

    Later loads and verifies of ``name`` accept a file with this sha256 (besides the published
    one). The pins file is updated under a lock (``pins.json.lock`` next to it): re-read, merged
    and replaced atomically, so processes recording at once keep every pin.

    Returns:
        The recorded pin.
    """
    spec = get_spec(name)
    source = Path(_check_file(path, what=f"file to pin for {name!r}"))
    pin = {"sha256": sha256_of(source), "size": source.stat().st_size, "file": str(source.resolve()),
           "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    # Processes recording at once each take the lock, re-read, merge and replace: none is lost.
    with locked(pins_path()) as target:
        pins = user_pins()
        pins[spec.name] = [p for p in pins.get(spec.name, []) if p["sha256"] != pin["sha256"]] + [pin]
        write_text_atomically(target, json.dumps(pins, indent=2, sort_keys=True))
    return pin


# -- checks ----------------------------------------------------------------------------------------


def checksum_ok(path: Path, spec: WeightSpec) -> bool | None:
    """True/False against the published checksum and your pins; None when there is neither."""
    pins = pinned_sha256(spec)
    if spec.sha256 is None and spec.sha256_prefix is None and not pins:
        return None
    digest = sha256_of(path)
    return _accepted(digest, spec, pins)


def matches_published(digest: str, spec: WeightSpec) -> bool | None:
    """Whether ``digest`` is the published file's; None when nothing is published."""
    if spec.sha256 is not None:
        return digest == spec.sha256.lower()
    if spec.sha256_prefix is not None:
        return digest.startswith(spec.sha256_prefix.lower())
    return None


def _accepted(digest: str, spec: WeightSpec, pins: list[str]) -> bool:
    if digest in pins:
        return True
    published = matches_published(digest, spec)
    return published if published is not None else not pins


def _expected(spec: WeightSpec, pins: list[str]) -> str:
    parts = []
    if spec.checksum:
        size = f", {spec.size:,} bytes" if spec.size else ""
        parts.append(f"sha256 {spec.checksum}{size}")
    if pins:
        parts.append(f"your pins in {pins_path()}: {', '.join(pins)}")
    return "; ".join(parts)


def verify(path: Path, spec: WeightSpec) -> None:
    """Raise :class:`ChecksumError` when ``path`` matches neither the published sha256 nor a pin."""
    pins = pinned_sha256(spec)
    if spec.sha256 is None and spec.sha256_prefix is None and not pins:
        return
    digest = sha256_of(path)
    if _accepted(digest, spec, pins):
        return
    size = Path(path).stat().st_size
    hint = ("Delete it and fetch the published file with `lightning-dfd weights fetch "
            f"{spec.name}`" if spec.source == "url" else f"Reinstall the {spec.package} package")
    raise ChecksumError(
        f"checksum mismatch for weights {spec.name!r}: this file differs from the pinned version "
        f"({_expected(spec, pins)}): {path} has sha256 {digest} ({size:,} bytes). {hint}, or, if you "
        f"trust this file, pin it with `lightning-dfd weights verify --record {spec.name} {path}`"
    )


def _check_file(path: str | os.PathLike, what: str = "weights file") -> str:
    """``path`` if it is a readable regular file; otherwise an error saying exactly what it is."""
    text = os.fspath(path)
    try:
        info = os.stat(text)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise MissingWeightsError(f"{what} {text} is a symlink loop; point it at a checkpoint "
                                      "file") from None
        if os.path.islink(text):
            raise MissingWeightsError(
                f"{what} {text} is a broken symlink (to {os.readlink(text)}, which does not exist)"
            ) from None
        if err.errno == errno.EACCES:
            raise MissingWeightsError(f"{what} {text} cannot be read: permission denied") from None
        if err.errno == errno.ENOTDIR:
            raise MissingWeightsError(f"{what} {text} does not exist (a parent is not a folder)") from None
        raise MissingWeightsError(f"{what} {text} does not exist") from None
    if stat.S_ISDIR(info.st_mode):
        raise MissingWeightsError(f"{what} {text} is a directory, not a checkpoint file")
    if not stat.S_ISREG(info.st_mode):
        raise MissingWeightsError(f"{what} {text} is not a regular file")
    if not os.access(text, os.R_OK):
        raise MissingWeightsError(f"{what} {text} cannot be read: permission denied")
    return text


#: Said by every missing-weights error: the way to try things out before any file is fetched.
TRY_RANDOM = ('To try things out without it, use weights="random" (command lines: --weights random, '
              'recon-train --dfd_weights random); values are then not comparable with pretrained ones.')


def _missing_message(spec: WeightSpec, reason: str, *, fetching: bool = False) -> str:
    """What is missing, where it was looked for and what to do.

    ``fetching``: raised while downloading (``weights fetch`` itself), so running ``weights fetch``
    is no advice; offline, unsetting ``LIGHTNING_DFD_OFFLINE`` is.
    """
    places = ", ".join(str(p) for p in search_paths(spec))
    if spec.source == "package":
        return (f"weights {spec.name!r} ({spec.description}) not found: {reason}. It ships inside the "
                f"{spec.package} package: reinstall it; looked in: {places}. {TRY_RANDOM}")
    checksum = spec.checksum or "not published"
    if not fetching:
        fetch = f", or run `lightning-dfd weights fetch {spec.name}`"
    elif offline():
        fetch = f", or unset ${OFFLINE_ENV} to let `lightning-dfd weights fetch` download it"
    else:
        fetch = ""
    if spec.companions:
        folder = (weights_home() / spec.filename).parent
        base = spec.url.rsplit("/", 1)[0]
        files = ", ".join((Path(spec.filename).name, *spec.companions))
        return (
            f"weights {spec.name!r} ({spec.description or spec.arch}) not found: {reason}. It is a "
            f"model folder: put {files} from {base}/ (sha256 of {Path(spec.filename).name}: {checksum}) "
            f"into {folder}/ (or set ${HOME_ENV}){fetch}. {TRY_RANDOM}"
        )
    return (
        f"weights {spec.name!r} ({spec.description or spec.arch}) not found: {reason}. "
        f"Download {spec.url} (sha256 {checksum}) and save it as {weights_home() / spec.filename} "
        f"(or set ${HOME_ENV}){fetch}; looked in: {places}. {TRY_RANDOM}"
    )


# -- download --------------------------------------------------------------------------------------


def _stream(spec: WeightSpec, url: str, dst: Path, timeout: float) -> tuple[Path, str, int]:
    """Download ``url`` to a temporary file next to ``dst``: ``(temporary path, sha256, size)``.

    Raises:
        MissingWeightsError: a network error, a timeout or a short body (nothing is kept).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest, size = hashlib.sha256(), 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "lightning-dfd"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                while block := response.read(1 << 20):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
            if length is not None and size != int(length):
                raise ConnectionError(f"the connection closed after {size} of {length} bytes")
        except TimeoutError as err:
            raise MissingWeightsError(_missing_message(
                spec, f"download from {url} timed out after {timeout:g} s without data "
                      f"(${TIMEOUT_ENV} sets the limit)")) from err
        except (OSError, urllib.error.URLError, ValueError, ConnectionError) as err:
            if isinstance(getattr(err, "reason", None), TimeoutError):
                raise MissingWeightsError(_missing_message(
                    spec, f"download from {url} timed out after {timeout:g} s "
                          f"(${TIMEOUT_ENV} sets the limit)")) from err
            raise MissingWeightsError(_missing_message(
                spec, f"download from {url} failed ({type(err).__name__}: {err}); nothing was kept"
            )) from err
        except Exception as err:  # http.client.IncompleteRead and friends
            raise MissingWeightsError(_missing_message(
                spec, f"download from {url} was interrupted ({type(err).__name__}: {err}); "
                      "nothing was kept")) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, digest.hexdigest(), size


def download(spec: WeightSpec, *, timeout: float | None = None, allow_offline: bool = False) -> Path:
    """Download a registered file into :func:`weights_home`, verified before it gets its name.

    A model-folder row (``companions``) first gets its missing companion files (from the folder of
    ``spec.url``), then its main file, which alone is checked against sha256s.

    Args:
        spec: what to download.
        timeout: seconds per network read (default :func:`download_timeout`).
        allow_offline: download even when ``LIGHTNING_DFD_OFFLINE`` is set.

    Raises:
        MissingWeightsError: offline, a package file, a network error, a timeout, or a short body.
        ChecksumError: the bytes do not match the published sha256 or your pins (nothing is kept).
    """
    if spec.source != "url":
        raise MissingWeightsError(_missing_message(spec, "package files cannot be downloaded"))
    if offline() and not allow_offline:
        raise MissingWeightsError(_missing_message(spec, f"offline (${OFFLINE_ENV}=1)", fetching=True))
    timeout = download_timeout() if timeout is None else timeout
    dst = contained_path(weights_home(), *Path(spec.filename).parts, what="weights file name")
    folder = dst.parent if spec.companions and not dst.parent.exists() else None
    try:
        return _download_into(spec, dst, timeout)
    except BaseException:
        if folder is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a model folder this call made, left empty: removed again
        raise


def _download_into(spec: WeightSpec, dst: Path, timeout: float) -> Path:
    """Missing companions, then the main file; on failure the companions written here are removed."""
    base, written = spec.url.rsplit("/", 1)[0], []
    try:
        for name in missing_companions(spec, dst):
            tmp, _, _ = _stream(spec, f"{base}/{name}", dst.parent / name, timeout)
            try:
                os.replace(tmp, dst.parent / name)
                written.append(dst.parent / name)
            finally:
                tmp.unlink(missing_ok=True)
        return _download_main(spec, dst, timeout)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _download_main(spec: WeightSpec, dst: Path, timeout: float) -> Path:
    tmp, actual, size = _stream(spec, spec.url, dst, timeout)
    try:
        pins = pinned_sha256(spec)
        if spec.sha256 is None and spec.sha256_prefix is None and not pins:
            warnings.warn(f"weights {spec.name!r} from {spec.url} are unpinned (no published sha256): "
                          f"got sha256 {actual} ({size:,} bytes); pin it with `lightning-dfd weights "
                          f"verify --record {spec.name} {dst}` if you trust it", UnpinnedWeightsWarning,
                          stacklevel=4)
        elif not _accepted(actual, spec, pins):
            raise ChecksumError(
                f"download of weights {spec.name!r} from {spec.url} failed its checksum: expected "
                f"{_expected(spec, pins)}, got sha256 {actual} ({size:,} bytes). The file was deleted; "
                f"nothing is saved as {dst}"
            )
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


# -- resolution and loading ------------------------------------------------------------------------


def resolve(name_or_path: str | os.PathLike, *, allow_download: bool | None = None) -> Path:
    """Find the file for a registry name or an explicit path.

    Args:
        name_or_path: a registry name, or a path to a checkpoint file.
        allow_download: override ``LIGHTNING_DFD_OFFLINE`` (None: download unless offline).

    Raises:
        TypeError: ``name_or_path`` is not a string or path (e.g. None).
        MissingWeightsError: nothing found (the message names the file, URL, sha256 and folder),
            or the path is a directory, a symlink loop, a broken symlink or unreadable.
        ChecksumError: a found file matches neither the published checksum nor your pins.
    """
    key = check_weights_arg(name_or_path)
    if key == "random":
        raise ValueError("`weights='random'` has no file: build the encoder without loading weights")
    if key not in _REGISTRY:
        path = Path(key).expanduser()
        if not os.path.lexists(path) and os.sep not in key and not path.suffix:
            raise MissingWeightsError(f"weights file {path} does not exist; known names are "
                                      f"{sorted(_REGISTRY)}")
        return Path(_check_file(path))
    spec = _REGISTRY[key]
    for path in search_paths(spec):
        if os.path.lexists(path):
            _check_file(path, what=f"weights file for {spec.name!r}")
            verify(path, spec)
            return path
    if spec.source == "package":
        raise MissingWeightsError(_missing_message(spec, "the installed package does not have it"))
    if allow_download is False or (allow_download is None and offline()):
        raise MissingWeightsError(_missing_message(spec, f"offline (${OFFLINE_ENV}=1)"))
    return download(spec, allow_offline=True)


def load_checkpoint(name_or_path: str | os.PathLike) -> Any:
    """Resolve and read a checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".pt"); torch.save({"w": torch.zeros(1)}, path)
        >>> list(load_checkpoint(path))
        ['w']
    """
    path = resolve(name_or_path)
    key = os.fspath(name_or_path)
    source = f"weights file {path}"
    if key in _REGISTRY:
        source = f"weights {key!r} (file {path}, from {_REGISTRY[key].origin})"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        text = str(err)
        if "weights_only" in text or "Unsupported global" in text or "Unpickler" in text:
            reason = ("it carries pickled Python objects/code, which weights_only=True refuses "
                      "(nothing in it was run)")
        else:
            reason = f"it is truncated or not a torch checkpoint ({type(err).__name__})"
        raise CorruptWeightsError(f"cannot load {source}: {reason}") from err


def state_dict_from(checkpoint: Any, *keys: str) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint to a flat state dict, trying the nested ``keys`` in order.

    Strips a leading ``module.`` (DataParallel) from every key; a file holding a tensor both
    plain and under ``module.`` is ambiguous and refused (:func:`without_prefix`).
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
    return without_prefix(obj, "module.")


def without_prefix(state: Mapping[str, torch.Tensor], prefix: str, *,
                   source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``state`` with a leading ``prefix`` removed from its keys (keys without it kept).

    Raises:
        CorruptWeightsError: some tensors are stored twice, plain and prefixed (which copy is
            meant cannot be known); the message names the duplicated keys.

    Example:
        >>> import torch
        >>> list(without_prefix({"module.w": torch.zeros(1), "b": torch.zeros(1)}, "module."))
        ['w', 'b']
    """
    out: dict[str, torch.Tensor] = {}
    twice: list[str] = []
    for key, value in state.items():
        plain = key.removeprefix(prefix)
        if plain in out:
            twice.append(plain)
        out[plain] = value
    if twice:
        twice.sort()
        raise CorruptWeightsError(
            f"{source} holds {len(twice)} tensors twice, plain and with a {prefix!r} prefix, e.g. "
            f"{[f'{k} / {prefix}{k}' for k in twice[:5]]}: which copy is meant is unknown; save one "
            "state dict (model.state_dict()) only"
        )
    return out


def load_into(module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file, bad keys and bad shapes."""
    own = module.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if not (shapes or missing or unexpected):
        try:
            module.load_state_dict(state, strict=True)
            return
        except RuntimeError as err:  # pragma: no cover - keys and shapes agree, something else
            raise CorruptWeightsError(f"weights {source} do not fit {type(module).__name__}: "
                                      f"{str(err).splitlines()[0]}") from err
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensors of the wrong shape {shapes[:5]}")
    if missing:
        parts.append(f"{len(missing)} missing keys {missing[:5]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {unexpected[:5]}")
    raise CorruptWeightsError(f"weights {source} do not fit {type(module).__name__}: {'; '.join(parts)}")


def status(spec: WeightSpec) -> tuple[str, Path | None]:
    """Where a registered file is and whether it checks out: ``(state, path)``.

    ``state`` is ``"found"``, ``"found (pinned by you)"``, ``"found (unpinned)"``,
    ``"checksum mismatch"``, ``"not a file"``, ``"incomplete (no <files>)"`` (a model folder without
    its companion files) or ``"missing"``.
    """
    for path in search_paths(spec):
        if not os.path.lexists(path):
            continue
        try:
            _check_file(path)
        except MissingWeightsError:
            return "not a file", path
        if missing_companions(spec, path):
            return f"incomplete (no {', '.join(missing_companions(spec, path))})", path
        pins = pinned_sha256(spec)
        ok = checksum_ok(path, spec)
        if ok is None:
            return "found (unpinned)", path
        if not ok:
            return "checksum mismatch", path
        digest = sha256_of(path)
        by_you = digest in pins and not matches_published(digest, spec)
        return ("found (pinned by you)" if by_you else "found"), path
    return "missing", None
