"""`lightning-dfd evaluate` writes only inside its own output folders and removes only what it wrote.

Issue 19: a prediction named ``...h5`` made ``--maps maps`` remove the folder above the maps folder
(the whole project); ``..h5`` removed the maps folder; ``--maps`` equal to ``--target`` replaced
the references by maps; ``v2.H5`` was neither scored nor reported.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from lightning_dfd.analysis.maps import MANIFEST, MapsOwnershipError, MapWriter
from lightning_dfd.cli import main
from lightning_dfd.files import UnsafePathError, contained_path

SHAPE = (2, 40, 40)


def _volume(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2) < 12**2
    return (0.1 + disc + 0.05 * rng.random(SHAPE)).astype(np.float32)


def _write(path: Path, key: str, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as handle:
        handle.create_dataset(key, data=data)


def _pair(project: Path, pred_name: str, ref_name: str | None = None, seed: int = 0) -> None:
    target = _volume(seed)
    _write(project / "rec" / pred_name, "reconstruction", target * 0.9)
    if ref_name is not None:
        _write(project / "ref" / ref_name, "reconstruction_rss", target)


def _project(tmp_path: Path) -> Path:
    """A project folder: ref/ and rec/ with two good pairs, and a file of the user's own."""
    project = tmp_path / "project"
    for index in range(2):
        _pair(project, f"file{index}.h5", f"file{index}.h5", seed=index)
    (project / "notes.txt").write_text("the user's own notes")
    return project


def _argv(*extra: str, maps: str | None = "maps", out: str = "out/results.csv",
          weights: Path | None = None) -> list[str]:
    argv = ["evaluate", "--target", "ref", "--predictions", "rec", "--no-progress", "--device", "cpu",
            "--out", out, "--metrics", "psnr,lpips_alex" if weights else "psnr"]
    if weights is not None:
        argv += ["--weights", f"lpips_alex={weights}"]
    if maps is not None:
        argv += ["--maps", maps]
    return argv + list(extra)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (links not followed) with the sha256 of its bytes."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink():
                found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        for name in dirs:
            found.setdefault(str(Path(root, name).relative_to(folder)) + "/", "folder")
    return found


def _maps_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".lightning-dfd-maps"))


# -------------------------------------------------------------------------------- volume names


@pytest.mark.parametrize(("name", "volume", "why"), [
    ("...h5", "..", "it names a folder above"),
    ("..h5", ".", "it names the folder itself"),
    (".h5", "", "it is empty"),
])  # fmt: skip
@pytest.mark.parametrize("partner", [False, True])
def test_a_volume_name_that_cannot_name_an_output_is_an_error_row_and_nothing_is_removed(
    tmp_path, monkeypatch, alexnet_random, name, volume, why, partner
):
    project = _project(tmp_path)
    monkeypatch.chdir(project)  # as the issue ran it: --maps maps from the project folder
    assert main(_argv(weights=alexnet_random)) == 0
    before = _snapshot(project)
    _pair(project, name, name if partner else None, seed=5)
    assert main(_argv(weights=alexnet_random)) == 1
    after = _snapshot(project)
    assert {k: v for k, v in after.items() if not k.startswith(("out/", "rec/", "ref/"))} == {
        k: v for k, v in before.items() if not k.startswith(("out/", "rec/", "ref/"))
    }  # the project's own file and every map of the good files are untouched
    assert {k: v for k, v in before.items() if k.startswith(("rec/", "ref/"))}.items() <= after.items()
    errors = pd.read_csv(project / "out" / "results_errors.csv", keep_default_na=False)
    rows = errors.values.tolist()
    expected = [[name, "name", f"in the predictions folder rec: volume {volume!r} is not a plain file "
                               f"name ({why}); not scored"]]  # fmt: skip
    if partner:
        expected.append([name, "name", expected[0][2].replace("predictions folder rec", "target folder ref")])
    assert rows == expected
    assert sorted(pd.read_csv(project / "out" / "results_volumes.csv")["volume"]) == ["file0", "file1"]


