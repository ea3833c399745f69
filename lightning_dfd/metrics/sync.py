"""Distributed sync that works when some processes received no update.

The cause (torchmetrics 1.9 ``Metric._sync_dist``): a process whose ``cat`` state is still an
empty list stands in ``torch.tensor([], dtype=self.dtype)`` for it, a 1-D float32 tensor of
shape ``(0,)``. ``gather_all_tensors`` then all-gathers the tensor *shapes* (a 1-element shape on
the idle process against e.g. 2 elements for ``(M, 3)`` float64 statistics on the others) and the
padded tensors themselves (float32 against int64 ids / float64 statistics). Collectives whose
buffers differ in size or dtype across processes are a protocol mismatch: gloo aborts the process
(SIGABRT), NCCL may hang or read garbage.

:class:`IdleRankSafeSync` first all-gathers, per ``cat`` state, the dtype and trailing shape each
process holds (one small ``all_gather_object``), then lets every idle process stand in an empty
tensor of exactly that dtype and trailing shape, so all processes enter the same collectives with
compatible buffers. A state that is empty on every process stays an empty list, and busy processes
whose dtypes differ are promoted to a common dtype. Incompatible trailing shapes raise the same
clear error on every process (no process is left waiting in a collective).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors


def _cat_layout(state: Any) -> tuple[torch.dtype, tuple[int, ...]] | None:
    """``(dtype, trailing shape)`` of a ``cat`` state, or None when it holds nothing yet."""
    if isinstance(state, Tensor):
        return state.dtype, tuple(state.shape[1:]) if state.ndim else ()
    if isinstance(state, list) and state:
        first = state[0]
        return first.dtype, tuple(first.shape[1:]) if first.ndim else ()
    return None


class IdleRankSafeSync:
    """Mixin for :class:`torchmetrics.Metric`: ``cat`` states sync even if a process is idle.

    Put it before ``Metric`` in the bases (``class M(IdleRankSafeSync, Metric)``). It only adds
    one metadata exchange before torchmetrics' own sync; values are unchanged.

    Example:
        >>> import torch
        >>> from torchmetrics import Metric
        >>> from torchmetrics.utilities import dim_zero_cat
        >>> from lightning_dfd.metrics.sync import IdleRankSafeSync
        >>> class Values(IdleRankSafeSync, Metric):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.add_state("values", [], dist_reduce_fx="cat")
        ...     def update(self, x):
        ...         self.values.append(x)
        ...     def compute(self):  # a list before sync, a tensor after it
        ...         return dim_zero_cat(self.values) if len(self.values) else torch.zeros(0)
        >>> metric = Values()
        >>> metric.update(torch.ones(2))
        >>> metric.compute()
        tensor([1., 1.])
    """

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors,
                   process_group: Any | None = None) -> None:
        group = process_group or self.process_group
        cat_states = [attr for attr, fn in self._reductions.items() if fn is dim_zero_cat]
        if not cat_states or not dist.is_available() or not dist.is_initialized():
            super()._sync_dist(dist_sync_fn, process_group)
            return
        local = {attr: _cat_layout(getattr(self, attr)) for attr in cat_states}
        gathered: list[dict | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        nowhere = []
        for attr in cat_states:
            layouts = [g[attr] for g in gathered if g is not None and g[attr] is not None]
            if not layouts:  # empty on every process: torchmetrics' stand-in is consistent
                nowhere.append(attr)
                continue
            trailing = {shape for _, shape in layouts}
            if len(trailing) > 1:
                raise RuntimeError(
                    f"{type(self).__name__}: state `{attr}` has different trailing shapes across "
                    f"processes ({sorted(trailing)}); it cannot be synchronised"
                )
            dtype = layouts[0][0]
            for other, _ in layouts[1:]:
                dtype = torch.promote_types(dtype, other)
            (shape,) = trailing
            state = getattr(self, attr)
            if local[attr] is None:
                state = [torch.zeros((0, *shape), dtype=dtype, device=self.device)]
            elif isinstance(state, Tensor):
                state = state.to(dtype)
            else:
                state = [s.to(dtype) for s in state]
            setattr(self, attr, state)
        super()._sync_dist(dist_sync_fn, process_group)
        for attr in nowhere:
            setattr(self, attr, [])
