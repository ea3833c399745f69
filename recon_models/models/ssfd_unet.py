"""The SSFD inpainting UNet: the published SSFD encoder plus a matching decoder.

The encoder is :class:`lightning_dfd.encoders.ssfd.SSFDEncoder` itself (5 levels, 2 convolutions
per level, 20 -> 320 channels, weight-standardised second convolutions, GroupNorm), so its state
dict exported as ``{"model_state_dict": unet.encoder.state_dict()}`` is the published layout that
``lightning_dfd.SSFD(weights=...)`` loads with ``strict=True``. The decoder mirrors it: at each of
4 levels a 2x2 transposed convolution halves the channels and doubles the resolution, the
encoder's skip is concatenated, and a :class:`~lightning_dfd.encoders.ssfd.DoubleConv` fuses them;
a 1x1 convolution maps the 20 channels back to one image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dfd.encoders.ssfd import SSFD_CHANNELS, DoubleConv, SSFDEncoder


class UpBlock(nn.Module):
    """Transposed-conv up-sampling (``up``), skip concatenation, then ``conv_block``.

    Args:
        in_channels: channels of the deeper input.
        out_channels: channels of the skip and of the output.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv_block = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """``(N, C_in, h, w)`` and skip ``(N, C_out, H, W)`` -> ``(N, C_out, H, W)``.

        Odd sizes lost one row/column to max-pooling; the up-sampled map is zero-padded back.
        """
        x = self.up(x)
        pad_h, pad_w = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        out, _ = self.conv_block(torch.cat([skip, x], dim=1))
        return out


class SSFDUNet(nn.Module):
    """UNet for masked-image inpainting whose encoder is exactly the SSFD encoder.

    Input and output are ``(N, 1, H, W)`` real images (z-scored in SSFD pretraining); any size
    works, sizes divisible by 16 avoid padding.

    Example:
        >>> net = SSFDUNet()
        >>> net(torch.zeros(2, 1, 40, 36)).shape
        torch.Size([2, 1, 40, 36])
        >>> sorted(net.encoder.state_dict())[:2]
        ['encoder1.conv_block.GN.bias', 'encoder1.conv_block.GN.weight']
    """

    def __init__(self):
        super().__init__()
        c = SSFD_CHANNELS
        self.encoder = SSFDEncoder()
        self.decoder = nn.ModuleList(UpBlock(c[i + 1], c[i]) for i in reversed(range(len(c) - 1)))
        self.head = nn.Conv2d(c[0], 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, 1, H, W)`` masked images -> ``(N, 1, H, W)`` restored images."""
        _, skips = self.encoder(x)
        h = skips[-1]
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            h = block(h, skip)
        return self.head(h)
