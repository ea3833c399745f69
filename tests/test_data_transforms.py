"""ReconTransform: every ReconSample field follows the shared contract."""

from __future__ import annotations

import h5py
import numpy as np
import torch
from fastmri.data import SliceDataset
from torch.utils.data import DataLoader

from lightning_dfd.sample_ids import sample_id
from recon_models.data import (
    FastMRISliceDataset,
    ReconSample,
    ReconTransform,
    SensitivityCache,
    build_mask_func,
    sense_combine,
)
from recon_models.data.masks import sample_mask, volume_seed
from recon_models.fourier import ifft2c


def _dataset(root, fixed_mask=True, method="espirit", files=None):
    transform = ReconTransform(build_mask_func("random", (4,)), SensitivityCache(method),
                               fixed_mask=fixed_mask)  # fmt: skip
    return FastMRISliceDataset(root, transform, files=files)


def test_sample_fields_follow_the_contract(synthetic_dir):
    dataset = _dataset(synthetic_dir, files=["file_synth0001.h5", "file_synth0003.h5"])
    sample = dataset[len(dataset) - 1]
    assert isinstance(sample, ReconSample)
    coils, height, width = 4, 64, 32
    assert sample.masked_kspace.shape == (coils, height, width)
    assert sample.masked_kspace.dtype == torch.complex64
    assert sample.mask.shape == (1, 1, width) and sample.mask.dtype == torch.float32
    assert sample.maps.shape == (coils, height, width) and sample.maps.dtype == torch.complex64
    assert sample.target.shape == (height, width) and sample.target.dtype == torch.complex64
    assert sample.max_value.dtype == torch.float32 and float(sample.max_value) == 1.0
    assert sample.crop_size.tolist() == [32, 32] and sample.crop_size.dtype == torch.int64
    assert sample.fname == "file_synth0003.h5"
    assert int(sample.volume_id) == 1  # second of the two selected files
    assert int(sample.sample_id) == sample_id(1, int(sample.slice_num))
    for field in ("volume_id", "slice_num", "sample_id"):
        value = getattr(sample, field)
        assert value.shape == () and value.dtype == torch.int64


def test_scaling_target_and_masked_kspace(synthetic_dir):
    dataset = _dataset(synthetic_dir, files=["file_synth0002.h5"])
    samples = [dataset[i] for i in range(len(dataset))]
    # One scale per volume: the largest |target| over the volume is exactly 1.
    assert max(float(s.target.abs().max()) for s in samples) == np.float32(1.0)
    assert all(float(s.target.abs().max()) <= 1.0 + 1e-6 for s in samples)

    sample = samples[1]
    with h5py.File(synthetic_dir / "file_synth0002.h5") as hf:
        full = torch.from_numpy(hf["kspace"][1])
    scale = sample.target.abs().max() / sense_combine(full, sample.maps).abs().max()
    torch.testing.assert_close(sample.target, sense_combine(full * scale, sample.maps))
    torch.testing.assert_close(sample.masked_kspace, full * scale * sample.mask)
    # Unsampled columns are exactly zero; the SENSE adjoint of the data is an aliased target.
    assert bool((sample.masked_kspace[..., sample.mask[0, 0] == 0] == 0).all())
    aliased = (sample.maps.conj() * ifft2c(sample.masked_kspace)).sum(0)
    error = (aliased - sample.target).abs().norm() / sample.target.abs().norm()
    assert 0.05 < float(error) < 1.0


def test_evaluation_masks_fixed_per_volume_training_masks_vary(synthetic_dir):
    fixed = _dataset(synthetic_dir, fixed_mask=True, method="rss", files=["file_synth0000.h5"])
    masks = [fixed[i].mask for i in range(len(fixed))]
    assert all(torch.equal(m, masks[0]) for m in masks)
    expected = sample_mask(build_mask_func("random", (4,)), 32, seed=volume_seed("file_synth0000.h5"))
    assert torch.equal(masks[0], expected)
    assert torch.equal(fixed[0].mask, masks[0])  # same again ("next epoch")

    torch.manual_seed(0)
    train = _dataset(synthetic_dir, fixed_mask=False, method="rss", files=["file_synth0000.h5"])
    train_masks = [train[0].mask for _ in range(6)]
    assert len({tuple(m.flatten().tolist()) for m in train_masks}) > 1
    torch.manual_seed(0)
    assert torch.equal(train[0].mask, train_masks[0])  # reproducible from torch's seed


def test_training_masks_differ_between_ranks_seeded_alike(synthetic_dir, monkeypatch):
    train = _dataset(synthetic_dir, fixed_mask=False, method="rss", files=["file_synth0000.h5"])
    per_rank = {}
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        torch.manual_seed(0)  # seed_everything gives every rank the same seed
        per_rank[rank] = [tuple(train[0].mask.flatten().tolist()) for _ in range(4)]
    assert len({tuple(masks) for masks in per_rank.values()}) == 3
    monkeypatch.delenv("RANK")
    torch.manual_seed(0)
    assert tuple(train[0].mask.flatten().tolist()) == per_rank[0][0]  # rank 0: single process


def test_default_collate_adds_the_batch_dimension(synthetic_dir):
    dataset = _dataset(synthetic_dir, method="rss")
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert isinstance(batch, ReconSample)
    assert batch.masked_kspace.shape == (3, 4, 64, 32) and batch.mask.shape == (3, 1, 1, 32)
    assert batch.target.shape == (3, 64, 32) and batch.crop_size.shape == (3, 2)
    assert batch.sample_id.shape == (3,) and list(batch.fname) == ["file_synth0000.h5"] * 3


def test_rss_reference_is_the_rss_image(synthetic_dir):
    sample = _dataset(synthetic_dir, method="rss", files=["file_synth0004.h5"])[0]
    assert sample.target.imag.abs().max() < 1e-6
    torch.testing.assert_close(sample.maps.abs().square().sum(0)[sample.target.abs() > 0],
                               torch.ones(int((sample.target.abs() > 0).sum())))  # fmt: skip


def test_plain_fastmri_slice_dataset_with_root(synthetic_dir):
    transform = ReconTransform(build_mask_func("equispaced_fraction", (8,)), SensitivityCache("rss"),
                               fixed_mask=True, root=synthetic_dir)  # fmt: skip
    dataset = SliceDataset(synthetic_dir, "multicoil", transform=transform)
    sample = dataset[len(dataset) - 1]
    assert sample.fname == "file_synth0004.h5" and int(sample.volume_id) == 4
    assert abs(float(sample.mask.sum()) - 4) <= 1
