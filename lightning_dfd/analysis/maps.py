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
* ``DIR/<stem>/<metric>_slice<NNN>.png`` (format ``png``): for viewing (the h5 holds the values).
  8-bit RGB: the map in matplotlib's ``magma`` colour map, 0 (black) at 0 and white-yellow at
  ``png_vmax``, values above clipped, upscaled by the smallest integer factor (nearest neighbour,
  pixels stay sharp) that makes its shorter side at least :data:`MIN_SIDE` pixels, in the
  top-left corner; right of it a colour bar from 0 to ``png_vmax`` (ticks in the map's unit, the
  top one marked ``p99``, a triangle for the clipped values above) labelled with the metric.
  ``png_vmax`` is fixed per volume and metric: the 99th percentile of the metric's map over every
  pixel of every scored slice of the volume (inside the mask with ``--mask foreground``; 1.0 for
  an all-zero map), so the slices of one volume share a scale. With an underlay (``evaluate
  --maps-underlay``) the map is drawn over the reference image in gray (0 to the reference
  volume's 99.5th percentile), opaque in proportion to its value (transparent at 0,
  :data:`UNDERLAY_OPACITY` at ``png_vmax``), so the anatomy shows where the map is low. Text
  chunks: ``metric``, ``png_vmax``, ``colormap``, ``upscale`` (the factor), ``map_box`` (``left,
  top, right, bottom`` of the map in the PNG), ``underlay`` (``none`` or ``reference``) and
  ``underlay_scale``; so the colours can be read back: ``value = png_vmax * position in the
  colour map`` (without an underlay).

Both are written under unique temp names in ``DIR`` and renamed (``os.replace``) only when
complete, so a failing write never leaves a half-written file.

``DIR`` may hold files of your own: evaluate replaces or removes only what it wrote. Every file it
writes is recorded (path, volume, sha256) in the manifest ``DIR/.lightning-dfd-maps.json``
(updated under a lock, ``.lightning-dfd-maps.json.lock``, by every process of a DDP run). An
existing ``<stem>.h5`` or ``<stem>/`` is replaced only when every file in it is recorded for that
volume with its current content; otherwise the volume's maps are not written (a problem at stage
``maps``) and the file is left alone. A volume whose scoring fails loses the maps an earlier run
recorded for it (files changed since, or never recorded, are left and named), so ``DIR`` agrees
with the CSV tables. Volume names are checked (one plain path component) and every path is proven
to lie inside ``DIR`` (:func:`lightning_dfd.files.contained_path`).

Example:
    >>> import tempfile
    >>> writer = MapWriter(Path(tempfile.mkdtemp()), formats=("h5", "png"))
    >>> maps = {"lpips_alex": np.zeros((2, 8, 8), np.float32)}
    >>> paths = writer.write("file1", maps, slices=[3, 4], attrs={"protocol": "fastmri"})
    >>> sorted(p.name for p in paths)
    ['file1', 'file1.h5']
    >>> sorted(p.name for p in (writer.folder / "file1").iterdir())
    ['lpips_alex_slice003.png', 'lpips_alex_slice004.png']
    >>> sorted(writer.recorded("file1"))
    ['file1.h5', 'file1/lpips_alex_slice003.png', 'file1/lpips_alex_slice004.png']
    >>> [p.name for p in writer.discard("file1")[0]]
    ['file1.h5', 'lpips_alex_slice003.png', 'lpips_alex_slice004.png']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lightning_dfd.files import (
    check_plain_name,
    contained_path,
    locked,
    new_temp_file,
    new_temp_folder,
    write_text_atomically,
)

__all__ = [
    "COLORMAP",
    "MANIFEST",
    "MAP_FORMATS",
    "MIN_SIDE",
    "PNG_PERCENTILE",
    "UNDERLAY_OPACITY",
    "UNDERLAY_PERCENTILE",
    "MapWriter",
    "MapsOwnershipError",
    "colorbar_panel",
    "png_scale",
    "render_png",
    "to_rgb",
    "upscale_factor",
]

