"""Feature extractors + distances behind each DFD (see :mod:`lightning_dfd.encoders.base`)."""

from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.encoders.dists import DISTSNetwork
from lightning_dfd.encoders.lpips import LPIPSNetwork
from lightning_dfd.encoders.resnet import ResNetFDNetwork

__all__ = ["DISTSNetwork", "FeatureDistanceNetwork", "LPIPSNetwork", "ResNetFDNetwork"]
