"""Any Hugging Face ``transformers`` vision backbone as a deep feature distance network.

**Which model.** ``model_name_or_path`` is, in this order:

1. a registry name of a model folder (``rad-dino``, ``medsam-vit-base``, ``dinov2-small``,
   ``dinov2-base``; ``lightning-dfd weights list``) or the hub id of one (``"microsoft/rad-dino"``):
   the folder ``$LIGHTNING_DFD_HOME/<name>/`` (``config.json``, ``preprocessor_config.json``,
   ``model.safetensors``), its ``model.safetensors`` checked against the sha256 you pinned
   (``weights verify --record``) and downloaded there unless offline;
2. a local folder written by ``save_pretrained`` (``config.json`` + weights);
3. any other hub id, loaded by ``transformers`` itself (its cache; a download unless offline; not
   checked by lightning-dfd).

``LIGHTNING_DFD_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1`` load with
``local_files_only=True``. ``weights="random"`` builds the architecture from the same place's
``config.json`` (``AutoConfig`` + ``AutoModel.from_config``, seeded by torch's RNG) without reading
weights: it still needs that config.

**Which tower.** ``AutoModel`` loads the folder; a model with a vision tower keeps only that
(``CLIPModel.vision_model``, ``SamModel.vision_encoder``, also ``SamVisionModel``'s); anything
else (``Dinov2Model``, ``Dinov2WithRegistersModel``, ``ViTModel``, ``CLIPVisionModel``) is used as
it is. It runs frozen, in eval mode, in float32 (``precision="bf16"`` is the pass's business).

**Features.** The model's ``hidden_states`` (``output_hidden_states=True``: index 0 is the
embedding output, ``i`` the output of block ``i``, before any final norm; negative indices count from
the end) at ``layers``. Token sequences ``(M, T, C)`` keep their last ``h * w`` tokens, the patch
tokens (every family here puts its CLS and register tokens first), reshaped to ``(M, C, h, w)``;
SAM's hidden states already are ``(M, h, w, C)`` maps. Blocks after the deepest tapped one are
removed from the model (never computed).

**Input.** Images in [0, 1] are resized (bilinear) to a multiple of the patch size, replicated to
3 channels and normalised with the model's own processor mean / std (``AutoImageProcessor`` of the
same folder; ``do_normalize=False`` means none): the processor's resizing and cropping are not used,
so the whole image is seen. Without a processor config the mean / std are ImageNet's (what SAM's
processor uses; CLIP's differ, so keep CLIP's ``preprocessor_config.json``). Size: each side is
rounded to the nearest multiple of the patch size (ViT / CLIP interpolate their positional
embeddings, ``interpolate_pos_encoding=True``; DINOv2 always does), unless ``input_size`` fixes it.
SAM's absolute positional embeddings fit one size only, so SAM inputs are resized to its
``image_size`` square (1024 for MedSAM): the aspect ratio is not kept (SAM's processor pads
instead), so every feature position covers the image and maps and masks align with the input.

``transformers`` is imported when a network is built: ``import lightning_dfd`` works without it.

Example:
    >>> import tempfile, torch
    >>> from transformers import ViTConfig, ViTModel
    >>> tmp = tempfile.TemporaryDirectory(); folder = tmp.name
    >>> ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                    intermediate_size=64, patch_size=8, image_size=32)).save_pretrained(folder)
    >>> net = HFFDNetwork(folder, layers=(1, -1))
    >>> [tuple(f.shape) for f in net(torch.rand(2, 1, 40, 48))]
    [(2, 32, 5, 6), (2, 32, 5, 6)]
    >>> tmp.cleanup()
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_dfd import weights as W
from lightning_dfd.encoders.base import FeatureDistanceNetwork, difference_maps, unit_difference_maps
from lightning_dfd.encoders.timm import _DISTANCES, TIMM_DISTANCES, make_norms_scale_safe
from lightning_dfd.preprocess import to_rgb

HF_DISTANCES = TIMM_DISTANCES
#: mean / std when the folder has no image-processor config (ImageNet, as SAM's processor uses)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: model types whose embeddings always interpolate their positions (no flag to pass)
_ALWAYS_INTERPOLATE = ("dinov2", "dinov2_with_registers")
#: where the list of transformer blocks lives, per family (first match wins)
_BLOCK_LISTS = ("encoder.layer", "encoder.layers", "layers")
_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def import_transformers() -> Any:
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:
        import transformers
    except ModuleNotFoundError as err:
        if err.name != "transformers":
            raise
        raise ImportError(
            "HFFD needs the `transformers` package, which the core install of lightning-dfd does not "
            "include: pip install 'lightning-dfd[hf]'"
        ) from err
    return transformers


def hf_offline() -> bool:
    """True when ``LIGHTNING_DFD_OFFLINE``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set."""
    flags = (os.environ.get(name, "").strip().lower() for name in _OFFLINE_ENVS)
    return W.offline() or any(flag in ("1", "true", "yes", "on") for flag in flags)


def folder_spec(name_or_hub_id: str) -> W.WeightSpec | None:
    """The registered model-folder row for a registry name or its hub id, else None.

    Example:
        >>> folder_spec("microsoft/rad-dino").name, folder_spec("rad-dino").hub_id
        ('rad-dino', 'microsoft/rad-dino')
    """
    for spec in W.registry().values():
        if spec.arch.startswith("hf:") and name_or_hub_id in (spec.name, spec.hub_id):
            return spec
    return None


def resolve_source(model_name_or_path: str | os.PathLike, random: bool) -> tuple[str, bool, str]:
    """Where to load from: ``(folder or hub id, local_files_only, description for messages)``.

    Raises:
        MissingWeightsError: a registered folder that is missing or incomplete, a path that is a
            file or a folder without ``config.json``.
        ChecksumError: a registered folder whose ``model.safetensors`` differs from your pins.
    """
    key = os.fspath(model_name_or_path)
    spec = folder_spec(key)
    if spec is not None:
        folder = W.weights_home() / Path(spec.filename).parent
        if not random:
            try:
                folder = W.resolve(spec.name).parent  # checked against your pins; downloaded if online
            except W.MissingWeightsError as err:
                raise W.MissingWeightsError(
                    f"{err}. (Hugging Face id {spec.hub_id!r}.) To try the architecture without its "
                    f"weights, pass weights='random' (needs {folder / 'config.json'})") from err
        missing = [f for f in ("config.json",) if not (folder / f).is_file()]
        if missing:
            raise W.MissingWeightsError(
                f"model folder {folder} of {spec.name!r} ({spec.hub_id}) has no {missing[0]}: copy "
                f"config.json and preprocessor_config.json from https://huggingface.co/{spec.hub_id} "
                f"next to model.safetensors, or run `lightning-dfd weights fetch {spec.name}`")
        return str(folder), True, f"{spec.name} ({spec.hub_id}, {folder})"
    path = Path(key).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise W.MissingWeightsError(
                f"model folder {path} has no config.json: pass a folder written by a transformers "
                "model's save_pretrained() (config.json + model.safetensors)")
        return str(path), True, f"folder {path}"
    if path.exists():
        raise W.MissingWeightsError(f"{path} is a file: pass the model folder that holds config.json "
                                    "and model.safetensors (save_pretrained's output), not a file")
    if key.startswith(("/", ".", "~")) or key.count("/") > 1 or os.sep != "/" and os.sep in key:
        raise W.MissingWeightsError(f"model folder {path} does not exist (and {key!r} is no Hugging Face "
                                    "id, which looks like 'organisation/name')")
    return key, hf_offline(), f"Hugging Face id {key!r}"


def _missing_hub_model(key: str, description: str, offline: bool, err: Exception) -> W.MissingWeightsError:
    where = W.weights_home() / key.replace("/", "--")
    why = "offline, and not in the Hugging Face cache" if offline else f"{type(err).__name__}: {err}"
    return W.MissingWeightsError(
        f"cannot load {description} with transformers ({why}). Download the model folder where there "
        f"is internet (`hf download {key} --local-dir {where}`) and pass that folder as "
        "model_name_or_path (or register it), or try the architecture with weights='random' "
        "(needs its config.json)"
    )


def load_vision_model(source: str, local_only: bool, description: str, random: bool) -> nn.Module:
    """``AutoModel`` from ``source`` (or ``AutoConfig`` + ``from_config`` for random weights)."""
    transformers = import_transformers()
    try:
        if random:
            config = transformers.AutoConfig.from_pretrained(source, local_files_only=local_only)
            model = transformers.AutoModel.from_config(config)
        else:
            model = transformers.AutoModel.from_pretrained(source, local_files_only=local_only)
    except OSError as err:
        if os.path.isdir(source):
            raise W.MissingWeightsError(f"cannot load {description}: {err}") from err
        raise _missing_hub_model(source, description, local_only, err) from err
    for attribute in ("vision_model", "vision_encoder"):
        tower = getattr(model, attribute, None)
        if isinstance(tower, nn.Module):
            model = tower
            break
    return model.float()


def processor_mean_std(source: str, local_only: bool) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """The image processor's ``(mean, std, where from)``; ImageNet's when there is no processor."""
    transformers = import_transformers()
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError, KeyError):
        return IMAGENET_MEAN, IMAGENET_STD, "ImageNet (no image processor config)"
    if not getattr(processor, "do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), f"{type(processor).__name__} (do_normalize=False)"
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        return IMAGENET_MEAN, IMAGENET_STD, f"ImageNet ({type(processor).__name__} has no mean/std)"
    mean = (float(mean),) * 3 if isinstance(mean, (int, float)) else tuple(float(v) for v in mean)
    std = (float(std),) * 3 if isinstance(std, (int, float)) else tuple(float(v) for v in std)
    return mean, std, type(processor).__name__


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _block_list(model: nn.Module, count: int) -> tuple[nn.Module, str] | None:
    """The ``nn.ModuleList`` of the ``count`` transformer blocks, with its attribute path."""
    for path in _BLOCK_LISTS:
        module: Any = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module, path
    return None


def drop_output_hooks(model: nn.Module) -> None:
    """Remove the forward hooks transformers installs to record hidden states.

    They are closures, which cannot be pickled; the models install them again, lazily, on their
    next forward.
    """
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__qualname__", "").endswith("output_capturing_hook"):
                del module._forward_hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
        module.__dict__.pop("_output_capturing_hooks_installed", None)


class HFFDNetwork(FeatureDistanceNetwork):
    """Patch-token feature maps of a transformers vision backbone, compared by MSE, MAE or unit L2.

    Args:
        model_name_or_path: a registry name or hub id of a registered folder, a local
            ``save_pretrained`` folder, or any hub id (see the module docstring).
        layers: indices into the model's ``hidden_states`` (0: embeddings; -1: the last block);
            distances are summed over them.
        weights: None (the model's own weights) or ``"random"`` (its config, randomly initialised).
        distance: ``"mse"``, ``"mae"`` or ``"unit"`` (LPIPS-style: channel-unit-normalised squared
            difference summed over channels, averaged over positions, summed over layers).
        input_size: None (each side rounded to the nearest multiple of the patch size; SAM: its
            ``image_size``), or ``size`` / ``(height, width)`` in pixels, multiples of the patch size.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = "microsoft/rad-dino",
        layers: int | Iterable[int] = (-1,),
        weights: str | None = None,
        distance: str = "mse",
        input_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        import_transformers()  # before any weights are looked for: the install hint comes first
        if distance not in HF_DISTANCES:
            raise ValueError(f"Argument `distance` must be one of {HF_DISTANCES}, but got {distance!r}")
        if weights not in (None, "random"):
            raise ValueError("Argument `weights` must be None (the model's own weights, from "
                             f"`model_name_or_path`) or 'random', but got {weights!r}")
        requested = (layers,) if isinstance(layers, int) else tuple(layers)
        if not requested or not all(isinstance(i, int) and not isinstance(i, bool) for i in requested):
            raise ValueError(f"Argument `layers` must be a non-empty sequence of hidden-state indices, "
                             f"but got {layers!r}")
        random = weights == "random"
        source, local_only, self.source = resolve_source(model_name_or_path, random)
        body = load_vision_model(source, local_only, self.source, random)
        config = body.config
        self.model_type = str(getattr(config, "model_type", type(body).__name__))
        self.patch = _pair(config.patch_size)
        blocks = int(config.num_hidden_layers)
        n_states = blocks + 1
        bad = [i for i in requested if not -n_states <= i < n_states]
        if bad:
            raise ValueError(
                f"Argument `layers` must index the {n_states} hidden states of {self.source} "
                f"({type(body).__name__}: 0 = embeddings, 1..{blocks} = blocks, negative from the end), "
                f"but got {bad}")
        self.layers = requested
        self.indices = tuple(i % n_states for i in requested)
        # Blocks after the deepest tap are never computed; one is kept (the hidden states are
        # recorded by hooks on the blocks: the embeddings are the first block's input).
        keep, found = max(*self.indices, 1), _block_list(body, blocks)
        if found is not None and keep < blocks:
            del found[0][keep:]
        self.body = body
        make_norms_scale_safe(self.body)  # huge unnormalised inputs: exact, not an overflowed variance
        self.fixed_size = "interpolate_pos_encoding" not in inspect.signature(body.forward).parameters \
            and self.model_type not in _ALWAYS_INTERPOLATE
        self._forward_kwargs = {} if self.fixed_size or self.model_type in _ALWAYS_INTERPOLATE \
            else {"interpolate_pos_encoding": True}
        native = _pair(getattr(config, "image_size", 224))
        if input_size is not None:
            size = _pair(input_size)
            if any(s < 1 or s % p for s, p in zip(size, self.patch)) or (self.fixed_size and size != native):
                need = (f"{native}" if self.fixed_size
                        else f"positive multiples of the patch size {self.patch}")
                raise ValueError(f"Argument `input_size` of {self.source} must be {need}, "
                                 f"but got {input_size!r}")
            self.input_size: tuple[int, int] | None = size
        else:
            self.input_size = native if self.fixed_size else None
        mean, std, self.normalization_source = processor_mean_std(source, local_only)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"{self.source} normalises {len(mean)} channels; HFFD feeds 3")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.hidden_size = int(config.hidden_size)
        self.channels = (self.hidden_size,) * len(self.indices)
        self.distance_name = distance
        self._distance = _DISTANCES[distance]
        self.min_size = max(self.patch)  # smaller images would be blown up to one patch
        size = "x".join(map(str, self.input_size)) if self.input_size else "patch-multiple"
        self.features_identity = (f"hf-{source}-{weights or 'pretrained'}-"
                                  f"{'+'.join(map(str, self.indices))}-{size}-{mean}-{std}")
        self.identity = f"{self.features_identity}-{distance}"
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def __getstate__(self) -> dict:  # noqa: D105 - copies and pickles without transformers' hooks
        drop_output_hooks(self)
        return super().__getstate__()

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The model input size for an ``height x width`` image (see the module docstring)."""
        if self.input_size is not None:
            return self.input_size
        return tuple(max(p, round(s / p) * p) for s, p in zip((height, width), self.patch))

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] grayscale -> resized to the model's grid, 3 channels, the processor's mean / std."""
        size = self.target_size(*images.shape[-2:])
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return (to_rgb(images) - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def features(self, x: Tensor) -> list[Tensor]:
        """Hidden states at ``layers`` as patch-token maps ``(M, hidden_size, h, w)``."""
        states = self.body(pixel_values=x, output_hidden_states=True, **self._forward_kwargs).hidden_states
        h, w = x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]
        return [self._token_map(states[i], h, w) for i in self.indices]

    def _token_map(self, state: Tensor, h: int, w: int) -> Tensor:
        if state.ndim == 4:  # SAM: (M, h, w, C)
            return state.permute(0, 3, 1, 2).contiguous()
        prefix = state.shape[1] - h * w
        if prefix < 0:
            raise RuntimeError(f"{self.source} returned {state.shape[1]} tokens for a {h}x{w} patch grid")
        return state[:, prefix:].transpose(1, 2).reshape(state.shape[0], state.shape[2], h, w)

    def distance(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> Tensor:
        """MSE / MAE over channels and positions, or the unit-normalised distance; summed over layers."""
        return self._distance(feats_preds, feats_target)

    def layer_maps(self, feats_preds: list[Tensor], feats_target: list[Tensor]) -> list[Tensor]:
        """Per-patch contributions ``(M, 1, h, w)`` per layer; ``distance`` is the sum of their means."""
        if self.distance_name != "unit":
            return difference_maps(feats_preds, feats_target, absolute=self.distance_name == "mae")
        return unit_difference_maps(feats_preds, feats_target)
