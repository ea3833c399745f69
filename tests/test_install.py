"""The core install, as a user gets it: wheel -> fresh venv without extras -> every DFD scores.

Builds the wheel from the source tree, installs it into a new virtual environment with no extra
(versions from ``constraints.txt``, the tested set; ``LIGHTNING_DFD_INSTALL_CONSTRAINTS`` picks
another file, e.g. ``constraints-lowest.txt`` for the declared lower bounds), and in that venv
scores every DFD with ``weights="random"``. Nothing of the extras may be installed or imported,
and the scores must equal the development environment's on the same seeds.

Takes ~1.5 min with a warm pip cache (torch's wheel is the bulk); ~6 GB of disk while it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: What the extras bring; none may be installed by, or imported under, the core install.
EXTRAS = ("lightning", "pytorch_lightning", "fastmri", "sigpy", "h5py", "pandas", "matplotlib",
          "tensorboard", "jsonargparse", "timm", "transformers")

SCORE = r"""
import importlib.util, json, sys
import torch
torch.manual_seed(0)
import lightning_dfd
from lightning_dfd import DISTS, LPIPS, NMSE, PSNR, SSIM, ResNetFD, SSFD, VAEFD, TimmFD, HFFD, DFDCallback
from lightning_dfd import FrechetDFD
from lightning_dfd import functional

g = torch.Generator().manual_seed(1)
target = torch.rand(2, 64, 64, generator=g)
preds = target + 0.2 * torch.randn(2, 64, 64, generator=g)
scores = {}
builders = {
    "lpips_vgg": lambda: LPIPS(net="vgg", weights="random"),
    "lpips_alex": lambda: LPIPS(net="alex", weights="random"),
    "lpips_vgg_nolin": lambda: LPIPS(net="vgg", linear=False, weights="random"),
    "dists": lambda: DISTS(weights="random"),
    "resnet_fd": lambda: ResNetFD(weights="random"),
    "ssfd": lambda: SSFD(weights="random"),
    "vaefd": lambda: VAEFD(weights="random"),
    "psnr": PSNR, "ssim": SSIM, "nmse": NMSE,
}
for name, build in builders.items():
    torch.manual_seed(0)
    metric = build()
    metric.update(preds, target)
    scores[name] = float(metric.compute())
torch.manual_seed(0)
frechet = FrechetDFD("resnet_fd", weights="random")
frechet.update(target, real=True)
frechet.update(preds, real=False)
scores["frechet_resnet_fd"] = float(frechet.compute())
errors = {}
optional = {"TimmFD": lambda: TimmFD("resnet18", weights="random"),
            "HFFD": lambda: HFFD("microsoft/rad-dino", weights="random"),
            "DFDCallback": lambda: DFDCallback(["psnr"])}
for name, build in optional.items():
    try:
        build()
        errors[name] = None
    except (ImportError, FileNotFoundError) as err:  # not installed; HFFD: no rad-dino folder here
        errors[name] = str(err)
print(json.dumps({
    "scores": scores,
    "errors": errors,
    "file": lightning_dfd.__file__,
    "torch": torch.__version__,
    "imported": sorted(m for m in EXTRAS if m in sys.modules),
    "installed": sorted(m for m in EXTRAS if importlib.util.find_spec(m) is not None),
}))
"""


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def _source_copy(dst: Path) -> Path:
    """The files git would ship (tracked + new, not ignored): no stale build/ or .venv."""
    try:
        listed = _run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"])
        files = [f for f in listed.stdout.splitlines() if (ROOT / f).is_file()]
    except (AssertionError, FileNotFoundError):  # not a git checkout
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".venv", "build", ".git", "__pycache__", "runs"} & set(p.relative_to(ROOT).parts)]
    for name in files:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dst / name)
    return dst


def _score(python: str, cwd: Path, env: dict[str, str]) -> dict:
    out = _run([python, "-c", f"EXTRAS = {EXTRAS!r}\n{SCORE}"], cwd=cwd, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_wheel_installs_and_scores_without_extras(tmp_path, request):
    timings = {}
    constraints = ROOT / os.environ.get("LIGHTNING_DFD_INSTALL_CONSTRAINTS", "constraints.txt")
    assert constraints.is_file(), constraints
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(LIGHTNING_DFD_OFFLINE="1", LIGHTNING_DFD_HOME=str(tmp_path / "home"),
               PIP_DISABLE_PIP_VERSION_CHECK="1")

    start = time.perf_counter()
    source = _source_copy(tmp_path / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp_path / "dist")],
         env=env)
    wheel = next((tmp_path / "dist").glob("lightning_dfd-*.whl"))
    timings["build_wheel_s"] = time.perf_counter() - start
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [line for line in requires if "extra ==" not in line]
    assert "License-Expression: MIT" in meta
    assert core and not [line for line in requires if "==" in line.split(";")[0]], requires
    assert not [line for line in core if any(x in line.lower() for x in ("lightning", "fastmri", "h5py"))]

    start = time.perf_counter()
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], env=env)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)], env=env)
    timings["venv_and_install_s"] = time.perf_counter() - start
    _run([python, "-m", "pip", "check"], env=env)

    start = time.perf_counter()
    installed = _score(python, tmp_path, env)
    timings["score_s"] = time.perf_counter() - start
    assert Path(installed["file"]).is_relative_to(venv), installed["file"]  # the wheel, not the source
    assert installed["imported"] == [] and installed["installed"] == [], installed
    assert "pip install 'lightning-dfd[timm]'" in installed["errors"]["TimmFD"]
    assert "pip install 'lightning-dfd[hf]'" in installed["errors"]["HFFD"]
    assert "pip install 'lightning-dfd[recon]'" in installed["errors"]["DFDCallback"]
    assert set(installed["scores"]) == {"lpips_vgg", "lpips_alex", "lpips_vgg_nolin", "dists",
                                        "resnet_fd", "ssfd", "vaefd", "psnr", "ssim", "nmse",
                                        "frechet_resnet_fd"}

    # The same numbers as the development environment (same seeds, same code).
    dev_env = dict(env, PYTHONPATH=str(ROOT))
    reference = _score(sys.executable, tmp_path, dev_env)
    tol = 1e-5 if reference["torch"] == installed["torch"] else 1e-3
    for name, value in reference["scores"].items():
        assert installed["scores"][name] == pytest.approx(value, rel=tol, abs=tol), name
    for name, seconds in timings.items():
        request.node.user_properties.append((name, round(seconds, 1)))
    print(f"install test timings: {timings} (torch {installed['torch']}, constraints {constraints.name})")
