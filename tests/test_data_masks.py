"""Undersampling masks: requested acceleration, fully sampled centre, layout, per-volume seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recon_models.data.masks import (
    acceleration_of,
    build_mask_func,
    default_center_fraction,
    sample_mask,
    volume_seed,
)

WIDTH = 368  # fastMRI knee phase-encoding columns


def test_default_center_fractions_follow_fastmri():
    assert default_center_fraction(4) == 0.08 and default_center_fraction(8) == 0.04
    assert default_center_fraction(2) == 0.16 and default_center_fraction(6) == 0.053


@pytest.mark.parametrize("acceleration", [2, 4, 6, 8])
def test_random_masks_give_the_requested_acceleration_on_average(acceleration):
    func = build_mask_func("random", (acceleration,))
    sampled = [float(sample_mask(func, WIDTH, seed=s).sum()) for s in range(200)]
    achieved = WIDTH / np.mean(sampled)
    assert achieved == pytest.approx(acceleration, rel=0.03)


@pytest.mark.parametrize("acceleration", [2, 4, 6, 8])
@pytest.mark.parametrize("width", [WIDTH, 64])
def test_equispaced_fraction_masks_hit_the_acceleration(acceleration, width):
    func = build_mask_func("equispaced_fraction", (acceleration,))
    for seed in range(5):
        mask = sample_mask(func, width, seed=seed)
        # exact up to one column of integer rounding (which matters at small widths)
        assert abs(float(mask.sum()) - width / acceleration) <= 1.0
        if width == WIDTH:
            assert acceleration_of(mask) == pytest.approx(acceleration, rel=0.03)


@pytest.mark.parametrize("mask_type", ["random", "equispaced_fraction"])
def test_layout_values_and_fully_sampled_centre(mask_type):
    func = build_mask_func(mask_type, (4,))
    mask = sample_mask(func, WIDTH, seed=3)
    assert mask.shape == (1, 1, WIDTH) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    centre = round(WIDTH * 0.08)
    start = (WIDTH - centre + 1) // 2
    assert bool(mask[..., start : start + centre].eq(1).all())


def test_padding_masks_out_unacquired_columns():
    func = build_mask_func("random", (2,))
    mask = sample_mask(func, 64, seed=0, padding=(4, 60))
    assert mask[..., :4].sum() == 0 and mask[..., 60:].sum() == 0


def test_volume_seed_fixes_the_mask_and_differs_between_volumes():
    func = build_mask_func("random", (4,))
    a = sample_mask(func, WIDTH, seed=volume_seed("file1000001.h5"))
    b = sample_mask(func, WIDTH, seed=volume_seed("file1000001.h5"))
    c = sample_mask(func, WIDTH, seed=volume_seed("file1000002.h5"))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_several_accelerations_are_drawn():
    func = build_mask_func("random", (2, 8))
    counts = {round(WIDTH / float(sample_mask(func, WIDTH, seed=s).sum())) for s in range(30)}
    assert any(c <= 3 for c in counts) and any(c >= 6 for c in counts)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="mask_type"):
        build_mask_func("poisson", (4,))
    with pytest.raises(ValueError, match="center_fractions"):
        build_mask_func("random", (4, 8), (0.08,))
    with pytest.raises(ValueError, match="center_fractions"):
        build_mask_func("random", (8,), (0.2,))
    with pytest.raises(ValueError, match="accelerations"):
        build_mask_func("random", (0,))
