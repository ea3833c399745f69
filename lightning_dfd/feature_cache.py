"""Target-feature cache: a validation target's features are computed once, reused every epoch.

Targets do not change between epochs, so after the first epoch a DFD costs one encoder pass over
the predictions alone. Entries are keyed by a tuple of ints/strings the caller provides (the
sample id and channel, or ``(file name, slice, channel)``), namespaced by the network's identity
(architecture, a digest of its weights, preprocessing) and the normalisation, and carry a
fingerprint of the target image: a different target under the same key (augmentation, a changed
file) is a miss, never a wrong value.

**Memory policy.** Validation visits the same images in the same order every epoch. An LRU whose
budget is smaller than the set evicts every entry just before it is needed again (hit rate 0).
The default policy, ``"keep"``, admits entries while there is room and then keeps what it holds:
a new entry never evicts a resident entry that is still in use, so under cyclic access the hit
rate is ``budget / set size``. A resident entry that went unused for two passes over every key
the cache has seen is *stale* (e.g. the validation set changed) and may be replaced.
``policy="lru"`` keeps the classic least-recently-used behaviour. :meth:`TargetFeatureCache.plan`
prints what a budget holds and the hit rate to expect.

**Disk store.** With ``directory``, every entry is also written to disk, so later epochs and
restarted runs (and other processes: DDP ranks, parallel ``evaluate`` jobs) reuse it. Each file is
written under a unique temporary name and renamed into place atomically; it records its namespace,
key, target fingerprint, stored dtype, feature dtypes and one BLAKE2 checksum over all of that
*and* the feature bytes, verified whole on read, and is read with ``torch.load(weights_only=True)``.
Entries of a ``store_dtype`` live in their own folder, so a bf16 store never answers an exact cache.
A corrupted, truncated, foreign, torn or edited file is a miss counted in ``stats.bad_files``
(warned once, naming the file), never a wrong value or a crash. A directory that cannot be written
(read-only, disk full) gives one warning; the cache then carries on in memory and leaves no
temporary file behind.

**Stored precision.** ``store_dtype="bf16"`` keeps floating features in bfloat16 (half the bytes:
the budget holds twice as many images); they are returned in their original dtype, rounded to
bf16 (relative error <= 2**-8 per value). Measured on 24 MR-like pairs (96x96, random weights):
LPIPS-Alex/VGG, DISTS and ResNetFD values within 1.5e-3 relative of uncached, Spearman 1.0.

Example:
    >>> import torch
    >>> cache = TargetFeatureCache(max_bytes=1 << 20)
    >>> image = torch.rand(1, 8, 8)
    >>> cache.put("net", (7, 0), image, [torch.ones(2, 4, 4)])
    >>> cache.get("net", (7, 0), image)[0].shape
    torch.Size([2, 4, 4])
    >>> cache.get("net", (7, 0), image + 1) is None  # same key, different target: a miss
    True
    >>> cache.get("net", ("file1.h5", 12, 0), image) is None  # keys: tuples of ints/strings
    True
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

KeyPart = int | str
Key = tuple[KeyPart, ...]
POLICIES = ("keep", "lru")
_FORMAT = "lightning_dfd.feature_cache/3"
# The dtypes an entry may name (anything else in a file is a bad entry, never a getattr on torch).
_DTYPES = {str(d): d for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                                 torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8,
                                 torch.bool, torch.complex64, torch.complex128)}
_STORE_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                 "fp16": torch.float16, "float16": torch.float16,
                 "fp32": torch.float32, "float32": torch.float32}


class FeatureCacheWarning(UserWarning):
    """A cache file was unusable or the cache directory could not be written."""


def fingerprint(image: Tensor) -> tuple:
    """The identity of a target image: its shape, dtype and a BLAKE2 digest of its bytes."""
    data = image.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy()
    return (tuple(image.shape), str(image.dtype), hashlib.blake2b(data, digest_size=16).hexdigest())


def features_checksum(features: list[Tensor]) -> str:
    """BLAKE2 digest of a feature list: every tensor's shape, dtype and bytes, in order.

    Example:
        >>> a = features_checksum([torch.zeros(2, 3)])
        >>> a == features_checksum([torch.zeros(3, 2)])  # same bytes, other shape
        False
    """
    digest = hashlib.blake2b(digest_size=16)
    for f in features:
        f = f.detach().contiguous().cpu()
        digest.update(f"{tuple(f.shape)}|{f.dtype}|".encode())
        digest.update(f.view(-1).view(torch.uint8).numpy())  # the buffer itself, no copy
    return digest.hexdigest()


def entry_checksum(header: dict, features: list[Tensor]) -> str:
    """BLAKE2 digest of a disk entry: its header (every field but the checksum) and feature bytes.

    Example:
        >>> f = [torch.zeros(2)]
        >>> a = entry_checksum({"dtypes": ["torch.float32"]}, f)
        >>> a == entry_checksum({"dtypes": ["torch.float16"]}, f)
        False
    """
    head = json.dumps(header, sort_keys=True, default=str)
    return hashlib.blake2b(f"{head}|{features_checksum(features)}".encode(), digest_size=16).hexdigest()


def features_nbytes(features: list[Tensor]) -> int:
    """Bytes held by a list of feature tensors."""
    return sum(f.numel() * f.element_size() for f in features)


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop always returns


def check_key(key: object) -> Key:
    """A cache key as a tuple of ints and strings; anything else is a clear TypeError."""
    if not isinstance(key, tuple) or not key:
        raise TypeError(f"a feature-cache key must be a non-empty tuple of ints/strings, got {key!r}")
    parts: list[KeyPart] = []
    for part in key:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, bool):
            raise TypeError(f"a feature-cache key must not hold booleans, got {key!r}")
        else:
            try:
                parts.append(operator.index(part))
            except TypeError:
                raise TypeError(f"a feature-cache key must be a tuple of ints/strings, got {key!r} "
                                f"(part {part!r} is a {type(part).__name__})") from None
    return tuple(parts)


@dataclass
class CacheStats:
    """Counters for benchmarks and logs.

    Attributes:
        hits: lookups answered (from memory or disk).
        misses: lookups not answered (absent, changed target, unusable file).
        evictions: resident entries dropped to make room.
        disk_hits: hits read from the disk store.
        rejected: entries not kept in memory (no room under the ``"keep"`` policy, or too big).
        bad_files: disk entries that failed a check (corrupt, truncated, foreign, torn).
        write_errors: failed disk writes (after the first, the disk store is read-only).
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    disk_hits: int = 0
    rejected: int = 0
    bad_files: int = 0
    write_errors: int = 0


