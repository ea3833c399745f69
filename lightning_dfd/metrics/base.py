"""One base class for every deep feature distance metric.

It owns the input contract (real/complex, ``(N, H, W)`` / ``(N, C, H, W)``), normalisation, NaN
policy, chunking, the states for ``reduction="mean"|"none"``, distributed sync (torchmetrics), and
keeps the frozen encoder out of the module tree: it follows ``.to(device)`` but is never in a
``state_dict`` nor among ``parameters()``, so checkpoints of a LightningModule stay small.
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.functional.dfd import CacheLookup, shared_feature_distances, validated_images
from lightning_dfd.metrics.sync import IdleRankSafeSync
from lightning_dfd.preprocess import (
    NAN_STRATEGIES,
    NORMALIZATIONS,
    REDUCTIONS,
    channels_per_image,
    check_choice,
)


def make_feature_cache(spec: bool | dict | TargetFeatureCache | None) -> TargetFeatureCache | None:
    """The ``feature_cache`` argument -> a cache or None; anything else is an error."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return TargetFeatureCache()
    if isinstance(spec, dict):
        return TargetFeatureCache(**spec)
    if isinstance(spec, TargetFeatureCache):
        return spec
    raise TypeError(f"Argument `feature_cache` must be a bool, a dict of TargetFeatureCache "
                    f"arguments or a TargetFeatureCache, but got {type(spec).__name__}")


