"""Med-VAE encoder: key layout, LoRA merge, and parity with the `medvae` package's own classes.

The reference is medvae 0.1.7's ``AutoencoderKL`` with LoRA injected exactly as its
``build_model("medvae_8_4_2d")`` does (``inject_trainable_lora_extended(model, {"ResnetBlock",
"AttnBlock"}, r=4)``), built small and with random weights (random LoRA too: medvae zero-inits
``lora_up``, which would hide a wrong merge). ``medvae``'s package ``__init__`` pulls monai,
omegaconf and huggingface downloads, so its model modules are imported without running it
(install: ``pip install --no-deps medvae==0.1.7 einops``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from lightning_dfd.encoders.medvae import (
    MedVAEConfig,
    MedVAEEncoder,
    MedVAENetwork,
    config_from_state_dict,
    load_medvae_encoder,
    medvae_encoder_state,
    merge_lora,
)
from lightning_dfd.weights import CorruptWeightsError

KEYS_FILE = Path(__file__).parent / "data" / "medvae_keys.txt"

# Small but complete: 3 levels (2 down-samplings), attention in level 1 and the middle,
# channel changes (nin_shortcut), 2 ResNet blocks per level.
DDCONFIG = dict(
    double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
    ch_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[16], dropout=0.0,
)
EMBED_DIM = 4
OUR_CONFIG = MedVAEConfig(
    in_channels=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_levels=(1,), z_channels=4,
    embed_dim=4,
)


def _medvae_modules(monkeypatch):
    """(autoencoder_kl, lora) modules of the installed medvae, without its package __init__."""
    spec = importlib.util.find_spec("medvae")
    if spec is None:
        pytest.skip("medvae is not installed (pip install --no-deps medvae==0.1.7 einops)")
    pytest.importorskip("einops")
    for name in [n for n in sys.modules if n == "medvae" or n.startswith("medvae.")]:
        monkeypatch.delitem(sys.modules, name)
    package = types.ModuleType("medvae")
    package.__path__ = list(spec.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "medvae", package)
    autoencoder = importlib.import_module("medvae.models.autoencoder_kl")
    lora = importlib.import_module("medvae.utils.lora")
    return autoencoder, lora


def _reference_model(monkeypatch, seed: int = 0):
    autoencoder, lora = _medvae_modules(monkeypatch)
    torch.manual_seed(seed)
    model = autoencoder.AutoencoderKL(ddconfig=DDCONFIG, embed_dim=EMBED_DIM)
    lora.inject_trainable_lora_extended(model, {"ResnetBlock", "AttnBlock"}, r=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_up" in name:
                p.normal_(0.0, 0.05)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.02)
    return model.eval()


def test_merged_keys_match_recorded_layout():
    """The recorded medvae key list (LoRA layout) merges into exactly our encoder's keys."""
    lines = [ln.split() for ln in KEYS_FILE.read_text().splitlines() if ln and ln[0] != "#"]
    state = {k: torch.randn(*map(int, shape.split("x"))) for k, shape in lines}
    assert any(".lora_up." in k for k in state)
    merged = medvae_encoder_state({"state_dict": state})
    assert config_from_state_dict(merged) == OUR_CONFIG
    MedVAEEncoder(OUR_CONFIG).load_state_dict(merged, strict=True)


def test_recorded_layout_is_the_packages(monkeypatch):
    model = _reference_model(monkeypatch)
    recorded = [ln.split()[0] for ln in KEYS_FILE.read_text().splitlines() if ln and ln[0] != "#"]
    assert recorded == list(model.state_dict())


def test_parity_with_medvae_reference(monkeypatch, tmp_path):
    model = _reference_model(monkeypatch)
    path = tmp_path / "vae_random.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)

    ours = load_medvae_encoder(path)
    assert ours.config == OUR_CONFIG
    x = torch.rand(2, 3, 40, 36) * 2 - 1  # odd multiples: exercises the asymmetric padding
    with torch.no_grad():
        expected = model.encode(x).mean
        got = ours(x)
    assert got.shape == expected.shape == (2, 4, 10, 9)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # The metric network: gray [0, 1] -> 3 channels at mean 0.5 / std 0.5 -> posterior mean.
    net = MedVAENetwork(weights=path)
    gray = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = model.encode(((gray - 0.5) / 0.5).repeat(1, 3, 1, 1)).mean
        torch.testing.assert_close(net(gray)[0], ref, rtol=1e-4, atol=1e-5)


def test_merge_lora_equals_unmerged_conv():
    torch.manual_seed(0)
    base = torch.nn.Conv2d(6, 8, 3, padding=1)
    down = torch.nn.Conv2d(6, 4, 3, padding=1, bias=False)
    up = torch.nn.Conv2d(4, 8, 1, bias=False)
    state = {
        "blk.c.conv.weight": base.weight.detach(), "blk.c.conv.bias": base.bias.detach(),
        "blk.c.lora_down.weight": down.weight.detach(), "blk.c.lora_up.weight": up.weight.detach(),
        "other.conv.weight": torch.ones(1),  # a non-LoRA ".conv." key stays as it is
    }
    merged = merge_lora(state)
    assert sorted(merged) == ["blk.c.bias", "blk.c.weight", "other.conv.weight"]
    merged_conv = torch.nn.Conv2d(6, 8, 3, padding=1)
    merged_conv.load_state_dict({"weight": merged["blk.c.weight"], "bias": merged["blk.c.bias"]})
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(merged_conv(x), base(x) + up(down(x)), rtol=1e-5, atol=1e-5)


def test_merge_lora_rejects_orphan_adapter():
    with pytest.raises(ValueError, match="no x.conv.weight"):
        merge_lora({"x.lora_up.weight": torch.ones(2, 1, 1, 1)})


def test_not_a_medvae_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}}, path)
    with pytest.raises(CorruptWeightsError, match="encoder.conv_in.weight"):
        load_medvae_encoder(path)


def test_network_preprocessing_and_input_channels(tmp_path):
    cfg = MedVAEConfig(in_channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1)
    path = tmp_path / "one_channel.ckpt"
    torch.save({"state_dict": MedVAEEncoder(cfg).state_dict()}, path)
    net = MedVAENetwork(weights=path)
    assert net.in_channels == 1  # read from encoder.conv_in
    x = torch.rand(3, 1, 16, 16)
    prepared = net.prepare(x)
    assert prepared.shape == (3, 1, 16, 16)
    torch.testing.assert_close(prepared, x * 2 - 1)
    assert not any(p.requires_grad for p in net.parameters())
