"""Every ```python block of README.md runs as pasted, in a fresh interpreter, offline.

Each block is written to a file in a temporary folder and run there with ``sys.executable``
(``LIGHTNING_DFD_OFFLINE=1``, an empty weights home, this checkout on ``PYTHONPATH``). Two
markers, both README comments a reader sees:

- a first line ``# not run: <reason>`` (a block that needs data or hours) skips the block; at
  most :data:`MAX_NOT_RUN` blocks may carry it;
- a line that loads published weights ends with ``# offline: MissingWeightsError``. Such a block
  must stop exactly there with :class:`lightning_dfd.weights.MissingWeightsError` (nothing
  failed before it, and the weights home is empty); at most :data:`MAX_PUBLISHED` blocks may.

Every other block must exit 0.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOT_RUN = "# not run:"
PUBLISHED = "# offline: MissingWeightsError"
MAX_NOT_RUN = 3
MAX_PUBLISHED = 3
MISSING = "lightning_dfd.weights.MissingWeightsError"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text: (line number of the fence, dedented code)."""
    blocks, lines, start, indent = [], text.splitlines(), None, ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if start is None and stripped == "```python":
            start, indent, body = number, line[: len(line) - len(line.lstrip())], []
        elif start is not None and stripped == "```" and line.startswith(indent):
            blocks.append((start, textwrap.dedent("\n".join(body)) + "\n"))
            start = None
        elif start is not None:
            body.append(line)
    assert start is None, f"README.md: the ```python block at line {start} is never closed"
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_python_blocks_found_and_markers_few():
    assert len(BLOCKS) >= 7, f"found only {len(BLOCKS)} ```python blocks in README.md"
    not_run = [line for line, code in BLOCKS if code.startswith(NOT_RUN)]
    published = [line for line, code in BLOCKS if PUBLISHED in code]
    assert len(not_run) <= MAX_NOT_RUN, f"too many blocks marked '{NOT_RUN}': lines {not_run}"
    assert len(published) <= MAX_PUBLISHED, f"too many blocks need published weights: {published}"
    misplaced = [line for line, code in BLOCKS if NOT_RUN in code and not code.startswith(NOT_RUN)]
    assert not misplaced, f"'{NOT_RUN}' must be the first line of its block: lines {misplaced}"


def test_python_blocks_extracted_from_markdown():
    text = "x\n```python\na = 1\n```\n- item\n   ```python\n   b = 2\n   ```\n```bash\nc\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n"), (6, "b = 2\n")]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("LIGHTNING_DFD_", "HF_", "TORCH_HOME", "PYTHON"))}
    env.update(LIGHTNING_DFD_OFFLINE="1", HF_HUB_OFFLINE="1", LIGHTNING_DFD_FAST_BF16="0",
               LIGHTNING_DFD_HOME=str(tmp_path / "dfd_home"), TORCH_HOME=str(tmp_path / "torch"),
               HF_HOME=str(tmp_path / "hf"), MPLBACKEND="Agg", PYTHONPATH=str(ROOT),
               PYTHONDONTWRITEBYTECODE="1")
    return env


def _failing_line(stderr: str, script: Path) -> int | None:
    """The line of the block's own code where the uncaught exception passed last."""
    lines = re.findall(rf'File "{re.escape(str(script))}", line (\d+)', stderr)
    return int(lines[-1]) if lines else None


def _statement_lines(code: str, line: int) -> range:
    """The lines of the top-level statement of ``code`` that holds ``line``."""
    for node in ast.parse(code).body:
        if node.lineno <= line <= node.end_lineno:
            return range(node.lineno, node.end_lineno + 1)
    raise AssertionError(f"line {line} of a README block is in no statement")


@pytest.fixture(scope="module")
def block_runs(tmp_path_factory) -> dict[int, tuple[subprocess.CompletedProcess, Path]]:
    """Every runnable block, each in its own fresh interpreter and folder, two at a time.

    Each interpreter is single-threaded (``OMP_NUM_THREADS=1``), so two of them use the two cores
    the suite runs on without oversubscribing them; results are collected once for all the tests.
    """
    def run(line: int, code: str) -> tuple[int, tuple[subprocess.CompletedProcess, Path]]:
        folder = tmp_path_factory.mktemp(f"readme_block_{line}")
        script = folder / f"readme_block_{line}.py"
        script.write_text(code, encoding="utf-8")
        (folder / "cwd").mkdir()
        env = {**_env(folder), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, str(script)], cwd=folder / "cwd", env=env,
                              capture_output=True, text=True, timeout=300)
        return line, (done, script)

    runnable = [(line, code) for line, code in BLOCKS if not code.startswith(NOT_RUN)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(lambda item: run(*item), runnable))


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs_as_pasted(line, code, block_runs):
    if code.startswith(NOT_RUN):
        pytest.skip(f"README.md:{line}: {code.splitlines()[0]}")
    result, script = block_runs[line]
    where = f"README.md block at line {line}"
    marked = [number for number, text in enumerate(code.splitlines(), 1) if PUBLISHED in text]
    if not marked:
        assert result.returncode == 0, f"{where} failed:\n{result.stderr[-4000:]}"
        return
    assert result.returncode != 0, f"{where} is marked '{PUBLISHED}' but ran offline without weights"
    last = [text for text in result.stderr.strip().splitlines() if text.strip()][-1]
    assert last.startswith(f"{MISSING}:"), (
        f"{where} failed other than by missing weights:\n{result.stderr[-4000:]}")
    assert "During handling of the above exception" not in result.stderr, result.stderr[-4000:]
    failed_at = _failing_line(result.stderr, script)
    statement = _statement_lines(code, marked[0])
    assert failed_at in statement, (
        f"{where}: MissingWeightsError raised at block line {failed_at}, expected in the statement "
        f"of the first line marked '{PUBLISHED}' (line {marked[0]}):\n{result.stderr[-4000:]}")
