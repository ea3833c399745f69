"""Resume: a run killed with SIGKILL mid-epoch continues from ``last.ckpt`` as if never killed.

The end-to-end test runs ``recon-train fit`` three times in subprocesses (``OMP_NUM_THREADS=1``):
an uninterrupted 3-epoch run; the same run killed with ``SIGKILL`` in the middle of its second
epoch (after the first epoch's ``last.ckpt`` was written); and ``--ckpt_path last`` resuming it.
The resumed run must end where the uninterrupted one ended: epoch and step, network weights,
Adam state, StepLR state, early-stopping counter and best score, per-step training losses
(same masks and shuffles: :class:`RNGStateCheckpoint`) and validation metrics, to 1e-5. Its
target features come back from the on-disk feature cache (no miss), with the same values.

Smaller tests: the RNG callback, the LR scheduler option, and checkpoints that hold no encoder
weights and load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from lightning_dfd.callbacks import DFDEarlyStopping
from recon_models.data import FastMRIDataModule
from recon_models.data.synthetic import make_synthetic_dataset
from recon_models.modules import ReconModule
from recon_models.modules.callbacks import RNGStateCheckpoint
from tests.ddp import run_ddp
from tests.reliability_worker import KILL_ENV

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "configs" / "unet.yaml"
TINY_UNET = {"chans": 4, "num_pool_layers": 2}
RANDOM_DFDS = {"lpips_vgg": {"weights": "random", "max_batch": 2},
               "resnet_fd": {"weights": "random", "max_batch": 2}}
STEPS_PER_EPOCH = 4  # 2 training volumes x 2 slices, batch size 1
KILL_AT_STEP = STEPS_PER_EPOCH + 2  # the middle of the second epoch (epoch index 1)
MAX_EPOCHS = 3
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread_cli")


@pytest.fixture(scope="module")
def knee_data(tmp_path_factory) -> dict[str, str]:
    """2 training volumes of 2 slices, 1 validation volume of 3 slices (2 coils, 32x16)."""
    root = tmp_path_factory.mktemp("resume_knee")
    size = {"coils": 2, "shape": (32, 16), "recon_shape": (16, 16)}
    make_synthetic_dataset(root / "train", 2, slices=2, seed=5, **size)
    make_synthetic_dataset(root / "val", 1, slices=3, seed=6, **size)
    return {"train_path": str(root / "train"), "val_path": str(root / "val")}


# ----------------------------------------------------------------------------- small pieces


def _draws() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_rng_state_checkpoint_restores_torch_numpy_and_python_after_weights_only_load(tmp_path):
    callback = RNGStateCheckpoint()
    torch.save({"rng": callback.state_dict()}, tmp_path / "rng.ckpt")
    expected = _draws()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)  # anything else in between
    callback.load_state_dict(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    assert _draws() != expected  # loading alone changes nothing...
    assert callback.restore() is True  # ...the states are applied when training starts
    assert _draws() == expected
    assert callback.restore() is False  # applied once


def test_rng_state_checkpoint_skips_states_of_another_world_size_with_a_warning():
    callback = RNGStateCheckpoint()
    callback.load_state_dict({"world_size": 2, "states": [{}, {}]})
    with pytest.warns(UserWarning, match="2 processes but this run has 1"):
        assert callback.restore() is False


def test_recon_module_lr_scheduler_options():
    plain = ReconModule("unet", TINY_UNET, dfds={})
    assert isinstance(plain.configure_optimizers(), torch.optim.Adam)  # the paper: no scheduler
    step = ReconModule("unet", TINY_UNET, dfds={}, lr_scheduler="step",
                       lr_scheduler_kwargs={"step_size": 2, "gamma": 0.1})
    config = step.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert (scheduler.step_size, scheduler.gamma) == (2, 0.1)
    assert config["lr_scheduler"]["interval"] == "epoch"
    cosine = ReconModule("unet", TINY_UNET, dfds={}, lr_scheduler="cosine",
                         lr_scheduler_kwargs={"T_max": 7})
    assert cosine.configure_optimizers()["lr_scheduler"]["scheduler"].T_max == 7
    with pytest.raises(ValueError, match="Argument `lr_scheduler` must be None or one of"):
        ReconModule("unet", TINY_UNET, dfds={}, lr_scheduler="plateau")
    wrong = ReconModule("unet", TINY_UNET, dfds={}, lr_scheduler="step",
                        lr_scheduler_kwargs={"steps": 3})
    with pytest.raises(ValueError, match="`lr_scheduler_kwargs`.*does not fit"):
        wrong.configure_optimizers()
    assert any(isinstance(c, RNGStateCheckpoint) for c in plain.configure_callbacks())


def _fit_one_step(tmp_path: Path, knee_data, dfds) -> Path:
    torch.manual_seed(0)
    module = ReconModule("unet", TINY_UNET, dfds=dfds, lr_scheduler="step",
                         log_images_every_n_epochs=0)
    datamodule = FastMRIDataModule(**knee_data, sens_method="rss", num_workers=0)
    callbacks = [DFDEarlyStopping(monitor="val/loss", patience=3)]
    if dfds:
        callbacks.append(DFDEarlyStopping(monitor=f"val/{next(iter(dfds))}", patience=3))
    trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=2,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(module, datamodule)  # validation ran: feature caches are filled
    path = tmp_path / f"{len(dfds)}-dfds.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoints_hold_no_encoder_weights_and_load_weights_only(tmp_path, knee_data):
    dfds = {name: {"weights": "random"} for name in ("lpips_vgg", "dists", "resnet_fd")}
    with_dfds = _fit_one_step(tmp_path, knee_data, dfds)
    without = _fit_one_step(tmp_path, knee_data, {})
    # A VGG-16 alone would add ~60 MB; the tiny UNet checkpoint is a few hundred kB.
    assert abs(with_dfds.stat().st_size / without.stat().st_size - 1) < 0.05
    checkpoint = torch.load(with_dfds, weights_only=True)  # tensors, numbers, strings only
    assert all(key.startswith("network.") for key in checkpoint["state_dict"])
    assert "RNGStateCheckpoint" in checkpoint["callbacks"]
    assert checkpoint["lr_schedulers"][0]["step_size"] == 10
    module = ReconModule.load_from_checkpoint(with_dfds, weights_only=True)
    assert sorted(module.val_metrics.keys(keep_base=True)) == [
        "dists", "lpips_vgg", "nmse", "psnr", "resnet_fd", "ssim"]
    # Metric encoders are frozen submodules: present, never trainable, never checkpointed.
    assert not [name for name, p in module.named_parameters()
                if p.requires_grad and not name.startswith("network.")]


# ----------------------------------------------------------------------- SIGKILL and resume


def _config(run_dir: Path, knee_data) -> Path:
    """Tiny UNet, StepLR, 2 random DFDs on a disk feature cache, early stopping, last.ckpt."""
    callbacks = [
        # min_delta makes every epoch after the first a non-improvement: the patience counter
        # grows (0, 1, 2) and the best score stays epoch 0's; patience 10 never stops the run.
        {"class_path": "lightning_dfd.callbacks.DFDEarlyStopping",
         "init_args": {"monitor": "val/lpips_vgg", "patience": 10, "min_delta": 1.0}},
        {"class_path": "lightning_dfd.callbacks.DFDModelCheckpoint",
         "init_args": {"monitor": "val/lpips_vgg", "dirpath": str(run_dir / "ckpt"),
                       "filename": "best-{epoch}", "save_last": True}},
        {"class_path": "tests.reliability_worker.DiskFeatureCache",
         "init_args": {"directory": str(run_dir / "feature_cache")}},
        {"class_path": "tests.reliability_worker.KillAtStep"},
    ]  # fmt: skip
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": MAX_EPOCHS,
            "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "log_every_n_steps": 1, "callbacks": callbacks,
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(run_dir), "name": "csv"}}],
        },
        "model": {"network_kwargs": TINY_UNET, "lr": 1e-2, "lr_scheduler": "step",
                  "lr_scheduler_kwargs": {"step_size": 1, "gamma": 0.5}, "dfds": RANDOM_DFDS,
                  "log_images_every_n_epochs": 0},
        "data": {"data_path": None, **knee_data, "sens_method": "rss", "batch_size": 1,
                 "num_workers": 0},
    }  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(run_dir: Path, knee_data, *extra: str, kill_at: int | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "recon_models.cli", "fit", "--config", str(SHIPPED),
               "--config", str(_config(run_dir, knee_data)), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop(KILL_ENV, None)
    if kill_at is not None:
        env[KILL_ENV] = str(kill_at)
    return subprocess.Popen(command, cwd=run_dir, env=env, stdout=subprocess.PIPE,  # out of the checkout
                            stderr=subprocess.STDOUT, text=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output


def _metrics(run_dir: Path, version: int) -> pd.DataFrame:
    return pd.read_csv(run_dir / "csv" / f"version_{version}" / "metrics.csv")


def _val_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.dropna(subset=["val/lpips_vgg"]).set_index("epoch")


def _step_losses(frame: pd.DataFrame) -> pd.Series:
    return frame.dropna(subset=["train/loss_step"]).set_index("step")["train/loss_step"]


def _cache_stats(run_dir: Path) -> list[dict]:
    lines = (run_dir / "feature_cache" / "stats.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _assert_close(got, expected, what: str) -> None:
    torch.testing.assert_close(got, expected, rtol=TOLERANCE, atol=TOLERANCE, msg=what)


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory, knee_data) -> dict[str, Path]:
    """The uninterrupted run, and the killed run resumed from its last checkpoint."""
    root = tmp_path_factory.mktemp("resume")
    straight, crashed = root / "uninterrupted", root / "interrupted"
    uninterrupted = _start(straight, knee_data)  # runs alongside the killed run
    code, output = _wait(_start(crashed, knee_data, kill_at=KILL_AT_STEP))
    assert code == -9, output[-4000:]  # killed by SIGKILL, no chance to clean up
    assert f"SIGKILL at global step {KILL_AT_STEP} (epoch 1, batch 2)" in output
    last = torch.load(crashed / "ckpt" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, STEPS_PER_EPOCH)  # epoch 0's checkpoint
    code, output = _wait(_start(crashed, knee_data, "--ckpt_path", "last", "--weights_only", "true"))
    assert code == 0, output[-4000:]
    assert "Restoring states from the checkpoint path" in output, output[-4000:]
    code, output = _wait(uninterrupted)
    assert code == 0, output[-4000:]
    return {"uninterrupted": straight, "interrupted": crashed}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_last_equals_the_uninterrupted_run(resumed_runs):
    straight, crashed = resumed_runs["uninterrupted"], resumed_runs["interrupted"]
    expected = torch.load(straight / "ckpt" / "last.ckpt", weights_only=True)
    got = torch.load(crashed / "ckpt" / "last.ckpt", weights_only=True)

    # Epoch and step continue: epochs 1 and 2 were trained after the resume.
    assert (got["epoch"], got["global_step"]) == (expected["epoch"], expected["global_step"])
    assert got["global_step"] == MAX_EPOCHS * STEPS_PER_EPOCH
    _assert_close(got["state_dict"], expected["state_dict"], "network weights")
    _assert_close(got["optimizer_states"][0]["state"], expected["optimizer_states"][0]["state"],
                  "Adam moments")
    scheduler, expected_scheduler = got["lr_schedulers"][0], expected["lr_schedulers"][0]
    assert scheduler["last_epoch"] == expected_scheduler["last_epoch"] == MAX_EPOCHS
    assert scheduler["_last_lr"] == pytest.approx(expected_scheduler["_last_lr"])
    assert scheduler["_last_lr"] == pytest.approx([1e-2 * 0.5**MAX_EPOCHS])

    (stopping_key,) = [key for key in got["callbacks"] if key.startswith("DFDEarlyStopping")]
    stopping, expected_stopping = got["callbacks"][stopping_key], expected["callbacks"][stopping_key]
    assert stopping["wait_count"] == expected_stopping["wait_count"] == MAX_EPOCHS - 1
    assert stopping["stopped_epoch"] == expected_stopping["stopped_epoch"] == 0
    _assert_close(stopping["best_score"], expected_stopping["best_score"], "best score")

    # Same masks and shuffles after the resume: every training step's loss is the same.
    straight_metrics, resumed_metrics = _metrics(straight, 0), _metrics(crashed, 1)
    resumed_losses = _step_losses(resumed_metrics)
    assert list(resumed_losses.index) == list(range(STEPS_PER_EPOCH, MAX_EPOCHS * STEPS_PER_EPOCH))
    straight_losses = _step_losses(straight_metrics).loc[resumed_losses.index]
    _assert_close(torch.tensor(resumed_losses.values), torch.tensor(straight_losses.values),
                  "training losses per step")

    # Final (and every resumed epoch's) validation metrics equal the uninterrupted run's.
    resumed_val, straight_val = _val_rows(resumed_metrics), _val_rows(straight_metrics)
    assert list(resumed_val.index) == [1, 2]
    columns = ["val/loss", "val/psnr", "val/ssim", "val/nmse", "val/lpips_vgg", "val/resnet_fd"]
    _assert_close(torch.tensor(resumed_val[columns].values),
                  torch.tensor(straight_val.loc[[1, 2], columns].values), "validation metrics")


@pytest.mark.slow
def test_resumed_run_reuses_the_disk_feature_cache(resumed_runs):
    crashed = resumed_runs["interrupted"]
    # Killed run: epoch 0 validation filled the cache (3 slices x 2 DFDs).
    # Resumed run (a fresh process, empty memory): epochs 1 and 2 hit, the first from disk.
    first, *resumed = _cache_stats(crashed)
    assert (first["epoch"], first["misses"], first["hits"]) == (0, 6, 0)
    assert [line["epoch"] for line in resumed] == [1, 2]
    assert all(line["misses"] == 0 for line in resumed)
    assert resumed[0]["disk_hits"] == 6 and resumed[-1]["hits"] == 12


def _gather_and_restore(rank: int, world_size: int) -> dict:
    """In each of 2 gloo processes: per-rank seeds, a gathered state, each rank restores its own."""
    callback = RNGStateCheckpoint()
    callback._world_size, callback._rank = world_size, rank  # what setup() reads from the trainer
    torch.manual_seed(100 + rank)
    saved = callback.state_dict()  # collective: every rank gathers every rank's state
    expected = torch.rand(3)
    callback.load_state_dict(saved)
    restored = callback.restore()
    return {"world_size": saved["world_size"], "restored": restored, "expected": expected,
            "again": torch.rand(3), "states": [state["torch"] for state in saved["states"]]}


@pytest.mark.slow
@pytest.mark.ddp
def test_rng_state_checkpoint_gathers_every_rank_and_restores_each_its_own(tmp_path):
    results = run_ddp(_gather_and_restore, tmp_path=tmp_path)
    for result in results:
        assert result["world_size"] == 2 and result["restored"]
        torch.testing.assert_close(result["again"], result["expected"], rtol=0, atol=0)
    # Both ranks saved the same two states, which differ (rank 0's stream is not rank 1's).
    assert all(torch.equal(a, b) for a, b in zip(results[0]["states"], results[1]["states"]))
    assert not torch.equal(*results[0]["states"])
    assert not torch.equal(results[0]["expected"], results[1]["expected"])
