"""Checkpoint loading that never runs code, and the rule for checkpoint vs command-line settings.

Every checkpoint that ``recon-train`` reads (a local path, an ``http(s)://`` URL, ``last``,
``hpc``, ``export-ssfd``'s input) is read with ``torch.load(..., weights_only=True)``: tensors,
numbers, strings and containers only. A checkpoint that carries pickled code is refused with a
:class:`CheckpointError` naming its source, and the code never runs. A URL is downloaded by
:func:`fetch_checkpoint` (timeout, to a private temporary file) and then loaded like a local file.

**Hyper-parameters of a checkpoint vs the command line** (:func:`hparam_conflicts`): the network
that the weights belong to (``network``, ``network_kwargs``) comes from the checkpoint, since the
weights fit no other network; every other setting (``dfds``, ``pixel_metrics``, ``lr``,
``weight_decay``, ``loss``...) comes from the config and command line. Each key whose two values
differ is reported in one warning line with both values, never dropped silently.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "x.ckpt"
    >>> torch.save({"state_dict": {"w": torch.ones(1)}}, path)
    >>> sorted(load_checkpoint(path))
    ['state_dict']
    >>> hparam_conflicts({"lr": 1e-4, "network": "unet"}, {"lr": 1e-3, "network": "unet"})
    {'lr': (0.0001, 0.001)}
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lightning_dfd.files import UnsafePathError, contained_path

#: Hyper-parameters that define the weights' shapes: taken from the checkpoint.
ARCHITECTURE_KEYS: tuple[str, ...] = ("network", "network_kwargs")
#: Saved by LightningCLI next to the hyper-parameters; not a setting.
IGNORED_KEYS: tuple[str, ...] = ("_instantiator", "_class_path")
#: Seconds before a checkpoint download gives up.
DOWNLOAD_TIMEOUT_S = 60.0


class CheckpointError(ValueError):
    """A checkpoint cannot be read safely (missing, unreadable, or holding code); names the source.

    Example:
        >>> str(CheckpointError("http://host/x.ckpt", "not found"))
        'checkpoint http://host/x.ckpt: not found'
    """

    def __init__(self, source: str | os.PathLike, problem: str) -> None:
        self.source = os.fspath(source)
        self.problem = problem
        super().__init__(f"checkpoint {self.source}: {problem}")

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.source, self.problem))


def is_url(path: Any) -> bool:
    """True for ``http://`` and ``https://`` strings.

    Example:
        >>> is_url("https://example.org/x.ckpt"), is_url("runs/last.ckpt")
        (True, False)
    """
    return isinstance(path, str) and path.lower().startswith(("http://", "https://"))


def fetch_checkpoint(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to a new private temporary file and return its path (nothing is loaded).

    The file lives until the process ends (then it is deleted).

    Raises:
        CheckpointError: the download fails (naming the URL and the cause).
    """
    folder = Path(tempfile.mkdtemp(prefix="recon_ckpt_"))
    atexit.register(shutil.rmtree, folder, True)  # the download is removed when the process ends
    name = Path(urllib.request.urlparse(url).path).name  # from the URL: used only when plain
    try:
        path = contained_path(folder, name)
    except UnsafePathError:  # "", "." or ".." (https://host/a/..)
        path = folder / "checkpoint.ckpt"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, ValueError) as err:
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointError(url, f"download failed: {err}") from err
    return path


def load_checkpoint(source: str | os.PathLike, local_path: str | os.PathLike | None = None) -> Any:
    """``torch.load(weights_only=True)`` of a local file or URL; errors name ``source``.

    Args:
        source: what the user gave (a path or URL), named in errors.
        local_path: the file to read when ``source`` was already downloaded.

    Raises:
        CheckpointError: missing file, download failure, unreadable file, or a checkpoint that
            holds anything but tensors and plain data (its code is never run).
    """
    if local_path is None:
        local_path = fetch_checkpoint(str(source)) if is_url(source) else Path(source)
    local_path = Path(local_path)
    if not local_path.is_file():
        raise CheckpointError(source, "no such file" if not local_path.exists() else "not a file")
    try:
        return torch.load(local_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            source, "refused: it holds objects other than tensors and plain data, which "
            f"torch.load(weights_only=True) does not run ({first})"
        ) from err
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(source, f"cannot be read as a torch checkpoint ({err})") from err


