"""Distributed evaluation sampler: whole volumes per process, every slice exactly once.

torch's ``DistributedSampler`` pads the index list with repeats until it divides evenly across
processes (``drop_last=False``) or drops the tail (``drop_last=True``): with 13 slices on 2
processes one slice is counted twice, which biases every metric averaged over slices. fastMRI's
``VolumeSampler`` keeps volumes together but pads as well.

:class:`VolumeShardSampler` assigns whole volumes to processes (largest first, each to the
least loaded process) and pads nothing, so the union of all shards is the dataset, each index
once. Shards may differ in length by up to one volume.

Two consequences for the evaluation loop:

- Lightning (``use_distributed_sampler=True``, the default) replaces any sampler that is not an
  instance of ``torch.utils.data.DistributedSampler`` with its own padding one. This class
  subclasses ``DistributedSampler`` (overriding ``__iter__``, ``__len__`` and ``set_epoch``)
  only so that Lightning leaves it in place.
- Processes run different numbers of evaluation steps: no collective operation may run per
  step (no ``self.log(..., sync_dist=True)`` in ``validation_step``). Accumulate in torchmetrics
  metrics and synchronise once in ``compute()`` at epoch end. Every process must receive at
  least one volume, or it would skip the epoch-end synchronisation that the others wait in.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


def _volume_keys(dataset: Dataset) -> list[Hashable]:
    raw_samples = getattr(dataset, "raw_samples", None)
    if raw_samples is None:
        raise TypeError(
            f"{type(dataset).__name__} has no `raw_samples` (fastMRI's list of (fname, slice, "
            "metadata)); pass `volume_ids` with one volume key per dataset index"
        )
    return [str(Path(raw_sample[0])) for raw_sample in raw_samples]


def shard_volumes(volume_ids: Sequence[Hashable], num_replicas: int) -> list[list[int]]:
    """Split dataset indices into ``num_replicas`` shards of whole volumes, no padding.

    Volumes go, largest first (ties by first index), to the shard with the fewest indices so
    far (ties to the lowest rank); each shard keeps dataset order.

    Args:
        volume_ids: The volume of each dataset index.
        num_replicas: Number of processes.

    Returns:
        One sorted index list per rank; together they hold every index exactly once.

    Example:
        >>> shard_volumes(["a", "a", "a", "b", "b", "c", "c", "c", "c"], 2)
        [[5, 6, 7, 8], [0, 1, 2, 3, 4]]
    """
    members: dict[Hashable, list[int]] = {}
    for index, volume in enumerate(volume_ids):
        members.setdefault(volume, []).append(index)
    order = sorted(members.values(), key=lambda indices: (-len(indices), indices[0]))
    shards: list[list[int]] = [[] for _ in range(num_replicas)]
    for indices in order:
        lightest = min(range(num_replicas), key=lambda rank: (len(shards[rank]), rank))
        shards[lightest].extend(indices)
    return [sorted(shard) for shard in shards]


class VolumeShardSampler(DistributedSampler):
    """Evaluation sampler giving each process whole volumes, with no padding or duplicates.

    Args:
        dataset: A fastMRI-style dataset with ``raw_samples`` (``(fname, slice, metadata)``),
            or any dataset when ``volume_ids`` is given.
        num_replicas: Number of processes (default: the initialised process group's size, or 1).
        rank: This process's rank (default: from the process group, or 0).
        volume_ids: The volume of each dataset index (default: from ``raw_samples``).
        require_nonempty: Raise when some process would get no volume (see module notes).

    Example:
        >>> class Toy(list):
        ...     raw_samples = [("a.h5", 0, {}), ("a.h5", 1, {}), ("b.h5", 0, {})]
        >>> toy = Toy([0, 1, 2])
        >>> [list(VolumeShardSampler(toy, num_replicas=2, rank=r)) for r in (0, 1)]
        [[0, 1], [2]]
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int | None = None,
        rank: int | None = None,
        volume_ids: Sequence[Hashable] | None = None,
        require_nonempty: bool = True,
    ):
        initialized = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialized else 1
        if rank is None:
            rank = dist.get_rank() if initialized else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        keys = list(volume_ids) if volume_ids is not None else _volume_keys(dataset)
        if len(keys) != len(dataset):
            raise ValueError(
                f"Argument `volume_ids` must have one entry per dataset index ({len(dataset)}), "
                f"but got {len(keys)}"
            )
        self.shards = shard_volumes(keys, num_replicas)
        num_volumes = len(set(keys))
        if require_nonempty and num_volumes < num_replicas:
            raise ValueError(
                f"the evaluation set has {num_volumes} volumes for {num_replicas} processes; "
                "each process needs at least one whole volume (add volumes or use fewer devices)"
            )
        self.indices = self.shards[rank]
        self.num_samples = len(self.indices)
        self.total_size = len(keys)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch (the order does not depend on it: evaluation is not shuffled).

        Args:
            epoch: The epoch.
        """
        self.epoch = epoch
