"""Any timm model as a deep feature distance network (``features_only``).

The encoder is ``timm.create_model(model_name, features_only=True, out_indices=layers,
pretrained=False)``; weights are then loaded by this module, never by timm (timm loads a
features-only model with ``strict=False`` and only logs when a file with prefixed keys loads
nothing). A weights file is a full-model state dict in timm's layout (what ``timm`` saves and
publishes on the Hugging Face hub, ``.safetensors`` or a torch file) or the state dict of the
features-only model itself; every feature parameter and buffer must be found in it with its shape,
or loading fails with an error naming the missing keys. Keys a features model does not use (the
classifier head, blocks after the last tapped one) are ignored.

Images in [0, 1] are replicated to 3 channels and normalised with the model's own
``pretrained_cfg`` mean / std. Every LayerNorm / GroupNorm / RMSNorm of the model (torch's and
timm's, e.g. ConvNeXt's ``LayerNorm2d`` and ViT's ``nn.LayerNorm``) gets a forward pre-hook that
divides each of its normalisation units by a power of two (:func:`make_norms_scale_safe`), so
with ``normalization="none"`` their variances do not overflow on huge images (which silently
mapped every image to the same features): values are unchanged, bit for bit, up to magnitudes
of ~1e12. Vision transformers (anything whose constructor takes
``dynamic_img_size``) are built with ``dynamic_img_size=True, dynamic_img_pad=True`` unless
``model_kwargs`` says otherwise, so any image size works (positional embeddings are
interpolated, the input is padded to a multiple of the patch size).

``timm`` is imported when a network is built: ``import lightning_dfd`` works without it.

Example:
    >>> import torch
    >>> net = TimmFDNetwork("resnet18", layers=(1,), weights="random")
    >>> [f.shape for f in net(torch.rand(1, 1, 32, 32))]
    [torch.Size([1, 64, 8, 8])]
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_dfd import weights as W
from lightning_dfd.encoders.base import (
    FeatureDistanceNetwork,
    difference_maps,
    mean_absolute_distance,
    mean_squared_distance,
    unit_difference_maps,
    unit_distance,
)
from lightning_dfd.encoders.layers import scale_down, scale_down_groups, unit_normalize  # noqa: F401
from lightning_dfd.preprocess import to_rgb
from lightning_dfd.weights import seeds_random_init

TIMM_DISTANCES = ("mse", "mae", "unit")
_VIT_DEFAULTS = {"dynamic_img_size": True, "dynamic_img_pad": True}


def import_timm() -> Any:
    """The ``timm`` module, or an ImportError that says how to install it."""
    try:
        import timm
    except ModuleNotFoundError as err:
        if err.name != "timm":
            raise
        raise ImportError(
            "TimmFD needs the `timm` package, which the core install of lightning-dfd does not "
            "include: pip install 'lightning-dfd[timm]'"
        ) from err
    return timm


_DISTANCES = {"mse": mean_squared_distance, "mae": mean_absolute_distance, "unit": unit_distance}

#: timm's own scale-invariant normalisations that do not subclass a torch one.
_TIMM_NORMS = frozenset({"RmsNorm", "RmsNorm2d", "RmsNormFp32", "RmsNorm2dFp32",
                         "SimpleNorm", "SimpleNorm2d", "SimpleNormFp32", "SimpleNorm2dFp32"})


def _normalized_dims(module: nn.Module) -> tuple[int, ...] | str | None:
    """The dims one unit of ``module`` normalises over (``"groups"`` for GroupNorm; None: not a norm)."""
    if isinstance(module, nn.GroupNorm):
        return "groups"
    names = {cls.__name__ for cls in type(module).__mro__}
    if not isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and not names & _TIMM_NORMS:
        return None
    if any("2d" in name for name in names & (_TIMM_NORMS | {type(module).__name__})):
        return (1,)  # timm's *2d norms normalise the channels of (N, C, H, W) maps
    shape = getattr(module, "normalized_shape", None)
    k = len(shape) if shape is not None else 1
    return tuple(range(-k, 0))


def _scale_down_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a scale-invariant normalisation: its input scaled per unit (exact)."""
    x, *rest = args
    dims = _normalized_dims(module)
    x = scale_down_groups(x, module.num_groups) if dims == "groups" else scale_down(x, dims)
    return (x, *rest)


