"""Synthetic fastMRI-format multi-coil knee data: phantoms, coil maps, noise, h5 files.

Each volume is a stack of coronal knee-like slices, front to back (femur, tibia, patella in
front and fibula behind, with cortex and trabecular marrow, femoral and tibial cartilage,
menisci, collateral and cruciate ligaments, muscle with fibre texture and fascia, subcutaneous
fat, thin vessels), with a smooth complex phase. The
textures are smoothed 3-D noise, so neighbouring slices look alike. Each image is multiplied
by smooth, complex loop-coil sensitivities (Biot-Savart-like fall-off), transformed with the
centred orthonormal 2-D FFT (fastMRI's ``fft2c``) and given coil-correlated complex Gaussian
noise in k-space. Half the volumes are proton-density, half fat-suppressed (``CORPD_FBK`` /
``CORPDFS_FBK``), and each volume has its own anatomy, pose, coil layout and intensity scale
(``reconstruction_rss`` maxima of order 1e-4, as in fastMRI).

The files have exactly the fastMRI multi-coil layout (see :mod:`recon_models.data.fastmri_format`)
and are read unchanged by ``fastmri.data.SliceDataset``. Like fastMRI's knee data, the readout
(``H``) is 2x oversampled: the object sits in the central ``reconSpace`` rows and
``reconstruction_rss`` is the centre crop. Everything is seeded: the same arguments give the same
bytes of k-space.

Command line::

    python -m recon_models.data.synthetic OUT_DIR --volumes 8 [--slices 8] [--coils 8]
        [--shape 128 64] [--recon-shape 64 64] [--noise 0.02] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy.ndimage import gaussian_filter

from lightning_dfd.preprocess import center_crop
from recon_models.data.fastmri_format import HEADER_KEY, KSPACE_KEY, RSS_KEY, ismrmrd_header

ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK")
DEFAULT_SLICE_SPACING = 0.12  # depth units between slices; the knee spans -1 to 1

# Relative intensities of each tissue in proton-density (PD) and fat-suppressed PD images.
_TISSUE = {
    "CORPD_FBK": dict(
        fat=1.0, marrow=0.85, muscle=0.42, cartilage=0.62, fluid=0.72, cortex=0.04,
        ligament=0.07, meniscus=0.05, vessel=0.9,
    ),
    "CORPDFS_FBK": dict(
        fat=0.12, marrow=0.16, muscle=0.36, cartilage=0.55, fluid=0.95, cortex=0.03,
        ligament=0.06, meniscus=0.04, vessel=0.6,
    ),
}  # fmt: skip


@dataclass(frozen=True)
class KneeAnatomy:
    """The random, per-volume shape parameters of the knee phantom (units: half the crop height).

    Attributes:
        joint_line: Row of the joint line (0 = image centre, +1 = bottom of the crop).
        leg_half_width: Half-width of the leg.
        fat_thickness: Subcutaneous fat thickness.
        bone_scale: Scale of femur and tibia.
        condyle_spread: Distance of each femoral condyle from the midline.
        cartilage_thickness: Cartilage thickness.
        cortex_thickness: Cortical bone thickness.
        rotation: In-plane rotation (radians).
        shift: ``(row, column)`` offset of the knee.
        phase: Coefficients of the smooth image phase ``(constant, row, column, quadratic)``.
        scale: Maximum of the volume's ``reconstruction_rss`` (fastMRI-like, about 1e-4).
        acquisition: ``"CORPD_FBK"`` or ``"CORPDFS_FBK"``.
        slab_center: Depth of the middle slice (0 = centre of the knee, -1 front, +1 back).
    """

    joint_line: float
    leg_half_width: float
    fat_thickness: float
    bone_scale: float
    condyle_spread: float
    cartilage_thickness: float
    cortex_thickness: float
    rotation: float
    shift: tuple[float, float]
    phase: tuple[float, float, float, float]
    scale: float
    acquisition: str
    slab_center: float = 0.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> KneeAnatomy:
        """Draw one knee.

        Args:
            rng: The random generator.

        Returns:
            A new anatomy.

        Example:
            >>> KneeAnatomy.sample(np.random.default_rng(0)).acquisition in ACQUISITIONS
            True
        """
        return cls(
            joint_line=float(rng.uniform(-0.05, 0.12)),
            leg_half_width=float(rng.uniform(0.74, 0.86)),
            fat_thickness=float(rng.uniform(0.06, 0.11)),
            bone_scale=float(rng.uniform(0.9, 1.08)),
            condyle_spread=float(rng.uniform(0.19, 0.23)),
            cartilage_thickness=float(rng.uniform(0.03, 0.045)),
            cortex_thickness=float(rng.uniform(0.025, 0.04)),
            rotation=float(rng.uniform(-0.07, 0.07)),
            shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.06, 0.06))),
            phase=tuple(float(p) for p in rng.uniform(-1.0, 1.0, size=4) * (np.pi, 0.8, 0.8, 0.5)),
            scale=float(10 ** rng.uniform(-4.3, -3.6)),
            acquisition=str(rng.choice(ACQUISITIONS)),
            slab_center=float(rng.uniform(-0.35, 0.35)),
        )


def _slice_offsets(num_slices: int, spacing: float) -> np.ndarray:
    return (np.arange(num_slices) - (num_slices - 1) / 2) * spacing


def _ramp(distance: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased indicator of ``distance > 0`` (a one-pixel linear edge)."""
    return np.clip(0.5 + distance / pixel, 0.0, 1.0)


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float):
    """Approximate signed distance to an ellipse, positive inside."""
    radius = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
    return (1.0 - radius) * min(ru, rv)


