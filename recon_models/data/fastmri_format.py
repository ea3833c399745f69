"""The fastMRI multi-coil HDF5 file format: its keys, its ISMRMRD header, and a validator.

A fastMRI multi-coil file holds

- ``kspace``: ``[slices, coils, H, W]`` complex64, centred k-space; ``H`` is the (2x oversampled)
  readout, ``W`` the phase-encoding direction that masks subsample;
- ``reconstruction_rss``: ``[slices, h, w]`` float32, root-sum-of-squares of the coil images
  centre-cropped to the header's ``reconSpace`` (absent from the challenge's test files);
- ``ismrmrd_header``: the ISMRMRD XML header (bytes);
- optionally ``mask``: ``[W]``, the sampling mask of an already undersampled (test) file;
- attributes ``acquisition`` (e.g. ``"CORPD_FBK"``), ``max``, ``norm``, ``patient_id``.

:func:`ismrmrd_header` writes a header that ``fastmri.data.SliceDataset`` parses (it reads
``encoding/encodedSpace/matrixSize``, ``encoding/reconSpace/matrixSize`` and
``encoding/encodingLimits/kspace_encoding_step_1`` in the ISMRMRD namespace);
:func:`check_volume` reads one back and raises :class:`DataFormatError` naming the file and the
key at fault.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from recon_models.data.errors import DataFormatError

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
KSPACE_KEY = "kspace"
RSS_KEY = "reconstruction_rss"
HEADER_KEY = "ismrmrd_header"
MASK_KEY = "mask"
REQUIRED_KEYS = (KSPACE_KEY, HEADER_KEY)


@dataclass(frozen=True)
class VolumeInfo:
    """What :func:`check_volume` learned about one file.

    Attributes:
        path: The file.
        num_slices: Number of slices.
        num_coils: Number of receive coils.
        kspace_shape: ``(H, W)`` of one coil's k-space.
        encoding_size: ``(x, y, z)`` of ``encodedSpace/matrixSize``.
        recon_size: ``(x, y, z)`` of ``reconSpace/matrixSize``.
        padding: ``(left, right)``: the phase-encoding columns that were acquired
            (``[left, right)``), as fastMRI computes them from ``encodingLimits``.
    """

    path: Path
    num_slices: int
    num_coils: int
    kspace_shape: tuple[int, int]
    encoding_size: tuple[int, int, int]
    recon_size: tuple[int, int, int]
    padding: tuple[int, int]


def ismrmrd_header(
    encoding_size: tuple[int, int],
    recon_size: tuple[int, int],
    num_slices: int,
    num_coils: int,
    protocol: str = "CORPD_FBK",
    fov_mm: tuple[float, float] = (280.0, 140.0),
    slice_thickness_mm: float = 3.0,
) -> bytes:
    """Build a minimal ISMRMRD XML header, laid out like the fastMRI knee files'.

    Args:
        encoding_size: ``(H, W)`` of the stored k-space (readout, phase encoding).
        recon_size: ``(h, w)`` of the reconstructed image (``reconSpace``).
        num_slices: Slices in the volume.
        num_coils: Receive channels.
        protocol: ``measurementInformation/protocolName``.
        fov_mm: Encoded field of view ``(readout, phase)`` in mm.
        slice_thickness_mm: Slice thickness in mm.

    Returns:
        UTF-8 encoded XML.

    Example:
        >>> xml = ismrmrd_header((128, 64), (64, 64), num_slices=8, num_coils=4)
        >>> parse_header(xml)["recon_size"]
        (64, 64, 1)
    """
    height, width = encoding_size
    recon_h, recon_w = recon_size
    recon_fov = (fov_mm[0] * recon_h / height, fov_mm[1] * recon_w / width)

    def matrix(parent: ET.Element, tag: str, x: float, y: float, z: float) -> None:
        node = ET.SubElement(parent, tag)
        for name, value in zip("xyz", (x, y, z)):
            ET.SubElement(node, name).text = str(value)

    def limit(parent: ET.Element, tag: str, minimum: int, maximum: int, center: int) -> None:
        node = ET.SubElement(parent, tag)
        for name, value in (("minimum", minimum), ("maximum", maximum), ("center", center)):
            ET.SubElement(node, name).text = str(value)

    root = ET.Element("ismrmrdHeader", xmlns=ISMRMRD_NAMESPACE)
    measurement = ET.SubElement(root, "measurementInformation")
    ET.SubElement(measurement, "protocolName").text = protocol
    ET.SubElement(measurement, "patientPosition").text = "FFS"
    system = ET.SubElement(root, "acquisitionSystemInformation")
    ET.SubElement(system, "systemVendor").text = "SYNTHETIC"
    ET.SubElement(system, "systemModel").text = "lightning-dfd phantom"
    ET.SubElement(system, "systemFieldStrength_T").text = "2.89362"
    ET.SubElement(system, "receiverChannels").text = str(num_coils)
    conditions = ET.SubElement(root, "experimentalConditions")
    ET.SubElement(conditions, "H1resonanceFrequency_Hz").text = "123251815"
    encoding = ET.SubElement(root, "encoding")
    encoded = ET.SubElement(encoding, "encodedSpace")
    matrix(encoded, "matrixSize", height, width, 1)
    matrix(encoded, "fieldOfView_mm", fov_mm[0], fov_mm[1], slice_thickness_mm)
    recon = ET.SubElement(encoding, "reconSpace")
    matrix(recon, "matrixSize", recon_h, recon_w, 1)
    matrix(recon, "fieldOfView_mm", recon_fov[0], recon_fov[1], slice_thickness_mm)
    ET.SubElement(encoding, "trajectory").text = "cartesian"
    limits = ET.SubElement(encoding, "encodingLimits")
    limit(limits, "kspace_encoding_step_1", 0, width - 1, width // 2)
    limit(limits, "kspace_encoding_step_2", 0, 0, 0)
    limit(limits, "slice", 0, num_slices - 1, 0)
    limit(limits, "average", 0, 0, 0)
    limit(limits, "contrast", 0, 0, 0)
    limit(limits, "repetition", 0, 0, 0)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _find(root: ET.Element, path: tuple[str, ...], origin: str | os.PathLike) -> int:
    query = "." + "".join(f"//ns:{tag}" for tag in path)
    node = root.find(query, {"ns": ISMRMRD_NAMESPACE})
    if node is None or node.text is None:
        raise DataFormatError(origin, HEADER_KEY, f"element {'/'.join(path)} not found")
    try:
        return int(node.text)
    except ValueError as err:
        raise DataFormatError(
            origin, HEADER_KEY, f"element {'/'.join(path)} is not an integer: {node.text!r}"
        ) from err


def parse_header(xml: bytes | str, origin: str | os.PathLike = "<header>") -> dict:
    """Read the fields fastMRI uses from an ISMRMRD header, as fastMRI computes them.

    Args:
        xml: The header text.
        origin: Named in errors (the file it came from).

    Returns:
        A dict with ``encoding_size`` and ``recon_size`` (``(x, y, z)`` tuples) and
        ``padding_left`` / ``padding_right`` (the acquired phase-encoding columns).

    Raises:
        DataFormatError: The XML does not parse or lacks an element.

    Example:
        >>> parse_header(ismrmrd_header((128, 64), (64, 64), 8, 4))["padding_right"]
        64
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise DataFormatError(origin, HEADER_KEY, f"not valid XML ({err})") from err
    enc = ("encoding", "encodedSpace", "matrixSize")
    rec = ("encoding", "reconSpace", "matrixSize")
    lims = ("encoding", "encodingLimits", "kspace_encoding_step_1")
    encoding_size = tuple(_find(root, enc + (axis,), origin) for axis in "xyz")
    recon_size = tuple(_find(root, rec + (axis,), origin) for axis in "xyz")
    center = _find(root, lims + ("center",), origin)
    maximum = _find(root, lims + ("maximum",), origin) + 1
    padding_left = encoding_size[1] // 2 - center
    return {
        "encoding_size": encoding_size,
        "recon_size": recon_size,
        "padding_left": padding_left,
        "padding_right": padding_left + maximum,
    }


