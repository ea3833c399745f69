"""``recon-train``: train and evaluate reconstruction models from YAML with ``LightningCLI``.

Usage::

    recon-train --version
    recon-train fit --config unet        # a shipped config by name (recon_models/configs/unet.yaml)
    recon-train fit --config examples/configs/unet.yaml
    recon-train fit --config examples/configs/unet.yaml --ckpt_path last      # continue that run
    recon-train fit --config examples/configs/unet.yaml --ckpt_path last-if-present
    recon-train validate --config examples/configs/unet.yaml --ckpt_path runs/unet/checkpoints/best.ckpt
    recon-train fit --config examples/configs/demo.yaml --dfd_weights random  # every DFD, random weights
    recon-train fit --config examples/configs/unrolled.yaml --trainer.devices 2 --trainer.strategy ddp
    recon-train ssfd-pretrain fit --config examples/configs/ssfd_pretrain.yaml
    recon-train export-ssfd runs/ssfd_pretrain/checkpoints/last.ckpt ssfd_encoder.ckpt

The model is :class:`~recon_models.modules.ReconModule` (``model:`` section), the data
:class:`~recon_models.data.FastMRIDataModule` (``data:`` section). Callbacks and loggers go in the
``trainer:`` section; :class:`~lightning_dfd.callbacks.DFDEarlyStopping` and
:class:`~lightning_dfd.callbacks.DFDModelCheckpoint` take their mode from the monitored metric. After
``fit`` the epochs run, the early-stopping epoch and the best checkpoint are printed; after
``predict`` the folder the reconstructions went to.

Checkpoints (``--ckpt_path``): a file, an ``http(s)://`` URL, ``last``, ``last-if-present``,
``hpc`` or ``best``; every one is read with ``torch.load(weights_only=True)`` (see
:mod:`recon_models.checkpoints`), so a checkpoint carrying code is refused, naming its source.
``last`` is the newest ``last*.ckpt`` in the ``dirpath`` of the configured ``ModelCheckpoint``
callbacks (every shipped config writes to ``runs/<config>/checkpoints``); when there is none,
``last`` is an error naming the folders searched, while ``last-if-present`` starts from scratch
and says so. Checkpoint hyper-parameters vs the command line: the network (``network``,
``network_kwargs``) comes from the checkpoint, everything else (metrics, ``lr``, ...) from the
config and command line; every difference is reported in one warning line with both values.

Errors end the command with one line on stderr and exit status 1; ``--verbose`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from recon_models.checkpoints import (
    ARCHITECTURE_KEYS,
    CheckpointError,
    fetch_checkpoint,
    format_conflicts,
    hparam_conflicts,
    is_url,
    load_checkpoint,
)
from recon_models.configs import config_names, resolve_config_args
from recon_models.data import FastMRIDataModule
from recon_models.modules import ReconModule, fit_summary, format_fit_summary

#: ``--ckpt_path`` values resolved by name rather than read as a path.
LAST, LAST_IF_PRESENT = "last", "last-if-present"
SPECIAL_CKPT_PATHS = (LAST, LAST_IF_PRESENT, "hpc", "best")

DESCRIPTION = """\
recon-train: train, validate, test and predict reconstruction models (ReconModule) from YAML.

Other commands:
  recon-train ssfd-pretrain {fit,validate,test,predict} ...   SSFD encoder pretraining (SSFDPretrainModule)
  recon-train export-ssfd CKPT OUT                          write a pretraining checkpoint's SSFD encoder

Shipped configs (--config NAME, from recon_models/configs/; paths in them are relative to the
working directory): {configs}

Options read by recon-train itself (any sub-command):
  --version              print the version and exit
  --verbose              show the full traceback of an error (default: one line, exit status 1)
  --dfd_weights random   (fit/validate/test/predict) set `weights` of every configured DFD
  --ckpt_path last | last-if-present | FILE | URL   resume / load (always weights_only=True)
""".replace("{configs}", ", ".join(config_names()))

_LAST_NAME = re.compile(r"^last(-\d+)?\.ckpt$")


class _NoTips(logging.Filter):
    """Drop Lightning's advertising lines ("💡 Tip: ... litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not str(record.getMessage()).lstrip().startswith("💡 Tip")


def mute_lightning_tips() -> None:
    """Install (once) the filter that hides Lightning's "💡 Tip" banners."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description kept as written."""


