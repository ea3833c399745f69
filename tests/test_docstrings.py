"""Every docstring example in the packages runs (they are the documentation users copy)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lightning_dfd
import recon_models

SKIP = {"lightning_dfd.cli"}  # shell examples, not Python


def _modules():
    for package in (lightning_dfd, recon_models):
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            if info.name not in SKIP:
                yield info.name


@pytest.mark.parametrize("name", sorted(_modules()))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
