"""The maps cache follows content, not names and times; bad k-space and headers are named at load."""

from __future__ import annotations

import os
import shutil
import time

import h5py
import numpy as np
import pytest

from recon_models.data import DataFormatError, FastMRIDataModule, FastMRISliceDataset, SensitivityCache
from recon_models.data.fastmri_format import check_volume, ismrmrd_header
from recon_models.data.maps_cache import content_digest
from recon_models.data.synthetic import make_synthetic_dataset

SIZE = dict(coils=2, shape=(32, 16), recon_shape=(16, 16))


@pytest.fixture
def volume(tmp_path):
    [path] = make_synthetic_dataset(tmp_path / "data", 1, slices=3, seed=0, **SIZE)
    return path


def _same_size_replacement(path, tmp_path, factor=2.0):
    """``cp -p``: other k-space of the same size copied over ``path``, its mtime kept."""
    other = tmp_path / "other.h5"
    shutil.copyfile(path, other)
    with h5py.File(other, "r+") as hf:
        hf["kspace"][...] = hf["kspace"][()] * factor
    assert other.stat().st_size == path.stat().st_size
    before = path.stat()
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    shutil.copy2(other, path)  # copies content and the (kept) times, like cp -p / rsync -t
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("method", ["rss", "espirit"])
def test_same_size_replacement_with_mtime_kept_recomputes_maps_and_maximum(volume, tmp_path, method):
    cache = SensitivityCache(method, cache_dir=tmp_path / "cache")
    maps, volume_max = cache.load(volume, 0)
    old_file = cache.cache_file(volume)
    _same_size_replacement(volume, tmp_path, factor=2.0)
    fresh = SensitivityCache(method, cache_dir=tmp_path / "cache")  # a new process, same folder
    new_maps, new_max = fresh.load(volume, 0)
    assert fresh.misses == 1 and fresh.hits == 0  # old code: hit, stale maps and maximum
    assert fresh.cache_file(volume) != old_file
    assert new_max == pytest.approx(2 * volume_max, rel=1e-5)
    # the volume maximum is what a fresh estimate gives
    reference = SensitivityCache(method, cache_dir=tmp_path / "reference").load(volume, 0)
    assert new_max == pytest.approx(reference[1], rel=1e-6)
    np.testing.assert_allclose(np.abs(new_maps), np.abs(reference[0]), atol=1e-5)


def test_unchanged_volume_is_a_hit_and_is_hashed_once_per_file_state(volume, tmp_path, monkeypatch):
    monkeypatch.setattr("recon_models.data.maps_cache.RACY_WINDOW_NS", 0)
    cache = SensitivityCache("rss", cache_dir=tmp_path / "cache")
    for slice_num in range(3):
        cache.load(volume, slice_num)
    assert (cache.misses, cache.hits, cache.digests_computed) == (1, 2, 1)
    again = SensitivityCache("rss", cache_dir=tmp_path / "cache")  # remembered on disk
    again.load(volume, 1)
    assert (again.misses, again.hits, again.digests_computed) == (0, 1, 0)
    os.utime(volume)  # touched: new file state, same content: hashed again, still a hit
    again.load(volume, 2)
    assert (again.misses, again.digests_computed) == (0, 1)


def test_content_digest_is_content_exact_and_its_cost_is_small(tmp_path):
    data = np.random.default_rng(0).standard_normal(8 << 20).astype(np.float32).tobytes()  # 32 MiB
    path = tmp_path / "blob"
    path.write_bytes(data)
    start = time.perf_counter()
    first = content_digest(path)
    seconds = time.perf_counter() - start
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1  # one bit
    path.write_bytes(bytes(flipped))
    assert content_digest(path) != first
    assert seconds < 2.0  # ~0.04 s at 0.8 GB/s; generous for shared CI cores


# ------------------------------------------------------------------------- bad k-space values


def _poison(path, slice_num, value, everywhere=False):
    with h5py.File(path, "r+") as hf:
        kspace = hf["kspace"][()]
        if everywhere:
            kspace[...] = value
        else:
            kspace[slice_num, 0, 3, 4] = value
        hf["kspace"][...] = kspace


def test_nan_in_kspace_names_file_slice_and_cause(volume):
    _poison(volume, 1, np.nan)
    with pytest.raises(DataFormatError, match=r"slice 1: k-space holds NaN \(1 of 1024 values\)") as info:
        FastMRIDataModule(data_path=str(volume.parent), split=(1, 0, 0), sens_method="rss").prepare_data()
    assert info.value.path == str(volume) and info.value.key == "kspace"


def test_nan_caught_per_slice_when_read(volume, tmp_path):
    from recon_models.data import ReconTransform, build_mask_func

    transform = ReconTransform(build_mask_func("random", (4,)), SensitivityCache("rss"), fixed_mask=True)
    dataset = FastMRISliceDataset(volume.parent, transform)
    kspace, mask, target, attrs, fname, slice_num = FastMRISliceDataset(volume.parent)[2]
    kspace = kspace.copy()
    kspace[1, 0, 0] = complex(np.nan, 0)
    with pytest.raises(DataFormatError, match=f"{volume.name}.*slice 2: k-space holds NaN"):
        transform(kspace, mask, target, attrs, fname, slice_num)
    assert np.isfinite(dataset[2].masked_kspace.numpy()).all()


def test_all_inf_kspace_is_reported_as_inf_not_zeros(volume):
    _poison(volume, 0, np.inf, everywhere=True)
    with pytest.raises(DataFormatError, match=r"slice 0: k-space holds .*inf") as info:
        SensitivityCache("rss", cache_dir=volume.parent.with_name("cache")).load(volume, 0)
    assert "zeros" not in str(info.value)


# ----------------------------------------------------------------------------- header sizes


def _rewrite_header(path, recon_size=(16, 16), encoding_size=(32, 16)):
    import re

    xml = ismrmrd_header((32, 16), recon_size, 3, 2).decode()
    # encodedSpace/matrixSize/x (the first <x> of the file) set as given
    xml = re.sub(r"(<encodedSpace><matrixSize><x>)\d+", rf"\g<1>{encoding_size[0]}", xml)
    with h5py.File(path, "r+") as hf:
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = xml.encode()


@pytest.mark.parametrize(("recon_size", "encoding_size", "message"), [
    ((-16, 16), (32, 16), r"reconSpace/matrixSize \(x, y\) = \(-16, 16\) must be positive"),
    ((16, 0), (32, 16), r"reconSpace/matrixSize \(x, y\) = \(16, 0\) must be positive"),
    ((16, 16), (0, 16), r"encodedSpace/matrixSize \(x, y\) = \(0, 16\) must be positive"),
    ((64, 16), (32, 16), r"reconSpace/matrixSize x = 64 is larger than the k-space height 32"),
])  # fmt: skip
def test_impossible_header_sizes_are_named(volume, recon_size, encoding_size, message):
    _rewrite_header(volume, recon_size, encoding_size)
    with pytest.raises(DataFormatError, match=message) as info:
        check_volume(volume)
    assert info.value.key == "ismrmrd_header" and info.value.path == str(volume)
