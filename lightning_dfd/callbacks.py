"""Lightning callbacks for DFDs: add them to any LightningModule; early-stop and checkpoint on them.

:class:`DFDCallback` scores what any LightningModule's ``validation_step`` returns with deep
feature distances (and pixel metrics), without a change to the module, and logs them as
``val/<name>`` once per validation epoch (``val/<name>/dataloader_idx_<k>`` per loader with several
validation dataloaders, as Lightning's ``self.log`` names them), where ``EarlyStopping`` /
``ModelCheckpoint`` see them; optionally the test loop too (``test/<name>``).

:class:`DFDEarlyStopping` and :class:`DFDModelCheckpoint` are Lightning's ``EarlyStopping`` and
``ModelCheckpoint`` whose ``mode`` defaults to ``None``: then it is read from the monitored
metric's ``higher_is_better`` (``val/lpips_vgg`` -> ``"min"``, ``val/psnr`` -> ``"max"``), by name
from :data:`lightning_dfd.catalog.CATALOG`, when the callback is built. A name ending in ``loss``
is minimised; any other name needs an explicit ``mode``.

**DFDs not computed at every validation** (e.g. ``ReconModule(dfd_every_n_epochs=2)``): a module
that leaves a metric out of a validation names it in its ``skipped_metrics`` attribute. Both
callbacks then skip that validation for a monitored metric so named: early stopping neither
counts it as a non-improvement nor fails on the missing key (``patience`` counts evaluations of
the metric, not epochs), and checkpointing writes no top-k checkpoint for it (``last.ckpt`` is
still written). Lightning's ``callback_metrics`` keeps the previous value of a metric that was
not logged, so without this rule an old score would be judged again. A metric missing for any
other reason still raises (``strict=True``), as in Lightning.

This module needs ``lightning`` (the ``[recon]`` extra). ``import lightning_dfd`` works without
it: ``lightning_dfd.DFDCallback`` is then a stand-in that raises an ImportError when built.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler
from torchmetrics import Metric

from lightning_dfd.catalog import CATALOG
from lightning_dfd.metrics.collection import DFDCollection
from lightning_dfd.metrics.suite import build_suite
from lightning_dfd.sample_ids import name_sample_id, volume_key


def metric_mode(monitor: str) -> str:
    """``"max"`` or ``"min"`` for a logged metric name such as ``"val/lpips_vgg"``.

    Example:
        >>> metric_mode("val/lpips_vgg"), metric_mode("val/psnr"), metric_mode("val/loss")
        ('min', 'max', 'min')
    """
    name = monitor.rsplit("/", 1)[-1]
    if name in CATALOG:
        return CATALOG[name].mode
    if name.endswith("loss"):
        return "min"
    raise ValueError(
        f"Cannot tell whether higher is better for `monitor={monitor!r}`: its last part is not "
        f"one of {tuple(CATALOG)} nor a loss; give `mode` ('min' or 'max') explicitly"
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


#: What :class:`DFDCallback` reads from a ``validation_step`` dict by default: fastMRI's
#: ``MriModule`` keys. ``output`` and ``target`` are required, the others optional.
DEFAULT_KEYS: dict[str, str] = {"output": "output", "target": "target", "fname": "fname",
                                "slice_num": "slice_num", "max_value": "max_value"}
#: Positions in a ``validation_step`` tuple/list by default.
DEFAULT_POSITIONS: dict[str, int] = {"output": 0, "target": 1}
ROLES = tuple(DEFAULT_KEYS)
#: The loops :class:`DFDCallback` can score.
STAGES = ("validate", "test")


def _num_dataloaders(trainer: Any, stage: str) -> int | None:
    """How many dataloaders the running loop has (as Lightning counts them), None if unknown."""
    try:
        if stage == "test":
            batches = trainer.num_test_batches
        elif trainer.sanity_checking:
            batches = trainer.num_sanity_val_batches
        else:
            batches = trainer.num_val_batches
        return len(batches)
    except Exception:  # a trainer stand-in, or a loop Lightning has not set up
        return None


def _as_list(value: Any, n: int, role: str) -> list:
    """A batch field (list/tuple of str, tensor, scalar) -> a list of ``n`` Python values."""
    if isinstance(value, Tensor):
        value = value.flatten().tolist() if value.numel() != 1 or n == 1 else [value.item()] * n
    elif isinstance(value, (str, int)):
        value = [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"DFDCallback: `{role}` holds {len(value)} values for a batch of {n} images")
    return value


def padding_sampler_problem(trainer: Any, stage: str = "validate") -> str | None:
    """Why validation would count some samples twice (or drop some) across processes, or None.

    Lightning's default ``DistributedSampler`` pads each shard with repeated samples when the
    dataset size is not a multiple of the world size (or drops samples with ``drop_last``).
    ``stage="test"`` looks at the test dataloaders.
    """
    world = int(getattr(trainer, "world_size", 1) or 1)
    loaders = getattr(trainer, "test_dataloaders" if stage == "test" else "val_dataloaders", None)
    if world <= 1 or loaders is None:
        return None
    for loader in loaders if isinstance(loaders, (list, tuple)) else [loaders]:
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler) or isinstance(sampler, UnrepeatedDistributedSampler):
            continue
        size = len(sampler.dataset)
        if size % sampler.num_replicas:
            effect = "drops" if sampler.drop_last else "repeats"
            rest = size % sampler.num_replicas
            extra = rest if sampler.drop_last else sampler.num_replicas - rest
            loop = "test" if stage == "test" else "validation"
            return (f"the {loop} sampler is a padding DistributedSampler: {size} samples on "
                    f"{sampler.num_replicas} processes, so it {effect} {extra} sample(s) and every DFD "
                    "is biased. Shard without padding: Trainer(use_distributed_sampler=False) and a "
                    "sampler that gives each sample to exactly one process, e.g. DataLoader(..., "
                    "sampler=lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler("
                    "dataset, shuffle=False))")
    return None


def logged_elsewhere(trainer: Any) -> dict[str, str]:
    """Names logged so far in the running loop's epoch -> the hook that logged them.

    Names as they reach ``trainer.callback_metrics`` and the loggers (with Lightning's
    ``/dataloader_idx_<k>`` suffix where it adds one). Read from the loop's result collection
    (Lightning internals: empty if they change).

    Example:
        >>> from types import SimpleNamespace
        >>> logged_elsewhere(SimpleNamespace())
        {}
    """
    results = getattr(trainer, "_results", None)
    names: dict[str, str] = {}
    try:
        for result in results.values():
            if result.has_reset:  # not logged in this epoch
                continue
            meta = result.meta
            name = meta.name
            if meta.add_dataloader_idx and meta.dataloader_idx is not None:
                name += f"/dataloader_idx_{meta.dataloader_idx}"
            names[name] = meta.fx.split(".")[0]
    except AttributeError:  # no loop running, or a Lightning without these internals
        return {}
    return names


def _same_value(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _clash_message(name: str, where: str, stage: str) -> str:
    if where in ("validation_step", "test_step"):
        where = f"the LightningModule's `{where}`"
    elif not where.startswith("a hook"):
        where = f"`{where}` (the LightningModule or another callback)"
    option = "prefix" if stage == "validate" else "test_prefix"
    return (f"DFDCallback: `{name}` is also logged by {where}: the callback's value would stand in for "
            "it in trainer.callback_metrics (EarlyStopping, ModelCheckpoint and loggers would act on "
            f"another number). Give the callback other names (DFDCallback({option}=...)) or rename "
            "the module's metric")


class DFDCallback(Callback):
    """Deep feature distances for any LightningModule, read from what ``validation_step`` returns.

    The module is not changed: its ``validation_step`` returns a dict (default keys follow
    fastMRI's ``MriModule``: ``output``, ``target``, ``fname``, ``slice_num``, ``max_value``;
    see ``keys``) or a tuple/list (see ``positions``). Every validation batch updates the metrics
    (on the module's device, without gradients); at the end of each validation epoch their values,
    computed over all processes by torchmetrics, are logged with ``pl_module.log`` as
    ``<prefix><name>`` and so reach ``trainer.callback_metrics``, ``EarlyStopping``,
    ``ModelCheckpoint`` and every logger.

    * Target features are cached across epochs (``feature_cache=True``), keyed by
      (``fname``, ``slice_num``) through :func:`~lightning_dfd.sample_ids.name_sample_id`;
      without ``fname`` nothing is cached.
    * The metrics are not modules of the LightningModule and this callback's ``state_dict`` is
      empty: encoder weights never enter a checkpoint.
    * Pixel metrics (``psnr``, ``ssim``, ``nmse``) get ``data_range=max_value`` and per-volume
      aggregation by ``fname`` when those are returned.
    * DDP: each process scores its own shard and the values are synced exactly, *provided each
      sample is validated by exactly one process*. Lightning's default ``DistributedSampler``
      repeats samples to even out shards when the dataset size is not a multiple of the world
      size; this callback warns when it sees that. Use ``Trainer(use_distributed_sampler=False)``
      and a sampler without padding (``UnrepeatedDistributedSampler``, or a volume-wise shard
      sampler); shards of unequal length are fine, as nothing here synchronises per step.
    * Several validation dataloaders: one metric suite per ``dataloader_idx`` (the first suite is
      :attr:`metrics`, the others are copies made when their loader is first seen, sharing its
      encoders and feature cache), logged as ``<prefix><name>/dataloader_idx_<k>`` exactly as
      Lightning's ``self.log`` names values logged with several dataloaders (one dataloader:
      ``<prefix><name>``, no suffix). Cache keys of loader ``k > 0`` include ``k``, so equal
      (``fname``, ``slice_num``) in two loaders never share a cached target feature.
    * ``stages=("validate", "test")`` also scores the test loop (``test_step``'s return value,
      read the same way) and logs ``<test_prefix><name>`` (per loader as above) at the end of
      ``trainer.test``; each stage has its own suites.
    * Names are never shared: a name the module (or another callback) already logged in the
      epoch (``validation_step``, a batch hook, an earlier epoch-end hook) is refused with a
      ``ValueError`` naming it and the hook that logged it, before anything is logged; a value of
      the callback's that a later hook replaced is refused at ``on_validation_end`` /
      ``on_test_end``. (A module logging the same name in its own ``on_validation_epoch_end``
      with other ``self.log`` arguments is refused by Lightning itself.) ``prefix`` /
      ``test_prefix`` choose other names.

    Args:
        metrics: names from :data:`lightning_dfd.catalog.CATALOG` (each built with
            ``weights`` left to its default), or a mapping name -> keyword arguments of
            :func:`~lightning_dfd.metrics.build_metric` (``{"lpips_vgg": {"weights": "random"}}``,
            YAML-friendly) or name -> a ready ``torchmetrics.Metric``.
        keys: role -> dict key, merged over :data:`DEFAULT_KEYS` (roles: ``output``, ``target``,
            ``fname``, ``slice_num``, ``max_value``).
        positions: role -> index for tuple/list outputs, default ``{"output": 0, "target": 1}``.
        prefix: prepended to every logged name of the validation loop.
        feature_cache: default ``feature_cache`` of the DFDs built by name.
        stages: the loops scored: ``("validate",)`` (default; validation in ``fit`` and
            ``validate``) and/or ``"test"``.
        test_prefix: prepended to every logged name of the test loop.

    Example:
        >>> cb = DFDCallback({"lpips_alex": {"weights": "random"}, "psnr": {}})
        >>> sorted(cb.metrics.keys(keep_base=True))
        ['lpips_alex', 'psnr']
        >>> cb.state_dict()
        {}
    """

    def __init__(
        self,
        metrics: Mapping[str, Metric | Mapping[str, Any] | None] | Sequence[str],
        keys: Mapping[str, str] | None = None,
        positions: Mapping[str, int] | None = None,
        prefix: str = "val/",
        feature_cache: bool | dict = True,
        stages: Sequence[str] = ("validate",),
        test_prefix: str = "test/",
    ) -> None:
        super().__init__()
        if isinstance(stages, str):
            stages = (stages,)
        if not stages or any(stage not in STAGES for stage in stages):
            raise ValueError(f"Argument `stages` must name stages among {STAGES}, but got {list(stages)}")
        self.stages = tuple(dict.fromkeys(stages))
        self.test_prefix = test_prefix
        for role in keys or {}:
            if role not in ROLES:
                raise ValueError(f"Argument `keys` must map roles from {ROLES}, but got {role!r}")
        for role in positions or {}:
            if role not in ROLES:
                raise ValueError(f"Argument `positions` must map roles from {ROLES}, but got {role!r}")
        self.keys = {**DEFAULT_KEYS, **dict(keys or {})}
        self.positions = dict(positions or DEFAULT_POSITIONS)
        if not {"output", "target"} <= set(self.positions):
            raise ValueError("Argument `positions` must give the `output` and `target` positions")
        self.prefix = prefix
        self.metrics = build_suite(metrics, prefix=prefix, dfd_options={"feature_cache": feature_cache})
        # (stage, dataloader_idx) -> suite; ("validate", 0) is `self.metrics`
        self._suites: dict[tuple[str, int], DFDCollection] = {("validate", 0): self.metrics}
        self._multi: dict[str, bool] = {}  # stage -> a hook was given a dataloader_idx
        self._checked_sampler: set[str] = set()
        self._logged: dict[str, dict[str, float]] = {}  # stage -> name -> value logged this epoch

    # -- what validation_step returned -------------------------------------------------------

    def read_outputs(self, outputs: Any) -> dict[str, Any]:
        """``validation_step``'s return value -> ``{"output", "target", ...}`` (roles found)."""
        if isinstance(outputs, Mapping):
            found = {role: outputs[key] for role, key in self.keys.items() if key in outputs}
            where = f"keys {self.keys['output']!r} and {self.keys['target']!r}"
        elif isinstance(outputs, (tuple, list)):
            n = len(outputs)
            found = {role: outputs[i] for role, i in self.positions.items() if -n <= i < n}
            where = f"positions {self.positions['output']} and {self.positions['target']}"
        else:
            raise TypeError(
                "DFDCallback reads what validation_step returns, but it returned "
                f"{type(outputs).__name__}: return a dict holding the prediction under "
                f"{self.keys['output']!r} and the reference under {self.keys['target']!r} (other names: "
                "DFDCallback(keys={'output': ..., 'target': ...})), or a tuple/list with the prediction "
                f"at position {self.positions['output']} and the reference at {self.positions['target']} "
                "(DFDCallback(positions=...))"
            )
        if "output" not in found or "target" not in found:
            raise KeyError(f"DFDCallback: validation_step's return value lacks the {where} "
                           f"(it has {list(outputs) if isinstance(outputs, Mapping) else len(outputs)})")
        for role in ("output", "target"):
            if not isinstance(found[role], Tensor):
                raise TypeError(f"DFDCallback: `{role}` must be a tensor, but got "
                                f"{type(found[role]).__name__}")
        return found

    def suite(self, dataloader_idx: int = 0, stage: str = "validate") -> DFDCollection:
        """The metric suite of one dataloader of one stage (made on first use).

        A new suite is a copy of :attr:`metrics` (reset) that shares its encoders, networks and
        feature caches: no second copy of any weight.

        Example:
            >>> cb = DFDCallback({"lpips_alex": {"weights": "random"}})
            >>> second = cb.suite(1)
            >>> second is cb.metrics, second["lpips_alex"].network is cb.metrics["lpips_alex"].network
            (False, True)
        """
        if stage not in STAGES:
            raise ValueError(f"Argument `stage` must be one of {STAGES}, but got {stage!r}")
        key = (stage, int(dataloader_idx))
        if key not in self._suites:
            shared: dict[int, Any] = {}
            for metric in self.metrics.values(copy_state=False):
                for child in metric.modules():
                    if child is not metric and not isinstance(child, Metric):
                        shared[id(child)] = child  # encoders, networks: shared, not copied
                cache = getattr(metric, "feature_cache", None)
                if cache is not None:
                    shared[id(cache)] = cache
            clone = copy.deepcopy(self.metrics, memo=shared)
            clone.reset()
            self._suites[key] = clone
        return self._suites[key]

    def update(self, outputs: Any, device: torch.device | None = None, dataloader_idx: int = 0,
               stage: str = "validate") -> None:
        """Score one batch of ``validation_step`` (``test_step``) outputs (what the Lightning hook calls).

        ``dataloader_idx`` picks the suite (:meth:`suite`) and tags the cache keys of loaders > 0.
        """
        suite = self.suite(dataloader_idx, stage)
        found = self.read_outputs(outputs)
        preds, target = found["output"].detach(), found["target"].detach()
        if device is not None:
            preds, target = preds.to(device), target.to(device)
        n = preds.shape[0]
        extra: dict[str, Tensor] = {}
        if found.get("fname") is not None:
            fnames = _as_list(found["fname"], n, "fname")
            slices = found.get("slice_num")
            own = (stage, dataloader_idx) != ("validate", 0)
            tag = (f"{stage}/dataloader_idx_{dataloader_idx}",) if own else ()
            if slices is not None:
                slices = _as_list(slices, n, "slice_num")
                ids = [name_sample_id(f, s, *tag) for f, s in zip(fnames, slices, strict=True)]
            else:
                ids = [name_sample_id(f, 0, *tag) for f in fnames]
            if slices is None and len(set(ids)) < n:
                ids = None  # one file, several images and no slice numbers: no cache key
            if ids is not None:
                extra["sample_ids"] = torch.tensor(ids, dtype=torch.long, device=preds.device)
            extra["volume_ids"] = torch.tensor([volume_key(f) for f in fnames], dtype=torch.long,
                                               device=preds.device)
        if found.get("max_value") is not None:
            data_range = torch.as_tensor(found["max_value"], device=preds.device).reshape(-1)
            extra["data_range"] = data_range.expand(n) if data_range.numel() == 1 else data_range
        with torch.no_grad():
            suite.update(preds, target, **extra)

    # -- Lightning hooks ---------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:  # noqa: D102
        for suite in self._suites.values():
            suite.to(pl_module.device)

    def _epoch_start(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._multi[stage] = False
        for (suite_stage, _), suite in self._suites.items():
            if suite_stage == stage:
                suite.to(pl_module.device)
                suite.reset()
        if stage not in self._checked_sampler:
            self._checked_sampler.add(stage)
            problem = padding_sampler_problem(trainer, stage)
            if problem and trainer.is_global_zero:
                warnings.warn(f"DFDCallback: {problem}", UserWarning, stacklevel=3)

    def _batch_end(self, pl_module: LightningModule, outputs: Any, dataloader_idx: int | None,
                   stage: str) -> None:
        if dataloader_idx is not None:  # Lightning passes it only with several dataloaders
            self._multi[stage] = True
        self.update(outputs, device=pl_module.device, dataloader_idx=dataloader_idx or 0, stage=stage)

    def _epoch_end(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        count = _num_dataloaders(trainer, stage)
        indices = sorted({k for s, k in self._suites if s == stage} | set(range(count or 0)))
        multi = self._multi.get(stage, False) or (count or 0) > 1
        if stage == "validate":
            indices = indices or [0]
        # Which suites saw a batch on some process: every process computes (syncs) the same ones.
        def updated(k: int) -> float:
            suite = self._suites.get((stage, k))
            return float(suite is not None and any(m.update_called for m in suite.values(copy_state=False)))

        seen = torch.tensor([updated(k) for k in indices], device=pl_module.device)
        if trainer.world_size > 1:
            seen = trainer.strategy.reduce(seen, reduce_op="sum")
        prefix = self.prefix if stage == "validate" else self.test_prefix
        taken = logged_elsewhere(trainer)
        to_log: dict[str, Tensor] = {}
        for k, anywhere in zip(indices, seen.tolist(), strict=True):
            if not anywhere:
                continue
            suite = self.suite(k, stage)
            suite.to(pl_module.device)
            with warnings.catch_warnings():  # a process without batches of this loader still syncs
                warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
                values = suite.compute()  # synced over every process by torchmetrics
            suite.reset()
            suffix = f"/dataloader_idx_{k}" if multi else ""
            for name, value in values.items():
                base = name.removeprefix(self.prefix) if self.prefix else name
                # Equal on every rank already: "max" keeps that value exactly (a mean of equal values
                # may round) and Lightning's advice to sync epoch-level values is satisfied. The
                # suffix is written here (the epoch-end hook has no dataloader of its own).
                to_log[f"{prefix}{base}{suffix}"] = value.float()
        clashes = [name for name in to_log if name in taken]
        if clashes:  # refused before any of the callback's values is logged
            raise ValueError(_clash_message(clashes[0], taken[clashes[0]], stage))
        self._logged[stage] = {}
        for name, value in to_log.items():
            pl_module.log(name, value, on_step=False, on_epoch=True,
                          sync_dist=True, reduce_fx="max", add_dataloader_idx=False)
            self._logged[stage][name] = float(value)

    def _check_kept(self, trainer: Trainer, stage: str) -> None:
        """Refuse a value of this callback's that something logged later replaced (or merged with)."""
        for name, value in self._logged.pop(stage, {}).items():
            kept = trainer.callback_metrics.get(name)
            if kept is not None and not _same_value(float(kept), value):
                raise ValueError(_clash_message(name, f"a hook that ran after it (value {float(kept)!r} "
                                                      f"instead of the callback's {value!r})", stage))

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if "validate" in self.stages:
            self._epoch_start(trainer, pl_module, "validate")

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,  # noqa: D102
                                batch: Any, batch_idx: int, dataloader_idx: int | None = None) -> None:
        if "validate" in self.stages:
            self._batch_end(pl_module, outputs, dataloader_idx, "validate")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if "validate" in self.stages:
            self._epoch_end(trainer, pl_module, "validate")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if "validate" in self.stages:
            self._check_kept(trainer, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if "test" in self.stages:
            self._check_kept(trainer, "test")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if "test" in self.stages:
            self._epoch_start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,  # noqa: D102
                          batch: Any, batch_idx: int, dataloader_idx: int | None = None) -> None:
        if "test" in self.stages:
            self._batch_end(pl_module, outputs, dataloader_idx, "test")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:  # noqa: D102
        if "test" in self.stages:
            self._epoch_end(trainer, pl_module, "test")

    @property
    def state_key(self) -> str:
        """Unique per prefixes and metric names, so several DFDCallbacks can share a Trainer."""
        return self._generate_state_key(prefix=self.prefix, test_prefix=self.test_prefix,
                                        metrics=sorted(self.metrics.keys()))

    def state_dict(self) -> dict[str, Any]:
        """Nothing: metrics are rebuilt from their arguments, encoders never enter checkpoints."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        return None
