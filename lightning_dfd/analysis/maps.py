"""Per-pixel DFD maps of ``lightning-dfd evaluate --maps DIR``: one h5 file and PNGs per volume.

For every scored volume (input file ``<stem>.h5``) and every DFD that has a per-position form
(:meth:`~lightning_dfd.spatial.SpatialDFDMixin.distance_map`: LPIPS, ResNetFD, SSFD, TimmFD, and
any other whose ``distance_map`` does not raise :class:`NotImplementedError`):

* ``DIR/<stem>.h5`` (format ``h5``): one float32 dataset per DFD name, shape
  ``(slices_scored, H, W)`` — the non-negative per-pixel contributions of the images the metric
  scored (after ``--protocol`` scaling, the metric's own normalisation, ``--precision``), zero
  outside the mask with ``--mask foreground``; ``slice_num`` (int32, the slice index in the input
  file of each map); ``mask`` (uint8, only with ``--mask foreground``). File attributes:
  ``metrics`` (the DFD names), ``lightning_dfd_version``, ``protocol``, ``slices``,
  ``data_range``, ``scale``, ``mask``, ``precision``, ``prediction`` / ``target`` (input paths) and
  ``prediction_key`` / ``target_key``; dataset attributes: ``normalization`` and ``weights`` of
  the metric and ``png_vmax`` (the PNG scale below).
* ``DIR/<stem>/<metric>_slice<NNN>.png`` (format ``png``): 8-bit RGB, matplotlib's ``magma``
  colour map, 0 (black) at 0 and white-yellow at ``png_vmax``, values above clipped. ``png_vmax``
  is fixed per volume and metric: the 99th percentile of the metric's map over every pixel of
  every scored slice of the volume (inside the mask with ``--mask foreground``; 1.0 for an
  all-zero map), so the slices of one volume share a scale. It is written into each PNG's text
  chunk ``png_vmax`` and into the h5 dataset's attributes, so the colours can be read back:
  ``value = png_vmax * position in the colour map``.

Both are written under temp names in ``DIR`` and renamed (``os.replace``) only when complete, so
a failing write never leaves a half-written file; a volume whose scoring fails gets no maps, and
maps an earlier run left for it are removed, so ``DIR`` agrees with the CSV tables.

Example:
    >>> import tempfile
    >>> writer = MapWriter(Path(tempfile.mkdtemp()), formats=("h5", "png"))
    >>> maps = {"lpips_alex": np.zeros((2, 8, 8), np.float32)}
    >>> paths = writer.write("file1", maps, slices=[3, 4], attrs={"protocol": "fastmri"})
    >>> sorted(p.name for p in paths)
    ['file1', 'file1.h5']
    >>> sorted(p.name for p in (writer.folder / "file1").iterdir())
    ['lpips_alex_slice003.png', 'lpips_alex_slice004.png']
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = ["COLORMAP", "MAP_FORMATS", "PNG_PERCENTILE", "MapWriter", "png_scale", "to_rgb"]

#: What ``--maps-format`` accepts.
MAP_FORMATS = ("png", "h5")
#: The matplotlib colour map of the PNGs.
COLORMAP = "magma"
#: The PNG scale of a volume: this percentile of the map's values.
PNG_PERCENTILE = 99.0


def png_scale(maps: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The PNG scale of one volume's map: its 99th percentile (inside ``mask``); 1.0 when that is 0.

    Example:
        >>> png_scale(np.arange(101, dtype=np.float32)), png_scale(np.zeros((2, 4, 4)))
        (99.0, 1.0)
    """
    values = np.asarray(maps, dtype=np.float64)
    if mask is not None and mask.any():
        values = values[np.broadcast_to(mask, values.shape)]
    vmax = float(np.percentile(values, PNG_PERCENTILE)) if values.size else 0.0
    return vmax if np.isfinite(vmax) and vmax > 0 else 1.0


