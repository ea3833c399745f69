"""GroupNorm on channels-last input (SSFD, Med-VAE): as accurate as on contiguous input.

PyTorch's CPU channels-last group_norm kernel loses ~1e-3 absolute accuracy in float32 on
full-resolution maps; SSFD with ``channels_last=True`` then differed from its reference by 1e-4
relative at 320x320 (benchmarks/RESULTS.md, issue 13), 50x the contiguous error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_dfd import SSFD
from lightning_dfd.encoders.layers import GroupNorm
from lightning_dfd.encoders.medvae import MedVAEConfig, MedVAENetwork
from lightning_dfd.encoders.options import EncoderOptions


def test_channels_last_group_norm_matches_float64_and_keeps_the_layout():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 20, 160, 160, generator=g) * 0.3 + 2.0
    norm = GroupNorm(10, 20)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-0.5, 0.5, generator=g)
        expected = F.group_norm(x.double(), 10, norm.weight.double(), norm.bias.double(), norm.eps)
        y = norm(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert float((y.double() - expected).abs().max()) < 1e-5
    assert set(norm.state_dict()) == {"weight", "bias"}  # checkpoints load as nn.GroupNorm


def _close_pair(size: int, n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    magnitude = torch.rand(n, size, size, generator=g).cumsum(-1)
    target = torch.polar(magnitude / magnitude.amax(), torch.rand(n, size, size, generator=g))
    return target + 0.01 * torch.randn(n, size, size, generator=g, dtype=torch.complex64), target


def test_ssfd_channels_last_equals_contiguous_at_320():
    preds, target = _close_pair(320)
    values = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        metric = SSFD(weights="random", reduction="none", channels_last=channels_last)
        with torch.no_grad():
            metric.update(preds, target)
        values.append(metric.compute().double())
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=0)  # was 1e-4 relative


def test_medvae_channels_last_equals_contiguous():
    config = MedVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    torch.manual_seed(0)
    net = MedVAENetwork("random", config)
    x = _close_pair(96)[1].abs()[:, None]
    with torch.no_grad():
        contiguous = net(x)[0]
        channels_last = net(x, EncoderOptions(channels_last=True))[0]
    torch.testing.assert_close(channels_last, contiguous, rtol=1e-5, atol=1e-5)