def hparam_conflicts(checkpoint: Mapping[str, Any], requested: Mapping[str, Any],
                     keys: tuple[str, ...] | None = None) -> dict[str, tuple[Any, Any]]:
    """Keys whose checkpoint value differs from the requested one: ``{key: (checkpoint, requested)}``.

    Only keys present on both sides are compared (``keys`` restricts them further); LightningCLI's
    bookkeeping keys are ignored.
    """
    names = [k for k in checkpoint if k in requested and k not in IGNORED_KEYS]
    if keys is not None:
        names = [k for k in names if k in keys]
    return {k: (checkpoint[k], requested[k]) for k in names
            if _plain(checkpoint[k]) != _plain(requested[k])}


def format_conflicts(conflicts: Mapping[str, tuple[Any, Any]],
                     used: str = "the command line values are used") -> str:
    """One line naming every conflicting key, both values, and which ones are used.

    Example:
        >>> print(format_conflicts({"lr": (0.0001, 0.001)}))  # doctest: +NORMALIZE_WHITESPACE
        checkpoint hyper-parameters differ from the command line: lr: checkpoint 0.0001,
        command line 0.001; the command line values are used
    """
    parts = "; ".join(f"{k}: checkpoint {_show(a)}, command line {_show(b)}"
                      for k, (a, b) in conflicts.items())
    return f"checkpoint hyper-parameters differ from the command line: {parts}; {used}"


def _show(value: Any) -> str:
    value = _plain(value)
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)


def _plain(value: Any) -> Any:
    """Containers as plain dicts/lists (jsonargparse Namespaces, tuples) for comparison."""
    if hasattr(value, "as_dict") and callable(value.as_dict):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def reconcile_hparams(module: Any, checkpoint: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Apply the rule of this module to a checkpoint being loaded into ``module`` (``on_load_checkpoint``).

    The module was built from the command line, so its metrics and settings are the requested
    ones; differences from the checkpoint's ``hyper_parameters`` are reported in one warning line.
    On resume the optimizer state would bring back the checkpoint's ``lr`` / ``weight_decay``:
    the command line's values are written into it (with a scheduler, every group's current
    learning rate is scaled by ``new / old`` and its ``base_lrs`` set to the new value).

    Raises:
        CheckpointError: the checkpoint's network differs from the module's (its weights cannot
            fit); a checkpoint given as a path or URL never gets here, since ``recon-train`` takes
            the network from it.

    Returns:
        The reported conflicts, ``{key: (checkpoint value, command-line value)}``.
    """
    saved = checkpoint.get("hyper_parameters") or {}
    requested = dict(getattr(module, "hparams", {}) or {})
    trainer = getattr(module, "_trainer", None)
    source = str(getattr(trainer, "ckpt_path", None) or "being loaded")
    network = hparam_conflicts(saved, requested, ARCHITECTURE_KEYS)
    if network:
        parts = "; ".join(f"{k}: checkpoint {_show(a)}, configured {_show(b)}"
                          for k, (a, b) in network.items())
        raise CheckpointError(source, f"holds the weights of another network ({parts}); configure "
                              "that network, or pass the checkpoint as a file path (its network is used)")
    conflicts = {k: v for k, v in hparam_conflicts(saved, requested).items() if k not in ARCHITECTURE_KEYS}
    if conflicts:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(format_conflicts(conflicts))
    if "lr" in conflicts:
        old, new = (float(v) for v in conflicts["lr"])
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group["lr"] = group["lr"] * new / old if old else new
                if "initial_lr" in group:
                    group["initial_lr"] = new
        for scheduler in checkpoint.get("lr_schedulers", []):
            if "base_lrs" in scheduler:
                scheduler["base_lrs"] = [new for _ in scheduler["base_lrs"]]
            if "_last_lr" in scheduler:
                scheduler["_last_lr"] = [lr * new / old if old else new for lr in scheduler["_last_lr"]]
    if "weight_decay" in conflicts:
        for state in checkpoint.get("optimizer_states", []):
            for group in state.get("param_groups", []):
                group["weight_decay"] = float(conflicts["weight_decay"][1])
    return conflicts
