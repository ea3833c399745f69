"""Write reconstructions as fastMRI-style h5 files, ready for ``lightning-dfd evaluate``.

``recon-train predict`` runs the test split through a trained :class:`ReconModule`; this callback
collects each volume's slices and writes two folders with one file per volume (same file names
as the data):

- ``<output_dir>/reconstructions/<fname>``: key ``reconstruction`` ``(slices, H, W)`` float32
  magnitudes (the layout of ``fastmri.save_reconstructions``);
- ``<output_dir>/references/<fname>``: key ``reconstruction_sense``, the SENSE reference's magnitude
  on the same crop and in the same units (the data pipeline scales each volume to max 1).

Then ``lightning-dfd evaluate --target OUT/references --target-key reconstruction_sense
--predictions OUT/reconstructions`` scores them. Under DDP each process writes the whole volumes
it was given (validation/test sampling never splits a volume).

The two folders must lie apart from the data folders (checked when prediction starts, before any
step). Each file is written under a unique temp name and renamed when complete; its name comes
from the data and is checked to be one plain file name inside its folder. A file of the same
name in those folders is replaced; nothing else there is touched.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from lightning_dfd.files import contained_path, new_temp_file, overlap

REFERENCE_KEY = "reconstruction_sense"
#: The two folders under ``output_dir``.
SUBFOLDERS = ("reconstructions", "references")


def data_folders(trainer: Trainer) -> list[Path]:
    """The data folders of the trainer's datamodule (``data_path`` and ``train/val/test_path``)."""
    datamodule = getattr(trainer, "datamodule", None)
    found = [getattr(datamodule, "data_path", None), *(getattr(datamodule, "paths", None) or {}).values()]
    return [Path(folder) for folder in found if folder is not None]


class ReconstructionWriter(Callback):
    """Collect ``predict_step`` outputs per volume and write them at the end of prediction.

    Args:
        output_dir: folder that receives ``reconstructions/`` and ``references/``.
    """

    def __init__(self, output_dir: str | os.PathLike = "predictions") -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self._volumes: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
        self.written: list[Path] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Refuse output folders that are, lie inside or hold a data folder, before any step."""
        for sub in SUBFOLDERS:
            for folder in data_folders(trainer):
                found = overlap(folder, self.output_dir / sub)
                if found is not None:
                    relation = {"same": "is", "inside": "lies inside", "contains": "holds"}[found]
                    raise ValueError(f"ReconstructionWriter: {self.output_dir / sub} {relation} the data "
                                     f"folder {folder}; choose an `output_dir` apart from the data")

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Keep each slice's reconstruction and reference under its file name."""
        for fname, slice_num, recon, ref in zip(outputs["fname"], outputs["slice_num"].tolist(),
                                                outputs["reconstruction"], outputs["reference"],
                                                strict=True):
            self._volumes[fname][slice_num] = (recon.float().cpu().numpy(), ref.float().cpu().numpy())

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write one file per volume (slices in order) into both folders."""
        for sub in SUBFOLDERS:
            (self.output_dir / sub).mkdir(parents=True, exist_ok=True)
        for fname, slices in sorted(self._volumes.items()):
            order = sorted(slices)
            recon = np.stack([slices[s][0] for s in order]).astype(np.float32)
            ref = np.stack([slices[s][1] for s in order]).astype(np.float32)
            for sub, key, array in zip(SUBFOLDERS, ("reconstruction", REFERENCE_KEY), (recon, ref)):
                path = contained_path(self.output_dir / sub, str(fname), what="volume file name")
                self._write(path, key, array)
                self.written.append(path)
        self._volumes.clear()

    @staticmethod
    def _write(path: Path, key: str, array: np.ndarray) -> None:
        """Write one file under a unique temp name in its folder, then rename it."""
        temp = new_temp_file(path.parent, f".{path.name}.")
        try:
            with h5py.File(temp, "w") as hf:
                hf.create_dataset(key, data=array)
            os.replace(temp, path)
        finally:
            Path(temp).unlink(missing_ok=True)
