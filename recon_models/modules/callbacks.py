"""Reconstruction-training callbacks (DFD early stopping lives in :mod:`lightning_dfd.callbacks`).

:class:`RNGStateCheckpoint` saves the random number generators in every checkpoint and restores
them when training resumes, which Lightning does not do by itself.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn


def rng_states() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python generator states.

    Only tensors, numbers, strings and lists: the result survives ``torch.load(...,
    weights_only=True)``.

    Example:
        >>> state = rng_states()
        >>> first = torch.rand(3)
        >>> set_rng_states(state)
        >>> torch.equal(torch.rand(3), first)
        True
    """
    algorithm, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"algorithm": str(algorithm), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(position), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "state": list(python_state), "gauss_next": gauss_next},
    }


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["algorithm"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]),
                     python_state["gauss_next"]))


class RNGStateCheckpoint(Callback):
    """Save every process's random generators in checkpoints; restore them when fit resumes.

    Lightning restores weights, optimizer, schedulers, loops and callbacks, but not the global
    torch / numpy / Python generators that draw training masks (:class:`ReconTransform`) and the
    shuffle (``RandomSampler``). With this callback a run resumed from a checkpoint draws exactly
    what the uninterrupted run drew after that checkpoint. :class:`ReconModule` adds it itself
    (``configure_callbacks``).

    The states are captured when the checkpoint is written (under DDP every rank's state is
    gathered, so checkpoint writing is collective, as Lightning's ``save_checkpoint`` already is)
    and applied as soon as ``fit(ckpt_path=...)`` restores the callbacks, before Lightning creates
    the training data iterator (whose creation draws a seed), never for validate/test. They are
    skipped with a warning when the number of processes changed. DataLoader workers are seeded
    from the main generator when they start; persistent workers (``num_workers > 0``) keep their
    own streams across epochs, so with them masks after a resume differ from the uninterrupted
    run's (they stay valid random masks).

    Example:
        >>> callback = RNGStateCheckpoint()
        >>> saved = callback.state_dict()
        >>> first = torch.rand(2)
        >>> callback.load_state_dict(saved)
        >>> callback.restore()
        True
        >>> torch.equal(torch.rand(2), first)
        True
    """

    def __init__(self) -> None:
        self._world_size = 1
        self._rank = 0
        self._fitting = False
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Remember this process's rank, the number of processes, and whether it is ``fit``."""
        self._world_size, self._rank = trainer.world_size, trainer.global_rank
        self._fitting = stage == TrainerFn.FITTING

    def state_dict(self) -> dict[str, Any]:
        """``{"world_size": n, "states": [one rng_states() per rank]}`` (collective under DDP)."""
        local = rng_states()
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, local)
        else:
            states = [local]
        return {"world_size": len(states), "states": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Apply the saved states now when resuming ``fit``; otherwise keep them for :meth:`restore`.

        Lightning calls this while restoring a checkpoint, after ``setup`` and before the fit loop
        builds its data iterators: from here on the run draws what the saved run drew next.
        """
        self._pending = state_dict
        if self._fitting:
            self.restore()

    def restore(self) -> bool:
        """Apply the loaded states to this process now; False when there is nothing to apply."""
        if self._pending is None:
            return False
        pending, self._pending = self._pending, None
        if pending["world_size"] != self._world_size:
            rank_zero_warn(
                f"RNGStateCheckpoint: the checkpoint holds generator states of "
                f"{pending['world_size']} processes but this run has {self._world_size}; they are "
                "not restored, so training masks and shuffles differ from an uninterrupted run"
            )
            return False
        set_rng_states(pending["states"][self._rank])
        return True

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Forget the stage (the callback may be reused by another ``fit``/``validate``)."""
        self._fitting = False


def fit_summary(trainer: Trainer) -> dict[str, Any]:
    """What a finished ``fit`` did: epochs run, early stopping, best checkpoint, log folder.

    Returns a dict with ``epochs_run``; ``stopped_epoch`` (``None`` when no early-stopping
    callback fired), ``early_stopping_monitor``; ``best_checkpoint``, ``best_score``,
    ``checkpoint_monitor`` (``None`` without a checkpoint callback); ``log_dir``.
    """
    summary: dict[str, Any] = {
        "epochs_run": trainer.current_epoch,
        "stopped_epoch": None,
        "early_stopping_monitor": None,
        "best_checkpoint": None,
        "best_score": None,
        "checkpoint_monitor": None,
        "log_dir": trainer.log_dir,
    }
    for callback in trainer.early_stopping_callbacks:
        summary["early_stopping_monitor"] = callback.monitor
        if callback.stopped_epoch > 0:
            summary["stopped_epoch"] = callback.stopped_epoch
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_path:
        summary["best_checkpoint"] = str(Path(checkpoint.best_model_path))
        score = checkpoint.best_model_score
        summary["best_score"] = None if score is None else float(score)
        summary["checkpoint_monitor"] = checkpoint.monitor
    return summary


def format_fit_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines of :func:`fit_summary`.

    Example:
        >>> print(format_fit_summary({"epochs_run": 3, "stopped_epoch": 2,
        ...     "early_stopping_monitor": "val/dists", "best_checkpoint": "b.ckpt",
        ...     "best_score": 0.1, "checkpoint_monitor": "val/dists", "log_dir": "runs"}))
        epochs run: 3
        early stopping on val/dists: stopped at epoch 2
        best checkpoint (val/dists = 0.1): b.ckpt
        logs: runs
    """
    lines = [f"epochs run: {summary['epochs_run']}"]
    if summary["early_stopping_monitor"] is not None:
        stopped = summary["stopped_epoch"]
        state = "did not trigger" if stopped is None else f"stopped at epoch {stopped}"
        lines.append(f"early stopping on {summary['early_stopping_monitor']}: {state}")
    if summary["best_checkpoint"] is not None:
        monitor = summary["checkpoint_monitor"]
        score = "" if monitor is None else f" ({monitor} = {summary['best_score']:.6g})"
        lines.append(f"best checkpoint{score}: {summary['best_checkpoint']}")
    lines.append(f"logs: {summary['log_dir']}")
    return "\n".join(lines)