def to_rgb(image: np.ndarray, vmax: float) -> np.ndarray:
    """``(H, W)`` map -> ``(H, W, 3)`` uint8 in :data:`COLORMAP`, 0 -> first colour, ``vmax`` -> last.

    Example:
        >>> to_rgb(np.array([[0.0, 2.0]]), vmax=1.0).tolist()
        [[[0, 0, 3], [251, 252, 191]]]
    """
    from matplotlib import colormaps

    scaled = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64) / vmax), 0.0, 1.0)
    rgba = colormaps[COLORMAP](scaled, bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class MapWriter:
    """Writes the maps of one volume at a time into ``folder`` (see the module docstring).

    Args:
        folder: ``--maps DIR`` (created when missing).
        formats: Any of :data:`MAP_FORMATS`.
    """

    def __init__(self, folder: Path, formats: Sequence[str] = MAP_FORMATS) -> None:
        unknown = [f for f in formats if f not in MAP_FORMATS]
        if unknown or not formats:
            raise ValueError(f"Argument `maps_format` must name formats among {MAP_FORMATS}, but got "
                             f"{list(formats)}")
        self.folder = Path(folder)
        self.formats = tuple(dict.fromkeys(formats))

    def paths(self, stem: str) -> list[Path]:
        """The outputs of one volume: ``<stem>.h5`` and/or the folder ``<stem>/``."""
        out = []
        if "h5" in self.formats:
            out.append(self.folder / f"{stem}.h5")
        if "png" in self.formats:
            out.append(self.folder / stem)
        return out

    def _temp(self, stem: str, suffix: str) -> Path:
        return self.folder / f".{stem}{suffix}.{os.getpid()}.tmp"

    def write(
        self,
        stem: str,
        maps: Mapping[str, np.ndarray],
        slices: Sequence[int],
        mask: np.ndarray | None = None,
        attrs: Mapping[str, Any] | None = None,
        metric_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[Path]:
        """Write one volume's maps; nothing appears under the real names unless every write succeeded.

        Args:
            stem: The input file name without ``.h5``.
            maps: Metric name -> ``(slices, H, W)`` map.
            slices: The slice index in the input file of each map.
            mask: Optional boolean ``(slices, H, W)`` mask (stored, and the PNG scale uses it).
            attrs: File attributes of the h5 file.
            metric_attrs: Per metric name, attributes of its dataset.

        Returns:
            The paths written.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        slices = np.asarray(list(slices), dtype=np.int32)
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in maps.items()}
        for name, value in arrays.items():
            if value.shape[0] != len(slices) or value.ndim != 3:
                raise ValueError(f"map {name!r} has shape {value.shape}; expected ({len(slices)}, H, W)")
        scales = {name: png_scale(value, mask) for name, value in arrays.items()}
        staged: list[tuple[Path, Path]] = []
        try:
            if "h5" in self.formats:
                temp = self._temp(stem, ".h5")
                staged.append((temp, self.folder / f"{stem}.h5"))
                self._write_h5(temp, arrays, slices, mask, attrs or {}, metric_attrs or {}, scales)
            if "png" in self.formats:
                temp = self._temp(stem, "")
                staged.append((temp, self.folder / stem))
                self._write_pngs(temp, arrays, slices, scales)
        except BaseException:
            for temp, _ in staged:
                _remove(temp)
            raise
        for temp, final in staged:
            if final.is_dir() and not final.is_symlink():  # os.replace cannot replace a folder
                old = self._temp(stem, ".old")
                os.replace(final, old)
                os.replace(temp, final)
                shutil.rmtree(old)
            else:
                os.replace(temp, final)
        return [final for _, final in staged]

    def discard(self, stem: str) -> list[Path]:
        """Remove the maps an earlier run wrote for ``stem`` (a volume not scored now); return them."""
        gone = [path for path in self.paths(stem) if path.exists() or path.is_symlink()]
        for path in gone:
            _remove(path)
        return gone

    @staticmethod
    def _write_h5(path: Path, arrays: Mapping[str, np.ndarray], slices: np.ndarray,
                  mask: np.ndarray | None, attrs: Mapping[str, Any],
                  metric_attrs: Mapping[str, Mapping[str, Any]], scales: Mapping[str, float]) -> None:
        with h5py.File(path, "w") as handle:
            handle.create_dataset("slice_num", data=slices)
            if mask is not None:
                handle.create_dataset("mask", data=np.asarray(mask, dtype=np.uint8), compression="gzip")
            for name, value in arrays.items():
                dataset = handle.create_dataset(name, data=value, compression="gzip")
                for key, item in {**metric_attrs.get(name, {}), "png_vmax": scales[name]}.items():
                    dataset.attrs[key] = "" if item is None else item
            handle.attrs["metrics"] = list(arrays)
            for key, item in attrs.items():
                handle.attrs[key] = "" if item is None else item

    @staticmethod
    def _write_pngs(folder: Path, arrays: Mapping[str, np.ndarray], slices: np.ndarray,
                    scales: Mapping[str, float]) -> None:
        from PIL import Image, PngImagePlugin

        folder.mkdir()
        for name, value in arrays.items():
            info = PngImagePlugin.PngInfo()
            info.add_text("metric", name)
            info.add_text("png_vmax", repr(scales[name]))
            info.add_text("colormap", COLORMAP)
            for image, s in zip(value, slices):
                Image.fromarray(to_rgb(image, scales[name])).save(
                    folder / f"{name}_slice{int(s):03d}.png", pnginfo=info
                )