def make_norms_scale_safe(model: nn.Module) -> int:
    """Hook every LayerNorm / GroupNorm / RMSNorm in ``model`` to scale its input down when huge.

    Each unit the layer normalises (a token's channels, a position's channels for timm's
    ``*2d`` norms, an image's channel group) is divided by a power of two that is exactly 1 up to
    magnitudes of 2**40, so the output is unchanged (bit for bit) there and, beyond, equal to the
    exact one instead of the bias that an overflowed variance gives. Returns the number of layers
    hooked.

    Example:
        >>> ln, x = nn.LayerNorm(4), torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
        >>> bool(torch.isfinite(ln(x * 1e20)).all())  # the variance overflowed
        False
        >>> make_norms_scale_safe(ln), bool(torch.allclose(ln(x * 1e20), ln(x * 1e10)))
        (1, True)
    """
    count = 0
    for module in model.modules():
        if _normalized_dims(module) is not None:
            module.register_forward_pre_hook(_scale_down_input)
            count += 1
    return count


#: The key prefix of a wrapped model (``self.model = timm.create_model(...)``), stripped on load.
WRAPPER_PREFIX = "model."


def _normalized_key(key: str) -> str:
    """Module paths compared up to ``.`` vs ``_`` (timm flattens ``stages.0`` to ``stages_0``)."""
    return key.replace("_", ".")


def read_state_dict(weights: str | os.PathLike) -> dict[str, Tensor]:
    """A registry name or a file (``.safetensors`` or a torch file) -> a flat state dict.

    Torch files are read with ``torch.load(weights_only=True)``; a leading ``module.`` is
    stripped (a tensor stored both plain and prefixed is refused); a ``state_dict`` / ``model`` /
    ``state_dict_ema`` entry is unwrapped. A wrapper's ``model.`` prefix is handled by
    :func:`unwrapped`.
    """
    path = W.resolve(weights)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ModuleNotFoundError as err:  # a dependency of timm, so normally present
            raise ImportError("reading .safetensors weights needs the `safetensors` package") from err
        try:
            state = load_file(str(path))
        except Exception as err:
            raise W.CorruptWeightsError(f"cannot load weights file {path}: not a safetensors file "
                                        f"({type(err).__name__})") from err
        return W.state_dict_from(state)
    return W.state_dict_from(W.load_checkpoint(path), "state_dict", "model", "state_dict_ema")


def unwrapped(model: nn.Module, state: Mapping[str, Tensor], *, source: str) -> Mapping[str, Tensor]:
    """``state`` without the ``model.`` prefix of a wrapper (a LightningModule's ``self.model``).

    Stripped only when the file's keys carry it and ``model``'s own keys are not already among
    them (timm's ``FeatureGetterNet`` names its own keys ``model.*``). A file holding tensors both
    plain and prefixed is refused, naming the duplicated keys.
    """
    if not any(key.startswith(WRAPPER_PREFIX) for key in state):
        return state
    stripped = W.without_prefix(state, WRAPPER_PREFIX, source=f"weights {source}")
    return state if set(model.state_dict()) <= set(state) else stripped


def map_state_dict(model: nn.Module, state: Mapping[str, Tensor], *, source: str,
                   prefix: str = "") -> dict[str, Tensor]:
    """Find every entry of ``model.state_dict()`` in ``state`` (a full-model or features layout).

    Args:
        model: the features-only model.
        state: the file's state dict.
        source: the file, for messages.
        prefix: the wrapper's prefix of the original model's keys (``"model."`` for timm's
            ``FeatureGetterNet``).

    Raises:
        CorruptWeightsError: a feature parameter/buffer is missing or has another shape (the
            message names the first missing keys and a few of the file's keys).
    """
    own = model.state_dict()
    if set(own) <= set(state):  # saved from a features-only model: same keys
        found = {key: state[key] for key in own}
    else:
        by_name: dict[str, list[str]] = {}
        for key in state:
            by_name.setdefault(_normalized_key(key), []).append(key)
        found = {}
        for key in own:
            matches = by_name.get(_normalized_key(key.removeprefix(prefix)), [])
            if len(matches) > 1:
                raise W.CorruptWeightsError(f"weights {source}: keys {matches} all fit {key!r}; "
                                            "save the features-only model's state_dict() instead")
            if matches:
                found[key] = state[matches[0]]
    # BatchNorm's step counter carries no weights: a file without it is still complete.
    missing = [k for k in own if k not in found and not k.endswith("num_batches_tracked")]
    if missing:
        raise W.CorruptWeightsError(
            f"weights {source} do not fit {type(model).__name__}: {len(missing)} of {len(own)} "
            f"feature parameters/buffers are missing, e.g. {missing[:5]}; the file has keys like "
            f"{sorted(state)[:5]} (a prefixed or differently named state dict? strip the prefix, "
            "or save the timm model's own state_dict())"
        )
    wrong = [f"{k}: file {tuple(found[k].shape)} vs model {tuple(own[k].shape)}"
             for k in found if found[k].shape != own[k].shape]
    if wrong:
        raise W.CorruptWeightsError(
            f"weights {source} do not fit {type(model).__name__}: shape mismatch for {wrong[:5]} "
            "(built with other model_kwargs, e.g. img_size?)"
        )
    return {k: (found[k] if k in found else own[k]) for k in own}


