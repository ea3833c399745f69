"""``recon-train`` end to end: the shipped configs through LightningCLI, early stopping, DDP."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from recon_models.cli import run_cli
from recon_models.data.synthetic import make_synthetic_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
METRIC_COLUMNS = ["val/psnr", "val/ssim", "val/nmse", "val/lpips_vgg", "val/dists",
                  "val/resnet_fd", "val/loss"]
RANDOM_DFDS = {name: {"weights": "random"} for name in ("lpips_vgg", "dists", "resnet_fd")}
TINY_NETWORKS = {
    "unet": {"chans": 4, "num_pool_layers": 2},
    "unrolled": {"num_unrolls": 2, "chans": 8, "num_res_blocks": 1},
}


pytestmark = pytest.mark.usefixtures("single_thread_cli", "in_tmp_folder")


@pytest.fixture
def in_tmp_folder(tmp_path, monkeypatch):
    """Run from the test's folder: the shipped configs write runs/<config>/ relative to it."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def knee_data(tmp_path_factory) -> dict[str, str]:
    """1 training volume of 2 slices; 3 validation volumes (an odd number) of 2-3 slices."""
    root = tmp_path_factory.mktemp("knee")
    size = {"coils": 2, "shape": (32, 16), "recon_shape": (16, 16)}
    make_synthetic_dataset(root / "train", 1, slices=2, seed=0, **size)
    make_synthetic_dataset(root / "val", 3, slices=(2, 3), seed=1, **size)
    return {"train_path": str(root / "train"), "val_path": str(root / "val")}


def _override(tmp_path: Path, knee_data, network: str, dfds=None, callbacks=None,
              **model) -> Path:
    """A second config, on top of a shipped one: tiny network and data, logs in tmp_path."""
    trainer = {
        "accelerator": "cpu", "devices": 1, "max_epochs": 1, "enable_progress_bar": False,
        "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
        "logger": [
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": str(tmp_path), "name": "csv"}},
            {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
             "init_args": {"save_dir": str(tmp_path), "name": "tensorboard"}},
        ],
    }  # fmt: skip
    if callbacks is not None:
        trainer["callbacks"] = callbacks
    config = {
        "trainer": trainer,
        "model": {"network_kwargs": TINY_NETWORKS[network],
                  "dfds": RANDOM_DFDS if dfds is None else dfds, **model},
        "data": {"data_path": None, **knee_data, "sens_method": "rss", "num_workers": 0},
    }
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _metrics(log_dir: str | Path) -> pd.DataFrame:
    return pd.read_csv(Path(log_dir) / "metrics.csv")


@pytest.mark.parametrize("network", ["unet", "unrolled"])
def test_fit_then_validate_writes_metric_columns(tmp_path, knee_data, network):
    shipped = str(CONFIGS / f"{network}.yaml")
    override = str(_override(tmp_path, knee_data, network))
    fit = run_cli(["fit", "--config", shipped, "--config", override])
    assert fit.model.hparams.network == network
    assert fit.model.hparams.lr == 1e-4 and fit.model.hparams.weight_decay == 1e-4
    fit_metrics = _metrics(fit.trainer.log_dir)
    assert set(METRIC_COLUMNS) <= set(fit_metrics.columns)
    fit_row = fit_metrics.dropna(subset=["val/psnr"]).iloc[-1]
    assert fit.summary["best_checkpoint"] and Path(fit.summary["best_checkpoint"]).exists()
    # The shipped config's ModelCheckpoint (runs/<network>/checkpoints) lands in the test's folder,
    # never in the checkout, where a user's `--ckpt_path last` would resume the test's network.
    assert Path(fit.summary["best_checkpoint"]).resolve().is_relative_to(tmp_path.resolve())
    assert fit.summary["checkpoint_monitor"] == "val/lpips_vgg"

    validate = run_cli(["validate", "--config", shipped, "--config", override,
                     "--ckpt_path", fit.summary["best_checkpoint"]])
    assert validate.trainer.log_dir != fit.trainer.log_dir
    row = _metrics(validate.trainer.log_dir).dropna(subset=["val/psnr"]).iloc[-1]
    for column in METRIC_COLUMNS:  # the best (only) epoch's checkpoint scores the same again
        assert row[column] == pytest.approx(fit_row[column], rel=1e-5), column
    assert 0 < row["val/ssim"] <= 1 and row["val/psnr"] > 0


@pytest.mark.slow
def test_early_stopping_on_a_dfd_reports_stopped_epoch_and_best_checkpoint(
    tmp_path, knee_data, capsys
):
    # lr = 0: the model never changes, so val/lpips_vgg stops improving after the first epoch
    callbacks = [
        {"class_path": "lightning_dfd.callbacks.DFDEarlyStopping",
         "init_args": {"monitor": "val/lpips_vgg", "patience": 1}},
        {"class_path": "lightning_dfd.callbacks.DFDModelCheckpoint",
         "init_args": {"monitor": "val/lpips_vgg", "dirpath": str(tmp_path / "ckpt"),
                       "filename": "best-{epoch}", "auto_insert_metric_name": False}},
    ]  # fmt: skip
    override = _override(tmp_path, knee_data, "unet", dfds={"lpips_vgg": {"weights": "random"}},
                         callbacks=callbacks, lr=0.0)
    cli = run_cli(["fit", "--config", str(CONFIGS / "unet.yaml"), "--config", str(override),
                "--trainer.max_epochs", "5"])
    assert cli.trainer.current_epoch == 2  # epochs 0 and 1 ran, not 5
    assert cli.summary["stopped_epoch"] == 1
    assert cli.summary["best_checkpoint"] == str(tmp_path / "ckpt" / "best-0.ckpt")
    logged = _metrics(cli.trainer.log_dir)["val/lpips_vgg"].dropna()
    # equal up to float rounding: epoch 1 reuses cached target features (another batch layout)
    assert len(logged) == 2 and logged.iloc[0] == pytest.approx(logged.iloc[1], rel=1e-6)
    out = capsys.readouterr().out
    assert "early stopping on val/lpips_vgg: stopped at epoch 1" in out
    assert f"best checkpoint (val/lpips_vgg = {logged.iloc[0]:.6g}): " in out
