"""``recon-train`` checkpoints and command line: safe loading, ``last``, the hparam rule, CLI friction.

One shipped config (``unet.yaml``) runs with tiny overrides in a temporary working folder, so its
own ``runs/unet/checkpoints`` folder is used; ``--dfd_weights random`` replaces its ImageNet DFDs.
"""

from __future__ import annotations

import functools
import http.server
import logging
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from recon_models.checkpoints import CheckpointError
from recon_models.cli import main, run_cli
from recon_models.data.synthetic import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = str(ROOT / "examples" / "configs" / "unet.yaml")
STEPS_PER_EPOCH = 2  # 1 training volume of 2 slices, batch size 1

pytestmark = pytest.mark.usefixtures("single_thread_cli")


@pytest.fixture(scope="module")
def knee_data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli_knee")
    size = {"coils": 2, "shape": (32, 16), "recon_shape": (16, 16)}
    make_synthetic_dataset(root / "train", 1, slices=2, seed=0, **size)
    make_synthetic_dataset(root / "val", 1, slices=2, seed=1, **size)
    return {"train_path": str(root / "train"), "val_path": str(root / "val"),
            "test_path": str(root / "val")}


def _override(folder: Path, knee_data) -> str:
    """Tiny network and data on top of unet.yaml; nothing about callbacks or checkpoints."""
    config = {
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1},
        "model": {"network_kwargs": {"chans": 4, "num_pool_layers": 2}, "log_images_every_n_epochs": 0},
        "data": {"data_path": None, **knee_data, "sens_method": "rss", "num_workers": 0},
    }  # fmt: skip
    path = folder / "override.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _args(folder: Path, knee_data, *extra: str, subcommand: str = "fit") -> list[str]:
    return [subcommand, "--config", SHIPPED, "--config", _override(folder, knee_data),
            "--dfd_weights", "random", *extra]


def _record(path: Path) -> list[str]:
    return ["--trainer.callbacks+=tests.recon_cli_helpers.RecordTrainStart",
            f"--trainer.callbacks.path={path}"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, knee_data) -> Path:
    """``recon-train fit`` of unet.yaml for 1 epoch, in its own working folder."""
    folder = tmp_path_factory.mktemp("first_run")
    old = os.getcwd()
    os.chdir(folder)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["recon-train"])
            cli = run_cli(_args(folder, knee_data))
    finally:
        os.chdir(old)
    assert cli.trainer.current_epoch == 1
    assert (folder / "runs" / "unet" / "checkpoints" / "last.ckpt").is_file()
    return folder


