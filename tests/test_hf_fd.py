"""HFFD: parity with a direct transformers forward, token layout, maps and masks, loading, errors.

Every model is a tiny random one that ``tests/hf_models.py`` builds and saves with
``save_pretrained`` (DINOv2, DINOv2 with registers, ViT, CLIP and its vision tower, SAM and its
vision encoder); everything loads offline. The references load each model with its own
transformers class, read the processor's mean / std from its JSON file, and write the resizing, the
token layout (how many CLS / register tokens come first) and the distances out by hand.
"""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lightning_dfd import HFFD, build_metric  # noqa: E402
from lightning_dfd import weights as W  # noqa: E402
from lightning_dfd.encoders.hf import HFFDNetwork  # noqa: E402
from lightning_dfd.functional import hf_fd  # noqa: E402
from lightning_dfd.preprocess import normalize_pair, validated_images  # noqa: E402
from tests.hf_models import KINDS, PATCH, PREFIX_TOKENS, mean_std_of, reference_tower, save_tiny  # noqa: E402
from tests.metric_fixtures import minmax01, mr_like_pair  # noqa: E402

TOL = dict(atol=1e-6, rtol=1e-5)
#: the model input size of a 40 x 48 image: the nearest multiple of the patch (SAM: fixed 32)
SIZE_40x48 = {"dinov2": (42, 42), "dinov2_registers": (42, 42), "vit": (40, 48), "clip": (40, 48),
              "clip_vision": (40, 48), "sam_vision": (32, 32), "sam": (32, 32)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_models")
    return {kind: save_tiny(kind, root / kind, seed=k) for k, kind in enumerate(KINDS)}


def reference_maps(kind, folder, images, layers, size):
    """Independent forward: min-max, bilinear resize, 3 channels, processor mean / std, tokens -> maps."""
    tower = reference_tower(kind, folder)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std_of(folder))
    x = minmax01(images)[:, None]
    if tuple(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = (x.repeat(1, 3, 1, 1) - mean) / std
    kwargs = {"interpolate_pos_encoding": True} if kind in ("vit", "clip", "clip_vision") else {}
    with torch.no_grad():
        states = tower(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states
    h, w = size[0] // PATCH[kind], size[1] // PATCH[kind]
    maps = []
    for i in layers:
        s = states[i]
        if PREFIX_TOKENS[kind] is None:  # SAM: (N, h, w, C)
            maps.append(s.permute(0, 3, 1, 2))
        else:
            assert s.shape[1] == PREFIX_TOKENS[kind] + h * w
            maps.append(s[:, PREFIX_TOKENS[kind]:].reshape(len(x), h, w, -1).permute(0, 3, 1, 2))
    return maps


def reference_distance(fp, ft, distance):
    total = 0
    for a, b in zip(fp, ft, strict=True):
        if distance == "mse":
            total = total + ((a - b) ** 2).mean(dim=(1, 2, 3))
        elif distance == "mae":
            total = total + (a - b).abs().mean(dim=(1, 2, 3))
        else:
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((na - nb) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total


CASES = [(kind, "mse") for kind in KINDS] + [("dinov2_registers", "mae"), ("dinov2_registers", "unit"),
                                             ("sam", "unit"), ("clip", "mae")]


@pytest.mark.parametrize(("kind", "distance"), CASES, ids=[f"{k}-{d}" for k, d in CASES])
def test_equals_direct_transformers_forward(kind, distance, folders):
    preds, target = mr_like_pair(n=3, h=40, w=48)
    layers = (0, -1)
    size = SIZE_40x48[kind]
    expected = reference_distance(reference_maps(kind, folders[kind], preds, layers, size),
                                  reference_maps(kind, folders[kind], target, layers, size), distance)
    assert expected.min() > 1e-4  # a real distance was compared
    metric = HFFD(folders[kind], layers=layers, distance=distance, reduction="none")
    metric.update(preds, target)
    torch.testing.assert_close(metric.compute(), expected, **TOL)
    mean = HFFD(folders[kind], layers=layers, distance=distance)
    mean.update(preds[:2], target[:2])
    mean.update(preds[2:], target[2:])
    torch.testing.assert_close(mean.compute(), expected.mean(), **TOL)
    functional = hf_fd(preds, target, model_name_or_path=folders[kind], layers=layers, distance=distance,
                       reduction="none")
    torch.testing.assert_close(functional, expected, **TOL)


@pytest.mark.parametrize("kind", ["dinov2", "clip", "sam"])
def test_each_layer_alone_and_truncated_blocks(kind, folders):
    """Tapping only an early layer drops the later blocks and still gives that hidden state."""
    preds, target = mr_like_pair(n=2, h=40, w=48, seed=3)
    size = SIZE_40x48[kind]
    for layer in (0, 1, 2, -2):
        net = HFFDNetwork(folders[kind], layers=(layer,))
        expected = reference_maps(kind, folders[kind], preds, (layer,), size)[0]
        p01 = normalize_pair(*validated_images(preds, target, "error")[:2], "minmax")[0]
        torch.testing.assert_close(net(p01)[0], expected, **TOL)
    full = sum(p.numel() for p in HFFDNetwork(folders[kind], layers=(-1,)).body.parameters())
    early = sum(p.numel() for p in HFFDNetwork(folders[kind], layers=(1,)).body.parameters())
    assert early < full


@pytest.mark.parametrize("kind", ["dinov2_registers", "vit", "clip", "sam"])
def test_patch_tokens_land_at_their_image_position(kind, folders):
    """At the embeddings (a per-patch map), a change in patch (row 1, col 2) shows there and only there."""
    p = PATCH[kind]
    h, w = (4, 4) if kind == "sam" else (2, 3)
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, h * p, w * p, generator=g) * 0.5 + 0.25
    preds = target.clone()
    preds[:, :, p : 2 * p, 2 * p : 3 * p] += 0.2
    net = HFFDNetwork(folders[kind], layers=(0,))
    m = net.layer_maps(net(preds), net(target))[0][:, 0]
    assert m.shape == (2, h, w)
    assert (m[:, 1, 2] > 1e-3).all()
    outside = m.clone()
    outside[:, 1, 2] = 0
    assert outside.abs().max() <= 1e-6


@pytest.mark.parametrize("distance", ["mse", "mae", "unit"])
def test_maps_sum_to_the_distance_and_masks(distance, folders):
    preds, target = mr_like_pair(n=2, h=56, w=56, seed=1)
    metric = HFFD(folders["dinov2_registers"], layers=(1, 2), distance=distance, reduction="none")
    net = metric.network
    p, t, _ = validated_images(preds, target, "error")
    p01, t01 = normalize_pair(p, t, "minmax")
    fp, ft = net(p01), net(t01)
    maps = net.layer_maps(fp, ft)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 4, 4)] * 2
    torch.testing.assert_close(sum(m.mean(dim=(-2, -1)).flatten() for m in maps), net.distance(fp, ft),
                               rtol=1e-6, atol=1e-9)
    full_map = metric.distance_map(preds, target)
    assert full_map.shape == (2, 1, 56, 56) and (full_map >= 0).all()
    metric.update(preds, target)
    unmasked = metric.compute()
    metric.reset()
    metric.update(preds, target, mask=torch.ones(2, 56, 56, dtype=torch.bool))
    torch.testing.assert_close(metric.compute(), unmasked, rtol=1e-5, atol=1e-9)
    # A mask covering the top half weighs the top two patch rows only.
    top = torch.zeros(2, 56, 56, dtype=torch.bool)
    top[:, :28] = True
    metric.reset()
    metric.update(preds, target, mask=top)
    expected = sum(m[:, 0, :2].mean(dim=(-2, -1)) for m in maps)
    torch.testing.assert_close(metric.compute(), expected, rtol=1e-5, atol=1e-9)


