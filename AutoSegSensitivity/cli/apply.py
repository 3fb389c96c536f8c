"""Apply tuned thresholds (thresholds.json of `autosegsens tune`) to a cohort of probability maps.

Writes OUT/<case>/segmentation.seg.nrrd on the maps' grid: segment <structure> = voxels where
p >= t(structure). --prob-dir is laid out as for `tune` (maps: P/<case>/prob_<Structure>.nrrd; channels:
one multi-channel image per case, its grid in the file; nnunet: P/<case>.npz with dataset.json, geometry
from the segmentation nnU-Net wrote beside each .npz, or from --ref-dir: a dataset folder or nnU-Net's
label folder, no image needed). A case or structure with a problem is listed on stderr and the rest goes on.
A map on a grid offset by whole voxels (a cropped map) is accepted: its segmentation is written on the map's
own grid (with its origin, so it lies where the map lies), which is the same as thresholding the map
zero-padded to the full grid, since p = 0 is below every threshold t > 0.
A maps folder written by `predict --data` is checked as `tune` checks it: unfinished cases (no finished
prediction.json) or cases made by different models stop apply (exit 2, one line) before --out is made;
--allow-incomplete goes on without the unfinished ones, listing them.
OUT appears (or, with --overwrite, is replaced as a whole) only when every case is written.

With --calibrated (a thresholds.json of `tune --calibration`, which holds a temperature T per structure)
also OUT/<case>/prob_<structure>.nrrd calibrated, p' = sigmoid(logit(p) / T), and
OUT/thresholds_calibrated.json with t' = sigmoid(logit(t) / T) for them; the segmentation is the same
(p >= t is p' >= t').

Example:
  autosegsens apply --thresholds tuned/thresholds.json --prob-dir preds --out segs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import check_out_dir, output_folder
from .tune import add_prob_arguments, add_ref_format_argument

NAME = "apply"
HELP = "threshold a cohort's probability maps at the tuned thresholds (segmentation.seg.nrrd per case)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thresholds", type=Path, required=True, help="thresholds.json from `autosegsens tune`")
    add_prob_arguments(parser)
    parser.add_argument("--ref-dir", type=Path,
                        help="nnunet: take each case's grid from these references (dataset or nnU-Net label folder)")
    add_ref_format_argument(parser)
    parser.add_argument("--calibrated", action="store_true",
                        help="also write the maps calibrated with the file's temperatures (tune --calibration)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="as tune: go on without the cases whose prediction (by `predict --data`) did not "
                             "finish, listing them, instead of stopping")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..tune import apply_cohort, check_apply_folder, problem_line, read_thresholds, temperatures_for

    out = check_out_dir(args.out, args.overwrite)
    table = read_thresholds(args.thresholds)  # a bad file fails before anything is written
    if args.calibrated:
        temperatures_for(args.thresholds, list(table))
    check_apply_folder(args.prob_dir, args.format, args.allow_incomplete, [])  # tune's check, before --out exists
    with output_folder(out, args.overwrite) as stage:  # OUT appears (or is replaced) only when complete
        written, problems = apply_cohort(args.thresholds, args.prob_dir, stage, fmt=args.format,
                                         dataset_json=args.dataset_json, ref_dir=args.ref_dir,
                                         ref_format=args.ref_format, calibrated=args.calibrated,
                                         allow_incomplete=args.allow_incomplete)
        if not written:  # one note per structure (not per case and structure), then the error
            for line in _collapsed_notes(problems):
                print(f"note: {line}", file=sys.stderr)
            held = _structures_held(args.prob_dir)
            raise InputError(args.prob_dir, "cases", "at least one case that could be thresholded",
                             got=f"none (none of {args.thresholds}'s structures {sorted(table)} could be applied"
                                 + (f"; the maps hold {', '.join(held)})" if held else ")"))
        for p in problems:
            print(f"note: {problem_line(p)}", file=sys.stderr)
    print(f"wrote {len(written)} segmentation(s) to {out}")
    return 0


def _collapsed_notes(problems: list) -> list:
    """One line per structure (and one for the case-wide problems): how many cases, the first reason."""
    from ..tune import problem_line

    groups: dict = {}
    for p in problems:
        groups.setdefault(p[1], []).append(p)
    lines = []
    for structure, items in groups.items():
        cases = sorted({c for c, _, _ in items if c})
        more = f" (and {len(items) - 1} more like it: {len(cases)} case(s))" if len(items) > 1 else ""
        lines.append(f"{problem_line(items[0])}{more}")
    return lines


def _structures_held(prob_dir: Path) -> list:
    """The structures of the ``prob_*`` maps in the case folders of a maps folder (``[]`` for other layouts)."""
    from ..tune import _maps_in

    held: set = set()
    if Path(prob_dir).is_dir():
        for folder in Path(prob_dir).iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                held.update(_maps_in(folder))
    return sorted(held)
