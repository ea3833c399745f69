"""Predictions of the recon module are written as h5 files that `lightning-dfd evaluate` scores."""

from __future__ import annotations

import h5py
import lightning.pytorch as pl
import pandas as pd
import torch

from lightning_dfd.cli import main as dfd_cli
from recon_models.modules import ReconModule, ReconstructionWriter


def test_predict_writes_fastmri_files_that_evaluate_scores(make_datamodule, tmp_path, capsys):
    torch.manual_seed(0)
    module = ReconModule("unet", {"chans": 4, "num_pool_layers": 2}, dfds={})
    datamodule = make_datamodule(split=(0.4, 0.2, 0.4), batch_size=2, sens_method="rss")
    writer = ReconstructionWriter(tmp_path / "out")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[writer],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    recons = sorted((tmp_path / "out" / "reconstructions").glob("*.h5"))
    refs = sorted((tmp_path / "out" / "references").glob("*.h5"))
    assert len(recons) == len(refs) == 2 and [p.name for p in recons] == [p.name for p in refs]
    slices = datamodule.datasets["test"].slices_per_volume
    for path in recons:
        with h5py.File(path) as hf:
            assert hf["reconstruction"].shape == (slices[path.name], 32, 32)
            assert hf["reconstruction"].dtype == "float32"
    out_csv = tmp_path / "results.csv"
    code = dfd_cli(["evaluate", "--target", str(tmp_path / "out" / "references"),
                    "--target-key", "reconstruction_sense",
                    "--predictions", str(tmp_path / "out" / "reconstructions"),
                    "--metrics", "psnr,ssim,nmse", "--out", str(out_csv)])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out_csv)
    assert len(table) == sum(slices.values()) and table["psnr"].notna().all()


def _fake_trainer(**paths):
    from types import SimpleNamespace

    return SimpleNamespace(datamodule=SimpleNamespace(data_path=paths.pop("data_path", None), paths=paths))


def test_writer_refuses_output_folders_in_or_around_the_data(tmp_path):
    import pytest

    data = tmp_path / "out" / "references"  # e.g. predicting again on an earlier run's references
    data.mkdir(parents=True)
    (data / "file1.h5").write_bytes(b"the data")
    for output_dir, trainer in ((tmp_path / "out", _fake_trainer(test_path=str(data))),
                                (tmp_path / "out" / "references" / "x", _fake_trainer(data_path=str(data))),
                                (tmp_path, _fake_trainer(test_path=str(tmp_path / "reconstructions" / "a")))):
        with pytest.raises(ValueError, match="choose an `output_dir` apart from the data"):
            ReconstructionWriter(output_dir).on_predict_start(trainer, None)
    ReconstructionWriter(tmp_path / "pred").on_predict_start(_fake_trainer(data_path=str(data)), None)
    assert (data / "file1.h5").read_bytes() == b"the data"


def test_writer_checks_file_names_from_the_data(tmp_path):
    import pytest

    from lightning_dfd.files import UnsafePathError

    writer = ReconstructionWriter(tmp_path / "out")
    image = torch.zeros(1, 4, 4)
    for fname in ("../escaped.h5", "..", "a/b.h5"):
        outputs = {"fname": [fname], "slice_num": torch.tensor([0]), "reconstruction": image,
                   "reference": image}
        writer.on_predict_batch_end(None, None, outputs, None, 0)
        with pytest.raises(UnsafePathError):
            writer.on_predict_epoch_end(None, None)
        writer._volumes.clear()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "reconstructions", "references"]
    outputs = {"fname": ["file1.h5"], "slice_num": torch.tensor([0]), "reconstruction": image,
               "reference": image}
    writer.on_predict_batch_end(None, None, outputs, None, 0)
    writer.on_predict_epoch_end(None, None)
    assert sorted(p.name for p in (tmp_path / "out" / "references").iterdir()) == ["file1.h5"]  # no temp
