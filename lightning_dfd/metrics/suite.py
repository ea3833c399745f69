"""The one way to turn catalog names into metrics and suites (:mod:`lightning_dfd.catalog`).

Example:
    >>> type(build_metric("lpips_alex", weights="random")).__name__
    'LPIPS'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from torchmetrics import Metric

from lightning_dfd.catalog import CATALOG, unknown_name
from lightning_dfd.metrics.collection import DFDCollection

__all__ = ["build_metric", "build_suite", "metric_class"]


def metric_class(name: str) -> type[Metric]:
    """The class behind a metric name."""
    if name not in CATALOG:
        raise unknown_name(name)
    module, cls = CATALOG[name].target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_metric(name: str, **kwargs: Any) -> Metric:
    """Instantiate a metric by name; ``kwargs`` override the preset (e.g. ``weights="random"``).

    A ``weights`` keyword means nothing to a pixel metric and is dropped for one (so a suite-wide
    ``weights`` can be passed to every name).
    """
    cls = metric_class(name)
    spec = CATALOG[name]
    if not spec.is_dfd:
        kwargs.pop("weights", None)
    return cls(**{**spec.preset, **kwargs})


MetricsArg = Sequence[str] | Mapping[str, Metric | Mapping[str, Any] | None]


def build_suite(metrics: MetricsArg, *, prefix: str | None = None,
                dfd_options: Mapping[str, Any] | None = None, **options: Any) -> DFDCollection:
    """The one suite builder: a :class:`~lightning_dfd.metrics.DFDCollection` from names.

    Used by ``ReconModule``, :class:`~lightning_dfd.callbacks.DFDCallback` and ``evaluate``.

    Args:
        metrics: catalog names, or a mapping name -> keyword arguments of :func:`build_metric`
            (``{"lpips_vgg": {"weights": "random"}}``, YAML-friendly), None, or a ready
            ``torchmetrics.Metric`` (used as it is, under that name).
        prefix: prepended to every key when the suite is computed (``"val/"``).
        dfd_options: keyword arguments of every DFD built by name (``weights``, ``precision``,
            ``feature_cache``...); a metric's own arguments override them.
        options: keyword arguments of every metric built by name (``reduction="none"``,
            ``sync_on_compute=False``...); a metric's own arguments override them.

    Example:
        >>> suite = build_suite(["psnr", "lpips_alex"], prefix="val/", dfd_options={"weights": "random"})
        >>> sorted(suite.keys())
        ['val/lpips_alex', 'val/psnr']
    """
    if isinstance(metrics, str):
        raise TypeError("Argument `metrics` must be a list of names or a mapping, not a string")
    specs = metrics if isinstance(metrics, Mapping) else {name: None for name in metrics}
    if not specs:
        raise ValueError("Argument `metrics` names no metric")
    built: dict[str, Metric] = {}
    for name, spec in specs.items():
        if isinstance(spec, Metric):
            built[name] = spec
            continue
        if name not in CATALOG:
            raise unknown_name(name)
        if spec is not None and not isinstance(spec, Mapping):
            raise TypeError(f"Argument `metrics[{name!r}]` must be a Metric, a mapping of keyword "
                            f"arguments or None, but got {type(spec).__name__}")
        kwargs = {**options, **(dict(dfd_options or {}) if CATALOG[name].is_dfd else {}), **dict(spec or {})}
        built[name] = build_metric(name, **kwargs)
    return DFDCollection(built, prefix=prefix)
