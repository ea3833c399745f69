"""Entry point: ``python -m benchmarks.run [--quick] [--out benchmarks/] [--device cpu|cuda]``.

Runs, in this order: the metric comparisons (LPIPS-VGG, DISTS, ResNetFD against their reference
implementations and the bare-encoder floor) at every size and batch; in the full run, a
fresh-process peak-memory cross-check at 640x368, batch 16; a UNet validation epoch without
DFDs, with the default DFD suite and with the suite cached; the DDP metric-sync cost. Writes
``RESULTS.md`` and ``results.csv`` into ``--out``.

The process re-executes itself with the recommended ``GLIBC_TUNABLES`` when they are not set, so
both sides of every comparison run with the same allocator settings (DESIGN.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import GLIBC_TUNABLES, glibc_tunables_set

MEMORY_CROSS_CHECK = (
    ("LPIPS-VGG", "ours uncached"), ("LPIPS-VGG", "ours uncached, max_batch=4"),
    ("LPIPS-VGG", "lpips package"),
    ("DISTS", "ours uncached"), ("DISTS", "ours uncached, max_batch=4"), ("DISTS", "DISTS_pytorch"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="320x320, batch 8, 2 repeats, main rows only, small epoch, no "
                   "fresh-process memory check")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                   help="folder for RESULTS.md and results.csv (default: benchmarks/)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds per size and batch (default: 3 at the first, 2 at the "
                   "others; quick 2)")
    p.add_argument("--sizes", default=None, help="HxW list, default 320x320,640x368")
    p.add_argument("--batches", default=None, help="batch sizes, default 8,16")
    p.add_argument("--configs", default=None,
                   help="HxWxB list (e.g. 320x320x8,640x368x16): exactly these configurations "
                   "instead of --sizes x --batches")
    p.add_argument("--skip-extras", action="store_true",
                   help="leave out the informative rows no target needs (contiguous floor, "
                   "library defaults, shared pass, torchmetrics DISTS network built once)")
    p.add_argument("--groups", default="LPIPS-VGG,DISTS,ResNetFD",
                   help="comma list of LPIPS-VGG, DISTS, ResNetFD, SSFD")
    p.add_argument("--epoch-size", default="640x368:320x320",
                   help="k-space HxW : reconSpace hxw of the epoch data (default fastMRI knee)")
    p.add_argument("--epoch-volumes", type=int, default=3, help="validation volumes (default 3)")
    p.add_argument("--epoch-slices", type=int, default=30, help="slices per volume (default 30)")
    p.add_argument("--epoch-rounds", type=int, default=2, help="timed epochs per variant (default 2)")
    p.add_argument("--epoch-variants", default=None,
                   help="comma list of variant numbers (benchmarks.epoch.VARIANTS, 1-based after the "
                        "baseline, which always runs; default all)")
    p.add_argument("--skip-metrics", action="store_true")
    p.add_argument("--skip-epoch", action="store_true")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--memory-only", action="store_true",
                   help="only the fresh-process peak-memory checks at 640x368, batch 16 (with "
                   "--skip-metrics --skip-epoch --skip-ddp)")
    p.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                   help="run nothing: merge the results.csv and RESULTS.md headers of earlier "
                   "runs (e.g. one per group) into one report in --out")
    p.add_argument("--embed", nargs=2, metavar=("NAME", "TITLE"), default=None,
                   help="with --merge: write the merged report as section NAME (under TITLE) of "
                   "the RESULTS.md already in --out instead of replacing it; the CSV goes to "
                   "results_NAME.csv")
    p.add_argument("--analysis", type=Path, default=None,
                   help="with --merge: a markdown file appended as the report's 'Analysis'")
    args = p.parse_args(argv)
    args.sizes = args.sizes or ("320x320" if args.quick else "320x320,640x368")
    args.batches = args.batches or ("8" if args.quick else "8,16")
    return args


def _configs(args) -> list[tuple[int, int, int]]:
    if args.configs:
        return [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    return [(h, w, int(b)) for h, w in sizes for b in args.batches.split(",")]


def _rounds(args) -> list[int]:
    n = len(_configs(args))
    if args.repeats:
        return [args.repeats] * n
    return [2] * n if args.quick else [3] + [2] * (n - 1)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _versions() -> str:
    import importlib.metadata as md

    names = ("torch", "torchvision", "torchmetrics", "lpips", "DISTS_pytorch", "lightning")
    found = []
    for name in names:
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def _setup_lines(args, device: torch.device, load_start, load_end, memory_method: str) -> list[str]:
    hw = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
          else f"{_cpu_model()}, {os.cpu_count()} visible cores")
    return [
        f"Device: {device.type} ({hw}); torch threads: {torch.get_num_threads()}; {_versions()}.",
        f"`GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')}` for every case (both sides of "
        "every comparison, the memory subprocesses and the DDP workers): freed activation buffers "
        "stay in the heap instead of being unmapped and re-faulted on every pass (DESIGN.md).",
        f"Load average (1, 5, 15 min) at start {load_start}, at end {load_end}: the machine is "
        "shared, so absolute times are noisy; ratios are medians of per-round ratios of cases "
        "that ran seconds apart on the same input.",
        "Weights: seeded random torchvision VGG-16 / ResNet-50 checkpoints written under "
        "torchvision's file names into a private `TORCH_HOME`; the `lpips` package, "
        "`DISTS_pytorch` and torchmetrics load them as 'pretrained', ours get the same file as "
        "`weights=`. Learned LPIPS linear layers and DISTS alpha/beta are the packages' own.",
        "Inputs: synthetic MR-like complex `(N, H, W)` batches (same tensors for every case). Ours "
        "take them as they are; each reference's preparation (magnitude, per-image min-max, "
        "pseudo-RGB, [-1, 1]) is done in plain torch and counted in its time. The floor gets "
        "prepared `channels_last` predictions (untimed) and runs only the bare torchvision "
        "encoder over them under `inference_mode`. Every call runs under `torch.inference_mode()` "
        "(as Lightning's validation loop does).",
        f"Timing: per size and batch, one warm-up call per case, then {_rounds(args)} rounds "
        "(per configuration) with every case once per round, order rotated each round. 'wall s' "
        "and 'CPU s' (the process's CPU time, all threads) are medians per batch; 'images/s' is "
        "from wall time. 'x floor' and the speed-ups are medians of per-round ratios of CPU time "
        "(of wall time on a GPU), wall-time ratios in brackets: on this shared machine wall time "
        "mostly measures how long the scheduler made us wait (in a check before this run the "
        "same call varied up to 3x in wall time and ~3 % in CPU time); the targets are judged on "
        "CPU time. On an idle machine with 2 threads the two agree up to the serial parts (Python, "
        "hashing), which CPU time weighs half as much as wall time.",
        "Ours: `reduction='none'`, `max_batch=8` (explicit; the library default is 4, the row "
        "'ours uncached, max_batch=4'), `channels_last=True`; 'cached' passes "
        "`sample_ids` with `feature_cache=TargetFeatureCache(8 GiB)` filled by the warm-up "
        "(steady state of epoch >= 2); 'library defaults' is `channels_last=False`.",
        f"Peak memory: {memory_method} during the warm-up call (the first call on that input; for "
        "cached rows an extra call after the timed rounds, targets from the cache), after "
        "`malloc_trim(0)` so the baseline is what the process really holds; in brackets the same "
        "measured in a fresh process per case (full run, 640x368 batch 16). Cached features are "
        "not in the peak: they are the 'cache GiB' column.",
        "Values: 'max abs diff' is against the group's reference (lpips package, DISTS_pytorch, "
        "ResNet-50 by hand), per image; torchmetrics' DISTS class keeps only a sum, so its batch "
        "mean is compared.",
    ]


def _reexec_with_tunables() -> None:
    env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]], env)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the report."""
    args = parse_args(argv)
    if args.merge and args.embed:
        with tempfile.TemporaryDirectory() as tmp:
            merge(args.merge, Path(tmp), args.analysis)
            from benchmarks import report

            report.embed(Path(tmp) / "RESULTS.md", args.out / "RESULTS.md", *args.embed)
            shutil.copy(Path(tmp) / "results.csv", args.out / f"results_{args.embed[0]}.csv")
        return 0
    if args.merge:
        return merge(args.merge, args.out, args.analysis)
    if argv is None and not glibc_tunables_set():
        _reexec_with_tunables()
    from benchmarks import references as R
    from benchmarks import report
    from benchmarks.metric_bench import bench_group

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch.cuda.is_available() is False")
    tmp = Path(tempfile.mkdtemp(prefix="dfd_bench_"))
    os.environ.update(TORCH_HOME=str(tmp / "torch_home"), LIGHTNING_DFD_OFFLINE="1",
                      LIGHTNING_DFD_HOME=str(tmp / "dfd_home"))
    load_start = tuple(round(v, 1) for v in os.getloadavg())
    started = time.time()
    rows: list[dict] = []
    memory_method = ""
    try:
        R.write_random_checkpoints(tmp / "torch_home")
        if not args.skip_metrics:
            for group in args.groups.split(","):
                _log(f"{group}: configurations {_configs(args)}, rounds {_rounds(args)}")
                group_rows, memory_method = bench_group(group, _configs(args), device,
                                                        _rounds(args), log=_log,
                                                        extras=not (args.quick or args.skip_extras))
                rows += report.as_dicts(group_rows)
            if not args.quick and (640, 368, 16) in _configs(args):
                _memory_cross_check(rows, device, args.threads, args.groups.split(","))
        if args.memory_only:
            _memory_cross_check(rows, device, args.threads, args.groups.split(","))
        if not args.skip_epoch:
            rows += _epoch(args, device, tmp)
        if not args.skip_ddp and device.type == "cpu":
            rows += _ddp(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = tuple(round(v, 1) for v in os.getloadavg())
    meta = {"argv": " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M") +
            f" ({(time.time() - started) / 60:.1f} min)",
            "setup": _setup_lines(args, device, load_start, load_end, memory_method or "n/a")}
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, args.out / "results.csv")
    report.write_markdown(rows, args.out / "RESULTS.md", meta, analysis=[])
    _log(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.csv'}")
    return 0


def _merged_setup(per_run: list[list[str]]) -> list[str]:
    """One setup bullet per topic across runs.

    The load averages of every run go together; any other topic keeps the latest run's wording
    (the newest code describes the cases best) unless that says 'n/a'.
    """
    topics: dict[str, str] = {}
    loads = []
    for bullets in per_run:
        for bullet in bullets:
            topic = bullet.split(":", 1)[0].split("(", 1)[0].strip()
            if topic == "Load average":
                loads.append(bullet.split(" at start ", 1)[-1].split(":", 1)[0]
                             .replace(", at end ", " -> "))
            elif "n/a" not in bullet or topic not in topics:
                topics[topic] = bullet
    lines = list(topics.values())
    if loads:
        lines.insert(2, "Load average (1, 5, 15 min) per run, start -> end: " + "; ".join(loads) + ". The "
                     "machine is shared, so absolute times are noisy; ratios are medians of "
                     "per-round ratios of cases that ran seconds apart on the same input.")
    return lines


def merge(parts: list[Path], out: Path, analysis: Path | None = None) -> int:
    """One report from the results of several runs (sections and groups keep their order).

    A row measured by several runs (e.g. timing in one, ``--memory-only`` in another) becomes one
    row: the first run's values, with the cells it left empty filled in from later runs.
    """
    from benchmarks import report

    rows, generated, setup = [], [], []
    seen: dict[tuple, dict] = {}
    for part in parts:
        for row in report.read_csv(part / "results.csv"):
            key = tuple(row[k] for k in ("section", "group", "case", "height", "width", "batch"))
            if key in seen:  # the same row from another run:
                first = seen[key]  # fill in what the first run did not measure
                first.update({k: v for k, v in row.items() if first.get(k) is None})
                continue
            seen[key] = row
            rows.append(row)
        line, bullets = report.report_header(part / "RESULTS.md")
        generated.append(line.removeprefix("Generated by ").rstrip("."))
        setup.append(bullets)
    order = {"metric": 0, "epoch": 1, "ddp": 2}
    rows.sort(key=lambda r: order.get(r["section"], 3))  # stable: runs keep their row order
    meta = {"argv": "--merge " + " ".join(str(p) for p in parts),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "setup": ["Merged from " + "; ".join(generated) + ".", *_merged_setup(setup)]}
    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, out / "results.csv")
    notes = analysis.read_text().splitlines() if analysis else []
    report.write_markdown(rows, out / "RESULTS.md", meta, analysis=notes)
    _log(f"merged {len(parts)} runs into {out / 'RESULTS.md'}")
    return 0


