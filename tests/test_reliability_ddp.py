"""Distributed exactness: DDP validation (2 gloo processes on CPU) equals one process.

The validation split has 3 volumes (an odd number) of 3, 4 and 6 slices: 13 slices, which
Lightning's default ``DistributedSampler`` pads to 14 for 2 processes. ``VolumeShardSampler``
gives rank 0 the 6-slice volume and rank 1 the other two (7 slices), so the ranks also run
unequal numbers of steps (3 and 4 batches of 2).

Every logged metric (PSNR/SSIM/NMSE per volume, two DFDs with random weights, ``val/loss``) and
the per-image values of a ``reduction="none"`` DFD (sorted by sample id) must equal the
single-process run to 1e-6. The same DDP validation with Lightning's default sampler counts a
slice twice and gives biased values: the guard is not decorative.

Supersedes ``tests/test_cli_recon.py::test_ddp_validation_equals_single_process`` (same CLI path,
``--trainer.strategy ddp --trainer.devices 2``, stricter tolerance, more metrics).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lightning_dfd.sample_ids import sample_id
from recon_models.cli import run_cli
from recon_models.data.synthetic import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "configs" / "unet.yaml"
SLICES = (3, 4, 6)
TOLERANCE = 1e-6
DFD_COLUMNS = ["val/lpips_vgg", "val/resnet_fd"]


pytestmark = pytest.mark.usefixtures("single_thread_cli")


@pytest.fixture(scope="module")
def val_path(tmp_path_factory) -> str:
    """3 validation volumes of 3, 4 and 6 slices (2 coils, 32x16 k-space, 16x16 crop)."""
    root = tmp_path_factory.mktemp("odd_val") / "val"
    for index, slices in enumerate(SLICES):
        make_synthetic_dataset(root, 1, slices=slices, coils=2, shape=(32, 16),
                               recon_shape=(16, 16), seed=3, start_index=index)  # fmt: skip
    return str(root)


def _config(run_dir: Path, val_path: str) -> Path:
    """Validation of a seeded (untrained) tiny UNet, 2 mean DFDs + a per-image DFD."""
    run_dir.mkdir(parents=True)
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": str(run_dir), "name": "csv"}}],
            "callbacks": [{"class_path": "tests.reliability_worker.PerImageValues",
                           "init_args": {"name": "dists", "kwargs": {"weights": "random"}}}],
        },
        "model": {"network_kwargs": {"chans": 4, "num_pool_layers": 2},
                  "dfds": {"lpips_vgg": {"weights": "random", "max_batch": 2},
                           "resnet_fd": {"weights": "random", "max_batch": 2}},
                  "log_images_every_n_epochs": 0,
                  "dfd_precision": "fp32"},  # an exactness test: the shipped config says "auto"
        "data": {"data_path": None, "val_path": val_path, "sens_method": "rss",
                 "batch_size": 2, "num_workers": 0},
    }  # fmt: skip
    path = run_dir / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ddp(module: list[str], run_dir: Path, val_path: str) -> subprocess.Popen:
    command = [sys.executable, "-m", *module, "validate", "--config", str(SHIPPED),
               "--config", str(_config(run_dir, val_path)),
               "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # A session of its own: on failure the test kills both ranks (the launcher and its child).
    # It runs in the run's folder: whatever the shipped config writes stays out of the checkout.
    return subprocess.Popen(command, cwd=run_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=240)
    assert process.returncode == 0, output[-4000:]
    assert "distributed_backend=gloo" in output and "Starting with 2 processes" in output, output
    return output


def _results(run_dir: Path) -> tuple[pd.Series, dict]:
    (log_dir,) = {path.parent for path in run_dir.glob("csv/**/metrics.csv")}
    logged = pd.read_csv(log_dir / "metrics.csv").iloc[-1].drop(["epoch", "step"], errors="ignore")
    return logged, torch.load(log_dir / "per_image.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, val_path) -> dict[str, tuple[pd.Series, dict]]:
    """The single-process run, the guarded DDP run and the default-sampler DDP run."""
    root = tmp_path_factory.mktemp("ddp_exactness")
    # Both DDP runs (2 processes each) go in the background while one process runs here.
    guarded = _start_ddp(["recon_models.cli"], root / "ddp", val_path)
    plain = _start_ddp(["tests.reliability_worker", "--plain-val-sampler"], root / "plain", val_path)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["recon-train"])
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run_cli(["validate", "--config", str(SHIPPED),
                         "--config", str(_config(root / "single", val_path))])
            finally:
                torch.set_num_threads(threads)
        _finish(guarded)
        _finish(plain)
    finally:
        for process in (guarded, plain):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # no-op once both ranks have exited
    return {name: _results(root / name) for name in ("single", "ddp", "plain")}


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_validation_equals_one_process_for_every_logged_metric(runs):
    single, _ = runs["single"]
    ddp, per_image = runs["ddp"]
    assert per_image["world_size"] == 2
    expected_columns = {"val/psnr", "val/ssim", "val/nmse", "val/loss", *DFD_COLUMNS}
    assert expected_columns <= set(single.dropna().index)
    assert set(ddp.dropna().index) == set(single.dropna().index)
    for column in single.dropna().index:
        assert ddp[column] == pytest.approx(single[column], rel=TOLERANCE, abs=TOLERANCE), column


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_per_image_values_equal_one_process_in_sample_id_order(runs):
    _, single = runs["single"]
    _, ddp = runs["ddp"]
    expected_ids = [sample_id(volume, s) for volume, n in enumerate(SLICES) for s in range(n)]
    assert single["world_size"] == 1
    assert single["ids"].tolist() == expected_ids  # each slice once, sorted by sample id
    assert ddp["ids"].tolist() == expected_ids
    torch.testing.assert_close(ddp["values"], single["values"], rtol=TOLERANCE, atol=TOLERANCE)


@pytest.mark.slow
@pytest.mark.ddp
def test_default_distributed_sampler_counts_a_slice_twice_and_biases_the_metrics(runs):
    single, single_images = runs["single"]
    plain, plain_images = runs["plain"]
    assert plain_images["world_size"] == 2
    counts = Counter(plain_images["ids"].tolist())
    assert len(plain_images["ids"]) == sum(SLICES) + 1  # padded to 2 x 7
    assert [sample_id for sample_id, n in counts.items() if n == 2] == [0]  # slice 0 twice
    # The values themselves are right; only the duplicate makes the means wrong.
    first = torch.ones_like(plain_images["ids"], dtype=torch.bool)
    first[1:] = plain_images["ids"][1:] != plain_images["ids"][:-1]
    torch.testing.assert_close(plain_images["values"][first], single_images["values"],
                               rtol=TOLERANCE, atol=TOLERANCE)
    for column in [*DFD_COLUMNS, "val/psnr", "val/ssim", "val/nmse"]:
        assert abs(plain[column] - single[column]) > 10 * TOLERANCE * abs(single[column]), column
