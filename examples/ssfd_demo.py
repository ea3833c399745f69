"""SSFD end to end: pretrain the SSFD encoder by inpainting, then train a UNet that logs SSFD.

1. Synthetic fastMRI multi-coil volumes are written (unless the data folder already holds some).
2. ``SSFDPretrainModule`` inpaints their fully sampled references (16x16 patches over 50 % of each
   image, L2 loss) from ``examples/configs/ssfd_pretrain.yaml`` and, at the end of fit, writes the
   encoder of its best checkpoint in the published SSFD layout.
3. ``ReconModule`` trains a UNet from ``examples/configs/unet_ssfd.yaml``: ``val/ssfd`` uses that
   fresh encoder, is logged with PSNR / SSIM / NMSE / LPIPS every epoch and drives early stopping
   and checkpointing.

The configs hold the paper's settings; this script shrinks epochs and the UNet to run on a CPU in a
few minutes (see ``--help``). LPIPS uses ImageNet VGG-16 weights when the file is available
offline, random weights otherwise (said on screen).

    python examples/ssfd_demo.py
    python examples/ssfd_demo.py --pretrain-epochs 20 --recon-epochs 10 --accelerator gpu
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI

from lightning_dfd import weights as W
from recon_models.data import FastMRIDataModule
from recon_models.data.synthetic import make_synthetic_dataset
from recon_models.modules.ssfd_pretrain import SSFDPretrainModule

CONFIGS = Path(__file__).resolve().parent / "configs"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synthetic_knee", help="fastMRI-format folder")
    parser.add_argument("--out", default="runs/ssfd_demo", help="where runs and the encoder go")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--recon-epochs", type=int, default=3)
    parser.add_argument("--unet-chans", type=int, default=8, help="paper: 32")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sens-method", default="espirit", choices=("espirit", "jsense", "rss"))
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="1")
    return parser.parse_args(argv)


@contextlib.contextmanager
def own_argv() -> Iterator[None]:
    """Hide this script's options from LightningCLI, which is given its own ``args``."""
    saved = sys.argv[:]
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = saved


def ensure_data(folder: Path) -> None:
    """Write 6 small synthetic volumes (128x64 k-space, 64x64 reconSpace) when none exist."""
    if any(folder.glob("*.h5")):
        print(f"[data] using the volumes in {folder}")
        return
    files = make_synthetic_dataset(folder, volumes=6, slices=4, coils=4, shape=(128, 64),
                                   recon_shape=(64, 64))
    print(f"[data] wrote {len(files)} synthetic volumes to {folder}")


def loggers(save_dir: Path) -> list[dict]:
    return [
        {"class_path": "lightning.pytorch.loggers.CSVLogger",
         "init_args": {"save_dir": str(save_dir), "name": "csv"}},
        {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
         "init_args": {"save_dir": str(save_dir), "name": "tensorboard"}},
    ]


def write_config(name: str, out: Path, edit) -> Path:
    """Load ``examples/configs/<name>``, apply ``edit(config)``, write it under ``out``."""
    config = yaml.safe_load((CONFIGS / name).read_text())
    edit(config)
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def trainer_overrides(args: argparse.Namespace, config: dict, epochs: int, run: Path) -> None:
    trainer = config["trainer"]
    trainer.update(accelerator=args.accelerator, devices=args.devices, max_epochs=epochs,
                   log_every_n_steps=1, logger=loggers(run))
    for callback in trainer.get("callbacks", []):
        if callback["class_path"].endswith("ModelCheckpoint"):
            callback["init_args"]["dirpath"] = str(run / "checkpoints")
    config["data"].update(data_path=args.data, sens_method=args.sens_method,
                          batch_size=args.batch_size, num_workers=0)


def pretrain(args: argparse.Namespace, out: Path) -> Path:
    run, encoder = out / "ssfd_pretrain", out / "ssfd_encoder.ckpt"

    def edit(config: dict) -> None:
        trainer_overrides(args, config, args.pretrain_epochs, run)
        config["model"]["export_path"] = str(encoder)

    path = write_config("ssfd_pretrain.yaml", out, edit)
    print(f"\n[1/2] SSFD pretraining ({args.pretrain_epochs} epochs), config {path}")
    with own_argv():
        cli = LightningCLI(SSFDPretrainModule, FastMRIDataModule,
                           args=["fit", "--config", str(path)],
                           save_config_kwargs={"overwrite": True})
    metrics = cli.trainer.callback_metrics
    print(f"[1/2] inpainting val/loss {float(metrics.get('val/loss', math.nan)):.4f}; "
          f"encoder written to {cli.model.exported_path}")
    return encoder


def lpips_weights() -> str:
    state, _ = W.status(W.get_spec("vgg16-imagenet"))
    if state.startswith("found"):
        return "imagenet"
    print("[2/2] vgg16-imagenet weights not available offline: LPIPS uses random weights")
    return "random"


def train_recon(args: argparse.Namespace, out: Path, encoder: Path) -> None:
    from recon_models.cli import main as recon_main

    run = out / "unet_ssfd"

    def edit(config: dict) -> None:
        trainer_overrides(args, config, args.recon_epochs, run)
        config["model"]["network_kwargs"]["chans"] = args.unet_chans
        config["model"]["dfds"] = {"ssfd": {"weights": str(encoder)},
                                   "lpips_vgg": {"weights": lpips_weights()}}

    path = write_config("unet_ssfd.yaml", out, edit)
    print(f"\n[2/2] UNet reconstruction logging SSFD ({args.recon_epochs} epochs), config {path}")
    with own_argv():
        recon_main(["fit", "--config", str(path)])
    print_metrics(run / "csv")


def print_metrics(csv_root: Path) -> None:
    """The per-epoch validation metrics of the last CSV log under ``csv_root``."""
    logs = sorted(csv_root.glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        return
    with logs[-1].open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/ssfd")]
    names = [n for n in ("val/ssfd", "val/lpips_vgg", "val/psnr", "val/ssim") if n in rows[0]]
    print("\nepoch  " + "  ".join(f"{n:>14}" for n in names))
    for row in rows:
        print(f"{row['epoch']:>5}  " + "  ".join(f"{float(row[n]):14.5g}" for n in names))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    ensure_data(Path(args.data))
    encoder = pretrain(args, out)
    train_recon(args, out, encoder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
