"""``lightning-dfd``: manage weights, evaluate reconstructions, correlate metrics with readers.

``lightning-dfd --help`` and ``--version`` import no sub-command: each command's module (and with
it torch, pandas, ...) is imported only when that command runs or its own ``--help`` is asked for.

Example:
    $ lightning-dfd --version
    $ lightning-dfd weights list
    $ lightning-dfd evaluate --target ref/ --predictions recon/ --out results.csv
    $ lightning-dfd correlate --metrics results.csv --scores reader_scores.csv --out analysis/
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Each sub-command and its one-line summary (its module's ``add_parser`` has the full help).
COMMANDS = {
    "weights": "list, download, verify or pin pretrained weights",
    "evaluate": "score fastMRI-style h5 reconstructions against references (CSV per image)",
    "correlate": "SROCC of metrics with reader scores, bootstrap CIs, inter-reader variability",
}


def _version() -> str:
    from lightning_dfd import __version__

    return f"lightning-dfd {__version__}"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-dfd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser, with the full parser of ``command`` (or of every command when None).

    Without ``command`` every sub-command module is imported; :func:`main` passes the one asked
    for, and answers the top-level ``--help`` from :data:`COMMANDS` without importing any.
    """
    parser = _top_parser()
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS if command is None else (command,):
        module = importlib.import_module(f"lightning_dfd.analysis.commands.{name}")
        module.add_parser(subparsers)
    return parser


def _light_parser() -> argparse.ArgumentParser:
    """``--help``, ``--version`` and usage errors: the command names and summaries only."""
    parser = _top_parser()
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, summary in COMMANDS.items():
        subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command not in COMMANDS or argv.index(command) != 0:
        _light_parser().parse_args(argv)  # prints help / version / a usage error and exits
        command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