def _memory_cross_check(rows: list[dict], device: torch.device, threads: int,
                        groups: list[str]) -> None:
    """Fresh-process peaks at 640x368, batch 16 into ``rows``; a row is added where none is."""
    from benchmarks import cases as C
    from benchmarks import report
    from benchmarks.memory_case import measure

    for group, case in MEMORY_CROSS_CHECK:
        if group not in groups:
            continue
        _log(f"fresh-process peak memory: {group} / {case} at 640x368, batch 16")
        result = measure(group, case, 640, 368, 16, device.type, threads)
        if "error" in result:
            _log(f"  failed: {result['error']}")
            continue
        key = ("metric", group, case, 640, 368, 16)
        found = [r for r in rows if (r["section"], r["group"], r["case"], r["height"], r["width"],
                                     r["batch"]) == key]
        if not found:
            kind = "reference" if case == C.VALUE_REFERENCE.get(group) else "ours"
            rows += report.as_dicts([{"section": "metric", "group": group, "case": case,
                                      "kind": kind, "device": device.type, "height": 640,
                                      "width": 368, "batch": 16,
                                      "notes": "fresh-process peak only (--memory-only)"}])
            found = rows[-1:]
        for row in found:
            row["peak_mem_subprocess_gib"] = result["peak_bytes"] / (1 << 30)


def _epoch(args, device: torch.device, tmp: Path) -> list[dict]:
    from benchmarks import epoch as E

    full, recon = (tuple(int(v) for v in s.split("x")) for s in args.epoch_size.split(":"))
    E.FULL_SHAPE, E.RECON_SHAPE = full, recon
    volumes, slices = (2, 2) if args.quick else (args.epoch_volumes, args.epoch_slices)
    _log(f"UNet validation epoch: {volumes} volumes x {slices} slices")
    return E.bench_epoch(tmp / "data", device, volumes=volumes, slices=slices, coils=4, batch_size=1,
                       rounds=1 if args.quick else args.epoch_rounds, log=_log,
                       variants=[int(v) for v in (args.epoch_variants or "").split(",") if v] or None)


def _ddp(args, tmp: Path) -> list[dict]:
    from benchmarks.ddp_sync import bench_ddp

    slices = 2 if args.quick else 4
    _log("DDP metric sync: 2 processes")
    return bench_ddp(tmp / "data", volumes=2, slices=slices, coils=4, batch_size=1,
                     rounds=1 if args.quick else 2, threads=args.threads, log=_log)


if __name__ == "__main__":
    sys.exit(main())