def _copy_run(first_run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(first_run / "runs", to / "runs")
    return to


def _last_written(cli, folder: Path) -> dict:
    """The last checkpoint the run wrote (``last-v1.ckpt`` when a copied folder's last.ckpt is kept)."""
    path = Path(cli.trainer.checkpoint_callback.last_model_path)
    assert path.parent == folder / "runs" / "unet" / "checkpoints"
    return torch.load(path, weights_only=True)


# --------------------------------------------------------------------------- resume with `last`


def test_shipped_config_resumes_with_ckpt_path_last(first_run, tmp_path, knee_data, monkeypatch):
    folder = _copy_run(first_run, tmp_path)
    monkeypatch.chdir(folder)
    epoch0 = torch.load(folder / "runs/unet/checkpoints/last.ckpt", weights_only=True)
    assert (epoch0["epoch"], epoch0["global_step"]) == (0, STEPS_PER_EPOCH)
    start = tmp_path / "start.pt"
    cli = run_cli(_args(folder, knee_data, "--ckpt_path", "last", "--trainer.max_epochs", "2",
                        *_record(start)))
    started = torch.load(start, weights_only=True)
    assert started["epoch"] == 1  # epoch 1 continues...
    for key, value in epoch0["state_dict"].items():  # ...from epoch 0's weights
        torch.testing.assert_close(started["state_dict"][key], value, rtol=0, atol=0)
    final = _last_written(cli, folder)
    assert (final["epoch"], final["global_step"]) == (1, 2 * STEPS_PER_EPOCH)
    epochs = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")["epoch"].dropna().unique()
    assert list(epochs) == [1]  # the resumed run trained epoch 1 only


def test_ckpt_path_last_with_nothing_to_resume_is_an_error_naming_the_folder(
        tmp_path, knee_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = main(_args(tmp_path, knee_data, "--ckpt_path", "last"))
    err = capsys.readouterr().err
    assert status == 1
    assert str(tmp_path / "runs" / "unet" / "checkpoints") in err and "last-if-present" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "runs" / "unet" / "checkpoints" / "last.ckpt").exists()  # nothing trained
    with pytest.raises(FileNotFoundError, match="no last checkpoint to resume"):
        run_cli(_args(tmp_path, knee_data, "--ckpt_path", "last"))


def test_last_if_present_starts_from_scratch_and_says_so(tmp_path, knee_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(_args(tmp_path, knee_data, "--ckpt_path", "last-if-present"))
    assert "no last checkpoint in" in capsys.readouterr().out
    assert cli.trainer.current_epoch == 1
    assert torch.load(tmp_path / "runs/unet/checkpoints/last.ckpt", weights_only=True)["epoch"] == 0


# ----------------------------------------------------------------------- every source is safe


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def http_folder(tmp_path):
    """A loopback HTTP server on 127.0.0.1 serving ``tmp_path/www``; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(
        first_run, http_folder, tmp_path, knee_data, monkeypatch, capsys):
    folder, base = http_folder
    legit = torch.load(first_run / "runs/unet/checkpoints/last.ckpt", weights_only=True)
    marker = tmp_path / "PWNED"
    torch.save({**legit, "payload": _Payload(marker)}, folder / "x.ckpt")
    # the payload is real: a weights_only=False load (Lightning's default for URLs) runs it
    probe = tmp_path / "probe"
    torch.save({"payload": _Payload(probe)}, tmp_path / "probe.ckpt")
    torch.load(tmp_path / "probe.ckpt", weights_only=False)
    assert probe.exists()

    monkeypatch.chdir(tmp_path)
    url = f"{base}/x.ckpt"
    status = main(_args(tmp_path, knee_data, "--ckpt_path", url, "--trainer.max_epochs", "2"))
    err = capsys.readouterr().err
    assert status == 1 and not marker.exists()
    assert url in err and "weights_only=True" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="refused") as info:
        run_cli(_args(tmp_path, knee_data, "--ckpt_path", url, "--trainer.max_epochs", "2"))
    assert info.value.source == url and not marker.exists()
    # the same file given as a local path, and export-ssfd: refused alike
    with pytest.raises(CheckpointError, match="refused"):
        run_cli(_args(tmp_path, knee_data, "--ckpt_path", str(folder / "x.ckpt"), subcommand="validate"))
    assert main(["export-ssfd", url, str(tmp_path / "out.ckpt")]) == 1
    assert not marker.exists()


def test_hpc_checkpoint_with_a_payload_is_refused(tmp_path, knee_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    torch.save({"payload": _Payload(marker)}, tmp_path / "hpc_ckpt_3.ckpt")
    with pytest.raises(CheckpointError, match="hpc_ckpt_3.ckpt.*refused"):
        run_cli(_args(tmp_path, knee_data, "--ckpt_path", "hpc",
                      "--trainer.default_root_dir", str(tmp_path)))
    assert not marker.exists()


def test_legit_checkpoint_served_over_http_resumes(first_run, http_folder, tmp_path, knee_data,
                                                   monkeypatch):
    folder, base = http_folder
    (folder / "last.ckpt").write_bytes((first_run / "runs/unet/checkpoints/last.ckpt").read_bytes())
    epoch0 = torch.load(folder / "last.ckpt", weights_only=True)
    monkeypatch.chdir(tmp_path)
    start = tmp_path / "start.pt"
    cli = run_cli(_args(tmp_path, knee_data, "--ckpt_path", f"{base}/last.ckpt",
                        "--trainer.max_epochs", "2", *_record(start)))
    started = torch.load(start, weights_only=True)
    assert started["epoch"] == 1 and cli.trainer.global_step == 2 * STEPS_PER_EPOCH
    for key, value in epoch0["state_dict"].items():
        torch.testing.assert_close(started["state_dict"][key], value, rtol=0, atol=0)


def test_weights_only_false_is_refused(tmp_path, knee_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        run_cli(_args(tmp_path, knee_data, "--ckpt_path", "x.ckpt", "--weights_only", "false"))


# ------------------------------------------------------------ checkpoint hparams vs command line


def test_validate_uses_the_metrics_of_the_command_line_and_reports_the_conflict(
        first_run, tmp_path, knee_data, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    best = str(first_run / "runs/unet/checkpoints/best-epoch0.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level(logging.INFO):
            cli = run_cli(["validate", "--config", SHIPPED, "--config", _override(tmp_path, knee_data),
                           "--ckpt_path", best, "--model.dfds", "{resnet_fd: {weights: random}}",
                           "--model.network_kwargs", "{chans: 8, num_pool_layers: 2}"])
    metrics = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv")
    assert "val/resnet_fd" in metrics and "val/lpips_vgg" not in metrics and "val/dists" not in metrics
    messages = [str(w.message) for w in caught]
    [dfds] = [m for m in messages if "dfds: checkpoint" in m]
    assert "'lpips_vgg'" in dfds and "command line {'resnet_fd': {'weights': 'random'}}" in dfds
    # the network comes from the checkpoint (its weights need it), reported as well
    [network] = [m for m in messages if "network_kwargs: checkpoint" in m]
    assert "'chans': 4" in network and "'chans': 8" in network and "checkpoint's values are used" in network
    assert cli.model.hparams.network_kwargs == {"chans": 4, "num_pool_layers": 2}
    assert not any("Tip" in r.getMessage() for r in caplog.records)  # Lightning's banners muted
    assert not any("args parameter" in m for m in messages)


def test_lr_on_resume_follows_the_command_line_with_a_warning(first_run, tmp_path, knee_data,
                                                              monkeypatch):
    folder = _copy_run(first_run, tmp_path)
    monkeypatch.chdir(folder)
    start = tmp_path / "start.pt"
    with pytest.warns(UserWarning, match=r"lr: checkpoint 0.0001, command line 0.01; the command line"):
        cli = run_cli(_args(folder, knee_data, "--ckpt_path", "last", "--trainer.max_epochs", "2",
                            "--model.lr", "0.01", *_record(start)))
    assert torch.load(start, weights_only=True)["lr"] == pytest.approx(0.01)
    final = _last_written(cli, folder)
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.01)
    assert final["hyper_parameters"]["lr"] == 0.01


# ---------------------------------------------------------------------------- CLI friction


def test_help_lists_every_command_without_lightning_warnings():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "recon_models.cli", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = done.stdout + done.stderr
    for word in ("ssfd-pretrain", "export-ssfd", "fit", "validate", "predict", "--verbose",
                 "--dfd_weights"):
        assert word in text, word
    assert "args parameter" not in text and "Tip" not in text


def test_missing_weights_in_fit_is_one_line_and_exit_1_traceback_with_verbose(
        tmp_path, knee_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", SHIPPED, "--config", _override(tmp_path, knee_data)]  # imagenet DFDs
    assert main(args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "MissingWeightsError" in err and "vgg16-imagenet" in err and "--verbose" in err
    from lightning_dfd.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError):
        main([*args, "--verbose"])


def test_dfd_weights_random_applies_to_every_dfd(tmp_path, knee_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["validate", "--config", SHIPPED, "--config", _override(tmp_path, knee_data),
                   "--dfd_weights", "random"])
    assert cli.model.hparams.dfds == {name: {"weights": "random"}
                                      for name in ("lpips_vgg", "dists", "resnet_fd")}
    assert sorted(cli.model.val_metrics.keys(keep_base=True)) == [
        "dists", "lpips_vgg", "nmse", "psnr", "resnet_fd", "ssim"]


def test_predict_prints_its_output_folder(first_run, tmp_path, knee_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "predictions"
    run_cli(_args(tmp_path, knee_data, "--ckpt_path", str(first_run / "runs/unet/checkpoints/last.ckpt"),
                  "--trainer.callbacks+=recon_models.modules.prediction_writer.ReconstructionWriter",
                  f"--trainer.callbacks.output_dir={out}", subcommand="predict"))
    printed = capsys.readouterr().out
    assert f"predictions written to {out.resolve()}" in printed
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == ["file_synth0000.h5"]


@pytest.mark.parametrize("url", ["https://example.org/runs/..", "https://example.org/"])
def test_a_url_without_a_plain_file_name_downloads_into_its_own_folder(url, monkeypatch):
    import io
    import urllib.request

    from recon_models.checkpoints import fetch_checkpoint

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"checkpoint bytes"))
    path = fetch_checkpoint(url)
    assert path.name == "checkpoint.ckpt" and path.read_bytes() == b"checkpoint bytes"
    assert path.parent.name.startswith("recon_ckpt_")  # the private temporary folder, nothing above it
