"""FastMRIDataModule: volume splits, explicit folders, map precomputation, loaders, CLI types."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser

from recon_models.data import FastMRIDataModule, ReconSample, VolumeShardSampler
from recon_models.data.datamodule import split_counts
from recon_models.data.synthetic import make_synthetic_dataset


def _names(files):
    return [f.name for f in files]


def test_one_folder_is_split_by_volume_with_the_seed(make_datamodule, synthetic_dir):
    splits = make_datamodule(seed=0).split_files()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    names = [n for k in ("train", "val", "test") for n in _names(splits[k])]
    assert sorted(names) == sorted(p.name for p in synthetic_dir.glob("*.h5"))  # disjoint, complete
    assert make_datamodule(seed=0).split_files() == splits
    assert any(make_datamodule(seed=s).split_files() != splits for s in (1, 2, 3))


def test_split_counts_give_every_nonzero_split_a_volume():
    assert split_counts(5, (0.6, 0.2, 0.2)) == [3, 1, 1]
    assert split_counts(3, (0.6, 0.2, 0.2)) == [1, 1, 1]
    assert split_counts(4, (0.75, 0.25, 0.0)) == [3, 1, 0]
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]


def test_explicit_folders_and_sample_rate(tmp_path):
    size = dict(coils=2, shape=(32, 16), recon_shape=(16, 16), slices=2)
    make_synthetic_dataset(tmp_path / "multicoil_train", 4, **size)
    make_synthetic_dataset(tmp_path / "multicoil_val", 2, seed=1, **size)
    dm = FastMRIDataModule(train_path=str(tmp_path / "multicoil_train"),
                           val_path=str(tmp_path / "multicoil_val"), sens_method="rss")  # fmt: skip
    splits = dm.split_files()
    assert [len(splits[k]) for k in ("train", "val", "test")] == [4, 2, 0]
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 8 and len(dm.datasets["val"]) == 4
    with pytest.raises(ValueError, match="test split is empty"):
        dm.setup("test")

    half = FastMRIDataModule(train_path=str(tmp_path / "multicoil_train"),
                             val_path=str(tmp_path / "multicoil_val"), sample_rate=0.5)  # fmt: skip
    assert [len(v) for v in half.split_files().values()] == [2, 1, 0]
    assert half.split_files() == half.split_files()


def test_prepare_data_caches_every_volume_once(make_datamodule, synthetic_dir):
    dm = make_datamodule()
    dm.prepare_data()
    cache_dir = synthetic_dir.with_name(synthetic_dir.name + "_sense_cache")
    assert len(list(cache_dir.glob("*.espirit.*.h5"))) == 5
    again = make_datamodule()
    again.prepare_data()
    assert (again.sensitivity.hits, again.sensitivity.misses) == (5, 0)


def test_loaders_yield_contract_batches(make_datamodule):
    dm = make_datamodule(batch_size=2)
    dm.setup("fit")
    train = dm.train_dataloader()
    batch = next(iter(train))
    assert isinstance(batch, ReconSample) and batch.masked_kspace.shape == (2, 4, 64, 32)
    assert batch.mask.shape == (2, 1, 1, 32) and batch.maps.shape == (2, 4, 64, 32)

    val = dm.val_dataloader()
    assert isinstance(val.sampler, VolumeShardSampler)
    ids = [int(i) for b in val for i in b.sample_id]
    assert len(ids) == len(set(ids)) == len(dm.datasets["val"])
    masks = torch.cat([b.mask for b in val])
    assert bool((masks == masks[0]).all())  # one mask per validation volume


class _CountSlices(pl.LightningModule):
    """Sees every validation slice: a module stand-in that records sample ids."""

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def validation_step(self, batch, batch_idx):
        self.seen.extend(int(i) for i in batch.sample_id)


def test_lightning_validate_sees_every_slice_once(make_datamodule, tmp_path):
    dm = make_datamodule(sens_method="rss", split=(0.4, 0.6, 0.0))
    module = _CountSlices()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.validate(module, dm, verbose=False)
    assert sorted(module.seen) == sorted(
        int(s.sample_id) for s in (dm.datasets["val"][i] for i in range(len(dm.datasets["val"])))
    )
    assert len(set(module.seen)) == len(module.seen) == len(dm.datasets["val"])


def test_constructor_arguments_parse_from_the_command_line(synthetic_dir):
    parser = ArgumentParser()
    parser.add_class_arguments(FastMRIDataModule, "data")
    config = parser.parse_args(["--data.data_path", str(synthetic_dir), "--data.accelerations",
                                "[2, 6]", "--data.split", "[0.5, 0.25, 0.25]",
                                "--data.sens_method", "rss"])  # fmt: skip
    dm = FastMRIDataModule(**config.data.as_dict())
    assert dm.hparams.accelerations == (2, 6) and dm.mask_func.center_fractions == [0.16, 0.053]
    assert dm.hparams.split == (0.5, 0.25, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "give `data_path`"),
        (dict(data_path="x", train_path="y"), "not both"),
        (dict(data_path="x", split=(0.5, 0.5, 0.5)), "split"),
        (dict(data_path="x", sens_method="sense"), "sens_method"),
        (dict(data_path="x", mask_type="poisson"), "mask_type"),
        (dict(data_path="x", sample_rate=0.0), "sample_rate"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastMRIDataModule(**kwargs)
