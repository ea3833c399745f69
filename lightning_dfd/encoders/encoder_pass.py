"""One encoder pass over a batch: the single loop behind every score, masked score and map.

:class:`EncoderPass` turns a ``(preds, target)`` batch into features under one immutable
:class:`~lightning_dfd.encoders.options.EncoderOptions`: input checks and the NaN policy, the
image-size check, normalisation, chunking (``max_batch``), the target-feature cache, precision,
layout and ``torch.compile``. It returns an :class:`EncodedBatch`, and everything a DFD computes
comes from those features: :meth:`EncodedBatch.distances` (per-image values, optionally over a
region-of-interest mask) and :meth:`EncodedBatch.maps` (per-pixel maps). Metrics
(:mod:`lightning_dfd.metrics`), the functional forms (:mod:`lightning_dfd.functional`) and the
spatial helpers (:mod:`lightning_dfd.spatial`) all go through it.

**One identity.** :attr:`EncoderPass.key` is derived from the network's live weights
(:func:`~lightning_dfd.encoders.identity.weights_digest`) and the options at every use: it names
the cache namespace (a weight change is a new namespace, never a stale feature), the compiled
graph (rebuilt when any parameter or buffer changed) and the sharing key.

**One pass, many uses.** Inside :func:`sharing` (what :class:`~lightning_dfd.metrics.DFDCollection`
opens for each update) passes with equal keys share a memo: a batch is encoded once and its
features serve every member, and any later call on the same, unmodified tensors (a masked score,
a map of the batch just scored) reuses them.

Example:
    >>> import torch
    >>> from lightning_dfd.encoders.resnet import ResNetFDNetwork
    >>> mse = ResNetFDNetwork(weights="random")
    >>> mae = ResNetFDNetwork(weights="random", distance="mae")
    >>> encoder = EncoderPass(mse, max_batch=2)
    >>> batch = encoder(torch.rand(3, 32, 32), torch.rand(3, 32, 32))  # one encoder pass
    >>> batch.distances(mse).shape, batch.distances(mae).shape  # two distances on its features
    (torch.Size([3]), torch.Size([3]))
    >>> batch.maps(mse).shape  # per-pixel maps from the same features
    torch.Size([3, 1, 32, 32])
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dfd.encoders.base import FeatureDistanceNetwork, require_layer_maps
from lightning_dfd.encoders.identity import state_token, weights_digest
from lightning_dfd.encoders.options import EncoderOptions
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.masks import validated_mask
from lightning_dfd.preprocess import channels_per_image, normalize_pair, real_pair_hint, validated_images

__all__ = ["Chunk", "EncodedBatch", "EncoderPass", "FeatureCacheArg", "PreparedBatch", "expand_ids",
           "input_versions", "make_feature_cache", "pass_key", "sharing", "validated_mask"]

FeatureCacheArg = bool | dict | TargetFeatureCache | None


def make_feature_cache(spec: FeatureCacheArg) -> TargetFeatureCache | None:
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


def expand_ids(ids: Tensor | None, n: int, channels: int, device: torch.device) -> Tensor | None:
    """Validate ``(N,)`` sample ids and repeat them for each channel image."""
    if ids is None:
        return None
    ids = torch.as_tensor(ids, device=device)
    if ids.ndim != 1 or ids.shape[0] != n or ids.is_floating_point() or ids.is_complex() \
            or ids.dtype == torch.bool:
        raise ValueError(
            f"`sample_ids` must be an integer tensor of shape ({n},), but got "
            f"{ids.dtype} {tuple(ids.shape)}"
        )
    return ids.long().repeat_interleave(channels)


def input_versions(*tensors: Tensor | None) -> tuple:
    """What identifies a batch besides the tensor objects: in-place version counters, grad mode."""
    return (*(_version(t) for t in tensors), torch.is_grad_enabled())


def _version(tensor: Tensor | None) -> int | None:
    # inference-mode tensors keep no version counter (and cannot be modified outside it)
    if not isinstance(tensor, Tensor) or tensor.is_inference():
        return None
    return tensor._version


def pass_key(network: FeatureDistanceNetwork, options: EncoderOptions) -> tuple:
    """``(cache namespace, nan_strategy, max_batch)`` of ``network`` under ``options``, live.

    Passes with equal keys compute identical features and validate inputs identically, so they
    are interchangeable. The namespace names what a cached target feature depends on besides the
    image: the network's features identity, a digest of its feature weights *as they are now*,
    normalisation, layout, precision and compilation.
    """
    normalization, precision, channels_last, compile = options.key
    namespace = (f"{network.features_identity or network.identity}|"
                 f"{weights_digest(network, network.head_prefixes)}|"
                 f"{normalization}|cl={channels_last}|p={precision}"
                 + (f"|compile={compile}" if compile else ""))  # compiled rounding differs
    return (namespace, options.nan_strategy, options.max_batch)


def _ensure_layout(network: nn.Module, channels_last: bool) -> None:
    """Weights in the layout the options ask for (converted once; values unchanged)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if all(p.is_contiguous(memory_format=layout) for p in network.parameters() if p.ndim == 4):
        return
    network.to(memory_format=layout)


