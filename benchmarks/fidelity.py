"""Rank fidelity of bf16 encoders: do DFD values in bf16 order reconstructions as in fp32?

``python -m benchmarks.fidelity [--out benchmarks/] [--targets 8] [--size 320] [--dfds ...]``

A graded-degradation set is built in memory from the synthetic knee phantom
(:mod:`recon_models.data.synthetic`): per target slice (acquisition noise included, as in a
fully sampled scan) the zero-filled reconstructions at 2/4/6/8x with random and equispaced
masks (:mod:`recon_models.data.masks`), six levels of extra k-space noise, and the outputs of a
small :class:`~recon_models.models.unet.ComplexUnet` trained here for a few hundred steps on other
phantom volumes (three snapshots: early, middle, final; 4x and 8x; both mask types). Every DFD
(random seeded weights: no pretrained weights exist offline) scores every pair with its encoder
in fp32 and in bf16 (``precision="bf16"``: torch.autocast bf16 around the encoder, channels-last); the
distance itself runs in fp32 on the fp32 copies of the features in both cases.

Reported per DFD: Spearman and Kendall tau of bf16 vs fp32 over all pairs, within each
degradation family, within each target (ranking the reconstructions of one image, what a
reconstruction benchmark does), the discordant pairs, max abs / rel differences, and per layer
the relative feature error and the Spearman of the per-layer MSE (where the ranking is lost).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import Tensor

#: the bar of issue 13
SPEARMAN_BAR = 0.999
ACCELERATIONS = (2, 4, 6, 8)
MASKS = {"random": "random", "equispaced": "equispaced_fraction"}
NOISE_LEVELS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.08)
ACQUISITION_NOISE = 0.01
UNET_ACCELERATIONS = (4, 8)
SECTION = "fidelity"


@dataclass
class DegradationSet:
    """Targets ``(T, H, W)`` and predictions ``(P, H, W)`` (magnitudes), one record per pair."""

    targets: Tensor
    preds: Tensor
    pairs: list[dict] = field(default_factory=list)  # target, family, level, mask
    notes: list[str] = field(default_factory=list)


def _phantom_slices(seed: int, slices: int, size: int) -> np.ndarray:
    """Central slices of one synthetic knee volume, complex ``(slices, size, size)``, max 1."""
    from recon_models.data.synthetic import KneeAnatomy, knee_volume

    rng = np.random.default_rng(seed)
    anatomy = KneeAnatomy.sample(rng)
    volume = knee_volume(anatomy, slices + 4, (size, size), (size, size), rng)
    return volume[2 : 2 + slices]


def _kspace(images: np.ndarray, sigma: float, rng: np.random.Generator) -> Tensor:
    """Orthonormal k-space of complex images plus complex white noise of std ``sigma``."""
    from recon_models.fourier import fft2c

    k = fft2c(torch.from_numpy(images).to(torch.complex64))
    noise = (rng.standard_normal((2, *k.shape)) * (sigma / np.sqrt(2))).astype(np.float32)
    return k + torch.complex(torch.from_numpy(noise[0]), torch.from_numpy(noise[1]))


def _mask(kind: str, acceleration: int, width: int, seed: int) -> Tensor:
    from recon_models.data.masks import build_mask_func, sample_mask

    return sample_mask(build_mask_func(MASKS[kind], (acceleration,)), width, seed=seed)[0, 0]


def train_unet(size: int, steps: int, snapshots: tuple[int, ...], seed: int = 1000,
               log: Callable[[str], None] = print) -> tuple[list[dict], str]:
    """A small ComplexUnet trained on zero-filled 4x/8x ``size x size`` phantom slices (single
    coil; fully convolutional, so it applies at any size).

    Returns the state dicts after each step count in ``snapshots`` and a description.
    """
    from recon_models.fourier import ifft2c
    from recon_models.models.losses import complex_l1_image_loss
    from recon_models.models.unet import ComplexUnet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = np.concatenate([_phantom_slices(seed + v, 6, size) for v in range(4)])
    kspace = _kspace(train, ACQUISITION_NOISE, rng)
    clean = ifft2c(kspace)
    model = ComplexUnet(chans=16, num_pool_layers=3)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    maps = torch.ones(4, 1, size, size, dtype=torch.complex64)
    states, start, losses = [], time.perf_counter(), []
    for step in range(1, max(snapshots) + 1):
        idx = torch.from_numpy(rng.choice(len(train), 4, replace=False))
        masks = torch.stack([
            _mask(str(rng.choice(list(MASKS))), int(rng.choice(UNET_ACCELERATIONS)), size,
                  int(rng.integers(1 << 30))) for _ in range(4)])[:, None, None, :]
        out = model(kspace[idx, None] * masks, masks, maps)
        loss = complex_l1_image_loss(out, clean[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step in snapshots:
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            log(f"  UNet step {step}: loss {np.mean(losses[-20:]):.4g} "
                f"({time.perf_counter() - start:.0f} s)")
    note = (f"ComplexUnet(chans=16, num_pool_layers=3) trained here with Adam (lr 2e-3, batch 4, "
            f"complex L1) on zero-filled 4x/8x random/equispaced single-coil slices of 4 other "
            f"phantom volumes (24 slices) at {size}x{size} (applied at the set's size: training "
            f"at 320x320 costs ~3 s a step on this shared machine), {max(snapshots)} steps in "
            f"{time.perf_counter() - start:.0f} s; snapshots after {snapshots} steps "
            f"(final training loss {np.mean(losses[-20:]):.3g})")
    return states, note


def build_degradation_set(targets: int = 8, size: int = 320, seed: int = 0,
                          unet_steps: tuple[int, ...] = (30, 100, 250), train_size: int = 160,
                          log: Callable[[str], None] = print) -> DegradationSet:
    """The graded-degradation set: ``26 * targets`` pairs (zero-filled, noise, UNet).

    Targets: central slices of ``ceil(targets / 2)`` phantom volumes, fully sampled with
    acquisition noise ``0.01`` (of the image maximum). Per target: 8 zero-filled (4
    accelerations x 2 mask types), 6 noise levels, 12 UNet outputs (3 snapshots x 2 accelerations
    x 2 mask types); masks are seeded per target.

    Example:
        >>> s = build_degradation_set(targets=1, size=32, unet_steps=(1, 2), log=lambda m: None)
        >>> len(s.pairs), tuple(s.preds.shape), tuple(s.targets.shape)
        (22, (22, 32, 32), (1, 32, 32))
    """
    from recon_models.fourier import ifft2c
    from recon_models.models.unet import ComplexUnet

    rng = np.random.default_rng(seed)
    volumes = [_phantom_slices(seed + v, 2, size) for v in range((targets + 1) // 2)]
    clean = np.concatenate(volumes)[:targets]
    kspace = _kspace(clean, ACQUISITION_NOISE, rng)
    target_images = ifft2c(kspace).abs()
    states, unet_note = train_unet(min(train_size, size), max(unet_steps), unet_steps,
                                   seed=seed + 1000, log=log)
    unets = []
    for state in states:
        model = ComplexUnet(chans=16, num_pool_layers=3)
        model.load_state_dict(state)
        unets.append(model.eval())
    preds, pairs = [], []
    maps = torch.ones(1, 1, size, size, dtype=torch.complex64)
    for t in range(targets):
        k = kspace[t]
        for kind in MASKS:
            for r in ACCELERATIONS:
                m = _mask(kind, r, size, seed=1000 * t + r)
                preds.append(ifft2c(k * m).abs())
                pairs.append({"target": t, "family": f"zero-filled {kind}", "level": f"{r}x"})
        for sigma in NOISE_LEVELS:
            extra = _kspace(np.zeros((size, size), np.complex64), sigma, rng)
            preds.append(ifft2c(k + extra).abs())
            pairs.append({"target": t, "family": "noise", "level": f"sigma={sigma}"})
        for stage, (model, steps) in enumerate(zip(unets, unet_steps, strict=True)):
            for kind in MASKS:
                for r in UNET_ACCELERATIONS:
                    m = _mask(kind, r, size, seed=1000 * t + r)[None, None, None, :]
                    with torch.inference_mode():
                        out = model((k * m[0, 0])[None, None], m, maps)[0]
                    preds.append(out.abs())
                    pairs.append({"target": t, "family": "UNet",
                                  "level": f"{r}x {kind} step {steps}", "stage": stage})
    notes = [f"{targets} targets: 2 central slices of each of {len(volumes)} synthetic knee "
             f"volumes, {size}x{size} (k-space simulated at {size}x{size}, single coil), complex "
             f"acquisition noise {ACQUISITION_NOISE} of the image maximum; predictions are "
             "magnitudes, metrics get them as they are (per-image min-max, the default)",
             "zero-filled: |IFFT(mask * k)| at 2/4/6/8x, fastMRI random and equispaced_fraction "
             "masks (centre 0.32/R), seeded per target",
             f"noise: extra complex k-space noise, sigma {NOISE_LEVELS} of the image maximum",
             f"UNet: {unet_note}"]
    return DegradationSet(target_images, torch.stack(preds), pairs, notes)


# -------------------------------------------------------------------------------- statistics


def rank_stats(reference: np.ndarray, other: np.ndarray) -> dict:
    """Agreement of ``other`` with ``reference`` (same pairs, same order).

    Returns spearman, kendall (tau-b), discordant (pairs ordered differently of the pairs not tied
    in either), n, max_abs and max_rel (relative to ``|reference|``).

    Example:
        >>> r = rank_stats(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.1]))
        >>> round(r["spearman"], 3), round(r["kendall"], 3), r["discordant"], r["n"]
        (0.8, 0.667, 1, 4)
    """
    a, b = np.asarray(reference, float), np.asarray(other, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-D arrays of one length, got {a.shape} and {b.shape}")
    n = a.size
    out = {"n": n, "max_abs": float(np.abs(a - b).max()) if n else float("nan"),
           "max_rel": float((np.abs(a - b) / np.maximum(np.abs(a), 1e-30)).max()) if n else float("nan")}
    if n < 2:
        return {**out, "spearman": float("nan"), "kendall": float("nan"), "discordant": 0}
    da, db = np.sign(a[:, None] - a[None, :]), np.sign(b[:, None] - b[None, :])
    upper = np.triu(np.ones((n, n), bool), 1)
    out["discordant"] = int(((da * db) < 0)[upper].sum())
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        out.update(spearman=float("nan"), kendall=float("nan"))
    else:
        out["spearman"] = float(stats.spearmanr(a, b).statistic)
        out["kendall"] = float(stats.kendalltau(a, b).statistic)
    return out


def grouped_stats(reference: np.ndarray, other: np.ndarray, keys: list) -> dict:
    """:func:`rank_stats` within each group of equal ``keys``: {key: stats}."""
    keys_arr = np.array([str(k) for k in keys])
    return {k: rank_stats(reference[keys_arr == k], other[keys_arr == k])
            for k in dict.fromkeys(keys_arr.tolist())}


# -------------------------------------------------------------------------------- the DFDs


def dfd_factories() -> dict[str, Callable[[], object]]:
    """name -> builder of the FeatureDistanceNetwork with seeded random weights."""
    from lightning_dfd.encoders.dists import DISTSNetwork
    from lightning_dfd.encoders.lpips import LPIPSNetwork
    from lightning_dfd.encoders.medvae import MedVAENetwork
    from lightning_dfd.encoders.resnet import ResNetFDNetwork
    from lightning_dfd.encoders.ssfd import SSFDNetwork

    return {
        "LPIPS-VGG": lambda: LPIPSNetwork("vgg", linear=True, weights="random"),
        "LPIPS-VGG-nolin": lambda: LPIPSNetwork("vgg", linear=False, weights="random"),
        "LPIPS-Alex": lambda: LPIPSNetwork("alex", linear=True, weights="random"),
        "DISTS": lambda: DISTSNetwork(weights="random"),
        "ResNetFD": lambda: ResNetFDNetwork(weights="random"),
        "SSFD": lambda: SSFDNetwork(weights="random"),
        "VAEFD": lambda: MedVAENetwork("random"),
    }


def _normalise(x: Tensor) -> Tensor:
    from lightning_dfd.preprocess import normalize_images

    return normalize_images(x[:, None].float(), "minmax")


#: DFDs scored on another's features (same encoder and weights, another distance head)
SHARED_HEADS = {"LPIPS-VGG-nolin": "LPIPS-VGG"}


def score_dfd(name: str, data: DegradationSet, chunk: int = 8, seed: int = 0,
              heads: tuple[str, ...] = (), log: Callable[[str], None] = print) -> dict[str, dict]:
    """fp32 and bf16 values of every pair, per-layer diagnostics and the encoders' CPU times.

    ``heads``: further DFDs with the same features (:data:`SHARED_HEADS`) scored on this
    encoder's features. Returns one result per DFD.
    """
    torch.manual_seed(seed)
    net = dfd_factories()[name]().eval()
    extra = {}
    for head in heads:
        torch.manual_seed(seed)
        extra[head] = dfd_factories()[head]().eval()
    targets = _normalise(data.targets)
    preds = _normalise(data.preds)
    tidx = torch.tensor([p["target"] for p in data.pairs])
    values = {h: {"fp32": [], "bf16": []} for h in (name, *heads)}
    layer_mse = {"fp32": [], "bf16": []}
    layer_err: list[list[float]] = []  # per chunk, per layer: ||bf16 - fp32|| / ||fp32||
    cpu = {"fp32": 0.0, "bf16": 0.0}

    def encode(x: Tensor, precision: str) -> list[Tensor]:
        from lightning_dfd.encoders.options import EncoderOptions

        options = EncoderOptions(channels_last=True, precision=precision)
        start = time.process_time()
        with torch.inference_mode():
            out = net(x, options)
        cpu[precision] += time.process_time() - start
        return out

    with torch.inference_mode():
        for t in range(targets.shape[0]):
            feats_t = {p: encode(targets[t : t + 1], p) for p in ("fp32", "bf16")}
            own = (tidx == t).nonzero().flatten()
            for start in range(0, own.numel(), chunk):
                sel = own[start : start + chunk]
                feats = {}
                for p in ("fp32", "bf16") if (t + start // chunk) % 2 == 0 else ("bf16", "fp32"):
                    feats[p] = encode(preds[sel], p)
                for p in ("fp32", "bf16"):
                    ft = [f.expand(len(sel), *f.shape[1:]) for f in feats_t[p]]
                    for h, head in ((name, net), *extra.items()):
                        values[h][p].append(head.distance(feats[p], ft).double())
                    layer_mse[p].append(torch.stack(
                        [(a - b).pow(2).flatten(1).mean(1).double() for a, b in zip(feats[p], ft)], 1))
                layer_err.append([float((b - a).norm() / a.norm().clamp_min(1e-30))
                                  for a, b in zip(feats["fp32"], feats["bf16"])])
            log(f"  {name}: target {t + 1}/{targets.shape[0]} "
                f"(encoder CPU s fp32 {cpu['fp32']:.0f}, bf16 {cpu['bf16']:.0f})")
    # pairs were scored target by target: back to the set's order
    order = torch.cat([(tidx == t).nonzero().flatten() for t in range(targets.shape[0])])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    mse = {p: torch.cat(v)[inverse].numpy() for p, v in layer_mse.items()}
    return {h: {"values": {p: torch.cat(v)[inverse].numpy() for p, v in vals.items()},
                "layer_mse": mse, "layer_err": np.max(np.array(layer_err), 0), "cpu": cpu,
                "images": targets.shape[0] + preds.shape[0], "encoded_with": name}
            for h, vals in values.items()}


def metric_path_check(name: str, data: DegradationSet, result: dict, n: int = 4) -> dict[str, float]:
    """Max relative difference between :func:`score_dfd` and the metric class on the first ``n``
    pairs, per precision: the set is scored as ``update`` scores it (in bf16 up to the batch
    composition: ``update`` encodes predictions and targets in one batch, oneDNN's bf16 kernels
    then block differently)."""
    import lightning_dfd as L

    kwargs = {"LPIPS-VGG": ("LPIPS", {"net": "vgg"}),
              "LPIPS-VGG-nolin": ("LPIPS", {"net": "vgg", "linear": False}),
              "LPIPS-Alex": ("LPIPS", {"net": "alex"}), "DISTS": ("DISTS", {}),
              "ResNetFD": ("ResNetFD", {}), "SSFD": ("SSFD", {}), "VAEFD": ("VAEFD", {})}[name]
    worst = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        metric = getattr(L, kwargs[0])(weights="random", reduction="none", channels_last=True,
                                       precision=precision, **kwargs[1])
        tgt = torch.stack([data.targets[p["target"]] for p in data.pairs[:n]])
        with torch.inference_mode():
            metric.update(data.preds[:n], tgt)
        got = metric.compute().double().numpy()
        ref = result["values"][precision][:n]
        worst[precision] = float(np.max(np.abs(got - ref) / np.abs(ref)))
    return worst


# -------------------------------------------------------------------------------- report


def summarise(name: str, data: DegradationSet, result: dict) -> dict:
    """Statistics of one DFD: overall, per family, per target, per (family, level), per layer."""
    f32, b16 = result["values"]["fp32"], result["values"]["bf16"]
    families = [p["family"] for p in data.pairs]
    per_family = grouped_stats(f32, b16, families)
    per_target = grouped_stats(f32, b16, [p["target"] for p in data.pairs])
    per_level = grouped_stats(f32, b16, [(p["family"], p["level"]) for p in data.pairs])
    per_layer = [rank_stats(result["layer_mse"]["fp32"][:, i], result["layer_mse"]["bf16"][:, i])
                 for i in range(result["layer_mse"]["fp32"].shape[1])]
    return {"dfd": name, "overall": rank_stats(f32, b16), "family": per_family,
            "target": per_target, "level": per_level, "layers": per_layer,
            "layer_err": result["layer_err"].tolist(),
            "bf16_speedup": result["cpu"]["fp32"] / max(result["cpu"]["bf16"], 1e-9),
            "cpu": result["cpu"], "images": result["images"]}


def _min(d: dict, key: str) -> float:
    vals = [s[key] for s in d.values() if not np.isnan(s[key])]
    return min(vals) if vals else float("nan")


def markdown(summaries: list[dict], data: DegradationSet, meta: list[str]) -> list[str]:
    """The RESULTS.md section."""
    fams = list(dict.fromkeys(p["family"] for p in data.pairs))
    lines = [f"<!-- section:{SECTION} -->", "## bf16 rank fidelity (issue 13)", "",
             *[f"- {m}" for m in meta], *[f"- {n}" for n in data.notes], "",
             f"Bar: Spearman(bf16, fp32) >= {SPEARMAN_BAR} over all {len(data.pairs)} pairs. "
             "'discordant' counts the pairs of pairs that bf16 orders differently from fp32 (of "
             f"{len(data.pairs) * (len(data.pairs) - 1) // 2}). 'min per target' is the worst "
             "Spearman among the 26 reconstructions of one target; 'min per level' among the "
             f"{len(data.pairs) // 26} targets of one degradation (family and level), the hardest "
             "ranking (values close to each other). 'enc. x' is fp32/bf16 encoder CPU time over "
             "the whole set (batches of 8 at this size; the speed rows above are the "
             "authoritative figures).", "",
             "| DFD | Spearman | Kendall tau | discordant | max abs diff | max rel diff | "
             + " | ".join(f"Spearman {f}" for f in fams)
             + " | min per target | min per level | enc. x | bar |",
             "|---|" + "---:|" * (8 + len(fams)) + "---|"]
    for s in summaries:
        o = s["overall"]
        ok = o["spearman"] >= SPEARMAN_BAR
        lines.append(
            f"| {s['dfd']} | {o['spearman']:.6f} | {o['kendall']:.5f} | {o['discordant']} | "
            f"{o['max_abs']:.1e} | {o['max_rel']:.1e} | "
            + " | ".join(f"{s['family'][f]['spearman']:.5f}" for f in fams)
            + f" | {_min(s['target'], 'spearman'):.4f} | {_min(s['level'], 'spearman'):.3f} | "
            f"{s['bf16_speedup']:.1f} | {'met' if ok else '**missed**'} |")
    lines += ["", "Per layer (where a ranking would be lost): max over batches of the relative "
              "feature error ||bf16 - fp32|| / ||fp32||, and Spearman(bf16, fp32) of the "
              "per-layer MSE between prediction and target features.", "",
              "| DFD | layer | rel. feature error | Spearman of layer MSE | discordant |",
              "|---|---:|---:|---:|---:|"]
    for s in summaries:
        for i, (err, st) in enumerate(zip(s["layer_err"], s["layers"], strict=True)):
            lines.append(f"| {s['dfd']} | {i + 1} | {err:.1e} | {st['spearman']:.6f} | "
                         f"{st['discordant']} |")
    lines += [f"<!-- end:{SECTION} -->"]
    return lines


def replace_section(path: Path, lines: list[str], name: str) -> None:
    """Put a ``<!-- section:name -->`` ... ``<!-- end:name -->`` block into ``path``, replacing
    the old one or appending it."""
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- section:{name} -->", f"<!-- end:{name} -->"
    block = "\n".join(lines)
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def write_pairs_csv(path: Path, data: DegradationSet, results: dict[str, dict]) -> None:
    """One row per DFD and pair: the pair's description and both values."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dfd", "pair", "target", "family", "level", "fp32", "bf16", "abs_diff"])
        for name, r in results.items():
            for i, p in enumerate(data.pairs):
                a, b = r["values"]["fp32"][i], r["values"]["bf16"][i]
                w.writerow([name, i, p["target"], p["family"], p["level"], f"{a:.9g}", f"{b:.9g}",
                            f"{abs(a - b):.3g}"])


