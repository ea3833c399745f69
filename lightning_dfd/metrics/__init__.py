"""torchmetrics ``Metric`` classes: one base for the DFDs, one thin file per DFD."""

from lightning_dfd.catalog import METRICS, PIXEL_METRICS
from lightning_dfd.encoders.encoder_pass import EncoderPass
from lightning_dfd.metrics.base import DeepFeatureDistance, is_dfd
from lightning_dfd.metrics.collection import DFDCollection
from lightning_dfd.metrics.dists import DISTS
from lightning_dfd.metrics.frechet import FrechetDFD
from lightning_dfd.metrics.hf import HFFD
from lightning_dfd.metrics.lpips import LPIPS
from lightning_dfd.metrics.pixel import NMSE, PSNR, SSIM
from lightning_dfd.metrics.resnet import ResNetFD
from lightning_dfd.metrics.ssfd import SSFD
from lightning_dfd.metrics.suite import build_metric, build_suite, metric_class
from lightning_dfd.metrics.timm import TimmFD
from lightning_dfd.metrics.vaefd import VAEFD
from lightning_dfd.metrics.volume import VolumeDFD

__all__ = ["DFDCollection", "DISTS", "HFFD", "LPIPS", "METRICS", "NMSE", "PIXEL_METRICS", "PSNR", "SSFD",
           "SSIM", "VAEFD", "DeepFeatureDistance", "EncoderPass", "FrechetDFD", "ResNetFD", "TimmFD",
           "VolumeDFD", "build_metric", "build_suite", "is_dfd", "metric_class"]
