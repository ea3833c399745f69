"""Lightning callbacks for DFDs: early stopping and checkpointing with the mode taken from the metric.

:class:`DFDEarlyStopping` and :class:`DFDModelCheckpoint` are Lightning's ``EarlyStopping`` and
``ModelCheckpoint`` whose ``mode`` defaults to ``None``: then it is read from the monitored
metric's ``higher_is_better`` (``val/lpips_vgg`` -> ``"min"``, ``val/psnr`` -> ``"max"``), by name
from :data:`lightning_dfd.metrics.METRICS`, when the callback is built. A name ending in ``loss``
is minimised; any other name needs an explicit ``mode``.

**DFDs not computed at every validation** (e.g. ``ReconModule(dfd_every_n_epochs=2)``): a module
that leaves a metric out of a validation names it in its ``skipped_metrics`` attribute. Both
callbacks then skip that validation for a monitored metric so named: early stopping neither
counts it as a non-improvement nor fails on the missing key (``patience`` counts evaluations of
the metric, not epochs), and checkpointing writes no top-k checkpoint for it (``last.ckpt`` is
still written). Lightning's ``callback_metrics`` keeps the previous value of a metric that was
not logged, so without this rule an old score would be judged again. A metric missing for any
other reason still raises (``strict=True``), as in Lightning.

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


def monitor_skipped(trainer: Any, monitor: str | None) -> bool:
    """True when the module left ``monitor`` out of the last validation (``skipped_metrics``).

    Example:
        >>> from types import SimpleNamespace
        >>> trainer = SimpleNamespace(lightning_module=SimpleNamespace(skipped_metrics={"val/dists"}))
        >>> monitor_skipped(trainer, "val/dists"), monitor_skipped(trainer, "val/psnr")
        (True, False)
    """
    module = getattr(trainer, "lightning_module", None)
    return monitor is not None and monitor in getattr(module, "skipped_metrics", ())


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

    def _run_early_stopping_check(self, trainer: Any) -> None:
        if monitor_skipped(trainer, self.monitor):
            return  # not computed in this validation: neither an improvement nor a failure
        super()._run_early_stopping_check(trainer)


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

    def _save_topk_checkpoint(self, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        if monitor_skipped(trainer, self.monitor):
            return  # the monitored DFD was not computed: its old value must not rank this epoch
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _refresh_last(self, trainer: Any, at_train_epoch_end: bool) -> None:
        if (not self.save_last or self._should_skip_saving_checkpoint(trainer)
                or self._should_save_on_train_epoch_end(trainer) != at_train_epoch_end
                or self._last_global_step_saved == trainer.global_step):
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