def weights_digest(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> str:
    """A short BLAKE2 digest of every parameter and buffer of ``module`` (but names in ``skip``)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if skip and name.startswith(skip):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _empty(state: list | Tensor) -> bool:
    """A ``cat`` state is a list before sync and a tensor after it."""
    return isinstance(state, list) and not state


def expand_ids(ids: Tensor | None, n: int, channels: int, device: torch.device) -> Tensor | None:
    """Validate ``(N,)`` sample ids and repeat them for each channel image."""
    if ids is None:
        return None
    ids = torch.as_tensor(ids, device=device)
    if ids.ndim != 1 or ids.shape[0] != n or ids.is_floating_point() or ids.is_complex():
        raise ValueError(
            f"`sample_ids` must be an integer tensor of shape ({n},), but got "
            f"{ids.dtype} {tuple(ids.shape)}"
        )
    return ids.long().repeat_interleave(channels)


class DeepFeatureDistance(IdleRankSafeSync, Metric):
    """Mean (or per-image) distance between deep features of predictions and targets.

    Args:
        network: the frozen distance network (subclasses build it from their own arguments).
        reduction: ``"mean"`` over every image seen, or ``"none"`` for per-image values.
        normalization: ``"minmax"`` (each image by its own min/max), ``"target"`` (both by the
            target's) or ``"none"``.
        nan_strategy: non-finite predictions: ``"error"``, ``"ignore"`` (skip and count them in
            ``skipped``) or ``"propagate"``.
        max_batch: at most this many image pairs per encoder pass (bounds peak memory; None:
            the whole batch at once). The default 4 keeps LPIPS-VGG at 640x368 with batch 16 at
            about a third of the ``lpips`` package's peak, at the same speed as 8 on a CPU
            (``benchmarks/RESULTS.md``).
        feature_cache: reuse target features across epochs for updates that pass
            ``sample_ids``: True (a 2 GiB in-memory LRU), a dict of :class:`TargetFeatureCache`
            arguments (``{"max_bytes": ..., "directory": ...}``, e.g. from YAML), a
            :class:`TargetFeatureCache` (shareable between metrics), or None/False (off, default).
        channels_last: run the encoder in channels-last layout (faster; float-rounding changes).
        autocast: run the encoder under bf16 autocast (GPU; documented tolerance ~1e-2 relative).
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ...).
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    def __init__(
        self,
        network: FeatureDistanceNetwork,
        *,
        reduction: str = "mean",
        normalization: str = "minmax",
        nan_strategy: str = "error",
        max_batch: int | None = 4,
        feature_cache: bool | dict | TargetFeatureCache | None = None,
        channels_last: bool = False,
        autocast: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("reduction", reduction, REDUCTIONS)
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_choice("nan_strategy", nan_strategy, NAN_STRATEGIES)
        if max_batch is not None and (not isinstance(max_batch, int) or max_batch < 1):
            raise ValueError(f"Argument `max_batch` must be a positive integer or None, got {max_batch}")
        self.reduction = reduction
        self.normalization = normalization
        self.nan_strategy = nan_strategy
        self.max_batch = max_batch
        self.__dict__["_network"] = network  # not a registered submodule: see module docstring
        network.set_options(channels_last=channels_last, autocast=autocast)
        self.feature_cache = make_feature_cache(feature_cache)
        self._namespace: str | None = None
        #: set by :func:`lightning_dfd.metrics.shared.link_shared_encoders`
        self._share = None
        if reduction == "mean":
            self.add_state("sum_value", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        else:
            self.add_state("values", [], dist_reduce_fx="cat")
            self.add_state("ids", [], dist_reduce_fx="cat")
        self.add_state("skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def network(self) -> FeatureDistanceNetwork:
        """The frozen encoder + distance (kept out of ``state_dict`` and ``parameters()``)."""
        return self.__dict__["_network"]

    def _apply(self, fn, exclude_state=""):  # noqa: D102 - follows .to()/.cuda() moves
        this = super()._apply(fn, exclude_state)
        probe = fn(torch.zeros(1, device=self.network_device))
        self.network.to(device=probe.device)  # device moves only: dtype casts never reach it
        return this

    @property
    def network_device(self) -> torch.device:
        """Where the encoder's weights live."""
        for tensor in (*self.network.parameters(), *self.network.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def cache_namespace(self) -> str:
        """What a cached target feature depends on besides the image.

        The network's features identity and a digest of its feature weights (two random
        initialisations never share entries; LPIPS with and without linear layers do), the
        normalisation and the numeric options. Metrics with equal namespaces compute identical
        features and can share one encoder pass (:mod:`lightning_dfd.metrics.shared`).
        """
        if self._namespace is None:
            net = self.network
            self._namespace = (f"{net.features_identity or net.identity}|"
                               f"{weights_digest(net, net.head_prefixes)}|"
                               f"{self.normalization}|cl={net.channels_last}|ac={net.autocast}")
        return self._namespace

    def _distances(self, p: Tensor, t: Tensor, keep: Tensor, ids: Tensor | None,
                   channels: int) -> Tensor:
        """Per-image values of validated ``(M, 1, H, W)`` images (no state is touched)."""
        if self._share is not None:
            return self._share.distances(self, p, t, keep, ids, channels)
        return self.distances_for([self.network], p, t, keep, ids, channels)[0]

    def distances_for(self, networks: list[FeatureDistanceNetwork], p: Tensor, t: Tensor,
                      keep: Tensor, ids: Tensor | None, channels: int) -> list[Tensor]:
        """Per-image values for each of ``networks`` (identical features), one encoder pass.

        The pass uses this metric's options (normalisation, ``max_batch``) and feature cache.
        """
        lookup = None
        if self.feature_cache is not None and ids is not None:
            keys = [(int(i), k % channels) for k, i in enumerate(ids.tolist())]
            keys = [key for key, kept in zip(keys, keep.tolist(), strict=True) if kept]
            lookup = CacheLookup(self.feature_cache, self.cache_namespace, keys)
        if not keep.all():
            p, t = p[keep], t[keep]
        if p.shape[0] == 0:
            return [p.new_zeros(0) for _ in networks]
        return shared_feature_distances(networks, p, t, self.normalization, self.max_batch, lookup)

    def update(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None) -> None:
        """Score a batch.

        Args:
            preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
            target: same shape; complex when ``preds`` is complex.
            sample_ids: optional ``(N,)`` integer ids, kept with ``reduction="none"``.
        """
        p, t, keep = validated_images(preds, target, self.nan_strategy)
        channels = channels_per_image(preds)
        ids = expand_ids(sample_ids, preds.shape[0], channels, self.device)
        values = self._distances(p, t, keep, ids, channels)
        # Only now, with every check passed and every value computed, change the state.
        self.skipped += (~keep).sum().to(self.skipped.device)
        if self.reduction == "mean":
            self.sum_value = self.sum_value + values.double().sum()
            self.total += values.numel()
        else:
            self.values.append(values)
            if ids is not None:
                self.ids.append(ids[keep.to(ids.device)])

    def compute(self) -> Tensor:
        """Mean over every image seen (all processes), or the per-image values."""
        if self.reduction == "none":
            if _empty(self.values):
                return torch.zeros(0, device=self.device)
            return dim_zero_cat(self.values)
        if self.total == 0:
            warnings.warn(f"{type(self).__name__}.compute() called before any image was scored",
                          stacklevel=2)
            return torch.tensor(float("nan"), device=self.device)
        return (self.sum_value / self.total).float()

    def compute_per_image(self) -> dict[str, Tensor]:
        """``{"ids": ..., "values": ...}`` over all processes, sorted by id (``reduction="none"``)."""
        if self.reduction != "none":
            raise RuntimeError("compute_per_image() needs reduction='none'")
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):
            values = torch.zeros(0, device=self.device) if _empty(self.values) else dim_zero_cat(self.values)
            ids = None if _empty(self.ids) else dim_zero_cat(self.ids)
        if ids is None or ids.numel() != values.numel():
            raise RuntimeError("compute_per_image() needs `sample_ids` in every update()")
        order = torch.argsort(ids, stable=True)
        return {"ids": ids[order], "values": values[order]}

    def plot(self, val: Tensor | None = None, ax: Any = None) -> Any:
        """Plot a value (or the current ``compute()``) with torchmetrics' plotting helper.

        Example:
            >>> import torch
            >>> from lightning_dfd import ResNetFD
            >>> metric = ResNetFD(weights="random")
            >>> metric.update(torch.rand(2, 32, 32), torch.rand(2, 32, 32))
            >>> fig, ax = metric.plot()
        """
        return self._plot(val, ax)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"network={self.network.identity!r}, reduction={self.reduction!r}, "
                f"normalization={self.normalization!r}, nan_strategy={self.nan_strategy!r}")