# ------------------------------------------------------------------ outputs apart from the inputs


@pytest.mark.parametrize(("maps", "out", "message"), [
    ("ref", "out/results.csv", "--maps ref is the --target folder ref"),
    ("rec", "out/results.csv", "--maps rec is the --predictions folder rec"),
    ("ref/maps", "out/results.csv", "--maps ref/maps lies inside the --target folder ref"),
    (".", "out/results.csv", "--maps . holds the --predictions folder rec"),
    ("./ref/../rec/", "out/results.csv", "--maps ref/../rec is the --predictions folder rec"),
    ("link_to_ref", "out/results.csv", "--maps link_to_ref is the --target folder ref"),
    ("maps", "rec/results.csv", "--out rec/results.csv lies inside the --predictions folder rec"),
    ("maps", "link_to_ref/sub/results.csv", "--out link_to_ref/sub/results.csv lies inside the --target"),
])  # fmt: skip
def test_outputs_in_or_around_an_input_folder_are_refused_before_any_work(tmp_path, monkeypatch, capsys,
                                                                          maps, out, message):
    project = _project(tmp_path)
    _pair(project, "unpaired.h5")  # the old code deleted it with --maps rec
    (project / "link_to_ref").symlink_to(project / "ref", target_is_directory=True)
    monkeypatch.chdir(project)
    before = _snapshot(project)
    assert main(_argv(maps=maps, out=out)) == 2
    err = capsys.readouterr().err
    assert message in err and "outputs never go into an input folder" in err, err
    assert _snapshot(project) == before  # nothing written, nothing removed


