"""Bad data raises errors that name the file and the key (or the folder) at fault."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from recon_models.data import (
    DataFormatError,
    FastMRIDataModule,
    FastMRISliceDataset,
    ReconTransform,
    SensitivityCache,
    build_mask_func,
)
from recon_models.data.fastmri_format import check_volume
from recon_models.data.synthetic import make_synthetic_dataset

SIZE = dict(coils=2, shape=(32, 16), recon_shape=(16, 16))


@pytest.fixture
def good_file(tmp_path):
    [path] = make_synthetic_dataset(tmp_path / "data", 1, slices=2, **SIZE)
    return path


def _rewrite_without(path, key):
    with h5py.File(path, "a") as hf:
        del hf[key]


def test_missing_kspace_names_file_and_key(good_file):
    _rewrite_without(good_file, "kspace")
    with pytest.raises(DataFormatError, match="kspace") as info:
        FastMRISliceDataset(good_file.parent)
    assert info.value.path == str(good_file) and info.value.key == "kspace"
    assert str(good_file) in str(info.value) and "missing key" in str(info.value)


def test_missing_header_names_the_key(good_file):
    _rewrite_without(good_file, "ismrmrd_header")
    with pytest.raises(DataFormatError, match="ismrmrd_header"):
        check_volume(good_file)


def test_header_without_encoding_limits_names_the_element(good_file):
    with h5py.File(good_file, "a") as hf:
        xml = hf["ismrmrd_header"][()].replace(b"kspace_encoding_step_1", b"kspace_step_x")
        del hf["ismrmrd_header"]
        hf["ismrmrd_header"] = xml
    with pytest.raises(DataFormatError, match="encodingLimits/kspace_encoding_step_1") as info:
        FastMRISliceDataset(good_file.parent)
    assert info.value.key == "ismrmrd_header" and str(good_file) in str(info.value)


def test_truncated_file_names_the_file(good_file):
    data = good_file.read_bytes()
    good_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="truncated") as info:
        FastMRISliceDataset(good_file.parent)
    assert info.value.path == str(good_file)


def test_wrong_kspace_layout_names_shape_and_dtype(good_file):
    with h5py.File(good_file, "a") as hf:
        real = np.abs(hf["kspace"][()]).astype(np.float32)
        del hf["kspace"]
        hf["kspace"] = real
    with pytest.raises(DataFormatError, match=r"kspace.*float32"):
        check_volume(good_file)


def test_mask_of_wrong_width_names_file_and_key(good_file):
    with h5py.File(good_file, "a") as hf:
        hf["mask"] = np.ones(15, dtype=np.float32)  # k-space is 16 wide
    with pytest.raises(DataFormatError, match=r"key 'mask'.*width 16") as info:
        FastMRISliceDataset(good_file.parent)
    assert str(good_file) in str(info.value)


def test_transform_rejects_a_mask_of_wrong_width(good_file):
    transform = ReconTransform(build_mask_func("random", (4,)), SensitivityCache("rss"),
                               fixed_mask=True)  # fmt: skip
    dataset = FastMRISliceDataset(good_file.parent, transform)  # checks pass: no mask in file
    kspace, _, target, attrs, fname, slice_num = FastMRISliceDataset(good_file.parent)[0]
    with pytest.raises(DataFormatError, match=r"key 'mask'.*\(12,\).*width 16"):
        transform(kspace, np.ones(12), target, attrs, fname, slice_num)
    assert dataset[0].mask.shape == (1, 1, 16)


def test_file_mask_of_right_width_is_used(good_file):
    mask = np.zeros(16, dtype=np.float32)
    mask[6:10] = 1
    with h5py.File(good_file, "a") as hf:
        hf["mask"] = mask
    transform = ReconTransform(build_mask_func("random", (4,)), SensitivityCache("rss"))
    sample = FastMRISliceDataset(good_file.parent, transform)[0]
    np.testing.assert_array_equal(sample.mask.flatten().numpy(), mask)


def test_empty_and_missing_folders_name_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty}.*no .h5 files"):
        FastMRISliceDataset(empty)
    with pytest.raises(FileNotFoundError, match=f"{empty}.*no .h5 files"):
        FastMRIDataModule(data_path=str(empty), sens_method="rss").setup("fit")
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*does not exist"):
        FastMRISliceDataset(missing)


def test_other_entries_in_the_folder_are_ignored(good_file):
    (good_file.parent / "README.txt").write_text("not a volume")
    (good_file.parent / "subfolder").mkdir()
    assert len(FastMRISliceDataset(good_file.parent)) == 2


def test_requested_file_that_is_absent_is_named(good_file):
    with pytest.raises(FileNotFoundError, match="file_synth0099.h5"):
        FastMRISliceDataset(good_file.parent, files=["file_synth0099.h5"])


def test_file_damaged_after_indexing_names_file_and_key(good_file):
    dataset = FastMRISliceDataset(good_file.parent)
    _rewrite_without(good_file, "kspace")
    with pytest.raises(DataFormatError, match="kspace") as info:
        dataset[1]
    assert info.value.path == str(good_file) and "slice 1" in str(info.value)


def test_error_survives_pickling_across_worker_processes():
    error = DataFormatError("/data/file1.h5", "kspace", "missing key")
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.key == "kspace"
