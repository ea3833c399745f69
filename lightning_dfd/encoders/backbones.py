"""torchvision backbones (VGG-16, AlexNet, ResNet-50) built from a weights argument.

``weights`` is a registry name, a file path, or ``"random"`` (torchvision's own initialisation,
chosen explicitly). Nothing falls back to random weights by itself.

Example:
    >>> import torch
    >>> features = vgg16_features("random")
    >>> features(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 512, 1, 1])
"""

from __future__ import annotations

import os
import re

import torch
import torchvision
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from lightning_dfd import weights as W

WeightsArg = str | os.PathLike

#: The one map of short weight names: (architecture, alias) -> weights-registry name.
WEIGHT_ALIASES: dict[tuple[str, str], str] = {
    ("vgg16", "imagenet"): "vgg16-imagenet",
    ("alexnet", "imagenet"): "alexnet-imagenet",
    ("resnet50", "imagenet"): "resnet50-imagenet",
    ("resnet50", "radimagenet"): "resnet50-radimagenet",
}


def resolve_alias(architecture: str, weights: WeightsArg) -> WeightsArg:
    """``"imagenet"`` / ``"radimagenet"`` -> the registry name for ``architecture``; else unchanged.

    Example:
        >>> resolve_alias("resnet50", "imagenet"), resolve_alias("vgg16", "random")
        ('resnet50-imagenet', 'random')
    """
    if isinstance(weights, str):
        return WEIGHT_ALIASES.get((architecture, weights), weights)
    return weights



def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients for every parameter; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _features_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision VGG/AlexNet state dict (``features.N.*``) or a bare ``features`` one."""
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def _load_features(features: nn.Sequential, weights: WeightsArg) -> nn.Sequential:
    weights = W.check_weights_arg(weights)
    if os.fspath(weights) != "random":
        state = W.state_dict_from(W.load_checkpoint(weights), "state_dict", "model_state_dict")
        W.load_into(features, _features_state(state), source=os.fspath(weights))
    return freeze(features)


def vgg16_features(weights: WeightsArg) -> nn.Sequential:
    """Torchvision's ``vgg16().features`` (indices 0..30) without the 120M-parameter classifier."""
    features = make_layers(cfgs["D"], batch_norm=False)
    for m in features.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return _load_features(features, weights)


def alexnet_features(weights: WeightsArg) -> nn.Sequential:
    """Torchvision's ``alexnet().features`` (indices 0..12)."""
    return _load_features(torchvision.models.alexnet(weights=None).features, weights)


#: ``nn.Sequential(children[:9])`` of torchvision's ResNet-50, as the RadImageNet checkpoint stores it.
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def resnet_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the RadImageNet ``backbone.N.*`` layout to torchvision names; others pass through."""
    out = {}
    for key, value in state.items():
        match = re.match(r"^(?:backbone|features)\.(\d+)\.(.*)$", key)
        if match and int(match.group(1)) < len(_RESNET_CHILDREN):
            key = f"{_RESNET_CHILDREN[int(match.group(1))]}.{match.group(2)}"
        out[key] = value
    return out


def resnet50(weights: WeightsArg) -> nn.Module:
    """Torchvision ResNet-50 from a torchvision or RadImageNet (``backbone.N``) checkpoint.

    The classification head (``fc``) is optional in the file: feature distances never use it.
    """
    model = torchvision.models.resnet50(weights=None)
    weights = W.check_weights_arg(weights)
    if os.fspath(weights) != "random":
        state = resnet_state(W.state_dict_from(W.load_checkpoint(weights), "state_dict", "model"))
        if "fc.weight" not in state:
            model.fc = nn.Identity()
        else:  # RadImageNet and fine-tuned heads have their own class counts
            model.fc = nn.Linear(state["fc.weight"].shape[1], state["fc.weight"].shape[0])
        W.load_into(model, state, source=os.fspath(weights))
    return freeze(model)
