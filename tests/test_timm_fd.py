"""TimmFD: parity with a direct timm ``features_only`` forward, strict weight loading, configs.

References are built by timm itself from the same file (``pretrained=True,
pretrained_cfg_overlay=dict(file=...)``), so the key mapping of our loader is checked against
timm's own; the input scaling and the three distances are written out here from their definitions.
"""

from __future__ import annotations

import sys

import pytest
import torch
import yaml

timm = pytest.importorskip("timm")

from lightning_dfd import TimmFD, build_metric  # noqa: E402
from lightning_dfd.encoders.timm import TimmFDNetwork  # noqa: E402
from lightning_dfd.functional.timm import timm_fd  # noqa: E402
from lightning_dfd.weights import CorruptWeightsError, MissingWeightsError  # noqa: E402

TOL = 1e-6
CNN = ("convnext_atto", (1, 2), {})
VIT = ("vit_tiny_patch16_224", (1, 3), {"dynamic_img_size": True, "dynamic_img_pad": True})
EFFNET = ("efficientnet_b0", (1, 3), {})


def _full_state(name: str, kwargs: dict, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():  # make norm layers non-trivial too, so a missed key would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.state_dict()


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("timm_weights")
    files = {}
    for name, _, kwargs in (CNN, VIT, EFFNET):
        path = root / f"{name}.pth"
        torch.save(_full_state(name, kwargs, seed=1), path)
        files[name] = path
    return files


def _images(n=3, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, h, w, generator=g) * 3
    preds = target + 0.3 * torch.randn(n, h, w, generator=g)
    return preds, target


def _reference(name, layers, kwargs, path, preds, target, distance):
    """timm's own features_only model and loader + the distance written out."""
    model = timm.create_model(name, features_only=True, out_indices=layers, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)

    def encode(x):
        lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
        x01 = ((x - lo) / (hi - lo)).unsqueeze(1).repeat(1, 3, 1, 1)
        with torch.no_grad():
            return model((x01 - mean) / std)

    total = 0
    for a, b in zip(encode(preds), encode(target), strict=True):
        if distance == "mse":
            total = total + ((a - b) ** 2).mean(dim=(1, 2, 3))
        elif distance == "mae":
            total = total + (a - b).abs().mean(dim=(1, 2, 3))
        else:
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + ((na - nb) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.mark.parametrize("arch", [CNN, VIT], ids=["convnext_atto", "vit_tiny"])
@pytest.mark.parametrize("distance", ["mse", "mae", "unit"])
def test_equals_direct_timm_forward(arch, distance, weight_files):
    name, layers, kwargs = arch
    preds, target = _images()
    expected = _reference(name, layers, kwargs, weight_files[name], preds, target, distance)
    metric = TimmFD(name, layers=layers, weights=weight_files[name], distance=distance,
                    model_kwargs=kwargs, reduction="none")
    metric.update(preds, target)
    got = metric.compute()
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, atol=TOL, rtol=TOL)
    # The mean reduction and the functional form give the same numbers.
    mean = TimmFD(name, layers=layers, weights=weight_files[name], distance=distance, model_kwargs=kwargs)
    mean.update(preds[:2], target[:2])
    mean.update(preds[2:], target[2:])
    torch.testing.assert_close(mean.compute(), expected.mean(), atol=TOL, rtol=TOL)
    functional = timm_fd(preds, target, model_name=name, layers=layers, weights=weight_files[name],
                         distance=distance, model_kwargs=kwargs, reduction="none")
    torch.testing.assert_close(functional, expected, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("arch", [CNN, VIT, EFFNET], ids=["convnext_atto", "vit_tiny", "efficientnet_b0"])
def test_weights_really_loaded(arch, weight_files):
    name, layers, kwargs = arch
    net = TimmFDNetwork(name, layers=layers, weights=weight_files[name], model_kwargs=kwargs)
    state = torch.load(weight_files[name], weights_only=True)
    prefix = "model." if type(net.body).__name__ == "FeatureGetterNet" else ""
    checked = 0
    for key, value in net.body.state_dict().items():
        original = key.removeprefix(prefix)
        candidates = [k for k in state if k.replace("_", ".") == original.replace("_", ".")]
        assert len(candidates) == 1, key
        assert torch.equal(value, state[candidates[0]]), key
        checked += 1
    assert checked == len(net.body.state_dict()) > 10
    torch.manual_seed(1)
    random = TimmFDNetwork(name, layers=layers, weights="random", model_kwargs=kwargs)
    x = torch.rand(2, 1, 32, 32)
    assert not torch.allclose(random(x)[0], net(x)[0])


@pytest.mark.parametrize("arch", [CNN, VIT], ids=["convnext_atto", "vit_tiny"])
def test_prefixed_file_is_refused_where_timm_loads_nothing(arch, weight_files, tmp_path):
    name, layers, kwargs = arch
    state = torch.load(weight_files[name], weights_only=True)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"encoder.{k}": v for k, v in state.items()}, prefixed)
    # The trap: timm's features_only loading accepts the file and keeps its random weights.
    torch.manual_seed(3)
    timm_model = timm.create_model(name, features_only=True, out_indices=layers, pretrained=True,
                                   pretrained_cfg_overlay=dict(file=str(prefixed)), **kwargs)
    torch.manual_seed(3)
    fresh = timm.create_model(name, features_only=True, out_indices=layers, pretrained=False, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(timm_model.state_dict().values(),
                                                 fresh.state_dict().values(), strict=True))
    with pytest.raises(CorruptWeightsError, match=r"missing.*encoder\."):
        TimmFD(name, layers=layers, weights=prefixed, model_kwargs=kwargs)