def _segment(u, v, start: tuple[float, float], end: tuple[float, float], half_width: float):
    """Signed distance to a thick line segment, positive inside."""
    pu, pv = u - start[0], v - start[1]
    du, dv = end[0] - start[0], end[1] - start[1]
    t = np.clip((pu * du + pv * dv) / (du * du + dv * dv), 0.0, 1.0)
    return half_width - np.hypot(pu - t * du, pv - t * dv)


def _line_network(noise: np.ndarray, width: float) -> np.ndarray:
    """Thin curvy lines along the zero crossings of a smooth noise field (values in [0, 1])."""
    return np.exp(-((noise / (width * noise.std() + 1e-12)) ** 2))


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float]):
    field = gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    return field / (field.std() + 1e-12)


def knee_volume(
    anatomy: KneeAnatomy,
    num_slices: int,
    shape: tuple[int, int],
    recon_shape: tuple[int, int],
    rng: np.random.Generator,
    slice_spacing: float = DEFAULT_SLICE_SPACING,
) -> np.ndarray:
    """Render a noise-free complex knee phantom volume (unit maximum magnitude).

    Args:
        anatomy: The knee's shape parameters.
        num_slices: Number of coronal slices, front to back.
        shape: ``(H, W)`` image grid (the k-space size; the readout ``H`` is oversampled).
        recon_shape: ``(h, w)`` central region that holds the knee (fastMRI's ``reconSpace``).
        rng: Random generator for the textures.
        slice_spacing: Distance between slices (the knee spans depths -1 to 1), so a volume
            of many slices reaches past the bones into soft tissue, as real knee scans do.

    Returns:
        ``[slices, H, W]`` complex64.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> vol = knee_volume(KneeAnatomy.sample(rng), 2, (64, 32), (32, 32), rng)
        >>> vol.shape, vol.dtype, float(np.abs(vol).max())
        ((2, 64, 32), dtype('complex64'), 1.0)
    """
    height, width = shape
    unit = recon_shape[0] / 2  # pixels per coordinate unit; the crop spans [-1, 1]
    pixel = 1.0 / unit
    rows = (np.arange(height) - height / 2 + 0.5) / unit
    cols = (np.arange(width) - width / 2 + 0.5) / unit
    u0, v0 = np.meshgrid(rows, cols, indexing="ij")
    cos, sin = np.cos(anatomy.rotation), np.sin(anatomy.rotation)
    u = cos * (u0 - anatomy.shift[0]) - sin * (v0 - anatomy.shift[1])
    v = sin * (u0 - anatomy.shift[0]) + cos * (v0 - anatomy.shift[1])

    grid = (num_slices, height, width)
    sigma_scale = unit / 32  # textures keep their physical size whatever the matrix
    depth = 1.0 / slice_spacing  # slices per depth unit
    muscle_noise = _smooth_noise(rng, grid, (0.15 * depth, 4.0 * sigma_scale, 1.2 * sigma_scale))
    fascia_noise = _smooth_noise(rng, grid, (0.2 * depth, 6.0 * sigma_scale, 2.5 * sigma_scale))
    trabecular_noise = _smooth_noise(rng, grid, (0.08 * depth, sigma_scale, sigma_scale))
    vessel_noise = _smooth_noise(rng, grid, (0.2 * depth, 5.0 * sigma_scale, 5.0 * sigma_scale))
    fat_noise = _smooth_noise(rng, grid, (0.12 * depth, 2.0 * sigma_scale, 2.0 * sigma_scale))

    tissue = _TISSUE[anatomy.acquisition]
    a = anatomy
    jl, tc, ct, spread = a.joint_line, a.cartilage_thickness, a.cortex_thickness, a.condyle_spread
    volume = np.zeros(grid, dtype=np.complex64)
    depths = anatomy.slab_center + _slice_offsets(num_slices, slice_spacing)
    for index, z in enumerate(depths):
        bone = a.bone_scale * np.sqrt(max(0.05, 1.0 - (z / 1.15) ** 2))
        central = max(0.0, 1.0 - (z / 0.45) ** 2)  # cruciate ligaments, notch: central slices

        # Leg, subcutaneous fat and the muscle compartment.
        half_width = a.leg_half_width * (1.0 + 0.06 * np.tanh(-(u - jl) * 2.0)) + 0.02 * np.sin(
            3.0 * u + index * 0.3
        )
        leg = half_width - np.abs(v)
        muscle_region = leg - a.fat_thickness * (1.0 + 0.25 * fat_noise[index])
        fatness = np.exp(-(((u - jl) / 0.35) ** 2)) * (0.6 + 0.4 * central)  # fat pads at the joint

        # Femur: shaft flaring into two condyles with a notch between them.
        condyle_ru, condyle_rv = 0.2 * bone, 0.19 * bone
        condyle_u = jl - 0.02 - tc - condyle_ru
        shaft_half = 0.19 * bone + 0.12 * bone / (1.0 + np.exp(-(u - (jl - 0.45)) / 0.06))
        femur = np.maximum.reduce(
            [
                np.minimum(shaft_half - np.abs(v), condyle_u - u),
                _ellipse(u, v, condyle_u, -spread * bone, condyle_ru, condyle_rv),
                _ellipse(u, v, condyle_u, spread * bone, condyle_ru, condyle_rv),
            ]
        )
        notch = _ellipse(u, v, jl - 0.02, 0.0, 0.16 * bone, 0.075 * bone) * (0.3 + 0.7 * central)
        femur = np.minimum(femur, -notch)
        # Tibia: plateau with two small spines, narrowing into the shaft.
        plateau_u = jl + 0.02 + tc
        tibia_half = 0.2 * bone + 0.24 * bone / (1.0 + np.exp((u - (plateau_u + 0.3)) / 0.05))
        spines = np.maximum(
            _ellipse(u, v, plateau_u, -0.045, 0.05, 0.03), _ellipse(u, v, plateau_u, 0.045, 0.05, 0.03)
        )
        tibia = np.maximum(np.minimum(tibia_half - np.abs(v), u - plateau_u), spines * central)
        fibula = _ellipse(u, v, plateau_u + 0.32, 0.47 * bone, 0.08, 0.07)
        patella = _ellipse(u, v, jl - 0.42, 0.02, 0.17 * bone, 0.13 * bone)  # anterior slices
        bones = np.maximum.reduce(
            [femur, tibia, np.where(z > 0.2, fibula, -1.0), np.where(z < -0.45, patella, -1.0)]
        )

        # Cartilage: bands outside the femoral condyles (lower half) and on the tibial plateau.
        femoral_cartilage = np.where(u > condyle_u, np.minimum(femur + tc, -femur), -1.0)
        tibial_cartilage = np.minimum(
            np.minimum(tibia + tc, -tibia), np.minimum(plateau_u + 0.005 - u, 0.38 * bone - np.abs(v))
        )
        # Menisci: dark wedges at the periphery of the joint line.
        outer = (np.abs(v) - 0.27 * bone) / (0.2 * bone)
        meniscus = np.where((outer > 0) & (outer < 1), 0.012 + 0.035 * outer - np.abs(u - jl), -1.0)
        # Ligaments: collaterals along the sides, cruciates crossing in the notch.
        collateral = np.maximum(
            _segment(u, v, (jl - 0.3, -0.44 * bone - 0.04), (jl + 0.3, -0.45 * bone - 0.03), 0.012),
            _segment(u, v, (jl - 0.3, 0.44 * bone + 0.04), (jl + 0.28, 0.5 * bone + 0.02), 0.012),
        )
        cruciate = (
            np.maximum(
                _segment(u, v, (jl - 0.12, 0.05), (plateau_u - 0.01, -0.04), 0.022),
                _segment(u, v, (jl - 0.12, -0.06), (plateau_u + 0.02, 0.05), 0.02),
            )
            - (1.0 - central) * 0.05
        )
        fluid = np.minimum(0.01 - np.abs(u - jl), 0.42 * bone - np.abs(v))

        muscle = (
            tissue["muscle"]
            * (1.0 + 0.13 * muscle_noise[index])
            * (1.0 - 0.55 * _line_network(fascia_noise[index], 0.05))
        )
        soft = fatness * tissue["fat"] + (1.0 - fatness) * muscle
        vessels = _line_network(vessel_noise[index], 0.05) * _ramp(muscle_region - 0.05, pixel)
        marrow = tissue["marrow"] * (1.0 - 0.4 * _line_network(trabecular_noise[index], 0.3))

        image = tissue["fat"] * (1.0 + 0.05 * fat_noise[index]) * _ramp(leg, pixel)
        image = _blend(image, soft, _ramp(muscle_region, pixel))
        image = _blend(image, tissue["vessel"], 0.7 * vessels)
        image = _blend(image, tissue["cortex"], _ramp(bones, pixel))
        image = _blend(image, marrow, _ramp(bones - ct, pixel))
        image = _blend(image, tissue["cartilage"], _ramp(femoral_cartilage, pixel))
        image = _blend(image, tissue["cartilage"], _ramp(tibial_cartilage, pixel))
        image = _blend(image, tissue["fluid"], 0.8 * _ramp(fluid, pixel) * _ramp(-bones, pixel))
        image = _blend(image, tissue["meniscus"], _ramp(meniscus, pixel) * _ramp(leg - 0.1, pixel))
        image = _blend(image, tissue["ligament"], _ramp(collateral, pixel) * _ramp(-bones, pixel))
        image = _blend(image, tissue["ligament"], _ramp(cruciate, pixel) * _ramp(-bones, pixel))

        p = anatomy.phase
        phase = p[0] + p[1] * u0 + p[2] * v0 + p[3] * (u0**2 + v0**2) + 0.1 * z
        volume[index] = image * np.exp(1j * phase)
    return (volume / np.abs(volume).max()).astype(np.complex64)