def check_finite_kspace(path: str | os.PathLike, slice_num: int, kspace: np.ndarray) -> None:
    """Raise :class:`DataFormatError` naming the file, slice and cause if k-space is not finite.

    Example:
        >>> check_finite_kspace("f.h5", 0, np.ones((2, 4, 4), np.complex64))
        >>> bad = np.full((2, 4, 4), np.inf, np.complex64)
        >>> try:
        ...     check_finite_kspace("f.h5", 3, bad)
        ... except DataFormatError as err:
        ...     print(err)
        f.h5: key 'kspace': slice 3: k-space holds inf (32 of 32 values)
    """
    kspace = np.asarray(kspace)
    if np.isfinite(kspace).all():
        return
    nan, inf = int(np.isnan(kspace).sum()), int(np.isinf(kspace).sum())
    causes = [f"{name} ({count} of {kspace.size} values)"
              for name, count in (("NaN", nan), ("inf", inf)) if count]
    raise DataFormatError(path, KSPACE_KEY, f"slice {slice_num}: k-space holds {' and '.join(causes)}")


def check_header_sizes(path: str | os.PathLike, header: dict, kspace_shape: tuple[int, int]) -> None:
    """Reject header sizes no acquisition can have, naming the element and the values.

    ``encodedSpace`` and ``reconSpace`` sizes must be positive, the ``reconSpace`` height (readout)
    at most the k-space height (the readout is oversampled, never undersampled), and the acquired
    phase-encoding columns ``[left, right)`` from ``encodingLimits`` inside ``[0, W]``. A
    ``reconSpace`` width larger than the k-space width stays allowed (fastMRI crops to the image
    width then, e.g. for some brain FLAIR files).

    Example:
        >>> header = parse_header(ismrmrd_header((32, 16), (16, 16), 2, 2))
        >>> check_header_sizes("f.h5", header, (32, 16))
        >>> try:
        ...     check_header_sizes("f.h5", {**header, "recon_size": (0, 16, 1)}, (32, 16))
        ... except DataFormatError as err:
        ...     print(err.problem)
        reconSpace/matrixSize (x, y) = (0, 16) must be positive
    """
    height, width = kspace_shape
    for element, size in (("encodedSpace", header["encoding_size"]), ("reconSpace", header["recon_size"])):
        if size[0] <= 0 or size[1] <= 0:
            raise DataFormatError(path, HEADER_KEY,
                                  f"{element}/matrixSize (x, y) = {tuple(size[:2])} must be positive")
    if header["recon_size"][0] > height:
        raise DataFormatError(path, HEADER_KEY,
                              f"reconSpace/matrixSize x = {header['recon_size'][0]} is larger than the "
                              f"k-space height {height} (kspace [.., {height}, {width}])")
    left, right = header["padding_left"], header["padding_right"]
    if not 0 <= left < right <= width:
        raise DataFormatError(path, HEADER_KEY,
                              "encodingLimits/kspace_encoding_step_1 give acquired columns "
                              f"[{left}, {right}) outside the k-space width {width}")