def test_a_process_started_by_a_launcher_refuses_the_same_outputs(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.setenv("RANK", "1")  # torchrun's rank 1: it skips rank 0's output checks
    before = _snapshot(project)
    assert main(_argv(maps="ref")) == 2
    assert "--maps ref is the --target folder ref" in capsys.readouterr().err
    assert _snapshot(project) == before


# ---------------------------------------------------------------------- the maps manifest


def test_maps_replace_and_remove_only_what_evaluate_wrote(tmp_path, monkeypatch, capsys, alexnet_random):
    project = _project(tmp_path)
    _pair(project, "file2.h5", "file2.h5", seed=2)
    monkeypatch.chdir(project)
    maps = project / "maps"
    maps.mkdir()
    (maps / "mine.txt").write_text("the user's file in the maps folder")
    (maps / "file1.h5").write_text("not a map: a file of the user's where file1's maps go")
    assert main(_argv(weights=alexnet_random)) == 1
    errors = pd.read_csv(project / "out" / "results_errors.csv")
    assert errors[["file", "stage"]].values.tolist() == [["file1.h5", "maps"]]
    assert "maps/file1.h5 exists and was not written by lightning-dfd evaluate" in errors["error"][0]
    assert (maps / "file1.h5").read_text().startswith("not a map")  # left alone
    assert not (maps / "file1").exists()  # nothing of file1's is written beside it
    assert _maps_listing(maps) == ["file0", "file0.h5", "file1.h5", "file2", "file2.h5", "mine.txt"]
    manifest = json.loads((maps / MANIFEST).read_text())
    assert sorted({record["volume"] for record in manifest["files"].values()}) == ["file0", "file2"]

    # file0 fails now: its recorded maps go; file2's PNG folder holds a file of the user's now, and
    # file2 fails too: its maps go, the user's file and so the folder stay.
    (project / "rec" / "file0.h5").write_bytes(b"corrupt" * 10)
    (project / "rec" / "file2.h5").write_bytes(b"corrupt" * 10)
    (maps / "file2" / "annotation.txt").write_text("the user's note on file2")
    capsys.readouterr()
    assert main(_argv(weights=alexnet_random)) == 1
    err = capsys.readouterr().err
    assert "left maps/file1.h5" not in err  # file1 was scored now: nothing to remove
    assert "left maps/file2/annotation.txt: not written by evaluate" in err
    assert _maps_listing(maps) == ["file1.h5", "file2", "mine.txt"]
    assert sorted(p.name for p in (maps / "file2").iterdir()) == ["annotation.txt"]
    assert (maps / "mine.txt").read_text() == "the user's file in the maps folder"
    manifest = json.loads((maps / MANIFEST).read_text())
    assert manifest["files"] == {}


def test_a_changed_map_is_not_replaced_and_not_removed(tmp_path, monkeypatch, capsys, alexnet_random):
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    assert main(_argv(weights=alexnet_random)) == 0
    edited = project / "maps" / "file0" / "lpips_alex_slice000.png"
    edited.write_bytes(b"the user's edited figure")
    assert main(_argv(weights=alexnet_random)) == 1  # file0's PNG folder is not replaced
    errors = pd.read_csv(project / "out" / "results_errors.csv")
    assert errors[["file", "stage"]].values.tolist() == [["file0.h5", "maps"]]
    assert "holds lpips_alex_slice000.png and was not written" in errors["error"][0]
    assert edited.read_bytes() == b"the user's edited figure"
    (project / "rec" / "file0.h5").write_bytes(b"corrupt" * 10)
    assert main(_argv(weights=alexnet_random)) == 1
    assert edited.read_bytes() == b"the user's edited figure"  # a failing file: still not removed
    assert sorted(p.name for p in (project / "maps" / "file0").iterdir()) == ["lpips_alex_slice000.png"]


def test_a_manifest_evaluate_cannot_read_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    (project / "maps").mkdir()
    (project / "maps" / MANIFEST).write_text('{"format": 1, "files": {"../notes.txt": '
                                             '{"volume": "file0", "sha256": []}}}')
    before = _snapshot(project)
    assert main(_argv()) == 2
    assert "is not a manifest lightning-dfd evaluate wrote" in capsys.readouterr().err
    assert _snapshot(project) == before


def test_map_writer_unit_paths(tmp_path):
    outside = tmp_path / "outside.h5"
    outside.write_text("someone else's file")
    writer = MapWriter(tmp_path / "maps", formats=("h5", "png"))
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "vol.h5").symlink_to(outside)  # a link out of the maps folder
    maps = {"lpips_alex": np.ones((1, 8, 8), np.float32)}
    for stem in ("..", ".", "", "a/b"):
        with pytest.raises(UnsafePathError):
            writer.write(stem, maps, slices=[0])
        with pytest.raises(UnsafePathError):
            writer.discard(stem)
    with pytest.raises(UnsafePathError, match="outside the folder"):
        writer.write("vol", maps, slices=[0])
    assert outside.read_text() == "someone else's file"
    assert writer.discard("vol") == ([], [tmp_path / "maps" / "vol.h5"])
    # A format no longer asked for: the earlier run's PNGs (recorded) are removed.
    writer.write("other", maps, slices=[0])
    assert sorted(writer.recorded("other")) == ["other.h5", "other/lpips_alex_slice000.png"]
    MapWriter(tmp_path / "maps", formats=("h5",)).write("other", maps, slices=[0])
    assert not (tmp_path / "maps" / "other").exists()
    assert writer.recorded("other") == ["other.h5"]
    # Collisions between volumes: volume "x.h5" (file x.h5.h5) would put its PNG folder where
    # volume "x" keeps its h5 file.
    writer.write("x", maps, slices=[0])
    with pytest.raises(MapsOwnershipError, match="for volume 'x.h5'"):
        writer.write("x.h5", maps, slices=[0])
    assert (tmp_path / "maps" / "x.h5").is_file()
    leftovers = [p.name for p in (tmp_path / "maps").iterdir() if p.name.startswith(".lightning-dfd-maps-")]
    assert leftovers == []  # no temp file left by the refused writes