def _blend(image: np.ndarray, value, weight: np.ndarray) -> np.ndarray:
    return image * (1.0 - weight) + value * weight


def coil_sensitivities(
    num_coils: int,
    num_slices: int,
    shape: tuple[int, int],
    recon_shape: tuple[int, int],
    rng: np.random.Generator,
    slice_spacing: float = DEFAULT_SLICE_SPACING,
) -> np.ndarray:
    """Smooth complex receive sensitivities of loop coils arranged around the knee.

    Coils sit on one ring (two rings from 8 coils on) around the leg. The magnitude falls off
    with distance ``d`` as a loop coil's on-axis field, ``(1 + d^2 / r^2)^-1.5``; the phase is a
    per-coil offset plus a smooth gradient. Maps are not normalised (``sum |S|^2 != 1``), like
    real coils.

    Args:
        num_coils: Coils.
        num_slices: Slices (the through-plane position changes the distances).
        shape: ``(H, W)`` image grid.
        recon_shape: ``(h, w)`` central region that holds the knee.
        rng: Random generator for the coil layout.
        slice_spacing: Distance between slices.

    Returns:
        ``[slices, coils, H, W]`` complex64.

    Example:
        >>> maps = coil_sensitivities(4, 2, (64, 32), (32, 32), np.random.default_rng(0))
        >>> maps.shape
        (2, 4, 64, 32)
    """
    height, width = shape
    unit = recon_shape[0] / 2
    rows = (np.arange(height) - height / 2 + 0.5) / unit
    cols = (np.arange(width) - width / 2 + 0.5) / unit
    u, v = np.meshgrid(rows, cols, indexing="ij")
    rings = 2 if num_coils >= 8 else 1
    per_ring = int(np.ceil(num_coils / rings))
    depths = _slice_offsets(num_slices, slice_spacing)
    maps = np.zeros((num_slices, num_coils, height, width), dtype=np.complex64)
    for coil in range(num_coils):
        ring, position = divmod(coil, per_ring)
        angle = 2 * np.pi * (position + 0.5 * ring) / per_ring + rng.uniform(-0.2, 0.2)
        radius = rng.uniform(0.95, 1.1)
        center_u = (ring - (rings - 1) / 2) * 0.6 + rng.uniform(-0.1, 0.1)
        center_v, center_depth = radius * np.cos(angle), radius * np.sin(angle)
        coil_radius = rng.uniform(0.7, 1.0)
        gradient = rng.uniform(-1.2, 1.2, size=2)
        offset = rng.uniform(-np.pi, np.pi)
        for index, depth in enumerate(depths):
            distance2 = (u - center_u) ** 2 + (v - center_v) ** 2 + (depth - center_depth) ** 2
            magnitude = (1.0 + distance2 / coil_radius**2) ** -1.5
            phase = offset + gradient[0] * (u - center_u) + gradient[1] * (v - center_v)
            maps[index, coil] = magnitude * np.exp(1j * phase)
    return maps


