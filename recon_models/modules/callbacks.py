"""Early stopping and checkpointing on any logged metric, with the mode taken from the metric.

:class:`DFDEarlyStopping` and :class:`DFDModelCheckpoint` are Lightning's ``EarlyStopping`` and
``ModelCheckpoint`` whose ``mode`` defaults to ``None``: then it is read from the monitored
metric's ``higher_is_better`` (``val/lpips_vgg`` -> ``"min"``, ``val/psnr`` -> ``"max"``), by name
from :data:`lightning_dfd.metrics.METRICS`, when the callback is built. A name ending in ``loss``
is minimised; any other name needs an explicit ``mode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from lightning_dfd.metrics import METRICS, metric_class


def metric_mode(monitor: str) -> str:
    """``"max"`` or ``"min"`` for a logged metric name such as ``"val/lpips_vgg"``.

    Example:
        >>> metric_mode("val/lpips_vgg"), metric_mode("val/psnr"), metric_mode("val/loss")
        ('min', 'max', 'min')
    """
    name = monitor.rsplit("/", 1)[-1]
    if name in METRICS:
        return "max" if metric_class(name).higher_is_better else "min"
    if name.endswith("loss"):
        return "min"
    raise ValueError(
        f"Cannot tell whether higher is better for `monitor={monitor!r}`: its last part is not "
        f"one of {tuple(METRICS)} nor a loss; give `mode` ('min' or 'max') explicitly"
    )


class DFDEarlyStopping(EarlyStopping):
    """``EarlyStopping`` whose ``mode`` follows the monitored metric's ``higher_is_better``.

    Args:
        monitor: the logged name, e.g. ``"val/lpips_vgg"``.
        mode: ``"min"``, ``"max"``, or ``None`` to read it from the metric.
        **kwargs: any other argument of :class:`lightning.pytorch.callbacks.EarlyStopping`.

    Example:
        >>> DFDEarlyStopping(monitor="val/dists", patience=2).mode
        'min'
    """

    def __init__(self, monitor: str, mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(monitor=monitor, mode=mode or metric_mode(monitor), **kwargs)


class DFDModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``mode`` follows the monitored metric's ``higher_is_better``.

    Args:
        monitor: the logged name, e.g. ``"val/lpips_vgg"``; ``None`` keeps the last checkpoint.
        mode: ``"min"``, ``"max"``, or ``None`` to read it from the metric.
        **kwargs: any other argument of :class:`lightning.pytorch.callbacks.ModelCheckpoint`.

    Example:
        >>> DFDModelCheckpoint(monitor="val/ssim").mode
        'max'
    """

    def __init__(self, monitor: str | None = None, mode: str | None = None, **kwargs: Any) -> None:
        if mode is None:
            mode = "min" if monitor is None else metric_mode(monitor)
        super().__init__(monitor=monitor, mode=mode, **kwargs)


def fit_summary(trainer: Trainer) -> dict[str, Any]:
    """What a finished ``fit`` did: epochs run, early stopping, best checkpoint, log folder.

    Returns a dict with ``epochs_run``; ``stopped_epoch`` (``None`` when no early-stopping
    callback fired), ``early_stopping_monitor``; ``best_checkpoint``, ``best_score``,
    ``checkpoint_monitor`` (``None`` without a checkpoint callback); ``log_dir``.
    """
    summary: dict[str, Any] = {
        "epochs_run": trainer.current_epoch,
        "stopped_epoch": None,
        "early_stopping_monitor": None,
        "best_checkpoint": None,
        "best_score": None,
        "checkpoint_monitor": None,
        "log_dir": trainer.log_dir,
    }
    for callback in trainer.early_stopping_callbacks:
        summary["early_stopping_monitor"] = callback.monitor
        if callback.stopped_epoch > 0:
            summary["stopped_epoch"] = callback.stopped_epoch
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        summary["best_checkpoint"] = str(Path(checkpoint.best_model_path))
        score = checkpoint.best_model_score
        summary["best_score"] = None if score is None else float(score)
        summary["checkpoint_monitor"] = checkpoint.monitor
    return summary


def format_fit_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines of :func:`fit_summary`.

    Example:
        >>> print(format_fit_summary({"epochs_run": 3, "stopped_epoch": 2,
        ...     "early_stopping_monitor": "val/dists", "best_checkpoint": "b.ckpt",
        ...     "best_score": 0.1, "checkpoint_monitor": "val/dists", "log_dir": "runs"}))
        epochs run: 3
        early stopping on val/dists: stopped at epoch 2
        best checkpoint (val/dists = 0.1): b.ckpt
        logs: runs
    """
    lines = [f"epochs run: {summary['epochs_run']}"]
    if summary["early_stopping_monitor"] is not None:
        stopped = summary["stopped_epoch"]
        state = "did not trigger" if stopped is None else f"stopped at epoch {stopped}"
        lines.append(f"early stopping on {summary['early_stopping_monitor']}: {state}")
    if summary["best_checkpoint"] is not None:
        monitor = summary["checkpoint_monitor"]
        score = "" if monitor is None else f" ({monitor} = {summary['best_score']:.6g})"
        lines.append(f"best checkpoint{score}: {summary['best_checkpoint']}")
    lines.append(f"logs: {summary['log_dir']}")
    return "\n".join(lines)
