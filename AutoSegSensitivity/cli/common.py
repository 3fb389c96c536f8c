"""Helpers shared by the subcommands: output folders that are never overwritten silently, that appear
only when complete (:func:`output_folder`), and whose path is checked before any work starts."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Callable, Container, Iterator, Optional, Sequence, Union

from ..atomic import clean_stale_temps, describe_os_error, remove_outputs, staged_folder
from ..errors import InputError

Owned = Union[Container[str], Callable[[str], bool]]


def add_out_argument(parser: argparse.ArgumentParser, required: bool = True, help: str = "output folder") -> None:
    """Add ``--out DIR`` and ``--overwrite`` to a subcommand."""
    parser.add_argument("--out", type=Path, required=required, help=help)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this command's earlier outputs in the output folder (all of them)")


def check_out_path(out: Path) -> None:
    """Raise :class:`InputError` (exit code 2) when ``out`` cannot be an output folder: it is an existing
    file, or a file stands where one of its parent folders should be (``--out somefile/sub``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, None, "a folder (or a path for a new one)", got="an existing file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(out, None, "a folder path", got=f"{parent} is a file, not a folder")
            break


def check_out_file(path: Path) -> None:
    """Raise :class:`InputError` (exit code 2) when ``path`` cannot be an output file: it is a folder, or a
    file stands where one of its parent folders should be."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, None, "a file path", got="an existing folder")
    check_out_path(path.parent)


def check_out_dir(out: Path, overwrite: bool, will_write: tuple = ()) -> Path:
    """Check ``out`` (:func:`check_out_path`) and refuse (``FileExistsError``, exit code 2 with a hint
    to use ``--overwrite``) when any of ``will_write`` (names inside ``out``) exists and ``overwrite`` is
    false; with ``will_write`` empty a non-empty ``out`` is refused instead. Creates nothing."""
    out = Path(out)
    check_out_path(out)
    if not overwrite and out.is_dir():
        if will_write:
            taken = [n for n in will_write if (out / n).exists()]
            if taken:
                raise FileExistsError(f"{out}: would overwrite {', '.join(taken)}")
        elif any(not n.name.startswith(".") for n in out.iterdir()):
            raise FileExistsError(f"{out} is not empty")
    return out


def _mkdir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(out, None, "a folder that can be created", got=describe_os_error(exc)) from exc


def prepare_out_dir(out: Path, overwrite: bool, will_write: tuple = (), owned: Optional[Owned] = None) -> Path:
    """Check ``out`` (:func:`check_out_dir`), create it and remove the stale temporaries of killed runs
    in it. With ``overwrite``, the entries ``owned`` names (default ``will_write``) are removed first, so
    a new run never mixes with an old one. For outputs written in place (training, resumable)."""
    out = check_out_dir(out, overwrite, will_write)
    _mkdir(out)
    clean_stale_temps(out)
    if overwrite:
        remove_outputs(out, owned if owned is not None else tuple(will_write))
    return out


@contextlib.contextmanager
def output_folder(out: Path, overwrite: bool, will_write: tuple = (), owned: Optional[Owned] = None,
                  last: Sequence[str] = ()) -> Iterator[Path]:
    """Check ``out`` now (:func:`check_out_dir`) and yield a temporary sibling folder to write into; the
    outputs appear in ``out`` only when the block ends without an error
    (:func:`AutoSegSensitivity.atomic.staged_folder`). With ``overwrite`` every entry ``owned`` names
    (default ``will_write``; with ``will_write`` empty: everything) is replaced. ``last``: the names that
    make the output look complete, moved in last."""
    out = check_out_dir(out, overwrite, will_write)
    _mkdir(out.parent)
    if owned is None:
        owned = tuple(will_write) if will_write else (lambda name: True)
    with staged_folder(out, overwrite=overwrite, owned=owned, last=last) as stage:
        yield stage
