"""Atomic outputs: a file or a folder appears under its final name only when it is complete.

* Files: :func:`atomic_path` (and :func:`write_bytes`, :func:`write_text`, :func:`write_with`) write to a
  temporary file in the same folder, ``fsync`` it, rename it over the target and ``fsync`` the folder. A
  reader never sees a half-written file, and a crash (even ``kill -9`` or a power cut) never destroys the
  previous version.
* Folders: :func:`staged_folder` gives a command a temporary sibling folder to write its outputs into and
  moves them under the final names only when the command has finished (``overwrite``: the old outputs are
  replaced as a whole, never merged with the new ones).
* A writer that fails without an ``OSError`` (``torch.save``: ``[enforce fail at inline_container.cc]
  unexpected pos``; SimpleITK: a 15-line ITK dump naming the temporary file) is probed: when the file can
  no longer be written the failure becomes the ``OSError`` the system reported (``ENOSPC``, ``EROFS``, ...)
  naming the target file, so the command line prints one line.
* Temporary names carry the writer's process id and host (``.<name>.<random>.<pid>-<host>.tmp<suffix>``):
  :func:`clean_stale_temps` removes those whose process is gone (e.g. killed), and leaves alone those of
  processes still running (concurrent shards writing into the same folder).
* :func:`fault_point` is a test hook: the environment variable ``AUTOSEGSENS_FAULT`` names points at which
  the process kills itself, signals itself or fails with an ``OSError`` (see :func:`fault_point`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable, Container, Dict, Iterator, List, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

FAULT_ENV = "AUTOSEGSENS_FAULT"
# Temporary files and folders of other hosts are removed only when older than this (seconds): their
# process cannot be checked from here.
FOREIGN_TEMP_AGE_S = 24 * 3600.0
_STARTED = time.time()
_HOST = f"{zlib.crc32(socket.gethostname().encode('utf-8', 'replace')) & 0xFFFF:04x}"
_TEMP_RE = re.compile(r"^\.(?P<base>.+?)\.(?P<rand>[a-z0-9_]{8})(?:\.(?P<pid>\d+)-(?P<host>[0-9a-f]{4}))?"
                      r"\.tmp(?P<suffix>(?:\.[^./]+)*)$")
_FAULT_COUNTS: Dict[str, int] = {}
_FAULT_ERRNOS = {"enospc": errno_mod.ENOSPC, "eacces": errno_mod.EACCES, "erofs": errno_mod.EROFS,
                 "enotdir": errno_mod.ENOTDIR, "eio": errno_mod.EIO}


# --------------------------------------------------------------------------------------------------------
# test hook
# --------------------------------------------------------------------------------------------------------


def fault_point(point: str, path: Optional[PathLike] = None) -> Optional[str]:
    """Test hook: act when ``AUTOSEGSENS_FAULT`` names ``point``; a no-op otherwise.

    ``AUTOSEGSENS_FAULT`` is a comma-separated list of ``POINT:ACTION[:N]``: at the ``N``-th time (default
    1; ``N+``: from the ``N``-th time on) this process reaches ``POINT``, do ``ACTION``: ``kill``
    (``SIGKILL`` to itself), ``term`` / ``int`` (``SIGTERM`` / ``SIGINT`` to itself, handled as a signal
    from outside), ``enospc`` / ``eacces`` / ``erofs`` / ``enotdir`` / ``eio`` (raise that ``OSError``
    naming ``path``). Any other action is returned for the caller to carry out (``full`` at
    ``atomic.write``: the writer's file is ``/dev/full``, so the real writer fails as on a full disk).

    Points: ``atomic.write`` (a file is about to be written; path = target), ``atomic.replace`` (the
    temporary file is complete, before the rename), ``commit`` (before each rename that moves a staged
    folder's outputs into place), ``train.epoch`` (training starts an epoch; epoch 0 is saved by then),
    ``train.cancel`` (training handles a cancel request), ``cli.start`` (the command line starts, before
    the subcommands' modules load).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    count = _FAULT_COUNTS[point] = _FAULT_COUNTS.get(point, 0) + 1
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) < 2 or parts[0] != point:
            continue
        when = parts[2] if len(parts) > 2 else "1"
        hit = count >= int(when[:-1]) if when.endswith("+") else count == int(when)
        if not hit:
            continue
        action = parts[1]
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(5)  # pragma: no cover - the signal is delivered before this returns
        if action in ("term", "int"):
            os.kill(os.getpid(), signal.SIGTERM if action == "term" else signal.SIGINT)
            return None
        if action in _FAULT_ERRNOS:
            code = _FAULT_ERRNOS[action]
            raise OSError(code, os.strerror(code), str(path) if path is not None else point)
        return action
    return None


# --------------------------------------------------------------------------------------------------------
# temporary names
# --------------------------------------------------------------------------------------------------------


def _owner_tag() -> str:
    return f"{os.getpid()}-{_HOST}"


def is_temp_name(name: str) -> bool:
    """True for the names of this module's temporary files and folders (and of earlier versions')."""
    return _TEMP_RE.match(name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def is_stale_temp(path: PathLike) -> bool:
    """True when ``path`` is one of our temporary files or folders whose writer is gone.

    Names without a process id (written by earlier versions) are stale. On this host a process id that
    no longer runs, or this very process when the file is older than it, is stale; temporaries of other
    hosts are stale only after :data:`FOREIGN_TEMP_AGE_S`."""
    path = Path(path)
    m = _TEMP_RE.match(path.name)
    if m is None:
        return False
    if m.group("pid") is None:
        return True
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return False
    if m.group("host") != _HOST:
        return time.time() - mtime > FOREIGN_TEMP_AGE_S
    pid = int(m.group("pid"))
    if pid == os.getpid():
        return mtime < _STARTED - 1.0
    return not _pid_alive(pid)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):  # gone already, or not ours to remove: left alone
            path.unlink()


def clean_stale_temps(folder: PathLike, recursive: bool = True) -> List[Path]:
    """Remove the stale temporaries (:func:`is_stale_temp`) inside ``folder`` (and its sub-folders when
    ``recursive``) and the stale temporary siblings of ``folder`` itself (a killed command's staging
    folder ``.<folder name>.<random>...tmp``). Only names of our own pattern are touched. Returns the
    paths removed; a folder that does not exist is no error."""
    folder = Path(folder)
    removed: List[Path] = []
    with contextlib.suppress(OSError):
        for sib in folder.parent.iterdir():
            m = _TEMP_RE.match(sib.name)
            if m is not None and m.group("base") == folder.name and is_stale_temp(sib):
                _remove(sib)
                removed.append(sib)
    if not folder.is_dir():
        return removed
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        for entry in entries:
            p = Path(entry.path)
            if is_temp_name(entry.name):
                if is_stale_temp(p):
                    _remove(p)
                    removed.append(p)
            elif recursive and entry.is_dir(follow_symlinks=False):
                stack.append(p)
    return removed


# --------------------------------------------------------------------------------------------------------
# durability
# --------------------------------------------------------------------------------------------------------


def fsync_path(path: PathLike) -> None:
    """``fsync`` a file or a folder (a folder: its entries, i.e. renames into it, reach the disk). A no-op
    where folders cannot be opened (Windows)."""
    if os.name != "posix":
        return
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno_mod.EINVAL, errno_mod.ENOTSUP, errno_mod.EBADF):  # no fsync there
            raise
    finally:
        os.close(fd)


def _with_path(exc: OSError, path: PathLike) -> OSError:
    """The same error (same class, errno and reason) naming ``path`` instead of a temporary name."""
    if exc.errno is None:
        return exc
    new = OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    new.__cause__ = exc
    return new


def _write_failure_errno(tmp: Path) -> Optional[int]:
    """After a writer failed with a non-OSError (``torch.save``, ITK): the errno that writing to ``tmp``
    gives now (no space, read-only file system, ...), or ``None`` when writing works."""
    try:
        with open(tmp, "ab") as fh:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.errno
    with contextlib.suppress(OSError):
        st = os.statvfs(tmp.parent)
        if st.f_bavail == 0:
            return errno_mod.ENOSPC
    return None


def describe_os_error(exc: OSError) -> str:
    """``PATH: reason`` in words (``out/last.pt: no space left on device``) for a one-line message."""
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    reason = reason[:1].lower() + reason[1:] if reason else "operating system error"
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


# --------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------


def _full_suffix(name: str) -> str:
    dot = name.find(".")
    return name[dot:] if dot > 0 else ""


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success ``fsync`` it and rename it onto ``target``.

    ``suffix`` defaults to the target's full suffix (``.seg.nrrd``, ``.nii.gz``) so that writers that
    choose their format from the file name (SimpleITK, slicerio) still do the right thing.
    On any exception the temporary file is removed and the target is left untouched; a writer's failure
    that is really the file system's (full, read-only) is raised as that ``OSError`` naming ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = _full_suffix(target.name)
    action = fault_point("atomic.write", target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{_owner_tag()}.tmp{suffix}",
                                   dir=target.parent)
    except OSError as exc:
        raise _with_path(exc, target) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    if action == "full":
        tmp_path.unlink()
        tmp_path.symlink_to("/dev/full")
    try:
        try:
            yield tmp_path
        except OSError as exc:
            raise _with_path(exc, target) from exc
        except RuntimeError as exc:
            code = _write_failure_errno(tmp_path)
            if code is None:
                raise
            raise OSError(code, os.strerror(code), str(target)) from exc
        fault_point("atomic.replace", target)
        try:
            fsync_path(tmp_path)
            # mkstemp creates files readable by the owner only; give the result the usual umask permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, target)
            fsync_path(target.parent)
        except OSError as exc:
            raise _with_path(exc, target) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def write_bytes(target: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the target path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``target`` atomically and return the target path."""
    return write_bytes(target, text.encode(encoding))


def write_with(target: PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


# --------------------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------------------


def temp_sibling(path: PathLike, create: bool = True) -> Path:
    """A new temporary folder beside ``path`` (``.<name>.<random>.<pid>-<host>.tmp``), created unless
    ``create`` is false (then only the name is reserved by being unique)."""
    path = Path(path)
    made = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=f".{_owner_tag()}.tmp", dir=path.parent))
    if not create:
        made.rmdir()
    else:  # mkdtemp makes owner-only folders; the output gets the usual umask permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(made, 0o777 & ~umask)
    return made


def remove_outputs(folder: PathLike, names: Union[Container[str], Callable[[str], bool]]) -> List[str]:
    """Remove the entries of ``folder`` whose names are in ``names`` (or for which ``names(name)`` is
    true): first all moved into one temporary folder (so a kill leaves none of them half-deleted under
    its own name), then that folder deleted. Returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned = names if callable(names) else (lambda n: n in names)  # type: ignore[operator]
    gone = sorted(p.name for p in folder.iterdir() if not is_temp_name(p.name) and owned(p.name))
    if not gone:
        return []
    trash = temp_sibling(folder / "removed")
    for name in gone:
        fault_point("commit", folder / name)
        os.rename(folder / name, trash / name)
    fsync_path(folder)
    shutil.rmtree(trash, ignore_errors=True)
    return gone


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or the
    file system cannot (then the caller renames twice)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def _commit(staging: Path, out: Path, owned: Callable[[str], bool], overwrite: bool, last: Sequence[str]) -> None:
    """Move the finished outputs in ``staging`` to ``out`` (see :func:`staged_folder`)."""
    if not out.exists():
        fault_point("commit", out)
        os.rename(staging, out)
        fsync_path(out.parent)
        return
    new_names = sorted(p.name for p in staging.iterdir())
    existing = [p for p in out.iterdir() if not is_temp_name(p.name)]
    replaced = [p for p in existing if p.name in new_names or (overwrite and owned(p.name))]
    foreign = [p for p in existing if p not in replaced]
    swappable = staging.parent == out.parent and not out.is_symlink() and not os.path.ismount(out)
    if not foreign and swappable:
        # The folder holds only what is replaced: swap the folders (out is absent for an instant, never
        # a mixture of old and new).
        fault_point("commit", out)
        if _exchange(staging, out):  # one atomic step: out is old, then new (staging now holds the old)
            fsync_path(out.parent)
            shutil.rmtree(staging, ignore_errors=True)
            return
        trash = temp_sibling(out, create=False)
        os.rename(out, trash)
        try:
            fault_point("commit", out)
            os.rename(staging, out)
        except BaseException:
            if not out.exists():
                with contextlib.suppress(OSError):
                    os.rename(trash, out)
            raise
        fsync_path(out.parent)
        shutil.rmtree(trash, ignore_errors=True)
        return
    # Other files live in the folder: replace our entries one by one, the defining ones (``last``) last.
    remove_outputs(out, {p.name for p in replaced})
    order = sorted(new_names, key=lambda n: (n in last, last.index(n) if n in last else 0, n))
    for name in order:
        fault_point("commit", out / name)
        os.rename(staging / name, out / name)
    fsync_path(out)
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(out: PathLike, overwrite: bool = False,
                  owned: Union[Container[str], Callable[[str], bool]] = (),
                  last: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``out`` to write a command's outputs into; when the block ends
    without an exception, move them into ``out``. On an exception (or a kill) ``out`` is left as it was
    and the temporary folder is removed (after a kill: by the next :func:`clean_stale_temps`, which this
    calls on ``out`` first).

    ``out`` absent: the staging folder is renamed to ``out`` (one atomic step). ``out`` present: entries of
    the same names are replaced and, with ``overwrite``, every entry for which ``owned`` holds (a name in
    a container, or a predicate) is removed, so old and new outputs never mix; when nothing else is in
    ``out`` the two folders are swapped, otherwise the entries are moved one by one with those named in
    ``last`` (the files that make the output look complete, e.g. ``thresholds.json``) moved last.
    """
    out = Path(out)
    owned_fn = owned if callable(owned) else (lambda n: n in owned)  # type: ignore[operator]
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    try:
        staging = temp_sibling(out)
    except PermissionError:
        if not out.is_dir():
            raise
        staging = temp_sibling(out / "staging")  # a folder we may write in, in a parent we may not
    try:
        yield staging
        _commit(staging, out, owned_fn, overwrite, list(last))
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        renamed = _in_place_of(exc, staging, out)
        if renamed is exc:
            raise
        raise renamed from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _in_place_of(exc: OSError, staging: Path, out: Path) -> OSError:
    """``exc`` naming the final path (under ``out``) of a file it names under ``staging``."""
    name = exc.filename if isinstance(exc.filename, str) else None
    if exc.errno is None or name is None or not (name == str(staging) or name.startswith(str(staging) + os.sep)):
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(out) + name[len(str(staging)):])
