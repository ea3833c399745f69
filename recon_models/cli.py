"""``recon-train``: train and evaluate reconstruction models from YAML with ``LightningCLI``.

Usage::

    recon-train fit --config examples/configs/unet.yaml
    recon-train validate --config examples/configs/unet.yaml --ckpt_path runs/unet/.../best.ckpt
    recon-train fit --config examples/configs/unrolled.yaml --trainer.devices 2 --trainer.strategy ddp
    recon-train ssfd-pretrain fit --config examples/configs/ssfd_pretrain.yaml
    recon-train export-ssfd runs/ssfd_pretrain/.../last.ckpt ssfd_encoder.ckpt

The model is :class:`~recon_models.modules.ReconModule` (``model:`` section), the data
:class:`~recon_models.data.FastMRIDataModule` (``data:`` section). Callbacks and loggers go in the
``trainer:`` section; :class:`~lightning_dfd.callbacks.DFDEarlyStopping` and
:class:`~lightning_dfd.callbacks.DFDModelCheckpoint` take their mode from the monitored metric. After
``fit`` the epochs run, the early-stopping epoch and the best checkpoint are printed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from recon_models.data import FastMRIDataModule
from recon_models.modules import ReconModule, fit_summary, format_fit_summary


class ReconCLI(LightningCLI):
    """``LightningCLI`` for :class:`ReconModule` that reports how ``fit`` ended.

    After ``fit``, ``summary`` holds :func:`~recon_models.modules.fit_summary` (epochs run, the
    early-stopping epoch, the best checkpoint and its score) and rank 0 prints it.
    """

    summary: dict[str, Any] | None = None

    def after_fit(self) -> None:
        """Record and print the epochs run, when early stopping fired, and the best checkpoint."""
        self.summary = fit_summary(self.trainer)
        _print_rank_zero("\n" + format_fit_summary(self.summary))


@rank_zero_only
def _print_rank_zero(text: str) -> None:
    print(text, flush=True)


def run_cli(args: Sequence[str] | None = None) -> ReconCLI:
    """Run ``recon-train`` with ``args`` (default: ``sys.argv[1:]``) and return the CLI object.

    The returned :class:`ReconCLI` holds ``trainer``, ``model``, ``datamodule`` and, after ``fit``,
    ``summary``.

    Example:
        >>> cli = run_cli(["fit", "--config", "examples/configs/demo.yaml"])  # doctest: +SKIP
        >>> cli.summary["best_checkpoint"]  # doctest: +SKIP
    """
    return ReconCLI(
        ReconModule,
        FastMRIDataModule,
        args=None if args is None else list(args),
        save_config_kwargs={"overwrite": True},
    )


def run_ssfd_cli(args: Sequence[str] | None = None) -> LightningCLI:
    """``recon-train ssfd-pretrain ...``: LightningCLI for :class:`SSFDPretrainModule`."""
    from recon_models.modules import SSFDPretrainModule

    return LightningCLI(SSFDPretrainModule, FastMRIDataModule,
                        args=None if args is None else list(args),
                        save_config_kwargs={"overwrite": True})


def main(args: Sequence[str] | None = None) -> int | None:
    """Console entry point ``recon-train`` (exit status 0 unless a sub-command says otherwise)."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] == ["export-ssfd"]:
        from recon_models import export

        return export.main(argv[1:])
    if argv[:1] == ["ssfd-pretrain"]:
        run_ssfd_cli(argv[1:])
        return None
    run_cli(argv)
    return None


if __name__ == "__main__":
    main()