def open_h5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading; an unreadable (e.g. truncated) file names itself.

    Args:
        path: The file.

    Returns:
        The open file (use it as a context manager).

    Raises:
        DataFormatError: h5py cannot open it.
    """
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(
            path, None, f"cannot be opened as HDF5 (truncated or corrupt file?): {err}"
        ) from err


def check_volume(path: str | os.PathLike) -> VolumeInfo:
    """Check that a file is a readable fastMRI multi-coil volume and describe it.

    Checks: the file opens; ``kspace`` and ``ismrmrd_header`` exist; ``kspace`` is a 4-D complex
    array with at least one slice; the header has the fields fastMRI reads, with possible sizes
    (:func:`check_header_sizes`); an optional ``mask``
    matches the k-space width; an optional ``reconstruction_rss`` has one image per slice.

    Args:
        path: The file.

    Returns:
        The volume's :class:`VolumeInfo`.

    Raises:
        DataFormatError: Naming the file and the key at fault.

    Example:
        >>> import tempfile
        >>> from recon_models.data.synthetic import make_synthetic_dataset
        >>> root = tempfile.mkdtemp()
        >>> [path] = make_synthetic_dataset(root, volumes=1, slices=2, coils=2, shape=(32, 16),
        ...                                 recon_shape=(16, 16))
        >>> check_volume(path).kspace_shape
        (32, 16)
    """
    path = Path(path)
    with open_h5(path) as hf:
        for key in REQUIRED_KEYS:
            if key not in hf:
                raise DataFormatError(path, key, f"missing key; the file holds {sorted(hf.keys())}")
        kspace = hf[KSPACE_KEY]
        if kspace.ndim != 4 or not np.issubdtype(kspace.dtype, np.complexfloating):
            raise DataFormatError(
                path,
                KSPACE_KEY,
                "expected a complex array [slices, coils, H, W], got "
                f"shape {kspace.shape} dtype {kspace.dtype}",
            )
        num_slices, num_coils, height, width = kspace.shape
        if num_slices == 0 or num_coils == 0:
            raise DataFormatError(path, KSPACE_KEY, f"empty array of shape {kspace.shape}")
        try:
            xml = hf[HEADER_KEY][()]
        except (OSError, KeyError) as err:
            raise DataFormatError(path, HEADER_KEY, f"cannot be read: {err}") from err
        header = parse_header(xml, path)
        check_header_sizes(path, header, (height, width))
        if MASK_KEY in hf and hf[MASK_KEY].shape != (width,):
            raise DataFormatError(
                path,
                MASK_KEY,
                f"shape {hf[MASK_KEY].shape} does not match the k-space width {width} "
                f"(kspace shape {kspace.shape})",
            )
        if RSS_KEY in hf and (hf[RSS_KEY].ndim != 3 or hf[RSS_KEY].shape[0] != num_slices):
            raise DataFormatError(
                path,
                RSS_KEY,
                f"expected [{num_slices}, h, w] (one image per k-space slice), got {hf[RSS_KEY].shape}",
            )
    return VolumeInfo(
        path=path,
        num_slices=num_slices,
        num_coils=num_coils,
        kspace_shape=(height, width),
        encoding_size=header["encoding_size"],
        recon_size=header["recon_size"],
        padding=(header["padding_left"], header["padding_right"]),
    )


def list_volumes(root: str | os.PathLike) -> list[Path]:
    """The ``*.h5`` files directly inside a data folder, sorted by name.

    Args:
        root: The folder.

    Returns:
        Sorted paths.

    Raises:
        FileNotFoundError: The folder does not exist or holds no ``.h5`` file.
        NotADirectoryError: ``root`` is a file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"data folder {root} is not a folder")
    files = sorted(p for p in root.iterdir() if p.suffix == ".h5" and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"data folder {root} holds no .h5 files (create synthetic data with "
            f"`python -m recon_models.data.synthetic {root} --volumes 8`)"
        )
    return files
