"""Target-feature cache: a validation target's features are computed once, reused every epoch.

Targets do not change between epochs, so after the first epoch a DFD costs one encoder pass over
the predictions alone. Entries are keyed by the sample id the data module provides (and the
channel), namespaced by the network's identity (architecture, weights, preprocessing) and the
normalisation, and carry a fingerprint of the target image: a different target under the same id
(augmentation, a changed file) is a miss, never a wrong value.

Memory is bounded by ``max_bytes`` with least-recently-used eviction; an optional ``directory``
keeps evicted (and all) entries on disk so later epochs and restarted runs reuse them.

Example:
    >>> import torch
    >>> cache = TargetFeatureCache(max_bytes=1 << 20)
    >>> image = torch.rand(1, 8, 8)
    >>> cache.put("net", (7, 0), image, [torch.ones(2, 4, 4)])
    >>> cache.get("net", (7, 0), image)[0].shape
    torch.Size([2, 4, 4])
    >>> cache.get("net", (7, 0), image + 1) is None  # same id, different target: a miss
    True
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

Key = tuple[int, int]


def fingerprint(image: Tensor) -> tuple:
    """The identity of a target image: its shape, dtype and a BLAKE2 digest of its bytes."""
    data = image.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
    return (tuple(image.shape), str(image.dtype), hashlib.blake2b(data, digest_size=16).hexdigest())


@dataclass
class CacheStats:
    """Counters for benchmarks and logs."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    disk_hits: int = 0


@dataclass
class _Entry:
    features: list[Tensor]
    fingerprint: tuple
    nbytes: int


@dataclass
class TargetFeatureCache:
    """LRU cache of per-image target features.

    Args:
        max_bytes: memory budget for cached features (default 2 GiB).
        directory: optional folder for an on-disk store (survives restarts).
    """

    max_bytes: int = 2 << 30
    directory: str | os.PathLike | None = None
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        if self.max_bytes < 0:
            raise ValueError(f"Argument `max_bytes` must be >= 0, got {self.max_bytes}")
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _disk_path(self, namespace: str, key: Key) -> Path | None:
        if self.directory is None:
            return None
        folder = hashlib.sha1(namespace.encode()).hexdigest()[:16]
        return Path(self.directory) / folder / f"{key[0]}_{key[1]}.pt"

    def get(self, namespace: str, key: Key, image: Tensor) -> list[Tensor] | None:
        """Cached features of ``image`` under ``key``, or None (also when the target changed)."""
        full = (namespace, *key)
        entry = self._entries.get(full)
        if entry is not None and entry.fingerprint == fingerprint(image):
            self._entries.move_to_end(full)
            self.stats.hits += 1
            return entry.features
        path = self._disk_path(namespace, key)
        if path is not None and path.is_file():
            stored = torch.load(path, map_location=image.device, weights_only=True)
            shape, dtype, digest = stored["fingerprint"]
            if (tuple(shape), dtype, digest) == fingerprint(image):
                self.stats.hits += 1
                self.stats.disk_hits += 1
                self._remember(full, stored["features"], fingerprint(image))
                return stored["features"]
        self.stats.misses += 1
        return None

    def put(self, namespace: str, key: Key, image: Tensor, features: list[Tensor]) -> None:
        """Store detached features of one target image."""
        features = [f.detach().clone() for f in features]  # a view would pin its whole batch
        fp = fingerprint(image)
        path = self._disk_path(namespace, key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"fingerprint": [list(fp[0]), fp[1], fp[2]],
                        "features": [f.cpu() for f in features]}, tmp)
            os.replace(tmp, path)  # atomic: a crash never leaves half a file under the real name
        self._remember((namespace, *key), features, fp)

    def _remember(self, full: tuple, features: list[Tensor], fp: tuple) -> None:
        nbytes = sum(f.numel() * f.element_size() for f in features)
        if full in self._entries:
            self.nbytes -= self._entries.pop(full).nbytes
        if nbytes > self.max_bytes:
            return
        self._entries[full] = _Entry(features, fp, nbytes)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
            self.stats.evictions += 1

    def clear(self) -> None:
        """Drop every in-memory entry (the on-disk store stays)."""
        self._entries.clear()
        self.nbytes = 0
