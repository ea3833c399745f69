r"""``lightning-dfd evaluate``: score h5 reconstructions against their references.

Writes (default ``runs/evaluate/``, git-ignored) one row per image (``results.csv``: ``volume,
slice, <metric>...``, the input of ``lightning-dfd correlate``), a per-volume summary
(``results_volumes.csv``), the files not scored (``results_errors.csv``: ``file, stage, error``)
and what each column holds (``results_columns.csv``: ``column, convention``), and prints the
summary. ``--maps DIR`` also writes per-pixel DFD maps of every scored volume (``DIR/<volume>.h5``
and ``DIR/<volume>/<metric>_slice<NNN>.png``, see :mod:`lightning_dfd.analysis.maps`).
``--volumetric`` scores each file's ``(D, H, W)`` volume as a whole: one row per volume in
``results.csv`` and ``results_volumes.csv`` (``volume, n_slices, <metric>...``), each DFD as a
:class:`~lightning_dfd.metrics.VolumeDFD` over ``--planes`` (after ``--spacing`` resampling), the
pixel metrics per volume as ``fastmri.evaluate``.

Example:
    lightning-dfd evaluate --target ref/ --predictions recon/ \
        --metrics psnr,ssim,lpips_vgg,dists --protocol paper --out runs/evaluate/results.csv \
        --maps runs/evaluate/maps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lightning_dfd.analysis.commands import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL

if TYPE_CHECKING:
    from lightning_dfd.analysis.evaluation import EvaluationConfig as EvaluationConfigType

__all__ = ["add_parser", "config_from_args", "parse_weights", "run"]

_PREFIX = "lightning-dfd evaluate"
DEFAULT_METRICS = "psnr,ssim,nmse,lpips_vgg"
DEFAULT_OUT = Path("runs") / "evaluate" / "results.csv"


def parse_weights(text: str | None) -> str | dict[str, str] | None:
    """``--weights``: one value for every DFD, or ``name=value,name=value`` per metric.

    Example:
        >>> parse_weights("random"), parse_weights("ssfd=ssfd.pt,lpips_vgg=random")
        ('random', {'ssfd': 'ssfd.pt', 'lpips_vgg': 'random'})
    """
    if text is None:
        return None
    if "=" not in text:
        return text
    pairs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"--weights: expected NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _devices(text: str) -> int | list[int] | str:
    """``--devices``: ``2`` -> 2, ``0,1`` -> [0, 1], ``auto`` -> ``"auto"``."""
    text = text.strip()
    if text == "auto":
        return text
    try:
        if "," in text:
            return [int(item) for item in text.split(",") if item.strip()]
        return int(text)
    except ValueError as err:
        message = f"--devices: expected a count, ids 0,1 or auto, got {text!r}"
        raise argparse.ArgumentTypeError(message) from err


def _formats(text: str) -> tuple[str, ...]:
    """``--maps-format``: ``png,h5`` -> ``("png", "h5")``."""
    from lightning_dfd.analysis.maps import MAP_FORMATS

    formats = tuple(item.strip() for item in text.split(",") if item.strip())
    if not formats or any(item not in MAP_FORMATS for item in formats):
        raise argparse.ArgumentTypeError(f"--maps-format: expected some of {','.join(MAP_FORMATS)}, "
                                         f"got {text!r}")
    return formats


def _planes(text: str) -> tuple[str, ...]:
    """``--planes``: ``axial,coronal`` -> ``("axial", "coronal")``."""
    from lightning_dfd.metrics.volume import parse_planes

    try:
        return parse_planes([item.strip() for item in text.split(",") if item.strip()])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--planes: {err}") from err


def _spacing(text: str) -> tuple[float, float, float]:
    """``--spacing``: ``3,0.5,0.5`` -> ``(3.0, 0.5, 0.5)`` (dz, dy, dx in mm)."""
    from lightning_dfd.metrics.volume import parse_spacing

    try:
        return parse_spacing([float(item) for item in text.split(",")])  # type: ignore[return-value]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--spacing: expected three positive voxel sizes dz,dy,dx in mm, "
                                         f"got {text!r}") from err


def launched_rank(devices: int | list[int] | str = 1) -> int:
    """The global rank of this process as a launcher set it (0 before any launch).

    Lightning's ``ddp`` launcher starts ranks > 0 by re-running the command line with
    ``LOCAL_RANK`` (and ``NODE_RANK``) set; torchrun and SLURM set ``RANK`` / ``SLURM_PROCID``.

    Example:
        >>> launched_rank()  # not launched
        0
    """
    import os

    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    per_node = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) else 1
    node, local = os.environ.get("NODE_RANK", "0"), os.environ.get("LOCAL_RANK", "0")
    return (int(node) if node.isdigit() else 0) * per_node + (int(local) if local.isdigit() else 0)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score fastMRI-style h5 reconstructions against references (CSV per image)",
        description=(
            "Pair the .h5 files of --predictions and --target by name and score every slice "
            "(or the centre one) with the chosen metrics. Files that cannot be scored are "
            "named on stderr and in <out>_errors.csv; the others are still scored (exit code 1 "
            "then). <out>_columns.csv says which convention each column uses (ssim: fastMRI's "
            "7x7 uniform window; ssim_gaussian: the 11x11 Gaussian window of Wang et al., as "
            "the paper). Outputs are checked before scoring; earlier ones are renamed to "
            "*.previous until the new ones are complete."
        ),
    )
    parser.add_argument("--target", required=True, type=Path, help="folder of reference h5")
    parser.add_argument("--predictions", required=True, type=Path, help="folder of predictions")
    parser.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma-separated metric names (default: {DEFAULT_METRICS}); ssim_gaussian is "
        "SSIM with the 11x11 Gaussian window",
    )
    parser.add_argument(
        "--protocol",
        choices=("fastmri", "paper"),
        default="fastmri",
        help="fastmri (default): every slice, data range = volume max, ssim = 7x7 uniform "
        "window. paper (Adamson et al., meddlr): centre slice, each slice pair divided by its "
        "reference's max, data range = that max, ssim replaced by ssim_gaussian. --slices / "
        "--data-range override the preset",
    )
    parser.add_argument(
        "--weights",
        type=parse_weights,
        default=None,
        help="weights of the deep feature distances: 'random', 'imagenet', a checkpoint path, "
        "or NAME=VALUE pairs per metric (default: each metric's published weights)",
    )
    parser.add_argument(
        "--target-key", default="reconstruction_rss", help="reference dataset in the h5 files"
    )
    parser.add_argument(
        "--prediction-key", default="reconstruction", help="prediction dataset in the h5 files"
    )
    parser.add_argument(
        "--slices",
        choices=("all", "center"),
        default=None,
        help="score every slice or only the centre one (the paper's readers scored the centre); "
        "default: from --protocol",
    )
    parser.add_argument(
        "--data-range",
        choices=("volume", "image"),
        default=None,
        help="PSNR/SSIM data range: the reference volume's max (fastMRI) or each slice's max; "
        "default: from --protocol",
    )
    parser.add_argument(
        "--crop-to-target",
        action="store_true",
        help="centre-crop predictions larger than the reference to its size",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per metric update")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of --weights random encoders (default 0: equal runs, equal ranks; written into "
        "<out>_columns.csv)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="'auto' (GPU when present), 'cpu', 'cuda', 'cuda:1' (ignored when --accelerator is given)",
    )
    parser.add_argument(
        "--accelerator", default=None, help="Lightning accelerator: cpu, gpu, cuda, mps, auto"
    )
    parser.add_argument(
        "--devices",
        type=_devices,
        default=1,
        help="Lightning devices: a count (processes per node with --strategy ddp) or ids '0,1'",
    )
    parser.add_argument("--num-nodes", type=int, default=1, help="Lightning num_nodes")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="DFD encoder precision (distances stay fp32; pixel metrics always full precision)",
    )
    parser.add_argument(
        "--mask",
        choices=("none", "foreground"),
        default="none",
        help="score every metric over the foreground of each reference slice only (the object "
        "above the background noise, holes filled, largest component); DFD feature maps averaged "
        "over the mask resized to each layer, DISTS with mask-weighted channel statistics; "
        "receptive fields still reach past the edge",
    )
    parser.add_argument(
        "--strategy",
        default="auto",
        help="Lightning strategy: auto (one process), ddp (one process per device, each "
        "scoring whole files; rank 0 writes); spawn-based strategies are refused",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"per-image CSV; the other outputs go next to it (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--maps",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write per-pixel DFD maps (metric.distance_map of the scored images, 0 outside "
        "--mask) of every scored volume: DIR/<volume>.h5 (one float32 (slices, H, W) dataset per "
        "DFD, slice_num, attributes) and DIR/<volume>/<metric>_slice<NNN>.png (for viewing: magma "
        "colour map from 0 to the volume's 99th percentile, upscaled to >= 256 px, with a colour "
        "bar). Costs one more encoder pass per DFD and batch. DFDs without a per-position form "
        "(e.g. DISTS) and pixel metrics are skipped with a note; each DDP process writes the maps "
        "of its own files",
    )
    parser.add_argument(
        "--maps-format",
        type=_formats,
        default=("png", "h5"),
        help="what --maps writes: png, h5 or png,h5 (default)",
    )
    parser.add_argument(
        "--maps-underlay",
        action="store_true",
        help="draw the PNG maps over the reference image in gray (the map's opacity rises with its "
        "value), to see the anatomy under the error; the h5 maps do not change",
    )
    parser.add_argument(
        "--volumetric",
        action="store_true",
        help="score each file's (D, H, W) volume as a whole: one row per volume (volume, n_slices, "
        "<metric>...) in <out> and <out>_volumes.csv; each DFD as a VolumeDFD (the mean over --planes "
        "of the mean over each plane's slices), PSNR/SSIM/NMSE per volume as fastmri.evaluate. Needs "
        "--protocol fastmri (every slice, volume data range); no --mask or --maps",
    )
    parser.add_argument(
        "--planes",
        type=_planes,
        default=None,
        help="with --volumetric: the planes the DFDs slice each volume along, any of axial (the "
        "stored (H, W) slices), coronal ((D, W) slices), sagittal ((D, H) slices); default all three",
    )
    parser.add_argument(
        "--spacing",
        type=_spacing,
        default=None,
        metavar="DZ,DY,DX",
        help="with --volumetric: voxel sizes in mm; every volume is resampled to isotropic voxels of "
        "the finest one (trilinear on the magnitude) before the DFDs slice it (default: as stored)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _note(message: str) -> None:
    print(f"{_PREFIX}: {message}", file=sys.stderr)


def volumes_path(out: Path) -> Path:
    """Where the per-volume summary goes: ``results.csv`` -> ``results_volumes.csv``."""
    return out.with_name(f"{out.stem}_volumes{out.suffix or '.csv'}")


def errors_path(out: Path) -> Path:
    """Where the files that were not scored are listed: ``results.csv`` -> ``results_errors.csv``."""
    return out.with_name(f"{out.stem}_errors{out.suffix or '.csv'}")


def columns_path(out: Path) -> Path:
    """Where each column's convention is written: ``results.csv`` -> ``results_columns.csv``."""
    return out.with_name(f"{out.stem}_columns{out.suffix or '.csv'}")