def test_module_prefix_and_safetensors_load_the_same(weight_files, tmp_path):
    from safetensors.torch import save_file

    name, layers, kwargs = CNN
    state = torch.load(weight_files[name], weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 1, 32, 32)
    expected = TimmFDNetwork(name, layers=layers, weights=weight_files[name])(x)
    for path in (tmp_path / "ddp.pth", tmp_path / "w.safetensors"):
        got = TimmFDNetwork(name, layers=layers, weights=path)(x)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), path
    # The features-only model's own state dict loads too.
    net = TimmFDNetwork(name, layers=layers, weights=weight_files[name])
    torch.save(net.body.state_dict(), tmp_path / "features.pth")
    again = TimmFDNetwork(name, layers=layers, weights=tmp_path / "features.pth")(x)
    assert all(torch.equal(a, b) for a, b in zip(again, expected, strict=True))


@pytest.mark.parametrize("arch", [("resnet18", (1, 2), {}), CNN, VIT],
                         ids=["resnet18", "convnext_atto", "vit_tiny"])
def test_model_and_module_prefixes_load_and_double_files_are_refused(arch, tmp_path):
    name, layers, kwargs = arch
    state = _full_state(name, kwargs, seed=2)
    torch.save(state, tmp_path / "plain.pth")
    x = torch.rand(2, 1, 32, 32)
    expected = TimmFDNetwork(name, layers=layers, weights=tmp_path / "plain.pth", model_kwargs=kwargs)(x)
    for prefix in ("model.", "module.", "module.model."):  # a LightningModule's self.model, DDP, both
        path = tmp_path / f"{prefix}pth"
        torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
        got = TimmFDNetwork(name, layers=layers, weights=path, model_kwargs=kwargs)(x)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True)), prefix
    for prefix in ("module.", "model."):  # every tensor twice: which copy is meant is unknown
        twice = {**state, **{f"{prefix}{k}": v + 1 for k, v in state.items()}}
        torch.save(twice, tmp_path / "twice.pth")
        first = sorted(state)[0]
        with pytest.raises(CorruptWeightsError, match=rf"holds {len(state)} tensors twice, plain and with a "
                                                      rf"'{prefix}' prefix.*{first} / {prefix}{first}"):
            TimmFDNetwork(name, layers=layers, weights=tmp_path / "twice.pth", model_kwargs=kwargs)


