"""The UNet reconstruction model: fastMRI's ``Unet`` on the zero-filled SENSE image."""

from __future__ import annotations

from fastmri.models import Unet
from torch import Tensor, nn

from recon_models.models.layers import NormalizedComplexModel
from recon_models.models.sense import sense_adjoint


class ComplexUnet(nn.Module):
    """fastMRI's UNet applied to the zero-filled SENSE reconstruction, complex in and out.

    The masked k-space is mapped to the image domain with the SENSE adjoint (the zero-filled,
    coil-combined image), its real and imaginary parts become two channels, normalised per sample
    as in fastMRI's ``NormUnet``, and the UNet predicts the fully-sampled image. Defaults follow the
    paper (appendix 6.1.1): 4 pooling levels, 32 -> 256 channels, 2 convolutions per level. It is
    trained with :func:`~recon_models.models.losses.complex_l1_image_loss` (``default_loss``).

    Args:
        chans: channels of the first convolution (doubled at each level).
        num_pool_layers: number of down- and up-sampling levels.
        drop_prob: dropout probability inside the UNet.

    Example:
        >>> import torch
        >>> model = ComplexUnet(chans=4, num_pool_layers=2)
        >>> kspace = torch.randn(1, 3, 16, 12, dtype=torch.complex64)
        >>> maps = torch.ones(1, 3, 16, 12, dtype=torch.complex64) / 3**0.5
        >>> model(kspace, torch.ones(1, 1, 1, 12), maps).shape
        torch.Size([1, 16, 12])
    """

    default_loss = "image_l1"

    def __init__(self, chans: int = 32, num_pool_layers: int = 4, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.unet = NormalizedComplexModel(
            Unet(
                in_chans=2,
                out_chans=2,
                chans=chans,
                num_pool_layers=num_pool_layers,
                drop_prob=drop_prob,
            ),
            pad_multiple=2**num_pool_layers,
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
        return self.unet(sense_adjoint(masked_kspace, maps, mask))
