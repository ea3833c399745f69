"""Functional (stateless) forms of every metric, one file per DFD as in ``encoders/`` and ``metrics/``."""

from lightning_dfd.functional.dfd import functional_distance
from lightning_dfd.functional.dists import dists
from lightning_dfd.functional.hf import hf_fd
from lightning_dfd.functional.lpips import lpips
from lightning_dfd.functional.pixel import nmse, psnr, ssim
from lightning_dfd.functional.resnet import resnet_fd
from lightning_dfd.functional.ssfd import ssfd
from lightning_dfd.functional.timm import timm_fd
from lightning_dfd.functional.vaefd import vae_fd

__all__ = ["dists", "functional_distance", "hf_fd", "lpips", "nmse", "psnr", "resnet_fd", "ssfd",
           "ssim", "timm_fd", "vae_fd"]
