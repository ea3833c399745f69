"""Coil maps: ESPIRiT agrees with sigpy, SENSE identities hold, the per-volume cache works."""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest
import torch

import recon_models.data.maps_cache as maps_cache
from recon_models.data.maps_cache import SensitivityCache, default_cache_dir
from recon_models.data.sensitivity import (
    espirit_maps,
    estimate_maps,
    jsense_maps,
    rss_maps,
    sense_combine,
)
from recon_models.data.synthetic import make_synthetic_dataset, synthetic_kspace
from recon_models.fourier import fft2c, ifft2c


@pytest.fixture(scope="module")
def slice_kspace() -> np.ndarray:
    kspace, _ = synthetic_kspace(1, 4, (64, 32), (32, 32), seed=5)
    return kspace[0]


def test_fft_helpers_match_fastmri(slice_kspace):
    import fastmri

    k = torch.from_numpy(slice_kspace)
    expected = torch.view_as_complex(fastmri.ifft2c(torch.view_as_real(k)).contiguous())
    torch.testing.assert_close(ifft2c(k), expected)
    torch.testing.assert_close(fft2c(ifft2c(k)), k, atol=1e-6, rtol=1e-5)


def test_espirit_matches_sigpy_run_to_convergence():
    from sigpy.mri.app import EspiritCalib

    kspace = synthetic_kspace(1, 6, (64, 32), (32, 32), seed=1)[0][0]
    # sigpy's power method stops at 100 iterations by default, unconverged where the top two
    # eigenvalues are close; run to convergence it gives what our direct eigensolver returns.
    start = time.perf_counter()
    reference = EspiritCalib(kspace, max_iter=1000, show_pbar=False).run()
    sigpy_seconds = time.perf_counter() - start
    start = time.perf_counter()
    ours = espirit_maps(kspace).numpy()
    ours_seconds = time.perf_counter() - start
    inside_ref, inside = np.abs(reference).sum(0) > 0, np.abs(ours).sum(0) > 0
    assert (inside_ref == inside).mean() > 0.995 and inside.mean() > 0.5
    both = inside_ref & inside
    np.testing.assert_allclose(ours[:, both], reference[:, both], atol=1e-4)
    print(f"ESPIRiT 6 coils 64x32: sigpy {sigpy_seconds:.2f} s, ours {ours_seconds:.2f} s")


@pytest.mark.parametrize("method", ["espirit", "jsense", "rss"])
def test_maps_are_normalised_and_combine_to_the_image(slice_kspace, method):
    maps = estimate_maps(slice_kspace, method)
    assert maps.shape == slice_kspace.shape and maps.dtype == torch.complex64
    energy = maps.abs().square().sum(0)
    inside = energy > 0.5
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(energy[inside], torch.ones_like(energy[inside]), atol=1e-3, rtol=0)
    # SENSE: coil images are reproduced by S_c * x inside the object (noise aside).
    k = torch.from_numpy(slice_kspace)
    image = sense_combine(k, maps)
    coils = ifft2c(k)
    residual = (coils - maps * image)[:, inside].abs().square().sum()
    assert residual < 0.05 * coils[:, inside].abs().square().sum()


def test_rss_maps_give_the_rss_image(slice_kspace):
    k = torch.from_numpy(slice_kspace)
    rss = ifft2c(k).abs().square().sum(0).sqrt()
    combined = sense_combine(k, rss_maps(k))
    torch.testing.assert_close(combined.real, rss, rtol=1e-5, atol=1e-9)
    assert combined.imag.abs().max() < 1e-6 * rss.max()


def test_jsense_runs_on_its_own(slice_kspace):
    maps = jsense_maps(slice_kspace, max_iter=2)
    assert maps.shape == slice_kspace.shape and torch.isfinite(maps).all()


def test_espirit_refuses_too_small_kspace():
    with pytest.raises(ValueError, match="at least 11 x 11"):
        espirit_maps(torch.ones(2, 8, 8, dtype=torch.complex64))


