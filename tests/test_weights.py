"""Weights registry: resolution order, checksums, refusals, and `lightning-dfd weights list`."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from lightning_dfd import DISTS, LPIPS, SSFD, ResNetFD
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
    assert "found (unpinned)" in lines["resnet50-radimagenet"]
    assert "checksum mismatch" in lines["alexnet-imagenet"]
    assert "missing" in lines["vgg16-imagenet"]
    assert main(["weights", "verify", "alexnet-imagenet"]) == 1
    assert main(["weights", "fetch", "vgg16-imagenet"]) == 1  # offline: refused, not hung
    assert "offline" in capsys.readouterr().out


def test_weights_list_shows_licenses_and_model_folders(capsys):
    folder = W.weights_home() / "rad-dino"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert lines["name"].split() == ["name", "state", "license", "file"]
    assert "incomplete (no config.json, preprocessor_config.json)" in lines["rad-dino"]
    assert " MIT " in lines["rad-dino"] and str(folder / "model.safetensors") in lines["rad-dino"]
    for name, license in (("medsam-vit-base", "Apache-2.0"), ("dinov2-small", "Apache-2.0"),
                          ("dinov2-base", "Apache-2.0"), ("vgg16-imagenet", "BSD-3-Clause"),
                          ("lpips-vgg-v0.1", "BSD-2-Clause"), ("dists-alpha-beta", "MIT"),
                          ("ssfd-fastmri-knee", "see model card")):
        assert f" {license} " in lines[name], lines[name]
    assert W.get_spec("medsam-vit-base").hub_id == "wanglab/medsam-vit-base"
    assert W.get_spec("vgg16-imagenet").hub_id is None
    assert all(spec.license for spec in W.TABLE)


# -- one table, provenance, pins ------------------------------------------------------------------


def test_fresh_interpreter_sees_every_name():
    """No import-order dependence: SSFD and Med-VAE are in the table before their modules load."""
    import subprocess
    import sys

    import lightning_dfd.encoders.medvae  # noqa: F401 - what used to register names at import
    import lightning_dfd.encoders.ssfd  # noqa: F401

    code = "from lightning_dfd import weights; print(','.join(sorted(weights.registry())))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout.strip().split(",")
    shipped = sorted(spec.name for spec in W.TABLE)
    assert out == shipped
    assert set(shipped) <= set(W.registry())
    for name in ("ssfd-fastmri-knee", "medvae-8x4c-2d", "vgg16-imagenet", "lpips-vgg-v0.1",
                 "dists-alpha-beta", "ssfd-patch-size-16"):
        assert name in out


def test_package_shipped_heads_are_listed_and_verified():
    import DISTS_pytorch
    import lpips

    for net in ("alex", "vgg", "squeeze"):
        for version in ("v0.1", "v0.0"):
            path = W.resolve(f"lpips-{net}-{version}")  # verified against the wheel's sha256
            assert path == Path(lpips.__file__).parent / "weights" / version / f"{net}.pth"
    dists = W.resolve("dists-alpha-beta")
    assert W.sha256_of(dists) == W.get_spec("dists-alpha-beta").sha256
    assert dists.parent == Path(DISTS_pytorch.__file__).parent or dists.name == "weights.pt"
    assert W.status(W.get_spec("lpips-vgg-v0.1"))[0] == "found"
    with pytest.raises(W.MissingWeightsError, match="package"):
        W.download(W.get_spec("lpips-vgg-v0.1"))


def test_published_sha256_pins_and_hub_variants():
    assert W.get_spec("vgg16-imagenet").sha256 == (
        "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0")
    ssfd = W.get_spec("ssfd-fastmri-knee")
    assert ssfd.sha256 == "e8ea5e89518e9b1de20154c881d136e3f85ae27785422dc15e85f5d44ad50086"
    assert ssfd.size == 7_380_093
    base = "https://huggingface.co/philadamson93/SSFD/resolve/main/"
    expected = {
        "ssfd-fat-suppressed": "FatSuppression/FatSuppressed",
        "ssfd-non-fat-suppressed": "FatSuppression/nonFatSuppressed",
        **{f"ssfd-percent-data-{p}": f"SSL_percent_data/{p}" for p in (5, 10, 25, 50, 100)},
        **{f"ssfd-patch-coverage-{p}": f"SSL_pretext_tasks/PatchCoverage/{p}" for p in (10, 25, 50, 75)},
        **{f"ssfd-patch-size-{p}": f"SSL_pretext_tasks/PatchSize/{p}" for p in (1, 4, 8, 16, 64)},
        "ssfd-percent-zero-filled-25": "percent_zero_filled/25",
    }
    filenames = set()
    for name, folder in expected.items():
        spec = W.get_spec(name)
        assert spec.url == f"{base}{folder}/model.ckpt" and spec.sha256 is None
        assert "unpinned" in spec.description and spec.arch == ssfd.arch
        filenames.add(spec.filename)
    assert len(filenames) == len(expected) and ssfd.filename not in filenames


def test_changed_hub_file_is_refused_then_pinned_by_the_user(capsys):
    from tests.test_ssfd_metric import published_state

    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "ssfd-fastmri-knee.ckpt"
    torch.save({"model_state_dict": published_state(1)}, path)  # "an earlier version" of the file
    digest = W.sha256_of(path)
    with pytest.raises(W.ChecksumError, match="this file differs from the pinned version") as info:
        SSFD(weights="ssfd-fastmri-knee")
    assert "e8ea5e89518e9b1de20154c881d136e3f85ae27785422dc15e85f5d44ad50086" in str(info.value)
    assert digest in str(info.value) and "--record" in str(info.value)
    assert main(["weights", "verify", "ssfd-fastmri-knee"]) == 1
    assert main(["weights", "verify", "--record", "ssfd-fastmri-knee", str(path)]) == 0
    out = capsys.readouterr().out
    assert digest in out and "differs from the pinned version" in out
    assert json.loads(W.pins_path().read_text())["ssfd-fastmri-knee"][0]["sha256"] == digest
    assert main(["weights", "verify", "ssfd-fastmri-knee"]) == 0  # honoured by later verifies
    assert W.status(W.get_spec("ssfd-fastmri-knee"))[0] == "found (pinned by you)"
    metric = SSFD(weights="ssfd-fastmri-knee")  # and by loads
    assert torch.equal(metric.network.encoder.firstblock.conv1.weight,
                       published_state(1)["firstblock.conv1.weight"])
    torch.save({"model_state_dict": published_state(2)}, path)  # yet another file: refused again
    with pytest.raises(W.ChecksumError, match=digest):
        SSFD(weights="ssfd-fastmri-knee")


def test_pin_on_an_unpinned_name_makes_it_checked(tmp_path):
    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    trusted = tmp_path / "trusted.pt"
    torch.save({"x": torch.ones(1)}, trusted)
    W.record_pin("resnet50-radimagenet", trusted)
    (home / "RadImageNet-ResNet50.pt").write_bytes(trusted.read_bytes())
    assert W.resolve("resnet50-radimagenet") == home / "RadImageNet-ResNet50.pt"
    torch.save({"x": torch.zeros(1)}, home / "RadImageNet-ResNet50.pt")
    with pytest.raises(W.ChecksumError, match="your pins"):
        W.resolve("resnet50-radimagenet")
    assert main(["weights", "verify", "--record", "no-such-name", str(trusted)]) == 2
    assert main(["weights", "list", "--record", "resnet50-radimagenet", str(trusted)]) == 2
    W.pins_path().write_text("{not json")
    with pytest.raises(W.WeightsError, match="pins.json"):
        W.resolve("resnet50-radimagenet")


def _record_after_barrier(barrier, name: str, path: str) -> None:
    barrier.wait()
    raise SystemExit(main(["weights", "verify", "--record", name, path]))


def test_eight_processes_recording_at_once_keep_every_pin(tmp_path, monkeypatch):
    """`weights verify --record` from 8 processes started together: all 8 pins survive."""
    import multiprocessing
    import time

    # A slow disk: every process reads the pins, then waits before writing. Without a lock each
    # one writes what it read plus its own pin, and the last write wins.
    read = W.user_pins

    def slow_read():
        pins = read()
        time.sleep(0.3)
        return pins

    monkeypatch.setattr(W, "user_pins", slow_read)
    files = []
    for index in range(8):
        path = tmp_path / f"trusted{index}.pt"
        path.write_bytes(f"checkpoint {index}".encode())
        files.append((("resnet50-radimagenet", "ssfd-fastmri-knee")[index % 2], str(path)))
    context = multiprocessing.get_context("fork")  # the patched read is inherited
    barrier = context.Barrier(len(files))
    workers = [context.Process(target=_record_after_barrier, args=(barrier, *item)) for item in files]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * len(files)
    pins = json.loads(W.pins_path().read_text())
    for name in ("resnet50-radimagenet", "ssfd-fastmri-knee"):
        recorded = sorted(pin["file"] for pin in pins[name])
        assert recorded == sorted(str(Path(p).resolve()) for n, p in files if n == name)
        for pin in pins[name]:
            assert pin["sha256"] == hashlib.sha256(Path(pin["file"]).read_bytes()).hexdigest()
    left = sorted(p.name for p in W.pins_path().parent.iterdir())
    assert left == ["pins.json", "pins.json.lock"]  # no temp file left behind


# -- precise messages -------------------------------------------------------------------------------


def test_directory_symlink_loop_and_broken_link_are_named(tmp_path):
    folder = tmp_path / "a_folder.pth"
    folder.mkdir()
    with pytest.raises(W.MissingWeightsError, match="is a directory"):
        ResNetFD(weights=folder)
    loop = tmp_path / "loop.pth"
    loop.symlink_to(tmp_path / "loop2.pth")
    (tmp_path / "loop2.pth").symlink_to(loop)
    with pytest.raises(W.MissingWeightsError, match="symlink loop"):
        ResNetFD(weights=loop)
    broken = tmp_path / "broken.pth"
    broken.symlink_to(tmp_path / "gone.pth")
    with pytest.raises(W.MissingWeightsError, match="broken symlink.*gone.pth"):
        W.resolve(broken)
    home = W.weights_home()
    home.mkdir(parents=True, exist_ok=True)
    (home / "RadImageNet-ResNet50.pt").mkdir()  # a registered name whose file is a folder
    with pytest.raises(W.MissingWeightsError, match="RadImageNet-ResNet50.pt is a directory"):
        W.resolve("resnet50-radimagenet")
    assert W.status(W.get_spec("resnet50-radimagenet"))[0] == "not a file"


def test_wrong_shapes_are_listed(tmp_path):
    import torchvision

    state = torchvision.models.alexnet(weights=None).state_dict()
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    path = tmp_path / "alex.pth"
    torch.save(state, path)
    with pytest.raises(W.CorruptWeightsError, match=r"wrong shape.*\(64, 3, 5, 5\) vs model "
                                                    r"\(64, 3, 11, 11\)") as info:
        LPIPS(net="alex", weights=path)
    assert str(path) in str(info.value) and "missing keys" not in str(info.value)
    module = torch.nn.Linear(3, 4)
    with pytest.raises(W.CorruptWeightsError, match=r"weight: file \(4, 2\) vs model \(4, 3\).*"
                                                    r"missing keys \['bias'\]"):
        W.load_into(module, {"weight": torch.zeros(4, 2)}, source="x.pt")


@pytest.mark.parametrize("bad", [None, 3, b"vgg", ["a"]])
def test_weights_none_or_not_a_string_is_a_clear_error(bad):
    with pytest.raises(TypeError, match=r"Argument `weights` must be a registry name.*'random'"):
        W.load_checkpoint(bad)
    with pytest.raises(TypeError, match="Argument `weights`"):
        W.resolve(bad)
    with pytest.raises(TypeError, match="Argument `weights`"):
        W.check_weights_arg(bad)


@pytest.mark.parametrize("name, build", [
    ("lpips-vgg-v0.1", lambda: LPIPS(net="vgg", weights="random")),
    ("lpips-alex-v0.1", lambda: LPIPS(net="alex", weights="random")),
    ("dists-alpha-beta", lambda: DISTS(weights="random")),
])
def test_a_tampered_package_head_is_refused(tmp_path, monkeypatch, name, build):
    """LPIPS linear heads and DISTS alpha/beta load through the weights table: sha256 checked."""
    spec = W.get_spec(name)
    shipped = W.resolve(name)
    fake_package = tmp_path / spec.package
    (fake_package / spec.filename).parent.mkdir(parents=True)
    state = torch.load(shipped, map_location="cpu", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] * 1.01  # a subtly edited head
    torch.save(state, fake_package / spec.filename)
    monkeypatch.setattr(W, "_package_dir", lambda package: fake_package)
    monkeypatch.setattr(W.sys, "prefix", str(tmp_path / "no_prefix"))
    with pytest.raises(W.ChecksumError, match=name):
        build()