def output_paths(out: Path) -> list[Path]:
    """Every file one run writes: per-image table, per-volume summary, errors, column conventions."""
    return [out, volumes_path(out), errors_path(out), columns_path(out)]


def config_from_args(args: argparse.Namespace, quiet: bool = False) -> EvaluationConfigType:
    """The :class:`~lightning_dfd.analysis.evaluation.EvaluationConfig` of a command line."""
    from lightning_dfd.analysis import evaluation as ev

    preset = ev.protocol_defaults(args.protocol)
    metrics = [name.strip() for name in args.metrics.split(",") if name.strip()]
    if preset["ssim"] != "ssim":
        metrics = [preset["ssim"] if name == "ssim" else name for name in metrics]
    slices = args.slices or preset["slices"]
    data_range = args.data_range or preset["data_range"]
    scale = preset["scale"] if data_range == "image" else "none"
    if scale != preset["scale"] and not quiet:
        _note(f"--data-range {data_range}: images are not divided by their reference's max")
    return ev.EvaluationConfig(
        metrics=tuple(metrics),
        weights=args.weights,
        target_key=args.target_key,
        prediction_key=args.prediction_key,
        slices=slices,
        data_range=data_range,
        batch_size=args.batch_size,
        device=ev.resolve_device(args.device),
        crop_to_target=args.crop_to_target,
        scale=scale,
        precision=args.precision,
        mask=args.mask,
        maps_dir=args.maps,
        maps_format=args.maps_format,
        maps_underlay=args.maps_underlay,
        protocol=args.protocol,
        seed=args.seed,
        **_volumetric_fields(args),
    )


