"""One encoder pass for several DFD metrics that compute identical features.

LPIPS-VGG with and without its linear layers, or ResNetFD with MSE and with MAE, run the same
encoder on the same images and differ only in the distance. :class:`DFDCollection` (a
``torchmetrics.MetricCollection``) finds such metrics and, on every ``update``/``forward``, lets
the first of them encode predictions and (uncached) targets once and hand each member its own
distances. Values are identical to separate updates; every metric keeps its own states, sync and
``compute``.

Which metrics share is decided by :func:`sharing_key`: equal features identity, equal digest of
the feature weights, normalisation, numeric options, NaN policy and ``max_batch``. LPIPS-VGG and
DISTS do **not** share: DISTS replaces VGG's max pooling by L2 pooling after the first block, so
their features differ from the second block on.

Example:
    >>> import torch
    >>> from lightning_dfd import LPIPS
    >>> _ = torch.manual_seed(0)
    >>> lin, nolin = LPIPS(weights="random"), LPIPS(linear=False, weights="random")
    >>> nolin.network.slices.load_state_dict(lin.network.slices.state_dict())  # same trunk
    <All keys matched successfully>
    >>> suite = DFDCollection({"lpips_vgg": lin, "lpips_vgg_nolin": nolin})
    >>> [len(group.metrics) for group in suite.shared_groups()]
    [2]
    >>> suite.update(torch.rand(2, 32, 32), torch.rand(2, 32, 32))  # one VGG pass, two metrics
    >>> sorted(suite.compute())
    ['lpips_vgg', 'lpips_vgg_nolin']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch import Tensor
from torchmetrics import Metric, MetricCollection

from lightning_dfd.metrics.base import DeepFeatureDistance


def sharing_key(metric: DeepFeatureDistance) -> tuple:
    """Metrics with equal keys compute identical features and validate inputs identically."""
    return (metric.cache_namespace, metric.nan_strategy, metric.max_batch)


class SharedEncoderPass:
    """A group of metrics with one :func:`sharing_key`, and the values of the batch in flight.

    Outside :meth:`batch` every member computes on its own, as if unlinked. Inside it, the first
    member asked for distances computes them for all members in one encoder pass; each member
    then takes its own values.
    """

    def __init__(self, metrics: Sequence[DeepFeatureDistance]) -> None:
        self.metrics = list(metrics)
        self._active = False
        self._pending: dict[int, Tensor] = {}

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every member is updated once, with the same arguments, inside this context."""
        self._active, self._pending = True, {}
        try:
            yield
        finally:
            self._active, self._pending = False, {}

    def distances(self, metric: DeepFeatureDistance, p: Tensor, t: Tensor, keep: Tensor,
                  ids: Tensor | None, channels: int) -> Tensor:
        """``metric``'s per-image values; computed for the whole group on first request."""
        if not self._active:
            return metric.distances_for([metric.network], p, t, keep, ids, channels)[0]
        if id(metric) not in self._pending:
            members = [metric] + [m for m in self.metrics if m is not metric]
            values = metric.distances_for([m.network for m in members], p, t, keep, ids, channels)
            self._pending = {id(m): v for m, v in zip(members, values, strict=True)}
        return self._pending.pop(id(metric))


def link_shared_encoders(metrics: Iterable[Metric]) -> list[SharedEncoderPass]:
    """Group the DFDs among ``metrics`` by :func:`sharing_key` and link groups of two or more.

    A metric already linked is unlinked first, so calling this again regroups.
    """
    groups: dict[tuple, list[DeepFeatureDistance]] = {}
    for metric in metrics:
        if isinstance(metric, DeepFeatureDistance):
            metric._share = None
            groups.setdefault(sharing_key(metric), []).append(metric)
    shares = [SharedEncoderPass(group) for group in groups.values() if len(group) > 1]
    for share in shares:
        for metric in share.metrics:
            metric._share = share
    return shares


def linked_groups(metrics: Iterable[Metric]) -> list[SharedEncoderPass]:
    """The distinct groups that ``metrics`` are linked into (see :func:`link_shared_encoders`)."""
    found: dict[int, SharedEncoderPass] = {}
    for metric in metrics:
        share = getattr(metric, "_share", None)
        if share is not None:
            found.setdefault(id(share), share)
    return list(found.values())


@contextlib.contextmanager
def shared_batch(shares: Iterable[SharedEncoderPass]) -> Iterator[None]:
    """Open :meth:`SharedEncoderPass.batch` of every group for one update of all members."""
    with contextlib.ExitStack() as stack:
        for share in shares:
            stack.enter_context(share.batch())
        yield


class DFDCollection(MetricCollection):
    """A ``MetricCollection`` whose DFDs with identical features share one encoder pass.

    Takes the same arguments as :class:`torchmetrics.MetricCollection`; compute groups are off by
    default (DFD states never coincide, and checking them costs a comparison of every state).
    Groups are formed at the first ``update``/``forward``, after metrics have been moved to their
    device.
    """

    def __init__(self, metrics: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("compute_groups", False)
        super().__init__(metrics, *args, **kwargs)
        self._shares: list[SharedEncoderPass] | None = None

    def shared_groups(self) -> list[SharedEncoderPass]:
        """The groups of metrics that share an encoder pass (formed on first use)."""
        if self._shares is None:
            self._shares = link_shared_encoders(self.values(copy_state=False))
        return self._shares

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update every metric; each shared group runs its encoder once."""
        with shared_batch(self.shared_groups()):
            super().update(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Batch values of every metric (and update them); each shared group encodes once."""
        with shared_batch(self.shared_groups()):
            return super().forward(*args, **kwargs)

    def add_metrics(self, *args: Any, **kwargs: Any) -> None:
        """Add metrics (torchmetrics' signature); groups are formed again on next use."""
        super().add_metrics(*args, **kwargs)
        self._shares = None
