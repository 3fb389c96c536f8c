"""Helpers shared by the subcommands: output folders that are never overwritten silently."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_out_argument(parser: argparse.ArgumentParser, required: bool = True, help: str = "output folder") -> None:
    """Add ``--out DIR`` and ``--overwrite`` to a subcommand."""
    parser.add_argument("--out", type=Path, required=required, help=help)
    parser.add_argument("--overwrite", action="store_true", help="replace files already in the output folder")


def prepare_out_dir(out: Path, overwrite: bool, will_write: tuple = ()) -> Path:
    """Create ``out``; raise FileExistsError if any of ``will_write`` (names inside ``out``) exists and
    ``overwrite`` is false. With ``will_write`` empty, a non-empty ``out`` is refused instead."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not overwrite and out.is_dir():
        if will_write:
            taken = [n for n in will_write if (out / n).exists()]
            if taken:
                raise FileExistsError(f"{out}: would overwrite {', '.join(taken)}")
        elif any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    return out
