"""Feature-cache disk store under attack: bad files, unwritable directories, processes sharing it.

Every case must end as a hit with the exact value or as a miss (warned once, naming the file),
never as a wrong value, a crash, or a temporary file left behind.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch

from lightning_dfd.feature_cache import FeatureCacheWarning, TargetFeatureCache

NS = "net|digest|minmax"


def _target(i: int, variant: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * variant + i)
    return torch.rand(1, 16, 16, generator=g)


def _features(target: torch.Tensor) -> list[torch.Tensor]:
    """A deterministic stand-in for an encoder: the exact "uncached value" of a target."""
    big = (target.reshape(-1, 1) * torch.arange(1, 129, dtype=torch.float32)).reshape(-1)
    return [big, target.sum(dim=(1, 2)) * 3.0]


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _filled(tmp_path: Path, key=(7, 0)) -> tuple[Path, torch.Tensor]:
    image = _target(*key)
    TargetFeatureCache(directory=tmp_path).put(NS, key, image, _features(image))
    (path,) = [p for p in _files(tmp_path) if p.suffix == ".pt"]
    return path, image


def _miss_warned_once(tmp_path: Path, image: torch.Tensor, path: Path, key=(7, 0)) -> None:
    cache = TargetFeatureCache(directory=tmp_path)
    with pytest.warns(FeatureCacheWarning, match=str(path)):
        assert cache.get(NS, key, image) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same file again: no second warning
        assert cache.get(NS, key, image) is None
    assert cache.stats.bad_files >= 1
    cache.put(NS, key, image, _features(image))  # the miss recomputes and rewrites the entry
    fresh = TargetFeatureCache(directory=tmp_path)
    got = fresh.get(NS, key, image)
    assert got is not None and all(torch.equal(a, b) for a, b in zip(got, _features(image), strict=True))


def test_altered_feature_bytes_are_a_miss(tmp_path):
    path, image = _filled(tmp_path)
    stored = torch.load(path, weights_only=True)
    stored["features"][0][3] += 1.0  # bit rot / a tampered file: fingerprint still matches
    torch.save(stored, path)
    _miss_warned_once(tmp_path, image, path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a dict", "no fingerprint"])
def test_damaged_files_are_a_miss_naming_the_file(tmp_path, damage):
    path, image = _filled(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not a dict":
        torch.save([torch.zeros(2)], path)
    else:
        stored = torch.load(path, weights_only=True)
        del stored["fingerprint"]
        torch.save(stored, path)
    _miss_warned_once(tmp_path, image, path)


def test_foreign_entry_under_another_name_is_a_miss(tmp_path):
    path_a, image = _filled(tmp_path, key=(1, 0))
    cache = TargetFeatureCache(directory=tmp_path)
    cache.put(NS, (2, 0), _target(2, 0), _features(_target(2, 0)))
    (path_b,) = [p for p in _files(tmp_path) if p.suffix == ".pt" and p != path_a]
    path_b.write_bytes(path_a.read_bytes())  # key 1's entry copied over key 2's
    # key 2 asked with key 1's image: the fingerprint matches, the key inside the file does not
    _miss_warned_once(tmp_path, image, path_b, key=(2, 0))


def test_pickled_code_in_a_cache_file_never_runs(tmp_path):
    path, image = _filled(tmp_path)
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "x", "features": Payload()}, path)
    _miss_warned_once(tmp_path, image, path)
    assert not marker.exists()


def _failing_save(code: int):
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half a file")  # the disk fills up half way
        raise OSError(code, os.strerror(code))

    return save, real


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_unwritable_directory_warns_once_and_carries_on_in_memory(tmp_path, monkeypatch, code):
    save, _ = _failing_save(code)
    monkeypatch.setattr(torch, "save", save)
    cache = TargetFeatureCache(directory=tmp_path)
    images = [_target(i, 0) for i in range(3)]
    with pytest.warns(FeatureCacheWarning, match=os.strerror(code)) as record:
        for i, image in enumerate(images):
            cache.put(NS, (i, 0), image, _features(image))
    assert len(record) == 1 and cache.stats.write_errors == 1
    for i, image in enumerate(images):  # memory still serves every entry
        assert torch.equal(cache.get(NS, (i, 0), image)[0], _features(image)[0])
    assert _files(tmp_path) == []  # no temporary file left behind


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_directory_by_permissions(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        cache = TargetFeatureCache(directory=folder)
        image = _target(1, 0)
        with pytest.warns(FeatureCacheWarning, match="memory only"):
            cache.put(NS, (1, 0), image, _features(image))
        assert torch.equal(cache.get(NS, (1, 0), image)[0], _features(image)[0])
        assert _files(folder) == []
    finally:
        folder.chmod(0o700)


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.parametrize("options", ["size=64k", "ro,size=64k"])
def test_real_full_or_read_only_filesystem(tmp_path, options):
    """A real tmpfs that is tiny (disk full) or read-only, where this machine lets us mount one."""
    where = tmp_path / "mnt"
    if not _mount_tmpfs(where, options):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        cache = TargetFeatureCache(directory=where / "cache" if "ro" in options else where)
        images = [_target(i, 0) for i in range(8)]  # 8 x 128 KiB of features: more than 64 KiB
        with pytest.warns(FeatureCacheWarning, match="memory only") as record:
            for i, image in enumerate(images):
                cache.put(NS, (i, 0), image, _features(image))
        assert len(record) == 1
        for i, image in enumerate(images):
            assert torch.equal(cache.get(NS, (i, 0), image)[0], _features(image)[0])
        assert not [p for p in where.rglob("*.tmp")]
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)  # busy


# -- processes sharing one directory ----------------------------------------------------------


def _hammer(directory: str, seed: int, seconds: float, start, results) -> None:
    """Read and write the same few keys, with two different targets per key, for ``seconds``."""
    import random

    torch.set_num_threads(1)
    rng = random.Random(seed)
    counts = {"reads": 0, "hits": 0, "wrong": 0, "errors": []}
    cache = TargetFeatureCache(max_bytes=0, directory=directory)  # every read goes to disk
    start.wait()
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        i, variant = rng.randrange(4), rng.randrange(2)
        image = _target(i, variant)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # any ignored (torn, bad) file is a failure here
                got = cache.get(NS, (i, 0), image)
                counts["reads"] += 1
                if got is None:
                    cache.put(NS, (i, 0), image, _features(image))
                else:
                    counts["hits"] += 1
                    counts["wrong"] += not all(torch.equal(a, b) for a, b in
                                               zip(got, _features(image), strict=True))
        except Exception as err:  # noqa: BLE001 - every failure is reported to the parent
            counts["errors"].append(f"{type(err).__name__}: {err}")
    counts["errors"] = counts["errors"][:5]
    results.put(counts)


@pytest.mark.parametrize("processes", [3])
def test_processes_sharing_a_directory_read_exact_values(tmp_path, processes):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(str(tmp_path), seed, 3.0, start, results))
               for seed in range(processes)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    start.set()
    counts = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert sum(c["reads"] for c in counts) > 100 and sum(c["hits"] for c in counts) > 10, counts
    assert [c["errors"] for c in counts] == [[]] * processes, counts
    assert sum(c["wrong"] for c in counts) == 0, counts
    assert not list(tmp_path.rglob("*.tmp"))
