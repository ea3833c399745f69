"""Sub-commands of ``lightning-dfd``.

Each module exposes ``add_parser(subparsers)``, which registers its sub-parser with
``set_defaults(func=run)``, and ``run(args) -> int``, which returns the exit code. Modules are
imported lazily by :mod:`lightning_dfd.cli`, so ``correlate`` never imports torch.

Exit codes shared by the commands: 0 success, 1 finished but some inputs were skipped or
unmatched (each named on stderr), 2 bad input (nothing or only a partial result written).
"""

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_BAD_INPUT = 2