#: What ``--maps-format`` accepts.
MAP_FORMATS = ("png", "h5")
#: The matplotlib colour map of the PNGs.
COLORMAP = "magma"
#: The PNG scale of a volume: this percentile of the map's values.
PNG_PERCENTILE = 99.0
#: Shorter side, in pixels, a map is upscaled to (at least) in its PNG.
MIN_SIDE = 256
#: Width in pixels of the colour-bar panel right of the map.
COLORBAR_WIDTH = 128
#: Opacity of the map at ``png_vmax`` over an underlay (it falls linearly to 0 at 0).
UNDERLAY_OPACITY = 0.85
#: The underlay's gray scale: 0 to this percentile of the reference volume's magnitudes.
UNDERLAY_PERCENTILE = 99.5


def png_scale(maps: np.ndarray, mask: np.ndarray | None = None, percentile: float = PNG_PERCENTILE) -> float:
    """The PNG scale of one volume's map: its 99th percentile (inside ``mask``); 1.0 when that is 0.

    Example:
        >>> png_scale(np.arange(101, dtype=np.float32)), png_scale(np.zeros((2, 4, 4)))
        (99.0, 1.0)
    """
    values = np.asarray(maps, dtype=np.float64)
    if mask is not None and mask.any():
        values = values[np.broadcast_to(mask, values.shape)]
    vmax = float(np.percentile(values, percentile)) if values.size else 0.0
    return vmax if np.isfinite(vmax) and vmax > 0 else 1.0


