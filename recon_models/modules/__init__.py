"""LightningModules and callbacks: reconstruction training with DFD-aware validation."""

from recon_models.modules.base import (
    DEFAULT_DFDS,
    ImageQualityModule,
    build_metric_collection,
    center_crop,
)
from recon_models.modules.callbacks import RNGStateCheckpoint, fit_summary, format_fit_summary
from recon_models.modules.prediction_writer import ReconstructionWriter
from recon_models.modules.recon import ReconModule
from recon_models.modules.ssfd_pretrain import SSFDPretrainModule

__all__ = [
    "DEFAULT_DFDS",
    "RNGStateCheckpoint",
    "ImageQualityModule",
    "ReconModule",
    "ReconstructionWriter",
    "SSFDPretrainModule",
    "build_metric_collection",
    "center_crop",
    "fit_summary",
    "format_fit_summary",
]
