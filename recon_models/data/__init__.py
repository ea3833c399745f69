"""fastMRI multi-coil data: h5 format, synthetic volumes, masks, coil maps, samples, DataModule.

Modules:
    fastmri_format: the h5 layout, ISMRMRD header, file checks.
    synthetic: knee phantoms, coil maps and noise written as fastMRI files (also a CLI:
        ``python -m recon_models.data.synthetic OUT_DIR --volumes N``; not imported here so
        that ``-m`` runs it cleanly).
    masks: fastMRI undersampling masks in the ``(1, 1, W)`` layout.
    sensitivity: ESPIRiT / JSENSE / RSS coil maps and SENSE combination.
    maps_cache: per-volume on-disk cache of maps and volume maxima.
    transforms: ``SliceDataset`` transform producing :class:`ReconSample`.
    dataset: ``SliceDataset`` with file selection and errors naming the file.
    samplers: evaluation sampler sharding whole volumes without duplicates.
    datamodule: the ``LightningDataModule``.
"""

from recon_models.data.datamodule import FastMRIDataModule
from recon_models.data.dataset import FastMRISliceDataset
from recon_models.data.errors import DataFormatError
from recon_models.data.fastmri_format import check_volume, list_volumes
from recon_models.data.maps_cache import SensitivityCache
from recon_models.data.masks import build_mask_func, default_center_fraction, sample_mask
from recon_models.data.sample import ReconSample
from recon_models.data.samplers import VolumeShardSampler
from recon_models.data.sensitivity import estimate_maps, sense_combine
from recon_models.data.transforms import ReconTransform

__all__ = [
    "DataFormatError",
    "FastMRIDataModule",
    "FastMRISliceDataset",
    "ReconSample",
    "ReconTransform",
    "SensitivityCache",
    "VolumeShardSampler",
    "build_mask_func",
    "check_volume",
    "default_center_fraction",
    "estimate_maps",
    "list_volumes",
    "sample_mask",
    "sense_combine",
]
