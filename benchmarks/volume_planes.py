"""The cost of ``VolumeDFD`` with three planes against one (axial), on one volume.

Each plane covers every voxel once, so three planes should cost about three times one; slices
of the coronal and sagittal planes are only ``D`` pixels tall, which changes how well the encoder
runs. Gradient-free updates of a ``reduction="mean"`` metric with ``weights="random"`` (the timing
does not depend on the weights), interleaved round by round; the first round is a warm-up (it
probes the encoder's minimum size). Reports the median CPU time of the process (all threads) and
wall time per update, and the ratio three / one.

Run (about a minute on 2 cores)::

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 \\
        python -m benchmarks.volume_planes --case lpips_vgg:1x16x128x128 --case resnet_fd:1x30x320x320
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import glibc_tunables_set, median, time_call
from benchmarks.fidelity import cpu_model
from lightning_dfd import VolumeDFD

PLANE_SETS = {"axial": ("axial",), "three": ("axial", "coronal", "sagittal")}


def parse_case(text: str) -> tuple[str, tuple[int, int, int, int]]:
    """``lpips_vgg:1x16x128x128`` -> ``("lpips_vgg", (1, 16, 128, 128))``."""
    name, _, shape = text.partition(":")
    dims = tuple(int(d) for d in shape.split("x"))
    if len(dims) != 4:
        raise argparse.ArgumentTypeError(f"--case: expected NAME:NxDxHxW, got {text!r}")
    return name, dims  # type: ignore[return-value]


def bench_case(name: str, shape: tuple[int, int, int, int], rounds: int) -> dict[str, float]:
    """Median CPU and wall seconds of one update for each plane set."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(shape, generator=g)
    preds = target + 0.1 * torch.rand(shape, generator=g)
    metrics = {key: VolumeDFD(name, planes=planes, weights="random") for key, planes in PLANE_SETS.items()}
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in metrics}
    device = torch.device("cpu")
    for round_ in range(rounds + 1):
        for key, metric in metrics.items():
            metric.reset()
            with torch.no_grad():
                wall, cpu, _ = time_call(lambda m=metric: m.update(preds, target), device)
            if round_:  # round 0 warms up
                times[key].append((cpu, wall))
    out = {}
    for key, values in times.items():
        out[f"{key}_cpu"] = median([c for c, _ in values])
        out[f"{key}_wall"] = median([w for _, w in values])
    return out


def main(argv: list[str] | None = None) -> None:
    """Time every ``--case`` and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", type=parse_case, action="append",
                        help="NAME:NxDxHxW (catalog DFD name, volume shape); repeatable")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds after the warm-up")
    args = parser.parse_args(argv)
    cases = args.case or [parse_case("lpips_vgg:1x16x128x128"), parse_case("resnet_fd:1x30x320x320")]
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"GLIBC_TUNABLES {'set' if glibc_tunables_set() else 'NOT set'}; max_batch 4 (default)")
    print(f"{'metric':<12} {'volume':<16} {'axial cpu s':>11} {'3 planes cpu s':>14} {'ratio cpu':>9} "
          f"{'axial wall s':>12} {'3 planes wall s':>15} {'ratio wall':>10}")
    for name, shape in cases:
        r = bench_case(name, shape, args.rounds)
        print(f"{name:<12} {'x'.join(map(str, shape)):<16} {r['axial_cpu']:>11.2f} {r['three_cpu']:>14.2f} "
              f"{r['three_cpu'] / r['axial_cpu']:>9.2f} {r['axial_wall']:>12.2f} {r['three_wall']:>15.2f} "
              f"{r['three_wall'] / r['axial_wall']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
