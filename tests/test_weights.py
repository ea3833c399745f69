"""Weights registry: resolution order, checksums, refusals, and `lightning-dfd weights list`."""

from __future__ import annotations

import hashlib
import os
import pickle

import pytest
import torch

from lightning_dfd import LPIPS, ResNetFD
from lightning_dfd import weights as W
from lightning_dfd.cli import main


def test_missing_registered_weights_error_names_file_url_folder():
    with pytest.raises(W.MissingWeightsError) as info:
        ResNetFD(weights="radimagenet")
    text = str(info.value)
    spec = W.get_spec("resnet50-radimagenet")
    assert spec.url in text and spec.filename in text and os.environ["LIGHTNING_DFD_HOME"] in text
    assert "sha256" in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LPIPS(net="alex", weights="/nonexistent/alex.pth")


def test_home_then_hub_cache_and_checksum(tmp_path, monkeypatch):
    payload = {"w": torch.ones(2)}
    path = tmp_path / "thing.pt"
    torch.save(payload, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = W.register(W.WeightSpec("test-thing", "thing.pt", "https://example.invalid/thing.pt",
                                   arch="test", sha256=digest), overwrite=True)
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    (hub / "checkpoints" / "thing.pt").write_bytes(path.read_bytes())
    assert W.resolve("test-thing") == hub / "checkpoints" / "thing.pt"  # found in the hub cache
    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "thing.pt").write_bytes(path.read_bytes())
    assert W.resolve("test-thing") == home / "thing.pt"  # home comes first
    assert torch.equal(W.load_checkpoint("test-thing")["w"], torch.ones(2))
    (home / "thing.pt").write_bytes(b"corrupted" + path.read_bytes())
    with pytest.raises(W.ChecksumError, match=digest):
        W.resolve("test-thing")
    assert W.status(spec)[0] == "checksum mismatch"


def test_torchvision_prefix_checksum_refuses_random_file_under_real_name():
    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.zeros(1)}, home / "vgg16-397923af.pth")
    with pytest.raises(W.ChecksumError, match="397923af"):
        LPIPS(net="vgg", weights="imagenet")


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_truncated_and_garbage_files_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(W.CorruptWeightsError, match="pickled"):
        W.load_checkpoint(evil)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(100)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(W.CorruptWeightsError, match="truncated"):
        ResNetFD(weights=truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(W.CorruptWeightsError, match=str(garbage)):
        W.load_checkpoint(garbage)
    with pytest.raises(W.CorruptWeightsError, match="do not fit"):
        ResNetFD(weights=good)


def test_random_is_explicit_and_unknown_names_listed():
    with pytest.raises(ValueError, match="random"):
        W.resolve("random")
    with pytest.raises(KeyError, match="vgg16-imagenet"):
        W.get_spec("vgg17")


def test_weights_list_command(capsys, tmp_path):
    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    torch.save({"x": torch.zeros(1)}, home / "RadImageNet-ResNet50.pt")
    torch.save({"x": torch.zeros(1)}, home / "alexnet-owt-7be5be79.pth")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "found (no checksum)" in lines["resnet50-radimagenet"]
    assert "checksum mismatch" in lines["alexnet-imagenet"]
    assert "missing" in lines["vgg16-imagenet"]
    assert main(["weights", "verify", "alexnet-imagenet"]) == 1
    assert main(["weights", "fetch", "vgg16-imagenet"]) == 1  # offline: refused, not hung
    assert "offline" in capsys.readouterr().out
