"""The one table of metric facts, and the one way to turn names into metrics and suites.

Every name a config, a command line or a logged key uses (``val/lpips_vgg``) is a row of
:data:`CATALOG`: the class and its preset arguments, whether it is a pixel metric or a DFD,
whether higher is better, whether it has per-pixel maps, its axis label and unit, the convention
written into ``evaluate``'s columns file, and which defaults include it. Presets such as
``ssim_gaussian`` (SSIM with the Gaussian window) are rows too. Plots, ``evaluate``,
:class:`~lightning_dfd.callbacks.DFDCallback`, ``ReconModule`` and the early-stopping mode all
read it; nothing else restates these facts.

This module imports nothing (``lightning-dfd correlate`` reads the labels without torch); the
builders that turn rows into metrics, :func:`lightning_dfd.build_metric` and
:func:`lightning_dfd.build_suite`, live with the metrics (:mod:`lightning_dfd.metrics.suite`).

Example:
    >>> CATALOG["lpips_vgg"].label, CATALOG["psnr"].higher_is_better
    ('LPIPS-VGG distance', True)
    >>> default_metrics("recon", kind="dfd")
    ('lpips_vgg', 'dists', 'resnet_fd')
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CATALOG", "DFDS", "METRICS", "PIXEL_METRICS", "MetricSpec", "check_names", "default_metrics",
           "is_dfd_name", "metric_label", "unknown_name"]


@dataclass(frozen=True)
class MetricSpec:
    """What the project knows about one metric name.

    Attributes:
        name: the name in configs, command lines and logs (``lpips_vgg``).
        target: ``"module:Class"`` of the metric.
        preset: keyword arguments the name stands for (``{"net": "vgg", "linear": True}``).
        kind: ``"pixel"`` or ``"dfd"``.
        higher_is_better: the direction (equals the class attribute; a test checks it).
        label: axis label without direction (``"LPIPS-VGG distance"``).
        unit: unit or range for labels (``"dB"``, ``"0-1"``; empty: none).
        maps: a DFD with per-pixel maps (``distance_map``); DISTS has none.
        convention: what a column of this metric holds (``evaluate``'s columns file).
        defaults: which default sets include it: ``"recon"`` (ReconModule's DFDs),
            ``"evaluate"`` (``lightning-dfd evaluate --metrics``).
    """

    name: str
    target: str
    preset: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "dfd"
    higher_is_better: bool = False
    label: str = ""
    unit: str = ""
    maps: bool = False
    convention: str = ""
    defaults: frozenset[str] = frozenset()

    @property
    def is_dfd(self) -> bool:
        """True for a deep feature distance."""
        return self.kind == "dfd"

    @property
    def mode(self) -> str:
        """``"max"`` or ``"min"``: how early stopping and checkpointing rank this metric."""
        return "max" if self.higher_is_better else "min"

    @property
    def axis_label(self) -> str:
        """Label, unit or range, and direction: ``"PSNR (dB, higher is better)"``."""
        direction = "higher is better" if self.higher_is_better else "lower is better"
        return f"{self.label} ({self.unit + ', ' if self.unit else ''}{direction})"


_PIXEL = "lightning_dfd.metrics.pixel"
_DFD_CONVENTION = "deep feature distance"
_ROWS = (
    MetricSpec("psnr", f"{_PIXEL}:PSNR", kind="pixel", higher_is_better=True, label="PSNR", unit="dB",
               convention="PSNR in dB, 20 log10(data range / RMSE) (fastmri.evaluate.psnr)",
               defaults=frozenset({"recon", "evaluate"})),
    MetricSpec("ssim", f"{_PIXEL}:SSIM", kind="pixel", higher_is_better=True,
               label="SSIM, fastMRI 7x7 uniform window", unit="0-1",
               convention="SSIM, fastMRI convention (fastmri.evaluate.ssim): 7x7 uniform window, "
                          "sample covariance, K1=0.01, K2=0.03", defaults=frozenset({"recon", "evaluate"})),
    MetricSpec("ssim_gaussian", f"{_PIXEL}:SSIM", {"window": "gaussian"}, kind="pixel",
               higher_is_better=True, label="SSIM, 11x11 Gaussian window, sigma 1.5", unit="0-1",
               convention="SSIM, Wang et al. 2004 / meddlr convention (the paper's column): 11x11 "
                          "Gaussian window, sigma 1.5, K1=0.01, K2=0.03"),
    MetricSpec("nmse", f"{_PIXEL}:NMSE", kind="pixel", label="NMSE", unit="ratio",
               convention="NMSE, ||target - prediction||^2 / ||target||^2 (fastmri.evaluate.nmse)",
               defaults=frozenset({"recon", "evaluate"})),
    MetricSpec("lpips_vgg", "lightning_dfd.metrics.lpips:LPIPS", {"net": "vgg", "linear": True},
               label="LPIPS-VGG distance", maps=True, convention=_DFD_CONVENTION,
               defaults=frozenset({"recon", "evaluate"})),
    MetricSpec("lpips_alex", "lightning_dfd.metrics.lpips:LPIPS", {"net": "alex", "linear": True},
               label="LPIPS-AlexNet distance", maps=True, convention=_DFD_CONVENTION),
    MetricSpec("lpips_vgg_nolin", "lightning_dfd.metrics.lpips:LPIPS", {"net": "vgg", "linear": False},
               label="LPIPS-VGG without linear layers", maps=True, convention=_DFD_CONVENTION),
    MetricSpec("dists", "lightning_dfd.metrics.dists:DISTS", label="DISTS distance", unit="0-1",
               convention=_DFD_CONVENTION, defaults=frozenset({"recon"})),
    MetricSpec("resnet_fd", "lightning_dfd.metrics.resnet:ResNetFD", label="ResNet-50 feature MSE",
               maps=True, convention=_DFD_CONVENTION, defaults=frozenset({"recon"})),
    MetricSpec("rinfd", "lightning_dfd.metrics.resnet:ResNetFD", {"weights": "radimagenet"},
               label="RadImageNet feature MSE", maps=True, convention=_DFD_CONVENTION),
    MetricSpec("ssfd", "lightning_dfd.metrics.ssfd:SSFD", label="SSFD feature MSE", maps=True,
               convention=_DFD_CONVENTION),
    MetricSpec("vaefd", "lightning_dfd.metrics.vaefd:VAEFD", label="Med-VAE latent MSE", maps=True,
               convention=_DFD_CONVENTION),
    MetricSpec("timm_fd", "lightning_dfd.metrics.timm:TimmFD", label="timm feature distance", maps=True,
               convention=_DFD_CONVENTION),
    MetricSpec("hf_fd", "lightning_dfd.metrics.hf:HFFD", label="Hugging Face feature distance", maps=True,
               convention=_DFD_CONVENTION),
)

#: name -> :class:`MetricSpec`, the one table.
CATALOG: dict[str, MetricSpec] = {spec.name: spec for spec in _ROWS}
#: The pixel metrics' names.
PIXEL_METRICS: tuple[str, ...] = tuple(n for n, s in CATALOG.items() if s.kind == "pixel")
#: The deep feature distances' names.
DFDS: tuple[str, ...] = tuple(n for n, s in CATALOG.items() if s.is_dfd)
#: name -> (module, class, preset): the earlier form of the table, read from :data:`CATALOG`.
METRICS: dict[str, tuple[str, str, dict[str, Any]]] = {
    n: (*s.target.split(":"), dict(s.preset)) for n, s in CATALOG.items()  # type: ignore[misc]
}


def unknown_name(name: object, what: str = "metric") -> ValueError:
    """The error for a name not in the catalog: the closest names, then every name."""
    close = difflib.get_close_matches(str(name), CATALOG, n=3)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    return ValueError(f"Unknown {what} {name!r}{hint}; known names: {', '.join(CATALOG)}")


def check_names(names: Sequence[str], what: str = "metric") -> tuple[str, ...]:
    """``names`` as a tuple of catalog names; an unknown one is an error listing every name.

    Example:
        >>> check_names(["psnr", "lpips_vgg"])
        ('psnr', 'lpips_vgg')
        >>> check_names(["lpips_vg"])
        Traceback (most recent call last):
        ...
        ValueError: Unknown metric 'lpips_vg' (did you mean 'lpips_vgg' or ...?); known names: psnr, ...
    """
    for name in names:
        if name not in CATALOG:
            raise unknown_name(name, what)
    return tuple(names)


def is_dfd_name(name: str) -> bool:
    """True when ``name`` is a catalog DFD.

    Example:
        >>> is_dfd_name("dists"), is_dfd_name("psnr"), is_dfd_name("nothing")
        (True, False, False)
    """
    return name in CATALOG and CATALOG[name].is_dfd


def default_metrics(where: str, kind: str | None = None) -> tuple[str, ...]:
    """The names a default set includes: ``"recon"`` (ReconModule) or ``"evaluate"``.

    ``kind`` (``"pixel"`` or ``"dfd"``) keeps only those.
    """
    return tuple(n for n, s in CATALOG.items() if where in s.defaults and kind in (None, s.kind))


def metric_label(name: str) -> str:
    """Axis label of a metric column (name, unit or range, direction); the name itself if unknown.

    Example:
        >>> metric_label("psnr"), metric_label("my_metric")
        ('PSNR (dB, higher is better)', 'my_metric')
    """
    spec = CATALOG.get(str(name))
    return spec.axis_label if spec is not None else str(name)
