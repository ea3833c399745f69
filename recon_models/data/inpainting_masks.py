"""Inpainting masks for SSFD pretraining: non-overlapping square patches placed by Poisson-disc.

The SSFD pretext task (Adamson et al. 2021, after Dominic et al. 2023) zero-fills 16x16 patches
covering 50 % of the image, their positions drawn by Poisson-disc sampling so that patches never
overlap. Here that is dart throwing (the original Poisson-disc algorithm): candidate top-left
corners come in uniformly random order over every position where a patch fits inside the image,
and a candidate is kept when it is at Chebyshev (L-inf) distance >= ``patch_size`` from every kept
corner, which is exactly "the two squares do not overlap". Patches are added until they cover the
requested fraction of the image.

Why not the Euclidean rule "centre distance >= patch_size * sqrt(2)": it also prevents overlap
(it is the disc circumscribing the exclusion square) but wastes the disc's corners; measured on
320x320 images its saturated Poisson-disc packings cover only ~31 % of the image, so 50 % is out of
reach. The Chebyshev rule keeps the sqrt(2) distance along the diagonals and saturates at ~56 %.

Example:
    >>> import numpy as np
    >>> corners = sample_patch_corners(128, 128, patch_size=16, coverage=0.5, seed=0)
    >>> mask = patches_to_mask(corners, 128, 128, 16)
    >>> round(float(mask.mean()), 2)
    0.5
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

SeedLike = int | np.random.Generator | None


def _generator(seed: SeedLike) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _dart_throw(
    height: int, width: int, patch_size: int, n_patches: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """One pass of random-order dart throwing, stopped at ``n_patches`` or when jammed."""
    s = patch_size
    rows, cols = height - s + 1, width - s + 1
    free = np.ones((rows, cols), dtype=bool)  # corners still at L-inf distance >= s from all kept
    corners: list[tuple[int, int]] = []
    for flat in rng.permutation(rows * cols):
        if len(corners) == n_patches:
            break
        i, j = divmod(int(flat), cols)
        if not free[i, j]:
            continue
        corners.append((i, j))
        free[max(i - s + 1, 0): i + s, max(j - s + 1, 0): j + s] = False
    return corners


def sample_patch_corners(
    height: int,
    width: int,
    patch_size: int = 16,
    coverage: float = 0.5,
    seed: SeedLike = None,
    max_tries: int = 10,
    tolerance: float = 0.03,
) -> np.ndarray:
    """Top-left corners ``(n, 2)`` (row, col) of non-overlapping patches covering ``coverage``.

    Args:
        height: image rows.
        width: image columns.
        patch_size: side of the square patches, in pixels.
        coverage: fraction of the image to cover, in (0, 1).
        seed: an int, a ``numpy.random.Generator`` (advanced in place) or None (fresh entropy).
        max_tries: new random orders tried when a packing jams before reaching the goal (only
            plausible on images a few patches wide).
        tolerance: a warning is issued when the best try misses ``coverage`` by more (on images
            a few patches wide, whole patches cannot hit the fraction exactly).

    The number of patches is ``round(coverage * height * width / patch_size**2)``, so the covered
    fraction is within half a patch of ``coverage``.

    Raises:
        ValueError: a patch larger than the image, or ``coverage`` outside (0, 1).
    """
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"Argument `coverage` must be in (0, 1), but got {coverage}")
    if patch_size < 1 or patch_size > min(height, width):
        raise ValueError(
            f"Argument `patch_size` must be in [1, {min(height, width)}] for a {height}x{width} "
            f"image, but got {patch_size}"
        )
    rng = _generator(seed)
    n_patches = max(1, round(coverage * height * width / patch_size**2))
    best: list[tuple[int, int]] = []
    for _ in range(max(1, max_tries)):
        corners = _dart_throw(height, width, patch_size, n_patches, rng)
        if len(corners) > len(best):
            best = corners
        if len(best) == n_patches:
            break
    achieved = len(best) * patch_size**2 / (height * width)
    if abs(achieved - coverage) > tolerance:
        warnings.warn(
            f"inpainting mask covers {achieved:.1%} of a {height}x{width} image instead of "
            f"{coverage:.0%}: the image is too small for whole non-overlapping "
            f"{patch_size}x{patch_size} patches at that fraction",
            stacklevel=2,
        )
    return np.asarray(best, dtype=np.int64).reshape(-1, 2)


def patches_to_mask(corners: np.ndarray, height: int, width: int, patch_size: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask, True inside the patches."""
    mask = np.zeros((height, width), dtype=bool)
    for i, j in np.asarray(corners).reshape(-1, 2):
        mask[i: i + patch_size, j: j + patch_size] = True
    return mask


