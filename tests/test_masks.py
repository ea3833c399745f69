"""ROI masks (lightning_dfd.masks): the foreground is the object, not a tissue class.

The object, as issue 19 defines it: the magnitude smoothed (Gaussian, one pixel) above 5 % of its
99th percentile, holes filled. On the noise-free image (phantoms; the synthetic knees rendered
without noise) that is the object's support, 1-2 pixels of partial volume included; on the knee
slices as stored (noise 2 % of the maximum) it is the same up to the noise.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from scipy import ndimage

import lightning_dfd.spatial as spatial
from lightning_dfd.masks import foreground_mask, otsu_threshold, resized_mask, validated_mask
from lightning_dfd.preprocess import center_crop
from recon_models.data.synthetic import _ifft2c, make_synthetic_dataset, synthetic_kspace

SIZE = 128


def the_object(magnitude: np.ndarray) -> np.ndarray:
    """Issue 19's object: smoothed magnitude > 5 % of its 99th percentile, holes filled."""
    smooth = ndimage.gaussian_filter(magnitude.astype(np.float64), 1.0)
    return ndimage.binary_fill_holes(smooth > 0.05 * np.percentile(smooth, 99))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------ synthetic knee slices


@pytest.fixture(scope="module")
def knee_slices(tmp_path_factory):
    """``(slices as stored, noise-free slices, noise level)``: PD and fat-suppressed knees.

    Six volumes of eight slices at the generator's default noise (2 % of the maximum), three at 5 %.
    """
    noisy, clean, noise_levels, acquisitions = [], [], [], set()
    for seed, volumes, noise in ((19, 6, 0.02), (7, 3, 0.05)):
        files = make_synthetic_dataset(tmp_path_factory.mktemp("knees"), volumes=volumes, slices=8, coils=8,
                                       noise_level=noise, seed=seed)
        for index, path in enumerate(files):
            with h5py.File(path) as hf:
                noisy.append(hf["reconstruction_rss"][()])
                acquisitions.add(hf.attrs["acquisition"])
            kspace, _ = synthetic_kspace(8, 8, (128, 64), (64, 64), noise_level=0.0, seed=[seed, index])
            rss = np.sqrt((np.abs(_ifft2c(kspace)) ** 2).sum(axis=1))
            clean.append(center_crop(rss, (64, 64)))
            noise_levels += [noise] * 8
    assert acquisitions == {"CORPD_FBK", "CORPDFS_FBK"}  # bright and dark fat both seen
    return np.concatenate(noisy), np.concatenate(clean), np.array(noise_levels)


def test_foreground_is_the_knee_on_every_synthetic_slice(knee_slices):
    noisy, clean, noise_levels = knee_slices
    masks = foreground_mask(torch.from_numpy(noisy), largest_component=True).numpy()  # as evaluate
    objects = [the_object(x) for x in clean]
    assert min(iou(m, o) for m, o in zip(masks, objects, strict=True)) >= 0.9
    assert np.mean([o.mean() for o in objects]) > 0.8  # the knee fills most of the view
    # The definition applied to the slices as stored: where the noise in the air stays below its
    # 5 % level, it finds the same object (else it takes in air: fat-suppressed anterior slices)
    stable = [(m, the_object(x)) for m, x, o, level in zip(masks, noisy, objects, noise_levels, strict=True)
              if level == 0.02 and iou(the_object(x), o) > 0.95]
    assert len(stable) >= 16
    assert min(iou(m, o) for m, o in stable) >= 0.9


# ------------------------------------------------------------------------------------ phantoms


def _texture(rng: np.random.Generator, smooth: float = 3.0) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), smooth)
    return field / field.std()


def phantom(kind: str, seed: int = 0) -> np.ndarray:
    """Noise-free magnitude phantoms in [0, 1], with and without air around the object."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing="ij")
    tex = _texture(rng)
    if kind == "in_air":  # an ellipse with air all around
        return (np.hypot(xx / 0.7, yy / 0.8) < 1) * (0.7 + 0.1 * tex)
    if kind == "fills_the_view":  # cut by every edge of the view, air only in the corners
        return (np.hypot(xx / 1.15, yy / 1.3) < 1) * (0.6 + 0.15 * tex)
    if kind == "no_air":  # textured tissue everywhere
        return np.clip(0.5 + 0.2 * tex, 0.05, None)
    if kind == "small_in_noise":  # 5 % of the view
        return (np.hypot((xx - 0.3) / 0.25, (yy + 0.2) / 0.2) < 1) * 0.8
    if kind == "dark_inside":  # dark bone, an air gap, a dark ring inside a bright object
        image = (np.hypot(xx / 0.75, yy / 0.85) < 1) * (0.7 + 0.1 * tex)
        image[np.hypot(xx - 0.2, yy) < 0.25] = 0.02
        image[(np.abs(xx + 0.3) < 0.05) & (np.abs(yy) < 0.5)] = 0.0
        r = np.hypot(xx + 0.2, yy + 0.4)
        image[(r > 0.15) & (r < 0.2)] = 0.03
        return image
    if kind == "dark_and_bright":  # like a knee: bright and dark tissue across the whole height
        return (np.abs(xx) < 0.8) * (0.3 + 0.6 * (np.abs(xx) < 0.4) + 0.1 * tex)
    raise ValueError(kind)


PHANTOMS = ("in_air", "fills_the_view", "no_air", "small_in_noise", "dark_inside", "dark_and_bright")


def with_noise(clean: np.ndarray, coils: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Root-sum-of-squares of ``coils`` noisy complex images (one coil: Rayleigh background).

    Returns the noisy magnitude and the noise-free one; the background (air) is about ``noise``.
    """
    rng = np.random.default_rng(1000 + seed)
    weights = rng.uniform(0.3, 1.0, coils)
    weights /= np.sqrt((weights**2).sum())
    sigma = noise / np.sqrt(2 * coils)  # per real component and coil
    shape = clean.shape
    coil_images = [clean * w + sigma * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))
                   for w in weights]
    return np.sqrt(sum(np.abs(c) ** 2 for c in coil_images)), clean


