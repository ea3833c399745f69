"""``lightning-dfd evaluate`` on Lightning's engine: slice pairs, a prediction loop, ranks gathered.

* :class:`SlicePairDataset`: one item per scored ``(file, slice)`` pair, read from the h5 files
  (one volume held at a time); a file that cannot be read gives error items, not an exception.
* :class:`FileShardSampler`: a batch sampler that gives each process whole files (greedy by
  slice count, no padding, no file twice) and batches that never cross a file; a process left
  without files gets one empty batch, so that every process runs the loop's hooks.
* :class:`EvaluationModule`: its ``predict_step`` updates the metric suite of
  :func:`~lightning_dfd.analysis.evaluation.build_metrics` (:func:`lightning_dfd.build_suite` with
  ``reduction="none"``, one encoder pass per batch, as ``ReconModule``'s validation) on one batch;
  a failing batch marks its file as not scored (stage ``score``) and the file's rows are dropped.
  At the end of the loop the rows, volume summaries and problems of every process are gathered
  with ``all_gather_object``. With ``config.maps_dir`` it also computes each DFD's
  ``distance_map`` of the same batch from the features it scored (no second encoder pass: the
  update and the maps run in one :meth:`~lightning_dfd.metrics.DFDCollection.one_pass`) and writes each
  volume's maps (:class:`~lightning_dfd.analysis.maps.MapWriter`) when its last batch is scored:
  in DDP each process writes the maps of its own files (disjoint files, so no two processes
  write the same path).

Volumetric scoring (``evaluate --volumetric``, :func:`run_volume_evaluation`) runs the same kind of
loop over whole volumes: :class:`VolumePairDataset` (one item per file), whole files per process
(balanced by slice count), and :class:`VolumeEvaluationModule`, which scores each volume with
:func:`~lightning_dfd.analysis.evaluation.build_volume_metrics` (VolumeDFDs and fastMRI's per-volume
pixel metrics) and gathers the rows at the end.

Only imported when ``evaluate`` runs (it needs ``lightning``, from the ``[analysis]`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_dfd.analysis.evaluation import (
    KEY_COLUMNS,
    NOT_SCORED,
    EvaluationConfig,
    EvaluationResult,
    FilePair,
    FileProblem,
    build_metrics,
    build_volume_metrics,
    describe_error,
    load_pair,
    read_shape,
    select_slices,
    volume_of,
)
from lightning_dfd.metrics import VolumeDFD

__all__ = [
    "SPAWNING_STRATEGIES",
    "EvaluationModule",
    "FileShardSampler",
    "SlicePairDataset",
    "VolumeEntry",
    "VolumeEvaluationModule",
    "VolumePairDataset",
    "WholeVolumeSampler",
    "evaluate",
    "index_files",
    "run_evaluation",
    "run_volume_evaluation",
    "shard_files",
]

#: Strategies whose workers end with the loop: the rows could not reach the calling process.
SPAWNING_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp_spawn", "xla")


@dataclass(frozen=True)
class VolumeEntry:
    """A pair of files that opened fine, with the slices to score."""

    index: int
    pair: FilePair
    slices: tuple[int, ...]


def index_files(
    pairs: Sequence[FilePair], config: EvaluationConfig
) -> tuple[list[VolumeEntry], list[FileProblem]]:
    """Open every pair's datasets (shapes only) and choose its slices; problems at stage ``read``."""
    entries, problems = [], []
    for pair in pairs:
        try:
            shape = read_shape(pair, config)
        except Exception as err:  # a bad file never stops the others
            problems.append(FileProblem(pair.name, describe_error(err), "read"))
            continue
        entries.append(VolumeEntry(len(entries), pair, tuple(select_slices(shape[0], config.slices))))
    return entries, problems


