"""Output files that cannot lie: checked before the work, written under a temp name, renamed.

The analysis commands run for a long time before they write anything. So:

* :func:`check_output_file` / :func:`check_output_dir` fail *before* the work when an output
  cannot be written (a directory where a file is asked for, a parent that is a file, a folder
  where no file can be created, a read-only existing file) with :class:`OutputError`;
  :func:`check_apart` when an output is, lies inside or holds an input folder (symlinks and
  relative paths resolved): a command never writes into its inputs.
* :func:`set_aside` renames the outputs of an earlier run to ``<name>.previous`` before the
  work starts, so an interrupted run (Ctrl-C, a crash) never leaves an older ``results.csv``
  looking like the result of this run; on success the ``.previous`` copies are removed.
* :func:`write_atomically` writes every file of one result to a temp name in the destination
  folder (``.<name>.<pid>.tmp``) and renames them all only when every write succeeded: a full
  disk leaves nothing under the real names and no temp files.

Example:
    >>> import tempfile
    >>> import pandas as pd
    >>> out = Path(tempfile.mkdtemp()) / "results.csv"
    >>> check_output_file(out)
    >>> write_atomically({out: lambda path: pd.DataFrame({"a": [1]}).to_csv(path, index=False)})
    >>> out.read_text().split()
    ['a', '1']
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

__all__ = [
    "PREVIOUS_SUFFIX",
    "OutputError",
    "check_apart",
    "check_output_dir",
    "check_output_file",
    "discard_previous",
    "set_aside",
    "write_atomically",
]

#: Suffix given to the outputs of an earlier run while this run works.
PREVIOUS_SUFFIX = ".previous"


class OutputError(OSError):
    """An output cannot be written (raised before the work, or instead of a partial file)."""


def _describe(err: OSError) -> str:
    return err.strerror or str(err)


def _probe_folder(folder: Path, what: str) -> None:
    """Create the folder if needed and prove a file can be created in it."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what}: {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
    except OSError as err:
        raise OutputError(f"{what}: cannot write into {folder}: {_describe(err)}") from err
    os.close(handle)
    os.unlink(probe)


def check_output_file(path: Path, what: str = "--out") -> None:
    """Raise :class:`OutputError` unless ``path`` can be (re)written as a file.

    Example:
        >>> import tempfile
        >>> try:
        ...     check_output_file(Path(tempfile.mkdtemp()))
        ... except OutputError as err:
        ...     print("is a folder" in str(err))
        True
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what}: {path} is a folder; give a file name such as {path / 'results.csv'}")
    for parent in path.parents:  # a file somewhere up the path
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what}: {parent} exists and is not a folder")
            break
    _probe_folder(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what}: {path} exists and is read-only")


def check_output_dir(folder: Path, what: str = "--out") -> None:
    """Raise :class:`OutputError` unless files can be written into ``folder``.

    A folder that does not exist yet is not created: its nearest existing ancestor must be a
    folder that accepts new files.
    """
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path.cwd())
    if existing != folder and not existing.is_dir():
        raise OutputError(f"{what}: {existing} exists and is not a folder")
    _probe_folder(existing, what)


def check_apart(outputs: Iterable[tuple[str, Path]], inputs: Mapping[str, Path]) -> None:
    """Raise :class:`OutputError` when an output path is, lies inside or holds an input folder.

    Args:
        outputs: ``(option, path)`` pairs: the folders and files a command writes.
        inputs: option -> input folder.

    Example:
        >>> try:
        ...     check_apart([("--maps", Path("data/ref/maps"))], {"--target": Path("data/ref")})
        ... except OutputError as err:
        ...     print(str(err).split(":")[0])
        --maps data/ref/maps lies inside the --target folder data/ref
    """
    from lightning_dfd.files import overlap

    relation = {"same": "is", "inside": "lies inside", "contains": "holds"}
    for option, path in outputs:
        for label, folder in inputs.items():
            found = overlap(folder, path)
            if found is not None:
                raise OutputError(f"{option} {path} {relation[found]} the {label} folder {folder}: outputs "
                                  f"never go into an input folder; choose a folder apart from {label}")


def set_aside(paths: Iterable[Path]) -> list[Path]:
    """Rename existing ``paths`` to ``<name>.previous`` (replacing an older one); return the new names.

    Call it after the checks and before the work, and :func:`discard_previous` after a successful
    write: a run that dies in between leaves the earlier result only under ``.previous``.
    """
    moved = []
    for path in map(Path, paths):
        if path.is_file() or path.is_symlink():
            target = path.with_name(path.name + PREVIOUS_SUFFIX)
            os.replace(path, target)
            moved.append(target)
    return moved


def discard_previous(paths: Iterable[Path]) -> None:
    """After a complete write of ``paths``: remove their ``.previous`` copies (of any earlier run)."""
    for path in map(Path, paths):
        path.with_name(path.name + PREVIOUS_SUFFIX).unlink(missing_ok=True)


def _temp_name(path: Path) -> Path:
    """A new, empty file of a unique name next to ``path`` (never an existing file of yours)."""
    from lightning_dfd.files import new_temp_file

    return new_temp_file(path.parent, f".{path.name}.")


def write_atomically(writers: Mapping[Path, Callable[[Path], object]]) -> None:
    """Write several files so that they appear together, complete, or not at all.

    Args:
        writers: destination -> a function writing the content to the path it is given (a temp
            name in the destination's folder).

    Raises:
        OutputError: A write failed (disk full, permissions); no destination was touched and
            every temp file is removed.
    """
    temps: dict[Path, Path] = {}
    try:
        for path in writers:
            temps[Path(path)] = _temp_name(Path(path))
        for path, write in writers.items():
            write(temps[Path(path)])
        for path, temp in temps.items():
            os.replace(temp, path)
    except OSError as err:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        reason = "the disk is full" if err.errno == errno.ENOSPC else _describe(err)
        names = ", ".join(str(path) for path in writers)
        raise OutputError(f"could not write {names}: {reason}; nothing was written") from err
    except BaseException:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
