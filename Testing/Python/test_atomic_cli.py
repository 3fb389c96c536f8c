"""Atomic writes and the command-line dispatcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from AutoSegSensitivity import atomic
from AutoSegSensitivity.cli import SUBCOMMANDS, build_parser, main
from AutoSegSensitivity.cli.common import prepare_out_dir


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.csv"
    atomic.write_text(target, "a\n")
    atomic.write_text(target, "b\n")
    assert target.read_text() == "b\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_atomic_write_gives_umask_permissions(tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        target = atomic.write_text(tmp_path / "roi.mrk.json", "{}")
    finally:
        os.umask(umask)
    assert (target.stat().st_mode & 0o777) == 0o644


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "seg.seg.nrrd"
    target.write_text("old")

    def broken(tmp: Path) -> None:
        assert tmp.name.endswith(".seg.nrrd"), "writers choose their format from the suffix"
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_with(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.seg.nrrd"]


def test_prepare_out_dir_never_overwrites_silently(tmp_path: Path) -> None:
    out = prepare_out_dir(tmp_path / "out", overwrite=False)
    (out / "sweep.csv").write_text("x")
    with pytest.raises(FileExistsError, match="sweep.csv"):
        prepare_out_dir(out, overwrite=False, will_write=("sweep.csv",))
    with pytest.raises(FileExistsError, match="not empty"):
        prepare_out_dir(out, overwrite=False)
    assert prepare_out_dir(out, overwrite=True) == out
    assert prepare_out_dir(out, overwrite=False, will_write=("other.csv",)) == out


def test_every_subcommand_is_present_with_an_example_in_help() -> None:
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    names = set(actions[0].choices)
    assert names == set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        text = actions[0].choices[name].format_help()
        assert "xample" in text, f"`autosegsens {name} --help` shows no example"


def test_no_command_is_usage_error(capsys) -> None:
    assert main([]) == 2


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "AutoSegSensitivity", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "autosegsens" in out.stdout
