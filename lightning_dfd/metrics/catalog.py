"""Moved: the metric facts are :mod:`lightning_dfd.catalog`, the builders :mod:`lightning_dfd.metrics.suite`.

These names stay importable from here for code written against earlier versions.
"""

from lightning_dfd.catalog import METRICS, PIXEL_METRICS  # noqa: F401 - re-exported
from lightning_dfd.metrics.suite import build_metric, build_suite, metric_class  # noqa: F401 - re-exported
