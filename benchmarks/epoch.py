"""A validation epoch of the UNet on synthetic fastMRI-format data, with and without DFDs.

The data are written by :mod:`recon_models.data.synthetic` at fastMRI knee size (k-space
640x368, ``reconSpace`` 320x320, where the metrics are computed) and read by the project's own
:class:`~recon_models.data.FastMRIDataModule` (RSS maps, no ESPIRiT, so map estimation is not in
the epoch). Each variant is its own :class:`~recon_models.modules.ReconModule` with the same
seeded UNet; ``trainer.validate`` is timed (wall clock, and on the CPU the process's CPU time:
with ``num_workers=0`` all of the epoch runs in this process), variants interleaved round by
round. The first round is a warm-up (and fills the target-feature caches); the overhead of a
variant is the median over rounds of ``t_variant / t_no_dfd - 1``, on CPU time on the CPU (see
:mod:`benchmarks.metric_bench` for why) and on wall time on a GPU.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks import references as R
from benchmarks.common import median

#: fastMRI knee: 640x368 k-space, 320x320 reconSpace
FULL_SHAPE, RECON_SHAPE = (640, 368), (320, 320)
UNET = {"chans": 32, "num_pool_layers": 4, "drop_prob": 0.0}  # examples/configs/unet.yaml


def suite(cached: bool | dict = False, channels_last: bool = False,
          precision: str = "fp32") -> dict[str, dict[str, Any]]:
    """The default DFD suite (LPIPS-VGG, DISTS, ResNetFD) on the benchmark's random weights.

    ``cached``: False, True (each metric its own default 2 GiB cache) or a ``TargetFeatureCache``
    keyword dict.
    """
    paths = R.checkpoint_paths()
    options: dict[str, Any] = {"feature_cache": cached, "precision": precision}
    if channels_last:
        options["channels_last"] = True
    return {
        "lpips_vgg": {"weights": str(paths["vgg16"]), **options},
        "dists": {"weights": str(paths["vgg16"]), **options},
        "resnet_fd": {"weights": str(paths["resnet50"]), **options},
    }


#: a cache that holds a whole 90-slice set of LPIPS-VGG / DISTS target features, stored in bf16
BF16_CACHE = {"max_bytes": 3 << 30, "store_dtype": "bf16"}

#: name -> (DFD suite, ReconModule keywords). The first is the baseline; issue 13's four rows:
#: no DFDs; fp32 on every slice (ReconModule's default cache: 2 GiB per metric, "keep" policy);
#: bf16 on every slice with a cache that holds the set; bf16 on each volume's centre slice only
#: (the paper's protocol; PSNR/SSIM/NMSE still on every slice).
VARIANTS: dict[str, Any] = {
    "no DFDs (PSNR/SSIM/NMSE only)": lambda: ({}, {}),
    "fp32, every slice, default cache (2 GiB per metric)": lambda: (suite(cached=True), {}),
    "bf16, every slice, cached (3 GiB bf16 store per metric)":
        lambda: (suite(cached=BF16_CACHE, precision="bf16"), {}),
    "bf16, centre slice, cached": lambda: (suite(cached=BF16_CACHE, precision="bf16"),
                                           {"dfd_slices": "center"}),
    "bf16 + compile=True, every slice, cached (3 GiB bf16 store per metric)":
        lambda: ({k: {**v, "compile": True} for k, v in suite(cached=BF16_CACHE, precision="bf16").items()},
                 {}),
}


def make_data(root: Path, volumes: int, slices: int, coils: int) -> Path:
    """Write the validation volumes (once) and return their folder."""
    from recon_models.data.synthetic import make_synthetic_dataset

    folder = root / "val"
    if not folder.is_dir():
        make_synthetic_dataset(folder, volumes=volumes, slices=slices, coils=coils,
                               shape=FULL_SHAPE, recon_shape=RECON_SHAPE, seed=1)
    return folder


def datamodule(folder: Path, batch_size: int):
    """The project's data module over ``folder`` (validation only)."""
    from recon_models.data import FastMRIDataModule

    return FastMRIDataModule(val_path=str(folder), sens_method="rss", batch_size=batch_size,
                             cache_dir=str(folder.parent / "maps_cache"), num_workers=0)


def build_module(dfds: dict, module_cls=None, **module_kwargs: Any):
    """A ReconModule with the paper's UNet (seeded: every variant has the same weights)."""
    from recon_models.modules import ReconModule

    torch.manual_seed(0)
    cls = module_cls or ReconModule
    return cls(network="unet", network_kwargs=dict(UNET), dfds=dfds, log_images_every_n_epochs=0,
               **module_kwargs)


def quiet_lightning() -> None:
    """Silence Lightning's per-call banners and data-loader advice."""
    import lightning.pytorch  # noqa: F401 - creates its loggers

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*sync_dist.*")