@pytest.fixture
def small_volume(tmp_path):
    [path] = make_synthetic_dataset(tmp_path / "data", 1, slices=3, coils=3, shape=(32, 16),
                                    recon_shape=(16, 16))  # fmt: skip
    return path


def test_cache_lives_beside_the_data_and_is_hit_the_second_time(small_volume, monkeypatch):
    calls = []
    real_estimate = maps_cache.estimate_maps
    monkeypatch.setattr(
        maps_cache, "estimate_maps", lambda *a, **k: calls.append(1) or real_estimate(*a, **k)
    )
    cache = SensitivityCache("espirit")
    maps, volume_max = cache.load(small_volume, 1)
    assert len(calls) == 3  # every slice, once per volume
    cache_file = cache.cache_file(small_volume)
    assert cache_file.parent == default_cache_dir(small_volume)
    assert cache_file.parent.name == "data_sense_cache"
    assert list(small_volume.parent.iterdir()) == [small_volume]  # nothing in the data folder

    again = SensitivityCache("espirit")  # a fresh process would see the same file
    maps2, volume_max2 = again.load(small_volume, 1)
    assert len(calls) == 3 and (again.hits, again.misses) == (1, 0)
    np.testing.assert_array_equal(maps, maps2)
    assert volume_max == volume_max2

    # The volume maximum is the maximum SENSE magnitude over every slice.
    with h5py.File(small_volume) as hf:
        kspace = torch.from_numpy(hf["kspace"][()])
    with h5py.File(cache_file) as hf:
        all_maps = torch.from_numpy(hf["maps"][()])
    assert volume_max == pytest.approx(float(sense_combine(kspace, all_maps).abs().max()))


def test_cache_key_follows_data_and_parameters(small_volume, tmp_path):
    cache = SensitivityCache("espirit", cache_dir=tmp_path / "cache")
    first = cache.ensure(small_volume)
    assert (
        SensitivityCache("espirit", cache_dir=tmp_path / "cache", crop=0.8).cache_file(small_volume) != first
    )
    assert SensitivityCache("jsense", cache_dir=tmp_path / "cache").cache_file(small_volume) != first
    stat = small_volume.stat()
    os.utime(small_volume, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    assert cache.cache_file(small_volume) == first  # keyed by content, not by time
    with h5py.File(small_volume, "r+") as hf:  # data changed
        hf["kspace"][0, 0, 0, 0] += 1
    assert cache.cache_file(small_volume) != first


def test_rss_cache_holds_only_the_volume_maximum(small_volume):
    cache = SensitivityCache("rss")
    maps, volume_max = cache.load(small_volume, 0)
    with h5py.File(cache.cache_file(small_volume)) as hf:
        assert "maps" not in hf
    with h5py.File(small_volume) as hf:
        images = ifft2c(torch.from_numpy(hf["kspace"][()]))
    assert volume_max == pytest.approx(float(images.abs().square().sum(1).sqrt().max()), rel=1e-5)
    assert maps.shape == (3, 32, 16)


def test_cache_inside_the_data_folder_is_refused(small_volume, tmp_path):
    with pytest.raises(ValueError, match="must not be the data folder"):
        SensitivityCache("rss", cache_dir=small_volume.parent).ensure(small_volume)
    link = tmp_path / "cache_link"  # the data folder under another name: refused as well
    link.symlink_to(small_volume.parent, target_is_directory=True)
    with pytest.raises(ValueError, match="must not be the data folder"):
        SensitivityCache("rss", cache_dir=link).ensure(small_volume)
    with pytest.raises(ValueError, match="must not be the data folder"):
        SensitivityCache("rss", cache_dir=small_volume.parent / "sub" / "..").ensure(small_volume)
    assert sorted(p.name for p in small_volume.parent.iterdir()) == [small_volume.name]


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="sens_method"):
        SensitivityCache("sense")