def _fft2c(images: np.ndarray) -> np.ndarray:
    """Centred orthonormal 2-D FFT over the last two axes (fastMRI's ``fft2c``)."""
    shifted = np.fft.ifftshift(images, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=(-2, -1))


def _ifft2c(kspace: np.ndarray) -> np.ndarray:
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, norm="ortho"), axes=(-2, -1))


def write_volume(
    path: str | os.PathLike,
    kspace: np.ndarray,
    recon_shape: tuple[int, int],
    acquisition: str = "CORPD_FBK",
    patient_id: str = "synthetic",
) -> Path:
    """Write one fastMRI multi-coil file from its k-space.

    ``reconstruction_rss`` is the root-sum-of-squares of the coil images centre-cropped to
    ``recon_shape`` (float32), and the ``max`` / ``norm`` attributes are its maximum and L2 norm,
    as in fastMRI's files.

    Args:
        path: Output file (``.h5``).
        kspace: ``[slices, coils, H, W]`` complex, centred.
        recon_shape: ``(h, w)`` of ``reconSpace``.
        acquisition: The ``acquisition`` attribute and protocol name.
        patient_id: The ``patient_id`` attribute.

    Returns:
        The path written.
    """
    path = Path(path)
    kspace = np.asarray(kspace, dtype=np.complex64)
    num_slices, num_coils, height, width = kspace.shape
    rss = np.sqrt((np.abs(_ifft2c(kspace)) ** 2).sum(axis=1))
    rss = center_crop(rss, recon_shape).astype(np.float32)
    header = ismrmrd_header((height, width), recon_shape, num_slices, num_coils, acquisition)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as hf:
        hf.create_dataset(KSPACE_KEY, data=kspace)
        hf.create_dataset(RSS_KEY, data=rss)
        hf.create_dataset(HEADER_KEY, data=header)
        hf.attrs["acquisition"] = acquisition
        hf.attrs["max"] = float(rss.max())
        hf.attrs["norm"] = float(np.linalg.norm(rss))
        hf.attrs["patient_id"] = patient_id
    return path


