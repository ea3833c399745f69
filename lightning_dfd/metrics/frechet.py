"""The Fréchet distance between Gaussian fits of pooled deep features (FID on any DFD encoder).

A distribution-level distance for generative and unpaired reconstruction: ``update(images,
real=True)`` for the reference set, ``update(images, real=False)`` for the generated one, then
``compute()``. Each image is encoded by a DFD encoder, each of its feature maps is averaged over
its positions, and the per-layer means are concatenated into one vector per image (``extract``).
The states are torchmetrics' ``FrechetInceptionDistance`` layout — per side a float64 feature sum
``(D,)``, a float64 sum of outer products ``(D, D)`` and a count, summed across processes — and
``compute()`` is torchmetrics' own ``_compute_fid`` on the unbiased means and covariances.

Why not a subclass of ``FrechetInceptionDistance`` with a custom ``feature`` module: its
``update`` counts ``imgs.shape[0]`` samples (a ``(N, C, H, W)`` batch here holds ``N * C`` images),
validates nothing (NaN, shapes) and casts the result to the dtype of the last batch; its encoder
sits in ``state_dict()``; and the input pipeline here (complex -> magnitude, channels as images,
min-max scaling, chunking) is ours. What it gets right is kept as is: the state names and
layout, ``reset_real_features``, and ``_compute_fid``.

Example:
    >>> import torch
    >>> from lightning_dfd import FrechetDFD
    >>> _ = torch.manual_seed(0)
    >>> fd = FrechetDFD("resnet_fd", weights="random")
    >>> real, fake = torch.rand(8, 32, 32), torch.rand(8, 32, 32) ** 2
    >>> fd.update(real, real=True)
    >>> fd.update(fake, real=False)
    >>> bool(fd.compute() > 0), tuple(fd.extract(real).shape)
    (True, (8, 1024))
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import _compute_fid

from lightning_dfd.encoders.base import FeatureDistanceNetwork
from lightning_dfd.metrics.base import DeepFeatureDistance, FrozenEncoderMixin
from lightning_dfd.preprocess import check_choice, nonfinite_images, normalize_images, to_grayscale_batch

#: ``normalization`` values: each image min-max scaled to [0, 1], or passed through.
FRECHET_NORMALIZATIONS = ("minmax", "none")
#: keyword arguments that configure :class:`torchmetrics.Metric` itself (the rest build the encoder)
METRIC_KWARGS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                 "distributed_available_fn", "sync_on_compute", "compute_with_cache")
_SIDES = ("real", "fake")


def build_encoder(encoder: str | DeepFeatureDistance | FeatureDistanceNetwork,
                  **encoder_kwargs: Any) -> FeatureDistanceNetwork:
    """A catalog name (built with ``encoder_kwargs``), a DFD metric or a network -> the network.

    Example:
        >>> type(build_encoder("lpips_vgg", weights="random")).__name__
        'LPIPSNetwork'
    """
    if isinstance(encoder, str):
        from lightning_dfd.catalog import DFDS, is_dfd_name
        from lightning_dfd.metrics.suite import build_metric

        if not is_dfd_name(encoder):
            raise ValueError(f"Argument `encoder` must be a DFD name, one of {DFDS}, a DFD metric or "
                             f"a FeatureDistanceNetwork, but got {encoder!r}")
        return build_metric(encoder, **encoder_kwargs).network
    if encoder_kwargs:
        raise ValueError(f"encoder arguments {sorted(encoder_kwargs)} only apply to an encoder given by "
                         f"name; {type(encoder).__name__} is already built")
    if isinstance(encoder, DeepFeatureDistance):
        return encoder.network
    if isinstance(encoder, FeatureDistanceNetwork):
        return encoder
    raise TypeError(f"Argument `encoder` must be a DFD name, a DFD metric or a FeatureDistanceNetwork, "
                    f"but got {type(encoder).__name__}")


class FrechetDFD(FrozenEncoderMixin, Metric):
    """Fréchet distance between Gaussian fits of spatially pooled features of a DFD encoder.

    ``extract`` turns ``(N, H, W)`` or ``(N, C, H, W)`` images (real or complex: magnitude; each
    channel an image) into ``(N * C, D)`` features: each image min-max scaled to [0, 1]
    (``normalization``), encoded as its DFD encodes it, every feature map averaged over its
    positions, the per-layer means concatenated (``D`` = the channels of all layers).
    ``compute()`` is ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` over the images of
    every process (float64 sums, unbiased covariances).

    Args:
        encoder: a DFD name (``"ssfd"``, ``"resnet_fd"``, ``"lpips_vgg"`` (its VGG taps),
            ``"dists"``, ``"vaefd"``, ``"timm_fd"``, ``"hf_fd"``...) built with ``encoder_kwargs``,
            or a built DFD metric (its encoder is shared, not copied) or ``FeatureDistanceNetwork``.
        reset_real_features: False keeps the real statistics across ``reset()`` (torchmetrics' FID).
        normalization: ``"minmax"`` (each image to [0, 1] by its own min / max) or ``"none"``.
        max_batch: at most this many images per encoder pass (None: the whole batch).
        encoder_kwargs: arguments of the named DFD (``weights="radimagenet"``, ``layers=...``,
            ``precision="bf16"``...); torchmetrics' own (``sync_on_compute``, ``process_group``,
            ...) go to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> from lightning_dfd import FrechetDFD
        >>> _ = torch.manual_seed(0)
        >>> fd = FrechetDFD("lpips_vgg", weights="random", reset_real_features=False)
        >>> fd.update(torch.rand(4, 2, 32, 32), real=True)   # 8 real images (2 channels each)
        >>> fd.update(torch.rand(3, 32, 32, dtype=torch.complex64), real=False)
        >>> value = fd.compute()
        >>> fd.reset()                                       # the real statistics stay
        >>> int(fd.real_features_num_samples), int(fd.fake_features_num_samples)
        (8, 0)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    plot_lower_bound = 0.0

    real_features_sum: Tensor
    real_features_cov_sum: Tensor
    real_features_num_samples: Tensor
    fake_features_sum: Tensor
    fake_features_cov_sum: Tensor
    fake_features_num_samples: Tensor

    def __init__(
        self,
        encoder: str | DeepFeatureDistance | FeatureDistanceNetwork,
        *,
        reset_real_features: bool = True,
        normalization: str = "minmax",
        max_batch: int | None = 4,
        **encoder_kwargs: Any,
    ) -> None:
        metric_kwargs = {k: encoder_kwargs.pop(k) for k in METRIC_KWARGS if k in encoder_kwargs}
        super().__init__(**metric_kwargs)
        if not isinstance(reset_real_features, bool):
            raise ValueError(f"Argument `reset_real_features` must be a bool, "
                             f"but got {reset_real_features!r}")
        check_choice("normalization", normalization, FRECHET_NORMALIZATIONS)
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int)
                                      or max_batch < 1):
            raise ValueError(f"Argument `max_batch` must be a positive integer or None, "
                             f"but got {max_batch!r}")
        self.reset_real_features, self.normalization, self.max_batch = (
            reset_real_features, normalization, max_batch)
        self.network = build_encoder(encoder, **encoder_kwargs)
        self.num_features = self._feature_count()
        d = self.num_features
        for side in _SIDES:
            self.add_state(f"{side}_features_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_features_cov_sum", torch.zeros(d, d, dtype=torch.float64),
                           dist_reduce_fx="sum")
            self.add_state(f"{side}_features_num_samples", torch.tensor(0, dtype=torch.long),
                           dist_reduce_fx="sum")
        # The encoder is rebuilt from its arguments, never saved with the metric's states.
        self._keep_encoder_out_of_checkpoints()

    # ------------------------------------------------------------------ features
    def _encode(self, images01: Tensor) -> list[Tensor]:
        """The one place images meet the encoder: ``(M, 1, H, W)`` in [0, 1] -> feature maps."""
        return self.network(images01)

    def _pooled(self, images01: Tensor) -> Tensor:
        """Per-layer spatial means of the features, concatenated: ``(M, D)``, chunked by ``max_batch``."""
        step = self.max_batch or images01.shape[0]
        out = []
        with torch.no_grad():
            for start in range(0, images01.shape[0], step):
                feats = self._encode(images01[start : start + step])
                out.append(torch.cat([f.float().mean(dim=(-2, -1)) for f in feats], dim=1))
        return torch.cat(out)

    def _feature_count(self) -> int:
        """``D``: the network's stated channels, or one encoded zero image at its minimum size."""
        channels = getattr(self.network, "channels", None)
        if channels:
            return int(sum(channels))
        size = self.network.minimum_size()
        device = next((t.device for t in self.network.parameters()), torch.device("cpu"))
        return int(self._pooled(torch.zeros(1, 1, size, size, device=device)).shape[1])

    def _images(self, images: Tensor) -> Tensor:
        """Checked ``(M, 1, H, W)`` images scaled as ``normalization`` says."""
        if not isinstance(images, Tensor):
            raise TypeError(f"`images` must be a torch.Tensor, but got {type(images).__name__}")
        if not (images.is_floating_point() or images.is_complex()):
            raise TypeError(f"`images` must have a floating point or complex dtype, but got {images.dtype}; "
                            "integer images carry no scale: convert them with `.float()` first")
        if images.ndim not in (3, 4):
            raise ValueError(f"`images` must have shape (N, H, W) or (N, C, H, W), "
                             f"but got {tuple(images.shape)}")
        if images.numel() == 0:
            raise ValueError(f"`images` holds no images (shape {tuple(images.shape)})")
        smallest = self.network.minimum_size()
        if min(images.shape[-2:]) < smallest:
            raise ValueError(f"{type(self.network).__name__} needs images of at least {smallest}x{smallest} "
                             f"pixels, but got {tuple(images.shape[-2:])}")
        x = to_grayscale_batch(images)
        bad = nonfinite_images(x)
        if bad.any():
            raise ValueError(f"`images` holds NaN or inf in images {bad.nonzero().flatten().tolist()} "
                             f"(of {x.shape[0]}, counted over batch x channels): a Fréchet distance "
                             "needs them all")
        return normalize_images(x, self.normalization)

    def extract(self, images: Tensor) -> Tensor:
        """The features this metric pools: ``(N * C, D)`` float32, one row per image and channel.

        Args:
            images: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex.
        """
        return self._pooled(self._images(images))

    # ------------------------------------------------------------------ metric API
    def update(self, images: Tensor, real: bool) -> None:
        """Add a batch to the real (reference) or the fake (generated) statistics.

        Args:
            images: ``(N, H, W)`` or ``(N, C, H, W)``, real or complex; every channel is an image.
            real: True for the reference set, False for the generated one.
        """
        if not isinstance(real, bool):
            raise TypeError(f"Argument `real` must be True or False, but got {real!r}")
        feats = self.extract(images).double()
        if not torch.isfinite(feats).all():
            rows = (~torch.isfinite(feats).all(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"{type(self.network).__name__} features are not finite for images {rows}: the "
                             f"encoder overflowed (normalization={self.normalization!r})")
        side = "real" if real else "fake"  # every check passed: only now change the state
        setattr(self, f"{side}_features_sum", getattr(self, f"{side}_features_sum") + feats.sum(dim=0))
        setattr(self, f"{side}_features_cov_sum", getattr(self, f"{side}_features_cov_sum") + feats.T @ feats)
        setattr(self, f"{side}_features_num_samples",
                getattr(self, f"{side}_features_num_samples") + feats.shape[0])

    def _gaussian(self, side: str) -> tuple[Tensor, Tensor]:
        n = getattr(self, f"{side}_features_num_samples")
        mean = getattr(self, f"{side}_features_sum") / n
        cov = (getattr(self, f"{side}_features_cov_sum") - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> Tensor:
        """The Fréchet distance between the real and the fake Gaussians (float64 inside, float32 out)."""
        counts = {side: int(getattr(self, f"{side}_features_num_samples")) for side in _SIDES}
        if min(counts.values()) < 2:
            raise RuntimeError(
                f"FrechetDFD needs at least 2 real and 2 fake images for the covariances, but has "
                f"{counts['real']} real and {counts['fake']} fake (over all processes; each channel "
                "counts as an image)"
            )
        (mu_r, cov_r), (mu_f, cov_f) = self._gaussian("real"), self._gaussian("fake")
        return _compute_fid(mu_r, cov_r, mu_f, cov_f).float()

    def reset(self) -> None:
        """Reset the states; with ``reset_real_features=False`` the real statistics stay."""
        if self.reset_real_features:
            super().reset()
            return
        kept = {name: deepcopy(getattr(self, name)) for name in
                ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")}
        super().reset()
        for name, value in kept.items():
            setattr(self, name, value)

    def _apply(self, fn: Callable, exclude_state: Any = "") -> nn.Module:  # noqa: D102
        # The encoder follows device moves only (FrozenEncoderMixin); the sums stay float64.
        this = super()._apply(fn, exclude_state)
        for side in _SIDES:
            for name in (f"{side}_features_sum", f"{side}_features_cov_sum"):
                if name in this._defaults:
                    setattr(this, name, getattr(this, name).double())
                    this._defaults[name] = this._defaults[name].double()
        return this

    def plot(self, val: Tensor | None = None, ax: Any = None) -> Any:
        """Plot a value (or the current ``compute()``) with torchmetrics' plotting helper."""
        return self._plot(val, ax)

    def extra_repr(self) -> str:  # noqa: D102
        return (f"network={getattr(self.network, 'identity', '')!r}, features={self.num_features}, "
                f"normalization={self.normalization!r}, reset_real_features={self.reset_real_features}")
