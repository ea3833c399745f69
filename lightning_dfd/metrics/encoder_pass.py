"""One encoder pass over a batch: the single update path of every deep feature distance.

:class:`EncoderPass` is the object a DFD metric owns (``metric.encoder``) that turns a
``(preds, target)`` batch into features: input checks and the NaN policy, the image-size check,
normalisation, chunking (``max_batch``), the target-feature cache and the encoder precision. It
returns an :class:`EncodedBatch`, to which any distance head computing on the same features is
applied (:meth:`EncodedBatch.distances`). The metric only turns those values into states; the
functional forms (:mod:`lightning_dfd.functional`) use the same pass without a cache.

Metrics with identical features (LPIPS with and without its linear layers, ResNetFD with MSE and
MAE) can share one pass: :func:`share_encoders` points them at one :class:`EncoderPass` (what
torchmetrics' ``FeatureShare`` does with ``feature_network``), and inside :func:`sharing` the pass
encodes a batch once and hands the same features to every member. ``FeatureShare`` itself works
too (its cache is keyed by the input tensors and their version counters, so an input modified in
place is encoded again).

Example:
    >>> import torch
    >>> from lightning_dfd.encoders.resnet import ResNetFDNetwork
    >>> mse = ResNetFDNetwork(weights="random")
    >>> mae = ResNetFDNetwork(weights="random", distance="mae")
    >>> _ = mae.load_state_dict(mse.state_dict())
    >>> encoder = EncoderPass(mse, max_batch=2)
    >>> batch = encoder(torch.rand(3, 32, 32), torch.rand(3, 32, 32))  # one encoder pass
    >>> batch.distances(mse).shape, batch.distances(mae).shape  # two distances on its features
    (torch.Size([3]), torch.Size([3]))
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_dfd.encoders.base import PRECISIONS, CompileArg, FeatureDistanceNetwork
from lightning_dfd.feature_cache import TargetFeatureCache
from lightning_dfd.preprocess import (
    NAN_STRATEGIES,
    NORMALIZATIONS,
    channels_per_image,
    check_choice,
    normalize_pair,
    real_pair_hint,
    validated_images,
)

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


def weights_digest(module: nn.Module, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> str:
    """A short BLAKE2 digest of the parameters and buffers of ``module``.

    Args:
        module: the network.
        skip: leave out names starting with one of these prefixes.
        only: if given, digest only names starting with one of these prefixes.
    """
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if (skip and name.startswith(skip)) or (only is not None and not name.startswith(only)):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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


def input_versions(*tensors: Tensor | None) -> tuple:
    """What identifies a batch besides the tensor objects: in-place version counters, grad mode."""
    return (*(_version(t) for t in tensors), torch.is_grad_enabled())


def _version(tensor: Tensor | None) -> int | None:
    # inference-mode tensors keep no version counter (and cannot be modified outside it)
    if not isinstance(tensor, Tensor) or tensor.is_inference():
        return None
    return tensor._version


@dataclass
class PreparedBatch:
    """A validated batch: ``(M, 1, H, W)`` images, the images kept, their ids."""

    preds: Tensor
    target: Tensor
    keep: Tensor  #: ``(M,)`` boolean: the images to score (``nan_strategy="ignore"`` drops some)
    ids: Tensor | None  #: ``(M,)`` per-image sample ids (repeated per channel), or None
    channels: int


@dataclass
class EncodedBatch:
    """Features of the kept images of one batch, chunk by chunk, ready for a distance head.

    Each chunk is ``(pred_features, target_features, batched)``: with ``batched`` the target
    features are one list of ``(B, ...)`` maps, otherwise a list (one per image) of per-image
    feature lists (views of cached features, never stacked into a copy).
    """

    key: tuple
    network: FeatureDistanceNetwork
    keep: Tensor
    ids: Tensor | None  #: ids of the kept images, or None
    chunks: list[tuple[list[Tensor], list, bool]]
    empty: Tensor  #: a zero-length tensor on the batch's device (value when nothing was kept)

    def distances(self, head: FeatureDistanceNetwork) -> Tensor:
        """``head``'s per-image values ``(M_kept,)``, in fp32, for features of this batch."""
        out = []
        for fp, ft, batched in self.chunks:
            if batched:
                out.append(head.distance(fp, ft))
            else:  # image by image against views of cached maps
                out.append(torch.cat([
                    head.distance([f[i : i + 1] for f in fp], [f.unsqueeze(0) for f in feats])
                    for i, feats in enumerate(ft)
                ]))
        return torch.cat(out) if out else self.empty