@dataclass
class PreparedBatch:
    """A validated batch: ``(M, 1, H, W)`` images, the images kept, their mask weights."""

    preds: Tensor
    target: Tensor
    keep: Tensor  #: ``(M,)`` boolean: the images to score (``nan_strategy="ignore"`` drops some)
    channels: int
    ids: Tensor | None  #: ``(M,)`` per-image sample ids (repeated per channel), or None
    mask: Tensor | None  #: ``(M, 1, H, W)`` float ROI weights, or None


@dataclass
class Chunk:
    """Features of up to ``max_batch`` kept images.

    With ``batched`` the target features are one list of ``(B, ...)`` maps; otherwise a list
    (one per image) of per-image feature lists (views of cached features, never stacked).
    """

    start: int
    preds: list[Tensor]
    target: list
    batched: bool

    def apply(self, fn: Callable[..., Tensor], mask: Tensor | None) -> Tensor:
        """``fn(feats_preds, feats_target[, mask])`` over the chunk's images: ``(B, ...)``."""
        n = self.preds[0].shape[0]
        rows = None if mask is None else mask[self.start:self.start + n]
        if self.batched:
            return fn(self.preds, self.target) if rows is None else fn(self.preds, self.target, rows)
        out = []
        for i, feats in enumerate(self.target):
            fp, ft = [f[i:i + 1] for f in self.preds], [f.unsqueeze(0) for f in feats]
            out.append(fn(fp, ft) if rows is None else fn(fp, ft, rows[i:i + 1]))
        return torch.cat(out)


@dataclass
class EncodedBatch:
    """Features of the kept images of one batch, chunk by chunk, and what they serve."""

    key: tuple
    network: FeatureDistanceNetwork
    keep: Tensor  #: ``(M,)`` boolean over every image of the batch
    size: tuple[int, int]  #: ``(H, W)`` of the images
    chunks: list[Chunk]
    empty: Tensor  #: a zero-length tensor on the batch's device (value when nothing was kept)

    def distances(self, head: FeatureDistanceNetwork, mask: Tensor | None = None) -> Tensor:
        """``head``'s per-image values ``(M_kept,)`` in fp32.

        With ``mask`` (the kept images' ROI weights, ``(M_kept, 1, H, W)``), its
        :meth:`~FeatureDistanceNetwork.masked_distance` instead.
        """
        if mask is None:
            out = [chunk.apply(head.distance, None) for chunk in self.chunks]
        else:
            mask = mask.to(self.empty.device)
            out = [chunk.apply(head.masked_distance, mask) for chunk in self.chunks]
        return torch.cat(out) if out else self.empty

    def maps(self, head: FeatureDistanceNetwork) -> Tensor:
        """Per-pixel contributions ``(M_kept, 1, H, W)`` of ``head``'s distance, at image size.

        Each layer map is upsampled bilinearly (``align_corners=False``, as
        ``lpips.LPIPS(spatial=True)``) and the layers are summed.

        Raises:
            NotImplementedError: ``head`` has no per-position form (DISTS).
        """
        maps_of = require_layer_maps(head)

        def upsampled(fp: list[Tensor], ft: list[Tensor]) -> Tensor:
            return upsample_maps(maps_of(fp, ft), self.size)

        out = [chunk.apply(upsampled, None) for chunk in self.chunks]
        return torch.cat(out) if out else self.empty.new_zeros(0, 1, *self.size)

    def scatter(self, values: Tensor, fill: float = float("nan")) -> Tensor:
        """Values of the kept images placed back among all ``M`` images (``fill`` for dropped ones)."""
        if bool(self.keep.all()):
            return values
        out = values.new_full((self.keep.numel(), *values.shape[1:]), fill)
        out[self.keep.to(values.device)] = values
        return out


