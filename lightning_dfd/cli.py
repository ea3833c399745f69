"""``lightning-dfd``: manage weights, evaluate reconstructions, correlate metrics with readers.

Example:
    $ lightning-dfd weights list
    $ lightning-dfd evaluate --target ref/ --predictions recon/ --out results.csv
    $ lightning-dfd correlate --metrics results.csv --scores reader_scores.csv --out analysis/
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = ("weights", "evaluate", "correlate")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="lightning-dfd", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lightning_dfd.analysis.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"lightning_dfd.analysis.commands.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
