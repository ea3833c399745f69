"""``lightning-dfd evaluate --maps`` against the same evaluate without maps: CPU time ratio.

The case of the core-redesign issue: LPIPS-VGG (random weights, seeded), 3 volumes x 6 slices of
256x256 (reference and a noisy reconstruction in fastMRI's h5 layout), every slice scored. Maps
come from the features that were scored (one encoder pass), so the ratio measures writing the
maps (h5 + PNG with colour bar), not a second encoder pass. Both variants run in this process
(``lightning_dfd.cli.main``), interleaved round by round after a warm-up; the ratio is the median
over rounds of ``cpu(maps) / cpu(no maps)``.

Run: ``python -m benchmarks.evaluate_maps [--rounds 3] [--out benchmarks/RESULTS.md]``.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from benchmarks.fidelity import cpu_model, replace_section


def write_case(root: Path, volumes: int = 3, slices: int = 6, size: int = 256) -> tuple[Path, Path]:
    """Reference and reconstruction folders of ``volumes`` files, ``(slices, size, size)`` each."""
    rng = np.random.default_rng(0)
    ref, rec = root / "ref", root / "rec"
    ref.mkdir(), rec.mkdir()
    y, x = np.mgrid[0:size, 0:size] / size
    for v in range(volumes):
        disc = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.16
        target = np.stack([0.6 + 0.3 * np.sin(8 * x + 5 * y + s + v) * disc
                           for s in range(slices)]).astype(np.float32)
        noisy = (target + 0.05 * rng.standard_normal(target.shape)).astype(np.float32)
        with h5py.File(ref / f"file{v}.h5", "w") as f:
            f.create_dataset("reconstruction_rss", data=target)
        with h5py.File(rec / f"file{v}.h5", "w") as f:
            f.create_dataset("reconstruction", data=noisy)
    return ref, rec


def run(rounds: int = 3) -> dict[str, float]:
    """CPU seconds per variant (median) and the median ratio."""
    from lightning_dfd.cli import main

    times: dict[str, list[float]] = {"no maps": [], "--maps": []}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        ref, rec = write_case(root)
        base = ["evaluate", "--target", str(ref), "--predictions", str(rec), "--metrics", "lpips_vgg",
                "--weights", "random", "--protocol", "fastmri", "--no-progress"]
        for rnd in range(rounds + 1):  # round 0: warm-up
            for variant in (["no maps", "--maps"] if rnd % 2 else ["--maps", "no maps"]):
                out = root / f"out{rnd}{variant.strip('-').replace(' ', '')}"
                extra = ["--maps", str(out / "maps")] if variant == "--maps" else []
                out.mkdir()
                start = time.process_time()
                assert main([*base, "--out", str(out / "metrics.csv"), *extra]) == 0
                if rnd:
                    times[variant].append(time.process_time() - start)
                shutil.rmtree(out)
    ratio = statistics.median(m / p for m, p in zip(times["--maps"], times["no maps"], strict=True))
    return {"no maps": statistics.median(times["no maps"]), "--maps": statistics.median(times["--maps"]),
            "ratio": ratio}


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="RESULTS.md to put the section into")
    args = parser.parse_args()
    cpu = cpu_model()
    found = run(args.rounds)
    lines = ["<!-- section:evaluate_maps -->", "## `evaluate --maps` vs `evaluate` (CPU time)", "",
             f"{datetime.date.today()}, {cpu}; LPIPS-VGG random weights, 3 volumes x 6 slices 256x256, "
             f"median of {args.rounds} interleaved rounds after a warm-up "
             "(`python -m benchmarks.evaluate_maps`).",
             "", "| variant | CPU s | ratio |", "|---|---|---|",
             f"| evaluate | {found['no maps']:.2f} | 1.00 |",
             f"| evaluate --maps (h5 + PNG) | {found['--maps']:.2f} | {found['ratio']:.2f} |",
             "<!-- end:evaluate_maps -->"]
    print("\n".join(lines))
    if args.out is not None:
        replace_section(args.out, lines, "evaluate_maps")


if __name__ == "__main__":
    main()