def upsample_maps(maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Sum over layers of the maps upsampled to ``size`` (bilinear, as ``lpips`` spatial=True)."""
    total = None
    for m in maps:
        up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    return total


class EncoderPass(nn.Module):
    """One encoder pass over a batch (checks, normalisation, chunking, cache, precision, compile).

    A submodule of its metric (so ``.to()``, copies and pickling carry it) whose tensors are the
    network's; the metric keeps them out of its ``state_dict``. It holds no mutable option: the
    options are one :class:`~lightning_dfd.encoders.options.EncoderOptions`.

    Args:
        network: the frozen encoder + distance.
        options: how the pass runs; or give its fields as keywords (``max_batch=4``, ...).
        feature_cache: a :class:`TargetFeatureCache` (or its spec) for target features of updates
            that pass ``sample_ids``; None: off.
    """

    def __init__(self, network: FeatureDistanceNetwork, options: EncoderOptions | None = None, *,
                 feature_cache: FeatureCacheArg = None, **fields: Any) -> None:
        super().__init__()
        if options is not None and fields:
            raise TypeError(f"EncoderPass takes `options` or its fields {sorted(fields)}, not both")
        self.network = network
        self.options = options if options is not None else EncoderOptions(**fields)
        self.feature_cache = make_feature_cache(feature_cache)
        self._memo: dict | None = None

    @property
    def key(self) -> tuple:
        """``(cache namespace, nan_strategy, max_batch)``, from the live weights: :func:`pass_key`."""
        return pass_key(self.network, self.options)

    @property
    def namespace(self) -> str:
        """What a cached target feature depends on besides the image (see :func:`pass_key`)."""
        return self.key[0]

    def prepare(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None,
                mask: Tensor | None = None) -> PreparedBatch:
        """Check a batch (raising the error an update would) and flatten it to grayscale images."""
        p, t, keep = validated_images(preds, target, self.options.nan_strategy)
        smallest = self.network.minimum_size()
        if min(p.shape[-2:]) < smallest:
            raise ValueError(
                f"{type(self.network).__name__} ({self.network.identity}) needs images of at least "
                f"{smallest}x{smallest} pixels, but got {tuple(p.shape[-2:])}{real_pair_hint(preds)}"
            )
        channels = channels_per_image(preds)
        ids = expand_ids(sample_ids, preds.shape[0], channels, keep.device)
        weights = None if mask is None else validated_mask(mask, preds)
        return PreparedBatch(p, t, keep, channels, ids, weights)

    def forward(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None,
                versions: tuple | None = None) -> EncodedBatch:
        """Encode a batch (once per batch and key inside :func:`sharing`).

        Args:
            preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
            target: same shape.
            sample_ids: optional ``(N,)`` integer ids (keys of the feature cache).
            versions: :func:`input_versions` of the inputs (part of the per-batch memo key; given
                by callers that wrap the pass in torchmetrics' ``FeatureShare`` cache).
        """
        versions = input_versions(preds, target) if versions is None else versions
        key = self.key
        memo_key = (id(preds), id(target), versions[:2], torch.is_grad_enabled(), key)
        if self._memo is not None and self._memo.get("key") == memo_key:
            return self._memo["batch"]
        batch = self.encode(self.prepare(preds, target, sample_ids), key)
        if self._memo is not None:  # hold the inputs: their ids stay unique while memoised
            self._memo.update(key=memo_key, batch=batch, inputs=(preds, target))
        return batch

    def encode(self, prepared: PreparedBatch, key: tuple | None = None) -> EncodedBatch:
        """Normalise, chunk and encode the kept images; read and fill the feature cache."""
        key = self.key if key is None else key
        keep, ids = prepared.keep, prepared.ids
        p, t = prepared.preds, prepared.target
        keys = None
        if self.feature_cache is not None and ids is not None:
            channels = prepared.channels
            keys = [(int(i), k % channels) for k, i in enumerate(ids.tolist())]
            keys = [k for k, kept in zip(keys, keep.tolist(), strict=True) if kept]
        if not keep.all():
            p, t = p[keep], t[keep]
        chunks = self._encode_chunks(p, t, keys, key[0]) if p.shape[0] else []
        return EncodedBatch(key, self.network, keep, tuple(p.shape[-2:]), chunks, p.new_zeros(0))

    def _run(self, images: Tensor) -> list[Tensor]:
        """The network on normalised images: compiled when asked and gradient-free, else eager."""
        network, options = self.network, self.options
        _ensure_layout(network, options.channels_last)
        if options.compile and not torch.is_grad_enabled():
            return self._compiled_encoder()(images)
        return network(images, options)

    def _encode_chunks(self, preds: Tensor, target: Tensor, keys: list | None, namespace: str) -> list[Chunk]:
        cache = self.feature_cache
        p01, t01 = normalize_pair(preds, target, self.options.normalization)
        m = p01.shape[0]
        step = self.options.max_batch or m
        needs_grad = torch.is_grad_enabled() and p01.requires_grad
        chunks = []
        for start in range(0, m, step):
            rows = slice(start, min(start + step, m))
            pc, tc = p01[rows], t01[rows]
            cached = ([None] * tc.shape[0] if keys is None else
                      [cache.get(namespace, k, image) for k, image in zip(keys[rows], tc, strict=True)])
            missing = [i for i, f in enumerate(cached) if f is None]
            with torch.no_grad():
                if needs_grad:
                    new = self._run(tc[missing]) if missing else None
                else:  # one batched pass over the predictions and the missing targets
                    both = self._run(torch.cat([pc, tc[missing]])) if missing else self._run(pc)
                    n = pc.shape[0]
                    fp, new = ([f[:n] for f in both], [f[n:] for f in both]) if missing else (both, None)
            if needs_grad:
                fp = self._run(pc)
            if keys is not None:
                for j, i in enumerate(missing):
                    cache.put(namespace, keys[rows][i], tc[i], [f[j] for f in new])
            if len(missing) == len(cached):
                chunks.append(Chunk(start, fp, new, True))
                continue
            for j, i in enumerate(missing):
                cached[i] = [f[j] for f in new]
            chunks.append(Chunk(start, fp, cached, False))
        return chunks

    def _compiled_encoder(self) -> Callable[[Tensor], list[Tensor]]:
        """The network's ``encode`` under ``torch.compile`` (``dynamic=False``), built on first use.

        One compiled form per (device, options, live weights): moving the network, or changing any
        parameter or buffer (``load_state_dict``, an in-place op, ``.data =``, a new ``Parameter``)
        builds a new one, so frozen-in weights are never stale. Each new input shape compiles
        again (on a CPU with inductor, ~1-2 min per shape for VGG-16 / ResNet-50; torch's
        recompile limit then falls back to eager): keep chunks at one size (``max_batch``). The
        compiled form is never pickled or copied (copies compile their own).
        """
        network, options = self.network, self.options
        key = (options.key, state_token(network))
        built = self.__dict__.get("_compiled")
        if built is None or built[0] != key:
            if "isolate_recompiles" not in inspect.signature(torch.compile).parameters:
                raise RuntimeError(f"compile={options.compile!r} needs a torch whose torch.compile has "
                                   f"`isolate_recompiles` (2.14 has; this is {torch.__version__})")
            backend = "inductor" if options.compile is True else options.compile

            def run(images: Tensor) -> list[Tensor]:
                return network(images, options)

            # Its own cache region: a rebuild recompiles (fresh frozen weights), and one pass's
            # shapes never use up another's recompile limit.
            fn = torch.compile(run, backend=backend, dynamic=False, isolate_recompiles=True)
            built = (key, fn)
            self.__dict__["_compiled"] = built
        fn = built[1]
        if options.compile is not True:
            return fn

        def call(images: Tensor) -> list[Tensor]:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=True):  # weights as constants (gradient-free only)
                return fn(images)

        return call

    @contextlib.contextmanager
    def shared_batch(self) -> Iterator[None]:
        """Inside, a batch passed again (same tensors, unmodified) is not encoded again."""
        with sharing([self]):
            yield

    def __getstate__(self) -> dict:  # noqa: D105 - copies never carry a batch in flight or a graph
        state = self.__dict__.copy()
        state["_memo"] = None
        state.pop("_compiled", None)
        return state

    def extra_repr(self) -> str:  # noqa: D102
        return (f"{self.options.describe()}, "
                f"cache={'on' if self.feature_cache is not None else 'off'}")


@contextlib.contextmanager
def sharing(passes: Sequence[EncoderPass]) -> Iterator[None]:
    """Passes with equal live keys share one memo: a batch is encoded once for all of them.

    Groups are formed on entry from each pass's current :attr:`EncoderPass.key` (so a weight
    change between updates regroups, never shares stale features); a pass already inside a scope
    keeps that scope's memo (nested scopes join the outer one); every pass gets back what it had
    on exit.
    """
    unique = list({id(p): p for p in passes}.values())
    saved = [(p, p._memo) for p in unique]
    memos: dict[tuple, dict] = {}
    try:
        for p in unique:
            if p._memo is None:  # a pass already in a scope keeps it (nested scopes join the outer)
                p._memo = memos.setdefault(p.key, {})
        yield
    finally:
        for p, memo in saved:
            p._memo = memo