class SlicePairDataset(Dataset):
    """The scored ``(file, slice)`` pairs as dictionaries of CPU tensors.

    Item keys: ``file`` (entry index), ``slice``, ``preds`` and ``target`` (``(H, W)`` float32
    magnitudes, divided by the reference slice's maximum with ``scale="target_max"``),
    ``data_range`` (float64 scalar); or ``file``, ``slice`` and ``error`` (a message) when the
    file's data could not be read.
    """

    def __init__(self, entries: Sequence[VolumeEntry], config: EvaluationConfig) -> None:
        self.entries = list(entries)
        self.config = config
        self.items = [(entry.index, s) for entry in self.entries for s in entry.slices]
        self._held: tuple[int, Any] | None = None  # one volume at a time: batches follow files

    def __len__(self) -> int:
        return len(self.items)

    def _volume(self, file: int) -> tuple[np.ndarray, np.ndarray, float] | str:
        if self._held is None or self._held[0] != file:
            try:
                preds, target = load_pair(self.entries[file].pair, self.config)
                self._held = (file, (preds, target, float(target.max())))
            except Exception as err:
                self._held = (file, describe_error(err))
        return self._held[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        file, s = self.items[index]
        volume = self._volume(file)
        if isinstance(volume, str):
            return {"file": file, "slice": s, "error": volume}
        preds, target, volume_max = volume
        p, t = (
            torch.from_numpy(np.ascontiguousarray(preds[s])),
            torch.from_numpy(np.ascontiguousarray(target[s])),
        )
        image_max = float(t.max())
        if self.config.scale == "target_max":
            peak = max(image_max, float(np.finfo(np.float32).tiny))
            p, t, image_max = p / peak, t / peak, image_max / peak
        data_range = volume_max if self.config.data_range == "volume" else image_max
        return {"file": file, "slice": s, "preds": p, "target": t,
                "data_range": torch.tensor(data_range, dtype=torch.float64)}  # fmt: skip


def collate_chunk(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items of one file -> one batch (``error`` set when any item failed; ``{}`` for no items)."""
    if not items:
        return {}
    errors = [item["error"] for item in items if "error" in item]
    batch: dict[str, Any] = {"file": items[0]["file"], "slices": [item["slice"] for item in items]}
    if errors:
        batch["error"] = errors[0]
        return batch
    for key in ("preds", "target", "data_range"):
        batch[key] = torch.stack([item[key] for item in items])
    return batch


def shard_files(sizes: Sequence[int], num_replicas: int) -> list[list[int]]:
    """Whole files per process, balanced by slice count (largest first, then least loaded).

    Every file goes to exactly one process; nothing is padded or repeated.

    Example:
        >>> shard_files([3, 4, 6], 2)
        [[2], [0, 1]]
    """
    load = [0] * num_replicas
    shards: list[list[int]] = [[] for _ in range(num_replicas)]
    for file in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(num_replicas), key=lambda r: (load[r], r))
        shards[rank].append(file)
        load[rank] += sizes[file]
    return [sorted(shard) for shard in shards]


class FileShardSampler(Sampler[list[int]]):
    """Batches of dataset indices: this process's files, ``batch_size`` slices, never across files.

    A process without files yields one empty batch (scored as nothing), so that every process
    runs the loop's epoch-end hook where the rows are gathered.
    """

    def __init__(
        self, dataset: SlicePairDataset, batch_size: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        self.batch_size = batch_size
        positions: dict[int, list[int]] = {}
        for position, (file, _) in enumerate(dataset.items):
            positions.setdefault(file, []).append(position)
        files = sorted(positions)
        shards = shard_files([len(positions[f]) for f in files], num_replicas)
        self.batches = [
            positions[files[f]][start : start + batch_size]
            for f in shards[rank]
            for start in range(0, len(positions[files[f]]), batch_size)
        ] or [[]]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class EvaluationModule(LightningModule):
    """Scores batches of :class:`SlicePairDataset` with the metric suite; rows gathered at the end.

    After ``trainer.predict``, :attr:`gathered` holds ``(rows, summaries, problems)`` of every
    process (the same on each).
    """

    def __init__(self, dataset: SlicePairDataset, config: EvaluationConfig) -> None:
        super().__init__()
        self.config = config
        self.dataset = dataset
        # The suite of ReconModule's validation: per-image values, and fastMRI's per-volume pixel
        # metrics (fed the file's volume id); each a DFDCollection (one encoder pass per batch).
        self.image_metrics, self.volume_metrics = build_metrics(replace(config, device="cpu"),
                                                                sync_on_compute=False)
        self._pending: dict[int, dict[str, Any]] = {}
        self.map_writer = None
        self.maps_skipped: dict[str, str] = {}  # metric -> why it has no map
        self.maps_written = 0
        if config.maps_dir is not None:
            from lightning_dfd.analysis.maps import MapWriter
            from lightning_dfd.metrics import is_dfd

            self.map_writer = MapWriter(config.maps_dir, config.maps_format)
            for name in config.metrics:
                metric = self.image_metrics[name]
                if not is_dfd(metric):
                    self.maps_skipped[name] = "a pixel metric (maps are written for DFDs)"
                elif getattr(metric, "distance_map", None) is None:
                    self.maps_skipped[name] = f"{type(metric).__name__} has no distance_map"
        self.gathered_maps: tuple[dict[str, str], int] = ({}, 0)
        self.rows: list[dict[str, Any]] = []
        self.summaries: list[dict[str, Any]] = []
        self.problems: list[FileProblem] = []
        self.gathered: tuple[list, list, list] | None = None

    def _fail(self, file: int, message: str, stage: str) -> None:
        entry = self.dataset.entries[file]
        self._pending[file] = {"failed": True}
        self.problems.append(FileProblem(entry.pair.name, message, stage))
        if self.volume_metrics is not None:
            self.volume_metrics.reset()  # the file's partial per-volume statistics

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score one batch (slices of one file); a failure drops the file, never the run."""
        if not batch:
            return
        file = batch["file"]
        state = self._pending.setdefault(file, {"failed": False, "rows": [], "values": {}, "maps": [],
                                                "masks": [], "references": []})
        if state["failed"]:
            return
        if "error" in batch:
            self._fail(file, batch["error"], "read")
            return
        try:
            self._score(batch, state)
        except Exception as err:  # one file too small for an encoder, NaN values, ...
            self._fail(file, describe_error(err), "score")
            return
        entry = self.dataset.entries[file]
        if len(state["rows"]) == len(entry.slices):
            self._finish(entry, state)
            if self.map_writer is not None:
                self._write_maps(entry, state)

    def _score(self, batch: dict[str, Any], state: dict[str, Any]) -> None:
        preds, target, data_range = batch["preds"], batch["target"], batch["data_range"]
        n = len(batch["slices"])
        masked = {}
        if self.config.mask == "foreground":
            from lightning_dfd.masks import foreground_mask

            masked["mask"] = foreground_mask(target, largest_component=True)
            empty = [s for s, m in zip(batch["slices"], masked["mask"], strict=True) if not m.any()]
            if empty:
                raise ValueError(f"no foreground in reference slice(s) {empty} (noise only or constant): "
                                 "nothing to score there with --mask foreground")
        self.image_metrics.reset()
        with torch.no_grad(), self.image_metrics.one_pass():  # maps reuse the scored features
            self.image_metrics.update(preds, target, data_range=data_range, **masked)
            computed = self.image_metrics.compute()
            if self.map_writer is not None and "maps_error" not in state:
                try:
                    state["maps"].append(self._maps(preds, target, masked.get("mask")))
                except Exception as err:  # the scores stand; the file's maps are reported missing
                    state["maps_error"] = f"maps not computed: {describe_error(err)}"
                if "mask" in masked:
                    state["masks"].append(masked["mask"].cpu().numpy())
                if self.config.maps_underlay:  # the reference the maps are drawn over (PNG only)
                    reference = target.detach().float().abs().reshape(n, *target.shape[-2:])  # (n, H, W)
                    state["references"].append(reference.cpu().numpy())
        values: dict[str, np.ndarray] = {}
        for name in self.config.metrics:
            values[name] = computed[name].detach().double().cpu().numpy().reshape(-1)
            if values[name].shape[0] != n:
                raise ValueError(f"metric {name!r} gave {values[name].shape[0]} values for {n} slices")
        if self.volume_metrics is not None:
            ids = torch.zeros(n, dtype=torch.long, device=preds.device)
            with torch.no_grad():
                self.volume_metrics.update(preds, target, data_range=data_range, volume_ids=ids, **masked)
        volume = self.dataset.entries[batch["file"]].pair.volume
        state["rows"] += [
            {"volume": volume, "slice": s, **{name: float(v[i]) for name, v in values.items()}}
            for i, s in enumerate(batch["slices"])
        ]

    def _maps(self, preds: torch.Tensor, target: torch.Tensor,
              mask: torch.Tensor | None) -> dict[str, np.ndarray]:
        """``(n, H, W)`` float32 maps of every DFD with a per-position form (0 outside ``mask``).

        A DFD whose ``distance_map`` raises :class:`NotImplementedError` is skipped from then on
        (:attr:`maps_skipped`); any other error leaves the file without maps (a problem at stage
        ``maps``; its scores are kept).
        """
        maps = {}
        for name in self.config.metrics:
            if name in self.maps_skipped:
                continue
            try:
                with torch.no_grad():
                    value = self.image_metrics[name].distance_map(preds, target)
            except NotImplementedError as err:
                self.maps_skipped[name] = describe_error(err).removeprefix("NotImplementedError: ")
                continue
            value = value.float()[:, 0]  # magnitude images: C = 1
            if mask is not None:
                value = value * mask.to(value.device, value.dtype)
            maps[name] = value.cpu().numpy()
        return maps

    def _write_maps(self, entry: VolumeEntry, state: dict[str, Any]) -> None:
        """Write one scored volume's maps; a failure is a problem at stage ``maps`` (rows kept)."""
        from lightning_dfd import __version__

        names = [n for n in self.config.metrics if n not in self.maps_skipped]
        if "maps_error" in state:
            self.problems.append(FileProblem(entry.pair.name, state["maps_error"], "maps"))
            return
        if not names:
            return
        config = self.config
        try:
            maps = {n: np.concatenate([part[n] for part in state["maps"]]) for n in names}
            mask = np.concatenate(state["masks"]) if state["masks"] else None
            attrs = {"lightning_dfd_version": __version__, "protocol": config.protocol or "custom",
                     "slices": config.slices, "data_range": config.data_range, "scale": config.scale,
                     "mask": config.mask, "precision": config.precision,
                     "prediction": str(entry.pair.prediction), "target": str(entry.pair.target),
                     "prediction_key": config.prediction_key, "target_key": config.target_key}
            metric_attrs = {n: {"normalization": getattr(self.image_metrics[n], "normalization", ""),
                                "weights": str(config.weights_for(n) or "default"),
                                **({"seed": config.seed} if config.weights_for(n) == "random" else {})}
                            for n in names}
            underlay = np.concatenate(state["references"]) if state["references"] else None
            self.map_writer.write(entry.pair.volume, maps, [r["slice"] for r in state["rows"]], mask,
                                  attrs, metric_attrs, underlay=underlay)
        except Exception as err:  # a full disk, ...: the scores stand, the maps are missing
            self.problems.append(FileProblem(entry.pair.name, f"maps not written: {describe_error(err)}",
                                             "maps"))
            return
        finally:
            state.pop("maps", None)
            state.pop("masks", None)
            state.pop("references", None)
        self.maps_written += 1

    def _finish(self, entry: VolumeEntry, state: dict[str, Any]) -> None:
        summary: dict[str, Any] = {"volume": entry.pair.volume, "n_slices": len(entry.slices)}
        per_volume = {}
        if self.volume_metrics is not None:
            per_volume = self.volume_metrics.compute()
            self.volume_metrics.reset()
        for name in self.config.metrics:
            if name in per_volume:  # fastMRI: pooled over the volume's scored slices
                summary[name] = float(per_volume[name].double().cpu().reshape(-1)[0])
            else:  # DFDs: the mean over the slices
                summary[name] = float(np.mean([row[name] for row in state["rows"]]))
        self.rows += state["rows"]
        self.summaries.append(summary)
        self._pending[entry.index] = {"failed": False, "done": True}

    def on_predict_epoch_end(self) -> None:
        """Gather every process's rows, summaries and problems (``all_gather_object``)."""
        everyone = gather_from_every_process((self.rows, self.summaries, self.problems,
                                              (self.maps_skipped, self.maps_written)))
        self.gathered = tuple([item for part in everyone for item in part[k]] for k in range(3))  # type: ignore[assignment]
        skipped: dict[str, str] = {}
        for part in everyone:
            skipped.update(part[3][0])
        skipped = {name: skipped[name] for name in self.config.metrics if name in skipped}  # --metrics order
        self.gathered_maps = (skipped, sum(part[3][1] for part in everyone))


def gather_from_every_process(local: Any) -> list[Any]:
    """Every process's ``local`` (picklable) in rank order: ``all_gather_object``, or ``[local]``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, local)
        return everyone
    return [local]


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Mute Lightning's tips and the warnings that do not apply to this loop (no outputs, own sampler)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tips = _NoTips()
    log.addFilter(tips)
    try:
        with warnings.catch_warnings():
            for message in (
                ".*custom batch sampler.*",
                ".*predict returned None.*",
                ".*treespec.*LeafSpec.*",
            ):
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        log.removeFilter(tips)


def _trainer_device(config: EvaluationConfig, accelerator: str | None, devices: Any) -> tuple[str, Any]:
    """``--device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``) -> Lightning's accelerator and devices."""
    if accelerator is not None:
        return accelerator, devices
    device = config.device
    if device == "auto":
        return "auto", devices
    if device.startswith("cuda"):
        _, _, index = device.partition(":")
        return "gpu", [int(index)] if index else devices
    return device, devices


def _check_strategy(strategy: str) -> None:
    """Refuse a strategy whose workers cannot hand the rows back (``ddp_spawn`` ...)."""
    if str(strategy) in SPAWNING_STRATEGIES:
        raise ValueError(
            f"--strategy {strategy} runs the scoring in worker processes that cannot hand the rows "
            "back; use --strategy ddp (one process per device, launched by Lightning or torchrun)"
        )


def run_evaluation(
    pairs: Sequence[FilePair],
    config: EvaluationConfig,
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[FileProblem], bool, tuple[dict[str, str], int]]:
    """Score every pair in a Lightning prediction loop.

    Returns:
        ``(rows, summaries, problems, is_global_zero, (maps_skipped, maps_written))``; every
        process gets every row. With ``config.maps_dir``, process 0 removes the maps an earlier
        run wrote (recorded in the maps manifest) for the files not scored now.

    Raises:
        ValueError: A strategy whose workers cannot hand the rows back (``ddp_spawn`` ...).
    """
    _check_strategy(strategy)
    entries, problems = index_files(pairs, config)
    dataset = SlicePairDataset(entries, config)
    module = EvaluationModule(dataset, config)  # metric construction errors (weights) come first
    accel, devs = _trainer_device(config, accelerator, devices)
    with _quiet_lightning():
        return _run(module, dataset, problems, config, accel, devs, num_nodes, strategy, progress)


def _prediction_trainer(accel: str, devs: Any, num_nodes: int, strategy: str, progress: bool) -> Trainer:
    """The Trainer of both scoring loops: no logger, checkpoints or distributed sampler."""
    return Trainer(accelerator=accel, devices=devs, num_nodes=num_nodes, strategy=strategy,
                   logger=False, enable_checkpointing=False, enable_model_summary=False,
                   enable_progress_bar=progress, use_distributed_sampler=False,
                   inference_mode=False)  # fmt: skip  # no_grad in the step: DFDs check tensor versions


def _run(module, dataset, problems, config, accel, devs, num_nodes, strategy, progress):
    trainer = _prediction_trainer(accel, devs, num_nodes, strategy, progress)
    sampler = FileShardSampler(dataset, config.batch_size, trainer.world_size, trainer.global_rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_chunk, num_workers=0)
    trainer.predict(module, dataloaders=loader, return_predictions=False)
    if module.gathered is None:
        raise RuntimeError("the evaluation loop did not finish on this process")
    rows, summaries, scored_problems = module.gathered
    problems = problems + scored_problems
    if module.map_writer is not None and trainer.is_global_zero:
        for problem in [p for p in problems if p.stage in NOT_SCORED]:
            try:  # only the maps evaluate recorded for the volume; files of yours stay
                module.map_writer.discard(volume_of(problem.file))
            except (OSError, ValueError) as err:
                problems.append(FileProblem(problem.file, f"its earlier maps were not removed: "
                                                          f"{describe_error(err)}", "maps"))  # fmt: skip
    return rows, summaries, problems, trainer.is_global_zero, module.gathered_maps


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
        pairs: From :func:`~lightning_dfd.analysis.evaluation.pair_files`.
        config: What to compute.
        devices: Lightning's ``devices`` (processes per node with ``strategy="ddp"``).
        progress: Show Lightning's progress bar (stderr).
        num_nodes: Lightning's ``num_nodes``.
        strategy: Lightning's ``strategy`` (``"auto"``, ``"ddp"``; spawn-based ones are refused).
        accelerator: Lightning's ``accelerator``; None derives it from ``config.device``.

    Returns:
        An :class:`EvaluationResult` with rows sorted by volume and slice, on every process
        (:attr:`EvaluationResult.is_global_zero` says which one should write).

    Example:
        >>> import tempfile, h5py, numpy as np
        >>> from pathlib import Path
        >>> from lightning_dfd.analysis.evaluation import EvaluationConfig, pair_files
        >>> folder = tempfile.TemporaryDirectory(); root = Path(folder.name)
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
        >>> folder.cleanup()

    Raises:
        Errors of metric construction (unknown weights, missing checkpoint) before any file is
        read.
    """
    if config.volumetric:
        return _evaluate_volumes(pairs, config, devices, progress, num_nodes, strategy, accelerator)
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


# ------------------------------------------------------------------ volumetric scoring


class VolumePairDataset(Dataset):
    """The scored volumes, one item per file pair (one volume read at a time).

    Item keys: ``file`` (entry index), ``preds`` and ``target`` (``(D, H, W)`` float32 magnitudes),
    ``data_range`` (the reference volume's maximum, float64); or ``file`` and ``error`` (a message)
    when the file's data could not be read.
    """

    def __init__(self, entries: Sequence[VolumeEntry], config: EvaluationConfig) -> None:
        self.entries = list(entries)
        self.config = config

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            preds, target = load_pair(self.entries[index].pair, self.config)
        except Exception as err:  # a bad file never stops the others
            return {"file": index, "error": describe_error(err)}
        return {"file": index, "preds": torch.from_numpy(np.ascontiguousarray(preds)),
                "target": torch.from_numpy(np.ascontiguousarray(target)),
                "data_range": torch.tensor(float(target.max()), dtype=torch.float64)}  # fmt: skip


class WholeVolumeSampler(Sampler[list[int]]):
    """Batches of one dataset index each: this process's volumes (:func:`shard_files` by slice count).

    A process without files yields one empty batch, so that it still runs the epoch-end gather.
    """

    def __init__(self, sizes: Sequence[int], num_replicas: int = 1, rank: int = 0) -> None:
        self.batches = [[file] for file in shard_files(sizes, num_replicas)[rank]] or [[]]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _one_volume(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate: a batch is one volume (``{}`` for a process without files)."""
    return items[0] if items else {}


class VolumeEvaluationModule(LightningModule):
    """Scores one volume per batch with the volumetric suite; rows gathered at the end.

    After ``trainer.predict``, :attr:`gathered` holds ``(rows, problems)`` of every process.
    """

    def __init__(self, dataset: VolumePairDataset, config: EvaluationConfig) -> None:
        super().__init__()
        self.config = config
        self.dataset = dataset
        # a submodule dict: Lightning moves the metrics to the loop's device
        self.metrics = nn.ModuleDict(build_volume_metrics(replace(config, device="cpu"),
                                                          sync_on_compute=False))
        self.rows: list[dict[str, Any]] = []
        self.problems: list[FileProblem] = []
        self.gathered: tuple[list, list] | None = None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score one volume; a failure (too thin for every plane, NaN, ...) drops it, never the run."""
        if not batch:
            return
        entry = self.dataset.entries[batch["file"]]
        if "error" in batch:
            self.problems.append(FileProblem(entry.pair.name, batch["error"], "read"))
            return
        preds, target = batch["preds"], batch["target"]
        n = preds.shape[0]
        values = {}
        try:
            with torch.no_grad():
                for name, metric in self.metrics.items():
                    metric.reset()
                    if isinstance(metric, VolumeDFD):
                        metric.update(preds[None], target[None])
                    else:  # fastMRI: one volume, data range = its reference's maximum
                        metric.update(preds, target, data_range=batch["data_range"].expand(n),
                                      volume_ids=torch.zeros(n, dtype=torch.long, device=preds.device))
                    values[name] = metric.compute()
        except Exception as err:
            self.problems.append(FileProblem(entry.pair.name, describe_error(err), "score"))
            return
        row: dict[str, Any] = {"volume": entry.pair.volume, "n_slices": n}
        for name in self.config.metrics:
            value = values[name].detach().double().cpu().reshape(-1)
            if value.numel() != 1:
                self.problems.append(FileProblem(entry.pair.name, f"metric {name!r} gave {value.numel()} "
                                                 "values for one volume", "score"))
                return
            row[name] = float(value[0])
        self.rows.append(row)

    def on_predict_epoch_end(self) -> None:
        """Gather every process's rows and problems (``all_gather_object``)."""
        everyone = gather_from_every_process((self.rows, self.problems))
        self.gathered = tuple([item for part in everyone for item in part[k]] for k in range(2))  # type: ignore[assignment]


def run_volume_evaluation(
    pairs: Sequence[FilePair],
    config: EvaluationConfig,
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[FileProblem], bool]:
    """Score every pair as one volume in a Lightning prediction loop (``config.volumetric``).

    Returns:
        ``(rows, problems, is_global_zero)``; every process gets every row.

    Raises:
        ValueError: A strategy whose workers cannot hand the rows back (``ddp_spawn`` ...).
    """
    _check_strategy(strategy)
    entries, problems = index_files(pairs, config)
    dataset = VolumePairDataset(entries, config)
    module = VolumeEvaluationModule(dataset, config)  # metric construction errors (weights) come first
    accel, devs = _trainer_device(config, accelerator, devices)
    with _quiet_lightning():
        trainer = _prediction_trainer(accel, devs, num_nodes, strategy, progress)
        sampler = WholeVolumeSampler([len(entry.slices) for entry in entries], trainer.world_size,
                                     trainer.global_rank)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=_one_volume, num_workers=0)
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    if module.gathered is None:
        raise RuntimeError("the evaluation loop did not finish on this process")
    rows, scored_problems = module.gathered
    return rows, problems + scored_problems, trainer.is_global_zero


def _evaluate_volumes(pairs, config, devices, progress, num_nodes, strategy, accelerator) -> EvaluationResult:
    """:func:`evaluate` with ``config.volumetric``: both tables hold one row per volume."""
    rows, problems, is_zero = run_volume_evaluation(
        pairs, config, devices=devices, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator,
        progress=progress,
    )  # fmt: skip
    columns = ["volume", "n_slices", *config.metrics]
    volumes = pd.DataFrame(rows, columns=columns).sort_values("volume", ignore_index=True)
    problems = sorted(problems, key=lambda p: p.file)
    return EvaluationResult(volumes, volumes.copy(), problems, is_global_zero=is_zero)
