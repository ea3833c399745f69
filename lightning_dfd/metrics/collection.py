"""``DFDCollection``: a ``MetricCollection`` whose updates are all-or-nothing and share encoder passes.

Why it remains, now that a plain ``torchmetrics.MetricCollection`` (compute groups included),
``FeatureShare`` and every torchmetrics wrapper give every DFD its own, correct value:

* **All-or-nothing updates.** A plain collection updates members one after the other; when a
  later member rejects a batch (e.g. PSNR with a bad ``data_range``), the earlier ones have already
  counted it. ``DFDCollection`` first asks every member with a ``validate`` method to check the
  batch, then updates; if an update still fails (an error only computing reveals, e.g. a DFD whose
  encoder overflows), every member's states are restored to what they were before the batch.
  :meth:`DFDCollection.update_rows` does the same when some members score only some rows of the
  batch (e.g. DFDs on the centre slices of each volume, pixel metrics on all of them).
* **One encoder pass per batch across a mixed suite.** ``FeatureShare`` gives *all* its members
  the first member's network, so it fits one group of metrics with identical features, not a
  suite of PSNR + LPIPS + DISTS. Inside :meth:`DFDCollection.one_pass` (opened by every update)
  DFDs whose passes have equal live keys
  (:attr:`~lightning_dfd.metrics.base.DeepFeatureDistance.sharing_key`: features identity, a digest
  of the feature weights as they are now, the options) share one memo
  (:func:`~lightning_dfd.encoders.encoder_pass.sharing`), so the batch is encoded once for all of
  them, and maps or masked values of the same batch asked for inside the same scope reuse those
  features. Groups are formed anew at each update: a weight change never shares stale features.

LPIPS-VGG and DISTS do **not** share: DISTS replaces VGG's max pooling by L2 pooling after the
first block, so their features differ from the second block on.

Example:
    >>> import torch
    >>> from lightning_dfd import LPIPS
    >>> lin, nolin = LPIPS(weights="random"), LPIPS(linear=False, weights="random")
    >>> nolin.network.slices.load_state_dict(lin.network.slices.state_dict())  # the same VGG
    <All keys matched successfully>
    >>> suite = DFDCollection({"lpips_vgg": lin, "lpips_vgg_nolin": nolin})
    >>> suite.shared_groups()
    [['lpips_vgg', 'lpips_vgg_nolin']]
    >>> suite.update(torch.rand(2, 32, 32), torch.rand(2, 32, 32))  # one VGG pass, two metrics
    >>> sorted(suite.compute())
    ['lpips_vgg', 'lpips_vgg_nolin']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor
from torchmetrics import Metric, MetricCollection

from lightning_dfd.encoders.encoder_pass import EncoderPass, sharing


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


def _pass_of(metric: Metric) -> EncoderPass | None:
    encoder = getattr(metric, "encoder_pass", None)
    return encoder if isinstance(encoder, EncoderPass) else None


def _rows_of(value: Any, rows: Tensor, n: int) -> Any:
    """``value`` restricted to ``rows`` when it holds one entry per batch element, else as it is."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value[rows.to(value.device)]
    if isinstance(value, (list, tuple)) and len(value) == n and not isinstance(value, str):
        return type(value)(v for v, keep in zip(value, rows.tolist(), strict=True) if keep)
    return value


