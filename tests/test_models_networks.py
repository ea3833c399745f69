"""The UNet and unrolled FISTA models: shapes, the FISTA recursion, and overfitting one slice."""

from __future__ import annotations

import math

import pytest
import torch

from recon_models.fourier import ifft2c
from recon_models.models import (
    ComplexUnet,
    UnrolledFISTA,
    build_model,
    get_loss,
    sense_adjoint,
    sense_forward,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions run fastest on one thread; more only fight the other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _smooth_complex(shape: tuple[int, ...], half_width: int, gen: torch.Generator) -> torch.Tensor:
    """Random complex images whose k-space is zero outside a central square."""
    kspace = torch.zeros(shape, dtype=torch.complex64)
    height, width = shape[-2:]
    size = 2 * half_width + 1
    rows = slice(height // 2 - half_width, height // 2 + half_width + 1)
    cols = slice(width // 2 - half_width, width // 2 + half_width + 1)
    kspace[..., rows, cols] = torch.randn(*shape[:-2], size, size, dtype=kspace.dtype, generator=gen)
    return ifft2c(kspace)


def make_slice(height: int = 32, width: int = 32, coils: int = 4, seed: int = 0):
    """A tiny synthetic slice: smooth image, smooth maps with sum |S|^2 = 1, a 4x mask.

    Returns ``(masked_kspace, mask, maps, target)`` with a batch dimension of 1.
    """
    gen = torch.Generator().manual_seed(seed)
    target = _smooth_complex((1, height, width), min(6, min(height, width) // 2 - 1), gen)
    maps = _smooth_complex((1, coils, height, width), 2, gen)
    maps = maps / maps.abs().pow(2).sum(dim=1, keepdim=True).sqrt()
    mask = torch.zeros(width)
    num_centre = width // 8
    mask[width // 2 - num_centre // 2 : width // 2 - num_centre // 2 + num_centre] = 1
    outside = (mask == 0).nonzero().flatten()
    mask[outside[torch.randperm(len(outside), generator=gen)[: width // 4 - num_centre]]] = 1
    assert mask.sum() == width // 4  # 4x acceleration
    mask = mask.reshape(1, 1, 1, width)
    return sense_forward(target, maps, mask), mask, maps, target


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("unet", {"chans": 4, "num_pool_layers": 2}),
        ("unrolled", {"num_unrolls": 2, "chans": 4, "num_res_blocks": 1}),
    ],
)
def test_models_map_kspace_to_complex_image_of_any_size(name, kwargs):
    gen = torch.Generator().manual_seed(0)
    kspace = torch.randn(2, 3, 19, 13, dtype=torch.complex64, generator=gen)  # odd: padding path
    maps = torch.randn(2, 3, 19, 13, dtype=torch.complex64, generator=gen)
    mask = torch.ones(2, 1, 1, 13)
    image = build_model(name, **kwargs)(kspace, mask, maps)
    assert image.shape == (2, 19, 13) and image.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(image)).all()


def test_paper_defaults():
    unet = ComplexUnet()
    widths = [layer.layers[0].out_channels for layer in unet.unet.model.down_sample_layers]
    assert widths == [32, 64, 128, 256]
    unrolled = UnrolledFISTA()
    assert len(unrolled.steps) == 8
    resnet = unrolled.steps[0].prox.model
    assert len(resnet.blocks) == 2 and resnet.head[0].out_channels == 128
    convs = [m for m in resnet.blocks[0].modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2
    assert unet.default_loss == "image_l1" and unrolled.default_loss == "kspace_l1"


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="`name` must be one of \\['unet', 'unrolled'\\]"):
        build_model("varnet")


def test_step_sizes_are_positive_learnable_and_start_at_init():
    model = UnrolledFISTA(num_unrolls=3, chans=4, num_res_blocks=1, init_step=0.5)
    for step in model.steps:
        torch.testing.assert_close(step.step_size, torch.tensor(0.5))
    kspace, mask, maps, target = make_slice(height=16, width=16, coils=2)
    loss = get_loss("kspace_l1")(model(kspace, mask, maps), target, maps)
    loss.backward()
    assert all(step.step_logit.grad is not None for step in model.steps)
    with torch.no_grad():
        model.steps[0].step_logit.fill_(-50.0)
    assert model.steps[0].step_size > 0


def _reference_fista(kspace, mask, maps, step_sizes):
    """Textbook FISTA (Beck & Teboulle 2009) on 1/2 ||A x - y||^2 with an identity prox."""
    x_old = y_point = sense_adjoint(kspace, maps, mask)
    t = 1.0
    for step in step_sizes:
        x = y_point - step * sense_adjoint(sense_forward(y_point, maps, mask) - kspace, maps, mask)
        t_new = (1 + math.sqrt(1 + 4 * t**2)) / 2
        y_point = x + (t - 1) / t_new * (x - x_old)
        x_old, t = x, t_new
    return x_old


def test_identity_prox_gives_textbook_fista_which_beats_gradient_descent():
    kspace, mask, maps, _ = make_slice(height=16, width=16, coils=3)
    model = UnrolledFISTA(num_unrolls=12, chans=4, num_res_blocks=1, init_step=1.0)
    for step in model.steps:
        step.prox = torch.nn.Identity()
    with torch.no_grad():
        model.steps[3].step_logit.fill_(0.0)  # one different step size: softplus(0) = log 2
        fista = model(kspace, mask, maps)
    step_sizes = [step.step_size.item() for step in model.steps]
    torch.testing.assert_close(fista, _reference_fista(kspace, mask, maps, step_sizes))

    gradient_descent = sense_adjoint(kspace, maps, mask)
    for step in step_sizes:
        residual = sense_forward(gradient_descent, maps, mask) - kspace
        gradient_descent = gradient_descent - step * sense_adjoint(residual, maps, mask)

    def data_misfit(image):
        return (sense_forward(image, maps, mask) - kspace).abs().pow(2).sum()

    assert data_misfit(fista) < data_misfit(gradient_descent)


@pytest.mark.parametrize(
    ("name", "kwargs", "lr"),
    [
        ("unet", {"chans": 8, "num_pool_layers": 2}, 3e-3),
        ("unrolled", {"num_unrolls": 3, "chans": 16, "num_res_blocks": 1}, 1e-3),
    ],
)
def test_model_overfits_one_slice(name, kwargs, lr):
    torch.manual_seed(0)
    kspace, mask, maps, target = make_slice()
    model = build_model(name, **kwargs)
    loss_fn = get_loss(model.default_loss)
    zero_filled_loss = loss_fn(sense_adjoint(kspace, maps, mask), target, maps).item()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(200):
        loss = loss_fn(model(kspace, mask, maps), target, maps)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < losses[0] / 10, losses[::20]
    assert min(losses[-5:]) < zero_filled_loss / 5  # better than the zero-filled image
