"""The contract every deep-feature-distance network fulfils.

A network turns grayscale images scaled to [0, 1] (``(M, 1, H, W)``) into its own input
(:meth:`prepare`: range, channels), a list of feature maps (:meth:`features`), and compares two
lists of features image by image (:meth:`distance` -> ``(M,)``). Metrics and functional forms only
talk to this interface, so a new DFD is one subclass.

A network whose distance is a sum over layers of spatial means also defines
``layer_maps(feats_preds, feats_target) -> [(M, 1, h_l, w_l), ...]`` (spatial DFD maps, and ROI
masks through the default :meth:`FeatureDistanceNetwork.masked_distance`); one without a
per-position form (DISTS) overrides :meth:`~FeatureDistanceNetwork.masked_distance` instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_dfd.encoders.layers import unit_normalize

# Options moved to lightning_dfd.encoders.options (one immutable EncoderOptions); the names stay
# importable from here.
from lightning_dfd.encoders.options import (  # noqa: E402, F401
    PRECISIONS,
    CompileArg,
    EncoderOptions,
    check_compile,
    fast_bf16,
    resolve_precision,
)
from lightning_dfd.masks import resized_mask  # noqa: F401 - re-exported (was defined here)

_DEFAULT_OPTIONS = EncoderOptions()


def parse_layers(layers: str | Sequence[str], valid: Sequence[str] | None = None) -> tuple[str, ...]:
    """The one ``layers`` parser: a name or a sequence of names -> a non-empty tuple.

    Args:
        layers: one layer name or several.
        valid: the names allowed (None: any).

    Raises:
        ValueError: an empty selection or a name outside ``valid``.

    Example:
        >>> parse_layers("layer3"), parse_layers(["layer2", "layer3"])
        (('layer3',), ('layer2', 'layer3'))
    """
    parsed = (layers,) if isinstance(layers, str) else tuple(layers)
    if not parsed or not all(isinstance(name, str) for name in parsed) or (
        valid is not None and any(name not in valid for name in parsed)
    ):
        allowed = f"a non-empty subset of {tuple(valid)}" if valid is not None else "non-empty"
        raise ValueError(f"Argument `layers` must be {allowed}, but got {layers!r}")
    return parsed


def _probe_minimum_size(network: nn.Module, limit: int = 1024) -> int:
    """The smallest side ``s`` for which ``network`` encodes an ``s x s`` image (sizes above work)."""
    device = next((t.device for t in (*network.parameters(), *network.buffers())), torch.device("cpu"))

    def works(size: int) -> bool:
        try:
            with torch.no_grad():
                network(torch.zeros(1, 1, size, size, device=device))
        except (RuntimeError, ValueError):
            return False
        return True

    hi = 1
    while not works(hi):
        if hi >= limit:
            return limit
        hi *= 2
    lo = hi // 2  # lo fails (or is 0), hi works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    return hi


def mean_squared_distance(feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
    """Mean of squared differences over channels and positions, summed over layers: ``(M,)``."""
    total = None
    for a, b in zip(feats_a, feats_b, strict=True):
        d = (a - b).pow(2).flatten(1).mean(dim=1)
        total = d if total is None else total + d
    return total


def mean_absolute_distance(feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
    """Mean of absolute differences over channels and positions, summed over layers: ``(M,)``."""
    total = None
    for a, b in zip(feats_a, feats_b, strict=True):
        d = (a - b).abs().flatten(1).mean(dim=1)
        total = d if total is None else total + d
    return total


def difference_maps(feats_a: list[Tensor], feats_b: list[Tensor], absolute: bool = False) -> list[Tensor]:
    """Squared (or absolute) feature differences averaged over channels: ``(M, 1, h_l, w_l)`` per layer.

    The per-position form of :func:`mean_squared_distance` (:func:`mean_absolute_distance` with
    ``absolute=True``): the sum over layers of the maps' spatial means is that distance.

    Example:
        >>> import torch
        >>> a, b = [torch.rand(2, 4, 6, 5)], [torch.rand(2, 4, 6, 5)]
        >>> maps = difference_maps(a, b)
        >>> maps[0].shape, bool(torch.allclose(maps[0].mean((-2, -1)).flatten(),
        ...                                    mean_squared_distance(a, b)))
        (torch.Size([2, 1, 6, 5]), True)
    """
    return [((a - b).abs() if absolute else (a - b).pow(2)).mean(dim=1, keepdim=True)
            for a, b in zip(feats_a, feats_b, strict=True)]


def channel_sum_maps(feats_a: list[Tensor], feats_b: list[Tensor],
                     heads: Sequence[Callable[[Tensor], Tensor]] | None = None) -> list[Tensor]:
    """LPIPS's per-position form: per layer ``(M, 1, h_l, w_l)`` squared differences over channels.

    Summed over channels, or weighted by that layer's 1x1 ``heads[k]`` (LPIPS' linear layers).
    The one place this is written: LPIPS (with and without linear layers) and the ``"unit"``
    distance of TimmFD / HFFD (:func:`unit_difference_maps`) use it.
    """
    return [heads[k]((a - b) ** 2) if heads is not None else ((a - b) ** 2).sum(dim=1, keepdim=True)
            for k, (a, b) in enumerate(zip(feats_a, feats_b, strict=True))]


def unit_difference_maps(feats_a: list[Tensor], feats_b: list[Tensor]) -> list[Tensor]:
    """LPIPS without linear layers on any features: :func:`channel_sum_maps` of channel-unit-normalised maps.

    Example:
        >>> import torch
        >>> a = [torch.rand(2, 4, 6, 5)]
        >>> float(summed_means(unit_difference_maps(a, [2 * a[0]])).abs().max()) < 1e-6  # scale-free
        True
    """
    return channel_sum_maps([unit_normalize(a) for a in feats_a], [unit_normalize(b) for b in feats_b])


def summed_means(maps: list[Tensor]) -> Tensor:
    """Sum over layers of each ``(M, 1, h_l, w_l)`` map's spatial mean: ``(M,)``."""
    total: Tensor | int = 0
    for m in maps:
        total = total + m.mean(dim=(2, 3), keepdim=True)
    return total.flatten()  # type: ignore[union-attr]


