"""Timing and peak-memory primitives shared by every benchmark.

Timing: wall clock around one call, with ``torch.cuda.synchronize`` on both sides on a GPU.
Peak memory on the CPU: the kernel's resident-set high-water mark (``VmHWM`` in
``/proc/self/status``), reset to the current RSS by writing ``5`` to ``/proc/self/clear_refs``
right before the measured call; freed heap is first returned to the kernel with glibc's
``malloc_trim(0)`` so the baseline is what the process really holds. On a GPU:
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated
before the call.
"""

from __future__ import annotations

import ctypes
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: What DESIGN.md recommends (and the Makefile exports): keep freed activation buffers in the heap.
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> tuple[float, float, object]:
    """Wall-clock seconds of one call (GPU work included), the process's CPU seconds during it
    (all threads), and what the call returned."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start, out


def median(values: list[float]) -> float:
    """Median of a non-empty list."""
    return float(statistics.median(values))


def malloc_trim() -> None:
    """Return free heap memory to the kernel (glibc only; silently nothing elsewhere)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakMemory:
    """Peak extra memory of the code run between :meth:`start` and :meth:`stop`, in bytes.

    Example:
        >>> meter = PeakMemory(torch.device("cpu"))
        >>> meter.start()
        >>> x = torch.ones(1 << 20)
        >>> meter.stop() >= 0
        True
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self.baseline = 0

    def start(self) -> None:
        """Trim the heap, then take the baseline and reset the high-water mark."""
        malloc_trim()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated - allocated before"
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs=5, minus VmRSS before"
        except OSError:
            self.method = "VmHWM (not resettable: includes construction) minus VmRSS before"
        self.baseline = _status_kib("VmRSS") * 1024

    def stop(self) -> int:
        """Peak bytes above the baseline since :meth:`start`."""
        if self.device.type == "cuda":
            synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        return _status_kib("VmHWM") * 1024 - self.baseline

    def held(self) -> int:
        """Bytes held now (RSS or allocated GPU memory)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _status_kib("VmRSS") * 1024


def glibc_tunables_set() -> bool:
    """True when this process runs with the recommended malloc tunables."""
    return os.environ.get("GLIBC_TUNABLES", "") == GLIBC_TUNABLES


def gib(nbytes: float) -> float:
    """Bytes -> GiB."""
    return nbytes / (1 << 30)
