"""Per-volume cache of coil sensitivity maps and of the volume's maximum ``|target|``.

Maps are estimated once per volume (every slice) and written to one HDF5 file per volume in a
cache folder **outside** the data folder: ``fastmri.data.SliceDataset`` opens every entry of its
data folder as a volume, so a cache inside it would be read as data. By default the cache of
``.../multicoil_train/file1.h5`` lives in ``.../multicoil_train_sense_cache/``.

A cache file is named ``<stem>.<method>.<key>.h5``, where ``key`` hashes the data file's
**content** (:func:`content_digest`, BLAKE2b over every byte of the file) and every estimation
parameter: changing the data (even to same-size content with the modification time kept, as
``cp -p`` or ``rsync -t`` do) or a parameter computes new maps, never reuses stale ones. The
digest costs one sequential read of the file and BLAKE2b on one core (0.8 GB/s on an idle Xeon
core, 0.26 GB/s on a loaded one: 1.1-3.2 s for a fastMRI knee volume of 640x368, 15 coils, 30
slices, 848 MB, against ~10 min of ESPIRiT for that volume); it is
remembered per file state (device, inode, size, modification and change times) in memory and
in ``<cache folder>/digests/``, so a volume is hashed once, not at every slice. A file changed
in any way gets a new change time (which no tool can set back), hence a new digest.
Files are written to a temporary name and renamed, so processes that race on one volume
(DataLoader workers, DDP ranks) never read half a file.
For ``method="rss"`` only the volume maximum is cached; the maps are computed per slice (cheap).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from lightning_dfd.files import overlap
from recon_models.data.errors import DataFormatError
from recon_models.data.fastmri_format import KSPACE_KEY, check_finite_kspace, open_h5
from recon_models.data.sensitivity import (
    DEFAULT_KERNEL_WIDTH,
    DEFAULT_MAX_ITER,
    SENS_METHODS,
    estimate_maps,
    rss_maps,
    sense_combine,
)

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: keyed by content digest (1: by name, size and mtime)
DIGEST_CHUNK = 8 << 20
#: A file changed this recently may change again within the file system's time resolution:
#: its digest is used but not remembered (git's "racy" rule).
RACY_WINDOW_NS = 2_000_000_000
CACHE_SUFFIX = "_sense_cache"
MAPS_KEY = "maps"
MAX_ATTR = "max_abs_target"


@dataclass(frozen=True)
class SensitivityParams:
    """The estimation parameters; all of them are part of the cache key.

    Attributes:
        method: One of ``"espirit"``, ``"jsense"``, ``"rss"``.
        calib_width: Side of the central calibration region.
        kernel_width: Kernel side (ESPIRiT 6, JSENSE 16 by default).
        threshold: ESPIRiT singular value threshold.
        crop: ESPIRiT eigenvalue crop.
        max_iter: Iterations (ESPIRiT 100, JSENSE 10 by default).
    """

    method: str = "espirit"
    calib_width: int = 24
    kernel_width: int | None = None
    threshold: float = 0.02
    crop: float = 0.95
    max_iter: int | None = None

    def __post_init__(self):
        if self.method not in SENS_METHODS:
            raise ValueError(f"Argument `sens_method` must be one of {SENS_METHODS}, but got {self.method!r}")
        if self.kernel_width is None:
            object.__setattr__(self, "kernel_width", DEFAULT_KERNEL_WIDTH[self.method])
        if self.max_iter is None:
            object.__setattr__(self, "max_iter", DEFAULT_MAX_ITER[self.method])
        if self.calib_width < 1:
            raise ValueError(f"Argument `calib_width` must be >= 1, but got {self.calib_width}")


def content_digest(path: str | os.PathLike, chunk: int = DIGEST_CHUNK) -> str:
    """BLAKE2b-128 of every byte of a file, read in chunks (content-exact, no sampling).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x.bin"
        >>> _ = path.write_bytes(b"k-space")
        >>> content_digest(path) == hashlib.blake2b(b"k-space", digest_size=16).hexdigest()
        True
    """
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _signature(stat: os.stat_result) -> list[int]:
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def default_cache_dir(data_file: str | os.PathLike) -> Path:
    """The cache folder of a data file: a sibling of its folder named ``<folder>_sense_cache``.

    Args:
        data_file: A volume.

    Returns:
        The cache folder.

    Example:
        >>> default_cache_dir("/data/multicoil_val/file1000000.h5").as_posix()
        '/data/multicoil_val_sense_cache'
    """
    folder = Path(data_file).absolute().parent
    return folder.with_name(folder.name + CACHE_SUFFIX)


class SensitivityCache:
    """Estimate coil maps once per volume, keep them on disk, and serve them per slice.

    Args:
        method: ``"espirit"`` (default), ``"jsense"`` or ``"rss"``.
        cache_dir: Cache folder; ``None`` puts each data folder's cache next to it
            (:func:`default_cache_dir`). Must not be a data folder.
        calib_width: Side of the central calibration region.
        kernel_width: Kernel side (``None``: method default).
        threshold: ESPIRiT singular value threshold.
        crop: ESPIRiT eigenvalue crop.
        max_iter: Iterations (``None``: method default).
        device: Device for ESPIRiT (e.g. ``"cuda"``); results are stored on disk either way.

    Attributes:
        hits: Volumes served from an existing cache file by this object.
        misses: Volumes this object estimated and wrote.

    Example:
        >>> import tempfile
        >>> from recon_models.data.synthetic import make_synthetic_dataset
        >>> root = Path(tempfile.mkdtemp()) / "data"
        >>> [path] = make_synthetic_dataset(root, 1, slices=2, coils=2, shape=(32, 16),
        ...                                 recon_shape=(16, 16))
        >>> cache = SensitivityCache("espirit")
        >>> maps, volume_max = cache.load(path, slice_num=1)
        >>> maps.shape, cache.misses, cache.cache_file(path).parent.name
        ((2, 32, 16), 1, 'data_sense_cache')
    """

    def __init__(
        self,
        method: str = "espirit",
        cache_dir: str | os.PathLike | None = None,
        calib_width: int = 24,
        kernel_width: int | None = None,
        threshold: float = 0.02,
        crop: float = 0.95,
        max_iter: int | None = None,
        device: str | None = None,
    ):
        self.params = SensitivityParams(method, calib_width, kernel_width, threshold, crop, max_iter)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.device = device
        self.hits = 0
        self.misses = 0
        #: data files hashed by this object (a volume is hashed once per file state)
        self.digests_computed = 0
        self._digests: dict[str, tuple[list[int], str]] = {}

    @property
    def method(self) -> str:
        """The estimation method."""
        return self.params.method

    def cache_file(self, data_file: str | os.PathLike) -> Path:
        """Where the cache of a volume lives (whether or not it exists yet).

        Args:
            data_file: The volume.

        Returns:
            The cache file path.
        """
        data_file = Path(data_file)
        try:
            stat = data_file.stat()
        except FileNotFoundError as err:
            raise FileNotFoundError(f"data file {data_file} does not exist") from err
        folder = self.cache_dir if self.cache_dir is not None else default_cache_dir(data_file)
        if overlap(data_file.parent, folder) == "same":  # resolved: a link to the data folder too
            raise ValueError(
                f"Argument `cache_dir` ({folder}) must not be the data folder: SliceDataset reads "
                "every file in the data folder as a volume"
            )
        key = json.dumps(
            {
                "content": self.file_digest(data_file, stat, folder),
                "params": asdict(self.params),
                "version": CACHE_FORMAT_VERSION,
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return folder / f"{data_file.stem}.{self.method}.{digest}.h5"

    def file_digest(self, data_file: Path, stat: os.stat_result, folder: Path) -> str:
        """:func:`content_digest` of ``data_file``, remembered per file state (memory and disk)."""
        signature = _signature(stat)
        name = str(data_file.absolute())
        known = self._digests.get(name)
        if known is not None and known[0] == signature:
            return known[1]
        memo = folder / "digests" / f"{data_file.name}.{hashlib.sha256(name.encode()).hexdigest()[:12]}.json"
        try:
            stored = json.loads(memo.read_text())
            if stored.get("signature") == signature and isinstance(stored.get("digest"), str):
                self._digests[name] = (signature, stored["digest"])
                return stored["digest"]
        except (OSError, ValueError, AttributeError):
            pass  # no memo, or an unreadable one: hash the file
        digest = content_digest(data_file)
        self.digests_computed += 1
        if _signature(data_file.stat()) != signature:  # changed while being read: do not remember
            return digest
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) > RACY_WINDOW_NS:
            self._digests[name] = (signature, digest)
            try:
                memo.parent.mkdir(parents=True, exist_ok=True)
                temporary = memo.with_name(f".{memo.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
                temporary.write_text(json.dumps({"signature": signature, "digest": digest}))
                os.replace(temporary, memo)
            except OSError:
                pass  # a read-only cache folder: the digest is remembered in memory only
        return digest

    def ensure(self, data_file: str | os.PathLike) -> Path:
        """Make sure a volume's cache exists (estimating its maps if needed).

        Args:
            data_file: The volume.

        Returns:
            The cache file.
        """
        target = self.cache_file(data_file)
        if target.exists():
            self.hits += 1
            return target
        self.misses += 1
        self._write(Path(data_file), target)
        return target

    def load(
        self,
        data_file: str | os.PathLike,
        slice_num: int,
        kspace: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[np.ndarray, float]:
        """The maps of one slice and the volume's maximum ``|target|`` (unscaled).

        Args:
            data_file: The volume.
            slice_num: The slice.
            kspace: The slice's ``(coils, H, W)`` k-space, if already read (``"rss"`` builds
                the maps from it instead of reading the file again).

        Returns:
            ``(coils, H, W)`` complex64 maps and the volume's maximum SENSE magnitude.
        """
        data_file = Path(data_file)
        target = self.ensure(data_file)
        with open_h5(target) as hf:
            volume_max = float(hf.attrs[MAX_ATTR])
            if self.method != "rss":
                return np.asarray(hf[MAPS_KEY][slice_num]), volume_max
        if kspace is None:
            with open_h5(data_file) as hf:
                kspace = hf[KSPACE_KEY][slice_num]
        return rss_maps(kspace).numpy(), volume_max

    def _write(self, data_file: Path, target: Path) -> None:
        start = time.perf_counter()
        with open_h5(data_file) as hf:
            if KSPACE_KEY not in hf:
                raise DataFormatError(data_file, KSPACE_KEY, "missing key")
            try:
                kspace = torch.from_numpy(np.asarray(hf[KSPACE_KEY][()], dtype=np.complex64))
            except OSError as err:
                raise DataFormatError(data_file, KSPACE_KEY, f"cannot be read: {err}") from err
        maps = torch.zeros_like(kspace) if self.method != "rss" else None
        volume_max = 0.0
        for index, slice_kspace in enumerate(kspace):
            check_finite_kspace(data_file, index, slice_kspace.numpy())  # NaN / inf: named, not "zeros"
            slice_maps = estimate_maps(slice_kspace, device=self.device, **asdict(self.params))
            image = sense_combine(slice_kspace, slice_maps)
            volume_max = max(volume_max, float(image.abs().max()))
            if maps is not None:
                maps[index] = slice_maps
        if not volume_max > 0:
            raise DataFormatError(data_file, KSPACE_KEY, "the volume is all zeros")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(
                f"cannot create the sensitivity map cache folder {target.parent} ({err}); "
                "pass a writable `cache_dir`"
            ) from err
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with h5py.File(temporary, "w") as hf:
                if maps is not None:
                    hf.create_dataset(MAPS_KEY, data=maps.numpy(), chunks=(1, *maps.shape[1:]))
                hf.attrs[MAX_ATTR] = volume_max
                hf.attrs["source"] = str(data_file)
                hf.attrs["params"] = json.dumps(asdict(self.params))
                hf.attrs["seconds"] = time.perf_counter() - start
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        log.info(
            "estimated %s maps of %s (%d slices) in %.1f s",
            self.method,
            data_file.name,
            len(kspace),
            time.perf_counter() - start,
        )