class DFDCollection(MetricCollection):
    """A ``MetricCollection`` with all-or-nothing updates and one encoder pass per batch and key.

    Takes the arguments of :class:`torchmetrics.MetricCollection`; compute groups are off by
    default (DFDs with identical features already share their encoder pass; comparing states
    after the first batch buys nothing more).
    """

    def __init__(self, metrics: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("compute_groups", False)
        super().__init__(metrics, *args, **kwargs)

    def _passes(self) -> list[EncoderPass]:
        return [p for p in map(_pass_of, self.values(copy_state=False)) if p is not None]

    def shared_groups(self) -> list[list[str]]:
        """Names of the metrics that would share one encoder pass now, group by group.

        Example:
            >>> from lightning_dfd import PSNR, ResNetFD
            >>> DFDCollection({"psnr": PSNR(), "rinfd": ResNetFD(weights="random")}).shared_groups()
            []
        """
        groups: dict[tuple, list[str]] = {}
        for name, metric in self.items(keep_base=True, copy_state=False):
            encoder = _pass_of(metric)
            if encoder is not None:
                groups.setdefault(encoder.key, []).append(name)
        return [names for names in groups.values() if len(names) > 1]

    @contextlib.contextmanager
    def one_pass(self) -> Iterator[None]:
        """Inside, each batch is encoded once per key, whatever is asked of it.

        Scores of every member, masked scores and :meth:`distance_map` of the same (unmodified)
        tensors reuse the features of the first encoder pass (e.g. ``evaluate --maps``: the maps
        of the batch just scored cost no second pass).

        Example:
            >>> import torch
            >>> from lightning_dfd import ResNetFD
            >>> suite = DFDCollection({"rinfd": ResNetFD(weights="random", reduction="none")})
            >>> preds, target = torch.rand(2, 32, 32), torch.rand(2, 32, 32)
            >>> with suite.one_pass():
            ...     suite.update(preds, target)
            ...     maps = suite["rinfd"].distance_map(preds, target)  # no second encoder pass
            >>> maps.shape
            torch.Size([2, 1, 32, 32])
        """
        with sharing(self._passes()):
            yield

    @contextlib.contextmanager
    def _all_or_nothing(self, plans: list[tuple[Metric, tuple, dict]]) -> Iterator[None]:
        """Validate every planned update, then run the body in :meth:`one_pass`; restore on failure."""
        members = list(self.values(copy_state=False))
        for metric, args, kwargs in plans:  # every check first: a rejected batch reaches no member
            validate = getattr(metric, "validate", None)
            if callable(validate):
                validate(*args, **kwargs)
        saved = [snapshot(metric) for metric in members]
        try:
            with self.one_pass():
                yield
        except BaseException:
            for metric, state in zip(members, saved, strict=True):
                restore(metric, state)
            raise

    def _plans(self, args: tuple, kwargs: dict) -> list[tuple[Metric, tuple, dict]]:
        return [(m, args, m._filter_kwargs(**kwargs)) for m in self.values(copy_state=False)]

    def update(self, *args: Any, **kwargs: Any) -> None:
        """Update every metric, or none if any rejects the batch; one encoder pass per key."""
        with self._all_or_nothing(self._plans(args, kwargs)):
            super().update(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Batch values of every metric (and update them, all or none); one pass per key."""
        with self._all_or_nothing(self._plans(args, kwargs)):
            return super().forward(*args, **kwargs)

    def update_rows(self, rows: Mapping[str, Tensor | None], *args: Any, **kwargs: Any) -> None:
        """Update every metric, those named in ``rows`` on a subset of the batch; all or nothing.

        Args:
            rows: metric name (without prefix) -> boolean ``(N,)`` rows it scores, or None to
                leave it out of this batch; members not named score every row. Every positional
                and keyword argument with one entry per batch element is restricted alike.
            args: the batch, e.g. ``preds, target``.
            kwargs: keyword arguments of the members' ``update`` (each gets those it accepts).

        Example:
            >>> import torch
            >>> from lightning_dfd import PSNR, ResNetFD
            >>> suite = DFDCollection({"psnr": PSNR(), "rinfd": ResNetFD(weights="random")})
            >>> centre = torch.tensor([False, True, False])
            >>> suite.update_rows({"rinfd": centre}, torch.rand(3, 32, 32), torch.rand(3, 32, 32))
            >>> suite["psnr"].compute().shape, int(suite["rinfd"].total)  # 3 images; 1 image
            (torch.Size([]), 1)
        """
        members = dict(self.items(keep_base=True, copy_state=False))
        unknown = sorted(set(rows) - set(members))
        if unknown:
            raise ValueError(f"Argument `rows` names metrics {unknown} that are not in the collection "
                             f"{sorted(members)}")
        n = next((a.shape[0] for a in args if isinstance(a, Tensor) and a.ndim), None)
        plans = []
        for name, metric in members.items():
            if name not in rows:
                plans.append((metric, args, metric._filter_kwargs(**kwargs)))
                continue
            selected = rows[name]
            if selected is None:
                continue
            if not isinstance(selected, Tensor) or selected.dtype.is_floating_point or \
                    selected.shape != (n,):
                raise ValueError(f"Argument `rows[{name!r}]` must be a boolean tensor of shape ({n},) "
                                 f"or None, but got {selected!r}")
            selected = selected.bool()
            if not bool(selected.any()):
                continue
            if bool(selected.all()):  # the same tensors: features of a shared scope are reused
                plans.append((metric, args, metric._filter_kwargs(**kwargs)))
                continue
            sub_args = tuple(_rows_of(a, selected, n) for a in args)
            sub_kwargs = {k: _rows_of(v, selected, n) for k, v in kwargs.items()}
            plans.append((metric, sub_args, metric._filter_kwargs(**sub_kwargs)))
        with self._all_or_nothing(plans):
            for metric, sub_args, sub_kwargs in plans:
                metric.update(*sub_args, **sub_kwargs)