def cpu_model() -> str:
    """The ``model name`` of /proc/cpuinfo and the bf16 flags found."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                  if ln.startswith("model name")), "unknown CPU")
    flags = sorted({f for f in ("amx_bf16", "avx512_bf16") if f in text})
    return f"{model} ({', '.join(flags) or 'no bf16 instructions'})"


def main(argv: list[str] | None = None) -> int:
    """Build the set, score every DFD, write the CSV and the RESULTS.md section."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.fidelity", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--targets", type=int, default=8)
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--unet-steps", default="30,100,250")
    p.add_argument("--train-size", type=int, default=160)
    p.add_argument("--dfds", default=",".join(dfd_factories()))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set-cache", type=Path, default=None,
                   help="save the degradation set here, or load it if the file exists")
    p.add_argument("--append", action="store_true",
                   help="keep the DFDs of an earlier run in --out (fidelity.pt) and add these")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def log(m: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)

    load0, t0 = tuple(round(v, 1) for v in os.getloadavg()), time.time()
    if args.set_cache is not None and args.set_cache.exists():
        data = DegradationSet(**torch.load(args.set_cache, weights_only=False))
        log(f"degradation set loaded from {args.set_cache}")
    else:
        log("building the degradation set")
        data = build_degradation_set(args.targets, args.size,
                                     unet_steps=tuple(int(s) for s in args.unet_steps.split(",")),
                                     train_size=args.train_size, log=log)
        if args.set_cache is not None:
            torch.save(vars(data), args.set_cache)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "fidelity.pt"
    state = {"results": {}, "checks": {}, "runs": []}
    if args.append and state_path.exists():
        state = torch.load(state_path, weights_only=False)
    results, checks = state["results"], state["checks"]
    names = args.dfds.split(",")
    for name in names:
        if name in SHARED_HEADS and SHARED_HEADS[name] in names:
            continue  # scored with its encoder's features
        heads = tuple(h for h, enc in SHARED_HEADS.items() if enc == name and h in names)
        log(f"{name}{' (+ ' + ', '.join(heads) + ')' if heads else ''}: scoring "
            f"{len(data.pairs)} pairs in fp32 and bf16")
        scored = score_dfd(name, data, chunk=4 if name == "VAEFD" else 8, heads=heads, log=log)
        for head, result in scored.items():
            results[head] = result
            checks[head] = metric_path_check(head, data, result)
            o = summarise(head, data, result)["overall"]
            log(f"  {head}: Spearman {o['spearman']:.6f}, Kendall {o['kendall']:.5f}, "
                f"discordant {o['discordant']}, max rel {o['max_rel']:.1e}; metric path check "
                f"{checks[head]}")
        _write(args, data, state, checks, load0, t0, argv)
    return 0


