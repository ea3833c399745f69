"""The ``recon-train`` console entry point: ``--version`` answers before Lightning is imported.

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    recon-train (lightning-dfd) ...
    0
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(args: Sequence[str] | None = None) -> int:
    """``recon-train``: ``--version`` here; everything else in :func:`recon_models.cli.main`."""
    argv = list(sys.argv[1:] if args is None else args)
    if [a for a in argv if a != "--verbose"][:1] == ["--version"]:
        from lightning_dfd import __version__  # the package's lazy __init__: no torch

        print(f"recon-train (lightning-dfd) {__version__}")
        return 0
    from recon_models.cli import main as cli_main  # Lightning, jsonargparse, the models

    return cli_main(argv)
