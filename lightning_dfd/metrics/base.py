"""One base class for every deep feature distance metric.

It owns the states for ``reduction="mean"|"none"``, the NaN policy for results, distributed sync
(torchmetrics), and the frozen encoder as a real submodule: ``self.network`` (encoder + distance)
inside ``self.encoder`` (the :class:`~lightning_dfd.metrics.encoder_pass.EncoderPass` that turns a
batch into features). The encoder follows ``.to(device)``, copies and pickling, is pinned to eval
mode, never gets gradients, never changes dtype (``.half()`` / ``.to(float64)`` leave it in
float32; use ``precision="bf16"``), and is kept out of ``state_dict()`` by state-dict hooks, so a
LightningModule checkpoint holds no encoder weights and loads strictly with or without them.

Each metric carries a ``fingerprint`` state (a digest of its identity: class, features, weights,
distance, options). torchmetrics' compute groups merge metrics whose states are equal after the
first update; different DFDs never have equal fingerprints, so a plain ``MetricCollection`` never
merges them, while truly identical DFDs may share states (correct sharing).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_dfd.catalog import is_dfd_name
from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.encoders.encoder_pass import (
    EncodedBatch,
    EncoderPass,
    FeatureCacheArg,
    expand_ids,
    input_versions,
    make_feature_cache,
    pass_key,
)
from lightning_dfd.encoders.identity import weights_digest
from lightning_dfd.encoders.options import CompileArg, EncoderOptions
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.masks import validated_mask
from lightning_dfd.metrics.sync import IdleRankSafeSync
from lightning_dfd.preprocess import REDUCTIONS, channels_per_image, check_choice
from lightning_dfd.spatial import SpatialDFDMixin

__all__ = ["DeepFeatureDistance", "is_dfd", "make_feature_cache", "weights_digest"]

#: bytes of the identity digest kept in the ``fingerprint`` state
_FINGERPRINT_BYTES = 8


def _empty(state: list | Tensor) -> bool:
    """A ``cat`` state is a list before sync and a tensor after it."""
    return isinstance(state, list) and not state


def _drop_encoder_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict hook: no tensor of the encoder submodules reaches ``state_dict()``."""
    children = tuple(f"{prefix}{name}." for name in module._modules)
    for key in [k for k in state_dict if k.startswith(children)]:
        del state_dict[key]
    metadata = getattr(state_dict, "_metadata", None)  # per-module versions: drop theirs too
    if metadata is not None:
        for key in [k for k in metadata if f"{k}.".startswith(children)]:
            del metadata[key]