@dataclass
class _Entry:
    features: list[Tensor]
    dtypes: list[torch.dtype]
    fingerprint: tuple
    nbytes: int
    last_used: int


class TargetFeatureCache:
    """Per-image target features, bounded in memory, optionally shared on disk.

    Args:
        max_bytes: memory budget for cached features (default 2 GiB).
        directory: optional folder for an on-disk store (survives restarts, shared by processes).
        policy: ``"keep"`` (default: admit while there is room, then keep the resident entries;
            scan-resistant, hit rate ``budget / set size`` under cyclic access) or ``"lru"``
            (least recently used; hit rate 0 under cyclic access once the set exceeds the budget).
        store_dtype: None (store features as computed), ``"bf16"``/``torch.bfloat16`` (half the
            bytes, returned in the original dtype) or ``"fp16"``.
        stats: counters to continue (default: new ones).

    Example:
        >>> cache = TargetFeatureCache(max_bytes=2 * 64, policy="keep")
        >>> images = [torch.full((1, 4, 4), float(i)) for i in range(4)]
        >>> for epoch in range(3):  # 4 images, room for 2: the first two stay resident
        ...     for i, image in enumerate(images):
        ...         if cache.get("net", (i,), image) is None:
        ...             cache.put("net", (i,), image, [torch.zeros(16)])
        >>> cache.stats.hits, cache.stats.misses
        (4, 8)
    """

    def __init__(
        self,
        max_bytes: int = 2 << 30,
        directory: str | os.PathLike | None = None,
        policy: str = "keep",
        store_dtype: str | torch.dtype | None = None,
        stats: CacheStats | None = None,
    ) -> None:
        if isinstance(max_bytes, float) and max_bytes.is_integer():
            max_bytes = int(max_bytes)  # 2e9 from a YAML config
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"Argument `max_bytes` must be an integer >= 0, but got {max_bytes!r}")
        if policy not in POLICIES:
            raise ValueError(f"Argument `policy` must be one of {POLICIES}, but got {policy!r}")
        if isinstance(store_dtype, str):
            if store_dtype not in _STORE_DTYPES:
                raise ValueError(f"Argument `store_dtype` must be one of {sorted(_STORE_DTYPES)}, "
                                 f"a floating torch.dtype or None, but got {store_dtype!r}")
            store_dtype = _STORE_DTYPES[store_dtype]
        elif store_dtype is not None and not (isinstance(store_dtype, torch.dtype)
                                              and store_dtype.is_floating_point):
            raise ValueError(f"Argument `store_dtype` must be one of {sorted(_STORE_DTYPES)}, "
                             f"a floating torch.dtype or None, but got {store_dtype!r}")
        self.max_bytes = max_bytes
        self.directory = directory
        self.policy = policy
        self.store_dtype: torch.dtype | None = store_dtype
        self.stats = stats if stats is not None else CacheStats()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.nbytes = 0
        self._tick = 0
        self._seen: set[int] = set()  # hashes of every full key looked up or stored
        self._bytes_per_image: dict[str, int] = {}
        self._warned: set[str] = set()
        self._disk_writable = directory is not None

    def __repr__(self) -> str:
        return (f"TargetFeatureCache(max_bytes={self.max_bytes}, directory={self.directory!r}, "
                f"policy={self.policy!r}, store_dtype={self.store_dtype})")

    def __len__(self) -> int:
        return len(self._entries)

    # -- disk ------------------------------------------------------------------------------------

    def _disk_path(self, namespace: str, key: Key) -> Path | None:
        if self.directory is None:
            return None
        # The stored dtype is part of the key: a bf16 store never answers an exact cache.
        folder = hashlib.sha1(f"{namespace}|store={self.store_dtype}".encode()).hexdigest()[:16]
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(str(p) for p in key))[:80]
        digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
        return Path(self.directory) / folder / f"{readable}-{digest}.pt"

    def _warn_once(self, tag: str, message: str) -> None:
        if tag not in self._warned:
            self._warned.add(tag)
            warnings.warn(message, FeatureCacheWarning, stacklevel=3)

    def _read(self, path: Path, namespace: str, key: Key, fp: tuple) -> tuple[list[Tensor], list] | None:
        """Verified features of one disk entry, or None (absent, other target, or unusable)."""
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as err:  # truncated, garbage, torn: many error types, all a miss
            return self._bad_file(path, f"unreadable ({type(err).__name__}: {str(err)[:120]})")
        try:
            if not isinstance(stored, dict) or stored.get("format") != _FORMAT:
                return self._bad_file(path, "not a feature-cache entry of this version")
            if stored["namespace"] != namespace or tuple(stored["key"]) != key:
                return self._bad_file(path, f"it belongs to another entry ({stored['key']!r} in "
                                            f"namespace {stored['namespace'][:60]!r})")
            features = stored["features"]
            if not isinstance(features, list) or not all(isinstance(f, Tensor) for f in features):
                return self._bad_file(path, "its features are not a list of tensors")
            header = {k: v for k, v in stored.items() if k not in ("checksum", "features")}
            if entry_checksum(header, features) != stored["checksum"]:
                return self._bad_file(path, "its header or feature bytes do not match their checksum")
            if stored["store_dtype"] != str(self.store_dtype):
                return self._bad_file(path, f"it was stored as {stored['store_dtype']}, this cache "
                                            f"stores {self.store_dtype}")
            shape, dtype, digest = stored["fingerprint"]
            if (tuple(shape), dtype, digest) != fp:
                return None  # the same key for another target: an ordinary miss
            if not all(d in _DTYPES for d in stored["dtypes"]) or len(stored["dtypes"]) != len(features):
                return self._bad_file(path, f"its dtype list {stored['dtypes']!r} does not describe "
                                            "its features")
            dtypes = [_DTYPES[d] for d in stored["dtypes"]]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            return self._bad_file(path, f"malformed ({type(err).__name__}: {err})")
        return features, dtypes

    def _bad_file(self, path: Path, reason: str) -> None:
        self.stats.bad_files += 1
        self._warn_once(str(path), f"feature cache: ignoring {path}: {reason}; it counts as a miss "
                                   "and is rewritten")
        return None

    def _write(self, path: Path, payload: dict) -> None:
        if not self._disk_writable:
            return
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.",
                                       suffix=f".{os.getpid()}.tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half
            tmp = None
        except (OSError, RuntimeError) as err:  # read-only, disk full (torch says RuntimeError)
            self.stats.write_errors += 1
            self._disk_writable = False
            self._warn_once("write", f"feature cache: cannot write to {self.directory} "
                                     f"({type(err).__name__}: {str(err)[:160]}); caching in memory "
                                     "only from now on (existing disk entries are still read)")
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # -- public API ------------------------------------------------------------------------------

    def get(self, namespace: str, key: Key, image: Tensor) -> list[Tensor] | None:
        """Cached features of ``image`` under ``key``, or None (also when the target changed)."""
        key = check_key(key)
        full = (namespace, *key)
        self._tick += 1
        self._seen.add(hash(full))
        fp = fingerprint(image)
        entry = self._entries.get(full)
        if entry is not None and entry.fingerprint == fp:
            entry.last_used = self._tick
            self._entries.move_to_end(full)
            self.stats.hits += 1
            return self._restore(entry.features, entry.dtypes, image.device)
        path = self._disk_path(namespace, key)
        if path is not None:
            found = self._read(path, namespace, key, fp)
            if found is not None:
                features, dtypes = found
                self.stats.hits += 1
                self.stats.disk_hits += 1
                features = [f.to(image.device) for f in features]
                self._remember(full, features, dtypes, fp)
                return self._restore(features, dtypes, image.device)
        self.stats.misses += 1
        return None

    def put(self, namespace: str, key: Key, image: Tensor, features: list[Tensor]) -> None:
        """Store detached features of one target image (a copy: a view would pin its batch)."""
        key = check_key(key)
        full = (namespace, *key)
        self._seen.add(hash(full))
        dtypes = [f.dtype for f in features]
        self._bytes_per_image[namespace] = features_nbytes(features)
        stored = [self._stored(f) for f in features]
        fp = fingerprint(image)
        path = self._disk_path(namespace, key)
        if path is not None and self._disk_writable:
            cpu = [f.cpu() for f in stored]
            header = {"format": _FORMAT, "namespace": namespace, "key": list(key),
                      "fingerprint": [list(fp[0]), fp[1], fp[2]], "dtypes": [str(d) for d in dtypes],
                      "store_dtype": str(self.store_dtype)}
            self._write(path, {**header, "checksum": entry_checksum(header, cpu), "features": cpu})
        self._remember(full, stored, dtypes, fp)

    def _stored(self, f: Tensor) -> Tensor:
        f = f.detach()
        if self.store_dtype is not None and f.is_floating_point() and f.dtype != self.store_dtype:
            return f.to(self.store_dtype)  # a new tensor already
        return f.clone()

    @staticmethod
    def _restore(features: list[Tensor], dtypes: list[torch.dtype], device: torch.device) -> list[Tensor]:
        return [f if f.dtype == d and f.device == device else f.to(device=device, dtype=d)
                for f, d in zip(features, dtypes, strict=True)]

    def _is_stale(self, entry: _Entry) -> bool:
        return self._tick - entry.last_used > 2 * len(self._seen)

    def _remember(self, full: tuple, features: list[Tensor], dtypes: list[torch.dtype], fp: tuple) -> None:
        nbytes = features_nbytes(features)
        if full in self._entries:
            self.nbytes -= self._entries.pop(full).nbytes
        if nbytes > self.max_bytes:
            self.stats.rejected += 1
            return
        while self.nbytes + nbytes > self.max_bytes:
            _, oldest = next(iter(self._entries.items()))
            if self.policy == "keep" and not self._is_stale(oldest):
                self.stats.rejected += 1  # keep what is resident: no thrashing under cyclic access
                return
            self.nbytes -= self._entries.popitem(last=False)[1].nbytes
            self.stats.evictions += 1
        self._entries[full] = _Entry(features, dtypes, fp, nbytes, self._tick)
        self.nbytes += nbytes

    def clear(self) -> None:
        """Drop every in-memory entry (the on-disk store stays)."""
        self._entries.clear()
        self.nbytes = 0

    def bytes_per_image(self, namespace: str) -> int | None:
        """Bytes of one image's features (as computed) last stored under ``namespace``, or None."""
        return self._bytes_per_image.get(namespace)

    def stored_bytes(self, bytes_per_image: int) -> int:
        """What ``bytes_per_image`` of float32 features take in this cache (``store_dtype``)."""
        if self.store_dtype is None:
            return bytes_per_image
        return bytes_per_image * torch.empty(0, dtype=self.store_dtype).element_size() // 4

    def expected_hit_rate(self, n_images: int, bytes_per_image: int) -> float:
        """Memory hit rate per epoch, from the second epoch on, when ``n_images`` are visited cyclically.

        ``bytes_per_image`` is one image's features as the encoder returns them (float32). The
        whole budget is assumed to be available to these images.

        Example:
            >>> TargetFeatureCache(max_bytes=100).expected_hit_rate(10, 20)  # holds 5 of 10
            0.5
            >>> TargetFeatureCache(max_bytes=100, policy="lru").expected_hit_rate(10, 20)
            0.0
        """
        if n_images <= 0:
            return 0.0
        holds = self.max_bytes // max(1, self.stored_bytes(bytes_per_image))
        if holds >= n_images:
            return 1.0
        return holds / n_images if self.policy == "keep" else 0.0

    def plan(self, n_images: int, bytes_per_image: int | None = None, *, namespace: str | None = None,
             name: str = "DFD") -> str:
        """One human line: bytes per image, images in the set, what the budget holds, hit rate.

        Meant for the start of validation, one line per DFD. ``bytes_per_image`` is one image's
        features as the encoder returns them; when None it is taken from the last entry stored
        under ``namespace`` (known after the first validation batch).

        Example:
            >>> cache = TargetFeatureCache(max_bytes=2 << 30, store_dtype="bf16")
            >>> print(cache.plan(7100, 48 << 20, name="lpips_vgg"))  # doctest: +NORMALIZE_WHITESPACE
            feature cache for lpips_vgg: 48.0 MiB per image (24.0 MiB stored as bf16) x 7100 images
            = 166.4 GiB stored; the 2.0 GiB budget holds 85 (1.2 %); expected hit rate from epoch 2: 1.2 %
            (policy keep)
        """
        if bytes_per_image is None and namespace is not None:
            bytes_per_image = self.bytes_per_image(namespace)
        if bytes_per_image is None:
            return (f"feature cache for {name}: {n_images} images, budget "
                    f"{_format_bytes(self.max_bytes)} (policy {self.policy}); bytes per image unknown "
                    "until the first batch is encoded")
        stored = self.stored_bytes(bytes_per_image)
        holds = min(n_images, self.max_bytes // max(1, stored))
        rate = self.expected_hit_rate(n_images, bytes_per_image)
        dtype = "" if self.store_dtype is None else (
            f" ({_format_bytes(stored)} stored as {str(self.store_dtype).removeprefix('torch.')})"
            .replace("bfloat16", "bf16").replace("float16", "fp16"))
        share = f"{100 * holds / n_images:.1f} %" if n_images else "-"
        line = (f"feature cache for {name}: {_format_bytes(bytes_per_image)} per image{dtype} x "
                f"{n_images} images = {_format_bytes(stored * n_images)} stored; the "
                f"{_format_bytes(self.max_bytes)} budget holds {holds} ({share}); expected hit rate "
                f"from epoch 2: {100 * rate:.1f} % (policy {self.policy})")
        if self.directory is not None:
            line += f"; the rest from disk at {self.directory}"
        return line