@pytest.mark.parametrize("kind", PHANTOMS)
def test_foreground_is_the_object_on_phantoms_with_and_without_air(kind):
    worst = []
    for seed in (0, 1):
        for coils in (1, 8):
            for noise in (0.03, 0.1):
                noisy, clean = with_noise(phantom(kind, seed), coils, noise, seed)
                mask = foreground_mask(torch.from_numpy(noisy)[None], largest_component=True)[0].numpy()
                worst.append((iou(mask, the_object(clean)), seed, coils, noise))
    assert min(worst)[0] >= 0.9, min(worst)
    if kind == "no_air":
        assert min(worst)[0] >= 0.95  # no background: (nearly) the whole view


def test_foreground_finds_dark_and_bright_tissue_where_otsu_splits_them():
    noisy, clean = with_noise(phantom("dark_and_bright"), 1, 0.03, 0)
    image = torch.from_numpy(noisy)[None]
    dark = np.zeros((SIZE, SIZE), dtype=bool)
    dark[:, 20:35] = True  # inside the dark tissue band, |x| in (0.45, 0.7)
    assert foreground_mask(image)[0].numpy()[dark].all()
    assert foreground_mask(image)[0].numpy()[:, :5].sum() == 0  # the air at the sides
    # Otsu on the linear magnitude (the old foreground) leaves most of the dark tissue out
    assert (noisy > otsu_threshold(noisy))[dark].mean() < 0.1


def test_noise_only_and_constant_images_have_no_foreground():
    for size in (32, 64, 256):
        for coils in (1, 8):  # Rayleigh, chi with 16 degrees of freedom
            noise, _ = with_noise(np.zeros((size, size)), coils, 0.05, seed=size + coils)
            stack = np.stack([noise, with_noise(np.zeros((size, size)), coils, 0.05, seed=size * coils)[0]])
            assert not foreground_mask(torch.from_numpy(stack)).any(), (size, coils)
    assert not foreground_mask(torch.full((1, 16, 16), 0.3)).any()
    assert not foreground_mask(torch.zeros(1, 16, 16)).any()


def test_foreground_recovers_a_disk_with_holes_filled():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    r = ((yy - 48) ** 2 + (xx - 40) ** 2).sqrt()
    disk = r < 30
    image = 0.8 * disk.float() + 0.05 * torch.rand(96, 96, generator=g)
    image[(r < 8)] = 0.02  # a dark hole inside the object (e.g. a bone marrow or fluid)
    blob = ((yy - 10) ** 2 + (xx - 88) ** 2) < 9
    image[blob] = 0.9  # a small bright artefact away from the object
    phase = torch.exp(1j * 0.3 * xx)
    target = (image * phase)[None].to(torch.complex64)
    mask = foreground_mask(target)
    assert mask.dtype == torch.bool and mask.shape == (1, 96, 96)
    assert mask[0][r < 8].all()  # the hole is filled
    assert not foreground_mask(target, fill_holes=False)[0][r < 5].any()
    assert mask[0][blob].all()
    only = foreground_mask(target, largest_component=True)[0]
    assert only[disk].all() and not only[blob].any() and not only[r > 33].any()  # <= 2 px of rim
    assert iou(only.numpy(), the_object(image.numpy())) > 0.95
    fixed = foreground_mask(target.abs() * 10, threshold=0.4, relative=True, largest_component=True)[0]
    assert (fixed == disk).float().mean() > 0.995  # a fixed threshold is applied as given


def test_noise_free_zero_background_is_cut_exactly():
    image = torch.zeros(1, 2, 32, 32)
    image[0, 0, 4:16, 4:16] = 1
    image[0, 1, 16:28, 16:28] = 1
    assert foreground_mask(image)[0].sum() == 2 * 12 * 12  # root-sum-of-squares over channels


def test_foreground_errors():
    with pytest.raises(ValueError, match="NaN"):
        foreground_mask(torch.full((1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        foreground_mask(torch.zeros(8, 8))


def test_otsu_threshold_equals_scikit_image():
    filters = pytest.importorskip("skimage.filters")
    rng = np.random.default_rng(0)
    for values in (rng.random(1000), np.concatenate([rng.normal(0.2, 0.05, 500), rng.normal(0.8, 0.1, 300)]),
                   phantom("in_air")):
        assert otsu_threshold(values) == pytest.approx(float(filters.threshold_otsu(values)), abs=1e-12)
    assert otsu_threshold(np.full(10, 0.5)) == 0.5


def test_the_old_names_still_import_from_spatial_and_encoders():
    from lightning_dfd.encoders import base

    assert spatial.foreground_mask is foreground_mask and spatial.otsu_threshold is otsu_threshold
    assert spatial.validated_mask is validated_mask and base.resized_mask is resized_mask