def test_random_weights_and_weights_really_loaded(folders):
    from safetensors.torch import load_file

    folder = folders["vit"]
    net = HFFDNetwork(folder, layers=(-1,))
    saved = load_file(str(folder / "model.safetensors"))
    own = net.body.state_dict()
    # transformers renames keys on load (v5): match tensors by value, every one must be in the file
    assert len(own) > 10
    for key, value in own.items():
        assert any(v.shape == value.shape and torch.equal(v, value) for v in saved.values()), key
    torch.manual_seed(0)
    random = HFFDNetwork(folder, layers=(-1,), weights="random")
    x = torch.rand(2, 1, 32, 32)
    assert not torch.allclose(random(x)[0], net(x)[0])
    assert random.identity != net.identity


def test_normalisation_from_processor_or_imagenet(folders):
    vit = HFFDNetwork(folders["vit"])
    assert vit.normalization_source == "ViTImageProcessor"
    assert vit.mean.flatten().tolist() == [0.5] * 3
    sam = HFFDNetwork(folders["sam"])  # a SamModel folder without a processor config
    assert sam.normalization_source.startswith("ImageNet")
    torch.testing.assert_close(sam.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    assert type(sam.body).__name__ == "SamVisionEncoder"
    assert type(HFFDNetwork(folders["clip"]).body).__name__ == "CLIPVisionModel"


def test_copies_pickles_and_bf16(folders):
    preds, target = mr_like_pair(n=2, h=40, w=48, seed=2)
    metric = HFFD(folders["clip"], layers=(1, 2))
    metric.update(preds, target)
    for dup in (copy.deepcopy(metric), pickle.loads(pickle.dumps(metric)), metric.clone()):
        torch.testing.assert_close(dup.compute(), metric.compute())
        dup.update(preds, target)  # the transformers hooks come back on the next forward
        torch.testing.assert_close(dup.compute(), metric.compute())
    assert not [k for k in metric.state_dict() if k.startswith(("network.", "encoder."))]
    bf16 = HFFD(folders["clip"], layers=(1, 2), precision="bf16")
    bf16.update(preds, target)
    torch.testing.assert_close(bf16.compute(), metric.compute(), rtol=0.1, atol=0)


def test_registered_folder_name_hub_id_pins_and_random(folders, tmp_path):
    home = W.weights_home()
    folder = save_tiny("dinov2", home / "dinov2-small", seed=7)
    x = mr_like_pair(n=2, h=28, w=42)
    by_path = HFFD(folder, layers=(1,), reduction="none")
    by_path.update(*x)
    for name in ("dinov2-small", "facebook/dinov2-small"):
        metric = HFFD(name, layers=(1,), reduction="none")
        metric.update(*x)
        torch.testing.assert_close(metric.compute(), by_path.compute(), atol=0, rtol=0)
    assert build_metric("hf_fd", model_name_or_path="dinov2-small").network.source.startswith("dinov2-small")
    # A pin of another file: this model.safetensors is refused, naming both sha256s.
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the pinned file")
    W.record_pin("dinov2-small", other)
    with pytest.raises(W.ChecksumError, match="dinov2-small"):
        HFFD("dinov2-small")
    W.record_pin("dinov2-small", folder / "model.safetensors")
    HFFD("dinov2-small")
    # Only config.json: weights="random" builds the architecture, the weights are missing.
    (home / "dinov2-base").mkdir()
    (home / "dinov2-base" / "config.json").write_text((folder / "config.json").read_text())
    assert HFFD("dinov2-base", weights="random").network.hidden_size == 32
    with pytest.raises(W.MissingWeightsError, match=r"(?s)facebook/dinov2-base.*weights='random'"):
        HFFD("facebook/dinov2-base")


def test_missing_models_and_bad_arguments_give_clear_errors(folders, tmp_path):
    with pytest.raises(W.MissingWeightsError, match=r"(?s)rad-dino.*model folder.*microsoft/rad-dino.*"
                                                    r"weights='random'"):
        HFFD("microsoft/rad-dino")
    with pytest.raises(W.MissingWeightsError, match=r"(?s)someone/no-such-model.*offline.*weights='random'"):
        HFFD("someone/no-such-model")
    with pytest.raises(W.MissingWeightsError, match="does not exist"):
        HFFD(tmp_path / "nothing" / "here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(W.MissingWeightsError, match="no config.json"):
        HFFD(tmp_path / "empty")
    with pytest.raises(W.MissingWeightsError, match="is a file"):
        HFFD(folders["vit"] / "config.json")
    with pytest.raises(W.MissingWeightsError, match=r"(?s)no config.json.*rad-dino"):
        HFFD("rad-dino", weights="random")
    with pytest.raises(ValueError, match=r"must index the 3 hidden states"):
        HFFD(folders["vit"], layers=(3,))
    with pytest.raises(ValueError, match=r"must index the 3 hidden states"):
        HFFD(folders["vit"], layers=(-4,))
    with pytest.raises(ValueError, match="non-empty sequence"):
        HFFD(folders["vit"], layers=())
    with pytest.raises(ValueError, match="`weights`"):
        HFFD(folders["vit"], weights="imagenet")
    with pytest.raises(ValueError, match="`distance`"):
        HFFD(folders["vit"], distance="cosine")
    with pytest.raises(ValueError, match="multiples of the patch size"):
        HFFD(folders["dinov2"], input_size=30)
    with pytest.raises(ValueError, match=r"`input_size`.*\(32, 32\)"):
        HFFD(folders["sam"], input_size=64)
    metric = HFFD(folders["dinov2"])
    with pytest.raises(ValueError, match="at least 14x14"):
        metric.update(torch.rand(2, 10, 30), torch.rand(2, 10, 30))
    assert metric.total == 0  # nothing was counted


def test_fixed_input_size(folders):
    net = HFFDNetwork(folders["dinov2"], input_size=(28, 56))
    assert [tuple(f.shape) for f in net(torch.rand(1, 1, 40, 48))] == [(1, 32, 2, 4)]
    sam = HFFDNetwork(folders["sam_vision"])
    assert [tuple(f.shape) for f in sam(torch.rand(1, 1, 64, 20))] == [(1, 32, 4, 4)]


#: torchmetrics imports transformers when it is installed; after it, transformers is blocked, so
#: any lightning-dfd module that imports it at import time fails.
IMPORT_BLOCKED = r"""
import sys
import torchmetrics, torchmetrics.image, torchmetrics.image.fid
for name in [m for m in sys.modules if m == "transformers" or m.startswith("transformers.")]:
    del sys.modules[name]
sys.modules["transformers"] = None
import lightning_dfd, lightning_dfd.metrics, lightning_dfd.functional
import lightning_dfd.encoders.hf, lightning_dfd.metrics.hf, lightning_dfd.functional.hf
import lightning_dfd.metrics.frechet
from lightning_dfd import HFFD
try:
    HFFD("microsoft/rad-dino")
except ImportError as err:
    print(err)
"""


def test_no_lightning_dfd_module_imports_transformers():
    """Every module imports with transformers blocked; building an HFFD then says how to install it."""
    out = subprocess.run([sys.executable, "-c", IMPORT_BLOCKED], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pip install 'lightning-dfd[hf]'" in out.stdout


def test_without_transformers_the_error_says_how_to_install(folders, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning-dfd\[hf\]'"):
        HFFD(folders["vit"])
