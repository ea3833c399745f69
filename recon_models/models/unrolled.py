"""The unrolled FISTA reconstruction model: SENSE data consistency and a learned ResNet prox.

Each unroll ``k`` (paper appendix 6.1.2, after FISTA-CSNet) takes a gradient step on the data term
``1/2 ||A z - y||^2`` with a learned step size, then a learned proximal operator, then FISTA's
momentum::

    x_k     = prox_k(z_k - t_k A^H (A z_k - y))
    s_{k+1} = (1 + sqrt(1 + 4 s_k^2)) / 2,                 s_0 = 1
    z_{k+1} = x_k + ((s_k - 1) / s_{k+1}) (x_k - x_{k-1}),  z_0 = x_{-1} = A^H y

``A`` is the SENSE operator of :mod:`recon_models.models.sense`. Like fastMRI's ``VarNetBlock``,
one :class:`FISTAStep` wraps an injected regulariser (here :class:`ResNetProx`) and owns its step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recon_models.models.layers import NormalizedComplexModel
from recon_models.models.sense import sense_adjoint, sense_forward


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a ReLU between them and a skip connection.

    Args:
        chans: input and output channels.

    Example:
        >>> ResidualBlock(8)(torch.randn(1, 8, 5, 5)).shape
        torch.Size([1, 8, 5, 5])
    """

    def __init__(self, chans: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(chans, chans, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(chans, chans, kernel_size=3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, chans, H, W)`` to ``(B, chans, H, W)``."""
        return x + self.body(x)


class ResNet(nn.Module):
    """A residual CNN on 2-channel images: head convolution, residual blocks, tail convolution.

    The output is added to the input, so the network learns a correction to its input.

    Args:
        chans: feature channels inside the network.
        num_blocks: number of :class:`ResidualBlock`.
        in_chans: channels of the input and output image.

    Example:
        >>> ResNet(chans=8, num_blocks=2)(torch.randn(1, 2, 6, 6)).shape
        torch.Size([1, 2, 6, 6])
    """

    def __init__(self, chans: int = 128, num_blocks: int = 2, in_chans: int = 2) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(in_chans, chans, 3, padding=1), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(ResidualBlock(chans) for _ in range(num_blocks)))
        self.tail = nn.Conv2d(chans, in_chans, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(B, in_chans, H, W)`` to ``(B, in_chans, H, W)``."""
        return x + self.tail(self.blocks(self.head(x)))


class ResNetProx(NormalizedComplexModel):
    """The learned proximal operator: a :class:`ResNet` on the complex image as 2 channels.

    The image is normalised per sample before the ResNet and un-normalised after it.

    Args:
        chans: feature channels of the ResNet (paper: 128).
        num_blocks: residual blocks of 2 convolutions each (paper: 2).

    Example:
        >>> prox = ResNetProx(chans=8, num_blocks=1)
        >>> prox(torch.randn(1, 6, 6, dtype=torch.complex64)).shape
        torch.Size([1, 6, 6])
    """

    def __init__(self, chans: int = 128, num_blocks: int = 2) -> None:
        super().__init__(ResNet(chans=chans, num_blocks=num_blocks))


class FISTAStep(nn.Module):
    """One unroll: a gradient step on ``1/2 ||A z - y||^2`` with a learned step, then ``prox``.

    The step size is ``softplus(step_logit)`` so that it stays positive.

    Args:
        prox: the regulariser, mapping a ``(B, H, W)`` complex image to one of the same shape.
        init_step: the initial step size (``||A|| <= 1`` for normalised maps, so 1 is safe).

    Example:
        >>> step = FISTAStep(ResNetProx(chans=8, num_blocks=1))
        >>> maps = torch.ones(1, 2, 8, 8, dtype=torch.complex64) / 2**0.5
        >>> y = torch.randn(1, 2, 8, 8, dtype=torch.complex64)
        >>> step(torch.zeros(1, 8, 8, dtype=torch.complex64), y, torch.ones(1, 1, 1, 8), maps).shape
        torch.Size([1, 8, 8])
    """

    def __init__(self, prox: nn.Module, init_step: float = 1.0) -> None:
        super().__init__()
        if init_step <= 0:
            raise ValueError(f"Argument `init_step` must be positive, but got {init_step}")
        self.prox = prox
        # inverse of softplus, so that softplus(step_logit) == init_step
        self.step_logit = nn.Parameter(torch.tensor(math.log(math.expm1(init_step))))

    @property
    def step_size(self) -> Tensor:
        """The current (positive) step size ``t_k``."""
        return nn.functional.softplus(self.step_logit)

    def forward(self, z: Tensor, masked_kspace: Tensor, mask: Tensor, maps: Tensor) -> Tensor:
        """Return ``prox(z - t A^H (A z - y))`` for a ``(B, H, W)`` complex ``z``."""
        residual = sense_forward(z, maps, mask) - masked_kspace
        gradient = sense_adjoint(residual, maps, mask)
        return self.prox(z - self.step_size * gradient)


class UnrolledFISTA(nn.Module):
    """FISTA unrolled for a fixed number of steps, each with its own ResNet prox and step size.

    Defaults follow the paper (appendix 6.1.2): 8 unrolls, a prox of 2 residual blocks of 2
    convolutions with 128 channels. It is trained with
    :func:`~recon_models.models.losses.complex_l1_kspace_loss` (``default_loss``).

    Args:
        num_unrolls: number of FISTA iterations.
        chans: feature channels of each prox ResNet.
        num_res_blocks: residual blocks in each prox ResNet.
        init_step: initial step size of every unroll.

    Example:
        >>> model = UnrolledFISTA(num_unrolls=2, chans=8, num_res_blocks=1)
        >>> kspace = torch.randn(1, 3, 16, 12, dtype=torch.complex64)
        >>> maps = torch.ones(1, 3, 16, 12, dtype=torch.complex64) / 3**0.5
        >>> model(kspace, torch.ones(1, 1, 1, 12), maps).shape
        torch.Size([1, 16, 12])
    """

    default_loss = "kspace_l1"

    def __init__(
        self,
        num_unrolls: int = 8,
        chans: int = 128,
        num_res_blocks: int = 2,
        init_step: float = 1.0,
    ) -> None:
        super().__init__()
        if num_unrolls < 1:
            raise ValueError(f"Argument `num_unrolls` must be >= 1, but got {num_unrolls}")
        self.steps = nn.ModuleList(
            FISTAStep(ResNetProx(chans=chans, num_blocks=num_res_blocks), init_step=init_step)
            for _ in range(num_unrolls)
        )

    def forward(self, masked_kspace: Tensor, mask: Tensor, maps: Tensor) -> Tensor:
        """Reconstruct an image.

        Args:
            masked_kspace: ``(B, C, H, W)`` complex, already multiplied by the mask.
            mask: ``(B, 1, 1, W)`` sampling mask.
            maps: ``(B, C, H, W)`` complex coil sensitivities.

        Returns:
            ``(B, H, W)`` complex image.
        """
        x_previous = z = sense_adjoint(masked_kspace, maps, mask)
        s = 1.0
        for step in self.steps:
            x = step(z, masked_kspace, mask, maps)
            s_next = (1.0 + math.sqrt(1.0 + 4.0 * s * s)) / 2.0
            z = x + ((s - 1.0) / s_next) * (x - x_previous)
            x_previous, s = x, s_next
        return x_previous
