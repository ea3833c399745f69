"""Med-VAE feature distance network: the encoder of the Med-VAE 2-D autoencoder.

Med-VAE (Varma et al., 2025; ``stanfordmimi/MedVAE``) is a latent-diffusion ``AutoencoderKL``
fine-tuned on a million radiographs and mammograms. The DFD uses ``medvae_8_4_2d`` (8x in-plane
compression, 4 latent channels, ``model_weights/vae_8x_4c_2D.ckpt``): the feature is the posterior
mean of its bottleneck, ``quant_conv(encoder(x))[:, :embed_dim]``.

That checkpoint carries LoRA adapters (rank 4) on every convolution inside the ResNet and
attention blocks (``...conv1.conv.weight`` + ``...conv1.lora_down.weight`` +
``...conv1.lora_up.weight``). :func:`merge_lora` folds them into plain weights on load, so the
encoder here is the plain latent-diffusion encoder (``encoder.*``, ``quant_conv.*``), whose
architecture (widths, levels, attention) is read from the checkpoint itself.

Input: magnitude in [0, 1], replicated to the checkpoint's input channels (3 for Med-VAE), then
normalised with mean 0.5 / std 0.5 (to [-1, 1]). Distance: MSE over latent channels and
positions; its per-position form (:meth:`MedVAENetwork.layer_maps`, the squared difference
averaged over the latent channels at 1/8 resolution) gives spatial maps and ROI masks.

Example:
    >>> import torch
    >>> cfg = MedVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    >>> net = MedVAENetwork(weights="random", config=cfg)
    >>> [f.shape for f in net(torch.rand(1, 1, 32, 32))]
    [torch.Size([1, 4, 16, 16])]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dfd import weights as W
from lightning_dfd.encoders.base import FeatureDistanceNetwork, difference_maps, mean_squared_distance
from lightning_dfd.encoders.layers import GroupNorm
from lightning_dfd.weights import seeds_random_init

#: Registry name of the published Med-VAE 8x / 4-channel 2-D checkpoint.
MEDVAE_WEIGHTS = "medvae-8x4c-2d"


@dataclass(frozen=True)
class MedVAEConfig:
    """Architecture of a latent-diffusion ``AutoencoderKL`` encoder (``ddconfig`` + ``embed_dim``).

    The defaults are latent diffusion's ``kl-f8`` (Med-VAE 8x4's base): 3 input channels,
    widths 128 x (1, 2, 4, 4), 2 ResNet blocks per level, no attention outside the middle block.

    Attributes:
        in_channels: image channels the encoder takes.
        ch: base width; every width must be a multiple of 32 (GroupNorm groups).
        ch_mult: width multipliers, one per level; ``len - 1`` down-samplings by 2.
        num_res_blocks: ResNet blocks per level.
        attn_levels: levels whose ResNet blocks are each followed by self-attention.
        z_channels: latent channels (the encoder outputs ``2 * z_channels`` moments).
        embed_dim: channels of the posterior mean after ``quant_conv``.
        conv_downsample: strided 3x3 convolution (True) or 2x2 average pooling to down-sample.
        mid_attention: self-attention in the middle block (False: identity).
    """

    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = ()
    z_channels: int = 4
    embed_dim: int = 4
    conv_downsample: bool = True
    mid_attention: bool = True


def _group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> conv, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection (``q``, ``k``, ``v``, 1x1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> same shape; fused attention over the ``H * W`` positions."""
        n, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        out = out.squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the resolution: pad right/bottom by 1 then a stride-2 3x3 conv, or average pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, C, ~H/2, ~W/2)``."""
        if self.conv is None:
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResNet blocks), ``attn`` (optional), ``downsample``."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attention: bool, down: bool | None):
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(n_blocks if attention else 0))
        if down is not None:
            self.downsample = Downsample(c_out, with_conv=down)


class _Middle(nn.Module):
    def __init__(self, channels: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels)


class Encoder(nn.Module):
    """The latent-diffusion ``Encoder``: image -> ``2 * z_channels`` moments at 1/``2**(L-1)``."""

    def __init__(self, config: MedVAEConfig):
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        n_levels = len(widths)
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, kernel_size=3, padding=1)
        self.down = nn.ModuleList(
            _Level(
                c_in=config.ch if i == 0 else widths[i - 1],
                c_out=widths[i],
                n_blocks=config.num_res_blocks,
                attention=i in config.attn_levels,
                down=config.conv_downsample if i < n_levels - 1 else None,
            )
            for i in range(n_levels)
        )
        self.mid = _Middle(widths[-1], attention=config.mid_attention)
        self.norm_out = _group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` in [-1, 1] -> moments ``(N, 2 * z_channels, h, w)``."""
        h = self.conv_in(x)
        for level in self.down:
            for i, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class MedVAEEncoder(nn.Module):
    """``encoder`` + ``quant_conv`` of an ``AutoencoderKL``; returns the posterior mean.

    Example:
        >>> import torch
        >>> enc = MedVAEEncoder(MedVAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1))
        >>> enc(torch.zeros(1, 3, 64, 48)).shape
        torch.Size([1, 4, 8, 6])
    """

    def __init__(self, config: MedVAEConfig | None = None):
        super().__init__()
        self.config = config or MedVAEConfig()
        self.encoder = Encoder(self.config)
        self.quant_conv = nn.Conv2d(2 * self.config.z_channels, 2 * self.config.embed_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W)`` in [-1, 1] -> posterior mean ``(N, embed_dim, h, w)``."""
        moments = self.quant_conv(self.encoder(x))
        return moments[:, : self.config.embed_dim]


_LORA_UP = re.compile(r"^(?P<prefix>.*)\.lora_up\.weight$")


def merge_lora(state: Mapping[str, Tensor], scale: float = 1.0) -> dict[str, Tensor]:
    """Fold LoRA adapters (``lora_diffusion`` layout, as Med-VAE saves them) into plain weights.

    For every wrapped layer ``P`` the checkpoint holds ``P.conv.weight`` (or ``P.linear.weight``),
    its bias, ``P.lora_down.weight`` (a conv with the base kernel, ``r`` outputs),
    ``P.lora_up.weight`` (1x1, ``r`` inputs) and optionally ``P.selector.weight`` (``r x r``).
    The wrapped layer computes ``base(x) + scale * up(selector(down(x)))``, i.e. one convolution with kernel
    ``W + scale * (up @ selector @ down)``: that kernel is written as ``P.weight``, the bias as
    ``P.bias``. Keys of unwrapped layers pass through.

    Args:
        state: a state dict with or without adapters.
        scale: the adapters' scale (``lora_diffusion``'s default, and Med-VAE's, is 1.0).

    Raises:
        ValueError: an adapter without its base weight or partner, or with mismatched shapes.

    Example:
        >>> import torch
        >>> sd = {"c.conv.weight": torch.ones(2, 1, 1, 1), "c.conv.bias": torch.zeros(2),
        ...       "c.lora_down.weight": torch.ones(1, 1, 1, 1),
        ...       "c.lora_up.weight": torch.full((2, 1, 1, 1), 0.5)}
        >>> merged = merge_lora(sd)
        >>> sorted(merged), merged["c.weight"].flatten().tolist()
        (['c.bias', 'c.weight'], [1.5, 1.5])
    """
    out = dict(state)
    for key in list(state):
        match = _LORA_UP.match(key)
        if match is None:
            continue
        p = match.group("prefix")
        base_kind = next((k for k in ("conv", "linear") if f"{p}.{k}.weight" in state), None)
        if base_kind is None or f"{p}.lora_down.weight" not in state:
            raise ValueError(
                f"LoRA adapter {key!r} has no {p}.conv.weight / {p}.linear.weight or no "
                f"{p}.lora_down.weight in the checkpoint"
            )
        base = state[f"{p}.{base_kind}.weight"]
        up = state[key].float().flatten(1)
        down = state[f"{p}.lora_down.weight"].float().flatten(1)
        if f"{p}.selector.weight" in state:
            up = up @ state[f"{p}.selector.weight"].float().flatten(1)
        delta = up @ down
        if delta.numel() != base.numel():
            raise ValueError(
                f"LoRA adapter of {p!r}: up @ down has shape {tuple(delta.shape)}, which does not "
                f"fit the base weight {tuple(base.shape)}"
            )
        out[f"{p}.weight"] = (base.float() + scale * delta.reshape(base.shape)).to(base.dtype)
        if f"{p}.{base_kind}.bias" in state:
            out[f"{p}.bias"] = state[f"{p}.{base_kind}.bias"]
        for suffix in ("weight", "bias"):
            out.pop(f"{p}.{base_kind}.{suffix}", None)
        for part in ("lora_up", "lora_down", "selector"):
            out.pop(f"{p}.{part}.weight", None)
    return out


def medvae_encoder_state(checkpoint: object) -> dict[str, Tensor]:
    """``encoder.*`` and ``quant_conv.*`` weights of a Med-VAE checkpoint, LoRA merged.

    Accepts Med-VAE's ``{"state_dict": {...}}`` or a bare state dict; the decoder,
    ``post_quant_conv`` and the ``channel_ds`` / ``channel_proj`` heads are dropped.

    Raises:
        lightning_dfd.weights.CorruptWeightsError: no ``encoder.conv_in.weight`` in the file.
    """
    state = merge_lora(W.state_dict_from(checkpoint, "state_dict"))
    if "encoder.conv_in.weight" not in state:
        raise W.CorruptWeightsError(
            "not a Med-VAE / AutoencoderKL checkpoint: no key 'encoder.conv_in.weight' "
            f"(first keys: {sorted(state)[:8]})"
        )
    return {
        k: v.float() for k, v in state.items() if k.startswith(("encoder.", "quant_conv."))
    }


def config_from_state_dict(state: Mapping[str, Tensor]) -> MedVAEConfig:
    """Read the encoder architecture from ``encoder.*`` / ``quant_conv.*`` weight shapes.

    Example:
        >>> cfg = MedVAEConfig(ch=32, ch_mult=(1, 2), attn_levels=(1,))
        >>> config_from_state_dict(MedVAEEncoder(cfg).state_dict()) == cfg
        True
    """
    conv_in = state["encoder.conv_in.weight"]
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    def indices(pattern: str) -> list[int]:
        return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})

    levels = indices(r"encoder\.down\.(\d+)\.")
    blocks = indices(r"encoder\.down\.0\.block\.(\d+)\.")
    ch_mult = tuple(
        int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels
    )
    attn_levels = tuple(i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state)
    conv_downsample = not levels[:-1] or f"encoder.down.{levels[0]}.downsample.conv.weight" in state
    if any(".to_qkv." in k for k in state):
        raise W.CorruptWeightsError("linear attention (`to_qkv`) is not supported: vanilla only")
    return MedVAEConfig(
        in_channels=in_channels,
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=len(blocks),
        attn_levels=attn_levels,
        z_channels=int(state["encoder.conv_out.weight"].shape[0]) // 2,
        embed_dim=int(state["quant_conv.weight"].shape[0]) // 2,
        conv_downsample=conv_downsample,
        mid_attention="encoder.mid.attn_1.q.weight" in state,
    )


def load_medvae_encoder(
    weights: str | os.PathLike = MEDVAE_WEIGHTS, config: MedVAEConfig | None = None
) -> MedVAEEncoder:
    """Build :class:`MedVAEEncoder` from a checkpoint (LoRA merged, ``strict=True``).

    Args:
        weights: ``"medvae-8x4c-2d"``, a checkpoint path, or ``"random"`` (explicitly untrained).
        config: the architecture for ``"random"`` (default ``kl-f8``); for a file it is read from
            the weights, and a given ``config`` must agree with it.
    """
    weights = W.check_weights_arg(weights)
    if os.fspath(weights) == "random":
        return MedVAEEncoder(config)
    state = medvae_encoder_state(W.load_checkpoint(weights))
    found = config_from_state_dict(state)
    if config is not None and config != found:
        raise ValueError(f"`config` {config} does not match the checkpoint's architecture {found}")
    encoder = MedVAEEncoder(found)
    W.load_into(encoder, state, source=os.fspath(weights))
    return encoder


class MedVAENetwork(FeatureDistanceNetwork):
    """Med-VAE posterior-mean features compared by MSE (the paper's Med-VAEFD).

    Args:
        weights: ``"medvae-8x4c-2d"``, a Med-VAE checkpoint path, or ``"random"``.
        config: architecture for ``weights="random"`` (see :func:`load_medvae_encoder`).

    Example:
        >>> import torch
        >>> net = MedVAENetwork("random", MedVAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1))
        >>> x = torch.rand(2, 1, 16, 16)
        >>> net.distance(net(x), net(x)).tolist()
        [0.0, 0.0]
    """

    @seeds_random_init
    def __init__(
        self, weights: str | os.PathLike = MEDVAE_WEIGHTS, config: MedVAEConfig | None = None
    ):
        super().__init__()
        self.encoder = load_medvae_encoder(weights, config)
        self.in_channels = self.encoder.config.in_channels
        self.identity = f"medvae-{os.fspath(weights)}"
        self.encoder.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] grayscale -> ``in_channels`` copies normalised with mean 0.5, std 0.5."""
        return ((images - 0.5) / 0.5).expand(-1, self.in_channels, -1, -1)

    def features(self, x: Tensor) -> list[Tensor]:
        """The posterior mean of the bottleneck, as a one-element list."""
        return [self.encoder(x)]

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """Mean squared difference over latent channels and positions: ``(M,)``."""
        return mean_squared_distance(feats_preds, feats_target)

    def layer_maps(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
        """Per-position contributions ``[(M, 1, h, w)]``: squared latent differences, channel mean.

        ``distance`` is the spatial mean of this map
        (:func:`~lightning_dfd.encoders.base.difference_maps`).
        """
        return difference_maps(feats_preds, feats_target)
