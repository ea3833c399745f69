r"""``lightning-dfd evaluate``: score h5 reconstructions against their references.

Writes one row per image (``volume, slice, <metric>...``, the input of ``lightning-dfd
correlate``) and a per-volume summary next to it (``<out stem>_volumes.csv``), and prints the
summary.

Example:
    lightning-dfd evaluate --target ref/ --predictions recon/ \
        --metrics psnr,ssim,lpips_vgg,dists --slices center --out results.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lightning_dfd.analysis.commands import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL

__all__ = ["add_parser", "parse_weights", "run"]

_PREFIX = "lightning-dfd evaluate"
DEFAULT_METRICS = "psnr,ssim,nmse,lpips_vgg"


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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score fastMRI-style h5 reconstructions against references (CSV per image)",
        description=(
            "Pair the .h5 files of --predictions and --target by name and score every slice "
            "(or the centre one) with the chosen metrics. Files that cannot be scored are "
            "named on stderr; the others are still scored (exit code 1 then)."
        ),
    )
    parser.add_argument("--target", required=True, type=Path, help="folder of reference h5")
    parser.add_argument("--predictions", required=True, type=Path, help="folder of predictions")
    parser.add_argument(
        "--metrics",
        default=DEFAULT_METRICS,
        help=f"comma-separated metric names (default: {DEFAULT_METRICS})",
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
        default="all",
        help="score every slice or only the centre one (the paper's readers scored the centre)",
    )
    parser.add_argument(
        "--data-range",
        choices=("volume", "image"),
        default="volume",
        help="PSNR/SSIM data range: the reference volume's max (fastMRI) or each slice's max",
    )
    parser.add_argument(
        "--crop-to-target",
        action="store_true",
        help="centre-crop predictions larger than the reference to its size",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="slices per metric update")
    parser.add_argument("--device", default="auto", help="'auto' (GPU when present), 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument("--devices", type=int, default=1, help="worker processes (one per GPU on cuda)")
    parser.add_argument("--out", type=Path, default=Path("results.csv"), help="per-image CSV")
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


def output_paths(out: Path) -> list[Path]:
    """Every file one run writes: per-image table, per-volume summary, errors."""
    return [out, volumes_path(out), errors_path(out)]


def run(args: argparse.Namespace) -> int:
    """Score the files; return 0 (all scored), 1 (some files not scored) or 2 (bad input).

    Outputs are checked before any scoring, the outputs of an earlier run are renamed to
    ``<name>.previous`` while this one works, and the new files appear together when complete.
    """
    from lightning_dfd.analysis import evaluation as ev  # torch only when this command runs
    from lightning_dfd.analysis import outputs
    from lightning_dfd.weights import WeightsError

    paths = output_paths(args.out)
    try:
        config = ev.EvaluationConfig(
            metrics=tuple(name.strip() for name in args.metrics.split(",") if name.strip()),
            weights=args.weights,
            target_key=args.target_key,
            prediction_key=args.prediction_key,
            slices=args.slices,
            data_range=args.data_range,
            batch_size=args.batch_size,
            device=ev.resolve_device(args.device),
            crop_to_target=args.crop_to_target,
        )
        for path in paths:
            outputs.check_output_file(path)
        pairs, problems = ev.pair_files(args.predictions, args.target)
        if not pairs:
            raise ValueError(
                f"no prediction in {args.predictions} has a reference of the same name in "
                f"{args.target} ({len(problems)} unmatched file(s), e.g. {problems[0].file})"
            )
        previous = outputs.set_aside(paths)
        if previous:
            _note(f"earlier outputs renamed to *{outputs.PREVIOUS_SUFFIX} until this run completes")
        _note(f"{len(pairs)} file pair(s) on {config.device}; metrics {list(config.metrics)}")
        result = ev.evaluate(pairs, config, devices=args.devices, progress=not args.no_progress)
        problems = sorted(problems + result.problems, key=lambda p: p.file)
        for problem in problems:
            _note(f"skipped {problem} [{problem.stage}]")
        errors = pd.DataFrame([p.as_row() for p in problems], columns=["file", "stage", "error"])
        outputs.write_atomically(
            {
                args.out: lambda path: result.images.to_csv(path, index=False),
                volumes_path(args.out): lambda path: result.volumes.to_csv(path, index=False),
                errors_path(args.out): lambda path: errors.to_csv(path, index=False),
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
    _note(
        f"scored {scored} file(s), {len(result.images)} image(s); wrote {args.out}, "
        f"{volumes_path(args.out).name} and {errors_path(args.out).name}"
        + (f"; {len(problems)} file(s) not scored (see above)" if problems else "")
    )
    return EXIT_PARTIAL if problems else EXIT_OK
