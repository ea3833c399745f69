"""Run a function in 2 real processes (gloo on CPU) and collect what each returns.

Unlike a harness that silently falls back to one process, this fails unless both ranks ran in
a process group of world size 2.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, fn, args, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        result = fn(rank, WORLD_SIZE, *args)
        torch.save({"world_size": dist.get_world_size(), "rank": dist.get_rank(), "pid": os.getpid(),
                    "result": result},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ddp(fn, *args, tmp_path: Path) -> list:
    """``fn(rank, world_size, *args)`` in each of 2 processes; returns the per-rank results."""
    mp.spawn(_worker, args=(fn, args, _free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    outputs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    assert [o["world_size"] for o in outputs] == [WORLD_SIZE] * WORLD_SIZE, "DDP did not really run"
    assert [o["rank"] for o in outputs] == list(range(WORLD_SIZE)), "a rank did not answer"
    pids = {o["pid"] for o in outputs}
    assert len(pids) == WORLD_SIZE and os.getpid() not in pids, "the ranks were not separate processes"
    return [o["result"] for o in outputs]
