"""Export the SSFD encoder of a pretraining run in the published checkpoint layout.

The published SSFD checkpoint (``philadamson93/SSFD/default/model.ckpt``) is
``{"model_state_dict": <encoder state dict>}`` with keys ``firstblock.*`` and ``encoder1..4.*``.
An :class:`~recon_models.modules.ssfd_pretrain.SSFDPretrainModule` checkpoint stores the same
tensors under ``model.encoder.*``; :func:`export_ssfd_encoder` rewrites them so that
``lightning_dfd.SSFD(weights=OUT)`` loads the file with ``strict=True``.

Command line (``recon-train export-ssfd CKPT OUT``, or ``python -m recon_models.export CKPT OUT``).

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from recon_models.models.ssfd_unet import SSFDUNet
    >>> folder = Path(tempfile.mkdtemp())
    >>> state = {f"model.{k}": v for k, v in SSFDUNet().state_dict().items()}
    >>> torch.save({"state_dict": state}, folder / "last.ckpt")
    >>> out = export_ssfd_encoder(folder / "last.ckpt", folder / "ssfd.ckpt")
    >>> sorted(torch.load(out, weights_only=True))
    ['model_state_dict']
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from lightning_dfd.encoders.ssfd import SSFDEncoder
from lightning_dfd.files import new_temp_file, overlap
from recon_models.checkpoints import is_url, load_checkpoint

#: Where the pretraining module keeps the encoder in its state dict.
ENCODER_PREFIX = "model.encoder."


def encoder_state_from_module_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``model.encoder.*`` entries of a pretraining-module state dict, prefix removed.

    Raises:
        KeyError: no ``model.encoder.*`` key (not an SSFD pretraining checkpoint).
    """
    encoder = {
        k[len(ENCODER_PREFIX):]: v.detach().cpu().clone()
        for k, v in state.items() if k.startswith(ENCODER_PREFIX)
    }
    if not encoder:
        raise KeyError(
            f"no '{ENCODER_PREFIX}*' keys: not an SSFDPretrainModule checkpoint "
            f"(first keys: {sorted(state)[:5]})"
        )
    return encoder


def save_ssfd_encoder(encoder_state: Mapping[str, Tensor], out: str | os.PathLike) -> Path:
    """Check ``encoder_state`` against :class:`SSFDEncoder` (strict) and write it published-style.

    Returns:
        The written path (parent folders are created).
    """
    SSFDEncoder().load_state_dict(encoder_state, strict=True)  # fails loudly on any mismatch
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(out.parent, f".{out.name}.")  # a unique name: never a file of yours
    try:
        torch.save({"model_state_dict": dict(encoder_state)}, tmp)
        os.replace(tmp, out)  # a reader never sees a half-written file
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def export_ssfd_encoder(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a pretraining (Lightning) checkpoint and write its encoder in the published layout.

    Args:
        checkpoint: a checkpoint written by Lightning for ``SSFDPretrainModule`` (a file or an
            ``http(s)://`` URL; read with ``weights_only=True``).
        out: the file to write (``SSFD(weights=out)`` loads it).

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        CheckpointError: it cannot be downloaded or read, or it holds code (never run).
        KeyError: it holds no ``state_dict`` with ``model.encoder.*`` keys.
        ValueError: ``out`` is ``checkpoint`` itself (nothing is written).
    """
    path = checkpoint if is_url(checkpoint) else Path(checkpoint)
    if not is_url(path) and not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not is_url(path) and overlap(path, out) == "same":
        raise ValueError(f"export-ssfd: the output {out} is the checkpoint {path} itself; writing the "
                         "encoder there would replace the training checkpoint: give another file")
    ckpt = load_checkpoint(path)  # weights_only=True: a checkpoint carrying code is refused
    state = ckpt.get("state_dict") if isinstance(ckpt, Mapping) else None
    if not isinstance(state, Mapping):
        raise KeyError(f"checkpoint {path} has no 'state_dict' (not a Lightning checkpoint)")
    return save_ssfd_encoder(encoder_state_from_module_state(state), out)


def main(argv: Sequence[str] | None = None) -> int:
    """``export-ssfd CKPT OUT``: write the encoder of a pretraining checkpoint for ``SSFD``."""
    parser = argparse.ArgumentParser(
        prog="recon-train export-ssfd",
        description="Write the SSFD encoder of an SSFDPretrainModule checkpoint in the published "
        "layout ({'model_state_dict': ...}), loadable by lightning_dfd.SSFD(weights=OUT).",
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint of SSFDPretrainModule")
    parser.add_argument("out", help="file to write, e.g. ssfd_encoder.ckpt")
    args = parser.parse_args(argv)
    out = export_ssfd_encoder(args.checkpoint, args.out)
    print(f"wrote SSFD encoder to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
