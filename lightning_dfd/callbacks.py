"""Lightning callbacks for DFDs: early stopping and checkpointing with the mode taken from the metric.

:class:`DFDEarlyStopping` and :class:`DFDModelCheckpoint` are Lightning's ``EarlyStopping`` and
``ModelCheckpoint`` whose ``mode`` defaults to ``None``: then it is read from the monitored
metric's ``higher_is_better`` (``val/lpips_vgg`` -> ``"min"``, ``val/psnr`` -> ``"max"``), by name
from :data:`lightning_dfd.metrics.METRICS`, when the callback is built. A name ending in ``loss``
is minimised; any other name needs an explicit ``mode``.

This module needs ``lightning`` (the ``[recon]`` extra); ``import lightning_dfd`` does not.
"""

from __future__ import annotations

from typing import Any

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

    # Lightning 2.6 rewrites `last.ckpt` only in epochs that also saved a top-k checkpoint, so with
    # a monitored DFD a crash could cost every epoch since the last improvement. With
    # `save_last=True` this callback keeps `last.ckpt` at the latest epoch, always.
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # noqa: D102
        super().on_train_epoch_end(trainer, pl_module)
        self._refresh_last(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:  # noqa: D102
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer, at_train_epoch_end=False)

    def _refresh_last(self, trainer: Any, at_train_epoch_end: bool) -> None:
        if (not self.save_last or self._should_skip_saving_checkpoint(trainer)
                or self._should_save_on_train_epoch_end(trainer) != at_train_epoch_end
                or self._last_global_step_saved == trainer.global_step):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
