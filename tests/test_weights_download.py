"""Downloads against a loopback HTTP server on 127.0.0.1: success, offline, stall, wrong bytes,
a connection dropped mid-body, and a checkpoint carrying code."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from lightning_dfd import weights as W
from lightning_dfd.cli import main


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def server(tmp_path):
    """A bounded loopback server: ``/good``, ``/wrong``, ``/stall``, ``/drop``, ``/payload``."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, good)
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.pt"
    torch.save({"w": _Payload(marker)}, payload)
    bodies = {"/good": good.read_bytes(), "/wrong": b"\0" * len(good.read_bytes()),
              "/payload": payload.read_bytes()}
    release = threading.Event()
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            requests.append(self.path)
            body = bodies.get(self.path, bodies["/good"])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path == "/stall":
                self.wfile.write(body[:100])
                self.wfile.flush()
                release.wait(10)  # bounded: the test releases it at teardown
                return
            if self.path == "/drop":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(2)  # the connection drops mid-body
                return
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield {"base": base, "good": bodies["/good"], "marker": marker, "requests": requests}
    release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def _spec(server, path: str, name: str | None = None, pinned: bool = True) -> W.WeightSpec:
    digest = hashlib.sha256(server["good"]).hexdigest() if pinned else None
    name = name or f"loopback-{path.strip('/')}"
    return W.register(W.WeightSpec(name, f"{name}.pt", server["base"] + path, arch="test",
                                   sha256=digest), overwrite=True)


def _leftovers() -> list[str]:
    home = W.weights_home()
    return sorted(p.name for p in home.iterdir()) if home.exists() else []


@pytest.fixture
def online(monkeypatch):
    monkeypatch.setenv("LIGHTNING_DFD_OFFLINE", "0")


def test_download_verifies_and_loads(server, online):
    spec = _spec(server, "/good")
    assert torch.equal(W.load_checkpoint(spec.name)["w"], torch.arange(1000, dtype=torch.float32))
    assert _leftovers() == [spec.filename]  # no temporary file next to it
    assert (W.weights_home() / spec.filename).read_bytes() == server["good"]


def test_fetch_command_downloads_and_honours_offline(server, monkeypatch, capsys):
    spec = _spec(server, "/good")
    monkeypatch.setenv("LIGHTNING_DFD_OFFLINE", "1")
    assert main(["weights", "fetch", spec.name]) == 1
    assert "offline" in capsys.readouterr().out
    assert server["requests"] == [] and _leftovers() == []  # nothing was even asked for
    monkeypatch.setenv("LIGHTNING_DFD_OFFLINE", "0")
    assert main(["weights", "fetch", spec.name, "--timeout", "5"]) == 0
    assert "found (downloaded)" in capsys.readouterr().out
    assert server["requests"] == ["/good"] and _leftovers() == [spec.filename]


def test_stalled_server_times_out_and_leaves_nothing(server, online, monkeypatch):
    spec = _spec(server, "/stall")
    start = time.monotonic()
    with pytest.raises(W.MissingWeightsError, match=r"timed out after 0.5 s") as info:
        W.download(spec, timeout=0.5)
    assert time.monotonic() - start < 5 and spec.url in str(info.value)
    monkeypatch.setenv(W.TIMEOUT_ENV, "0.5")  # the environment sets it for loads by name
    with pytest.raises(W.MissingWeightsError, match="timed out"):
        W.load_checkpoint(spec.name)
    assert _leftovers() == []
    monkeypatch.setenv(W.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=W.TIMEOUT_ENV):
        W.download(spec)


def test_wrong_bytes_fail_the_checksum_and_are_deleted(server, online):
    spec = _spec(server, "/wrong")
    actual = hashlib.sha256(b"\0" * len(server["good"])).hexdigest()
    with pytest.raises(W.ChecksumError) as info:
        W.resolve(spec.name)
    text = str(info.value)
    assert spec.url in text and spec.sha256 in text and actual in text and "deleted" in text
    assert _leftovers() == []  # neither under the real name nor a temporary one


def test_connection_dropped_mid_body_leaves_nothing(server, online):
    spec = _spec(server, "/drop", pinned=False)  # even with no checksum to catch it
    with pytest.raises(W.MissingWeightsError, match="nothing was kept") as info:
        W.download(spec, timeout=5)
    assert spec.url in str(info.value)
    assert _leftovers() == []


def test_served_checkpoint_carrying_code_never_runs(server, online):
    spec = _spec(server, "/payload", pinned=False)
    with pytest.warns(W.UnpinnedWeightsWarning, match="unpinned"):
        with pytest.raises(W.CorruptWeightsError, match="pickled") as info:
            W.load_checkpoint(spec.name)
    assert spec.url in str(info.value) and spec.name in str(info.value)
    assert not server["marker"].exists()


def _folder_spec(server, path: str, name: str = "loopback-folder") -> W.WeightSpec:
    """A model-folder row (as the Hugging Face rows): ``<name>/model.safetensors`` + companions."""
    return W.register(W.WeightSpec(name, f"{name}/model.safetensors", server["base"] + path, arch="hf:test",
                                   sha256=hashlib.sha256(server["good"]).hexdigest(),
                                   companions=("config.json", "preprocessor_config.json")), overwrite=True)


def test_model_folder_fetches_its_companions(server, online, capsys):
    spec = _folder_spec(server, "/repo/good")
    assert W.status(spec)[0] == "missing"
    assert main(["weights", "fetch", spec.name, "--timeout", "5"]) == 0
    assert "found (downloaded)" in capsys.readouterr().out
    folder = W.weights_home() / spec.name
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                        "preprocessor_config.json"]
    assert sorted(server["requests"]) == ["/repo/config.json", "/repo/good", "/repo/preprocessor_config.json"]
    assert W.resolve(spec.name) == folder / "model.safetensors"
    (folder / "config.json").unlink()  # a folder without its config is reported, and fetched again
    assert W.status(spec)[0] == "incomplete (no config.json)"
    assert main(["weights", "fetch", spec.name, "--timeout", "5"]) == 0
    assert W.status(spec)[0] == "found"


def test_model_folder_with_wrong_weights_leaves_nothing(server, online):
    spec = _folder_spec(server, "/wrong")
    with pytest.raises(W.ChecksumError, match="deleted"):
        W.download(spec, timeout=5)
    assert _leftovers() == []  # the companions it wrote and the folder it made are gone
    with pytest.raises(W.MissingWeightsError, match=r"model folder: put model.safetensors, config.json"):
        W.resolve(spec.name, allow_download=False)