def test_contained_path_follows_links_and_refuses_every_escape(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "inner").symlink_to(tmp_path, target_is_directory=True)
    assert contained_path(folder, "a.csv") == folder / "a.csv"
    assert contained_path(folder, "sub", "a.png") == folder / "sub" / "a.png"
    for names in ((".",), ("..",), ("",), ("a/../..",), ("a\\b",), ("inner", "x"), ("inner",)):
        with pytest.raises(UnsafePathError):
            contained_path(folder, *names)


# ---------------------------------------------------------------- every input file accounted for


def test_every_entry_of_the_input_folders_is_scored_or_reported(tmp_path, monkeypatch, capsys):
    project = _project(tmp_path)
    _pair(project, "v2.H5", "v2.H5", seed=2)  # upper-case suffix in both folders: scored
    _pair(project, "v3.h5", "v3.H5", seed=3)  # the suffix's case differs: still the same volume
    (project / "rec" / "README.txt").write_text("not a volume")
    (project / "ref" / "sub").mkdir()
    monkeypatch.chdir(project)
    assert main(_argv(maps=None)) == 0  # ignored entries are listed, not failures
    volumes = pd.read_csv(project / "out" / "results_volumes.csv")["volume"].tolist()
    assert volumes == ["file0", "file1", "v2", "v3"]
    errors = pd.read_csv(project / "out" / "results_errors.csv")
    assert errors[["file", "stage"]].values.tolist() == [["README.txt", "ignored"], ["sub", "ignored"]]
    assert "in the target folder ref: a folder, not scored" in errors["error"][1]
    err = capsys.readouterr().err
    assert "ignored README.txt: in the predictions folder rec: not an .h5 file" in err
    assert "2 other entries of the input folders ignored" in err

    _pair(project, "v2.h5", seed=4)  # now rec holds v2.H5 and v2.h5: which one is volume v2?
    assert main(_argv(maps=None)) == 1
    errors = pd.read_csv(project / "out" / "results_errors.csv")
    errors = errors[errors["stage"] != "ignored"]
    assert errors[["file", "stage"]].values.tolist() == [["v2.H5", "name"], ["v2.H5", "pair"],
                                                         ["v2.h5", "name"]]  # fmt: skip
    assert errors["error"].iloc[0].endswith("2 files of volume 'v2' (v2.H5, v2.h5); none is scored")
    assert errors["error"].iloc[1] == ("the predictions folder holds several files of that volume "
                                       "(see its rows)")
    assert "v2" not in pd.read_csv(project / "out" / "results_volumes.csv")["volume"].tolist()


def test_outputs_get_the_permissions_a_plain_write_gives(tmp_path, monkeypatch):
    """Temp files renamed into place keep the umask's mode (tempfile's would be private, 0600)."""
    from lightning_dfd.analysis.outputs import write_atomically

    old = os.umask(0o022)
    try:
        out = tmp_path / "results.csv"
        (tmp_path / ".results.csv.0.tmp").write_text("a file of yours")
        write_atomically({out: lambda path: Path(path).write_text("a,b\n")})
        paths = MapWriter(tmp_path / "maps", formats=("h5", "png")).write(
            "file1", {"lpips_alex": np.zeros((1, 8, 8), np.float32)}, slices=[0])
        assert out.stat().st_mode & 0o777 == 0o644
        assert [p.stat().st_mode & 0o777 for p in sorted(paths)] == [0o755, 0o644]  # file1/, file1.h5
        assert (tmp_path / ".results.csv.0.tmp").read_text() == "a file of yours"
        assert sorted(p.name for p in tmp_path.iterdir()) == [".results.csv.0.tmp", "maps", "results.csv"]
        from lightning_dfd.files import new_temp_file, new_temp_folder

        names = {new_temp_file(tmp_path, ".x.").name for _ in range(20)}
        assert len(names) == 20 and new_temp_folder(tmp_path, ".y.").is_dir()
    finally:
        os.umask(old)
