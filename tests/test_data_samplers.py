"""Evaluation sharding: torch's DistributedSampler double-counts, VolumeShardSampler does not."""

from __future__ import annotations

from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from recon_models.data import FastMRISliceDataset, VolumeShardSampler
from recon_models.data.samplers import shard_volumes
from recon_models.data.synthetic import make_synthetic_dataset

SLICES = {"file_synth0000.h5": 3, "file_synth0001.h5": 5, "file_synth0002.h5": 5}


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    """3 volumes (an odd number) of unequal slice counts: 3, 5 and 5, 13 slices in all."""
    root = tmp_path_factory.mktemp("odd") / "data"
    for index, slices in enumerate(SLICES.values()):
        make_synthetic_dataset(root, 1, slices=slices, coils=2, shape=(32, 16),
                               recon_shape=(16, 16), start_index=index)  # fmt: skip
    dataset = FastMRISliceDataset(root)
    assert dataset.slices_per_volume == SLICES
    return dataset


def _shards(sampler_type, dataset, ranks=2):
    """Simulate ``ranks`` processes: each builds its sampler with an explicit rank."""
    return [list(sampler_type(dataset, num_replicas=ranks, rank=rank)) for rank in range(ranks)]


def TorchEvalSampler(dataset, num_replicas, rank):  # noqa: N802 - what Lightning injects for val
    return DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)


def _volumes(dataset, shard):
    return {dataset.raw_samples[i].fname.name for i in shard}


def test_default_distributed_sampler_double_counts_but_ours_counts_each_slice_once(odd_dataset):
    torch_shards = _shards(TorchEvalSampler, odd_dataset)
    torch_counts = Counter(i for shard in torch_shards for i in shard)
    assert sum(torch_counts.values()) == 14  # 13 slices padded to 2 x 7
    assert [i for i, n in torch_counts.items() if n == 2] == [0]  # slice 0 counted twice
    # ...and it splits volumes across processes.
    assert _volumes(odd_dataset, torch_shards[0]) & _volumes(odd_dataset, torch_shards[1])

    ours = _shards(VolumeShardSampler, odd_dataset)
    assert Counter(i for shard in ours for i in shard) == Counter(range(13))  # each exactly once
    assert sorted(len(shard) for shard in ours) == [5, 8]  # whole volumes: {5} and {3, 5}
    assert not _volumes(odd_dataset, ours[0]) & _volumes(odd_dataset, ours[1])


def test_slice_mean_is_unbiased_only_with_our_sampler(odd_dataset):
    values = torch.arange(len(odd_dataset), dtype=torch.float64) ** 2  # a per-slice metric
    exact = values.mean()

    def gathered_mean(sampler_type):  # what a sum/count metric synced across ranks reports
        return values[[i for shard in _shards(sampler_type, odd_dataset) for i in shard]].mean()

    assert gathered_mean(VolumeShardSampler) == exact
    assert gathered_mean(TorchEvalSampler) != exact


def test_shards_are_balanced_and_order_is_stable():
    volume_ids = ["a"] * 7 + ["b"] * 2 + ["c"] * 3 + ["d"] * 4 + ["e"] * 1
    shards = shard_volumes(volume_ids, 2)
    assert sorted(len(s) for s in shards) == [8, 9]
    sampler = VolumeShardSampler(list(range(17)), num_replicas=2, rank=1, volume_ids=volume_ids)
    first = list(sampler)
    sampler.set_epoch(5)
    assert list(sampler) == first and len(sampler) == len(first)


def test_more_processes_than_volumes_is_refused(odd_dataset):
    with pytest.raises(ValueError, match="3 volumes for 4 processes"):
        VolumeShardSampler(odd_dataset, num_replicas=4, rank=0)


def test_single_process_default_takes_everything(odd_dataset):
    assert list(VolumeShardSampler(odd_dataset)) == list(range(len(odd_dataset)))


def test_lightning_keeps_our_sampler_under_ddp(odd_dataset):
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    assert trainer._accelerator_connector.is_distributed
    ours = DataLoader(odd_dataset, sampler=VolumeShardSampler(odd_dataset, num_replicas=2, rank=0))
    plain = DataLoader(odd_dataset)
    connector = trainer._data_connector
    assert not connector._requires_distributed_sampler(ours)
    assert connector._requires_distributed_sampler(plain)
