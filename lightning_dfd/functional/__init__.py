"""Functional (stateless) forms of every metric."""

from lightning_dfd.functional.dfd import feature_distances, functional_distance
from lightning_dfd.functional.networks import dists, lpips, resnet_fd
from lightning_dfd.functional.pixel import nmse, psnr, ssim

__all__ = ["dists", "feature_distances", "functional_distance", "lpips", "nmse", "psnr",
           "resnet_fd", "ssim"]
