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

The scoring loop itself is :func:`lightning_dfd.analysis.engine.evaluate` (a Lightning prediction
loop: one process per device with ``strategy="ddp"``, whole files per process, rows gathered);
this module holds the pieces it runs on (pairing, reading, configuration, conventions).
With ``maps_dir`` every scored volume's per-pixel DFD maps are written too
(:mod:`lightning_dfd.analysis.maps`).

With ``volumetric=True`` the scored unit is the volume (:func:`build_volume_metrics`): each DFD is a
:class:`~lightning_dfd.metrics.VolumeDFD` over ``planes`` (after resampling to isotropic voxels
with ``spacing``), the pixel metrics are fastMRI's per-volume values, and both tables hold one row
per volume (``volume, n_slices, <metric>...``).

Example:
    >>> pairs, problems = pair_files(Path("predictions"), Path("references"))  # doctest: +SKIP

:func:`lightning_dfd.analysis.engine.evaluate` scores the pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

from lightning_dfd.catalog import CATALOG
from lightning_dfd.preprocess import center_crop

__all__ = [
    "DATA_RANGES",
    "SLICE_MODES",
    "EvaluationConfig",
    "PROTOCOLS",
    "EvaluationResult",
    "FilePair",
    "FileProblem",
    "build_metrics",
    "build_volume_metrics",
    "column_conventions",
    "protocol_defaults",
    "describe_error",
    "volume_of",
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
KEY_COLUMNS = ("volume", "slice")

#: Presets of :func:`protocol_defaults`.
PROTOCOLS = ("fastmri", "paper")


@dataclass(frozen=True)
class FilePair:
    """A prediction file and its reference (either may be missing).

    Attributes:
        name: The prediction's file name (``file1000001.h5``; the reference's may differ in the
            case of ``.h5``).
        prediction: Path of the prediction, or None.
        target: Path of the reference, or None.
    """

    name: str
    prediction: Path | None
    target: Path | None

    @property
    def volume(self) -> str:
        """The volume id written into the tables: the file name without ``.h5`` (any case)."""
        return volume_of(self.name)


#: Stages a file can fail at (the ``stage`` column of the errors CSV).
STAGES = ("ignored", "name", "pair", "read", "score", "maps")
#: Stages of a volume that was not scored (its stale ``--maps`` outputs are removed).
NOT_SCORED = ("pair", "read", "score")


@dataclass(frozen=True)
class FileProblem:
    """Why one file was not scored.

    Attributes:
        file: The file name (``file1000001.h5``).
        message: What went wrong, naming the dataset, shape or error.
        stage: ``"ignored"`` (an entry of an input folder that is not an ``.h5`` file, or a
            subfolder: listed, not a failure), ``"name"`` (an ``.h5`` file whose volume id cannot
            name an output, ``..h5``, or two files of one volume, ``v2.h5`` and ``v2.H5``),
            ``"pair"`` (no partner file), ``"read"`` (opening the files, datasets, shapes),
            ``"score"`` (a metric failed on it: non-finite values, an image too small for an
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
        metrics: Metric names of :data:`lightning_dfd.catalog.CATALOG`.
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
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (bf16 where the CPU or GPU has
            fast bf16 units): the DFD encoders' precision (distances in fp32); pixel metrics are
            always computed in full precision.
        mask: ``"none"`` or ``"foreground"``: every metric over the foreground of each reference
            slice only (:func:`lightning_dfd.masks.foreground_mask`, largest component).
        maps_dir: Write per-pixel DFD maps of every scored volume into this folder
            (:mod:`lightning_dfd.analysis.maps`); None (default): no maps.
        maps_format: Any of ``("png", "h5")`` (default both).
        maps_underlay: Draw the PNG maps over the reference image in gray (needs ``maps_dir``
            and the ``png`` format; the h5 maps do not change).
        protocol: The ``--protocol`` name the other fields came from (written into the map files;
            informational, None: not from a preset).
        seed: The seed every ``weights="random"`` encoder is built under
            (:func:`lightning_dfd.weights.seeded_random_weights`): equal runs, equal ranks.
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
    maps_underlay: bool = False
    protocol: str | None = None
    seed: int = 0
    volumetric: bool = False
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        from lightning_dfd.catalog import check_names
        from lightning_dfd.encoders.options import EncoderOptions

        if not self.metrics:
            raise ValueError("Argument `metrics` names no metric")
        check_names(self.metrics)
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"Argument `metrics` names a metric twice: {list(self.metrics)}")
        if self.mask not in ("none", "foreground"):
            raise ValueError(f"Argument `mask` must be one of ('none', 'foreground'), but got {self.mask!r}")
        if self.scale not in SCALINGS:
            raise ValueError(f"Argument `scale` must be one of {SCALINGS}, got {self.scale!r}")
        EncoderOptions(precision=self.precision)  # the one check of a precision (and "auto")
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
        if self.maps_underlay and (self.maps_dir is None or "png" not in formats):
            raise ValueError("Argument `maps_underlay` draws the PNG maps over the reference: it needs "
                             f"`maps_dir` and the png format, but got maps_dir={self.maps_dir}, "
                             f"maps_format={list(formats)}")
        if self.batch_size < 1:
            raise ValueError(f"Argument `batch_size` must be >= 1, got {self.batch_size}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"Argument `seed` must be an int in [0, 2**63), got {self.seed!r}")
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


#: The file suffix of a volume, matched without regard to case (``file1.h5``, ``v2.H5``).
H5_SUFFIX = ".h5"


def volume_of(file_name: str) -> str:
    """The volume id of an input file: its name without ``.h5`` (any case), checked.

    Raises:
        ValueError: not an ``.h5`` name, or a volume id that cannot name an output (empty, ``.``,
            ``..``, a path separator): every output is named after the volume.

    Example:
        >>> volume_of("file1000001.h5"), volume_of("v2.H5")
        ('file1000001', 'v2')
        >>> volume_of("...h5")
        Traceback (most recent call last):
        ...
        lightning_dfd.files.UnsafePathError: volume '..' is not a plain file name (it names a folder above)
    """
    from lightning_dfd.files import check_plain_name

    if not file_name.lower().endswith(H5_SUFFIX):
        raise ValueError(f"{file_name!r} is not an .h5 file name")
    return check_plain_name(file_name[: -len(H5_SUFFIX)], "volume")


def _scan(folder: Path, label: str) -> tuple[dict[str, Path], set[str], list[FileProblem]]:
    """Every entry of one input folder: its volumes by id, the ids of several files, the others."""
    volumes: dict[str, list[Path]] = {}
    problems = []
    where = f"in the {label} folder {folder}"
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.name.lower().endswith(H5_SUFFIX):
            kind = "a folder" if path.is_dir() else "not an .h5 file"
            problems.append(FileProblem(path.name, f"{where}: {kind}, not scored (evaluate reads the "
                                                   "<volume>.h5 files of the folder, no subfolder)",
                                        "ignored"))  # fmt: skip
            continue
        try:
            volume = volume_of(path.name)
        except ValueError as err:
            problems.append(FileProblem(path.name, f"{where}: {err}; not scored", "name"))
            continue
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file (a broken link?)"
            problems.append(FileProblem(path.name, f"{where}: {kind}, not scored", "read"))
            continue
        volumes.setdefault(volume, []).append(path)
    unique = {volume: paths[0] for volume, paths in volumes.items() if len(paths) == 1}
    for volume, paths in volumes.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems += [FileProblem(p.name, f"{where}: {len(paths)} files of volume {volume!r} ({names}); "
                                             "none is scored", "name") for p in paths]  # fmt: skip
    return unique, volumes.keys() - unique.keys(), problems


def pair_files(predictions: Path, targets: Path) -> tuple[list[FilePair], list[FileProblem]]:
    """Pair the ``<volume>.h5`` files of two folders by volume id (the suffix in any case).

    Every entry of both folders ends up in a pair or in a problem: ``pair`` (no partner),
    ``name`` (a volume id that cannot name an output, such as ``..h5``, or two files of one volume
    such as ``v2.h5`` and ``v2.H5``), ``read`` (an ``.h5`` entry that is not a file) or
    ``ignored`` (not an ``.h5`` file, a subfolder: listed, not counted as a failure).

    Returns:
        ``(pairs, problems)``: the complete pairs, sorted by volume, and the problems, sorted by file.

    Raises:
        FileNotFoundError: A folder does not exist or holds no ``.h5`` file.
    """
    found, ambiguous, problems = {}, {}, []
    for label, folder in (("predictions", Path(predictions)), ("target", Path(targets))):
        if not folder.is_dir():
            raise FileNotFoundError(f"{label} folder not found: {folder}")
        found[label], ambiguous[label], found_problems = _scan(folder, label)
        if not found[label] and all(p.stage == "ignored" for p in found_problems):
            raise FileNotFoundError(f"{label} folder holds no .h5 file: {folder}")
        problems += found_problems
    preds, refs = found["predictions"], found["target"]
    pairs = [FilePair(preds[v].name, preds[v], refs[v]) for v in sorted(preds.keys() & refs.keys())]
    for volume in sorted(preds.keys() - refs.keys()):
        why = ("the target folder holds several files of that volume (see its rows)"
               if volume in ambiguous["target"] else f"no reference file of that name in {targets}")
        problems.append(FileProblem(preds[volume].name, why, "pair"))
    for volume in sorted(refs.keys() - preds.keys()):
        why = ("the predictions folder holds several files of that volume (see its rows)"
               if volume in ambiguous["predictions"] else f"no prediction file of that name in {predictions}")
        problems.append(FileProblem(refs[volume].name, why, "pair"))
    return pairs, sorted(problems, key=lambda p: p.file)


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


def build_metrics(config: EvaluationConfig, **extra: Any) -> tuple[Any, Any]:
    """The suites of ``config`` on ``config.device``: ``(per_image, per_volume)``.

    Both are :class:`~lightning_dfd.metrics.DFDCollection` s built by
    :func:`lightning_dfd.build_suite` with ``reduction="none"`` (``extra`` keyword arguments go to
    every metric, e.g. ``sync_on_compute=False``): ``per_image`` holds every metric of the
    config (one value per image); ``per_volume`` the pixel metrics again, fed the file's volume
    id for fastMRI's per-volume value.
    """
    from lightning_dfd.catalog import is_dfd_name
    from lightning_dfd.metrics.suite import build_suite
    from lightning_dfd.weights import seeded_random_weights

    options = {"reduction": "none", **extra}
    dfd_options = {"precision": config.precision}
    with seeded_random_weights(config.seed):  # random weights: equal in every run and on every rank
        per_image = build_suite(
            {name: {"weights": config.weights_for(name)} if config.weights_for(name) is not None else None
             for name in config.metrics}, dfd_options=dfd_options, **options)
    pixel = [name for name in config.metrics if not is_dfd_name(name)]
    per_volume = build_suite(pixel, **options).to(config.device) if pixel else None
    return per_image.to(config.device), per_volume


def build_volume_metrics(config: EvaluationConfig, **extra: Any) -> dict[str, Any]:
    """The metrics of a volumetric ``config`` on ``config.device``, each giving one value per volume.

    DFDs become :class:`~lightning_dfd.metrics.VolumeDFD` of the catalog metric (``config.weights``,
    ``config.precision``, random weights seeded by ``config.seed``) over ``config.planes`` with
    ``config.spacing``; pixel metrics keep per-volume values (update them with one ``volume_ids``
    value and the volume's maximum as ``data_range``, as ``fastmri.evaluate``). ``extra`` keyword
    arguments go to every metric.
    """
    from lightning_dfd.metrics import VolumeDFD
    from lightning_dfd.metrics.suite import build_metric
    from lightning_dfd.weights import seeded_random_weights

    metrics: dict[str, Any] = {}
    with seeded_random_weights(config.seed):
        for name in config.metrics:
            if not CATALOG[name].is_dfd:
                metrics[name] = build_metric(name, reduction="none", **extra).to(config.device)
                continue
            kwargs: dict[str, Any] = {"precision": config.precision}
            if config.weights_for(name) is not None:
                kwargs["weights"] = config.weights_for(name)
            metrics[name] = VolumeDFD(build_metric(name, **kwargs), planes=config.planes,
                                      spacing=config.spacing, reduction="none", **extra).to(config.device)
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
    data_range = {
        "volume": "data range = maximum of the reference volume (fastMRI)",
        "image": "data range = maximum of each reference slice (meddlr's ref-maxval)",
    }[config.data_range]
    scale = "" if config.scale == "none" else "; each slice pair divided by its reference slice's maximum"
    slices = "every slice" if config.slices == "all" else "the centre slice (n // 2) of each volume"
    if config.volumetric:
        return _volume_conventions(config, data_range)
    out = {"volume": "file name without .h5", "slice": f"slice index in the file ({slices})"}
    for name in config.metrics:
        spec = CATALOG[name]
        if spec.is_dfd:
            weights = config.weights_for(name) or "the metric's default weights"
            direction = "higher is better" if spec.higher_is_better else "lower is better"
            if weights == "random":
                weights = f"random (seed {config.seed}, lightning_dfd.weights.seeded_random_weights)"
            out[name] = (f"{spec.convention} {name} ({direction}), weights {weights}; each image "
                         f"min/max-normalised by the metric; encoder in {config.precision}")
        else:
            out[name] = spec.convention + ("" if name == "nmse" else f"; {data_range}")
        out[name] += scale
        if config.mask == "foreground":
            out[name] += ("; over the foreground of each reference slice (lightning_dfd.masks."
                          "foreground_mask: the object above the background noise, holes filled, "
                          "largest component)")
    return out


def _volume_conventions(config: EvaluationConfig, data_range: str) -> dict[str, str]:
    """:func:`column_conventions` of volumetric scoring: one row per volume."""
    spacing = "the voxel grid as stored"
    if config.spacing is not None:
        spacing = (f"each volume first resampled from spacing (dz, dy, dx) = {config.spacing} mm to "
                   f"isotropic voxels of {min(config.spacing)} mm (trilinear on the magnitude)")
    out = {"volume": "file name without .h5", "n_slices": "slices (D) of the stored volume"}
    for name in config.metrics:
        if CATALOG[name].is_dfd:
            weights = config.weights_for(name) or "the metric's default weights"
            if weights == "random":
                weights = f"random (seed {config.seed}, lightning_dfd.weights.seeded_random_weights)"
            out[name] = (f"VolumeDFD of the deep feature distance {name} (lower is better), weights "
                         f"{weights}: mean over the planes {', '.join(config.planes)} of the mean over "
                         "each plane's slices (axial = the stored (H, W) slices, coronal (D, W), sagittal "
                         "(D, H); a plane thinner than the encoder accepts is skipped with a warning); "
                         f"{spacing}; each slice min/max-normalised by the metric; encoder in "
                         f"{config.precision}")
        else:
            out[name] = (CATALOG[name].convention + ("" if name == "nmse" else f"; {data_range}")
                         + "; one value per volume as fastmri.evaluate (over all its slices)")
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
        preds = center_crop(preds, target.shape[1:])
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


def __getattr__(name: str) -> Any:
    if name == "evaluate":  # moved below the pieces it uses: no import circle
        raise AttributeError("lightning_dfd.analysis.evaluation.evaluate moved to "
                             "lightning_dfd.analysis.engine.evaluate")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
