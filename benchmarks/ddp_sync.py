"""Metric synchronisation cost of a DDP validation epoch (2 CPU processes, gloo).

Two processes (``torch.multiprocessing.spawn``, environment variables as ``torchrun`` sets them,
so Lightning's DDP strategy joins them instead of launching its own) validate the UNet with the
cached DFD suite over the same synthetic data as :mod:`benchmarks.epoch`; each process gets
whole volumes (the data module's ``VolumeShardSampler``). The epoch end, where every metric's
``compute()`` gathers its states from both processes and ``log_dict(sync_dist=True)`` reduces the
logged values, is timed after a barrier (so waiting for the slower process is not counted as
sync). The same epoch end in one process (no collective at all) is the reference; their
difference is the sync cost.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks import epoch as E
from benchmarks.common import median

WORLD_SIZE = 2


def _timed_module_cls():
    from recon_models.modules import ReconModule

    class EpochEndTimedModule(ReconModule):
        """ReconModule that records how long its validation epoch end takes."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.epoch_end_seconds: list[float] = []

        def on_validation_epoch_end(self) -> None:
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            start = time.perf_counter()
            super().on_validation_epoch_end()
            self.epoch_end_seconds.append(time.perf_counter() - start)

    return EpochEndTimedModule


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_epochs(folder: Path, device_type: str, devices: int, batch_size: int,
                rounds: int) -> dict:
    from lightning.pytorch import Trainer

    E.quiet_lightning()
    module = E.build_module(E.suite(cached=True), _timed_module_cls())
    data = E.datamodule(folder, batch_size)
    data.prepare_data()
    epochs = []
    for _ in range(rounds + 1):  # the first epoch fills the caches
        trainer = Trainer(accelerator=device_type, devices=devices,
                          strategy="ddp" if devices > 1 else "auto", logger=False,
                          enable_progress_bar=False, enable_checkpointing=False,
                          enable_model_summary=False)
        start = time.perf_counter()
        trainer.validate(module, datamodule=data, verbose=False)
        epochs.append(time.perf_counter() - start)
    return {"epoch_s": epochs[1:], "epoch_end_s": module.epoch_end_seconds[1:]}


def _worker(rank: int, folder: str, port: int, out_dir: str, batch_size: int, rounds: int,
            threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD_SIZE),
                      RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(threads)
    result = _run_epochs(Path(folder), "cpu", WORLD_SIZE, batch_size, rounds)
    result["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def bench_ddp(root: Path, volumes: int, slices: int, coils: int, batch_size: int, rounds: int,
              threads: int, log=print) -> list[dict]:
    """Rows for the 2-process epoch and its single-process reference."""
    folder = E.make_data(root, volumes, slices, coils)
    E.datamodule(folder, batch_size).prepare_data()  # maps cache once, before the processes
    torch.set_num_threads(threads)
    single = _run_epochs(folder, "cpu", 1, batch_size, rounds)
    log(f"  1 process: epochs {[round(s, 2) for s in single['epoch_s']]} s")
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(str(folder), _free_port(), out, batch_size, rounds,
                                max(1, threads // WORLD_SIZE)), nprocs=WORLD_SIZE, join=True)
        ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    if [r["world_size"] for r in ranks] != [WORLD_SIZE] * WORLD_SIZE:
        raise RuntimeError(f"DDP did not run {WORLD_SIZE} processes: {ranks}")
    # per round: the slowest process decides the epoch and the sync
    epoch = [max(v) for v in zip(*(r["epoch_s"] for r in ranks), strict=True)]
    end = [max(v) for v in zip(*(r["epoch_end_s"] for r in ranks), strict=True)]
    sync = [max(e - median(single["epoch_end_s"]), 0.0) for e in end]
    log(f"  2 processes: epochs {[round(s, 2) for s in epoch]} s, epoch ends "
        f"{[round(s, 4) for s in end]} s")
    images = volumes * slices
    common = {"section": "ddp", "group": "DDP metric sync (UNet + cached suite)", "device": "cpu",
              "height": E.RECON_SHAPE[0], "width": E.RECON_SHAPE[1], "batch": batch_size,
              "repeats": rounds}
    return [
        {**common, "case": "1 process: validation epoch", "median_s": median(single["epoch_s"]),
         "images_per_s": images / median(single["epoch_s"]),
         "notes": f"epoch end (compute, no sync) {median(single['epoch_end_s']) * 1e3:.1f} ms"},
        {**common, "case": "2 processes: validation epoch", "median_s": median(epoch),
         "images_per_s": images / median(epoch),
         "notes": f"{threads // WORLD_SIZE or 1} thread(s) per process"},
        {**common, "case": "2 processes: metric sync per epoch", "median_s": median(sync),
         "sync_fraction": median([s / e for s, e in zip(sync, epoch, strict=True)]),
         "notes": f"epoch end after a barrier {median(end) * 1e3:.1f} ms minus the 1-process "
                  "epoch end"},
    ]