def _write(args, data: DegradationSet, state: dict, checks: dict, load0, t0, argv) -> None:
    """CSV, state file and the RESULTS.md section for every DFD scored so far."""
    results = state["results"]
    order = [n for n in dfd_factories() if n in results]
    summaries = [summarise(n, data, results[n]) for n in order]
    load1 = tuple(round(v, 1) for v in os.getloadavg())
    meta = [f"Generated by `python -m benchmarks.fidelity {' '.join(argv or sys.argv[1:])}` on "
            f"{datetime.datetime.now():%Y-%m-%d %H:%M} ({(time.time() - t0) / 60:.1f} min); CPU: "
            f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; load "
            f"average (1, 5, 15 min) {load0} at start, {load1} at end (shared machine).",
            "Weights: `weights=\"random\"` (torchvision/our initialisation, seed 0; no pretrained "
            "weights exist offline). What this shows: bf16 rounding of these architectures "
            "(same layers, same activation statistics at initialisation scale, the same "
            "normalisations and distances) keeps or loses the ordering of graded degradations. "
            "What it does not prove: trained weights have other activation ranges (e.g. "
            "ImageNet VGG's large early activations, Med-VAE's latents), so the figures must be "
            "re-measured with the real checkpoints (`python -m benchmarks.fidelity` after "
            "registering them; the DFD names map to the metrics with their default weights).",
            "bf16 = `precision='bf16'` (torch.autocast bf16 around the encoder, "
            "channels_last, features returned as float32, distance in fp32); fp32 = "
            "channels_last fp32. Values agree with the metric classes' `update` (first 4 pairs, "
            "relative): fp32 to " + f"{max(c['fp32'] for c in checks.values()):.0e}, bf16 to "
            + f"{max(c['bf16'] for c in checks.values()):.0e} (there `update` encodes predictions "
            "and targets in one batch; oneDNN's bf16 results depend slightly on the batch)."]
    run = meta[0]
    command = run.split("` on ")[0]  # a rewrite of this run replaces its own line
    state["runs"] = [r for r in state["runs"] if r.split("` on ")[0] != command] + [run]
    meta = [*state["runs"][:-1], *meta] if args.append else meta
    torch.save(state, args.out / "fidelity.pt")
    write_pairs_csv(args.out / "fidelity.csv", data, {n: results[n] for n in order})
    replace_section(args.out / "RESULTS.md", markdown(summaries, data, meta), SECTION)
    print(f"[{time.strftime('%H:%M:%S')}] wrote {args.out / 'fidelity.csv'} and the '{SECTION}' "
          f"section of {args.out / 'RESULTS.md'}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
