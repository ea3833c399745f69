"""The command lines' front door: ``--help`` / ``--version`` import no sub-command machinery."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lightning_dfd

HEAVY = ("torch", "pandas", "numpy", "lightning", "matplotlib", "lightning_dfd.metrics",
         "lightning_dfd.analysis.commands.weights", "lightning_dfd.analysis.commands.evaluate",
         "lightning_dfd.analysis.commands.correlate")

_PROBE = """
import json, sys
from lightning_dfd.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _run_front_door(*argv: str) -> tuple[str, int, set[str]]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                          timeout=120)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return proc.stdout, report["code"], set(report["modules"])


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-h"]])
def test_help_and_version_import_no_command(argv: list[str]) -> None:
    out, code, modules = _run_front_door(*argv)
    assert code == 0
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    if argv == ["--version"]:
        assert out.strip() == f"lightning-dfd {lightning_dfd.__version__}"
    else:
        for command in ("weights", "evaluate", "correlate"):
            assert command in out


def test_import_lightning_dfd_is_light() -> None:
    """``import lightning_dfd`` defers torch to the first public name used."""
    probe = ("import json, sys, lightning_dfd; before = 'torch' in sys.modules; lightning_dfd.PSNR; "
             "print(json.dumps([before, 'torch' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          check=True)
    assert json.loads(proc.stdout) == [False, True]


def test_command_help_still_full(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_dfd.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["weights", "--help"])
    assert exit.value.code == 0
    assert "--record" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_dfd.cli import main

    with pytest.raises(SystemExit) as exit:
        main(["evalute"])
    assert exit.value.code == 2
    assert "invalid choice: 'evalute'" in capsys.readouterr().err
