"""Writing files safely: names from data checked, paths proven inside their folder, locked updates.

Every command and cache of the package writes only inside the folder it was given, never inside
its inputs, and removes only what it wrote (DESIGN.md, "Files and state"). The pieces every
writer uses:

* :func:`check_plain_name`: a name that came from data (a volume id, a file name in a URL, a
  registry file name) is one path component: not empty, not ``.`` or ``..``, no separator, no NUL.
* :func:`contained_path`: ``folder / name / ...`` with every part checked and the result, symlinks
  followed, proven to lie strictly inside the resolved ``folder``.
* :func:`overlap`: whether two folders are the same or one holds the other (symlinks and
  relative paths resolved): an output folder must not overlap an input folder.
* :func:`locked`: an exclusive lock (``fcntl.flock`` on ``<file>.lock`` next to the file) around
  the read-modify-write of a small file shared by processes (weight pins, the maps manifest).
* :func:`new_temp_file` / :func:`new_temp_folder`: a new entry of a unique name in a folder (never
  an existing file of yours), with the permissions a plain ``open`` / ``mkdir`` gives (the umask
  applies; :mod:`tempfile` would make them private to you, and the renamed output too).
* :func:`write_text_atomically`: a unique temp name in the same folder, flushed, then
  ``os.replace``: readers see the old content or the new, never half a file.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> contained_path(folder, "file1.h5") == folder / "file1.h5"
    True
    >>> contained_path(folder, "..")
    Traceback (most recent call last):
    ...
    lightning_dfd.files.UnsafePathError: name '..' is not a plain file name (it names a folder above)
    >>> overlap(folder, folder / "maps")
    'inside'
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "UnsafePathError",
    "check_plain_name",
    "contained_path",
    "locked",
    "new_temp_file",
    "new_temp_folder",
    "overlap",
    "write_text_atomically",
]


class UnsafePathError(ValueError):
    """A name from data is not a plain file name, or a path would leave its folder."""


def check_plain_name(name: str, what: str = "name") -> str:
    """Return ``name`` when it is one plain path component; raise :class:`UnsafePathError` otherwise.

    Example:
        >>> check_plain_name("file1000001")
        'file1000001'
        >>> check_plain_name("a/b", "volume")
        Traceback (most recent call last):
        ...
        lightning_dfd.files.UnsafePathError: volume 'a/b' is not a plain file name (it holds a path separator)
    """
    reason = None
    if not isinstance(name, str) or not name:
        reason = "it is empty"
    elif name in (".", ".."):
        reason = "it names the folder itself" if name == "." else "it names a folder above"
    elif "/" in name or "\\" in name or (os.altsep and os.altsep in name):
        reason = "it holds a path separator"
    elif "\0" in name:
        reason = "it holds a NUL character"
    if reason is not None:
        raise UnsafePathError(f"{what} {name!r} is not a plain file name ({reason})")
    return name


def contained_path(folder: str | os.PathLike, *names: str, what: str = "name") -> Path:
    """``folder / names...``, each name checked, proven to lie inside ``folder`` once resolved.

    Symlinks are followed (an existing entry that links out of ``folder`` is refused); ``folder``
    itself need not exist yet.

    Raises:
        UnsafePathError: A name is not plain, or the resolved path is not strictly inside the
            resolved ``folder``.
    """
    if not names:
        raise UnsafePathError(f"no {what} given inside {folder}")
    for name in names:
        check_plain_name(name, what)
    path = Path(folder).joinpath(*names)
    root = Path(folder).resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise UnsafePathError(f"{path} resolves to {resolved}, outside the folder {root}")
    return path


def overlap(a: str | os.PathLike, b: str | os.PathLike) -> str | None:
    """How folder ``b`` relates to folder ``a``, both resolved (symlinks, relative paths).

    Returns:
        ``"same"``, ``"inside"`` (``b`` lies in ``a``), ``"contains"`` (``b`` holds ``a``) or None.

    Example:
        >>> overlap("/data/ref", "/data"), overlap("/data/ref", "/data/rec")
        ('contains', None)
    """
    ra, rb = Path(a).resolve(), Path(b).resolve()
    if ra == rb:
        return "same"
    if rb.is_relative_to(ra):
        return "inside"
    if ra.is_relative_to(rb):
        return "contains"
    return None


def _lock_handle(handle) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                continue
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock for ``path`` (a lock file ``<path>.lock`` next to it) while inside.

    Processes that update the same file each take the lock, re-read the file, merge their change
    and write it with :func:`write_text_atomically` before releasing it, so no update is lost.
    The lock file is kept (removing it would race with a process waiting on it); the lock is
    released when the block ends or the process dies.

    Yields:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a+b") as handle:  # closing the file releases the lock
        _lock_handle(handle)
        yield path


def _new_entry(folder: str | os.PathLike, prefix: str, suffix: str, make) -> Path:
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            make(path)
        except FileExistsError:  # taken (by a file of yours or another process): another name
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}*{suffix} in {folder}")


def new_temp_file(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """Create a new empty file ``folder/<prefix><random><suffix>``, mode ``0o666`` less the umask.

    Example:
        >>> import tempfile
        >>> temp = new_temp_file(tempfile.mkdtemp(), ".results.csv.")
        >>> temp.name.startswith(".results.csv.") and temp.stat().st_size == 0
        True
    """
    def make(path: Path) -> None:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))

    return _new_entry(folder, prefix, suffix, make)


def new_temp_folder(folder: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """Create a new empty folder ``folder/<prefix><random><suffix>``, mode ``0o777`` less the umask."""
    return _new_entry(folder, prefix, suffix, lambda path: os.mkdir(path, 0o777))


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a unique temp file in its folder and ``os.replace``.

    Nothing but the temp file (removed on failure) and ``path`` is touched; an existing symlink at
    ``path`` is replaced by the file, its target left alone.
    """
    path = Path(path)
    temp = new_temp_file(path.parent, f".{path.name}.")
    try:
        with open(temp, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
