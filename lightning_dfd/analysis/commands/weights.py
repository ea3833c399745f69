"""``lightning-dfd weights list|fetch|verify``: see and manage the registered checkpoints."""

from __future__ import annotations

import argparse
import sys

from lightning_dfd import weights as W
from lightning_dfd.analysis.commands import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL


def _load_all_specs() -> None:
    """Import the encoders that register their own checkpoints (SSFD, Med-VAE)."""
    import importlib

    for module in ("lightning_dfd.encoders.ssfd", "lightning_dfd.encoders.medvae"):
        try:
            importlib.import_module(module)
        except ImportError:  # pragma: no cover - an optional encoder failed to import
            pass


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``weights`` and its three actions."""
    parser = subparsers.add_parser("weights", help="list, download or verify pretrained weights")
    parser.add_argument("action", choices=("list", "fetch", "verify"))
    parser.add_argument("names", nargs="*", help="registry names (default: all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List each file's status, download missing ones, or check checksums."""
    _load_all_specs()
    specs = W.registry()
    names = args.names or sorted(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        print(f"unknown weights {unknown}; known: {sorted(specs)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"weights home: {W.weights_home()}  (offline: {W.offline()})")
    failed = 0
    for name in names:
        spec = specs[name]
        state, path = W.status(spec)
        if args.action == "fetch" and state in ("missing", "checksum mismatch"):
            try:
                path, state = W.download(spec), "found (downloaded)"
            except W.WeightsError as err:
                state = f"fetch failed: {err}"
        if args.action in ("fetch", "verify") and not state.startswith("found"):
            failed += 1
        where = path or W.weights_home() / spec.filename
        print(f"{name:24s} {state:20s} {where}\n{'':24s} {spec.url} (sha256 {spec.checksum or 'unknown'})")
    return EXIT_PARTIAL if failed else EXIT_OK
