"""Apply tuned thresholds (thresholds.json of `autosegsens tune`) to a cohort of probability maps.

Writes OUT/<case>/segmentation.seg.nrrd on the maps' grid: segment <structure> = voxels where
p >= t(structure). --prob-dir is laid out as for `tune` (maps: P/<case>/prob_<Structure>.nrrd; nnunet:
P/<case>.npz with dataset.json, geometry from the segmentation nnU-Net wrote beside each .npz, or from
--ref-dir). A case or structure with a problem is listed on stderr and the rest goes on. OUT appears (or,
with --overwrite, is replaced as a whole) only when every case is written.

Example:
  autosegsens apply --thresholds tuned/thresholds.json --prob-dir preds --out segs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import check_out_dir, output_folder
from .tune import add_prob_arguments

NAME = "apply"
HELP = "threshold a cohort's probability maps at the tuned thresholds (segmentation.seg.nrrd per case)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--thresholds", type=Path, required=True, help="thresholds.json from `autosegsens tune`")
    add_prob_arguments(parser)
    parser.add_argument("--ref-dir", type=Path, help="nnunet: take each case's geometry from this dataset folder")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..tune import apply_cohort, problem_line, read_thresholds

    out = check_out_dir(args.out, args.overwrite)
    read_thresholds(args.thresholds)  # a bad file fails before anything is written
    with output_folder(out, args.overwrite) as stage:  # OUT appears (or is replaced) only when complete
        written, problems = apply_cohort(args.thresholds, args.prob_dir, stage, fmt=args.format,
                                         dataset_json=args.dataset_json, ref_dir=args.ref_dir)
        for p in problems:
            print(f"note: {problem_line(p)}", file=sys.stderr)
        if not written:
            raise InputError(args.prob_dir, "cases", "at least one case that could be thresholded", got="none")
    print(f"wrote {len(written)} segmentation(s) to {out}")
    return 0