class SafeCheckpointCLI(LightningCLI):
    """``LightningCLI`` that loads every checkpoint with ``weights_only=True`` and resolves ``last``.

    See the module docstring for the rules (sources, ``last`` / ``last-if-present``, checkpoint
    hyper-parameters vs the command line).
    """

    prog = "recon-train ssfd-pretrain"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        mute_lightning_tips()
        kwargs.setdefault("parser_kwargs", {"description": DESCRIPTION, "prog": self.prog,
                                            "formatter_class": _HelpFormatter})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        #: the ``--ckpt_path`` the user gave (a URL stays a URL here) and the file actually read
        self.ckpt_source: str | None = None
        self.ckpt_local: str | None = None
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------------------ parsing
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (or ``sys.argv``) without Lightning's "args parameter" warning."""
        from jsonargparse import Namespace

        parsers = [parser, *_subparsers(parser).values()]
        exit_on_error = parser.exit_on_error
        for each in parsers:
            each.exit_on_error = False
        try:
            if isinstance(args, dict | Namespace):
                self.config = parser.parse_object(args)
            else:
                self.config = parser.parse_args(args)
        except argparse.ArgumentError as error:  # one short message, not jsonargparse's usage dump
            if not exit_on_error:
                raise
            print(format_parse_error(parser, error, args), file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        finally:
            for each in parsers:
                each.exit_on_error = exit_on_error

    def _parse_ckpt_path(self) -> None:
        """Read a checkpoint file or URL (``weights_only=True``); take only its network from it."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("weights_only") is False:
            raise CheckpointError(config.get("ckpt_path") or "-", "recon-train reads checkpoints with "
                                  "weights_only=True only; `--weights_only false` is refused")
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS:
            return
        source = str(ckpt_path)
        local = fetch_checkpoint(source) if is_url(source) else Path(source)
        checkpoint = load_checkpoint(source, local)
        self.ckpt_source, self.ckpt_local = source, str(local)
        config["ckpt_path"] = str(local)
        self._take_network_from(checkpoint, subcommand)

    def _take_network_from(self, checkpoint: Any, subcommand: str) -> None:
        saved = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not saved:
            return
        requested = self.config[subcommand]["model"]
        requested = requested.as_dict() if hasattr(requested, "as_dict") else dict(requested)
        keys = tuple(k for k in ARCHITECTURE_KEYS if k in saved and k in requested)
        conflicts = hparam_conflicts(saved, requested, keys)
        if conflicts:
            _warn(format_conflicts(conflicts, "the checkpoint's values are used (the weights need them)"))
        if keys:
            self.config = self.parser.parse_object(
                {subcommand: {"model": {k: saved[k] for k in keys}}}, self.config)

    # ------------------------------------------------------------------------- sub-commands
    def fit(self, model: Any, **kwargs: Any) -> None:
        """``trainer.fit`` with the checkpoint resolved and read ``weights_only=True``."""
        self.trainer.fit(model, **self._checkpoint_kwargs(kwargs))

    def validate(self, model: Any, **kwargs: Any) -> Any:
        """``trainer.validate`` with the checkpoint resolved and read ``weights_only=True``."""
        return self.trainer.validate(model, **self._checkpoint_kwargs(kwargs))

    def test(self, model: Any, **kwargs: Any) -> Any:
        """``trainer.test`` with the checkpoint resolved and read ``weights_only=True``."""
        return self.trainer.test(model, **self._checkpoint_kwargs(kwargs))

    def predict(self, model: Any, **kwargs: Any) -> Any:
        """``trainer.predict`` with the checkpoint resolved and read ``weights_only=True``."""
        return self.trainer.predict(model, **self._checkpoint_kwargs(kwargs))

    def _checkpoint_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        kwargs["weights_only"] = True
        ckpt_path = kwargs.get("ckpt_path")
        if ckpt_path in (LAST, LAST_IF_PRESENT):
            kwargs["ckpt_path"] = self.find_last(required=ckpt_path == LAST)
        elif ckpt_path == "hpc":
            found = self.trainer._checkpoint_connector._hpc_resume_path
            if not found:
                raise CheckpointError("hpc", f"no hpc_ckpt_*.ckpt in {self.trainer.default_root_dir}")
            load_checkpoint(found)  # refuse a payload with a message naming the file
            kwargs["ckpt_path"] = found
        return kwargs

    def find_last(self, required: bool = True) -> str | None:
        """The newest ``last*.ckpt`` in the ``ModelCheckpoint`` folders, checked ``weights_only``.

        Raises:
            FileNotFoundError: ``required`` and there is none (naming the folders searched).
        """
        folders = [Path(cb.dirpath) for cb in self.trainer.checkpoint_callbacks
                   if isinstance(cb, ModelCheckpoint) and cb.dirpath is not None]
        candidates = [path for folder in folders if folder.is_dir() for path in folder.iterdir()
                      if _LAST_NAME.match(path.name) and path.is_file()]
        if candidates:
            newest = max(candidates, key=lambda p: p.stat().st_mtime_ns)
            load_checkpoint(newest)
            _print_rank_zero(f"resuming from {newest}")
            return str(newest)
        where = (", ".join(str(f) for f in folders) if folders else
                 "nowhere: no ModelCheckpoint callback has a `dirpath` (without one every run writes "
                 "into a new logger version folder)")
        if required:
            raise FileNotFoundError(
                f"--ckpt_path last: no last checkpoint to resume (looked for last*.ckpt in {where}); "
                f"use --ckpt_path {LAST_IF_PRESENT} to start from scratch when there is none")
        _print_rank_zero(f"--ckpt_path {LAST_IF_PRESENT}: no last checkpoint in {where}; "
                         "training from scratch")
        return None


class ReconCLI(SafeCheckpointCLI):
    """``recon-train`` for :class:`ReconModule`: ``--dfd_weights``, and reports after fit/predict.

    After ``fit``, ``summary`` holds :func:`~recon_models.modules.fit_summary` (epochs run, the
    early-stopping epoch, the best checkpoint and its score) and rank 0 prints it. After
    ``predict`` rank 0 prints the folder every ``ReconstructionWriter`` wrote to.
    """

    summary: dict[str, Any] | None = None
    prog = "recon-train"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``--dfd_weights`` (every configured DFD's ``weights``, e.g. ``random``)."""
        parser.add_argument(
            "--dfd_weights", type=str | None, default=None,
            help="Set `weights` of every configured DFD (e.g. `random`: no pretrained files needed; "
                 "values are then not comparable with pretrained ones).")

    def before_instantiate_classes(self) -> None:
        """Apply ``--dfd_weights`` to every DFD of ``model.dfds`` (the defaults when unset)."""
        from recon_models.modules.base import DEFAULT_DFDS

        config = self.config[self.config.subcommand] if self.config.get("subcommand") else self.config
        weights = config.get("dfd_weights")
        if not weights:
            return
        model = config["model"]
        dfds = model.get("dfds")
        dfds = DEFAULT_DFDS if dfds is None else dfds
        model["dfds"] = {name: {**dict(kwargs or {}), "weights": weights}
                         for name, kwargs in dict(dfds).items()}

    def after_fit(self) -> None:
        """Record and print the epochs run, when early stopping fired, and the best checkpoint."""
        self.summary = fit_summary(self.trainer)
        _print_rank_zero("\n" + format_fit_summary(self.summary))

    def after_predict(self) -> None:
        """Print where the reconstructions were written (or that no writer was configured)."""
        from recon_models.modules.prediction_writer import ReconstructionWriter

        writers = [cb for cb in self.trainer.callbacks if isinstance(cb, ReconstructionWriter)]
        for writer in writers:
            _print_rank_zero(f"predictions written to {writer.output_dir.resolve()} "
                             f"({len(writer.written)} files: reconstructions/ and references/)")
        if not writers:
            _print_rank_zero("predictions were not written: add a "
                             "recon_models.modules.ReconstructionWriter callback (trainer.callbacks)")


@rank_zero_only
def _print_rank_zero(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(text)


def run_cli(args: Sequence[str] | None = None) -> ReconCLI:
    """Run ``recon-train`` with ``args`` (default: ``sys.argv[1:]``) and return the CLI object.

    The returned :class:`ReconCLI` holds ``trainer``, ``model``, ``datamodule`` and, after ``fit``,
    ``summary``.

    Example:
        >>> cli = run_cli(["fit", "--config", "examples/configs/demo.yaml"])  # doctest: +SKIP
        >>> cli.summary["best_checkpoint"]  # doctest: +SKIP
    """
    args = resolve_config_args(list(sys.argv[1:] if args is None else args))
    return ReconCLI(ReconModule, FastMRIDataModule, args=args)


def run_ssfd_cli(args: Sequence[str] | None = None) -> LightningCLI:
    """``recon-train ssfd-pretrain ...``: LightningCLI for :class:`SSFDPretrainModule`."""
    from recon_models.modules import SSFDPretrainModule

    description = ("recon-train ssfd-pretrain: masked-inpainting pretraining of the SSFD encoder "
                   "(SSFDPretrainModule).\n\n--verbose shows the full traceback of an error; --ckpt_path "
                   "last | last-if-present | FILE | URL (always weights_only=True).")
    return SafeCheckpointCLI(SSFDPretrainModule, FastMRIDataModule,
                             args=resolve_config_args(list(sys.argv[2:] if args is None else args)),
                             parser_kwargs={"description": description, "prog": SafeCheckpointCLI.prog,
                                            "formatter_class": _HelpFormatter})


def format_parse_error(parser: LightningArgumentParser, error: BaseException, args: Any = None) -> str:
    """A parse error in a few lines: the message, a "did you mean" for a mistyped key, the help.

    Example:
        >>> from jsonargparse import ArgumentParser
        >>> parser = ArgumentParser(prog="recon-train")
        >>> _ = parser.add_argument("--model.network", type=str)
        >>> print(format_parse_error(parser, ValueError("does not accept option 'model.netwrok'")))
        recon-train: error: does not accept option 'model.netwrok'
          did you mean model.network?
          recon-train --help lists every option
    """
    message = _short_message(str(error))
    subcommand = next((a for a in (args or []) if isinstance(a, str) and a in _subparsers(parser)), None)
    target = _subparsers(parser).get(subcommand, parser)
    keys = {action.dest for action in target._actions if action.dest not in ("help", argparse.SUPPRESS)}
    lines = [f"{parser.prog.replace(' [options]', '')}: error: {message}"]
    for class_path, key in re.findall(r"class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message):
        close = difflib.get_close_matches(key, _init_parameters(class_path), n=3, cutoff=0.75)
        if close:
            lines.append(f"  did you mean {' or '.join(close)} (an init_arg of {class_path})?")
    for key in dict.fromkeys(re.findall(r"option '([\w.]+)'", message)):
        if key in keys:
            continue
        close = difflib.get_close_matches(key, sorted(keys), n=3, cutoff=0.75)
        if close:
            lines.append(f"  did you mean {' or '.join(close)}?")
    lines.append(f"  {parser.prog.replace(' [options]', '')}{' ' + subcommand if subcommand else ''} "
                 "--help lists every option")
    return "\n".join(lines)


def _short_message(message: str) -> str:
    """The message of jsonargparse without the lines that list every accepted type and the given value."""
    lines = [line.rstrip() for line in message.strip().splitlines()]
    if len(lines) <= 3:
        return "\n".join(lines)
    keep = [lines[0]] + [line for line in lines[1:] if re.search(
        r"Problem with given class_path|is not accepted|does not accept|not expected|Expected a|"
        r"[Ii]nvalid|not found|No such", line) and "NoneType" not in line]
    return "\n".join(keep)


def _init_parameters(class_path: str) -> list[str]:
    """The ``__init__`` parameter names of ``class_path`` and its bases (for "did you mean")."""
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: set[str] = set()
    for klass in inspect.getmro(cls):
        try:
            names.update(inspect.signature(klass.__init__).parameters)
        except (TypeError, ValueError):
            continue
    return sorted(names - {"self", "args", "kwargs"})


def _subparsers(parser: Any) -> dict[str, Any]:
    action = getattr(parser, "_subcommands_action", None)
    return dict(getattr(action, "_name_parser_map", {}) or {})


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text}"


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point ``recon-train``: 0 on success, 1 with one line on stderr on error.

    ``--verbose`` (anywhere) re-raises the error with its traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if argv[:1] == ["--version"]:
        from lightning_dfd import __version__

        print(f"recon-train (lightning-dfd) {__version__}")
        return 0
    try:
        if argv[:1] == ["export-ssfd"]:
            from recon_models import export

            return export.main(argv[1:])
        if argv[:1] == ["ssfd-pretrain"]:
            run_ssfd_cli(argv[1:])
            return 0
        run_cli(argv)
        return 0
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if verbose:
            raise
        print(f"recon-train: error: {_one_line(error)} (--verbose shows the traceback)",
              file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
