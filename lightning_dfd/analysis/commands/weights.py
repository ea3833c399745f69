"""``lightning-dfd weights list|fetch|verify``: see, download, check and pin the known checkpoints.

``verify --record NAME PATH`` pins a file you trust (e.g. an earlier version of a hub file that
changed in place): its sha256 goes to ``$LIGHTNING_DFD_HOME/pins.json`` and later verifies and
loads of ``NAME`` accept it.
"""

from __future__ import annotations

import argparse
import sys

from lightning_dfd import weights as W
from lightning_dfd.analysis.commands import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``weights`` and its three actions."""
    parser = subparsers.add_parser(
        "weights", help="list, download, verify or pin pretrained weights",
        description="list: where each known checkpoint is, whether it checks out, and its license; "
                    "fetch: download "
                    "the missing ones (not when LIGHTNING_DFD_OFFLINE=1); verify: check sha256; "
                    "verify --record NAME PATH: pin a file you trust.")
    parser.add_argument("action", choices=("list", "fetch", "verify"))
    parser.add_argument("names", nargs="*", help="registry names (default: all)")
    parser.add_argument("--record", nargs=2, metavar=("NAME", "PATH"), default=None,
                        help="with verify: pin the sha256 of PATH as a trusted file for NAME")
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"fetch: seconds per network read (default ${W.TIMEOUT_ENV} or "
                             f"{W.DEFAULT_TIMEOUT:g})")
    parser.set_defaults(func=run)


def _record(args: argparse.Namespace) -> int:
    if args.action != "verify" or args.names:
        print("usage: lightning-dfd weights verify --record NAME PATH", file=sys.stderr)
        return EXIT_BAD_INPUT
    name, path = args.record
    try:
        spec = W.get_spec(name)
        pin = W.record_pin(name, path)
    except (KeyError, W.WeightsError) as err:
        print(str(err).strip('"'), file=sys.stderr)
        return EXIT_BAD_INPUT
    published = W.matches_published(pin["sha256"], spec)
    note = {True: "it is the published version",
            False: f"this file differs from the pinned version (sha256 {spec.checksum}); "
                   "it is now accepted as trusted by you",
            None: "no sha256 is published for it"}[published]
    print(f"pinned {name}: sha256 {pin['sha256']} ({pin['size']:,} bytes) from {pin['file']} "
          f"in {W.pins_path()}; {note}")
    state, where = W.status(spec)
    if where is None or W.sha256_of(where) != pin["sha256"]:
        print(f"to use it by name, copy it to {W.weights_home() / spec.filename}")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """List each file's status, download missing ones, check checksums, or pin a file."""
    if args.record is not None:
        return _record(args)
    specs = W.registry()
    names = args.names or sorted(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        print(f"unknown weights {unknown}; known: {sorted(specs)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"weights home: {W.weights_home()}  (offline: {W.offline()})")
    print(f"{'name':28s} {'state':22s} {'license':16s} file")
    failed = 0
    for name in names:
        spec = specs[name]
        try:
            state, path = W.status(spec)
        except W.WeightsError as err:  # an unreadable pins file
            print(str(err), file=sys.stderr)
            return EXIT_BAD_INPUT
        fetchable = state in ("missing", "checksum mismatch") or state.startswith("incomplete")
        if args.action == "fetch" and fetchable and spec.source == "url":
            try:
                path, state = W.download(spec, timeout=args.timeout), "found (downloaded)"
            except W.WeightsError as err:
                state = f"fetch failed: {err}"
        if args.action in ("fetch", "verify") and not state.startswith("found"):
            failed += 1
        where = path or (W.weights_home() / spec.filename if spec.source == "url" else spec.origin)
        checksum = spec.checksum or "unpinned"
        print(f"{name:28s} {state:22s} {spec.license:16s} {where}\n"
              f"{'':28s} {spec.origin} (sha256 {checksum})")
    return EXIT_PARTIAL if failed else EXIT_OK