def _keep_encoder_tensors(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load pre-hook: encoder keys in a checkpoint are ignored, the current tensors stand in.

    So strict loading works for checkpoints with or without encoder keys.
    """
    children = tuple(f"{prefix}{name}." for name in module._modules)
    for key in [k for k in state_dict if k.startswith(children)]:
        del state_dict[key]
    for name, child in module._modules.items():
        if child is not None:
            for key, tensor in child.state_dict(keep_vars=True).items():
                state_dict[f"{prefix}{name}.{key}"] = tensor


class PerItemValues:
    """States and results of a metric with one value per item (an image, a volume).

    ``reduction="mean"``: a float64 sum and a count; ``"none"``: the values and their ids, synced
    with ``cat``. Used by :class:`DeepFeatureDistance` (items: images, ids: ``sample_ids``) and
    :class:`~lightning_dfd.VolumeDFD` (volumes, ``volume_ids``).
    """

    item: str = "image"
    ids_argument: str = "sample_ids"

    def _add_value_states(self, reduction: str) -> None:
        add = self.add_state  # type: ignore[attr-defined]
        if reduction == "mean":
            add("sum_value", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            add("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        else:
            add("values", [], dist_reduce_fx="cat")
            add("ids", [], dist_reduce_fx="cat")
        add("skipped", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, values: Tensor, ids: Tensor | None, skipped: int) -> None:
        """Add checked values (the only place an update changes these states)."""
        self.skipped += skipped
        if self.reduction == "mean":  # type: ignore[attr-defined]
            self.sum_value = self.sum_value + values.double().sum()
            self.total += values.numel()
        else:
            self.values.append(values)
            if ids is not None:
                self.ids.append(ids)

    def compute(self) -> Tensor:
        """Mean over every item seen (all processes), or the per-item values."""
        device = self.device  # type: ignore[attr-defined]
        if self.reduction == "none":  # type: ignore[attr-defined]
            return torch.zeros(0, device=device) if _empty(self.values) else dim_zero_cat(self.values)
        if self.total == 0:
            warnings.warn(f"{type(self).__name__}.compute() called before any {self.item} was scored",
                          stacklevel=2)
            return torch.tensor(float("nan"), device=device)
        return (self.sum_value / self.total).float()

    def _per_item(self, method: str) -> dict[str, Tensor]:
        """``{"ids": ..., "values": ...}`` over all processes, sorted by id (``reduction="none"``)."""
        if self.reduction != "none":  # type: ignore[attr-defined]
            raise RuntimeError(f"{method}() needs reduction='none'")
        with self.sync_context(should_sync=self._to_sync, should_unsync=True):  # type: ignore[attr-defined]
            values = (torch.zeros(0, device=self.device) if _empty(self.values)  # type: ignore[attr-defined]
                      else dim_zero_cat(self.values))
            ids = None if _empty(self.ids) else dim_zero_cat(self.ids)
        if ids is None or ids.numel() != values.numel():
            raise RuntimeError(f"{method}() needs `{self.ids_argument}` in every update()")
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
        return self._plot(val, ax)  # type: ignore[attr-defined]


class FrozenEncoderMixin:
    """For a ``Metric`` whose submodules are a frozen encoder: out of checkpoints, moved by device only.

    :meth:`_keep_encoder_out_of_checkpoints` (call it in ``__init__``) drops the encoder's tensors
    from ``state_dict()`` and lets strict loading accept checkpoints with or without them;
    ``.to(dtype)`` / ``.double()`` change the metric states by torchmetrics' rules, never the
    encoder, which follows device moves only. Used by :class:`DeepFeatureDistance` and
    :class:`~lightning_dfd.FrechetDFD`.
    """

    def _keep_encoder_out_of_checkpoints(self) -> None:
        self._register_state_dict_hook(_drop_encoder_keys)  # type: ignore[attr-defined]
        # The public name arrived in torch 2.5; torch 2.4 has only the private one it wraps.
        if hasattr(self, "register_load_state_dict_pre_hook"):
            self.register_load_state_dict_pre_hook(_keep_encoder_tensors)
        else:  # torch < 2.5
            self._register_load_state_dict_pre_hook(_keep_encoder_tensors, with_module=True)  # type: ignore[attr-defined]

    def _apply(self, fn: Callable, exclude_state: Any = "") -> nn.Module:  # noqa: D102
        # States follow torchmetrics' rules; the encoder follows device moves only (never dtype).
        children = dict(self._modules)  # type: ignore[attr-defined]
        self._modules.clear()  # type: ignore[attr-defined]
        try:
            this = super()._apply(fn, exclude_state)  # type: ignore[misc]
        finally:
            self._modules.update(children)  # type: ignore[attr-defined]
        device = fn(torch.zeros(1, device=self.network_device)).device
        for child in {id(c): c for c in children.values() if c is not None}.values():
            child.to(device=device)
        return this

    @property
    def network_device(self) -> torch.device:
        """Where the encoder's weights live."""
        for tensor in (*self.network.parameters(), *self.network.buffers()):  # type: ignore[attr-defined]
            return tensor.device
        return torch.device("cpu")


def is_dfd(metric: object) -> bool:
    """The one test for "is this a deep feature distance": a metric instance or a catalog name.

    Example:
        >>> from lightning_dfd import PSNR
        >>> is_dfd("lpips_vgg"), is_dfd("psnr"), is_dfd(PSNR())
        (True, False, False)
    """
    if isinstance(metric, str):
        return is_dfd_name(metric)
    return isinstance(metric, DeepFeatureDistance)


class DeepFeatureDistance(IdleRankSafeSync, SpatialDFDMixin, FrozenEncoderMixin, PerItemValues, Metric):
    """Mean (or per-image) distance between deep features of predictions and targets.

    Args:
        network: the frozen distance network (subclasses build it from their own arguments).
        reduction: ``"mean"`` over every image seen, or ``"none"`` for per-image values.
        normalization: ``"minmax"`` (each image by its own min/max), ``"target"`` (both by the
            target's) or ``"none"``.
        nan_strategy: non-finite predictions, and non-finite results of finite inputs (an
            encoder overflow, e.g. ``normalization="none"`` with huge values): ``"error"``,
            ``"ignore"`` (skip and count them in ``skipped``) or ``"propagate"``.
        max_batch: at most this many image pairs per encoder pass (bounds peak memory; None:
            the whole batch at once). The default 4 keeps LPIPS-VGG at 640x368 with batch 16 at
            about a third of the ``lpips`` package's peak, at the same speed as 8 on a CPU
            (``benchmarks/RESULTS.md``).
        feature_cache: reuse target features across epochs for updates that pass
            ``sample_ids``: True (a 2 GiB in-memory LRU), a dict of :class:`TargetFeatureCache`
            arguments (``{"max_bytes": ..., "directory": ...}``, e.g. from YAML), a
            :class:`TargetFeatureCache` (shareable between metrics), or None/False (off, default).
        channels_last: run the encoder in channels-last layout (faster; float-rounding changes).
        precision: ``"fp32"`` (default: exact parity with the references) or ``"bf16"``: the
            encoder runs under ``torch.autocast(bfloat16)`` on the CPU or GPU (fast on CPUs with
            AMX / AVX512-BF16 and on GPUs), features are returned in float32 and distances are
            computed in fp32 (about 1e-2 relative difference). Part of the cache namespace.
        compile: ``torch.compile`` the encoder for gradient-free updates: False (default), True
            (inductor with frozen weights; on a CPU 1.1-1.3x faster in fp32, ~2x in bf16, values
            within 2e-6 in fp32; the first update of each input shape compiles for 1-2 min) or a
            backend name. Never in the state dict; copies compile their own (``benchmarks/RESULTS.md``).
        kwargs: passed to :class:`torchmetrics.Metric` (``sync_on_compute``, ...).
    """

    is_differentiable = True
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0
    #: torchmetrics' ``FeatureShare`` shares this attribute between metrics.
    feature_network = "encoder"

    def __init__(
        self,
        network: FeatureDistanceNetwork,
        *,
        reduction: str = "mean",
        normalization: str = "minmax",
        nan_strategy: str = "error",
        max_batch: int | None = 4,
        feature_cache: FeatureCacheArg = None,
        channels_last: bool = False,
        precision: str = "fp32",
        compile: CompileArg = False,
        **kwargs: Any,
    ) -> None:
        if "autocast" in kwargs:  # the former name of precision="bf16"
            warnings.warn("`autocast` is deprecated: use precision='bf16'", DeprecationWarning, stacklevel=3)
            precision = "bf16" if kwargs.pop("autocast") else precision
        super().__init__(**kwargs)
        check_choice("reduction", reduction, REDUCTIONS)
        options = EncoderOptions(normalization=normalization, nan_strategy=nan_strategy,
                                 max_batch=max_batch, precision=precision,
                                 channels_last=channels_last, compile=compile)
        self.reduction = reduction
        self.network = network
        self.encoder = EncoderPass(network, options, feature_cache=feature_cache)
        # Equal on every process, different for different DFDs: see the module docstring. The
        # first state, as torchmetrics < 1.6.2 compares only the first state of two metrics.
        self.add_state("fingerprint", torch.zeros(_FINGERPRINT_BYTES, dtype=torch.long),
                       dist_reduce_fx="max")
        self._add_value_states(reduction)
        self._keep_encoder_out_of_checkpoints()

    # ------------------------------------------------------------------ options (one object)
    @property
    def options(self) -> EncoderOptions:
        """The immutable options of this metric's encoder pass."""
        return self.encoder_pass.options

    @property
    def normalization(self) -> str:
        """``"minmax"``, ``"target"`` or ``"none"`` (see :class:`EncoderOptions`)."""
        return self.options.normalization

    @property
    def nan_strategy(self) -> str:
        """``"error"``, ``"ignore"`` or ``"propagate"`` (see :class:`EncoderOptions`)."""
        return self.options.nan_strategy

    @property
    def max_batch(self) -> int | None:
        """Image pairs per encoder pass (see :class:`EncoderOptions`)."""
        return self.options.max_batch

    @property
    def precision(self) -> str:
        """The precision the encoder runs in (``"auto"`` decided): ``"fp32"`` or ``"bf16"``."""
        return self.options.precision_in_use

    @property
    def channels_last(self) -> bool:
        """Whether the encoder runs in channels-last layout."""
        return self.options.channels_last

    # ------------------------------------------------------------------ encoder plumbing
    @property
    def encoder_pass(self) -> EncoderPass:
        """The :class:`EncoderPass` in use (``FeatureShare`` wraps it in a ``NetworkCache``)."""
        encoder = self.encoder
        return encoder if isinstance(encoder, EncoderPass) else encoder.network

    @property
    def feature_cache(self) -> TargetFeatureCache | None:
        """The target-feature cache of this metric's encoder pass (None: off)."""
        return self.encoder_pass.feature_cache

    @feature_cache.setter
    def feature_cache(self, spec: FeatureCacheArg) -> None:
        """Replace the cache (same forms as the ``feature_cache`` argument; e.g. one shared cache)."""
        self.encoder_pass.feature_cache = make_feature_cache(spec)

    @property
    def cache_namespace(self) -> str:
        """What a cached target feature depends on besides the image (live: see :func:`pass_key`)."""
        return self.sharing_key[0]

    @property
    def sharing_key(self) -> tuple:
        """Metrics with equal keys compute identical features and validate inputs identically.

        Derived from this metric's own network and options at every call (never remembered), so
        a weight change is seen at once.
        """
        return pass_key(self.network, self.options)

    def _sync_fingerprint(self) -> None:
        """Set the ``fingerprint`` state from the live identity (class, features, heads, reduction)."""
        net = self.network
        identity = repr((type(self).__qualname__, self.sharing_key, net.identity, self.reduction,
                         weights_digest(net, only=net.head_prefixes) if net.head_prefixes else ""))
        digest = hashlib.blake2b(identity.encode(), digest_size=_FINGERPRINT_BYTES).digest()
        value = torch.tensor(list(digest), dtype=torch.long, device=self.device)
        if not torch.equal(self._defaults["fingerprint"].to(value.device), value):
            self._defaults["fingerprint"] = value.clone()
            self.fingerprint = value

    def _encode(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None) -> EncodedBatch:
        batch = self.encoder(preds, target, sample_ids, input_versions(preds, target, sample_ids))
        if batch.network is not self.network and batch.key != self.sharing_key:
            raise ValueError(
                f"{type(self).__name__} was given a shared encoder that computes other features "
                f"({batch.key[0]!r} vs its own {self.sharing_key[0]!r}): share encoders only "
                "between metrics with identical features (lightning_dfd.metrics.DFDCollection does)"
            )
        return batch

    def _values(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None,
                mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None, int]:
        """Checked per-image values of a batch: ``(values, keep, ids, skipped)``; no state changes.

        ``values`` and ``ids`` hold the scored images (kept by the NaN policy and finite), ``keep``
        is the NaN policy's ``(M,)`` mask over every image, ``skipped`` how many were dropped.
        """
        weights = None if mask is None else validated_mask(mask, preds)  # before any encoder work
        batch = self._encode(preds, target, sample_ids)
        keep = batch.keep
        values = batch.distances(self.network, None if weights is None else weights[keep.to(weights.device)])
        ids = expand_ids(sample_ids, preds.shape[0], channels_per_image(preds), keep.device)
        ids = None if ids is None else ids[keep.to(ids.device)]
        skipped = int((~keep).sum())
        bad = ~torch.isfinite(values.detach())
        if self.nan_strategy != "propagate" and bool(bad.any()):
            images = keep.nonzero().flatten()[bad.to(keep.device)].tolist()
            if self.nan_strategy == "error":
                raise ValueError(
                    f"{type(self).__name__} is not finite (NaN or inf) for images {images} (of "
                    f"{keep.numel()}, counted over batch x channels) although the inputs are finite: "
                    f"the encoder overflowed (normalization={self.normalization!r}; 'minmax' scales "
                    "inputs to [0, 1]); pass nan_strategy='ignore' to skip such images"
                )
            values = values[~bad]
            ids = None if ids is None else ids[~bad.to(ids.device)]
            skipped += len(images)
        return values, keep, ids, skipped

    # ------------------------------------------------------------------ metric API
    def validate(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None,
                 mask: Tensor | None = None) -> None:
        """Raise the input error :meth:`update` would raise for this batch; change nothing."""
        self.encoder_pass.prepare(preds, target, sample_ids, mask)

    def update(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None,
               mask: Tensor | None = None) -> None:
        """Score a batch.

        Args:
            preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
            target: same shape; complex when ``preds`` is complex.
            sample_ids: optional ``(N,)`` integer ids, kept with ``reduction="none"`` (and the
                keys of the feature cache).
            mask: optional boolean ROI mask ``(N, H, W)`` or ``(N, C, H, W)``: each layer's
                feature-distance map is averaged over the mask resized to that layer (DISTS:
                mask-weighted channel statistics; :mod:`lightning_dfd.spatial`). The same encoder
                pass as unmasked updates: the feature cache and shared passes are used.
        """
        self._sync_fingerprint()
        values, _, ids, skipped = self._values(preds, target, sample_ids, mask)
        # Only now, with every check passed and every value computed, change the state.
        self._accumulate(values, ids, skipped)

    def score(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-image values of one batch, ``(N * C,)``, without touching any state.

        The value :meth:`update` would add for each image (NaN for an image the NaN policy
        skips), differentiable in ``preds``: what :class:`~lightning_dfd.VolumeDFD` and
        :class:`~lightning_dfd.DFDLoss` build on.

        Example:
            >>> import torch
            >>> from lightning_dfd import ResNetFD
            >>> metric = ResNetFD(weights="random")
            >>> x = torch.rand(3, 32, 32)
            >>> metric.score(x, x).tolist(), metric.update_count
            ([0.0, 0.0, 0.0], 0)
        """
        weights = None if mask is None else validated_mask(mask, preds)
        batch = self._encode(preds, target, None)
        keep = batch.keep
        values = batch.distances(self.network, None if weights is None else weights[keep.to(weights.device)])
        if self.nan_strategy == "error" and not bool(torch.isfinite(values.detach()).all()):
            self._values(preds, target, None, mask)  # raises the update's error
        return batch.scatter(values)

    def compute_per_image(self) -> dict[str, Tensor]:
        """``{"ids": ..., "values": ...}`` over all processes, sorted by id (``reduction="none"``)."""
        return self._per_item("compute_per_image")

    def extra_repr(self) -> str:  # noqa: D102
        return f"network={self.network.identity!r}, reduction={self.reduction!r}, {self.options.describe()}"
