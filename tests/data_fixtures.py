"""Pytest plugin: small synthetic fastMRI datasets shared by the whole test session.

Registered in ``tests/conftest.py`` through ``pytest_plugins``. Fixtures:

- ``synthetic_dir`` (session): a folder of 5 synthetic volumes (4 coils, k-space 64x32,
  reconSpace 32x32, 3-5 slices each, so volumes have unequal lengths), made once per session.
  Its default maps cache (``<folder>_sense_cache``) is shared by every test that uses it.
- ``make_datamodule`` (function): a factory ``make_datamodule(**overrides)`` returning a
  ``FastMRIDataModule`` on ``synthetic_dir`` (defaults: ``sens_method="espirit"``, 4x random
  masks, ``batch_size=2``).
- ``synthetic_batch`` (session): one collated validation batch (``ReconSample``, B=2, ESPIRiT
  maps) for model and module tests.

Plain helpers: ``make_synthetic_dataset(root, volumes, slices, ...)`` (re-exported from
``recon_models.data.synthetic``) and ``SYNTHETIC_KWARGS`` (the sizes above).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recon_models.data.datamodule import FastMRIDataModule
from recon_models.data.synthetic import make_synthetic_dataset

__all__ = ["SYNTHETIC_KWARGS", "make_synthetic_dataset"]

SYNTHETIC_KWARGS = dict(volumes=5, slices=(3, 5), coils=4, shape=(64, 32), recon_shape=(32, 32), seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """Five small synthetic fastMRI multi-coil volumes of unequal slice counts (read-only)."""
    root = tmp_path_factory.mktemp("synthetic") / "knee"
    make_synthetic_dataset(root, **SYNTHETIC_KWARGS)
    return root


@pytest.fixture
def make_datamodule(synthetic_dir):
    """Factory of ``FastMRIDataModule`` on ``synthetic_dir``; keyword arguments override."""

    def make(**overrides) -> FastMRIDataModule:
        options = dict(
            data_path=str(synthetic_dir),
            sens_method="espirit",
            mask_type="random",
            accelerations=(4,),
            batch_size=2,
        )
        options.update(overrides)
        return FastMRIDataModule(**options)

    return make


@pytest.fixture(scope="session")
def synthetic_batch(synthetic_dir):
    """A collated validation batch of two slices of ``synthetic_dir`` (ESPIRiT maps)."""
    datamodule = FastMRIDataModule(data_path=str(synthetic_dir), batch_size=2)
    datamodule.setup("validate")
    return next(iter(datamodule.val_dataloader()))