def _volumetric_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields of ``--volumetric``, ``--planes`` and ``--spacing`` (absent: the defaults)."""
    fields: dict[str, Any] = {"volumetric": args.volumetric}
    if args.planes is not None:
        fields["planes"] = args.planes
    if args.spacing is not None:
        fields["spacing"] = args.spacing
    return fields


def check_outputs_apart(args: argparse.Namespace) -> None:
    """Refuse ``--out`` / ``--maps`` that are, lie inside or hold an input folder (``OutputError``).

    ``--predictions`` and ``--target`` are compared with symlinks and relative paths resolved.
    """
    from lightning_dfd.analysis import outputs

    written = [("--out", path) for path in output_paths(args.out)]
    if args.maps is not None:
        written.append(("--maps", args.maps))
    outputs.check_apart(written, {"--predictions": args.predictions, "--target": args.target})


def _run_worker(args: argparse.Namespace) -> int:
    """A rank > 0 of a distributed run: score its files, hand the rows to rank 0, write nothing."""
    from lightning_dfd.analysis import evaluation as ev
    from lightning_dfd.analysis.engine import evaluate
    from lightning_dfd.analysis.outputs import OutputError

    try:  # the checks rank 0 makes: a rank started by torchrun / SLURM never writes into an input
        check_outputs_apart(args)
    except OutputError as err:
        _note(f"error: {err}")
        return EXIT_BAD_INPUT
    config = config_from_args(args, quiet=True)
    pairs, _ = ev.pair_files(args.predictions, args.target)
    evaluate(pairs, config, devices=args.devices, progress=False, num_nodes=args.num_nodes,
                strategy=args.strategy, accelerator=args.accelerator)  # fmt: skip
    return EXIT_OK


def _maps_notes(args: argparse.Namespace, result: Any, problems: list) -> None:
    """Say which metrics have no map; remove the maps evaluate wrote earlier for files not scored now."""
    from lightning_dfd.analysis.evaluation import NOT_SCORED, volume_of
    from lightning_dfd.analysis.maps import MapWriter

    writer = MapWriter(args.maps, args.maps_format)
    for problem in problems:
        if problem.stage not in NOT_SCORED:
            continue
        try:
            _, left = writer.discard(volume_of(problem.file))  # done by the loop unless a pair problem
        except (OSError, ValueError) as err:
            _note(f"--maps: the earlier maps of {problem.file} were not removed: {err}")
            continue
        if left:
            _note(f"--maps: left {', '.join(map(str, left))}: not written by evaluate (or changed since)")
    if result.maps_skipped:
        reasons = "; ".join(f"{name}: {why}" for name, why in result.maps_skipped.items())
        _note(f"--maps: no map for {', '.join(result.maps_skipped)} ({reasons})")
    _note(f"--maps: wrote the maps of {result.maps_written} volume(s) to {args.maps}")


def run(args: argparse.Namespace) -> int:
    """Score the files; return 0 (all scored), 1 (some files not scored) or 2 (bad input).

    Outputs are checked before any scoring, the outputs of an earlier run are renamed to
    ``<name>.previous`` while this one works, and the new files appear together when complete.
    """
    from lightning_dfd.analysis import evaluation as ev  # torch only when this command runs
    from lightning_dfd.analysis import outputs
    from lightning_dfd.analysis.engine import evaluate
    from lightning_dfd.weights import WeightsError

    paths = output_paths(args.out)
    if launched_rank(args.devices) != 0:
        return _run_worker(args)
    try:
        config = config_from_args(args)
        conventions = pd.DataFrame(
            list(ev.column_conventions(config).items()), columns=["column", "convention"]
        )
        check_outputs_apart(args)
        # Inputs first (reading only): bad inputs leave no output folder behind.
        pairs, problems = ev.pair_files(args.predictions, args.target)
        if not pairs:
            unmatched = [p for p in problems if p.stage != "ignored"] or problems
            raise ValueError(
                f"no prediction in {args.predictions} has a reference of the same name in "
                f"{args.target} ({len(unmatched)} unmatched file(s), e.g. {unmatched[0]})"
            )
        if args.maps is not None:
            from lightning_dfd.analysis.maps import MapWriter

            outputs.check_output_dir(args.maps, "--maps")
            MapWriter(args.maps, args.maps_format).check()  # a manifest it cannot read: refused now
        for path in paths:
            outputs.check_output_file(path)
        previous = outputs.set_aside(paths)
        if previous:
            _note(f"earlier outputs renamed to *{outputs.PREVIOUS_SUFFIX} until this run completes")
        _note(f"{len(pairs)} file pair(s) on {config.device}; protocol {args.protocol}: slices "
              f"{config.slices}, data range {config.data_range}, scale {config.scale}")
        for column, text in conventions.itertuples(index=False):
            if column in config.metrics:
                _note(f"  {column}: {text}")
        result = evaluate(
            pairs,
            config,
            devices=args.devices,
            progress=not args.no_progress,
            num_nodes=args.num_nodes,
            strategy=args.strategy,
            accelerator=args.accelerator,
        )
        problems = sorted(problems + result.problems, key=lambda p: p.file)
        if args.maps is not None:
            _maps_notes(args, result, problems)
        for problem in problems:
            verb = {"maps": "scored", "ignored": "ignored"}.get(problem.stage, "skipped")
            _note(f"{verb} {problem} [{problem.stage}]")
        errors = pd.DataFrame([p.as_row() for p in problems], columns=["file", "stage", "error"])
        outputs.write_atomically(
            {
                args.out: lambda path: result.images.to_csv(path, index=False),
                volumes_path(args.out): lambda path: result.volumes.to_csv(path, index=False),
                errors_path(args.out): lambda path: errors.to_csv(path, index=False),
                columns_path(args.out): lambda path: conventions.to_csv(path, index=False),
            }
        )
        outputs.discard_previous(paths)
    except (FileNotFoundError, ValueError, WeightsError, outputs.OutputError) as err:
        _note(f"error: {err}")
        return EXIT_BAD_INPUT
    if not result.volumes.empty:
        table = result.volumes.set_index("volume")
        table.loc["mean"] = table.mean(numeric_only=True)
        print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    scored = len(result.volumes)
    no_maps = sum(problem.stage == "maps" for problem in problems)
    ignored = sum(problem.stage == "ignored" for problem in problems)
    failed = len(problems) - no_maps - ignored
    unit = "volume(s)" if args.volumetric else "image(s)"
    _note(
        f"scored {scored} file(s), {len(result.images)} {unit}; wrote {args.out}, "
        f"{volumes_path(args.out).name}, {errors_path(args.out).name} and "
        f"{columns_path(args.out).name}"
        + (f"; {failed} file(s) not scored (see above)" if failed else "")
        + (f"; the maps of {no_maps} file(s) not written (see above)" if no_maps else "")
        + (f"; {ignored} other entr{'y' if ignored == 1 else 'ies'} of the input folders ignored "
           "(not .h5 files, listed with stage 'ignored')" if ignored else "")
    )
    return EXIT_PARTIAL if failed or no_maps else EXIT_OK
