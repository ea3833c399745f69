"""``VolumeDFD``: any 2D deep feature distance on 3D volumes, plane by plane (2.5D).

A volume ``(D, H, W)`` is cut into 2D slices along each chosen plane, every slice pair is scored by
the wrapped 2D DFD (its encoder, normalisation, ``max_batch`` chunking and NaN policy), and

    value(volume) = mean over the scored planes of (mean over that plane's slices of the 2D value)

Planes name the axes of the array, whatever the patient orientation:

============  ==================  ===============  ==================
plane         slices along        slice shape      count per volume
============  ==================  ===============  ==================
``axial``     ``D`` (dim -3)      ``(H, W)``       ``D`` (the stored slices)
``coronal``   ``H`` (dim -2)      ``(D, W)``       ``H``
``sagittal``  ``W`` (dim -1)      ``(D, H)``       ``W``
============  ==================  ===============  ==================

So ``planes=("axial",)`` is the mean of the 2D metric over a volume's stored slices. Each plane
covers every voxel once, so three planes cost about three times one. MONAI's 2.5D
``PerceptualLoss(spatial_dims=3, is_fake_3d=True)`` differs in three ways: it *sums* the three
plane terms (ours is their mean: one third of MONAI's value with ``fake_3d_ratio=1.0``), it scores
a random ``fake_3d_ratio`` (default half) of the slices of each plane, pooled over the batch, and it
fails on planes thinner than its encoder accepts; here every slice is scored, each volume gets its
own value, and a thin plane is skipped with one warning per metric instance (an error when no
plane is left).

Inputs are ``(N, D, H, W)`` volumes or ``(N, C, D, H, W)`` multi-echo / multi-contrast volumes,
real or complex (complex -> magnitude). As for the 2D metrics each channel is an independent
volume, so ``C`` channels give ``N * C`` values (batch-major, channel-minor).

``spacing=(dz, dy, dx)`` (mm) resamples every volume to isotropic voxels of the finest of the three
spacings before it is sliced: trilinear interpolation of the magnitude
(``torch.nn.functional.interpolate(mode="trilinear", align_corners=True)``), which keeps the first
and last sample of each axis and gives an axis of ``n`` samples at spacing ``s`` ``round((n - 1) *
s / min(spacing)) + 1`` samples (exactly the finest spacing when ``s / min(spacing)`` is an
integer, within half a voxel over the axis otherwise). An axis already at the finest spacing is
left as it is; ``spacing=None`` (default) scores the voxel grid as given.

Example:
    >>> import torch
    >>> from lightning_dfd import VolumeDFD
    >>> _ = torch.manual_seed(0)
    >>> metric = VolumeDFD("resnet_fd", weights="random", reduction="none")
    >>> target = torch.rand(2, 8, 24, 24)
    >>> metric.update(target + 0.1 * torch.rand(2, 8, 24, 24), target)
    >>> metric.compute().shape  # one value per volume
    torch.Size([2])
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lightning_dfd.encoders.identity import weights_digest
from lightning_dfd.metrics.base import DeepFeatureDistance, PerItemValues, is_dfd
from lightning_dfd.metrics.sync import IdleRankSafeSync
from lightning_dfd.preprocess import REDUCTIONS, check_choice, magnitude

__all__ = ["PLANES", "VolumeDFD", "isotropic", "parse_planes", "parse_spacing"]

#: The planes a volume ``(D, H, W)`` is sliced along (see the module docstring).
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")
#: plane -> permutation of a ``(V, D, H, W)`` stack that puts the slice axis second
_PERMUTATION = {"axial": (0, 1, 2, 3), "coronal": (0, 2, 1, 3), "sagittal": (0, 3, 1, 2)}
#: keyword arguments of :class:`torchmetrics.Metric` (this metric's own; the rest build the 2D DFD)
_METRIC_KWARGS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                  "distributed_available_fn", "sync_on_compute", "compute_with_cache")
_FINGERPRINT_BYTES = 8


def _empty(state: list | Tensor) -> bool:
    """A ``cat`` state is a list before sync and a tensor after it."""
    return isinstance(state, list) and not state


def parse_planes(planes: str | Sequence[str]) -> tuple[str, ...]:
    """The ``planes`` argument as a tuple of distinct plane names; anything else is an error.

    Example:
        >>> parse_planes("axial"), parse_planes(["coronal", "sagittal"])
        (('axial',), ('coronal', 'sagittal'))
    """
    parsed = (planes,) if isinstance(planes, str) else tuple(planes)
    if not parsed or any(p not in PLANES for p in parsed) or len(set(parsed)) != len(parsed):
        raise ValueError(f"Argument `planes` must be a non-empty selection of distinct planes among "
                         f"{PLANES}, but got {planes!r}")
    return parsed


def parse_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """The ``spacing`` argument as three positive finite floats ``(dz, dy, dx)``, or None.

    Example:
        >>> parse_spacing([3, 0.5, 0.5])
        (3.0, 0.5, 0.5)
    """
    if spacing is None:
        return None
    try:
        values = tuple(float(s) for s in spacing)
        numbers = all(not isinstance(s, bool) for s in spacing)
    except (TypeError, ValueError):
        values, numbers = (), False
    if not numbers or len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError("Argument `spacing` must be three positive finite voxel sizes (dz, dy, dx) in "
                         f"mm, or None, but got {spacing!r}")
    return values  # type: ignore[return-value]


def _resampled_shape(shape: Sequence[int], spacing: tuple[float, float, float] | None) -> tuple[int, ...]:
    """``(D, H, W)`` after :func:`isotropic` (unchanged without ``spacing``)."""
    if spacing is None:
        return tuple(shape)
    finest = min(spacing)
    return tuple(n if s == finest else round((n - 1) * s / finest) + 1
                 for n, s in zip(shape, spacing, strict=True))


def isotropic(volumes: Tensor, spacing: Sequence[float]) -> Tensor:
    """Resample real ``(V, D, H, W)`` volumes to isotropic voxels of the finest spacing.

    Trilinear interpolation with ``align_corners=True`` (the first and last sample of each axis are
    kept); an axis of ``n`` samples at spacing ``s`` gets ``round((n - 1) * s / min(spacing)) + 1``.
    Differentiable. Take magnitudes of complex volumes first (:class:`VolumeDFD` does).

    Args:
        volumes: ``(V, D, H, W)`` real volumes.
        spacing: ``(dz, dy, dx)`` voxel sizes (any unit, e.g. mm).

    Example:
        >>> v = torch.arange(3.0).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)  # 0, 1, 2 along z
        >>> isotropic(v, (2.0, 1.0, 1.0))[0, :, 0, 0]  # dz = 2 dx: a sample between each pair
        tensor([0.0000, 0.5000, 1.0000, 1.5000, 2.0000])
    """
    spacing = parse_spacing(spacing)
    size = _resampled_shape(volumes.shape[-3:], spacing)
    if size == tuple(volumes.shape[-3:]):
        return volumes
    if volumes.is_complex():
        raise TypeError("isotropic() resamples real volumes: take the magnitude (`.abs()`) first")
    return F.interpolate(volumes.unsqueeze(1), size=size, mode="trilinear", align_corners=True).squeeze(1)


def _slice_values(metric: DeepFeatureDistance, preds: Tensor, target: Tensor) -> Tensor:
    """The 2D metric's values ``(M,)`` for ``(M, H, W)`` slice pairs, without changing its states.

    :meth:`~lightning_dfd.metrics.base.DeepFeatureDistance.score`, ``max_batch`` slices at a time,
    so only one chunk's features are alive at once (gradients flow to ``preds`` when enabled). A
    slice the pass did not keep (``nan_strategy="ignore"``) gets NaN.
    """
    step = metric.max_batch or preds.shape[0]
    return torch.cat([metric.score(preds[start : start + step], target[start : start + step])
                      for start in range(0, preds.shape[0], step)])


def _nonfinite_volumes(x: Tensor, count: int) -> list[int]:
    """Indices of the ``count`` volumes of ``x`` (batch x channels) holding NaN or inf."""
    return (~torch.isfinite(x.detach()).reshape(count, -1).all(dim=1)).nonzero().flatten().tolist()


def _identity(metric: DeepFeatureDistance) -> str:
    """What the 2D metric computes (class, features, weights, distance head, options)."""
    net = metric.network
    heads = weights_digest(net, only=net.head_prefixes) if net.head_prefixes else ""
    return repr((type(metric).__qualname__, metric.sharing_key, net.identity, heads))


class VolumeDFD(IdleRankSafeSync, PerItemValues, Metric):
    """A 2D deep feature distance on 3D volumes: the mean over planes of per-plane slice means.

    Args:
        metric: the 2D DFD: an instance (used as it is, its states untouched; it becomes a
            submodule) or a catalog name (``"lpips_vgg"``, ``"ssfd"``, ...) built with ``kwargs``.
        planes: any of ``("axial", "coronal", "sagittal")`` (default all three; see the module
            docstring for the axes).
        spacing: ``(dz, dy, dx)`` voxel sizes in mm: resample to isotropic voxels of the finest
            spacing (trilinear on the magnitude) before slicing; None: score the grid as given.
        reduction: ``"mean"`` over every volume seen, or ``"none"`` for per-volume values (a
            ``cat`` state, with ``volume_ids`` when given; :meth:`compute_per_volume`).
        kwargs: torchmetrics' ``Metric`` arguments (``sync_on_compute``, ``dist_sync_on_step``,
            ``process_group``, ``dist_sync_fn``, ``distributed_available_fn``, ``compute_on_cpu``,
            ``compute_with_cache``) are this metric's; with a catalog name every other keyword
            builds the 2D metric (``weights=``, ``max_batch=``, ``precision=``, ...).

    The NaN policy is the 2D metric's ``nan_strategy``, per volume: a non-finite prediction voxel
    is an error (``"error"``), skips the whole volume and counts it in ``skipped`` (``"ignore"``),
    or gives the volume NaN (``"propagate"``); a non-finite reference is always an error. A plane
    whose slices are thinner than the encoder's :meth:`minimum_size` is skipped (one warning per
    metric instance); a batch without any plane left is refused. Rejected batches change no state.
    """

    item = "volume"
    ids_argument = "volume_ids"

    full_state_update = False

    def __init__(
        self,
        metric: DeepFeatureDistance | str,
        planes: str | Sequence[str] = PLANES,
        spacing: Sequence[float] | None = None,
        reduction: str = "mean",
        **kwargs: Any,
    ) -> None:
        own = {key: kwargs.pop(key) for key in _METRIC_KWARGS if key in kwargs}
        super().__init__(**own)
        if isinstance(metric, str):
            if not is_dfd(metric):
                from lightning_dfd.catalog import DFDS

                raise ValueError(f"Argument `metric` must be a deep feature distance among {DFDS} or "
                                 f"an instance of one, but got {metric!r}")
            from lightning_dfd.metrics.suite import build_metric

            metric = build_metric(metric, **kwargs)
        elif kwargs:
            raise TypeError(f"VolumeDFD got 2D-metric arguments {sorted(kwargs)} with a metric instance: "
                            "pass them when building the instance, or pass a catalog name")
        if not isinstance(metric, DeepFeatureDistance):
            raise TypeError("Argument `metric` must be a 2D deep feature distance (a DeepFeatureDistance "
                            f"such as LPIPS, SSFD, ResNetFD) or its catalog name, but got "
                            f"{type(metric).__name__}")
        check_choice("reduction", reduction, REDUCTIONS)
        self.metric = metric
        self.planes = parse_planes(planes)
        self.spacing = parse_spacing(spacing)
        self.reduction = reduction
        self._warned = False
        self._add_value_states(reduction)
        # Different for VolumeDFDs of different 2D metrics, planes or spacing: a MetricCollection's
        # compute groups never merge them (see lightning_dfd.metrics.base).
        self.add_state("fingerprint", torch.zeros(_FINGERPRINT_BYTES, dtype=torch.long), dist_reduce_fx="max")
        self._fingerprinted = False

    # ------------------------------------------------------------------ what the 2D metric says
    @property
    def higher_is_better(self) -> bool | None:  # type: ignore[override]
        """The 2D metric's direction (False for every DFD)."""
        return self.metric.higher_is_better

    @property
    def is_differentiable(self) -> bool | None:  # type: ignore[override]
        """Gradients flow to ``preds`` (through resampling and slicing) when the 2D metric's do."""
        return self.metric.is_differentiable

    @property
    def plot_lower_bound(self) -> float | None:  # type: ignore[override]
        """The 2D metric's lower plot bound."""
        return self.metric.plot_lower_bound

    @property
    def plot_upper_bound(self) -> float | None:  # type: ignore[override]
        """The 2D metric's upper plot bound."""
        return self.metric.plot_upper_bound

    @property
    def nan_strategy(self) -> str:
        """The 2D metric's NaN policy, applied per volume."""
        return self.metric.nan_strategy

    # ------------------------------------------------------------------ checks
    def _checked(self, preds: Tensor, target: Tensor, volume_ids: Tensor | None,
                 warn: bool = False) -> tuple[Tensor, Tensor | None, tuple[str, ...]]:
        """Check a batch; return the volumes kept ``(V,)``, their ids, and the planes to score."""
        for name, x in (("preds", preds), ("target", target)):
            if not isinstance(x, Tensor):
                raise TypeError(f"`{name}` must be a torch.Tensor, but got {type(x).__name__}")
            if not (x.is_floating_point() or x.is_complex()):
                raise TypeError(f"`{name}` must have a floating point or complex dtype, but got {x.dtype}; "
                                "integer volumes carry no scale: convert them with `.float()` first")
            if x.ndim not in (4, 5):
                hint = " (one volume: add a batch dimension, `volume[None]`)" if x.ndim == 3 else ""
                raise ValueError(f"`{name}` must have shape (N, D, H, W) or (N, C, D, H, W), but got "
                                 f"{tuple(x.shape)}{hint}")
        if preds.shape != target.shape:
            raise ValueError(f"`preds` and `target` must have the same shape, but got {tuple(preds.shape)} "
                             f"and {tuple(target.shape)}")
        if preds.numel() == 0:
            raise ValueError(f"`preds` and `target` hold no voxel: shape {tuple(preds.shape)}")
        if target.is_complex() and not preds.is_complex():
            raise TypeError("`target` is complex but `preds` is real: pass both as complex volumes, or "
                            "take `preds.abs()`/`target.abs()` yourself")
        n, channels = preds.shape[0], (preds.shape[1] if preds.ndim == 5 else 1)
        ids = None
        if volume_ids is not None:
            ids = torch.as_tensor(volume_ids, device=self.device)
            if ids.ndim != 1 or ids.shape[0] != n or ids.is_floating_point() or ids.is_complex() \
                    or ids.dtype == torch.bool:
                raise ValueError(f"`volume_ids` must be an integer tensor of shape ({n},), but got "
                                 f"{ids.dtype} {tuple(ids.shape)}")
            ids = ids.long().repeat_interleave(channels)
        counted = f"(of {n * channels}, counted over batch x channels)"
        bad_target = _nonfinite_volumes(target, n * channels)
        if bad_target:
            raise ValueError(f"`target` holds NaN or inf in volumes {bad_target} {counted}; a reference "
                             "must be finite")
        nonfinite = _nonfinite_volumes(preds, n * channels)
        bad = torch.zeros(n * channels, dtype=torch.bool, device=preds.device)
        bad[nonfinite] = True
        if nonfinite and self.nan_strategy == "error":
            raise ValueError(f"`preds` holds NaN or inf in volumes {nonfinite} {counted}; "
                             "pass nan_strategy='ignore' to the 2D metric to skip such volumes or "
                             "'propagate' to score them as NaN")
        keep = ~bad if self.nan_strategy == "ignore" else torch.ones_like(bad)
        return keep, ids, self._scored_planes(tuple(preds.shape[-3:]), warn)

    def _scored_planes(self, shape: tuple[int, ...], warn: bool = False) -> tuple[str, ...]:
        """The planes whose slices the encoder accepts; raise if none (warn once about the rest)."""
        d, h, w = _resampled_shape(shape, self.spacing)
        sides = {"axial": (h, w), "coronal": (d, w), "sagittal": (d, h)}
        smallest = self.metric.network.minimum_size()
        scored = tuple(p for p in self.planes if min(sides[p]) >= smallest)
        thin = ", ".join(f"{p} ({sides[p][0]}x{sides[p][1]})" for p in self.planes if p not in scored)
        resampled = f", {(d, h, w)} after resampling to isotropic voxels" if self.spacing else ""
        encoder = (f"{type(self.metric).__name__}'s encoder needs slices of at least "
                   f"{smallest}x{smallest} pixels")
        if not scored:
            raise ValueError(f"VolumeDFD: no plane of volumes (D, H, W) = {tuple(shape)}{resampled} can be "
                             f"scored: {encoder}, but the slices of {thin} are thinner")
        if thin and warn and not self._warned:
            self._warned = True
            warnings.warn(f"VolumeDFD: plane(s) {thin} of volumes (D, H, W) = {tuple(shape)}{resampled} "
                          f"skipped: {encoder}; scoring {', '.join(scored)} (warned once per metric)",
                          UserWarning, stacklevel=3)
        return scored

    def validate(self, preds: Tensor, target: Tensor, volume_ids: Tensor | None = None) -> None:
        """Raise the input error :meth:`update` would raise for this batch; change nothing."""
        self._checked(preds, target, volume_ids)

    # ------------------------------------------------------------------ scoring
    def _volumes(self, x: Tensor) -> Tensor:
        """``(N, [C,] D, H, W)`` -> ``(N*C, D', H', W')`` real volumes (magnitude, resampled)."""
        x = magnitude(x).reshape(-1, *x.shape[-3:])
        return x if self.spacing is None else isotropic(x, self.spacing)

    def volume_values(self, preds: Tensor, target: Tensor, planes: Sequence[str] | None = None) -> Tensor:
        """Per-volume values ``(N*C,)`` (float64) of a checked batch, without changing any state."""
        p, t = self._volumes(preds), self._volumes(target)
        planes = self._scored_planes(tuple(preds.shape[-3:])) if planes is None else planes
        per_plane = []
        for plane in planes:
            order = _PERMUTATION[plane]
            stack_p, stack_t = p.permute(order), t.permute(order)  # (V, slices, h, w)
            v, s = stack_p.shape[:2]
            values = _slice_values(self.metric, stack_p.reshape(v * s, *stack_p.shape[2:]),
                                   stack_t.reshape(v * s, *stack_t.shape[2:]))
            per_plane.append(values.double().reshape(v, s).mean(dim=1))
        return torch.stack(per_plane).mean(dim=0)

    def _ensure_fingerprint(self) -> None:
        if self._fingerprinted:
            return
        identity = repr((type(self).__qualname__, _identity(self.metric), self.planes, self.spacing,
                         self.reduction))
        digest = hashlib.blake2b(identity.encode(), digest_size=_FINGERPRINT_BYTES).digest()
        value = torch.tensor(list(digest), dtype=torch.long, device=self.device)
        self._defaults["fingerprint"] = value.clone()
        self.fingerprint = value
        self._fingerprinted = True

    def update(self, preds: Tensor, target: Tensor, volume_ids: Tensor | None = None) -> None:
        """Score a batch of volumes.

        Args:
            preds: ``(N, D, H, W)`` or ``(N, C, D, H, W)`` (each channel its own volume), real or
                complex.
            target: same shape; complex when ``preds`` is complex.
            volume_ids: optional ``(N,)`` integer ids, kept with ``reduction="none"``
                (:meth:`compute_per_volume`).
        """
        keep, ids, planes = self._checked(preds, target, volume_ids, warn=True)
        self._ensure_fingerprint()
        skipped = int((~keep).sum())
        kept = keep.to(preds.device)
        if skipped:
            preds = preds.reshape(-1, *preds.shape[-3:])[kept]
            target = target.reshape(-1, *target.shape[-3:])[kept]
            ids = None if ids is None else ids[keep.to(ids.device)]
        values = (self.volume_values(preds, target, planes) if preds.shape[0]
                  else torch.zeros(0, dtype=torch.float64, device=preds.device))
        bad = ~torch.isfinite(values.detach())
        if self.nan_strategy != "propagate" and bool(bad.any()):
            if self.nan_strategy == "error":
                raise ValueError(
                    f"VolumeDFD is not finite (NaN or inf) for volumes {bad.nonzero().flatten().tolist()} "
                    f"(of the {values.numel()} scored in this batch) although the inputs are finite: the "
                    f"encoder overflowed (normalization={self.metric.normalization!r}); pass "
                    "nan_strategy='ignore' to the 2D metric to skip such volumes"
                )
            values = values[~bad]
            ids = None if ids is None else ids[~bad.to(ids.device)]
            skipped += int(bad.sum())
        # Only now, with every check passed and every value computed, change the state.
        self._accumulate(values if self.reduction == "mean" else values.float(), ids, skipped)

    def compute_per_volume(self) -> dict[str, Tensor]:
        """``{"ids": ..., "values": ...}`` over all processes, sorted by id (``reduction="none"``)."""
        return self._per_item("compute_per_volume")

    def extra_repr(self) -> str:  # noqa: D102
        return f"planes={self.planes}, spacing={self.spacing}, reduction={self.reduction!r}"
