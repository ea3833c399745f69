"""The suite fails when a test writes into the checkout (tests/checkout_guard.py), and only then."""

from __future__ import annotations

import os

import pytest

from tests.checkout_guard import changes, snapshot


@pytest.fixture
def project(pytester):
    """A checkout of its own (its rootdir) that runs the guard, with a file of the user's in runs/."""
    pytester.makepyprojecttoml("[tool.pytest.ini_options]\naddopts = '-p no:cacheprovider'\n")
    pytester.makeconftest("pytest_plugins = ['tests.checkout_guard']\n")
    runs = pytester.path / "runs" / "unet" / "checkpoints"
    runs.mkdir(parents=True)
    (runs / "last.ckpt").write_bytes(b"the user's own run")
    return pytester


def test_a_clean_session_passes_and_caches_do_not_count(project):
    project.makepyfile(test_clean="""
        import subprocess, sys
        def test_writes_under_tmp(tmp_path):
            (tmp_path / "x.ckpt").write_text("ok")
        def test_byte_code_and_egg_info_are_not_files_of_the_checkout():
            import pathlib
            (pathlib.Path("__pycache__")).mkdir(exist_ok=True)
            (pathlib.Path("__pycache__") / "m.cpython-311.pyc").write_bytes(b"")
            pathlib.Path("pkg.egg-info").mkdir()
            (pathlib.Path("pkg.egg-info") / "PKG-INFO").write_text("")
            (pathlib.Path("stray.pyc")).write_bytes(b"")
    """)
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    assert "checkout changed" not in result.stdout.str()


def test_a_session_that_writes_into_the_checkout_fails_naming_the_files(project):
    project.makepyfile(test_dirty="""
        import pathlib
        def test_fit_with_a_relative_checkpoint_folder():
            folder = pathlib.Path("runs/unrolled/checkpoints")
            folder.mkdir(parents=True)
            (folder / "last.ckpt").write_text("a test's network")
        def test_overwrites_the_users_checkpoint():
            pathlib.Path("runs/unet/checkpoints/last.ckpt").write_text("a test's network, longer")
        def test_an_empty_folder():
            pathlib.Path("lightning_logs").mkdir()
    """)
    result = project.runpytest()
    result.assert_outcomes(passed=3)  # every test passed ...
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # ... the session did not
    result.stdout.fnmatch_lines([
        "*checkout changed*",
        "*tests must write only under their temporary folders*",
        "*created lightning_logs/",
        "*created runs/unrolled/checkpoints/last.ckpt",
        "*changed runs/unet/checkpoints/last.ckpt",
    ])  # fmt: skip


def test_the_guard_can_be_turned_off(project, monkeypatch):
    project.makepyfile(test_dirty="def test_x():\n    open('stray.txt', 'w').close()\n")
    monkeypatch.setenv("LIGHTNING_DFD_CHECKOUT_GUARD", "0")
    assert project.runpytest().ret == 0


def test_tracked_files_may_be_edited_while_the_suite_runs(tmp_path):
    (tmp_path / "module.py").write_text("x = 1\n")
    (tmp_path / "data.h5").write_bytes(b"user data")
    before = snapshot(tmp_path)
    (tmp_path / "module.py").write_text("x = 2  # edited meanwhile\n")
    os.remove(tmp_path / "data.h5")
    assert changes(before, snapshot(tmp_path), tracked_files={"module.py"}) == ["removed data.h5"]