def default_weights(model_name: str) -> str:
    """The first registered weights for ``model_name`` (``arch == "timm:<model_name>"``)."""
    for name, spec in W.registry().items():
        if spec.arch == f"timm:{model_name}":
            return name
    raise ValueError(f"No registered weights for timm model {model_name!r}: pass `weights` "
                     "(a file path, a registry name, or 'random' explicitly)")


def create_features_model(model_name: str, layers: tuple[int, ...],
                          model_kwargs: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model(..., features_only=True, pretrained=False)`` with the ViT defaults."""
    timm = import_timm()
    kwargs = dict(model_kwargs)
    if not set(_VIT_DEFAULTS) & set(kwargs):
        try:
            return timm.create_model(model_name, features_only=True, out_indices=layers,
                                     pretrained=False, **_VIT_DEFAULTS, **kwargs)
        except TypeError as err:
            if "dynamic_img" not in str(err):
                raise
    return timm.create_model(model_name, features_only=True, out_indices=layers, pretrained=False,
                             **kwargs)


class TimmFDNetwork(FeatureDistanceNetwork):
    """Features of a timm model at ``out_indices``, compared by MSE, MAE or unit-normalised L2.

    Args:
        model_name: any timm model that supports ``features_only`` (``timm.list_models()``).
        layers: timm ``out_indices`` (stages for CNNs, blocks for ViTs; negative counts from
            the end); distances are summed over them.
        weights: ``"random"`` (timm's initialisation), a registry name (``convnext_tiny.fb_in1k``,
            ... see ``lightning-dfd weights list``), a file path, or None: the first registered
            weights of ``model_name`` (an error when there are none: never random by itself).
        distance: ``"mse"``, ``"mae"`` or ``"unit"`` (LPIPS-style: channel-unit-normalised
            squared difference, summed over channels, averaged over positions, summed over layers).
        model_kwargs: more arguments of ``timm.create_model`` (``img_size``, ``drop_path_rate``,
            ``dynamic_img_size``...).
    """

    @seeds_random_init
    def __init__(
        self,
        model_name: str = "convnext_tiny",
        layers: int | Iterable[int] = (2,),
        weights: str | os.PathLike | None = None,
        distance: str = "mse",
        model_kwargs: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if distance not in TIMM_DISTANCES:
            raise ValueError(f"Argument `distance` must be one of {TIMM_DISTANCES}, but got {distance!r}")
        layers = (layers,) if isinstance(layers, int) else tuple(int(i) for i in layers)
        if not layers:
            raise ValueError("Argument `layers` must name at least one timm out_index")
        kwargs = dict(model_kwargs or {})
        weights_key = default_weights(model_name) if weights is None else os.fspath(weights)
        spec = W.registry().get(weights_key)
        if spec is not None and spec.arch != f"timm:{model_name}":
            raise ValueError(f"weights {weights_key!r} are for {spec.arch!r}, not timm:{model_name!r}")
        self.body = create_features_model(model_name, layers, kwargs)
        make_norms_scale_safe(self.body)
        if weights_key != "random":
            prefix = "model." if type(self.body).__name__ == "FeatureGetterNet" else ""
            state = read_state_dict(weights_key)
            state = map_state_dict(self.body, unwrapped(self.body, state, source=weights_key),
                                   source=weights_key, prefix=prefix)
            self.body.load_state_dict(state, strict=True)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"timm model {model_name!r} expects {len(mean)} channels; TimmFD feeds 3")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.model_name, self.layers, self.distance_name = model_name, layers, distance
        self.channels = tuple(self.body.feature_info.channels())
        self._distance = _DISTANCES[distance]
        options = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
        self.features_identity = f"timm-{model_name}-{weights_key}-{'+'.join(map(str, layers))}-{options}"
        self.identity = f"{self.features_identity}-{distance}"
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] grayscale -> 3 channels normalised with the model's mean / std."""
        return (to_rgb(images) - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def features(self, x: Tensor) -> list[Tensor]:
        """Feature maps ``(M, C_l, H_l, W_l)`` at each out_index, in order."""
        return list(self.body(x))

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """MSE / MAE over channels and positions, or the unit-normalised distance; summed over layers."""
        return self._distance(feats_preds, feats_target)

    def layer_maps(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
        """Per-position contributions ``(M, 1, h_l, w_l)`` per layer; ``distance`` is the sum of their means.

        MSE / MAE: the squared / absolute difference averaged over channels; ``"unit"``: the
        squared difference of the channel-unit-normalised maps summed over channels (LPIPS-style).
        """
        if self.distance_name != "unit":
            return difference_maps(feats_preds, feats_target, absolute=self.distance_name == "mae")
        return unit_difference_maps(feats_preds, feats_target)
