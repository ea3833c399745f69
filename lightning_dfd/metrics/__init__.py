"""torchmetrics ``Metric`` classes: one base for the DFDs, one thin file per DFD."""

from lightning_dfd.metrics.base import DeepFeatureDistance, is_dfd
from lightning_dfd.metrics.catalog import METRICS, PIXEL_METRICS, build_metric, metric_class
from lightning_dfd.metrics.collection import DFDCollection
from lightning_dfd.metrics.dists import DISTS
from lightning_dfd.metrics.encoder_pass import EncoderPass
from lightning_dfd.metrics.lpips import LPIPS
from lightning_dfd.metrics.pixel import NMSE, PSNR, SSIM
from lightning_dfd.metrics.resnet import ResNetFD
from lightning_dfd.metrics.ssfd import SSFD
from lightning_dfd.metrics.timm import TimmFD
from lightning_dfd.metrics.vaefd import VAEFD
from lightning_dfd.metrics.volume import VolumeDFD

__all__ = ["DFDCollection", "DISTS", "LPIPS", "METRICS", "NMSE", "PIXEL_METRICS", "PSNR", "SSFD", "SSIM",
           "VAEFD", "DeepFeatureDistance", "EncoderPass", "ResNetFD", "TimmFD", "VolumeDFD", "build_metric",
           "is_dfd", "metric_class"]
