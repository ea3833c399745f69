"""Time, peak memory and values of every case of a group, interleaved in one process.

For each input configuration all cases of a group score the same batch: one warm-up call each
(its peak memory is measured: see :class:`benchmarks.common.PeakMemory`), then some rounds in
which every case runs once, in an order rotated each round so that no case always follows the
same neighbour. Times are medians over rounds; ratios between two cases are medians of their
per-round ratios (both ran within seconds of each other, under the same load).

On the CPU each call's wall time and the process's CPU time (all threads) are recorded. On a
shared machine wall time mostly measures how long the scheduler kept us waiting; CPU time
measures the work done, so the ratios that decide the targets use CPU time on the CPU (the
wall-time ratios are kept alongside) and wall time on a GPU.
A cached case's memory is measured again on one extra call after the timed rounds (steady
state: targets come from the cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from benchmarks import cases as C
from benchmarks import references as R
from benchmarks.common import PeakMemory, malloc_trim, median, time_call


@dataclass
class Row:
    """One line of the results table."""

    group: str
    case: str
    kind: str
    device: str
    height: int
    width: int
    batch: int
    median_s: float
    cpu_s: float
    images_per_s: float
    x_floor: float | None
    speedup_vs_package: float | None
    speedup_vs_torchmetrics: float | None
    x_floor_wall: float | None
    speedup_vs_package_wall: float | None
    speedup_vs_torchmetrics_wall: float | None
    max_abs_diff: float | None
    rel_diff: float | None
    speedup_vs_fp32: float | None
    speedup_vs_fp32_wall: float | None
    peak_mem_gib: float | None
    cache_gib: float | None
    repeats: int
    notes: str = ""


#: per group: (floor, main package reference, torchmetrics reference)
ANCHORS = {
    "LPIPS-VGG": ("floor: bare VGG-16, channels_last", "lpips package", "torchmetrics LPIPS"),
    "DISTS": ("floor: bare DISTS VGG-16, channels_last", "DISTS_pytorch",
              "torchmetrics DISTS (metric class)"),
    "ResNetFD": ("floor: bare ResNet-50 to layer3.3.conv3, channels_last",
                 "torchvision by hand", None),
    "SSFD": ("floor: bare SSFD encoder to block4_relu1, channels_last", "SSFD encoder by hand",
             None),
}
#: rows measured only at the first (base) configuration, to keep the full run short
BASE_ONLY = {"floor: bare VGG-16, contiguous", "ours uncached, library defaults",
             "torchmetrics DISTS (network built once)", C.SHARED_CASE}
#: rows measured only at the largest configuration (the memory target's)
LARGEST_ONLY = {"ours uncached, max_batch=4"}


def _active(case: C.Case, index: int, configs: list[tuple[int, int, int]], extras: bool) -> bool:
    if case.name in BASE_ONLY:
        return extras and index == 0
    if case.name in LARGEST_ONLY:
        return index == len(configs) - 1 and len(configs) > 1
    return True


def _paired_ratio(num: list[float], den: list[float]) -> float:
    return median([a / b for a, b in zip(num, den, strict=True)])


def _diff(values: Tensor | None, reference: Tensor | None) -> tuple[float | None, float | None]:
    if values is None or reference is None:
        return None, None
    values, reference = values.detach().double().cpu(), reference.detach().double().cpu()
    if values.numel() == 1 and reference.numel() > 1:  # a class that keeps only the batch mean
        reference = reference.mean().reshape(1)
    diff = float((values - reference).abs().max())
    return diff, diff / max(float(reference.abs().max()), 1e-30)


def _measured_call(case: C.Case, args: tuple, device: torch.device,
                   ) -> tuple[Tensor | None, int, str]:
    meter = PeakMemory(device)
    meter.start()
    with torch.inference_mode():
        out = case.run(*args)
    return out, meter.stop(), meter.method


def bench_group(
    group: str,
    configs: list[tuple[int, int, int]],
    device: torch.device,
    rounds: list[int],
    log=print,
    extras: bool = True,
) -> tuple[list[Row], str]:
    """Rows for every case of ``group`` at every ``(height, width, batch)`` configuration.

    ``rounds[i]`` timed rounds at ``configs[i]``; ``extras=False`` leaves out the informative
    rows (:data:`BASE_ONLY`) that no target needs.
    """
    names = [n for n in C.case_names(group) if extras or n not in BASE_ONLY]
    cases = []
    for name in names:
        log(f"  building {group} / {name}")
        cases.append(C.build_case(group, name, device))
    floor_name, package_name, tm_name = ANCHORS[group]
    rows: list[Row] = []
    method = ""
    for index, (h, w, n) in enumerate(configs):
        preds, target = R.mr_like_batch(n, h, w, seed=index)
        active = [c for c in cases if _active(c, index, configs, extras)]
        args = {c.name: c.prepare(preds, target) for c in active}
        peaks, values = {}, {}
        for case in active:  # warm-up, with its peak memory
            case.reset()
            values[case.name], peaks[case.name], method = _measured_call(case, args[case.name],
                                                                         device)
        malloc_trim()
        wall: dict[str, list[float]] = {c.name: [] for c in active}
        cpu: dict[str, list[float]] = {c.name: [] for c in active}
        repeats = rounds[index]
        for rnd in range(repeats):
            shift = rnd % len(active)
            for case in active[shift:] + active[:shift]:
                with torch.inference_mode():
                    seconds, cpu_seconds, out = time_call(
                        lambda c=case, a=args[case.name]: c.run(*a), device)
                wall[case.name].append(seconds)
                cpu[case.name].append(cpu_seconds)
                values[case.name] = out
            log(f"  {group} {h}x{w} b{n} round {rnd + 1}/{repeats} (wall/CPU s): "
                + ", ".join(f"{k.split(':')[0]} {v[-1]:.1f}/{cpu[k][-1]:.1f}"
                            for k, v in wall.items()))
        times = cpu if device.type == "cpu" else wall
        for case in active:  # steady-state memory of cached rows (targets from the cache)
            if case.cache_bytes is not None:
                _, peaks[case.name], _ = _measured_call(case, args[case.name], device)
        reference = values[package_name]
        for case in active:
            t, tw = times[case.name], wall[case.name]
            diff, rel = _diff(values[case.name], reference) if case.kind != "floor" else (None, None)
            twin = C.TWINS.get(case.name)  # a bf16 row: per-round ratio to its fp32 twin
            twin = twin if twin in times else None
            rows.append(Row(
                group=group, case=case.name, kind=case.kind, device=device.type,
                height=h, width=w, batch=n, median_s=median(tw), cpu_s=median(cpu[case.name]),
                images_per_s=n / median(tw),
                x_floor=_paired_ratio(t, times[floor_name]),
                speedup_vs_package=_paired_ratio(times[package_name], t),
                speedup_vs_torchmetrics=(_paired_ratio(times[tm_name], t)
                                         if tm_name in times else None),
                x_floor_wall=_paired_ratio(tw, wall[floor_name]),
                speedup_vs_package_wall=_paired_ratio(wall[package_name], tw),
                speedup_vs_torchmetrics_wall=(_paired_ratio(wall[tm_name], tw)
                                              if tm_name in wall else None),
                max_abs_diff=diff, rel_diff=rel,
                speedup_vs_fp32=_paired_ratio(times[twin], t) if twin else None,
                speedup_vs_fp32_wall=_paired_ratio(wall[twin], tw) if twin else None,
                peak_mem_gib=peaks[case.name] / (1 << 30),
                cache_gib=case.cache_bytes() / (1 << 30) if case.cache_bytes else None,
                repeats=repeats, notes=case.notes,
            ))
        for case in active:
            case.reset()
    del cases
    malloc_trim()
    return rows, method