def test_partial_and_misshapen_files_are_refused(weight_files, tmp_path):
    name, layers, kwargs = CNN
    state = torch.load(weight_files[name], weights_only=True)
    partial = {k: v for k, v in state.items() if k != "stages.1.blocks.0.conv_dw.weight"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(CorruptWeightsError, match=r"1 of \d+ .*stages_1\.blocks\.0\.conv_dw\.weight"):
        TimmFD(name, layers=layers, weights=tmp_path / "partial.pth")
    wrong = dict(state)
    wrong["stem.0.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CorruptWeightsError, match="shape mismatch.*stem_0.weight"):
        TimmFD(name, layers=layers, weights=tmp_path / "wrong.pth")
    ambiguous = dict(state)
    ambiguous["stem_0.weight"] = state["stem.0.weight"]  # two file keys fit one parameter
    torch.save(ambiguous, tmp_path / "ambiguous.pth")
    with pytest.raises(CorruptWeightsError, match=r"keys \['stem.0.weight', 'stem_0.weight'\] all fit"):
        TimmFD(name, layers=layers, weights=tmp_path / "ambiguous.pth")


def test_build_metric_and_yaml_config():
    config = yaml.safe_load("""
    timm_fd: {model_name: resnet18, layers: [1, 2], weights: random, distance: unit, max_batch: 2}
    """)
    torch.manual_seed(0)
    metric = build_metric("timm_fd", **config["timm_fd"])
    assert isinstance(metric, TimmFD) and metric.network.layers == (1, 2) and metric.max_batch == 2
    preds, target = _images(n=2, h=32, w=32)
    metric.update(preds, target)
    torch.manual_seed(0)
    direct = TimmFD("resnet18", layers=(1, 2), weights="random", distance="unit")
    direct.update(preds, target)
    torch.testing.assert_close(metric.compute(), direct.compute())
    assert metric.higher_is_better is False and float(metric.compute()) > 0


def test_reconmodule_collection_takes_timm_fd():
    base = pytest.importorskip("recon_models.modules.base")
    suite = base.build_metric_collection(
        {"timm_fd": {"model_name": "resnet18", "layers": [1], "weights": "random"}}, ["psnr"])
    preds, target = _images(n=2, h=32, w=32)
    suite.update(preds, target, data_range=target.amax(dim=(1, 2)), sample_ids=torch.tensor([0, 1]))
    values = suite.compute()
    assert set(values) == {"val/psnr", "val/timm_fd"} and float(values["val/timm_fd"]) > 0


def test_bad_arguments_and_default_weights():
    with pytest.raises(ValueError, match="Argument `distance` must be one of"):
        TimmFD("resnet18", weights="random", distance="l2")
    with pytest.raises(ValueError, match="No registered weights for timm model 'resnet18'"):
        TimmFD("resnet18")
    with pytest.raises(ValueError, match="are for 'timm:convnext_tiny'"):
        TimmFD("resnet18", weights="convnext_tiny.fb_in1k")
    # The default model resolves to its registered weights, which the offline test home lacks.
    with pytest.raises(MissingWeightsError, match="convnext_tiny.fb_in1k.*huggingface.co/timm"):
        TimmFD()


def test_gradients_reach_predictions_and_cache_is_exact():
    preds, target = _images(n=2, h=32, w=32)
    metric = TimmFD("resnet18", layers=(1,), weights="random", feature_cache=True)
    preds = preds.clone().requires_grad_(True)
    value = metric(preds, target, sample_ids=torch.tensor([4, 5]))
    value.backward()
    assert preds.grad is not None and preds.grad.abs().sum() > 0
    # A second epoch with cached target features gives the same value.
    metric.reset()
    with torch.no_grad():
        metric.update(preds.detach(), target, sample_ids=torch.tensor([4, 5]))
    torch.testing.assert_close(metric.compute(), value.detach(), atol=TOL, rtol=TOL)


def test_clear_error_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'lightning-dfd\[timm\]'"):
        TimmFD("resnet18", weights="random")


def test_dinov2_small_any_image_size():
    # Patch 14 and a 518-px positional embedding: 30x44 images work through dynamic size + padding.
    torch.manual_seed(0)
    metric = TimmFD("vit_small_patch14_dinov2", layers=(-1,), weights="random", distance="unit",
                    reduction="none")
    preds, target = _images(n=2, h=30, w=44)
    metric.update(preds, target)
    values = metric.compute()
    assert values.shape == (2,) and torch.isfinite(values).all() and (values > 0).all()
    assert metric.network.channels == (384,)