def unit_distance(feats_a: list[Tensor], feats_b: list[Tensor]) -> Tensor:
    """LPIPS without linear layers on any features: ``(M,)`` (:func:`unit_difference_maps` summed)."""
    return summed_means(unit_difference_maps(feats_a, feats_b))


def masked_layer_means(maps: list[Tensor], mask: Tensor) -> Tensor:
    """Sum over layers of each map's mean weighted by ``mask`` area-resized to the layer: ``(m,)``.

    A full mask gives each map's plain spatial mean (the unmasked distance).

    Example:
        >>> import torch
        >>> maps = [torch.arange(4.0).view(1, 1, 2, 2)]
        >>> left = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
        >>> masked_layer_means(maps, left).tolist(), masked_layer_means(maps, torch.ones(1, 1, 2, 2)).tolist()
        ([1.0], [1.5])
    """
    total = None
    for m in maps:
        w = resized_mask(mask, m)
        v = (m * w).flatten(1).sum(dim=1) / w.flatten(1).sum(dim=1)
        total = v if total is None else total + v
    return total


def _network_name(network: nn.Module) -> str:
    name = getattr(network, "identity", "") or type(network).__name__
    return f"{type(network).__name__} ({name})"


def require_layer_maps(network: nn.Module) -> Callable[[list[Tensor], list[Tensor]], list[Tensor]]:
    """``network.layer_maps``, or a clear :class:`NotImplementedError` when it has none.

    Raises:
        NotImplementedError: the network has no per-position form (DISTS).
    """
    method = getattr(network, "layer_maps", None)
    if method is None:
        masks = ("; ROI masks still work (`update(..., mask=...)`: mask-weighted statistics)"
                 if type(network).masked_distance is not FeatureDistanceNetwork.masked_distance else "")
        raise NotImplementedError(
            f"{_network_name(network)} has no per-position distance (no `layer_maps`), so no spatial "
            f"DFD map: maps work for LPIPS, ResNetFD, SSFD, TimmFD and VAEFD{masks}"
        )
    return method


