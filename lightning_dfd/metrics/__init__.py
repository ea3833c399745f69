"""torchmetrics ``Metric`` classes: one base for the DFDs, one thin file per DFD."""

from lightning_dfd.metrics.base import DeepFeatureDistance
from lightning_dfd.metrics.catalog import METRICS, build_metric, is_dfd, metric_class
from lightning_dfd.metrics.dists import DISTS
from lightning_dfd.metrics.lpips import LPIPS
from lightning_dfd.metrics.pixel import NMSE, PSNR, SSIM
from lightning_dfd.metrics.resnet import ResNetFD
from lightning_dfd.metrics.shared import DFDCollection
from lightning_dfd.metrics.timm import TimmFD

__all__ = ["DFDCollection", "DISTS", "LPIPS", "METRICS", "NMSE", "PSNR", "SSIM", "DeepFeatureDistance",
           "ResNetFD", "TimmFD", "build_metric", "is_dfd", "metric_class"]
