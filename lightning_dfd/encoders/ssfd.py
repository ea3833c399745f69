"""SSFD: the self-supervised feature distance network (Adamson et al., NeurIPS 2021 workshop).

The encoder is the contracting half of a UNet pretrained to inpaint masked MR images. Its module
tree and parameter names match the checkpoint the authors published
(``philadamson93/SSFD/default/model.ckpt``: ``{"model_state_dict": <encoder state dict>}``):

``firstblock`` = DoubleConv(1 -> 20); ``encoder1..encoder4`` = MaxPool(2) + DoubleConv, channels
20 -> 40 -> 80 -> 160 -> 320. A DoubleConv is ``conv1`` (3x3) -> ReLU -> ``conv2`` (3x3,
weight-standardised) -> ReLU -> ``GN`` (GroupNorm, 10 groups). Keys look like
``firstblock.conv1.weight`` or ``encoder3.conv_block.GN.bias``.

The feature taps ``block1_relu1`` .. ``block5_relu1`` are the ReLU outputs after ``conv1`` of each
level. The paper's "7th conv layer" is ``block4_relu1`` (160 channels at 1/8 resolution), the
default. Input: magnitude images, one channel, z-scored per image.

Example:
    >>> import torch
    >>> net = SSFDNetwork(weights="random")
    >>> [f.shape for f in net(torch.rand(2, 1, 64, 64))]
    [torch.Size([2, 160, 8, 8])]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dfd import weights as W
from lightning_dfd.encoders.base import (
    FeatureDistanceNetwork,
    difference_maps,
    mean_absolute_distance,
    mean_squared_distance,
    parse_layers,
)
from lightning_dfd.encoders.layers import GroupNorm, max_magnitude, power_of_two
from lightning_dfd.preprocess import is_constant
from lightning_dfd.weights import seeds_random_init

#: Output channels of ``firstblock``, ``encoder1`` .. ``encoder4``.
SSFD_CHANNELS: tuple[int, ...] = (20, 40, 80, 160, 320)
#: The feature taps, one per level: the ReLU after ``conv1``.
SSFD_LAYERS: tuple[str, ...] = tuple(f"block{i}_relu1" for i in range(1, 6))
#: The paper's "7th convolutional layer".
DEFAULT_LAYER = "block4_relu1"
#: Registry name of the published checkpoint.
SSFD_WEIGHTS = "ssfd-fastmri-knee"


class WSConv2d(nn.Conv2d):
    """A convolution with weight standardisation (Qiao et al., 2019).

    Before each use the kernel of every output channel has its mean removed and is divided by its
    (unbiased) standard deviation plus ``1e-5``. The stored ``weight`` stays unstandardised, so the
    state dict is that of a plain ``nn.Conv2d``.

    Example:
        >>> conv = WSConv2d(2, 4, 3, padding=1)
        >>> conv(torch.zeros(1, 2, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """

    eps: float = 1e-5

    def standardized_weight(self) -> Tensor:
        """The kernel actually used: zero mean, unit std per output channel."""
        w = self.weight
        flat = w.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).view(-1, 1, 1, 1)
        return (w - mean) / (std + self.eps)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve ``x`` with the standardised kernel."""
        return F.conv2d(
            x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
            self.groups,
        )


class DoubleConv(nn.Module):
    """``conv1`` -> ReLU -> ``conv2`` (weight-standardised) -> ReLU -> ``GN``.

    Args:
        in_channels: input channels.
        out_channels: output channels (a multiple of 10, the GroupNorm group count).

    The published module also holds a dropout (``droupout``, spelled as in the checkpoint's code)
    that its forward never applies; it is kept so the module tree reads the same, and it is not
    applied here either.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv2 = WSConv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.GN = GroupNorm(num_groups=10, num_channels=out_channels)
        self.relu = nn.ReLU()
        self.droupout = nn.Dropout(p=0.1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, C_in, H, W)`` -> (block output ``(N, C_out, H, W)``, the ReLU after ``conv1``)."""
        relu1 = self.relu(self.conv1(x))
        out = self.GN(self.relu(self.conv2(relu1)))
        return out, relu1


class EncoderBlock(nn.Module):
    """Max-pool by 2 (``MP``), then a :class:`DoubleConv` (``conv_block``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.MP = nn.MaxPool2d(2)
        self.conv_block = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Same outputs as :meth:`DoubleConv.forward`, at half the resolution."""
        return self.conv_block(self.MP(x))


class SSFDEncoder(nn.Module):
    """The SSFD UNet encoder: 5 levels, 2 convolutions each, 20 -> 320 channels.

    The module names (``firstblock``, ``encoder1`` .. ``encoder4``) and the state dict are those of
    the published checkpoint, so it loads with ``strict=True``.

    Example:
        >>> enc = SSFDEncoder()
        >>> taps, skips = enc(torch.zeros(1, 1, 32, 32))
        >>> [t.shape[1] for t in taps], [s.shape[-1] for s in skips]
        ([20, 40, 80, 160, 320], [32, 16, 8, 4, 2])
    """

    def __init__(self):
        super().__init__()
        c = SSFD_CHANNELS
        self.firstblock = DoubleConv(1, c[0])
        self.encoder1 = EncoderBlock(c[0], c[1])
        self.encoder2 = EncoderBlock(c[1], c[2])
        self.encoder3 = EncoderBlock(c[2], c[3])
        self.encoder4 = EncoderBlock(c[3], c[4])

    def blocks(self) -> list[nn.Module]:
        """The five levels, shallow to deep."""
        return [self.firstblock, self.encoder1, self.encoder2, self.encoder3, self.encoder4]

    def forward(self, x: Tensor, depth: int = 5) -> tuple[list[Tensor], list[Tensor]]:
        """Run the first ``depth`` levels of ``(N, 1, H, W)`` z-scored images.

        Returns:
            (taps, skips): per level, the ReLU after ``conv1`` (``block{i}_relu1``) and the level's
            output (its GroupNorm), which the UNet decoder uses as skip connection.
        """
        taps, skips = [], []
        for block in self.blocks()[:depth]:
            x, relu1 = block(x)
            taps.append(relu1)
            skips.append(x)
        return taps, skips


def ssfd_state_dict(checkpoint: object) -> dict[str, Tensor]:
    """The encoder state dict inside a checkpoint in the published layout.

    Accepts ``{"model_state_dict": {...}}`` (the published file and our exports) or a bare state
    dict whose keys already start with ``firstblock.`` / ``encoderN.``.

    Raises:
        lightning_dfd.weights.CorruptWeightsError: anything else, naming the keys found.
    """
    if isinstance(checkpoint, Mapping) and "model_state_dict" in checkpoint:
        return W.state_dict_from(checkpoint, "model_state_dict")
    is_mapping = isinstance(checkpoint, Mapping)
    if is_mapping and any(str(k).startswith("firstblock.") for k in checkpoint):
        return W.state_dict_from(checkpoint)
    keys = sorted(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise W.CorruptWeightsError(
        "an SSFD checkpoint must be {'model_state_dict': <encoder state dict>} (the published "
        f"layout, written by `recon-train export-ssfd`), but got top-level keys {keys}"
    )


def load_ssfd_encoder(weights: str | os.PathLike = SSFD_WEIGHTS) -> SSFDEncoder:
    """Build :class:`SSFDEncoder` and load ``weights`` with ``strict=True``.

    Args:
        weights: ``"ssfd-fastmri-knee"`` (the published file, resolved by the weights registry),
            a path to a checkpoint in the published layout, or ``"random"`` (PyTorch's default
            initialisation, chosen explicitly).

    Example:
        >>> import tempfile
        >>> path = tempfile.mktemp(suffix=".ckpt")
        >>> torch.save({"model_state_dict": SSFDEncoder().state_dict()}, path)
        >>> type(load_ssfd_encoder(path)).__name__
        'SSFDEncoder'
    """
    encoder = SSFDEncoder()
    weights = W.check_weights_arg(weights)
    if os.fspath(weights) != "random":
        state = ssfd_state_dict(W.load_checkpoint(weights))
        W.load_into(encoder, state, source=os.fspath(weights))
    return encoder


def zscore(images: Tensor) -> Tensor:
    """Per-image zero mean, unit (unbiased) standard deviation of ``(M, 1, H, W)`` images.

    A constant image (spread below float rounding of its own magnitude, see
    :func:`lightning_dfd.preprocess.is_constant`) maps to zeros, never to NaN; any other image is
    scaled exactly, however small or large its units (raw k-space magnitudes ~1e-9, or 1e-30 and
    1e30, whose squared deviations under- or overflow float32): each image is first divided by the
    power of two nearest below its largest magnitude (exact, and cancelled by the z-score).

    Example:
        >>> z = zscore(torch.rand(3, 1, 8, 8) * 7 + 2)
        >>> round(float(z.mean()), 4) == 0.0, round(float(z[0].std()), 4)
        (True, 1.0)
        >>> float(zscore(torch.full((1, 1, 4, 4), 3.0)).abs().max())
        0.0
        >>> x = torch.rand(2, 1, 8, 8)
        >>> [bool(torch.equal(zscore(x * 2.0**k), zscore(x))) for k in (100, -100)]
        [True, True]
    """
    images = images / power_of_two(max_magnitude(images, dim=(1, 2, 3))).to(images.dtype)
    flat = images.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1).view(-1, 1, 1, 1) if flat.shape[1] > 1 else torch.zeros_like(mean)
    constant = is_constant(std, flat.detach().abs().amax(dim=1).view(-1, 1, 1, 1))
    z = (images - mean) / torch.where(constant, torch.ones_like(std), std)
    return torch.where(constant, torch.zeros_like(z), z)


class SSFDNetwork(FeatureDistanceNetwork):
    """SSFD features at one or more ``block{i}_relu1`` taps, compared by MSE (or MAE).

    Args:
        weights: ``"ssfd-fastmri-knee"``, a checkpoint path (published layout) or ``"random"``.
        layers: taps among ``block1_relu1`` .. ``block5_relu1``; distances are summed over them.
        distance: ``"mse"`` (the paper's) or ``"mae"``.

    Example:
        >>> net = SSFDNetwork(weights="random", layers=("block2_relu1", "block4_relu1"))
        >>> x = torch.rand(2, 1, 32, 32)
        >>> net.distance(net(x), net(x)).tolist()
        [0.0, 0.0]
    """

    @seeds_random_init
    def __init__(
        self,
        weights: str | os.PathLike = SSFD_WEIGHTS,
        layers: Sequence[str] = (DEFAULT_LAYER,),
        distance: str = "mse",
    ):
        super().__init__()
        layers = parse_layers(layers, SSFD_LAYERS)
        if distance not in ("mse", "mae"):
            raise ValueError(
                f"Argument `distance` must be one of ('mse', 'mae'), but got {distance!r}"
            )
        self.encoder = load_ssfd_encoder(weights)
        self.layers = layers
        self._levels = [SSFD_LAYERS.index(layer) for layer in layers]
        self._distance = mean_squared_distance if distance == "mse" else mean_absolute_distance
        self.features_identity = f"ssfd-{os.fspath(weights)}-{'+'.join(layers)}"
        self.identity = f"{self.features_identity}-{distance}"
        self.min_size = 2 ** max(self._levels)  # one 2x pooling before each deeper block
        self.encoder.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def prepare(self, images: Tensor) -> Tensor:
        """Grayscale ``(M, 1, H, W)`` -> per-image z-score (any affine pre-scaling cancels out)."""
        return zscore(images)

    def features(self, x: Tensor) -> list[Tensor]:
        """The requested taps; levels deeper than the deepest tap are never computed."""
        taps, _ = self.encoder(x, depth=max(self._levels) + 1)
        return [taps[level] for level in self._levels]

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """MSE (or MAE) over channels and positions, summed over layers: ``(M,)``."""
        return self._distance(feats_preds, feats_target)

    def layer_maps(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
        """Per-position contributions ``(M, 1, h_l, w_l)`` per layer; ``distance`` = sum of their means.

        The squared (MSE) or absolute (MAE) feature difference averaged over channels.
        """
        return difference_maps(feats_preds, feats_target, absolute=self._distance is mean_absolute_distance)
