"""Target-feature cache hit rate under cyclic access (validation epochs), per policy and budget.

``python -m benchmarks.cache_policy [--images 40] [--epochs 4] [--out benchmarks]``

A real :class:`~lightning_dfd.metrics.ResNetFD` (random weights, 64x64 images) scores the same
``images`` targets in the same order every epoch, as validation does, with a
:class:`~lightning_dfd.feature_cache.TargetFeatureCache` whose budget holds a given share of the
set (measured from one image's stored bytes). Reported per policy: the memory hit rate of every
epoch after the first, the rate the cache's own :meth:`expected_hit_rate` predicts, and the
issue-13 bar (>= 0.9 x budget / set size). Also checks that cached values equal uncached ones.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from benchmarks.fidelity import cpu_model, replace_section

SECTION = "cache"
SHARES = (0.25, 0.5, 0.75)
POLICIES = ("lru", "keep")


def run(images: int, epochs: int, size: int = 64) -> list[dict]:
    """Rows ``{policy, share, holds, hit_rates, expected}``."""
    from lightning_dfd import ResNetFD
    from lightning_dfd.feature_cache import TargetFeatureCache

    g = torch.Generator().manual_seed(0)
    targets = torch.rand(images, size, size, generator=g)
    preds = (targets + 0.05 * torch.randn(targets.shape, generator=g)).clamp(0, 1)
    ids = torch.arange(images)
    torch.manual_seed(0)
    metric = ResNetFD(weights="random", reduction="none")
    with torch.inference_mode():
        metric.update(preds, targets)
    reference = metric.compute()
    probe = TargetFeatureCache(max_bytes=1 << 40)
    metric.feature_cache = probe
    with torch.inference_mode():
        metric.update(preds[:1], targets[:1], sample_ids=ids[:1])
    per_image = probe.nbytes
    rows = []
    for policy in POLICIES:
        for share in SHARES:
            cache = TargetFeatureCache(max_bytes=int(share * images * per_image), policy=policy)
            metric.feature_cache = cache
            rates = []
            for epoch in range(epochs):
                before = (cache.stats.hits, cache.stats.misses)
                metric.reset()
                with torch.inference_mode():
                    for k in range(images):  # batch 1, in order: a validation epoch
                        metric.update(preds[k:k + 1], targets[k:k + 1], sample_ids=ids[k:k + 1])
                hits, misses = cache.stats.hits - before[0], cache.stats.misses - before[1]
                if epoch:
                    rates.append(hits / (hits + misses))
                if not torch.allclose(metric.compute(), reference, rtol=1e-5, atol=1e-7):
                    raise AssertionError(f"cached values differ ({policy}, {share})")
            holds = cache.max_bytes // per_image
            rows.append({"policy": policy, "share": share, "holds": holds, "rates": rates,
                         "expected": cache.expected_hit_rate(images, per_image),
                         "bar": 0.9 * holds / images})
    return rows


def markdown(rows: list[dict], images: int, epochs: int, meta: list[str]) -> list[str]:
    """The RESULTS.md section."""
    lines = [f"<!-- section:{SECTION} -->", "## Feature cache hit rate under cyclic access (issue 13)", "",
             *[f"- {m}" for m in meta], "",
             f"{images} images visited in the same order for {epochs} epochs (batch 1), budget as a "
             "share of the set's stored target features; hit rates of epochs 2 onward.", "",
             "| policy | budget / set | images the budget holds | hit rate per epoch (2..) | "
             "predicted by `expected_hit_rate` | bar 0.9 x budget / set | status |",
             "|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        worst = min(r["rates"])
        status = "met" if worst >= r["bar"] else f"**missed** (by {r['bar'] - worst:.2f})"
        lines.append(f"| {r['policy']}{' (default)' if r['policy'] == 'keep' else ''} | "
                     f"{r['share']:.2f} | {r['holds']} | {', '.join(f'{v:.2f}' for v in r['rates'])} | "
                     f"{r['expected']:.2f} | {r['bar']:.2f} | {status} |")
    lines += ["", "`lru` is the policy before issue 13: under cyclic access it evicts every entry just "
              "before it is needed. `keep` admits entries until the budget is full and then keeps them, "
              "so the first `holds` images of the order hit every epoch. Cached values equal the "
              "uncached ones (checked every epoch).", f"<!-- end:{SECTION} -->"]
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run and write the section into ``--out``/RESULTS.md."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cache_policy")
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    started = datetime.datetime.now()
    rows = run(args.images, args.epochs)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    meta = [f"Generated by `python -m benchmarks.cache_policy {command}` on {started:%Y-%m-%d %H:%M}; "
            f"CPU: {cpu_model()}, torch {torch.__version__}."]
    for r in rows:
        print(r)
    args.out.mkdir(parents=True, exist_ok=True)
    replace_section(args.out / "RESULTS.md", markdown(rows, args.images, args.epochs, meta), SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
