"""One sample-id scheme for every caller: ``sample_id = volume << 16 | slice``.

A *sample id* names one image for the target-feature cache and for per-image tables: the
volume it comes from and its slice. ``recon_models`` numbers volumes by their index in the split;
:class:`~lightning_dfd.DFDCallback` and named volumes use :func:`volume_key` of the file name
(BLAKE2b, equal in every process and session, unlike ``hash()``). Either way
:func:`split_sample_id` gives the slice back. Two names whose keys agree in the low 47 bits share
sample ids with probability ``k**2 / 2**48`` for ``k`` names; the feature cache's target
fingerprint turns such a clash into a miss, never a wrong value.

Example:
    >>> sid = sample_id(3, 12)
    >>> split_sample_id(sid)
    (3, 12)
    >>> a, b = name_sample_id("file1000.h5", 3), name_sample_id("file1000.h5", 4)
    >>> a == name_sample_id("file1000.h5", 3) != b
    True
"""

from __future__ import annotations

import hashlib

__all__ = ["SLICE_BITS", "VOLUME_BITS", "name_sample_id", "sample_id", "split_sample_id", "volume_key"]

#: bits of the slice number (slices per volume < 65536)
SLICE_BITS = 16
#: bits of the volume part of a sample id (the id stays a non-negative int64)
VOLUME_BITS = 47


def volume_key(name: str, *tags: object) -> int:
    """The signed int64 key of a volume name (BLAKE2b of the UTF-8 name; ``tags`` joined by NUL).

    The same in every process and Python session, so named volumes split across DDP processes
    meet again after sync; two names share a key with probability about ``k**2 / 2**65``.

    Example:
        >>> key = volume_key("file1000000.h5")
        >>> key == volume_key("file1000000.h5") != volume_key("file1000001.h5")
        True
    """
    text = "\x00".join([name, *(str(t) for t in tags)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def sample_id(volume: int, slice_num: int) -> int:
    """``(volume mod 2**47) << 16 | slice_num``: a non-negative int64.

    Raises:
        ValueError: a negative slice or one of 65536 or more.
    """
    if not 0 <= int(slice_num) < 1 << SLICE_BITS:
        raise ValueError(f"slice number {slice_num} is outside 0..{(1 << SLICE_BITS) - 1}")
    return (int(volume) % (1 << VOLUME_BITS)) << SLICE_BITS | int(slice_num)


def name_sample_id(name: str, slice_num: int, *tags: object) -> int:
    """:func:`sample_id` of a named volume (``tags``, e.g. a dataloader, keep other suites apart)."""
    return sample_id(volume_key(name, *tags), slice_num)


def split_sample_id(sid: int) -> tuple[int, int]:
    """``(volume mod 2**47, slice)`` of a :func:`sample_id`."""
    return int(sid) >> SLICE_BITS, int(sid) & ((1 << SLICE_BITS) - 1)
