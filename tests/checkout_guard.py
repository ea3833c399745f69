"""A pytest plugin: the test session leaves the checkout as it found it, or it fails.

Tests write only under their temporary folders. At the start of the session every file of the
checkout (the rootdir) is listed with its size and modification time; at the end, a file that
appeared, or an untracked / git-ignored file that changed or went (a ``runs/`` checkpoint of
yours, ``data/``), fails the session with the list. Tracked files are not compared: you may edit
the sources while the suite runs. Caches that tools and the install make are not looked at
(``.git``, virtual environments, ``__pycache__`` / ``*.pyc``, ``.pytest_cache``, ``.ruff_cache``,
``.mypy_cache``, ``*.egg-info``, ``.coverage*``). ``LIGHTNING_DFD_CHECKOUT_GUARD=0`` turns it off.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

#: Folders never looked into (anywhere in the tree).
SKIPPED_FOLDERS = frozenset({".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache",
                             ".mypy_cache", ".hypothesis", ".tox", ".nox"})
#: File suffixes left out (byte code; coverage data).
SKIPPED_SUFFIXES = (".pyc", ".pyo")

Snapshot = dict[str, tuple[int, int]]


def _skipped(name: str, is_folder: bool) -> bool:
    if is_folder:
        return name in SKIPPED_FOLDERS or name.endswith(".egg-info")
    return name.endswith(SKIPPED_SUFFIXES) or name.startswith(".coverage")


def snapshot(root: Path) -> Snapshot:
    """Every file under ``root`` outside the skipped caches: relative path -> (size, mtime_ns).

    Symbolic links are listed, not followed; empty folders count as entries too (``path/``).
    """
    found: Snapshot = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not _skipped(d, is_folder=True)]
        relative = Path(folder).relative_to(root)
        if not dirs and not files and relative != Path("."):
            found[f"{relative.as_posix()}/"] = (0, 0)
        for name in files:
            if _skipped(name, is_folder=False):
                continue
            try:
                info = os.lstat(Path(folder, name))
            except FileNotFoundError:  # removed while walking
                continue
            found[(relative / name).as_posix()] = (info.st_size, info.st_mtime_ns)
    return found


def tracked(root: Path) -> set[str] | None:
    """The files git tracks under ``root`` (None when ``root`` is not a git checkout)."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True,
                                text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {name for name in listed.stdout.split("\0") if name}


def changes(before: Snapshot, after: Snapshot, tracked_files: set[str] | None) -> list[str]:
    """``created X`` / ``changed X`` / ``removed X`` lines (tracked files: created ones only)."""
    tracked_files = tracked_files or set()
    lines = [f"created {path}" for path in sorted(after.keys() - before.keys())]
    for path in sorted(before.keys() & after.keys()):
        if before[path] != after[path] and path not in tracked_files and not path.endswith("/"):
            lines.append(f"changed {path}")
    lines += [f"removed {path}" for path in sorted(before.keys() - after.keys())
              if path not in tracked_files and not path.endswith("/")]  # fmt: skip
    return lines


def _enabled(config: pytest.Config) -> bool:
    if os.environ.get("LIGHTNING_DFD_CHECKOUT_GUARD", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not hasattr(config, "workerinput")  # an xdist worker: the controller checks


def pytest_sessionstart(session: pytest.Session) -> None:
    """List the checkout before any test runs."""
    if _enabled(session.config):
        root = Path(session.config.rootpath)
        session.config.stash[_BEFORE] = (root, snapshot(root), tracked(root))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when it left something behind in the checkout."""
    if _BEFORE not in session.config.stash:
        return
    root, before, tracked_files = session.config.stash[_BEFORE]
    lines = changes(before, snapshot(root), tracked_files)
    if not lines:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    shown = lines[:30] + ([f"... and {len(lines) - 30} more"] if len(lines) > 30 else [])
    message = (f"the test session changed the checkout {root} (tests must write only under their "
               "temporary folders):\n  " + "\n  ".join(shown))
    if reporter is not None:
        reporter.write_sep("=", "checkout changed", red=True, bold=True)
        reporter.write_line(message)
    else:
        print(message)
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_BEFORE = pytest.StashKey[tuple[Path, Snapshot, "set[str] | None"]]()
