"""The error raised for a data file that does not hold what the fastMRI format promises."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A data file is unreadable or lacks a key, or a key holds the wrong shape or dtype.

    The message always names the file and, where one is at fault, the key, so a bad file
    among thousands can be found and fixed (or removed) at once.

    Args:
        path: The offending file.
        key: The HDF5 key (dataset, attribute or header element) at fault, or ``None`` when the
            file as a whole cannot be read.
        problem: What is wrong, in words.

    Example:
        >>> err = DataFormatError("/data/file1000001.h5", "kspace", "missing key")
        >>> str(err)
        "/data/file1000001.h5: key 'kspace': missing key"
        >>> isinstance(err, ValueError)
        True
    """

    def __init__(self, path: str | os.PathLike, key: str | None, problem: str):
        self.path = os.fspath(path)
        self.key = key
        self.problem = problem
        where = self.path if key is None else f"{self.path}: key '{key}'"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Keep the exception picklable, so it crosses DataLoader worker processes intact.
        return (type(self), (self.path, self.key, self.problem))
