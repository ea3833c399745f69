"""Tiny random transformers vision models saved with ``save_pretrained`` (nothing is downloaded).

Each kind is one family HFFD supports, small enough to build in well under a second: hidden size
32, 2 blocks, patch 8 or 14. Weights are the family's initialisation plus seeded noise (SAM
initialises near zero), so a key that failed to load would show in the values.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

KINDS = ("dinov2", "dinov2_registers", "vit", "clip", "clip_vision", "sam_vision", "sam")
#: CLS + register tokens in front of the patch tokens (None: SAM's (N, h, w, C) maps)
PREFIX_TOKENS = {"dinov2": 1, "dinov2_registers": 3, "vit": 1, "clip": 1, "clip_vision": 1,
                 "sam_vision": None, "sam": None}
PATCH = {"dinov2": 14, "dinov2_registers": 14, "vit": 8, "clip": 8, "clip_vision": 8,
         "sam_vision": 8, "sam": 8}
#: mean / std written into each folder's preprocessor_config.json (None: no processor saved)
MEAN_STD = {
    "dinov2": ([0.3, 0.4, 0.5], [0.2, 0.25, 0.3]),
    "dinov2_registers": ([0.3, 0.4, 0.5], [0.2, 0.25, 0.3]),
    "vit": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "clip": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
    "clip_vision": ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
    "sam_vision": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "sam": None,
}
_BLOCK = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}


def _model(kind: str):
    import transformers as T

    vit = {**_BLOCK, "intermediate_size": 64}
    sam = {**_BLOCK, "patch_size": 8, "image_size": 32, "mlp_dim": 64, "output_channels": 16,
           "window_size": 2, "global_attn_indexes": [1]}
    if kind == "dinov2":
        return T.Dinov2Model(T.Dinov2Config(**vit, patch_size=14, image_size=56))
    if kind == "dinov2_registers":
        return T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(**vit, patch_size=14, image_size=56,
                                                                      num_register_tokens=2))
    if kind == "vit":
        return T.ViTModel(T.ViTConfig(**vit, patch_size=8, image_size=32))
    if kind == "clip":
        return T.CLIPModel(T.CLIPConfig(vision_config={**vit, "patch_size": 8, "image_size": 32},
                                        text_config={**vit, "vocab_size": 99, "bos_token_id": 0,
                                                     "eos_token_id": 2, "pad_token_id": 1}))
    if kind == "clip_vision":
        return T.CLIPVisionModel(T.CLIPVisionConfig(**vit, patch_size=8, image_size=32))
    if kind == "sam_vision":
        return T.SamVisionModel(T.SamVisionConfig(**sam))
    if kind == "sam":
        return T.SamModel(T.SamConfig(vision_config=sam))
    raise ValueError(kind)


def _processor(kind: str):
    import transformers as T

    if MEAN_STD[kind] is None:
        return None
    mean, std = MEAN_STD[kind]
    cls = {"dinov2": T.BitImageProcessor, "dinov2_registers": T.BitImageProcessor, "vit": T.ViTImageProcessor,
           "clip": T.CLIPImageProcessor, "clip_vision": T.CLIPImageProcessor,
           "sam_vision": T.SamImageProcessor}[kind]
    return cls(image_mean=mean, image_std=std)


def save_tiny(kind: str, folder: Path, seed: int = 0) -> Path:
    """Build, perturb and ``save_pretrained`` a tiny model of ``kind`` (+ its processor) into ``folder``."""
    torch.manual_seed(seed)
    model = _model(kind)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    processor = _processor(kind)
    if processor is not None:
        processor.save_pretrained(folder)
    return folder


def mean_std_of(folder: Path) -> tuple[list[float], list[float]]:
    """The processor's mean / std read from the JSON file itself (ImageNet's when there is none)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    config = json.loads(path.read_text())
    return config["image_mean"], config["image_std"]


def reference_tower(kind: str, folder: Path) -> torch.nn.Module:
    """The vision model loaded by its own transformers class (not through lightning-dfd)."""
    import transformers as T

    if kind in ("dinov2", "dinov2_registers", "vit", "clip_vision", "sam_vision"):
        cls = {"dinov2": T.Dinov2Model, "dinov2_registers": T.Dinov2WithRegistersModel, "vit": T.ViTModel,
               "clip_vision": T.CLIPVisionModel, "sam_vision": T.SamVisionModel}[kind]
        return cls.from_pretrained(folder).eval()
    if kind == "clip":
        return T.CLIPModel.from_pretrained(folder).vision_model.eval()
    return T.SamModel.from_pretrained(folder).vision_encoder.eval()
