"""``precision="auto"``: the decision for each CPU class CI may run on, forced, never the host's.

The suite's autouse fixture sets ``LIGHTNING_DFD_FAST_BF16=0``; these tests force each class.
"""

from __future__ import annotations

import logging

import pytest

from lightning_dfd import LPIPS
from lightning_dfd.encoders import options as options_module
from lightning_dfd.encoders.options import EncoderOptions, fast_bf16

CPU_CLASSES = {
    "amx": ("flags : fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "bf16", "amx_bf16"),
    "avx512_bf16": ("flags : fpu sse2 avx2 avx512f avx512_bf16", "bf16", "avx512_bf16"),
    "neither": ("flags : fpu sse2 avx2", "fp32", "no bf16 units"),
}


@pytest.fixture(params=sorted(CPU_CLASSES))
def cpu_class(request, monkeypatch):
    cpuinfo, expected, reason = CPU_CLASSES[request.param]
    monkeypatch.delenv("LIGHTNING_DFD_FAST_BF16", raising=False)
    monkeypatch.setattr(options_module, "fast_bf16", lambda cpuinfo_=None: fast_bf16(cpuinfo))
    return expected, reason


def test_auto_decides_per_cpu_class_and_says_why(cpu_class, caplog):
    expected, reason = cpu_class
    with caplog.at_level(logging.INFO, logger="lightning_dfd"):
        options = EncoderOptions(precision="auto")
    assert options.precision_in_use == expected and reason in options.precision_reason
    metric = LPIPS(net="alex", weights="random", precision="auto")
    assert metric.precision == expected and metric.options.precision == "auto"


def test_explicit_precision_is_never_overridden(cpu_class):
    for asked in ("fp32", "bf16"):
        assert EncoderOptions(precision=asked).precision_in_use == asked


@pytest.mark.parametrize("value, expected", [("1", "bf16"), ("0", "fp32")])
def test_environment_forces_the_decision(monkeypatch, value, expected):
    monkeypatch.setenv("LIGHTNING_DFD_FAST_BF16", value)
    options = EncoderOptions(precision="auto")
    assert options.precision_in_use == expected and "LIGHTNING_DFD_FAST_BF16" in options.precision_reason


def test_a_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("LIGHTNING_DFD_FAST_BF16", "yes")
    with pytest.raises(ValueError, match="LIGHTNING_DFD_FAST_BF16"):
        EncoderOptions(precision="auto")
