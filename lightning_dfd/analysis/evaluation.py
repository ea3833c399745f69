"""Score reconstructions stored as fastMRI-style h5 files against their references.

A prediction file (fastMRI's ``save_reconstructions`` layout: dataset ``reconstruction`` of
shape ``(slices, H, W)``) is paired with the reference file of the same name (default dataset
``reconstruction_rss``; a SENSE reference works as well, complex values are compared as
magnitudes). Every chosen slice gets one row with every metric; every volume gets a summary row.

Conventions (fastMRI's ``evaluate.py``):

* ``data_range`` of PSNR/SSIM is the maximum of the reference magnitude over the whole volume
  (``data_range="image"``: each reference slice's own maximum).
* Per-volume PSNR/SSIM/NMSE pool the scored slices of the volume (PSNR and NMSE over all
  their voxels, SSIM the slice mean), as ``fastmri.evaluate``; deep feature distances are
  averaged over the slices.

Problems with one file (no partner, unreadable file, missing dataset, zero slices, shape
mismatch, non-finite values, an image too small for an encoder, any error of a metric) are
collected as :class:`FileProblem` and the other files are still scored.

:func:`evaluate` runs as a Lightning prediction loop (:mod:`lightning_dfd.analysis.engine`):
one process per device with ``strategy="ddp"``, whole files per process, rows gathered.
With ``maps_dir`` every scored volume's per-pixel DFD maps are written too
(:mod:`lightning_dfd.analysis.maps`).

With ``volumetric=True`` the scored unit is the volume (:func:`build_volume_metrics`): each DFD is a
:class:`~lightning_dfd.metrics.VolumeDFD` over ``planes`` (after resampling to isotropic voxels
with ``spacing``), the pixel metrics are fastMRI's per-volume values, and both tables hold one row
per volume (``volume, n_slices, <metric>...``).

Example:
    >>> import tempfile, h5py, numpy as np
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "ref").mkdir(); (root / "rec").mkdir()
    >>> x = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    >>> with h5py.File(root / "ref" / "file1.h5", "w") as f:
    ...     _ = f.create_dataset("reconstruction_rss", data=x)
    >>> with h5py.File(root / "rec" / "file1.h5", "w") as f:
    ...     _ = f.create_dataset("reconstruction", data=x * 0.9)
    >>> config = EvaluationConfig(metrics=("psnr", "nmse"), slices="center")
    >>> result = evaluate(pair_files(root / "rec", root / "ref")[0], config, progress=False)
    >>> result.images[["volume", "slice"]].values.tolist(), round(float(result.images["nmse"][0]), 4)
    ([['file1', 1]], 0.01)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

__all__ = [
    "DATA_RANGES",
    "SLICE_MODES",
    "EvaluationConfig",
    "EXTRA_METRICS",
    "PROTOCOLS",
    "EvaluationResult",
    "FilePair",
    "FileProblem",
    "build_metrics",
    "build_volume_metrics",
    "column_conventions",
    "protocol_defaults",
    "describe_error",
    "evaluate",
    "load_pair",
    "pair_files",
    "read_shape",
    "read_volume",
    "resolve_device",
    "select_slices",
]

SLICE_MODES = ("all", "center")
DATA_RANGES = ("volume", "image")
SCALINGS = ("none", "target_max")
PRECISIONS = ("fp32", "bf16")
KEY_COLUMNS = ("volume", "slice")

#: Metric names ``evaluate`` adds to :data:`lightning_dfd.metrics.METRICS`: name -> (metric, kwargs).
EXTRA_METRICS: dict[str, tuple[str, dict[str, Any]]] = {
    "ssim_gaussian": ("ssim", {"window": "gaussian"}),
}

#: Presets of :func:`protocol_defaults`.
PROTOCOLS = ("fastmri", "paper")


@dataclass(frozen=True)
class FilePair:
    """A prediction file and its reference (either may be missing).

    Attributes:
        name: The shared file name (``file1000001.h5``).
        prediction: Path of the prediction, or None.
        target: Path of the reference, or None.
    """

    name: str
    prediction: Path | None
    target: Path | None

    @property
    def volume(self) -> str:
        """The volume id written into the tables: the file name without ``.h5``."""
        return Path(self.name).stem


#: Stages a file can fail at (the ``stage`` column of the errors CSV).
STAGES = ("pair", "read", "score", "maps")


@dataclass(frozen=True)
class FileProblem:
    """Why one file was not scored.

    Attributes:
        file: The file name (``file1000001.h5``).
        message: What went wrong, naming the dataset, shape or error.
        stage: ``"pair"`` (no partner file), ``"read"`` (opening the files, datasets, shapes)
            or ``"score"`` (a metric failed on it: non-finite values, an image too small for an
            encoder, ...) or ``"maps"`` (scored, its rows are in the tables, but its ``--maps``
            could not be computed or written).
    """

    file: str
    message: str
    stage: str = "read"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    def as_row(self) -> dict[str, str]:
        """The row of the errors CSV: ``file, stage, error``."""
        return {"file": self.file, "stage": self.stage, "error": self.message}


@dataclass(frozen=True)
class EvaluationConfig:
    """What to compute and how.

    Attributes:
        metrics: Metric names of :data:`lightning_dfd.metrics.METRICS`.
        weights: Weights for the deep feature distances: one value for all (``"random"``,
            ``"imagenet"``, a path) or a mapping metric name -> value; None or an absent name
            keeps the metric's own default.
        target_key: Dataset of the reference files.
        prediction_key: Dataset of the prediction files.
        slices: ``"all"`` or ``"center"`` (slice ``n // 2``, the one the paper's readers scored).
        data_range: ``"volume"`` (fastMRI) or ``"image"``.
        batch_size: Slices per metric update.
        device: Torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        crop_to_target: Centre-crop a larger prediction to the reference's ``(H, W)``.
        scale: ``"none"``, or ``"target_max"``: divide each slice pair by the maximum of its
            reference slice (magnitudes in [0, 1] for the reference; the prediction is not
            clipped), as the paper's meddlr pipeline saw them.
        precision: ``"fp32"`` (default) or ``"bf16"``: the DFD encoders' precision (distances in
            fp32); pixel metrics are always computed in full precision.
        mask: ``"none"`` or ``"foreground"``: every metric over the foreground of each reference
            slice only (:func:`lightning_dfd.spatial.foreground_mask`, largest component).
        maps_dir: Write per-pixel DFD maps of every scored volume into this folder
            (:mod:`lightning_dfd.analysis.maps`); None (default): no maps.
        maps_format: Any of ``("png", "h5")`` (default both).
        protocol: The ``--protocol`` name the other fields came from (written into the map files;
            informational, None: not from a preset).
        volumetric: Score whole volumes (one row per volume): every DFD as a
            :class:`~lightning_dfd.metrics.VolumeDFD`, the pixel metrics per volume as fastMRI.
            Needs ``slices="all"``, ``data_range="volume"``, ``scale="none"``, ``mask="none"`` and
            no ``maps_dir``.
        planes: The planes of the volumetric DFDs (default all three; ``volumetric`` only).
        spacing: ``(dz, dy, dx)`` voxel sizes in mm: resample every volume to isotropic voxels
            before the volumetric DFDs slice it (``volumetric`` only; None: the grid as stored).
    """

    metrics: tuple[str, ...] = ("psnr", "ssim", "nmse")
    weights: str | Mapping[str, str] | None = None
    target_key: str = "reconstruction_rss"
    prediction_key: str = "reconstruction"
    slices: str = "all"
    data_range: str = "volume"
    batch_size: int = 16
    device: str = "cpu"
    crop_to_target: bool = False
    scale: str = "none"
    precision: str = "fp32"
    mask: str = "none"
    maps_dir: Path | None = None
    maps_format: tuple[str, ...] = ("png", "h5")
    protocol: str | None = None
    volumetric: bool = False
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        from lightning_dfd.metrics import METRICS

        known = (*METRICS, *EXTRA_METRICS)
        unknown = [name for name in self.metrics if name not in known]
        if unknown or not self.metrics:
            raise ValueError(
                f"Argument `metrics` must name metrics among {known}, but got {list(self.metrics)}"
            )
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"Argument `metrics` names a metric twice: {list(self.metrics)}")
        if self.mask not in ("none", "foreground"):
            raise ValueError(f"Argument `mask` must be one of ('none', 'foreground'), but got {self.mask!r}")
        if self.scale not in SCALINGS:
            raise ValueError(f"Argument `scale` must be one of {SCALINGS}, got {self.scale!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Argument `precision` must be one of {PRECISIONS}, got {self.precision!r}")
        if self.scale == "target_max" and self.data_range != "image":
            raise ValueError('scale="target_max" divides each slice by its own maximum: it needs '
                             f'data_range="image", got {self.data_range!r}')
        if self.slices not in SLICE_MODES:
            raise ValueError(f"Argument `slices` must be one of {SLICE_MODES}, got {self.slices!r}")
        if self.data_range not in DATA_RANGES:
            raise ValueError(f"Argument `data_range` must be one of {DATA_RANGES}, got {self.data_range!r}")
        from lightning_dfd.analysis.maps import MAP_FORMATS

        formats = tuple(self.maps_format)
        if not formats or any(f not in MAP_FORMATS for f in formats):
            raise ValueError(f"Argument `maps_format` must name formats among {MAP_FORMATS}, but got "
                             f"{list(formats)}")
        if self.batch_size < 1:
            raise ValueError(f"Argument `batch_size` must be >= 1, got {self.batch_size}")
        if isinstance(self.weights, Mapping):
            stray = [name for name in self.weights if name not in self.metrics]
            if stray:
                raise ValueError(f"weights given for metric(s) {stray} not in {list(self.metrics)}")
        self._check_volumetric()

    def _check_volumetric(self) -> None:
        from lightning_dfd.metrics.volume import PLANES, parse_planes, parse_spacing

        object.__setattr__(self, "planes", parse_planes(self.planes))
        object.__setattr__(self, "spacing", parse_spacing(self.spacing))
        if not self.volumetric:
            if self.planes != PLANES or self.spacing is not None:
                raise ValueError("`planes` and `spacing` apply to volumetric scoring only: pass "
                                 "volumetric=True (--volumetric)")
            return
        conflicts = {name: getattr(self, name) for name, wanted in
                     (("slices", "all"), ("data_range", "volume"), ("scale", "none"), ("mask", "none"))
                     if getattr(self, name) != wanted}
        if self.maps_dir is not None:
            conflicts["maps_dir"] = self.maps_dir
        if conflicts:
            raise ValueError(
                "volumetric scoring takes every slice of each volume with fastMRI's per-volume data "
                "range, unmasked and without maps (--protocol fastmri, no --slices center, --data-range "
                f"image, --mask or --maps), but got {conflicts}"
            )

    def weights_for(self, name: str) -> str | None:
        """The weights argument of one metric (None: its default)."""
        if isinstance(self.weights, Mapping):
            return self.weights.get(name)
        return self.weights


@dataclass
class EvaluationResult:
    """Per-image rows, per-volume summary and the files that were not scored.

    ``maps_skipped`` (with ``maps_dir``): metric name -> why it has no map (a pixel metric, a DFD
    without a per-position form); ``maps_written``: volumes whose maps were written (all ranks).
    """

    images: pd.DataFrame
    volumes: pd.DataFrame
    problems: list[FileProblem] = field(default_factory=list)
    is_global_zero: bool = True
    maps_skipped: dict[str, str] = field(default_factory=dict)
    maps_written: int = 0

    @property
    def ok(self) -> bool:
        """True when every file was scored."""
        return not self.problems


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is present, else ``"cpu"``; other values unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pair_files(predictions: Path, targets: Path) -> tuple[list[FilePair], list[FileProblem]]:
    """Pair ``*.h5`` files of two folders by name.

    Returns:
        ``(pairs, problems)``: the complete pairs, sorted by name, and one problem per file
        without a partner.

    Raises:
        FileNotFoundError: A folder does not exist or holds no ``.h5`` file.
    """
    found = {}
    for label, folder in (("predictions", Path(predictions)), ("target", Path(targets))):
        if not folder.is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
        found[label] = {path.name: path for path in folder.glob("*.h5")}
        if not found[label]:
            raise FileNotFoundError(f"{label} folder holds no .h5 file: {folder}")
    preds, refs = found["predictions"], found["target"]
    pairs = [FilePair(name, preds[name], refs[name]) for name in sorted(preds.keys() & refs.keys())]
    problems = [
        FileProblem(name, f"no reference file of that name in {targets}", "pair")
        for name in sorted(preds.keys() - refs.keys())
    ] + [
        FileProblem(name, f"no prediction file of that name in {predictions}", "pair")
        for name in sorted(refs.keys() - preds.keys())
    ]
    return pairs, problems


def read_volume(path: Path, key: str) -> np.ndarray:
    """Read dataset ``key`` of an h5 file as a ``(slices, H, W)`` magnitude float32 array.

    Raises:
        KeyError: The dataset is absent (the message lists the datasets present).
        ValueError: It is not 3-D.
    """
    with h5py.File(path, "r") as handle:
        if key not in handle:
            raise KeyError(f"no dataset {key!r} in {path.name}; datasets: {sorted(handle.keys())}")
        data = handle[key][()]
    if data.ndim != 3:
        raise ValueError(f"dataset {key!r} in {path.name} has shape {data.shape}; expected (slices, H, W)")
    if 0 in data.shape:
        raise ValueError(f"dataset {key!r} in {path.name} holds no image: shape {data.shape}")
    if np.iscomplexobj(data):
        data = np.abs(data)
    return np.asarray(data, dtype=np.float32)


def select_slices(num_slices: int, mode: str) -> list[int]:
    """Slice indices to score: every slice, or the centre one (``num_slices // 2``).

    Example:
        >>> select_slices(5, "center"), select_slices(3, "all")
        ([2], [0, 1, 2])
    """
    if mode == "center":
        return [num_slices // 2]
    if mode == "all":
        return list(range(num_slices))
    raise ValueError(f"Argument `slices` must be one of {SLICE_MODES}, got {mode!r}")


def _center_crop(volume: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    top = (volume.shape[-2] - shape[0]) // 2
    left = (volume.shape[-1] - shape[1]) // 2
    return volume[..., top : top + shape[0], left : left + shape[1]]


def build_metrics(config: EvaluationConfig, **extra: Any) -> dict[str, Any]:
    """Instantiate the metrics of ``config`` (per-image values) on ``config.device``.

    ``extra`` keyword arguments go to every metric (e.g. ``sync_on_compute=False``).

    Pixel metrics come twice: ``"<name>"`` for per-image values and ``"<name>@volume"`` for
    fastMRI's per-volume value. DFDs with identical features are linked to share one encoder
    pass (as :class:`~lightning_dfd.metrics.DFDCollection` links them).
    """
    from lightning_dfd.metrics import DFDCollection, is_dfd

    metrics: dict[str, Any] = {}
    for name in config.metrics:
        base, preset = EXTRA_METRICS.get(name, (name, {}))
        kwargs: dict[str, Any] = {"reduction": "none", **preset, **extra}
        if is_dfd(base) and config.weights_for(name) is not None:
            kwargs["weights"] = config.weights_for(name)
        if is_dfd(base) and config.precision != "fp32":
            kwargs["precision"] = config.precision
        metrics[name] = _build(base, name, kwargs).to(config.device)
        if not is_dfd(base):
            metrics[f"{name}@volume"] = _build(base, name, kwargs).to(config.device)
    DFDCollection({name: m for name, m in metrics.items() if "@" not in name}).shared_groups()
    return metrics


def _build(base: str, name: str, kwargs: dict[str, Any]) -> Any:
    from lightning_dfd.metrics import build_metric

    try:
        return build_metric(base, **kwargs)
    except TypeError as err:  # e.g. an SSIM without the `window` option
        raise ValueError(f"metric {name!r} cannot be built with {kwargs}: {err}") from err


def build_volume_metrics(config: EvaluationConfig, **extra: Any) -> dict[str, Any]:
    """The metrics of a volumetric ``config`` on ``config.device``, each giving one value per volume.

    DFDs become :class:`~lightning_dfd.metrics.VolumeDFD` of the catalog metric (``config.weights``,
    ``config.precision``) over ``config.planes`` with ``config.spacing``; pixel metrics keep
    per-volume values (update them with one ``volume_ids`` value and the volume's maximum as
    ``data_range``, as ``fastmri.evaluate``). ``extra`` keyword arguments go to every metric.
    """
    from lightning_dfd.metrics import VolumeDFD, is_dfd

    metrics: dict[str, Any] = {}
    for name in config.metrics:
        base, preset = EXTRA_METRICS.get(name, (name, {}))
        if not is_dfd(base):
            metrics[name] = _build(base, name, {"reduction": "none", **preset, **extra}).to(config.device)
            continue
        kwargs: dict[str, Any] = dict(preset)
        if config.weights_for(name) is not None:
            kwargs["weights"] = config.weights_for(name)
        if config.precision != "fp32":
            kwargs["precision"] = config.precision
        metrics[name] = VolumeDFD(_build(base, name, kwargs), planes=config.planes, spacing=config.spacing,
                                  reduction="none", **extra).to(config.device)
    return metrics


def protocol_defaults(protocol: str) -> dict[str, Any]:
    """:class:`EvaluationConfig` fields of a scoring protocol.

    * ``"fastmri"`` (default): every slice, data range = the reference volume's maximum, SSIM
      with fastMRI's 7x7 uniform window (column ``ssim``), images as stored.
    * ``"paper"`` (Adamson et al., scored in meddlr): the centre slice of each volume, each slice
      pair divided by its reference slice's maximum (magnitudes in [0, 1]), data range = that
      maximum (meddlr's ``ref-maxval``), SSIM with the 11x11 Gaussian window of Wang et al.
      (column ``ssim_gaussian``); the DFDs normalise each image by its own min/max, as meddlr.

    Example:
        >>> protocol_defaults("paper")["slices"]
        'center'
    """
    if protocol == "fastmri":
        return {"slices": "all", "data_range": "volume", "scale": "none", "ssim": "ssim"}
    if protocol == "paper":
        return {"slices": "center", "data_range": "image", "scale": "target_max", "ssim": "ssim_gaussian"}
    raise ValueError(f"Argument `protocol` must be one of {PROTOCOLS}, got {protocol!r}")


def column_conventions(config: EvaluationConfig) -> dict[str, str]:
    """What each output column holds and under which convention (``<out>_columns.csv``).

    Example:
        >>> conventions = column_conventions(EvaluationConfig(metrics=("ssim", "ssim_gaussian")))
        >>> conventions["ssim"].split(": ")[1].split(";")[0]
        '7x7 uniform window, sample covariance, K1=0.01, K2=0.03'
    """
    from lightning_dfd.metrics import is_dfd

    data_range = {
        "volume": "data range = maximum of the reference volume (fastMRI)",
        "image": "data range = maximum of each reference slice (meddlr's ref-maxval)",
    }[config.data_range]
    scale = "" if config.scale == "none" else "; each slice pair divided by its reference slice's maximum"
    slices = "every slice" if config.slices == "all" else "the centre slice (n // 2) of each volume"
    fixed = {
        "psnr": f"PSNR in dB, 20 log10(data range / RMSE) (fastmri.evaluate.psnr); {data_range}",
        "ssim": "SSIM, fastMRI convention (fastmri.evaluate.ssim): 7x7 uniform window, sample "
        f"covariance, K1=0.01, K2=0.03; {data_range}",
        "ssim_gaussian": "SSIM, Wang et al. 2004 / meddlr convention (the paper's column): 11x11 "
        f"Gaussian window, sigma 1.5, K1=0.01, K2=0.03; {data_range}",
        "nmse": "NMSE, ||target - prediction||^2 / ||target||^2 (fastmri.evaluate.nmse)",
    }
    if config.volumetric:
        return _volume_conventions(config, fixed)
    out = {"volume": "file name without .h5", "slice": f"slice index in the file ({slices})"}
    for name in config.metrics:
        if is_dfd(name):
            weights = config.weights_for(name) or "the metric's default weights"
            out[name] = (f"deep feature distance {name} (lower is better), weights {weights}; "
                         f"each image min/max-normalised by the metric; encoder in {config.precision}")
        else:
            out[name] = fixed[name]
        out[name] += scale
        if config.mask == "foreground":
            out[name] += ("; over the foreground of each reference slice (lightning_dfd.spatial."
                          "foreground_mask: Otsu threshold, holes filled, largest component)")
    return out


def _volume_conventions(config: EvaluationConfig, fixed: dict[str, str]) -> dict[str, str]:
    """:func:`column_conventions` of volumetric scoring: one row per volume."""
    from lightning_dfd.metrics import is_dfd

    spacing = "the voxel grid as stored"
    if config.spacing is not None:
        spacing = (f"each volume first resampled from spacing (dz, dy, dx) = {config.spacing} mm to "
                   f"isotropic voxels of {min(config.spacing)} mm (trilinear on the magnitude)")
    out = {"volume": "file name without .h5", "n_slices": "slices (D) of the stored volume"}
    for name in config.metrics:
        if is_dfd(name):
            weights = config.weights_for(name) or "the metric's default weights"
            out[name] = (f"VolumeDFD of the deep feature distance {name} (lower is better), weights "
                         f"{weights}: mean over the planes {', '.join(config.planes)} of the mean over "
                         "each plane's slices (axial = the stored (H, W) slices, coronal (D, W), sagittal "
                         "(D, H); a plane thinner than the encoder accepts is skipped with a warning); "
                         f"{spacing}; each slice min/max-normalised by the metric; encoder in "
                         f"{config.precision}")
        else:
            out[name] = fixed[name] + "; one value per volume as fastmri.evaluate (over all its slices)"
    return out


def _checked_shape(handle: h5py.File, key: str, name: str) -> tuple[int, ...]:
    if key not in handle:
        raise KeyError(f"no dataset {key!r} in {name}; datasets: {sorted(handle.keys())}")
    shape = tuple(handle[key].shape)
    if len(shape) != 3:
        raise ValueError(f"dataset {key!r} in {name} has shape {shape}; expected (slices, H, W)")
    if 0 in shape:
        raise ValueError(f"dataset {key!r} in {name} holds no image: shape {shape}")
    return shape


def _scored_shape(preds: tuple[int, ...], target: tuple[int, ...], config: EvaluationConfig) -> bool:
    """True when the prediction is centre-cropped to the target; raises on a mismatch."""
    crop = (
        config.crop_to_target
        and preds[0] == target[0]
        and preds != target
        and all(p >= t for p, t in zip(preds[1:], target[1:]))
    )
    if not crop and preds != target:
        hint = "" if config.crop_to_target else " (--crop-to-target crops a larger prediction)"
        raise ValueError(
            f"shape mismatch: prediction {config.prediction_key!r} {preds} vs reference "
            f"{config.target_key!r} {target}{hint}"
        )
    return crop


def read_shape(pair: FilePair, config: EvaluationConfig) -> tuple[int, int, int]:
    """Open both files and check their datasets without reading the images.

    Returns:
        The reference's ``(slices, H, W)``.

    Raises:
        KeyError, ValueError, OSError: A missing dataset, a wrong rank, zero slices or pixels, a
            shape mismatch, an unreadable file.
    """
    with h5py.File(pair.target, "r") as handle:
        target = _checked_shape(handle, config.target_key, pair.target.name)
    with h5py.File(pair.prediction, "r") as handle:
        preds = _checked_shape(handle, config.prediction_key, pair.prediction.name)
    _scored_shape(preds, target, config)
    return target  # type: ignore[return-value]


def load_pair(pair: FilePair, config: EvaluationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Read ``(preds, target)`` magnitudes of one pair, the prediction cropped if asked."""
    target = read_volume(pair.target, config.target_key)
    preds = read_volume(pair.prediction, config.prediction_key)
    if _scored_shape(preds.shape, target.shape, config):
        preds = _center_crop(preds, target.shape[1:])
    return preds, target


def describe_error(err: BaseException) -> str:
    """One line for an error: its message (a ``KeyError``'s unquoted), with the type when not obvious.

    Example:
        >>> describe_error(KeyError("no dataset 'x'")), describe_error(RuntimeError("too small"))
        ("no dataset 'x'", 'RuntimeError: too small')
    """
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, (ValueError, OSError)):
        return str(err) or type(err).__name__
    return f"{type(err).__name__}: {err}"


def evaluate(
    pairs: Sequence[FilePair],
    config: EvaluationConfig,
    devices: int | str | list[int] = 1,
    progress: bool = True,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
) -> EvaluationResult:
    """Score every pair in a Lightning prediction loop; per-file problems are collected, not raised.

    Args:
        pairs: From :func:`pair_files`.
        config: What to compute.
        devices: Lightning's ``devices`` (processes per node with ``strategy="ddp"``).
        progress: Show Lightning's progress bar (stderr).
        num_nodes: Lightning's ``num_nodes``.
        strategy: Lightning's ``strategy`` (``"auto"``, ``"ddp"``; spawn-based ones are refused).
        accelerator: Lightning's ``accelerator``; None derives it from ``config.device``.

    Returns:
        An :class:`EvaluationResult` with rows sorted by volume and slice, on every process
        (:attr:`EvaluationResult.is_global_zero` says which one should write).

    Raises:
        Errors of metric construction (unknown weights, missing checkpoint) before any file is
        read.
    """
    if config.volumetric:
        return _evaluate_volumes(pairs, config, devices, progress, num_nodes, strategy, accelerator)
    from lightning_dfd.analysis.engine import run_evaluation  # lightning only when scoring

    rows, summaries, problems, is_zero, maps = run_evaluation(
        pairs, config, devices=devices, num_nodes=num_nodes, strategy=strategy,
        accelerator=accelerator, progress=progress,
    )  # fmt: skip
    result = _collect(rows, summaries, problems, config)
    result.is_global_zero = is_zero
    result.maps_skipped, result.maps_written = maps
    return result


def _collect(rows, summaries, problems, config: EvaluationConfig) -> EvaluationResult:
    columns = [*KEY_COLUMNS, *config.metrics]
    problems = sorted(problems, key=lambda p: p.file)
    images = pd.DataFrame(rows, columns=columns).sort_values(list(KEY_COLUMNS), ignore_index=True)
    volumes = pd.DataFrame(summaries, columns=["volume", "n_slices", *config.metrics])
    return EvaluationResult(images, volumes.sort_values("volume", ignore_index=True), problems)


def _evaluate_volumes(pairs, config, devices, progress, num_nodes, strategy, accelerator) -> EvaluationResult:
    """:func:`evaluate` with ``config.volumetric``: both tables hold one row per volume."""
    from lightning_dfd.analysis.engine import run_volume_evaluation  # lightning only when scoring

    rows, problems, is_zero = run_volume_evaluation(
        pairs, config, devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator,
        progress=progress,
    )  # fmt: skip
    columns = ["volume", "n_slices", *config.metrics]
    volumes = pd.DataFrame(rows, columns=columns).sort_values("volume", ignore_index=True)
    problems = sorted(problems, key=lambda p: p.file)
    return EvaluationResult(volumes, volumes.copy(), problems, is_global_zero=is_zero)