def trainer(device: torch.device, **kwargs):
    """A bare Trainer for ``validate``: no logger, checkpoints, progress bar or summary."""
    from lightning.pytorch import Trainer

    return Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                   enable_progress_bar=False, enable_checkpointing=False,
                   enable_model_summary=False, **kwargs)


def validate_seconds(module, data, device: torch.device, **trainer_kwargs: Any) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one ``trainer.validate`` epoch."""
    t = trainer(device, **trainer_kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    t.validate(module, datamodule=data, verbose=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def flop_rows(folder: Path) -> list[dict]:
    """Forward FLOPs per slice (``torch.utils.flop_counter``): the UNet vs each DFD encoder.

    Hardware-independent: the encoders' share is a lower bound of the suite's overhead wherever
    the epoch is compute-bound, whatever the implementation (the cached floor is one encoder pass
    over each prediction).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from lightning_dfd.metrics import DeepFeatureDistance

    data = datamodule(folder, batch_size=1)
    data.prepare_data()
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    module = build_module(suite())
    counts: dict[str, int] = {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            module(batch.masked_kspace, batch.mask, batch.maps)
        counts[f"UNet forward ({FULL_SHAPE[0]}x{FULL_SHAPE[1]} k-space)"] = counter.get_total_flops()
        image = torch.rand(1, 1, *RECON_SHAPE)
        for name, metric in module.val_metrics.items(keep_base=True, copy_state=False):
            if isinstance(metric, DeepFeatureDistance):
                with FlopCounterMode(display=False) as counter:
                    metric.network(image)
                counts[f"{name} encoder, one {RECON_SHAPE[0]}x{RECON_SHAPE[1]} image"] = \
                    counter.get_total_flops()
    unet = next(iter(counts.values()))
    return [{"section": "flops", "group": "FLOPs per slice", "case": name, "gflops": flops / 1e9,
             "overhead": flops / unet if i else None,
             "notes": "convolutions and matrix products (FFTs, pointwise ops not counted)"}
            for i, (name, flops) in enumerate(counts.items())]


def bench_epoch(root: Path, device: torch.device, volumes: int, slices: int, coils: int,
                batch_size: int, rounds: int, log=print, variants: list[int] | None = None) -> list[dict]:
    """Rows ``{case, median_s, overhead, images, ...}`` for every variant (or those numbered)."""
    quiet_lightning()
    names = list(VARIANTS)
    chosen = [names[0], *(names[i] for i in (variants or range(1, len(names))) if i)]
    folder = make_data(root, volumes, slices, coils)
    flops = flop_rows(folder)
    data = datamodule(folder, batch_size)
    data.prepare_data()
    modules, options = {}, {}
    for name in chosen:
        dfds, module_kwargs = VARIANTS[name]()
        modules[name] = build_module(dfds, **module_kwargs)
        options[name] = list(dfds.values())
    base = next(iter(VARIANTS))
    wall: dict[str, list[float]] = {name: [] for name in chosen}
    cpu: dict[str, list[float]] = {name: [] for name in chosen}
    first: dict[str, tuple[float, float]] = {}
    for rnd in range(rounds + 1):  # round 0: warm-up; a full epoch where a cache must be filled
        for name, module in modules.items():
            dfds = options[name]
            cached = any(m.get("feature_cache") for m in dfds)
            # a compiled encoder meets a new shape in epoch 2 (predictions only: targets cached)
            warmups = 2 if any(m.get("compile") for m in dfds) and not rnd else 1
            for _ in range(warmups):
                limit = {} if rnd or cached else {"limit_val_batches": 2}
                seconds, cpu_seconds = validate_seconds(module, data, device, **limit)
                if rnd:
                    wall[name].append(seconds)
                    cpu[name].append(cpu_seconds)
                elif cached and name not in first:
                    first[name] = (seconds, cpu_seconds)
                log(f"  epoch round {rnd}{' (warm-up)' if not rnd else ''}: {name} "
                    f"{seconds:.1f} s wall, {cpu_seconds:.1f} s CPU")
    times = cpu if device.type == "cpu" else wall
    images = volumes * slices
    rows = []
    for name in chosen:
        t = times[name]
        rows.append({
            "section": "epoch", "group": "UNet validation epoch", "case": name,
            "device": device.type, "height": RECON_SHAPE[0], "width": RECON_SHAPE[1],
            "batch": batch_size, "median_s": median(wall[name]), "cpu_s": median(cpu[name]),
            "images_per_s": images / median(wall[name]),
            "overhead": median([a / b - 1 for a, b in zip(t, times[base], strict=True)]),
            "overhead_wall": median([a / b - 1 for a, b in zip(wall[name], wall[base],
                                                                strict=True)]),
            "repeats": rounds,
            "first_epoch_cpu_s": first.get(name, (None, None))[1],
            "notes": f"{images} slices ({volumes} volumes x {slices}), k-space "
                     f"{FULL_SHAPE[0]}x{FULL_SHAPE[1]}, {coils} coils, metrics on the "
                     f"{RECON_SHAPE[0]}x{RECON_SHAPE[1]} crop",
        })
    return rows + flops
