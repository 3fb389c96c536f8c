"""Review a cohort's thresholds in the browser: Slicer's slice and 3D views of each case (trame-slicer), the
reference contour as an outline and the thresholded segmentation filled, a threshold slider (the
AutoSegThreshold module's code), Dice and NSD per case at 0.5 and at the tuned threshold (a sortable table,
worst first), Dice/NSD vs threshold for the case and the cohort, and "use this threshold for <structure>",
which writes thresholds.json (the format 'tune' writes and 'apply' / 'predict --thresholds' read) with the
threshold marked as set by hand.

Input: a study folder written by 'autosegsens demo' (--study; thresholds file <study>/thresholds-<loss>.json,
initially the thresholds the study chose on its validation cases), or the folders 'tune' reads (--prob-dir
with <case>/prob_<S>.nrrd or nnU-Net's .npz, --ref-dir with the reference cases; --thresholds: the
thresholds.json to start from and to save into, default <prob-dir>/thresholds.json; without one the
tuned threshold is the cohort's pooled-Dice optimum). A case's volumes are read only when it is opened;
the table is computed once in the background with progress on the page.

Binds to 127.0.0.1 (this machine only) unless --host says otherwise. Needs the optional extra:
pip install "AutoSegSensitivity[review]". Rendering needs a display (on a server without one: xvfb-run).

Exit codes: 0 stopped with Ctrl-C, 2 bad input (one line on stderr: not a cohort, port in use, extra missing).

Example:
  autosegsens review --study demo-output
  autosegsens review --prob-dir preds --ref-dir data --thresholds tuned/thresholds.json --port 8090
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError

NAME = "review"
HELP = "review a cohort's thresholds in the browser (Slicer's views via trame-slicer; optional extra [review])"
DEFAULT_PORT = 8080


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", type=Path, help="a study folder written by 'autosegsens demo'")
    parser.add_argument("--loss", help="with --study: the loss whose predictions to review (default the first)")
    parser.add_argument("--prob-dir", type=Path, help="probability maps (<case>/prob_<S>.nrrd, or nnU-Net .npz)")
    parser.add_argument("--ref-dir", type=Path, help="dataset folder of the reference cases")
    parser.add_argument("--thresholds", type=Path,
                        help="thresholds.json read at start and written by 'use this threshold' "
                        "(default <prob-dir>/thresholds.json, or <study>/thresholds-<loss>.json)")
    parser.add_argument("--format", default="auto", choices=("auto", "maps", "nnunet"), help="--prob-dir layout")
    parser.add_argument("--dataset-json", type=Path, help="nnU-Net dataset.json (default <prob-dir>/dataset.json)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")


def run(args: argparse.Namespace) -> int:
    from ..web.server import check_port, missing_review_extra

    if args.study is None and (args.prob_dir is None or args.ref_dir is None):
        raise InputError("review", "input", "--study DIR, or --prob-dir P and --ref-dir R", got="neither")
    if args.study is not None and (args.prob_dir is not None or args.ref_dir is not None):
        raise InputError("review", "input", "either --study or --prob-dir/--ref-dir", got="both")
    missing = missing_review_extra()
    if missing:
        raise InputError("review", "dependencies", "trame-slicer", got=missing)
    from ..web.cohort import open_folders, open_study

    if args.study is not None:
        cohort = open_study(args.study, args.loss, args.thresholds)
    else:
        cohort = open_folders(args.prob_dir, args.ref_dir, args.thresholds, args.format, args.dataset_json)
    check_port(args.host, args.port)
    print(f"cohort: {cohort.label}: {len(cohort.cases)} cases, structures {', '.join(cohort.structures)}")
    for p in cohort.problems:
        print(f"  problem: {p}")
    print(f"thresholds file: {cohort.thresholds_path}")
    from ..web.app import ReviewApp
    from ..web.server import serve

    app = ReviewApp(cohort)
    try:
        serve(app, args.host, args.port)
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    print("review: stopped.")
    return 0