def pass_key(network: FeatureDistanceNetwork, normalization: str, nan_strategy: str,
             max_batch: int | None, precision: str, channels_last: bool,
             compile: CompileArg = False) -> tuple:
    """What a pass's features and checks depend on: passes with equal keys are interchangeable."""
    namespace = (f"{network.features_identity or network.identity}|"
                 f"{weights_digest(network, network.head_prefixes)}|"
                 f"{normalization}|cl={channels_last}|p={precision}"
                 + (f"|compile={compile}" if compile else ""))  # compiled rounding differs
    return (namespace, nan_strategy, max_batch)


class EncoderPass(nn.Module):
    """One encoder pass over a batch (checks, normalisation, chunking, cache, precision).

    A submodule of its metric (so ``.to()``, copies and pickling carry it) whose tensors are the
    network's; the metric keeps them out of its ``state_dict``.

    Args:
        network: the frozen encoder + distance.
        normalization: ``"minmax"``, ``"target"`` or ``"none"``.
        nan_strategy: non-finite predictions: ``"error"``, ``"ignore"`` or ``"propagate"``.
        max_batch: at most this many image pairs per encoder pass (None: all at once).
        feature_cache: a :class:`TargetFeatureCache` (or its spec) for target features of updates
            that pass ``sample_ids``; None: off.
        precision: ``"fp32"`` or ``"bf16"`` (encoder under bf16 autocast; distances in fp32).
        channels_last: run the encoder in channels-last layout.
        compile: ``torch.compile`` the encoder (see :meth:`FeatureDistanceNetwork.compiled_encode`).
    """

    def __init__(
        self,
        network: FeatureDistanceNetwork,
        *,
        normalization: str = "minmax",
        nan_strategy: str = "error",
        max_batch: int | None = None,
        feature_cache: FeatureCacheArg = None,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: CompileArg = False,
    ) -> None:
        super().__init__()
        check_choice("normalization", normalization, NORMALIZATIONS)
        check_choice("nan_strategy", nan_strategy, NAN_STRATEGIES)
        check_choice("precision", precision, PRECISIONS)
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                      or max_batch < 1):
            raise ValueError(f"Argument `max_batch` must be a positive integer or None, got {max_batch}")
        self.network = network
        network.set_options(channels_last=channels_last, precision=precision, compile=compile)
        self.normalization, self.nan_strategy, self.max_batch = normalization, nan_strategy, max_batch
        self.precision, self.channels_last = precision, channels_last
        self.compile_mode = network.compile_mode
        self.feature_cache = make_feature_cache(feature_cache)
        self._key: tuple | None = None
        self._memo: dict | None = None

    @property
    def key(self) -> tuple:
        """``(cache namespace, nan_strategy, max_batch)``: see :func:`pass_key` (computed once)."""
        if self._key is None:
            self._key = pass_key(self.network, self.normalization, self.nan_strategy, self.max_batch,
                                 self.precision, self.channels_last, self.compile_mode)
        return self._key

    @property
    def namespace(self) -> str:
        """What a cached target feature depends on besides the image.

        Features identity, a digest of the feature weights, normalisation, layout, precision.
        """
        return self.key[0]

    def prepare(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None) -> PreparedBatch:
        """Check a batch (raising the error an update would) and flatten it to grayscale images."""
        p, t, keep = validated_images(preds, target, self.nan_strategy)
        smallest = self.network.minimum_size()
        if min(p.shape[-2:]) < smallest:
            raise ValueError(
                f"{type(self.network).__name__} ({self.network.identity}) needs images of at least "
                f"{smallest}x{smallest} pixels, but got {tuple(p.shape[-2:])}{real_pair_hint(preds)}"
            )
        channels = channels_per_image(preds)
        ids = expand_ids(sample_ids, preds.shape[0], channels, keep.device)
        return PreparedBatch(p, t, keep, ids, channels)

    def forward(self, preds: Tensor, target: Tensor, sample_ids: Tensor | None = None,
                versions: tuple | None = None) -> EncodedBatch:
        """Encode a batch (once per batch inside :func:`sharing`).

        Args:
            preds: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
            target: same shape.
            sample_ids: optional ``(N,)`` integer ids (keys of the feature cache).
            versions: :func:`input_versions` of the inputs (part of the per-batch memo key).
        """
        versions = input_versions(preds, target, sample_ids) if versions is None else versions
        memo_key = (id(preds), id(target), id(sample_ids), versions)
        if self._memo is not None and self._memo.get("key") == memo_key:
            return self._memo["batch"]
        batch = self.encode(self.prepare(preds, target, sample_ids))
        if self._memo is not None:  # hold the inputs: their ids stay unique while memoised
            self._memo.update(key=memo_key, batch=batch, inputs=(preds, target, sample_ids))
        return batch

    def encode(self, prepared: PreparedBatch) -> EncodedBatch:
        """Normalise, chunk and encode the kept images; read and fill the feature cache."""
        keep, ids = prepared.keep, prepared.ids
        p, t = prepared.preds, prepared.target
        keys = None
        if self.feature_cache is not None and ids is not None:
            channels = prepared.channels
            keys = [(int(i), k % channels) for k, i in enumerate(ids.tolist())]
            keys = [key for key, kept in zip(keys, keep.tolist(), strict=True) if kept]
        if not keep.all():
            p, t = p[keep], t[keep]
        kept_ids = None if ids is None else ids[keep.to(ids.device)]
        chunks = self._encode_chunks(p, t, keys) if p.shape[0] else []
        return EncodedBatch(self.key, self.network, keep, kept_ids, chunks, p.new_zeros(0))

    def _encode_chunks(self, preds: Tensor, target: Tensor, keys: list | None) -> list:
        network, cache = self.network, self.feature_cache
        p01, t01 = normalize_pair(preds, target, self.normalization)
        m = p01.shape[0]
        step = self.max_batch or m
        needs_grad = torch.is_grad_enabled() and p01.requires_grad
        chunks = []
        for start in range(0, m, step):
            chunk = slice(start, min(start + step, m))
            pc, tc = p01[chunk], t01[chunk]
            cached = ([None] * tc.shape[0] if keys is None else
                      [cache.get(self.namespace, key, image)
                       for key, image in zip(keys[chunk], tc, strict=True)])
            missing = [i for i, f in enumerate(cached) if f is None]
            with torch.no_grad():
                if needs_grad:
                    new = network(tc[missing]) if missing else None
                else:  # one batched pass over the predictions and the missing targets
                    both = network(torch.cat([pc, tc[missing]])) if missing else network(pc)
                    n = pc.shape[0]
                    fp, new = ([f[:n] for f in both], [f[n:] for f in both]) if missing else (both, None)
            if needs_grad:
                fp = network(pc)
            if keys is not None:
                for j, i in enumerate(missing):
                    cache.put(self.namespace, keys[chunk][i], tc[i], [f[j] for f in new])
            if len(missing) == len(cached):
                chunks.append((fp, new, True))
                continue
            for j, i in enumerate(missing):
                cached[i] = [f[j] for f in new]
            chunks.append((fp, cached, False))
        return chunks

    @contextlib.contextmanager
    def shared_batch(self) -> Iterator[None]:
        """Inside, a batch passed again (same tensors, unmodified) is not encoded again."""
        outer, self._memo = self._memo, {}
        try:
            yield
        finally:
            self._memo = outer

    def __getstate__(self) -> dict:  # noqa: D105 - copies never carry a batch in flight
        state = self.__dict__.copy()
        state["_memo"] = None
        return state

    def extra_repr(self) -> str:  # noqa: D102
        return (f"normalization={self.normalization!r}, nan_strategy={self.nan_strategy!r}, "
                f"max_batch={self.max_batch}, precision={self.precision!r}, "
                + (f"compile={self.compile_mode!r}, " if self.compile_mode else "")
                + f"cache={'on' if self.feature_cache is not None else 'off'}")


