"""Synthetic fastMRI files: fastMRI's own SliceDataset reads them unchanged; content is realistic."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from fastmri import rss as fastmri_rss
from fastmri.data import SliceDataset
from fastmri.data.transforms import center_crop, to_tensor

from recon_models.data.fastmri_format import check_volume, parse_header
from recon_models.data.synthetic import (
    KneeAnatomy,
    coil_sensitivities,
    knee_volume,
    main,
    make_synthetic_dataset,
    synthetic_kspace,
)
from recon_models.fourier import fft2c, ifft2c
from tests.data_fixtures import SYNTHETIC_KWARGS


def test_fastmri_slice_dataset_reads_synthetic_files(synthetic_dir):
    dataset = SliceDataset(synthetic_dir, challenge="multicoil", use_dataset_cache=False)
    per_volume = {}
    for fname, _, _ in dataset.raw_samples:
        per_volume[fname.name] = per_volume.get(fname.name, 0) + 1
    assert len(per_volume) == SYNTHETIC_KWARGS["volumes"]
    assert set(per_volume.values()) <= {3, 4, 5} and len(set(per_volume.values())) > 1

    kspace, mask, target, attrs, fname, slice_num = dataset[0]
    assert kspace.shape == (4, 64, 32) and kspace.dtype == np.complex64
    assert mask is None
    assert target.shape == (32, 32) and target.dtype == np.float32
    assert attrs["encoding_size"] == (64, 32, 1) and attrs["recon_size"] == (32, 32, 1)
    assert (attrs["padding_left"], attrs["padding_right"]) == (0, 32)
    assert attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
    assert isinstance(attrs["patient_id"], str) and len(attrs["patient_id"]) == 64
    assert fname == "file_synth0000.h5" and slice_num == 0


def test_reconstruction_rss_is_fastmri_rss_of_the_centre_crop(synthetic_dir):
    path = synthetic_dir / "file_synth0001.h5"
    with h5py.File(path) as hf:
        kspace = to_tensor(hf["kspace"][()])  # fastMRI's (..., 2) layout
        stored = torch.from_numpy(hf["reconstruction_rss"][()])
        attrs = dict(hf.attrs)
    import fastmri

    expected = center_crop(fastmri_rss(fastmri.complex_abs(fastmri.ifft2c(kspace)), dim=1), (32, 32))
    torch.testing.assert_close(stored, expected, rtol=1e-4, atol=1e-9)
    assert attrs["max"] == pytest.approx(float(stored.max()), rel=1e-6)
    assert attrs["norm"] == pytest.approx(float(stored.double().norm()), rel=1e-5)
    assert 1e-5 < attrs["max"] < 1e-3  # fastMRI-like magnitudes


def test_header_and_check_volume(synthetic_dir):
    info = check_volume(synthetic_dir / "file_synth0002.h5")
    assert (info.num_coils, info.kspace_shape, info.padding) == (4, (64, 32), (0, 32))
    with h5py.File(synthetic_dir / "file_synth0002.h5") as hf:
        header = parse_header(hf["ismrmrd_header"][()])
    assert header["encoding_size"] == (64, 32, 1) and header["recon_size"] == (32, 32, 1)


def test_generation_is_deterministic_and_volumes_differ(tmp_path):
    kwargs = dict(slices=2, coils=2, shape=(32, 16), recon_shape=(16, 16))
    first = make_synthetic_dataset(tmp_path / "a", 2, **kwargs)
    again = make_synthetic_dataset(tmp_path / "b", 1, start_index=1, **kwargs)
    with h5py.File(first[1]) as a, h5py.File(again[0]) as b, h5py.File(first[0]) as c:
        np.testing.assert_array_equal(a["kspace"][()], b["kspace"][()])
        assert not np.allclose(a["kspace"][()], c["kspace"][()])


def test_phantom_has_texture_fine_structure_and_phase():
    rng = np.random.default_rng(0)
    anatomy = KneeAnatomy.sample(rng)
    volume = knee_volume(anatomy, 8, (128, 64), (64, 64), rng)
    image = volume[4]
    magnitude = np.abs(image)
    crop = magnitude[32:96]
    # Not a few flat ellipses: many distinct intensities and real high-frequency content.
    assert len(np.unique(np.round(crop / crop.max(), 3))) > 300
    highpass = np.abs(np.diff(crop, axis=1))
    assert np.percentile(highpass, 90) > 0.02 * crop.max()
    # The object fills the crop (like a knee) and leaves background at the sides.
    assert 0.5 < (crop > 0.02).mean() < 0.97
    # Smooth non-trivial phase inside the object.
    inside = magnitude > 0.1
    assert np.std(np.angle(image[inside])) > 0.05
    # Neighbouring slices look alike, front and back slices less so.
    near = np.corrcoef(np.abs(volume[1]).ravel(), np.abs(volume[2]).ravel())[0, 1]
    far = np.corrcoef(np.abs(volume[0]).ravel(), np.abs(volume[7]).ravel())[0, 1]
    assert near > 0.9 and near > far


def test_coil_maps_are_smooth_and_kspace_has_noise():
    maps = coil_sensitivities(6, 2, (64, 32), (32, 32), np.random.default_rng(1))
    # Smooth: energy concentrated at low spatial frequencies.
    spectrum = np.abs(fft2c(torch.from_numpy(maps[0]))).square().sum(0)
    centre = spectrum[32 - 4 : 32 + 4, 16 - 4 : 16 + 4].sum()
    assert centre > 0.95 * spectrum.sum()
    # Different coils see different regions.
    assert np.corrcoef(np.abs(maps[0, 0]).ravel(), np.abs(maps[0, 3]).ravel())[0, 1] < 0.9

    kspace, anatomy = synthetic_kspace(2, 4, (64, 32), (32, 32), noise_level=0.02, seed=3)
    images = ifft2c(torch.from_numpy(kspace))
    background = images[..., :, :2].abs()  # the two outermost columns hold no object
    assert background.std() > 0
    rss = images.abs().square().sum(1).sqrt()
    assert 0.002 < float(rss[..., :, :2].mean() / rss.max()) < 0.1


def test_command_line_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    status = main([str(out), "--volumes", "2", "--slices", "2", "3", "--coils", "2",
                   "--shape", "32", "16", "--recon-shape", "16", "16"])  # fmt: skip
    assert status == 0
    files = sorted(out.glob("*.h5"))
    assert [f.name for f in files] == ["file_synth0000.h5", "file_synth0001.h5"]
    assert check_volume(files[0]).num_coils == 2
    assert "wrote 2 volumes" in capsys.readouterr().err


def test_bad_generator_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="volumes"):
        make_synthetic_dataset(tmp_path, 0)
    with pytest.raises(ValueError, match="slices"):
        make_synthetic_dataset(tmp_path, 1, slices=(3, 2))
    with pytest.raises(ValueError, match="recon_shape"):
        make_synthetic_dataset(tmp_path, 1, shape=(32, 16), recon_shape=(64, 16))