def layer_maps(network: nn.Module, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
    """Per-layer, per-position contributions ``(M, 1, h_l, w_l)`` of ``network``'s distance.

    ``network.distance(fp, ft) == sum_l layer_maps_l.mean((-2, -1))``.

    Raises:
        NotImplementedError: the network has no per-position form (DISTS).
    """
    return require_layer_maps(network)(feats_preds, feats_target)


class FeatureDistanceNetwork(nn.Module, ABC):
    """A frozen encoder plus the distance computed on its features."""

    #: a short identity of architecture + weights + preprocessing, used to key feature caches.
    identity: str = ""
    #: what the *features* depend on (identity minus distance-only options): networks with equal
    #: ``features_identity`` and equal feature weights compute identical features, so they can
    #: share one encoder pass and one target-feature cache (empty: same as ``identity``).
    features_identity: str = ""
    #: names (prefixes) of parameters/buffers used only by :meth:`distance`, left out of the
    #: feature-weights digest (LPIPS' linear layers, DISTS' alpha/beta).
    head_prefixes: tuple[str, ...] = ()
    #: the smallest image side the encoder accepts (None: found by trying, see :meth:`minimum_size`).
    min_size: int | None = None

    @abstractmethod
    def prepare(self, images: Tensor) -> Tensor:
        """``(M, 1, H, W)`` images in [0, 1] (or raw, for normalization="none") -> network input."""

    @abstractmethod
    def features(self, x: Tensor) -> list[Tensor]:
        """Network input -> list of feature maps, each ``(M, C_l, H_l, W_l)``."""

    @abstractmethod
    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """Per-image distance ``(M,)`` between two feature lists."""

    def masked_distance(self, feats_preds: list[Tensor], feats_target: list[Tensor], mask: Tensor) -> Tensor:
        """Per-image distance ``(M,)`` over a region of interest.

        The default averages each of ``layer_maps`` over ``mask`` area-resized to that layer
        (:func:`masked_layer_means`); a network without a per-position form overrides this
        (DISTS: mask-weighted channel statistics). A full mask gives :meth:`distance`.

        Args:
            feats_preds: features of the predictions.
            feats_target: features of the targets.
            mask: ``(M, 1, H, W)`` float weights in [0, 1] at the input images' resolution, each
                image's mask non-empty.

        Raises:
            NotImplementedError: the network defines neither ``layer_maps`` nor its own
                ``masked_distance``.
        """
        if getattr(self, "layer_maps", None) is None:
            raise NotImplementedError(
                f"{_network_name(self)} cannot be masked: it defines neither `layer_maps` "
                "(per-position contributions) nor its own `masked_distance`"
            )
        return masked_layer_means(self.layer_maps(feats_preds, feats_target), mask)

    def forward(self, images: Tensor, options: EncoderOptions | None = None) -> list[Tensor]:
        """Features of ``(M, 1, H, W)`` images: :meth:`encode` (default options: fp32, contiguous).

        The pass calls the network (``network(images, options)``), so forward hooks see every
        encoder pass.
        """
        self.pin_eval()
        return self.encode(images, options)

    def encode(self, images: Tensor, options: EncoderOptions | None = None) -> list[Tensor]:
        """The eager encoder pass under ``options``: :meth:`prepare`, layout, precision, :meth:`features`.

        ``(M, 1, H, W)`` images in [0, 1] (or raw, for ``normalization="none"``) -> feature maps;
        with ``precision_in_use="bf16"`` the features run under ``torch.autocast(bfloat16)`` and
        come back as float32. The network itself holds no options: the pass
        (:class:`~lightning_dfd.encoders.encoder_pass.EncoderPass`) hands them in.
        """
        options = _DEFAULT_OPTIONS if options is None else options
        x = self.prepare(images.to(self.parameter_dtype))
        if options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if options.precision_in_use == "fp32":
            return self.features(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            feats = self.features(x)
        return [f.float() for f in feats]

    def minimum_size(self) -> int:
        """The smallest image side (pixels) this encoder accepts.

        :attr:`min_size` when the subclass states it; otherwise found once by encoding zero images
        of growing size on the CPU (an encoder that pools too often fails on small inputs).
        """
        if self.min_size is None:
            self.min_size = _probe_minimum_size(self)
        return self.min_size

    def pin_eval(self) -> None:
        """Put every submodule back in eval mode.

        Copies of some modules (torch.fx graph modules) come back in training mode.
        """
        for module in self.modules():
            if module.training:
                module.training = False

    def __setstate__(self, state: dict) -> None:  # noqa: D105 - deepcopy / unpickling
        super().__setstate__(state)
        self.pin_eval()

    @property
    def parameter_dtype(self) -> torch.dtype:
        """The floating dtype of the network's weights (float32 unless converted)."""
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def train(self, mode: bool = True) -> FeatureDistanceNetwork:
        """Always eval: dropout and batch-norm statistics of a metric never change."""
        return super().train(False)
