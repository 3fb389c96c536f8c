"""Rebuild the HTML report of a study folder from its CSV/JSON tables.

Reads DIR/study.json (settings, data, case roles, models, versions),
DIR/sweeps/<loss>/<structure>/<validation|test>/sweep.csv, sweep_per_case.csv and test/counts_per_case.csv,
and DIR/volume_bias.csv, recomputes every number and figure from them (thresholds chosen on the validation
tables, values read from the test tables, seeded bootstrap intervals), and writes one
self-contained HTML page (images inlined as base64 PNG, no external references). --out defaults to
DIR/report.html; an existing file is refused unless --overwrite.

Exit codes: 0 done, 2 bad input (not a study folder, unreadable tables), 1 failed.

Example:
  autosegsens report --study demo-output --out demo-output/report-again.html
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError

NAME = "report"
HELP = "rebuild the self-contained HTML report of a study folder from its CSV/JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", type=Path, required=True, help="study folder (written by 'autosegsens demo')")
    parser.add_argument("--out", type=Path, help="HTML file to write (default STUDY/report.html)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing HTML file")


def run(args: argparse.Namespace) -> int:
    from .common import check_out_file
    from ..html_report import write_report

    if not args.study.is_dir():
        raise InputError(args.study, None, "a study folder", got="no such folder")
    out = args.out if args.out is not None else args.study / "report.html"
    check_out_file(out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists")
    if out.exists() and out.is_dir():
        raise InputError(out, None, "an HTML file path", got="a folder")
    path = write_report(args.study, out)
    print(f"wrote {path}")
    return 0