def to_rgb(
    image: np.ndarray, vmax: float, underlay: np.ndarray | None = None, underlay_scale: float = 1.0
) -> np.ndarray:
    """``(H, W)`` map -> ``(H, W, 3)`` uint8 in :data:`COLORMAP`, 0 -> first colour, ``vmax`` -> last.

    With ``underlay`` (an ``(H, W)`` image, e.g. the reference magnitude) the colours are blended
    over it in gray (``underlay / underlay_scale`` clipped to [0, 1]) with opacity
    ``UNDERLAY_OPACITY * clip(image / vmax, 0, 1)``.

    Example:
        >>> to_rgb(np.array([[0.0, 2.0]]), vmax=1.0).tolist()
        [[[0, 0, 3], [251, 252, 191]]]
        >>> to_rgb(np.array([[0.0, 2.0]]), vmax=1.0, underlay=np.array([[1.0, 0.0]])).tolist()
        [[[255, 255, 255], [213, 214, 162]]]
    """
    from matplotlib import colormaps

    scaled = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64) / vmax), 0.0, 1.0)
    rgb = colormaps[COLORMAP](scaled, bytes=True)[..., :3]
    if underlay is not None:
        underlay = np.asarray(underlay, dtype=np.float64)
        if underlay.shape != scaled.shape:
            raise ValueError(f"the underlay has shape {underlay.shape}; the map {scaled.shape}")
        gray = np.clip(np.nan_to_num(np.abs(underlay) / underlay_scale), 0.0, 1.0)[..., None] * 255.0
        alpha = UNDERLAY_OPACITY * scaled[..., None]
        rgb = np.rint((1.0 - alpha) * gray + alpha * rgb).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def upscale_factor(shape: Sequence[int], min_side: int = MIN_SIDE) -> int:
    """The smallest integer factor that makes the shorter side of ``shape`` at least ``min_side``.

    Example:
        >>> upscale_factor((48, 48)), upscale_factor((640, 368)), upscale_factor((48, 40))
        (6, 1, 7)
    """
    return max(1, -(-int(min_side) // max(1, min(int(shape[0]), int(shape[1])))))


def colorbar_panel(height: int, vmax: float, metric: str, width: int = COLORBAR_WIDTH) -> np.ndarray:
    """``(height, width, 3)`` uint8 panel: a vertical :data:`COLORMAP` bar from 0 to ``vmax``.

    Ticks at 0, ``vmax / 2`` and ``vmax`` (labelled ``p99``: the volume's 99th percentile), a
    triangle on top for the clipped values above ``vmax``, and the metric's name along the bar.
    Built from :func:`colorbar_figure`.

    Example:
        >>> colorbar_panel(288, 0.25, "lpips_vgg").shape
        (288, 128, 3)
    """
    fig = colorbar_figure(height, vmax, metric, width)
    fig.canvas.draw()
    return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def colorbar_figure(height: int, vmax: float, metric: str, width: int = COLORBAR_WIDTH):
    """The matplotlib figure of :func:`colorbar_panel` (``width`` x ``height`` pixels at 100 dpi)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from lightning_dfd.analysis.plots import wrap_label

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    fontsize = 8 if height < 400 else 9
    margin = 14 / height  # room above and below for the end tick labels
    bar = fig.add_axes((10 / width, margin, 14 / width, 1.0 - 2.0 * margin))
    mappable = ScalarMappable(norm=Normalize(0.0, vmax), cmap=colormaps[COLORMAP])
    colorbar = fig.colorbar(mappable, cax=bar, extend="max", extendfrac=0.04)
    colorbar.set_ticks([0.0, vmax / 2.0, vmax],
                       labels=["0", f"{vmax / 2.0:.3g}", f"{vmax:.3g} p99"])  # fmt: skip
    colorbar.ax.tick_params(labelsize=fontsize, length=3, pad=2)
    label = wrap_label(f"{metric} per pixel", (1.0 - 2.0 * margin) * height / dpi, fontsize)
    colorbar.set_label(label, fontsize=fontsize, labelpad=3)
    return fig


def render_png(
    image: np.ndarray,
    vmax: float,
    metric: str,
    underlay: np.ndarray | None = None,
    underlay_scale: float = 1.0,
    min_side: int = MIN_SIDE,
    panel: np.ndarray | None = None,
) -> np.ndarray:
    """One map PNG's pixels: :func:`to_rgb` upscaled (:func:`upscale_factor`), the colour bar right.

    Args:
        image: ``(H, W)`` map.
        vmax: The colour scale's top (``png_vmax``).
        metric: Name on the colour bar.
        underlay: Optional ``(H, W)`` reference image drawn in gray below the map.
        underlay_scale: The underlay's white.
        min_side: Shorter side of the upscaled map, at least.
        panel: A :func:`colorbar_panel` of the right height to reuse (it depends only on the
            height, ``vmax`` and ``metric``).

    Returns:
        ``(H * k, W * k + COLORBAR_WIDTH, 3)`` uint8; the map fills ``[:H * k, :W * k]``.

    Example:
        >>> render_png(np.zeros((48, 40)), 1.0, "lpips_vgg").shape  # 7x: 280 >= 256 px
        (336, 408, 3)
    """
    factor = upscale_factor(np.shape(image), min_side)
    rgb = to_rgb(image, vmax, underlay, underlay_scale)
    rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    if panel is None:
        panel = colorbar_panel(rgb.shape[0], vmax, metric)
    if panel.shape[0] != rgb.shape[0]:
        raise ValueError(f"the colour-bar panel is {panel.shape[0]} px high; the map {rgb.shape[0]} px")
    return np.ascontiguousarray(np.concatenate([rgb, panel], axis=1))


MANIFEST = ".lightning-dfd-maps.json"
_MANIFEST_FORMAT = 1
_TEMP_PREFIX = ".lightning-dfd-maps-"


class MapsOwnershipError(ValueError):
    """An existing file where a map goes was not written by evaluate (or changed since)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    @property
    def manifest(self) -> Path:
        """``folder/.lightning-dfd-maps.json``: every file this writer (any run) wrote."""
        return self.folder / MANIFEST

    def paths(self, stem: str) -> list[Path]:
        """The outputs of one volume: ``<stem>.h5`` and/or the folder ``<stem>/`` (names checked)."""
        out = []
        if "h5" in self.formats:
            out.append(contained_path(self.folder, f"{check_plain_name(stem, 'volume')}.h5"))
        if "png" in self.formats:
            out.append(contained_path(self.folder, stem, what="volume"))
        return out

    # -- the manifest --------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`ValueError` when ``folder`` holds a manifest that cannot be read."""
        self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        """``relative path -> {"volume", "sha256": [...]}``; {} without a manifest."""
        try:
            text = self.manifest.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise ValueError(f"--maps: cannot read the manifest {self.manifest}: {err}") from err
        try:
            data = json.loads(text)
            files = data["files"]
            if data.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
                raise ValueError(f"format {data.get('format')!r}")
            for relative, record in files.items():
                self._contained(relative)
                if not (isinstance(record.get("volume"), str) and isinstance(record.get("sha256"), list)):
                    raise ValueError(f"entry {relative!r}")
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(
                f"--maps: {self.manifest} is not a manifest lightning-dfd evaluate wrote ({err}); "
                "without it evaluate cannot tell its maps from your files: move it away or choose "
                "another --maps folder"
            ) from err
        return files

    def _save(self, files: Mapping[str, Mapping[str, Any]]) -> None:
        data = {"format": _MANIFEST_FORMAT, "written_by": "lightning-dfd evaluate --maps",
                "files": dict(sorted(files.items()))}
        write_text_atomically(self.manifest, json.dumps(data, indent=1))

    def _contained(self, relative: str) -> Path:
        return contained_path(self.folder, *relative.split("/"), what="map file name")

    def recorded(self, stem: str) -> list[str]:
        """The files the manifest records for volume ``stem`` (relative to ``folder``)."""
        return sorted(rel for rel, record in self._load().items() if record["volume"] == stem)

    def _ours(self, relative: str, stem: str, files: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether ``relative`` is a regular file recorded for ``stem`` with its current content."""
        record = files.get(relative)
        path = self._contained(relative)
        return (record is not None and record["volume"] == stem and path.is_file()
                and not path.is_symlink() and _sha256(path) in record["sha256"])  # fmt: skip

    def _check_replaceable(self, stem: str, final: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
        """Raise :class:`MapsOwnershipError` unless ``final`` is absent or entirely this volume's maps."""
        if not final.exists() and not final.is_symlink():
            return
        relative = final.relative_to(self.folder).as_posix()
        strangers: list[str] = []
        png_folder = final.name == stem  # else the volume's h5 file, <stem>.h5
        if png_folder and final.is_dir() and not final.is_symlink():
            strangers = [p.name for p in sorted(final.iterdir())
                         if not self._ours(f"{relative}/{p.name}", stem, files)]  # fmt: skip
            recorded = any(rel.startswith(f"{relative}/") and record["volume"] == stem
                           for rel, record in files.items())  # fmt: skip
            if recorded and not strangers:
                return
        elif not png_folder and self._ours(relative, stem, files):
            return
        more = " ..." if len(strangers) > 3 else ""
        holds = f" holds {', '.join(strangers[:3])}{more} and" if strangers else ""
        raise MapsOwnershipError(
            f"{final} exists and{holds} was not written by lightning-dfd evaluate for volume {stem!r} "
            f"(no record in {self.manifest.name}, or changed since): left alone, no maps written for "
            "this volume; move it away or choose another --maps folder"
        )

    # -- writing and removing ------------------------------------------------------------------

    def write(
        self,
        stem: str,
        maps: Mapping[str, np.ndarray],
        slices: Sequence[int],
        mask: np.ndarray | None = None,
        attrs: Mapping[str, Any] | None = None,
        metric_attrs: Mapping[str, Mapping[str, Any]] | None = None,
        underlay: np.ndarray | None = None,
    ) -> list[Path]:
        """Write one volume's maps; nothing appears under the real names unless every write succeeded.

        Args:
            stem: The volume id (the input file name without ``.h5``): one plain name.
            maps: Metric name -> ``(slices, H, W)`` map.
            slices: The slice index in the input file of each map.
            mask: Optional boolean ``(slices, H, W)`` mask (stored, and the PNG scale uses it).
            attrs: File attributes of the h5 file.
            metric_attrs: Per metric name, attributes of its dataset.
            underlay: Optional ``(slices, H, W)`` reference images to draw the PNG maps over (in
                gray); the h5 file does not change.

        Returns:
            The paths written.

        Raises:
            UnsafePathError: ``stem`` is not a plain name.
            MapsOwnershipError: A file or folder where a map goes was not written by evaluate
                (nothing is written then).
        """
        finals = self.paths(stem)
        self.folder.mkdir(parents=True, exist_ok=True)
        slices = np.asarray(list(slices), dtype=np.int32)
        arrays = {name: np.asarray(value, dtype=np.float32) for name, value in maps.items()}
        for name, value in arrays.items():
            check_plain_name(name, "metric name")
            if value.shape[0] != len(slices) or value.ndim != 3:
                raise ValueError(f"map {name!r} has shape {value.shape}; expected ({len(slices)}, H, W)")
        scales = {name: png_scale(value, mask) for name, value in arrays.items()}
        staged: list[tuple[Path, Path]] = []  # (temp, final)
        try:
            if "h5" in self.formats:
                temp = new_temp_file(self.folder, _TEMP_PREFIX, ".h5.tmp")
                staged.append((temp, finals[0]))
                self._write_h5(Path(temp), arrays, slices, mask, attrs or {}, metric_attrs or {}, scales)
            if "png" in self.formats:
                temp = new_temp_folder(self.folder, _TEMP_PREFIX)
                staged.append((temp, finals[-1]))
                self._write_pngs(Path(temp), arrays, slices, scales, underlay)
            new = {}
            for temp, final in staged:
                relative = final.relative_to(self.folder).as_posix()
                if temp.is_dir():
                    new.update({f"{relative}/{p.name}": _sha256(p) for p in temp.iterdir()})
                else:
                    new[relative] = _sha256(temp)
            with locked(self.manifest):
                self._swap_in(stem, staged, new)
        except BaseException:
            for temp, _ in staged:
                self._remove_temp(temp)
            raise
        return [final for _, final in staged]

    def _swap_in(self, stem: str, staged: list[tuple[Path, Path]], new: Mapping[str, str]) -> None:
        """Under the manifest lock: check, record old and new, rename, drop what is stale."""
        files = self._load()
        for _, final in staged:
            self._check_replaceable(stem, final, files)
        old = {rel: record for rel, record in files.items() if record["volume"] == stem}
        stale = [rel for rel in old if rel not in new and self._ours(rel, stem, files)]
        # Recorded before the renames (old and new content): a crash between them leaves only
        # files the manifest knows.
        for rel, digest in new.items():
            known = files.get(rel, {}).get("sha256", []) if rel in old else []
            files[rel] = {"volume": stem, "sha256": sorted({*known, digest})}
        self._save(files)
        for temp, final in staged:
            if final.is_dir() and not final.is_symlink():  # os.replace cannot replace a full folder
                aside = new_temp_folder(self.folder, _TEMP_PREFIX, ".old")
                os.replace(final, aside)  # checked above: only this volume's recorded maps
                os.replace(temp, final)
                self._remove_temp(aside)
            else:
                os.replace(temp, final)
        for rel in stale:  # e.g. PNGs of an earlier --maps-format png,h5 run, now h5 only
            self._contained(rel).unlink(missing_ok=True)  # a replaced folder took its own along
            self._remove_empty_parent(rel)
            files.pop(rel, None)
        for rel in [rel for rel in old if rel not in new]:
            files.pop(rel, None)
        for rel, digest in new.items():
            files[rel] = {"volume": stem, "sha256": [digest]}
        self._save(files)

    def discard(self, stem: str) -> tuple[list[Path], list[Path]]:
        """Remove the maps an earlier run wrote for ``stem`` (a volume not scored now).

        Only files the manifest records for ``stem`` with their current content are removed (and
        the volume's PNG folder when that leaves it empty).

        Returns:
            ``(removed, left)``: the files removed, and the files at the volume's map paths that
            were left because evaluate did not write them (or they changed since).
        """
        check_plain_name(stem, "volume")
        if not self.folder.is_dir():
            return [], []
        removed, left = [], []
        with locked(self.manifest):
            files = self._load()
            mine = sorted(rel for rel, record in files.items() if record["volume"] == stem)
            for rel in mine:
                path = self._contained(rel)
                if self._ours(rel, stem, files):
                    path.unlink()
                    removed.append(path)
                    self._remove_empty_parent(rel)
                files.pop(rel)
            if mine:
                self._save(files)
        for final in self._unchecked_paths(stem):  # what is still there is not evaluate's
            if final.is_dir() and not final.is_symlink():
                left += sorted(final.iterdir())
            elif final.exists() or final.is_symlink():
                left.append(final)
        return removed, left

    def _unchecked_paths(self, stem: str) -> list[Path]:
        """The volume's map paths, links not followed (for listing what is there, never writing)."""
        names = {"h5": f"{stem}.h5", "png": stem}
        return [self.folder / names[fmt] for fmt in MAP_FORMATS if fmt in self.formats]

    def _remove_empty_parent(self, relative: str) -> None:
        if "/" in relative:
            folder = self._contained(relative.rsplit("/", 1)[0])
            with contextlib.suppress(OSError):  # not empty: a file of yours is in it
                folder.rmdir()

    @staticmethod
    def _remove_temp(temp: Path) -> None:
        """Remove a temp file or folder this writer created (its own name, its own content)."""
        if temp.is_dir() and not temp.is_symlink():
            for entry in temp.iterdir():
                entry.unlink()
            temp.rmdir()
        else:
            temp.unlink(missing_ok=True)
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
                    scales: Mapping[str, float], underlay: np.ndarray | None = None) -> None:
        from PIL import Image, PngImagePlugin

        folder.mkdir(exist_ok=True)  # a new temp folder (lightning_dfd.files.new_temp_folder)
        underlay_scale = 1.0
        if underlay is not None:
            underlay = np.abs(np.asarray(underlay, dtype=np.float64))
            shape = next(iter(arrays.values())).shape if arrays else underlay.shape
            if underlay.shape != shape:
                raise ValueError(f"the underlay has shape {underlay.shape}; the maps {shape}")
            underlay_scale = png_scale(underlay, percentile=UNDERLAY_PERCENTILE)
        for name, value in arrays.items():
            factor = upscale_factor(value.shape[1:])
            height, width = value.shape[1] * factor, value.shape[2] * factor
            panel = colorbar_panel(height, scales[name], name)  # one per volume and metric
            info = PngImagePlugin.PngInfo()
            for key, text in (("metric", name), ("png_vmax", repr(scales[name])), ("colormap", COLORMAP),
                              ("upscale", str(factor)), ("map_box", f"0,0,{width},{height}"),
                              ("underlay", "none" if underlay is None else "reference"),
                              ("underlay_scale", repr(underlay_scale) if underlay is not None else "")):
                info.add_text(key, text)
            for index, (image, s) in enumerate(zip(value, slices)):
                pixels = render_png(image, scales[name], name,
                                    None if underlay is None else underlay[index], underlay_scale,
                                    panel=panel)  # fmt: skip
                Image.fromarray(pixels).save(folder / f"{name}_slice{int(s):03d}.png", pnginfo=info)
