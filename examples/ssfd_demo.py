"""``make demo-ssfd``: SSFD end to end -- pretrain the SSFD encoder by inpainting, then a UNet on SSFD.

This is ``make demo`` (``examples/demo.py``) with the *in-domain* SSFD always, even when the
published encoder is in the weights home:

1. synthetic fastMRI multi-coil volumes are written (reused while the demo's dataset settings hold);
2. ``SSFDPretrainModule`` inpaints the fully sampled references of the demo's training split
   (square zero-filled patches over 50 % of each image, L2 loss; the paper's self-supervised
   method, ``examples/configs/demo_ssfd_pretrain.yaml``) and writes the encoder of its best
   checkpoint in the published SSFD layout to ``runs/demo/ssfd-demo.ckpt`` -- reused by later runs
   while the data and that config are unchanged (``--retrain-ssfd`` pretrains again);
3. ``ReconModule`` trains a UNet (``examples/configs/demo.yaml``): ``val/ssfd`` uses that encoder,
   is logged with PSNR / SSIM / NMSE / LPIPS / DISTS / ResNetFD every epoch and drives early
   stopping and checkpointing; the Spearman correlation over epochs of each DFD with PSNR is printed.

The paper-sized versions of both steps are ``examples/configs/ssfd_pretrain.yaml`` and
``examples/configs/unet_ssfd.yaml``.

    python examples/ssfd_demo.py [--retrain-ssfd] [--max-epochs N] [extra recon-train arguments...]
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path


def load_demo():
    """``examples/demo.py`` as a module (``examples`` is not a package)."""
    path = Path(__file__).resolve().parent / "demo.py"
    spec = importlib.util.spec_from_file_location("lightning_dfd_demo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``demo.py --ssfd in-domain`` with this script's arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return load_demo().main(["--ssfd", "in-domain", *argv])


if __name__ == "__main__":
    sys.exit(main())
