"""Poisson-disc inpainting masks: 50 % +/- 3 % coverage, never overlapping patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_models.data.inpainting_masks import (
    PatchMaskSampler,
    patches_to_mask,
    poisson_disc_patch_mask,
    sample_patch_corners,
)


def _overlap_count(corners: np.ndarray, height: int, width: int, s: int) -> int:
    painted = np.zeros((height, width), dtype=np.int64)
    for i, j in corners:
        painted[i: i + s, j: j + s] += 1
    return int((painted > 1).sum())


@pytest.mark.parametrize(
    ("height", "width"), [(128, 128), (320, 320), (640, 368), (96, 160)]
)
def test_coverage_and_no_overlap(height, width):
    s = 16
    rng = np.random.default_rng(123)
    for _ in range(5):
        corners = sample_patch_corners(height, width, s, 0.5, rng)
        # Poisson-disc condition: L-inf distance between corners >= patch size <=> no overlap.
        d = np.abs(corners[:, None, :] - corners[None, :, :]).max(axis=-1)
        np.fill_diagonal(d, s)
        assert d.min() >= s
        assert _overlap_count(corners, height, width, s) == 0
        # every patch lies inside the image, is a full 16x16 square, and the total is 50 % +/- 3 %
        assert corners.min() >= 0
        assert (corners[:, 0] <= height - s).all() and (corners[:, 1] <= width - s).all()
        mask = patches_to_mask(corners, height, width, s)
        assert mask.sum() == len(corners) * s * s
        assert abs(mask.mean() - 0.5) <= 0.03


def test_masks_are_random_and_reproducible():
    a = poisson_disc_patch_mask(128, 128, seed=1)
    b = poisson_disc_patch_mask(128, 128, seed=1)
    c = poisson_disc_patch_mask(128, 128, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}


def test_bad_arguments():
    with pytest.raises(ValueError, match="`coverage`"):
        sample_patch_corners(64, 64, 16, coverage=1.5)
    with pytest.raises(ValueError, match="`patch_size`"):
        sample_patch_corners(8, 64, 16)
    with pytest.raises(ValueError, match="`bank_size`"):
        PatchMaskSampler(bank_size=-1)


def test_too_small_image_warns():
    with pytest.warns(UserWarning, match="too small"):
        sample_patch_corners(24, 24, 16, 0.5, seed=0)


def test_sampler_fresh_and_bank():
    fresh = PatchMaskSampler(patch_size=16, seed=0)
    masks = fresh(4, 128, 96)
    assert masks.shape == (4, 1, 128, 96) and masks.dtype == torch.float32
    assert not torch.equal(masks[0], masks[1])
    assert ((masks.mean(dim=(1, 2, 3)) - 0.5).abs() <= 0.03).all()

    banked = PatchMaskSampler(patch_size=16, bank_size=2, seed=0)
    square = banked(16, 64, 64)
    bank = banked._banks[(64, 64)]
    # every served mask is a bank member under one of the 8 symmetries of the square grid
    variants = [
        torch.flip(torch.rot90(m, k, dims=(-2, -1)), dims=f)
        for m in bank for k in range(4) for f in ((), (-1,))
    ]
    for m in square[:, 0]:
        assert any(torch.equal(m, v) for v in variants)
    assert len({m.numpy().tobytes() for m in square[:, 0]}) > 2  # rotations make new masks
    assert banked(3, 64, 96).shape == (3, 1, 64, 96)  # non-square: shape-preserving symmetries
