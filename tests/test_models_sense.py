"""The SENSE operator, the FFT helpers, the complex/channel layout, and the losses."""

from __future__ import annotations

import fastmri
import pytest
import torch

from recon_models.fourier import fft2c, ifft2c
from recon_models.models import (
    channels_to_complex,
    complex_l1_image_loss,
    complex_l1_kspace_loss,
    complex_to_channels,
    get_loss,
    sense_adjoint,
    sense_forward,
)


def _random_problem(dtype: torch.dtype, batch=2, coils=3, height=10, width=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, height, width, dtype=dtype, generator=gen)
    kspace = torch.randn(batch, coils, height, width, dtype=dtype, generator=gen)
    maps = torch.randn(batch, coils, height, width, dtype=dtype, generator=gen)
    mask = (torch.rand(batch, 1, 1, width, generator=gen) > 0.5).float()
    return image, kspace, maps, mask


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.complex128, 1e-12), (torch.complex64, 1e-5)])
@pytest.mark.parametrize("masked", [True, False])
def test_adjoint_passes_dot_product_test(dtype, rtol, masked):
    image, kspace, maps, mask = _random_problem(dtype)
    mask = mask if masked else None
    lhs = torch.vdot(sense_forward(image, maps, mask).flatten(), kspace.flatten())
    rhs = torch.vdot(image.flatten(), sense_adjoint(kspace, maps, mask).flatten())
    assert abs(lhs) > 1.0  # the test is not trivially 0 == 0
    torch.testing.assert_close(lhs, rhs, rtol=rtol, atol=0.0)


def test_adjoint_inverts_forward_on_full_grid_with_normalised_maps():
    image, _, maps, _ = _random_problem(torch.complex128)
    maps = maps / maps.abs().pow(2).sum(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(sense_adjoint(sense_forward(image, maps), maps), image)


def test_mask_zeroes_unsampled_lines():
    image, _, maps, mask = _random_problem(torch.complex64)
    kspace = sense_forward(image, maps, mask)
    unsampled = (mask == 0).expand_as(kspace)
    assert unsampled.any()
    assert kspace[unsampled].abs().max() == 0


@pytest.mark.parametrize("shape", [(4, 6), (5, 7)])
def test_fft_matches_fastmri(shape):
    x = torch.randn(2, *shape, dtype=torch.complex64)
    as_real = torch.view_as_real(x)
    torch.testing.assert_close(torch.view_as_real(fft2c(x)), fastmri.fft2c(as_real))
    torch.testing.assert_close(torch.view_as_real(ifft2c(x)), fastmri.ifft2c(as_real))
    torch.testing.assert_close(ifft2c(fft2c(x)), x)


def test_operators_reject_real_input_and_bad_shapes():
    image, kspace, maps, _ = _random_problem(torch.complex64)
    with pytest.raises(TypeError, match="`image` to be a complex tensor"):
        sense_forward(image.real, maps)
    with pytest.raises(ValueError, match="`image` \\(B, H, W\\) and `maps`"):
        sense_forward(image[..., :-1], maps)
    with pytest.raises(ValueError, match="`kspace` and `maps` of the same shape"):
        sense_adjoint(kspace[:, :1], maps)


def test_complex_channel_round_trip():
    x = torch.randn(2, 5, 3, dtype=torch.complex64)
    channels = complex_to_channels(x)
    assert channels.shape == (2, 2, 5, 3)
    torch.testing.assert_close(channels[:, 0], x.real)
    torch.testing.assert_close(channels[:, 1], x.imag)
    torch.testing.assert_close(channels_to_complex(channels), x)
    with pytest.raises(ValueError, match="real image of shape \\(B, 2, H, W\\)"):
        channels_to_complex(torch.randn(2, 3, 5, 3))


def test_image_loss_is_mean_modulus_of_complex_error():
    pred = torch.tensor([[[0 + 0j, 1 + 1j]]])
    target = torch.tensor([[[3 + 4j, 1 + 1j]]])
    torch.testing.assert_close(complex_l1_image_loss(pred, target), torch.tensor(2.5))


def test_kspace_loss_compares_full_kspace_of_both_images():
    pred, _, maps, _ = _random_problem(torch.complex64, seed=1)
    target, _, _, _ = _random_problem(torch.complex64, seed=2)
    expected = (fft2c(maps * pred[:, None]) - fft2c(maps * target[:, None])).abs().mean()
    torch.testing.assert_close(complex_l1_kspace_loss(pred, target, maps), expected)
    assert complex_l1_kspace_loss(target, target, maps) == 0


def test_losses_are_differentiable_and_looked_up_by_name():
    pred, _, maps, _ = _random_problem(torch.complex64, seed=1)
    target, _, _, _ = _random_problem(torch.complex64, seed=2)
    pred.requires_grad_(True)
    for name in ("image_l1", "kspace_l1"):
        (grad,) = torch.autograd.grad(get_loss(name)(pred, target, maps), pred)
        assert torch.isfinite(torch.view_as_real(grad)).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="`loss` must be one of"):
        get_loss("l2")
    with pytest.raises(ValueError, match="same shape"):
        complex_l1_image_loss(pred, target[:1])