def _pass_of(metric: nn.Module) -> EncoderPass | None:
    encoder = getattr(metric, "encoder", None)
    return encoder if isinstance(encoder, EncoderPass) else None


def share_encoders(metrics: Iterable[nn.Module]) -> list[EncoderPass]:
    """Point the DFDs among ``metrics`` with equal :attr:`EncoderPass.key` at one pass.

    FeatureShare's mechanism (one ``feature_network`` object per group), restricted to metrics
    whose features are provably identical (equal features identity, feature-weights digest,
    normalisation, precision, layout, NaN policy and ``max_batch``). Each member keeps its own
    distance head, states, sync and ``compute``.

    Returns:
        The passes shared by two or more metrics (open them with :func:`sharing` for an update).
    """
    groups: dict[tuple, list[nn.Module]] = {}
    for metric in metrics:
        encoder = _pass_of(metric)
        if encoder is not None:
            groups.setdefault(encoder.key, []).append(metric)
    shared = []
    for members in groups.values():
        first = members[0].encoder
        for metric in members[1:]:
            metric.encoder = first
        if len(members) > 1:
            shared.append(first)
    return shared


def shared_passes(metrics: Iterable[nn.Module]) -> list[EncoderPass]:
    """The distinct passes that two or more of ``metrics`` use (see :func:`share_encoders`)."""
    count: dict[int, list] = {}
    for metric in metrics:
        encoder = _pass_of(metric)
        if encoder is not None:
            count.setdefault(id(encoder), [encoder, 0])[1] += 1
    return [encoder for encoder, n in count.values() if n > 1]


@contextlib.contextmanager
def sharing(passes: Sequence[EncoderPass]) -> Iterator[None]:
    """Open :meth:`EncoderPass.shared_batch` of every pass, for one update of all members."""
    with contextlib.ExitStack() as stack:
        for encoder in passes:
            stack.enter_context(encoder.shared_batch())
        yield
