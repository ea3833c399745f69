"""``DFDCollection``: a ``MetricCollection`` whose updates are all-or-nothing and share encoders.

Why it remains, now that a plain ``torchmetrics.MetricCollection`` (compute groups included),
``FeatureShare`` and every torchmetrics wrapper give every DFD its own, correct value:

* **All-or-nothing updates.** A plain collection updates members one after the other; when a
  later member rejects a batch (e.g. PSNR with a bad ``data_range``), the earlier ones have already
  counted it. ``DFDCollection`` first asks every member with a ``validate`` method to check the
  batch, then updates; if an update still fails (an error only computing reveals, e.g. a DFD whose
  encoder overflows), every member's states are restored to what they were before the batch.
* **Encoder sharing across a mixed suite.** ``FeatureShare`` gives *all* its members the first
  member's network, so it fits one group of metrics with identical features, not a suite of
  PSNR + LPIPS + DISTS. ``DFDCollection`` groups the DFDs by their
  :attr:`~lightning_dfd.metrics.base.DeepFeatureDistance.sharing_key` and uses FeatureShare's
  mechanism per group (:func:`~lightning_dfd.metrics.encoder_pass.share_encoders`): the members
  of a group use one :class:`~lightning_dfd.metrics.encoder_pass.EncoderPass`, which encodes each
  batch once while the collection updates. Values are identical to separate updates.

LPIPS-VGG and DISTS do **not** share: DISTS replaces VGG's max pooling by L2 pooling after the
first block, so their features differ from the second block on.

Example:
    >>> import torch
    >>> from lightning_dfd import LPIPS
    >>> _ = torch.manual_seed(0)
    >>> lin, nolin = LPIPS(weights="random"), LPIPS(linear=False, weights="random")
    >>> nolin.network.slices.load_state_dict(lin.network.slices.state_dict())  # same trunk
    <All keys matched successfully>
    >>> suite = DFDCollection({"lpips_vgg": lin, "lpips_vgg_nolin": nolin})
    >>> [len(group) for group in suite.shared_groups()]
    [2]
    >>> suite.update(torch.rand(2, 32, 32), torch.rand(2, 32, 32))  # one VGG pass, two metrics
    >>> sorted(suite.compute())
    ['lpips_vgg', 'lpips_vgg_nolin']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torchmetrics import Metric, MetricCollection

from lightning_dfd.metrics.encoder_pass import EncoderPass, share_encoders, sharing


def snapshot(metric: Metric) -> dict[str, Any]:
    """A copy of ``metric``'s states and update bookkeeping (see :func:`restore`)."""
    states = {}
    for name in metric._defaults:
        value = getattr(metric, name)
        states[name] = value.clone() if isinstance(value, Tensor) else list(value)
    return {"states": states, "update_count": metric._update_count, "computed": metric._computed}


def restore(metric: Metric, saved: dict[str, Any]) -> None:
    """Put back what :func:`snapshot` saved."""
    for name, value in saved["states"].items():
        setattr(metric, name, value)
    metric._update_count = saved["update_count"]
    metric._computed = saved["computed"]


class DFDCollection(MetricCollection):
    """A ``MetricCollection`` with all-or-nothing updates and shared encoder passes.

    DFDs with identical features share one encoder pass (the module docstring says why this
    class exists).

    Takes the arguments of :class:`torchmetrics.MetricCollection`; compute groups are off by
    default (DFDs with identical features already share their encoder pass; comparing states
    after the first batch buys nothing more). Encoder groups are formed at the first
    ``update``/``forward``.
    """

    def __init__(self, metrics: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("compute_groups", False)
        super().__init__(metrics, *args, **kwargs)
        self._passes: list[EncoderPass] | None = None

    def shared_groups(self) -> list[list[str]]:
        """Names of the metrics that share one encoder pass, group by group (formed on first use)."""
        passes = self._shared_passes()
        return [[name for name, m in self.items(keep_base=True, copy_state=False)
                 if getattr(m, "encoder", None) is encoder] for encoder in passes]

    def _shared_passes(self) -> list[EncoderPass]:
        if self._passes is None:
            self._passes = share_encoders(self.values(copy_state=False))
        return self._passes

    @contextlib.contextmanager
    def _all_or_nothing(self, args: tuple, kwargs: dict) -> Iterator[None]:
        members = list(self.values(copy_state=False))
        for metric in members:  # every check first: a rejected batch reaches no member
            validate = getattr(metric, "validate", None)
            if callable(validate):
                validate(*args, **metric._filter_kwargs(**kwargs))
        saved = [snapshot(metric) for metric in members]
        try:
            with sharing(self._shared_passes()):
                yield
        except BaseException:
            for metric, state in zip(members, saved, strict=True):
                restore(metric, state)
            raise

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update every metric, or none if any rejects the batch; shared groups encode once."""
        with self._all_or_nothing(args, kwargs):
            super().update(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Batch values of every metric (and update them, all or none); groups encode once."""
        with self._all_or_nothing(args, kwargs):
            return super().forward(*args, **kwargs)

    def add_metrics(self, *args: Any, **kwargs: Any) -> None:
        """Add metrics (torchmetrics' signature); encoder groups are formed again on next use."""
        super().add_metrics(*args, **kwargs)
        self._passes = None
