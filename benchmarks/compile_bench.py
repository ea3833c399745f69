"""``torch.compile`` (inductor) of the DFD encoders on the CPU: gain at equal values?

``python -m benchmarks.compile_bench [--size 320] [--batch 4] [--rounds 3] [--dfds ...]``

Per DFD (seeded random weights) and precision (fp32; bf16 = ``precision="bf16"``), one
process, the same input: eager, ``torch.compile(network)`` and ``torch.compile`` with inductor's
``freezing`` (weights folded as constants and pre-packed for oneDNN, the recommended CPU
inference setting). The first call of a compiled variant (compilation) is timed separately; then
``rounds`` rounds run every variant once, in rotated order; gains are medians of per-round ratios
of CPU time (eager / compiled). Values: max relative difference of the features and of the
distance between two different batches, compiled vs eager of the same precision.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._dynamo

from benchmarks.fidelity import cpu_model, dfd_factories, replace_section
from lightning_dfd.encoders.options import EncoderOptions

SECTION = "compile"
#: keep the option only above this gain at equal values (issue 13)
GAIN_BAR = 1.10


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).norm() / x.norm().clamp_min(1e-30)) for x, y in zip(a, b, strict=True))


VARIANTS = {"compiled": False, "compiled+freezing": True}


def bench_dfd(name: str, size: int, batch: int, rounds: int, log=print,
              variants: tuple[str, ...] = tuple(VARIANTS)) -> list[dict]:
    """Rows (one per precision and compiled variant) for one DFD.

    Each variant is compiled fresh (``torch._dynamo.reset()``) and timed interleaved with eager.
    """
    import torch._inductor.config as inductor_config

    torch.manual_seed(0)
    net = dfd_factories()[name]().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, 1, size, size, generator=g)
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    rows = []
    for precision in ("fp32", "bf16"):
        options = EncoderOptions(channels_last=True, precision=precision)

        def eager(images: torch.Tensor, options: EncoderOptions = options) -> list[torch.Tensor]:
            return net(images, options)

        with torch.inference_mode():
            ref_x, ref_y = eager(x), eager(y)
            ref_d = net.distance(ref_x, ref_y)
        for label in variants:
            freezing = VARIANTS[label]
            torch._dynamo.reset()
            inductor_config.freezing = freezing
            try:
                fn = torch.compile(eager)
                start, cpu0 = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    fx = fn(x)
                first = time.perf_counter() - start
                first_cpu = time.process_time() - cpu0
                with torch.inference_mode():
                    fy = fn(y)
                    d = net.distance(fx, fy)
                feat_rel = max(_rel(ref_x, fx), _rel(ref_y, fy))
                dist_rel = float(((d - ref_d).abs() / ref_d.abs()).max())
                cpu: dict[str, list[float]] = {"eager": [], label: []}
                wall: dict[str, list[float]] = {"eager": [], label: []}
                calls = {"eager": eager, label: fn}
                for rnd in range(rounds):
                    for key in (["eager", label] if rnd % 2 == 0 else [label, "eager"]):
                        with torch.inference_mode():
                            t, c = time.perf_counter(), time.process_time()
                            calls[key](x)
                            cpu[key].append(time.process_time() - c)
                            wall[key].append(time.perf_counter() - t)
            finally:
                inductor_config.freezing = False
            ratio = statistics.median(e / c for e, c in zip(cpu["eager"], cpu[label], strict=True))
            ratio_w = statistics.median(e / c for e, c in zip(wall["eager"], wall[label], strict=True))
            rows.append({"dfd": name, "precision": precision, "variant": label,
                         "eager_cpu_s": statistics.median(cpu["eager"]),
                         "cpu_s": statistics.median(cpu[label]), "gain": ratio, "gain_wall": ratio_w,
                         "compile_s": first, "compile_cpu_s": first_cpu,
                         "feature_rel": feat_rel, "distance_rel": dist_rel})
            log(f"  {name} {precision} {label}: first call {first:.0f} s; CPU eager "
                f"{rows[-1]['eager_cpu_s']:.2f} s, compiled {rows[-1]['cpu_s']:.2f} s, gain "
                f"{ratio:.2f}x; features {feat_rel:.1e}, distance {dist_rel:.1e}")
    torch._dynamo.reset()
    return rows


def markdown(rows: list[dict], meta: list[str]) -> list[str]:
    """The RESULTS.md section."""
    lines = [f"<!-- section:{SECTION} -->", "## torch.compile of the encoders (CPU, inductor)", "",
             *[f"- {m}" for m in meta], "",
             "| DFD | precision | variant | CPU s eager | CPU s compiled | gain vs eager (wall) | "
             "first call s (CPU s) | features rel. diff vs eager | distance rel. diff vs eager |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dfd']} | {r['precision']} | {r['variant']} | {r['eager_cpu_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {r['gain']:.2f} ({r['gain_wall']:.2f}) | "
                     f"{r['compile_s']:.0f} ({r['compile_cpu_s']:.0f}) | {r['feature_rel']:.1e} | "
                     f"{r['distance_rel']:.1e} |")
    lines.append(f"<!-- end:{SECTION} -->")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run and write the section into RESULTS.md (and a CSV)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_bench")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dfds", default="LPIPS-VGG,DISTS,ResNetFD,SSFD")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma list of: " + ", ".join(VARIANTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(m: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)

    load0, t0 = tuple(round(v, 1) for v in os.getloadavg()), time.time()
    rows = []
    for name in args.dfds.split(","):
        rows += bench_dfd(name, args.size, args.batch, args.rounds, log,
                          variants=tuple(args.variants.split(",")))
    load1 = tuple(round(v, 1) for v in os.getloadavg())
    meta = [f"Generated by `python -m benchmarks.compile_bench {' '.join(argv or sys.argv[1:])}` "
            f"on {datetime.datetime.now():%Y-%m-%d %H:%M} ({(time.time() - t0) / 60:.1f} min); "
            f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"load average {load0} at start, {load1} at end (shared machine).",
            f"Input: {args.batch} random images {args.size}x{args.size}, the network's own "
            "`forward` (prepare + encoder, channels_last) compiled whole; weights random (seed 0). "
            f"Gains: medians over {args.rounds} rounds of per-round CPU-time ratios eager / "
            f"variant (wall in brackets); the bar to keep the option is >= {GAIN_BAR:.2f}x at "
            "equal values."]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "compile.csv", "w") as f:
        keys = list(rows[0])
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join("" if r[k] is None else str(r[k]) for k in keys) + "\n")
    replace_section(args.out / "RESULTS.md", markdown(rows, meta), SECTION)
    log(f"wrote {args.out / 'compile.csv'} and the '{SECTION}' section of RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
