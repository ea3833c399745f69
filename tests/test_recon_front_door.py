"""``recon-train``'s front door: shipped configs by name, ``--version``, short parse errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import lightning_dfd
from recon_models.cli import main
from recon_models.configs import config_names, config_path, resolve_config_args

SHIPPED = Path(__file__).resolve().parents[1] / "recon_models" / "configs"


def test_every_shipped_config_is_listed_and_packaged():
    names = config_names()
    assert names == sorted(p.stem for p in SHIPPED.glob("*.yaml"))
    assert {"unet", "unrolled", "demo", "ssfd_pretrain"} <= set(names)
    pyproject = (SHIPPED.parents[1] / "pyproject.toml").read_text()
    assert 'recon_models = ["py.typed", "configs/*.yaml"]' in pyproject
    assert (SHIPPED.parent / "py.typed").is_file()


def test_a_bare_name_resolves_to_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config_args(["fit", "--config", "unet"]) == ["fit", "--config", str(config_path("unet"))]
    assert resolve_config_args(["fit", "--config=unet.yaml"]) == ["fit", f"--config={config_path('unet')}"]
    (tmp_path / "unet").write_text("model: {lr: 1.0}\n")  # a file of that name wins
    assert resolve_config_args(["fit", "--config", "unet"]) == ["fit", "--config", "unet"]
    assert resolve_config_args(["fit", "--config", "cfg/x.yaml"]) == ["fit", "--config", "cfg/x.yaml"]


def test_recon_train_fit_config_name_parses(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", "unet", "--print_config"])
    assert exit.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["network"] == yaml.safe_load(config_path("unet").read_text())["model"]["network"]


def test_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", "unett"]) == 1
    err = capsys.readouterr().err
    assert "--config unett" in err and all(name in err for name in config_names())


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"recon-train (lightning-dfd) {lightning_dfd.__version__}"


@pytest.mark.parametrize(("old", "new", "hint"), [
    ("  network: unet", "  netwrok: unet", "did you mean model.network?"),
    ("patience: 5", "patiense: 5",
     "did you mean patience (an init_arg of lightning_dfd.callbacks.DFDEarlyStopping)?"),
])
def test_yaml_typo_gives_a_short_did_you_mean(tmp_path, monkeypatch, capsys, old, new, hint):
    text = config_path("unet").read_text()
    assert old in text
    config = tmp_path / "typo.yaml"
    config.write_text(text.replace(old, new))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(["fit", "--config", str(config)])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert hint in "\n".join(err)
    assert len(err) <= 6, err  # not jsonargparse's usage of every option (82 lines)
    assert err[-1].strip() == "recon-train fit --help lists every option"


def test_version_from_the_console_entry_point_imports_no_lightning():
    """``recon-train --version`` answers before Lightning, torch or the models are imported."""
    import subprocess
    import sys

    code = ("import sys; from recon_models.launcher import main; assert main(['--version']) == 0; "
            "heavy = sorted(m for m in ('lightning', 'torch', 'jsonargparse', 'recon_models.cli') "
            "if m in sys.modules); print('heavy:', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == f"recon-train (lightning-dfd) {lightning_dfd.__version__}"
    assert out.splitlines()[1] == "heavy: []"
