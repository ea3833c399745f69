"""Peak memory of one case in a fresh process (a cross-check of the in-process measurement).

``python -m benchmarks.memory_case GROUP CASE HEIGHT WIDTH BATCH DEVICE`` builds the case, makes
its inputs, runs one call (two for a cached case: the first fills the cache) and prints one JSON
line: ``{"peak_bytes", "baseline_bytes", "method"}``. Started by :func:`measure` with the same
environment (threads, ``GLIBC_TUNABLES``, ``TORCH_HOME``) as the parent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from benchmarks import cases as C
from benchmarks import references as R
from benchmarks.common import PeakMemory


def main(argv: list[str]) -> int:
    """Measure one case and print its JSON line."""
    group, name, h, w, n, device = argv
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    device = torch.device(device)
    case = C.build_case(group, name, device)
    preds, target = R.mr_like_batch(int(n), int(h), int(w), seed=0)
    args = case.prepare(preds, target)
    if case.cache_bytes is not None:
        with torch.inference_mode():
            case.run(*args)
    meter = PeakMemory(device)
    meter.start()
    with torch.inference_mode():
        case.run(*args)
    peak = meter.stop()
    print(json.dumps({"peak_bytes": peak, "baseline_bytes": meter.baseline, "method": meter.method}))
    return 0


def measure(group: str, name: str, h: int, w: int, n: int, device: str, threads: int,
            timeout: float = 1800) -> dict:
    """Run :func:`main` in a subprocess; returns its JSON (or ``{"error": ...}``)."""
    env = dict(os.environ, BENCH_THREADS=str(threads))
    cmd = [sys.executable, "-m", "benchmarks.memory_case", group, name, str(h), str(w), str(n),
           device]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