def synthetic_kspace(
    num_slices: int,
    num_coils: int,
    shape: tuple[int, int] = (128, 64),
    recon_shape: tuple[int, int] = (64, 64),
    noise_level: float = 0.02,
    seed: int | Sequence[int] = 0,
) -> tuple[np.ndarray, KneeAnatomy]:
    """Simulate one volume's multi-coil k-space.

    Args:
        num_slices: Slices.
        num_coils: Coils.
        shape: ``(H, W)`` of the k-space.
        recon_shape: ``(h, w)`` of ``reconSpace``, the central region holding the knee.
        noise_level: Standard deviation of the noise in the RSS image, relative to its maximum.
        seed: Seed (or seed sequence) of the volume.

    Returns:
        ``[slices, coils, H, W]`` complex64 k-space and the anatomy drawn.

    Example:
        >>> kspace, anatomy = synthetic_kspace(2, 3, (64, 32), (32, 32), seed=1)
        >>> kspace.shape, kspace.dtype
        ((2, 3, 64, 32), dtype('complex64'))
    """
    rng = np.random.default_rng(seed)
    anatomy = KneeAnatomy.sample(rng)
    images = knee_volume(anatomy, num_slices, shape, recon_shape, rng)
    maps = coil_sensitivities(num_coils, num_slices, shape, recon_shape, rng)
    coil_images = images[:, None] * maps
    rss_max = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1)).max()
    coil_images *= anatomy.scale / rss_max
    kspace = _fft2c(coil_images)
    # Complex Gaussian noise, correlated across coils (correlation 0.15), white in k-space; the
    # orthonormal FFT keeps its per-coil standard deviation in the image.
    sigma = noise_level * anatomy.scale / np.sqrt(num_coils)
    correlation = 0.85 * np.eye(num_coils) + 0.15 * np.ones((num_coils, num_coils))
    mixing = np.linalg.cholesky(correlation)
    white = rng.standard_normal((2, *kspace.shape)) * (sigma / np.sqrt(2))
    noise = white[0] + 1j * white[1]
    noise = np.einsum("cd,sdhw->schw", mixing, noise)
    return (kspace + noise).astype(np.complex64), anatomy


