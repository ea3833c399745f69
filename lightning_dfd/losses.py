"""A deep feature distance as a training loss: :class:`DFDLoss`.

The loss is the metric's own per-image value (:meth:`DeepFeatureDistance.score`: stateless,
differentiable in ``preds``), reduced over the batch. The encoder stays frozen (no gradient
reaches its weights, it never leaves eval mode) and out of ``state_dict()``; the gradient is
finite also where ``preds == target`` (no ``sqrt(0)`` gradient in any distance, see
:func:`~lightning_dfd.encoders.layers.sqrt_zero_safe`). Built from a name, the encoder runs in
``precision="auto"``: bf16 autocast where the GPU or CPU has fast bf16 units, fp32 elsewhere.

A loss can share the encoder of an existing metric (e.g. the validation metric of the same
name): :func:`sharing_encoder` builds a metric with other options around the *same* network
object, so the weights are held once.

Example:
    >>> import torch
    >>> from lightning_dfd import DFDLoss
    >>> _ = torch.manual_seed(0)
    >>> loss_fn = DFDLoss("ssfd", weights="random", precision="fp32")
    >>> target = torch.rand(2, 32, 32)
    >>> preds = (target + 0.1 * torch.randn(2, 32, 32)).requires_grad_()
    >>> loss = loss_fn(preds, target)
    >>> loss.backward()
    >>> loss.ndim, bool(preds.grad.abs().sum() > 0)
    (0, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lightning_dfd.metrics.base import DeepFeatureDistance, is_dfd
from lightning_dfd.metrics.suite import build_metric
from lightning_dfd.preprocess import check_choice

__all__ = ["LOSS_REDUCTIONS", "DFDLoss", "sharing_encoder"]

#: ``reduction`` values of :class:`DFDLoss`.
LOSS_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def sharing_encoder(metric: DeepFeatureDistance, **options: Any) -> DeepFeatureDistance:
    """A metric on ``metric``'s very network object (one copy of the weights), with other options.

    ``options`` replace ``metric``'s encoder options (``precision``, ``max_batch``,
    ``normalization``, ``nan_strategy``, ``channels_last``); the feature cache and compilation are
    off (a loss neither repeats targets by id nor runs without gradients). Without ``options`` the
    new metric has ``metric``'s options.

    Example:
        >>> from lightning_dfd import ResNetFD
        >>> metric = ResNetFD(weights="random")
        >>> loss_metric = sharing_encoder(metric, precision="bf16")
        >>> loss_metric.network is metric.network, loss_metric.precision, metric.precision
        (True, 'bf16', 'fp32')
    """
    if not isinstance(metric, DeepFeatureDistance):
        raise TypeError(f"Argument `metric` must be a DeepFeatureDistance, but got {type(metric).__name__}")
    current = metric.options
    kwargs = {"normalization": current.normalization, "nan_strategy": current.nan_strategy,
              "max_batch": current.max_batch, "precision": current.precision,
              "channels_last": current.channels_last, **options}
    shared = type(metric).__new__(type(metric))  # its class (names in messages), not its __init__
    DeepFeatureDistance.__init__(shared, metric.network, reduction="none", sync_on_compute=False, **kwargs)
    for name, value in vars(metric).items():  # descriptive attributes (weights, layers, ...)
        if isinstance(value, (str, int, float, tuple)) and name not in vars(shared) \
                and not name.startswith("_"):
            setattr(shared, name, value)
    return shared


class DFDLoss(nn.Module):
    """A deep feature distance as a differentiable loss.

    Args:
        metric: a catalog name (``"ssfd"``, ``"lpips_vgg"``, ...), built with ``metric_kwargs``
            and ``precision="auto"`` unless they say otherwise; or a
            :class:`~lightning_dfd.metrics.base.DeepFeatureDistance` used as it is (its network
            and options; see :func:`sharing_encoder` to change options but share the weights).
        reduction: ``"mean"`` (default) or ``"sum"`` over the images, or ``"none"``: per-image
            values ``(N * C,)``.
        metric_kwargs: arguments of :func:`lightning_dfd.build_metric` (``weights``, ``layers``,
            ``precision``, ``normalization``...), only with a name.

    ``forward(preds, target, mask=None)`` takes what the metric's ``update`` takes: ``(N, H, W)``
    or ``(N, C, H, W)`` images, real or complex, and an optional boolean ROI mask. Images the
    metric's ``nan_strategy="ignore"`` skips are left out of the mean (NaN with ``"none"``).
    """

    def __init__(self, metric: str | DeepFeatureDistance, reduction: str = "mean",
                 **metric_kwargs: Any) -> None:
        super().__init__()
        check_choice("reduction", reduction, LOSS_REDUCTIONS)
        if isinstance(metric, str):
            if not is_dfd(metric):
                raise ValueError(f"Argument `metric` must name a deep feature distance, but got {metric!r} "
                                 "(a pixel metric or an unknown name)")
            metric = build_metric(metric, **{"precision": "auto", **metric_kwargs})
        elif not isinstance(metric, DeepFeatureDistance):
            raise TypeError(f"Argument `metric` must be a DFD name or a DeepFeatureDistance, but got "
                            f"{type(metric).__name__}")
        elif metric_kwargs:
            raise TypeError(f"DFDLoss takes metric arguments {sorted(metric_kwargs)} only with a metric "
                            "name; build the metric with them instead (or use sharing_encoder)")
        for p in metric.network.parameters():  # frozen already; a loss makes sure of it
            p.requires_grad_(False)
        self.metric = metric
        self.reduction = reduction

    @property
    def network(self) -> nn.Module:
        """The frozen encoder + distance the loss runs."""
        return self.metric.network

    def forward(self, preds: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """The reduced (or per-image) distance of ``preds`` to ``target``; differentiable in ``preds``."""
        values = self.metric.score(preds, target.detach(), mask)
        if self.reduction == "none":
            return values
        kept = values[~torch.isnan(values.detach())]
        if kept.numel() == 0:
            raise ValueError(f"DFDLoss({type(self.metric).__name__}) has no image left to score: every "
                             f"image of the batch ({values.numel()}) was skipped by "
                             f"nan_strategy={self.metric.nan_strategy!r}")
        return kept.mean() if self.reduction == "mean" else kept.sum()

    def extra_repr(self) -> str:  # noqa: D102
        return f"reduction={self.reduction!r}"
