"""The real-data registry and its fetcher: pinned hashes against ../shared/data and the data in use, the
look-up order, corrupted cache files fetched again, errors that name the file, both hashes, the package and
the command to fetch by hand. Fetches run on real archives built here (a .tar.gz sdist and a .whl), obtained
either from a local stand-in for the index or by the real pip from a local find-links folder: no network."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import fetch_test_data as ftd

NAMES_PY = b'"""stand-in for a package module"""\nclass_map = {\n    "total": {1: "liver", 3: "spleen", 9: "unused"},\n}\nother = 1\n'


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _labels_nii(tmp_path: Path) -> bytes:
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 1:3, 2:4] = 1
    arr[2:4, 3, 1:5] = 3
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path.read_bytes()


class LocalIndex:
    """A stand-in for the package index: hands out the real archives built in tmp_path, counting requests."""

    def __init__(self, archives):
        self.archives = archives
        self.calls = []

    def __call__(self, package, folder):
        self.calls.append(package.name)
        return Path(shutil.copy(self.archives[package.name], folder / package.archive))


@pytest.fixture
def standin(tmp_path):
    """Two real archives (sdist ``pkga-1.0.tar.gz`` with a top folder, wheel ``pkgb-2.0-py3-none-any.whl``)
    and the registry of four files taken from them: three verbatim members and one derived labels.json."""
    blob = np.random.default_rng(7).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    nii = _labels_nii(tmp_path)
    text = b"a small text file\n"
    src = tmp_path / "src"
    for rel, data in {"pkga-1.0/data/blob.bin": blob, "pkga-1.0/data/seg.nii.gz": nii,
                      "pkga-1.0/pkga/names.py": NAMES_PY, "pkga-1.0/README": b"unused"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    sdist = tmp_path / "pkga-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as t:
        t.add(src / "pkga-1.0", arcname="pkga-1.0")
    wheel = tmp_path / "pkgb-2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("pkgb/data/note.txt", text)
        z.writestr("pkgb/other.txt", b"unused")
    labels_json = json.dumps({"1": "liver", "3": "spleen"}, indent=1).encode()
    raw = {
        "packages": {
            "pkga": dict(version="1.0", kind="sdist", archive=sdist.name, archive_size=sdist.stat().st_size,
                         archive_sha256=_sha(sdist.read_bytes()), licence="MIT"),
            "pkgb": dict(version="2.0", kind="wheel", archive=wheel.name, archive_size=wheel.stat().st_size,
                         archive_sha256=_sha(wheel.read_bytes()), licence="BSD-3-Clause"),
        },
        "files": {
            "a/blob.bin": dict(size=len(blob), sha256=_sha(blob), package="pkga", licence="MIT", member="pkga-1.0/data/blob.bin"),
            "a/labels.nii.gz": dict(size=len(nii), sha256=_sha(nii), package="pkga", licence="MIT", member="pkga-1.0/data/seg.nii.gz"),
            "a/labels.json": dict(size=len(labels_json), sha256=_sha(labels_json), package="pkga", licence="MIT",
                                  derived=dict(recipe="label_names", labels="a/labels.nii.gz", names_member="pkga-1.0/pkga/names.py",
                                               variable="class_map", task="total")),
            "b/note.txt": dict(size=len(text), sha256=_sha(text), package="pkgb", licence="BSD-3-Clause", member="pkgb/data/note.txt"),
        },
    }
    reg_path = tmp_path / "registry.json"
    reg_path.write_text(json.dumps(raw))
    expected = {"a/blob.bin": blob, "a/labels.nii.gz": nii, "a/labels.json": labels_json, "b/note.txt": text}
    return ftd.load_registry(reg_path), LocalIndex({"pkga": sdist, "pkgb": wheel}), expected, raw


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------- the real registry

def test_registry_matches_shared_data_file_for_file():
    """Every file of ../shared/data (but its README) is in the registry with its size and sha256, and no more."""
    if not ftd.SHARED_DATA.is_dir():
        pytest.skip(f"no {ftd.SHARED_DATA} beside this clone: nothing to compare (the data in use is checked below)")
    registry = ftd.load_registry()
    on_disk = {str(p.relative_to(ftd.SHARED_DATA)): p for p in ftd.SHARED_DATA.rglob("*") if p.is_file() and p.name != "README.md"}
    assert sorted(on_disk) == sorted(registry.files)
    for rel, path in on_disk.items():
        data = path.read_bytes()
        assert (len(data), _sha(data)) == (registry.files[rel].size, registry.files[rel].sha256), rel


def test_data_in_use_matches_every_pin(shared_data):
    registry = ftd.load_registry()
    for rel, entry in registry.files.items():
        data = (shared_data / rel).read_bytes()
        assert (len(data), _sha(data)) == (entry.size, entry.sha256), rel
    for entry in registry.files.values():
        assert entry.licence and entry.package in registry.packages
        assert (entry.member is None) != (entry.derived is None)


def test_registry_entry_with_neither_member_nor_recipe_is_refused(tmp_path, standin):
    raw = standin[3]
    del raw["files"]["b/note.txt"]["member"]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ftd.InputError, match="b/note.txt.*exactly one of member/derived"):
        ftd.load_registry(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------- fetching

def test_fetch_downloads_each_package_once_extracts_members_and_derives_labels(tmp_path, standin):
    registry, index, expected, _ = standin
    cache = tmp_path / "cache"
    fetched = ftd.ensure(registry, cache, obtain=index)
    assert sorted(fetched) == sorted(expected)
    assert sorted(index.calls) == ["pkga", "pkgb"]
    assert _tree(cache) == expected  # only the registry's members, nothing else of the archives
    assert json.loads((cache / "a/labels.json").read_text()) == {"1": "liver", "3": "spleen"}
    assert ftd.ensure(registry, cache, obtain=index) == [] and len(index.calls) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_corrupted_cache_file_is_detected_and_fetched_again(tmp_path, standin, damage):
    registry, index, expected, _ = standin
    cache = tmp_path / "cache"
    ftd.ensure(registry, cache, obtain=index)
    target = cache / "a/blob.bin"
    if damage == "flip":
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-1])
    else:
        target.unlink()
    assert list(ftd.problems(cache, registry)) == ["a/blob.bin"]
    index.calls.clear()
    assert ftd.ensure(registry, cache, obtain=index) == ["a/blob.bin"]
    assert index.calls == ["pkga"]  # only the package holding the damaged file
    assert _tree(cache) == expected


def test_corrupted_derived_file_is_derived_again(tmp_path, standin):
    registry, index, expected, _ = standin
    cache = tmp_path / "cache"
    ftd.ensure(registry, cache, obtain=index)
    (cache / "a/labels.json").write_text('{"1": "spleen"}')
    assert ftd.ensure(registry, cache, obtain=index) == ["a/labels.json"]
    assert _tree(cache) == expected


def test_member_not_matching_its_pin_is_an_error_naming_file_and_both_hashes(tmp_path, standin):
    registry, index, expected, raw = standin
    pinned = "0" * 64
    raw["files"]["b/note.txt"]["sha256"] = pinned
    (tmp_path / "pin.json").write_text(json.dumps(raw))
    cache = tmp_path / "cache"
    with pytest.raises(ftd.InputError) as err:
        ftd.ensure(ftd.load_registry(tmp_path / "pin.json"), cache, obtain=index)
    msg = str(err.value)
    assert str(cache / "b/note.txt") in msg and pinned in msg and _sha(expected["b/note.txt"]) in msg and "pkgb==2.0" in msg
    assert not (cache / "b/note.txt").exists()  # nothing unverified is written


def test_archive_placed_by_hand_is_used_and_checked(tmp_path, standin):
    registry, index, expected, _ = standin
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    shutil.copy(index.archives["pkga"], cache / "archives")
    shutil.copy(index.archives["pkgb"], cache / "archives")
    ftd.ensure(registry, cache, obtain=index)
    assert index.calls == []
    assert {k: v for k, v in _tree(cache).items() if not k.startswith("archives/")} == expected
    (cache / "archives" / "pkgb-2.0-py3-none-any.whl").write_bytes(b"not the wheel")
    (cache / "b/note.txt").unlink()
    with pytest.raises(ftd.InputError, match=rf"pkgb-2.0-py3-none-any.whl \(pkgb==2.0 wheel\): sha256: expected "
                                             rf"{registry.packages['pkgb'].archive_sha256}.*got {_sha(b'not the wheel')}"):
        ftd.ensure(registry, cache, obtain=index)


# ---------------------------------------------------------------------------------------------- look-up order

def _fail_if_called(package, folder):
    raise AssertionError(f"nothing should be downloaded, yet {package.name} was requested")


def test_lookup_order_env_then_shared_then_cache_then_fetch(tmp_path, standin):
    registry, index, expected, _ = standin
    env_dir, shared, cache = tmp_path / "env", tmp_path / "shared" / "data", tmp_path / "cache"
    for root in (env_dir, shared):
        for rel, data in expected.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    environ = {ftd.ENV_DATA: str(env_dir), ftd.ENV_CACHE: str(cache)}
    assert ftd.locate(registry, environ, shared, obtain=_fail_if_called) == env_dir
    environ = {ftd.ENV_CACHE: str(cache)}
    assert ftd.locate(registry, environ, shared, obtain=_fail_if_called) == shared
    assert not cache.exists()  # ../shared/data present: no download, no cache
    no_shared = tmp_path / "nowhere" / "data"
    assert ftd.locate(registry, environ, no_shared, obtain=index) == cache
    assert sorted(index.calls) == ["pkga", "pkgb"] and _tree(cache) == expected
    assert ftd.locate(registry, environ, no_shared, obtain=_fail_if_called) == cache  # the cache, as it is


def test_default_cache_is_under_the_home_cache_folder():
    assert ftd.cache_dir({}) == Path.home() / ".cache" / "AutoSegSensitivity" / "testdata"
    assert ftd.cache_dir({ftd.ENV_CACHE: "/x/y"}) == Path("/x/y")


@pytest.mark.parametrize("where", ["env", "shared"])
def test_wrong_file_in_env_folder_or_shared_is_an_error_not_a_download(tmp_path, standin, where):
    registry, index, expected, _ = standin
    root = tmp_path / "data"
    for rel, data in expected.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "b/note.txt").write_bytes(b"edited\n")
    environ = {ftd.ENV_CACHE: str(tmp_path / "cache")}
    if where == "env":
        environ[ftd.ENV_DATA] = str(root)
    with pytest.raises(ftd.InputError) as err:
        ftd.locate(registry, environ, root if where == "shared" else tmp_path / "none", obtain=_fail_if_called)
    msg = str(err.value)
    assert str(root / "b/note.txt") in msg and _sha(expected["b/note.txt"]) in msg and _sha(b"edited\n") in msg


# ---------------------------------------------------------------------------------------------- the real pip

def _pip_env(monkeypatch, links: Path):
    """pip as configured by environment: no index, archives only from the local folder ``links``."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_real_pip_download_from_the_configured_index(tmp_path, monkeypatch):
    """pip_download runs the real ``pip download --no-deps --only-binary :all:`` of a wheel."""
    wheel = tmp_path / "links" / "standin_testdata-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("standin_testdata/data.txt", b"from the wheel\n")
        z.writestr("standin_testdata-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: standin-testdata\nVersion: 1.0\n")
        z.writestr("standin_testdata-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("standin_testdata-1.0.dist-info/RECORD", "")
    _pip_env(monkeypatch, wheel.parent)
    package = ftd.Package("standin-testdata", "1.0", "wheel", wheel.name, wheel.stat().st_size, _sha(wheel.read_bytes()), "MIT")
    (tmp_path / "dl").mkdir()
    got = ftd.pip_download(package, tmp_path / "dl")
    assert got.parent == tmp_path / "dl" and got.read_bytes() == wheel.read_bytes()


def test_failed_download_names_the_package_and_the_command_to_fetch_by_hand(tmp_path, monkeypatch, standin):
    registry = standin[0]
    (tmp_path / "empty").mkdir()
    _pip_env(monkeypatch, tmp_path / "empty")
    cache = tmp_path / "cache"
    with pytest.raises(ftd.FetchError) as err:
        ftd.locate(registry, {ftd.ENV_CACHE: str(cache)}, tmp_path / "none")
    msg = str(err.value)
    assert "pip download of pkga==1.0 (sdist) failed" in msg
    assert f"python -m pip download --no-deps --no-binary :all: pkga==1.0 -d {cache / 'archives'}" in msg


# ---------------------------------------------------------------------------------------------- the command

def test_check_command_reports_each_missing_or_wrong_file(tmp_path, capsys):
    registry = ftd.load_registry()
    assert ftd.main(["--check", "--dest", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"0 of {len(registry.files)} files valid in {tmp_path}" in out
    first = sorted(registry.files)[0]
    assert f"{tmp_path / first}: expected sha256 {registry.files[first].sha256}, got missing" in out


def test_fetch_command_leaves_a_valid_folder_alone_and_reports_a_failed_download(tmp_path, monkeypatch, capsys, shared_data):
    registry = ftd.load_registry()
    dest = tmp_path / "data"
    for rel in registry.files:  # plain copies: ../shared/data is read-only, its copy must not be
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes((shared_data / rel).read_bytes())
    assert ftd.main(["--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "0 files fetched (0.0 MB)" in out and f"{len(registry.files)} files valid in {dest}" in out
    (dest / "breast-rtstruct" / "rtss.dcm").write_bytes(b"damaged")
    (tmp_path / "empty").mkdir()
    _pip_env(monkeypatch, tmp_path / "empty")  # the index is unreachable
    assert ftd.main(["--dest", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "pip download of dicompyler-core==0.5.6 (sdist) failed" in err
    assert f"python -m pip download --no-deps --no-binary :all: dicompyler-core==0.5.6 -d {dest / 'archives'}" in err