def make_synthetic_dataset(
    root: str | os.PathLike,
    volumes: int,
    slices: int | tuple[int, int] = 8,
    coils: int = 8,
    shape: tuple[int, int] = (128, 64),
    recon_shape: tuple[int, int] = (64, 64),
    noise_level: float = 0.02,
    seed: int = 0,
    start_index: int = 0,
) -> list[Path]:
    """Write ``volumes`` synthetic fastMRI multi-coil files into ``root``.

    Files are named ``file_synth{index:04d}.h5``. Volume ``i`` depends only on ``(seed, i)``,
    so adding volumes leaves the existing ones unchanged.

    Args:
        root: Output folder (created).
        volumes: Number of volumes.
        slices: Slices per volume, or an inclusive range ``(low, high)`` drawn per volume (for
            volumes of unequal length).
        coils: Coils per volume.
        shape: ``(H, W)`` k-space size: readout, phase encoding. Keep both divisible by 16 for
            the UNets.
        recon_shape: ``(h, w)`` of ``reconSpace`` (the crop where metrics are computed).
        noise_level: Noise standard deviation in the RSS image, relative to its maximum.
        seed: Dataset seed.
        start_index: Index of the first volume (to add volumes to an existing folder).

    Returns:
        The files written, sorted.

    Example:
        >>> import tempfile
        >>> files = make_synthetic_dataset(tempfile.mkdtemp(), volumes=2, slices=(2, 3), coils=2,
        ...                                shape=(32, 16), recon_shape=(16, 16))
        >>> [f.name for f in files]
        ['file_synth0000.h5', 'file_synth0001.h5']
    """
    if volumes < 1:
        raise ValueError(f"Argument `volumes` must be at least 1, but got {volumes}")
    if coils < 1:
        raise ValueError(f"Argument `coils` must be at least 1, but got {coils}")
    if recon_shape[0] > shape[0]:
        raise ValueError(
            f"Argument `recon_shape` {tuple(recon_shape)} must not be taller than `shape` {tuple(shape)}"
        )
    if isinstance(slices, int):
        low, high = slices, slices
    else:
        low, high = (int(s) for s in slices)
    if not 1 <= low <= high:
        raise ValueError(f"Argument `slices` must be >= 1 (or a range low <= high), got {slices}")
    root = Path(root)
    paths = []
    for index in range(start_index, start_index + volumes):
        volume_rng = np.random.default_rng([seed, index, 1])
        num_slices = int(volume_rng.integers(low, high + 1))
        kspace, anatomy = synthetic_kspace(
            num_slices, coils, tuple(shape), tuple(recon_shape), noise_level, seed=[seed, index]
        )
        patient_id = hashlib.sha256(f"synthetic-{seed}-{index}".encode()).hexdigest()
        path = root / f"file_synth{index:04d}.h5"
        paths.append(write_volume(path, kspace, tuple(recon_shape), anatomy.acquisition, patient_id))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``python -m recon_models.data.synthetic``).

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m recon_models.data.synthetic",
        description="Write synthetic multi-coil knee volumes in the fastMRI h5 format.",
    )
    parser.add_argument("out_dir", type=Path, help="output folder (created)")
    parser.add_argument("--volumes", type=int, required=True, help="number of volumes")
    parser.add_argument("--slices", type=int, nargs="+", default=[8], help="slices per volume, or LOW HIGH")
    parser.add_argument("--coils", type=int, default=8, help="receive coils (default 8)")
    parser.add_argument("--shape", type=int, nargs=2, default=[128, 64], help="k-space H W (default 128 64)")
    parser.add_argument(
        "--recon-shape", type=int, nargs=2, default=[64, 64], help="reconSpace h w (default 64 64)"
    )
    parser.add_argument("--noise", type=float, default=0.02, help="relative noise level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-index", type=int, default=0, help="index of the first volume")
    args = parser.parse_args(argv)
    if len(args.slices) not in (1, 2):
        parser.error("--slices takes one number or LOW HIGH")
    slices = args.slices[0] if len(args.slices) == 1 else tuple(args.slices)
    start = time.perf_counter()
    try:
        paths = make_synthetic_dataset(
            args.out_dir,
            args.volumes,
            slices=slices,
            coils=args.coils,
            shape=tuple(args.shape),
            recon_shape=tuple(args.recon_shape),
            noise_level=args.noise,
            seed=args.seed,
            start_index=args.start_index,
        )
    except ValueError as err:
        parser.error(str(err))
    print(
        f"wrote {len(paths)} volumes to {args.out_dir} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