def poisson_disc_patch_mask(
    height: int, width: int, patch_size: int = 16, coverage: float = 0.5, seed: SeedLike = None
) -> Tensor:
    """Float32 ``(height, width)`` mask, 1 where the image is zero-filled, 0 elsewhere.

    Example:
        >>> m = poisson_disc_patch_mask(64, 96, patch_size=8, seed=1)
        >>> m.shape, m.dtype, abs(float(m.mean()) - 0.5) < 0.03
        (torch.Size([64, 96]), torch.float32, True)
    """
    corners = sample_patch_corners(height, width, patch_size, coverage, seed)
    return torch.from_numpy(patches_to_mask(corners, height, width, patch_size)).float()


class PatchMaskSampler:
    """Batches of inpainting masks, drawn fresh or from a pre-drawn bank.

    Args:
        patch_size: side of the square patches.
        coverage: fraction of each image to zero-fill.
        bank_size: 0 draws every mask fresh; ``n > 0`` draws ``n`` masks once per image size and
            then serves random members of that bank, each under a random symmetry of the image
            grid (rotations by 90 degrees and flips for square images; flips and the 180-degree
            rotation otherwise, which keep the shape).
        seed: seed of the sampler's generator (give each process its own).

    Example:
        >>> sampler = PatchMaskSampler(patch_size=8, bank_size=4, seed=0)
        >>> sampler(3, 32, 32).shape
        torch.Size([3, 1, 32, 32])
    """

    def __init__(
        self, patch_size: int = 16, coverage: float = 0.5, bank_size: int = 0, seed: SeedLike = 0
    ):
        if bank_size < 0:
            raise ValueError(f"Argument `bank_size` must be >= 0, but got {bank_size}")
        self.patch_size = patch_size
        self.coverage = coverage
        self.bank_size = bank_size
        self.rng = _generator(seed)
        self._banks: dict[tuple[int, int], Tensor] = {}

    def reseed(self, seed: SeedLike) -> None:
        """Restart the generator (e.g. per process: ``seed + global_rank``); banks are kept."""
        self.rng = _generator(seed)

    def _fresh(self, height: int, width: int) -> Tensor:
        return poisson_disc_patch_mask(height, width, self.patch_size, self.coverage, self.rng)

    def _bank(self, height: int, width: int) -> Tensor:
        key = (height, width)
        if key not in self._banks:
            self._banks[key] = torch.stack(
                [self._fresh(height, width) for _ in range(self.bank_size)]
            )
        return self._banks[key]

    def _symmetry(self, mask: Tensor) -> Tensor:
        square = mask.shape[-1] == mask.shape[-2]
        k = int(self.rng.integers(4)) if square else 2 * int(self.rng.integers(2))
        mask = torch.rot90(mask, k, dims=(-2, -1))
        return torch.flip(mask, dims=(-1,)) if self.rng.integers(2) else mask

    def __call__(
        self, batch_size: int, height: int, width: int, device: torch.device | str | None = None
    ) -> Tensor:
        """``(batch_size, 1, height, width)`` float32 masks (1 = zero-filled) on ``device``."""
        if self.bank_size == 0:
            masks = [self._fresh(height, width) for _ in range(batch_size)]
        else:
            bank = self._bank(height, width)
            picks = self.rng.integers(len(bank), size=batch_size)
            masks = [self._symmetry(bank[int(i)]) for i in picks]
        return torch.stack(masks).unsqueeze(1).to(device)
