"""``make demo``: the paper's claim on a CPU, offline -- a deep feature distance tracks image quality.

1. Writes a small synthetic fastMRI-format knee dataset once (``data/synthetic_knee``; reused while
   :data:`DATASET` is unchanged).
2. Chooses the DFD weights and says which: the published SSFD encoder when it is in the weights home
   (``$LIGHTNING_DFD_HOME``, see ``lightning-dfd weights list``); otherwise an *in-domain* SSFD
   pretrained here by the paper's self-supervised method (masked inpainting,
   ``SSFDPretrainModule`` + export, ``examples/configs/demo_ssfd_pretrain.yaml``) on the demo's own
   training split, cached in ``runs/demo/ssfd-demo.ckpt`` and reused by the next run. LPIPS-VGG,
   DISTS and ResNetFD use ImageNet / RadImageNet weights when present, ``weights: random`` otherwise.
3. Trains a small UNet with ``recon-train fit --config examples/configs/demo.yaml`` (LightningCLI):
   PSNR / SSIM / NMSE and the DFDs every epoch, labelled image grids to TensorBoard, early stopping
   and checkpointing on ``val/ssfd``.
4. Prints the per-epoch table, the Spearman correlation over epochs of every DFD with PSNR and SSIM
   (the claim: lower DFD <-> higher PSNR, rho <= -0.6), where early stopping fired and how far the
   best-by-SSFD checkpoint is from the best PSNR; plots the curves to a PNG.

Run from anywhere (paths are relative to the repository root)::

    python examples/demo.py [--max-epochs N] [--threads N] [--seed N] [extra recon-train arguments...]

Threads: the demo's convolutions are small, and on a busy machine more intra-op threads than
free cores make PyTorch several times *slower* (measured: 36 s vs 4.5 s per epoch with 2 vs 1
threads on 2 shared cores), so the default is half the cores, at most 4.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "configs" / "demo.yaml"
PRETRAIN_CONFIG = ROOT / "examples" / "configs" / "demo_ssfd_pretrain.yaml"
DATA = ROOT / "data" / "synthetic_knee"
RUNS = ROOT / "runs" / "demo"
#: The in-domain SSFD encoder pretrained by the demo (and its cache key next to it).
SSFD_CACHE = RUNS / "ssfd-demo.ckpt"
DATASET: dict[str, Any] = {"volumes": 14, "slices": 6, "coils": 4, "shape": (96, 48),
                           "recon_shape": (48, 48), "seed": 0}
DATASET_MARKER = "demo_dataset.json"
#: DFD name -> registry names tried in order (the first found offline is used), else "random".
DFD_WEIGHTS: dict[str, tuple[str, ...]] = {
    "lpips_vgg": ("vgg16-imagenet",),
    "dists": ("vgg16-imagenet",),
    "resnet_fd": ("resnet50-radimagenet", "resnet50-imagenet"),
}
#: What the metrics' ``weights`` argument calls each registry name.
WEIGHTS_ARG = {"vgg16-imagenet": "imagenet", "resnet50-radimagenet": "radimagenet",
               "resnet50-imagenet": "imagenet"}
MONITOR = "val/ssfd"
PIXEL = ("val/psnr", "val/ssim")
DFDS = ("val/ssfd", "val/lpips_vgg", "val/dists", "val/resnet_fd")
#: Panel name -> y-axis label (with units and which way is better).
CURVES: dict[str, str] = {
    "val/loss": "image L1 loss (unitless, lower is better)",
    "val/psnr": "PSNR (dB, higher is better)",
    "val/ssim": "SSIM (unitless, higher is better)",
    "val/nmse": "NMSE (unitless, lower is better)",
    "val/ssfd": "SSFD (unitless, lower is better)",
    "val/lpips_vgg": "LPIPS-VGG (unitless, lower is better)",
    "val/dists": "DISTS (unitless, lower is better)",
    "val/resnet_fd": "ResNetFD (unitless, lower is better)",
}
#: The claim checked on screen: Spearman(DFD, PSNR) over epochs at most this.
RHO_TARGET = -0.6


# ------------------------------------------------------------------------------------- analysis
def average_ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank (as ``scipy.stats.rankdata``).

    Example:
        >>> average_ranks([10.0, 30.0, 20.0, 30.0])
        [1.0, 3.5, 2.0, 3.5]
    """
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN when undefined).

    Pairs holding a NaN are dropped; fewer than 3 pairs, or a constant sequence, give NaN.

    Example:
        >>> spearman([1, 2, 3, 4], [8, 6, 7, 1])
        -0.8
    """
    if len(x) != len(y):
        raise ValueError(f"spearman needs sequences of one length, but got {len(x)} and {len(y)}")
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3:
        return math.nan
    rx, ry = average_ranks([a for a, _ in pairs]), average_ranks([b for _, b in pairs])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    if sx == 0 or sy == 0:
        return math.nan
    return round(cov / (sx * sy), 12)


def epoch_table(metrics_csv: Path) -> dict[str, list[float]]:
    """Validation metrics per epoch from a Lightning ``metrics.csv``: ``{"epoch": [...], name: [...]}``.

    Rows without ``val/psnr`` (training steps) are skipped; a metric missing in a row is NaN.
    """
    import csv

    with Path(metrics_csv).open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/psnr")]
    names = [name for name in CURVES if rows and name in rows[0]]
    table: dict[str, list[float]] = {"epoch": [float(row["epoch"]) for row in rows]}
    for name in names:
        table[name] = [float(row[name]) if row[name] else math.nan for row in rows]
    return table


def format_correlations(table: dict[str, list[float]], target: float = RHO_TARGET) -> list[str]:
    """One line per DFD: Spearman over epochs with PSNR and with SSIM, and whether the claim holds.

    A lower DFD means a better image, so a DFD that tracks PSNR has rho(DFD, PSNR) <= ``target``.

    Example:
        >>> table = {"epoch": [0, 1, 2, 3], "val/psnr": [20.0, 22.0, 23.0, 23.5],
        ...          "val/ssim": [0.5, 0.6, 0.65, 0.7], "val/ssfd": [0.9, 0.5, 0.4, 0.41]}
        >>> print("\\n".join(format_correlations(table)))
        Spearman over 4 epochs   vs PSNR   vs SSIM
        ssfd                       -0.80     -0.80   (rho vs PSNR <= -0.6: yes)
    """
    psnr = table.get("val/psnr", [])
    ssim = table.get("val/ssim", [math.nan] * len(psnr))
    lines = [f"Spearman over {len(psnr)} epochs   vs PSNR   vs SSIM"]
    for name in DFDS:
        if name not in table:
            continue
        rho_psnr, rho_ssim = spearman(table[name], psnr), spearman(table[name], ssim)
        verdict = "n/a" if math.isnan(rho_psnr) else "yes" if rho_psnr <= target else "NO"
        lines.append(f"{name.removeprefix('val/'):<24}{rho_psnr:>8.2f}  {rho_ssim:>8.2f}   "
                     f"(rho vs PSNR <= {target:g}: {verdict})")
    return lines


def format_epochs(table: dict[str, list[float]]) -> list[str]:
    """The per-epoch validation table (PSNR, SSIM and every DFD)."""
    names = [name for name in (*PIXEL, *DFDS) if name in table]
    lines = ["epoch " + "".join(f"{name.removeprefix('val/'):>11}" for name in names)]
    for i, epoch in enumerate(table["epoch"]):
        lines.append(f"{int(epoch):>5} " + "".join(f"{table[name][i]:>11.4g}" for name in names))
    return lines


# ----------------------------------------------------------------------------------------- data
def ensure_dataset(path: Path = DATA) -> list[Path]:
    """Write the synthetic dataset unless one with the same :data:`DATASET` settings is there."""
    from recon_models.data.synthetic import make_synthetic_dataset

    settings = json.dumps(DATASET, sort_keys=True)
    marker = path / DATASET_MARKER
    existing = sorted(path.glob("file_synth*.h5"))
    if marker.is_file() and marker.read_text() == settings and len(existing) == DATASET["volumes"]:
        print(f"[demo] data: reusing the synthetic dataset in {path} ({len(existing)} volumes)")
        return existing
    for old in _earlier_demo_files(path, existing):  # another version's files would mix in
        old.unlink()
    start = time.perf_counter()
    files = make_synthetic_dataset(path, **DATASET)
    marker.write_text(settings)
    print(f"[demo] data: wrote {len(files)} synthetic volumes to {path} "
          f"in {time.perf_counter() - start:.1f} s")
    return files


def _earlier_demo_files(path: Path, existing: list[Path]) -> list[Path]:
    """The ``file_synth*.h5`` in ``path`` an earlier demo wrote (its marker's volume count).

    Raises:
        SystemExit: A ``file_synth*.h5`` there is not one the marker accounts for: the demo
            removes only what it wrote, so it stops and names the files.
    """
    try:
        volumes = int(json.loads((path / DATASET_MARKER).read_text())["volumes"])
    except (OSError, ValueError, KeyError, TypeError):
        volumes = 0  # no marker (or not one of ours): nothing there is known to be the demo's
    written = {f"file_synth{index:04d}.h5" for index in range(volumes)}
    foreign = [p.name for p in existing if p.name not in written or p.is_symlink() or not p.is_file()]
    if foreign:
        raise SystemExit(f"[demo] {path} holds {', '.join(foreign)}, not written by an earlier demo "
                         f"(no {DATASET_MARKER} accounts for them); the demo removes only its own "
                         "files: move them away and run it again")
    return existing


# -------------------------------------------------------------------------------------- weights
def found_offline(name: str) -> Path | None:
    """The file of registry entry ``name`` when it is in the weights home (checksum not failing)."""
    from lightning_dfd import weights as W

    state, path = W.status(W.get_spec(name))
    return path if state.startswith("found") else None


def shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it (as the configs write it)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def ssfd_cache_key() -> str:
    """Hash of what the in-domain SSFD depends on: the dataset and the pretraining config."""
    text = json.dumps(DATASET, sort_keys=True) + PRETRAIN_CONFIG.read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrain_ssfd(out: Path = SSFD_CACHE) -> Path:
    """The paper's SSFD pretraining on the demo's training split; writes the encoder to ``out``."""
    from lightning.pytorch.cli import LightningCLI

    from recon_models.data import FastMRIDataModule
    from recon_models.modules.ssfd_pretrain import SSFDPretrainModule

    start = time.perf_counter()
    cli = LightningCLI(SSFDPretrainModule, FastMRIDataModule,
                       args=["fit", "--config", str(PRETRAIN_CONFIG), "--model.export_path", str(out),
                             "--trainer.enable_progress_bar", "false"],
                       save_config_kwargs={"overwrite": True})
    loss = float(cli.trainer.callback_metrics.get("val/loss", math.nan))
    print(f"[demo] SSFD pretraining: {cli.trainer.current_epoch} epochs in "
          f"{time.perf_counter() - start:.0f} s, inpainting val/loss {loss:.3f}")
    return out


def ssfd_weights(out: Path = SSFD_CACHE, source: str = "auto", retrain: bool = False) -> tuple[str, str]:
    """``(weights argument, what it is)`` for SSFD: published, cached in-domain, or pretrained now.

    Args:
        out: where the in-domain encoder is cached (its key in ``out.with_suffix(".json")``).
        source: ``"auto"`` (the published encoder when it is in the weights home, else in-domain),
            ``"published"`` (error when missing) or ``"in-domain"``.
        retrain: pretrain the in-domain encoder even when a cached one fits.
    """
    from lightning_dfd.encoders.ssfd import SSFD_WEIGHTS

    if source not in ("auto", "published", "in-domain"):
        raise ValueError(f"Argument `source` must be 'auto', 'published' or 'in-domain', but got {source!r}")
    published = found_offline(SSFD_WEIGHTS) if source != "in-domain" else None
    if published is not None:
        return SSFD_WEIGHTS, f"published encoder {SSFD_WEIGHTS} ({published})"
    if source == "published":
        raise SystemExit(f"[demo] --ssfd published: {SSFD_WEIGHTS} is not in the weights home; "
                         "see `lightning-dfd weights list`")
    key = ssfd_cache_key()
    stamp = out.with_suffix(".json")
    cached = out.is_file() and stamp.is_file() and json.loads(stamp.read_text()).get("key") == key
    if cached and not retrain:
        return shown(out), (f"in-domain, pretrained by the demo on its training split "
                            f"(cached {shown(out)}, key {key})")
    print(f"[demo] {SSFD_WEIGHTS} is not in the weights home: pretraining an in-domain SSFD on the "
          "demo's training split\n[demo] (masked inpainting, the paper's method; about a minute, "
          "cached for the next run)")
    pretrain_ssfd(out)
    stamp.write_text(json.dumps({"key": key, "config": str(PRETRAIN_CONFIG.relative_to(ROOT)),
                                 "dataset": DATASET}))
    return shown(out), (f"in-domain, pretrained now on the demo's training split "
                        f"(masked inpainting) -> {shown(out)}")


def dfd_weights(ssfd_source: str = "auto", retrain: bool = False) -> dict[str, tuple[str, str]]:
    """DFD name -> ``(weights argument, description)``: pretrained when found, else random."""
    choice = {"ssfd": ssfd_weights(source=ssfd_source, retrain=retrain)}
    for dfd, names in DFD_WEIGHTS.items():
        for name in names:
            path = found_offline(name)
            if path is not None:
                choice[dfd] = (WEIGHTS_ARG[name], f"pretrained {name} ({path})")
                break
        else:
            choice[dfd] = ("random", f"random weights ({' / '.join(names)} not in the weights home)")
    return choice


def write_run_config(weights: dict[str, tuple[str, str]], seed: int) -> Path:
    """``demo.yaml`` with the chosen DFD weights and seed, written to ``runs/demo/demo.resolved.yaml``."""
    config = yaml.safe_load(CONFIG.read_text())
    config["seed_everything"] = seed
    dfds = config["model"].setdefault("dfds", {})
    for name, (arg, _) in weights.items():
        dfds[name] = {**(dfds.get(name) or {}), "weights": arg}
    RUNS.mkdir(parents=True, exist_ok=True)
    path = RUNS / "demo.resolved.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------- plot
def metric_curve_figure(metrics_csv: Path, best_epoch: int | None = None,
                        title: str = "UNet on synthetic knees", notes: dict[str, str] | None = None):
    """One panel per validation metric (train loss with val loss) against the epoch, y-labels with units.

    Args:
        metrics_csv: Lightning's ``metrics.csv``.
        best_epoch: drawn as a dotted line in every panel.
        title: of the figure.
        notes: metric name (``"val/lpips_vgg"``) -> a note appended to its panel's title
            (e.g. ``"random weights"``).

    Returns a matplotlib ``Figure`` (Agg canvas, no display needed).
    """
    import csv

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = epoch_table(metrics_csv)
    with Path(metrics_csv).open() as f:
        train = [(float(r["epoch"]), float(r["train/loss_epoch"])) for r in csv.DictReader(f)
                 if r.get("train/loss_epoch")]
    names = [name for name in CURVES if name in table]
    cols = 4
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.4 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        ax.plot(table["epoch"], table[name], "o-", markersize=3, label="val")
        if name == "val/loss" and train:
            ax.plot(*zip(*train), "s-", markersize=3, label="train")
            ax.legend(fontsize=8)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        note = (notes or {}).get(name)
        ax.set_title("loss" if name == "val/loss" and train else name + (f" ({note})" if note else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(textwrap.fill(CURVES[name], 24))  # fits the 2.8-inch panel
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}; dotted: best epoch by {MONITOR}")
    return fig


def plot_metric_curves(metrics_csv: Path, png: Path, best_epoch: int | None = None,
                       title: str = "UNet on synthetic knees", notes: dict[str, str] | None = None) -> Path:
    """:func:`metric_curve_figure` saved to ``png``; returns ``png``."""
    metric_curve_figure(metrics_csv, best_epoch, title, notes).savefig(png, dpi=110)
    return png


# ----------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=None, help="override the config's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the UNet run (default 0)")
    parser.add_argument("--threads", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 2)),
                        help="torch intra-op threads (default: half the cores, at most 4)")
    parser.add_argument("--ssfd", default="auto", choices=("auto", "published", "in-domain"),
                        help="SSFD encoder: the published one when in the weights home (auto), or "
                        "the in-domain one pretrained on the demo's training split")
    parser.add_argument("--retrain-ssfd", action="store_true",
                        help="pretrain the in-domain SSFD again even when a cached one fits")
    args, extra = parser.parse_known_args(argv)
    sys.argv = sys.argv[:1]  # LightningCLI gets its arguments from `args` below
    os.chdir(ROOT)  # the configs' relative paths (data/, runs/) are from the repository root
    total = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    ensure_dataset()
    weights = dfd_weights(args.ssfd, args.retrain_ssfd)
    for name, (_, what) in weights.items():
        print(f"[demo] DFD weights: {name:<10} {what}")
    config = write_run_config(weights, args.seed)

    from recon_models.cli import run_cli as recon_train

    cli_args = ["fit", "--config", str(config), *extra]
    if args.max_epochs is not None:
        cli_args += ["--trainer.max_epochs", str(args.max_epochs)]
    print(f"[demo] training the UNet: recon-train fit --config {config.relative_to(ROOT)}")
    start = time.perf_counter()
    cli = recon_train(cli_args)
    elapsed = time.perf_counter() - start
    summary = cli.summary or {}
    log_dir = Path(cli.trainer.log_dir)
    table = epoch_table(log_dir / "metrics.csv")
    report(table, summary, weights, elapsed)
    best_epoch = best_epoch_by(table, MONITOR)
    title = "UNet on synthetic knees, SSFD " + (
        "in-domain (demo-pretrained)" if weights["ssfd"][0] == shown(SSFD_CACHE) else "published")
    notes = {f"val/{name}": "random weights" for name, (arg, _) in weights.items() if arg == "random"}
    png = plot_metric_curves(log_dir / "metrics.csv", log_dir / "metric_curves.png", best_epoch, title,
                             notes)
    tensorboard = [logger.log_dir for logger in cli.trainer.loggers
                   if type(logger).__name__ == "TensorBoardLogger"]
    print(f"[demo] metrics (CSV):    {log_dir / 'metrics.csv'}")
    for path in tensorboard:
        print(f"[demo] TensorBoard:      {path}  (tensorboard --logdir {Path(path).parent})")
    print(f"[demo] best checkpoint:  {summary.get('best_checkpoint')} (epoch {best_epoch})")
    print(f"[demo] metric curves:    {png}")
    print(f"[demo] total {time.perf_counter() - total:.0f} s")
    return 0


def best_epoch_by(table: dict[str, list[float]], name: str, mode: str = "min") -> int | None:
    """The epoch of the best value of ``name`` (first one on ties), None when absent."""
    values = [(v, i) for i, v in enumerate(table.get(name, [])) if not math.isnan(v)]
    if not values:
        return None
    _, i = min(values) if mode == "min" else max(values, key=lambda vi: (vi[0], -vi[1]))
    return int(table["epoch"][i])


def report(table: dict[str, list[float]], summary: dict[str, Any],
           weights: dict[str, tuple[str, str]], elapsed: float) -> None:
    """Print the epochs, the correlations and what early stopping / checkpointing did."""
    print("\n[demo] validation per epoch")
    for line in format_epochs(table):
        print("  " + line)
    print("[demo] does each DFD track image quality over training? (lower DFD = better image)")
    for line in format_correlations(table):
        print("  " + line)
    stopped = summary.get("stopped_epoch")
    epochs = summary.get("epochs_run")
    print(f"[demo] trained {epochs} epochs in {elapsed:.0f} s; early stopping on {MONITOR}: "
          + ("did not trigger (max_epochs reached)" if stopped is None else f"stopped at epoch {stopped}"))
    best_dfd = best_epoch_by(table, MONITOR)
    best_psnr = best_epoch_by(table, "val/psnr", mode="max")
    if best_dfd is not None and best_psnr is not None:
        index = {int(e): i for i, e in enumerate(table["epoch"])}
        psnr = table["val/psnr"]
        gap = psnr[index[best_psnr]] - psnr[index[best_dfd]]
        first, last = psnr[0], psnr[-1]
        print(f"[demo] PSNR {first:.2f} -> {last:.2f} dB, SSIM {table['val/ssim'][0]:.3f} -> "
              f"{table['val/ssim'][-1]:.3f}")
        print(f"[demo] best checkpoint by {MONITOR}: epoch {best_dfd}, PSNR "
              f"{psnr[index[best_dfd]]:.2f} dB; best PSNR: epoch {best_psnr}, {psnr[index[best_psnr]]:.2f}"
              f" dB (gap {gap:.2f} dB)")
    print("[demo] SSFD weights: " + weights["ssfd"][1])


if __name__ == "__main__":
    sys.exit(main())
