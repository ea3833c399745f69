"""Test-suite wide set-up: everything runs offline, with weights only from files the tests make."""

from __future__ import annotations

import importlib.util

import pytest

#: What the synthetic-data fixtures import (the ``[recon]`` extra). Without it (the core install,
#: ``make test-lowest``) only the metric fixtures load, and the tests that need data cannot run.
_RECON_MODULES = ("lightning", "fastmri", "h5py", "sigpy")

# Fixture plugins contributed by the data pipeline and the metric tests; the checkout guard (a
# session that creates or changes a file in the checkout fails, see tests/checkout_guard.py);
# pytester, which tests that guard.
pytest_plugins = [
    name
    for name, needs in (("tests.data_fixtures", _RECON_MODULES), ("tests.metric_fixtures", ()),
                        ("tests.checkout_guard", ()))
    if importlib.util.find_spec(name) is not None
    and all(importlib.util.find_spec(module) is not None for module in needs)
] + ["pytester"]


@pytest.fixture(autouse=True)
def _offline_weights(tmp_path_factory, monkeypatch):
    """No test may download: weights come from a per-test home and torch-hub cache."""
    home = tmp_path_factory.mktemp("dfd_home")
    monkeypatch.setenv("LIGHTNING_DFD_OFFLINE", "1")
    # precision="auto" decides the same on every CPU class CI may run on (AMX, AVX512-BF16, neither);
    # tests of the decision itself force each class (tests/test_auto_precision.py).
    monkeypatch.setenv("LIGHTNING_DFD_FAST_BF16", "0")
    monkeypatch.setenv("LIGHTNING_DFD_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    yield


@pytest.fixture
def single_thread_cli(monkeypatch):
    """One torch thread (small convolutions on shared cores) and a clean ``sys.argv``.

    ``LightningCLI(args=...)`` also looks at ``sys.argv``, which holds pytest's own arguments.
    """
    import sys

    import torch

    monkeypatch.setattr(sys, "argv", ["recon-train"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
