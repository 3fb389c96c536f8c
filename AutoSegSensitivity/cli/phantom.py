"""Write a synthetic head-and-neck CT phantom dataset (deterministic from a seed).

One folder per case (``case000``, ``case001``, ...) holding ``image.nrrd`` (HU, int16),
``segmentation.seg.nrrd`` (Brain, Parotid_L/R, SpinalCord, Mandible, Lens_L/R, OpticNerve_L/R with
colours) and ``roi.mrk.json`` (a markups ROI around the head); all three load in 3D Slicer. The default
grid is 32 x 128 x 128 voxels (z, y, x) of 1.6 x 1.6 x 3 mm; ``--shape`` alone samples the same field of
view on another grid, ``--spacing`` alone chooses the voxel size, both together fix the grid. Case folders
already in OUT are refused unless ``--overwrite``, which replaces every ``caseNNN`` folder of OUT (an old
dataset's extra cases do not stay beside the new ones); other files in OUT are left alone. The cases
appear in OUT only when all are written. Prints the folders written and each structure's
prominence (fraction of true voxels over the dataset).

Exit codes: 0 done, 2 bad input (one line on stderr).

Example:
  autosegsens phantom --out phantom-data --cases 6 --seed 0
  autosegsens phantom --out tiny --cases 2 --shape 12 64 64
"""

from __future__ import annotations

import argparse
import re
import time

from ..errors import InputError
from .common import add_out_argument, output_folder

NAME = "phantom"
HELP = "write a synthetic head-and-neck CT dataset (image.nrrd, segmentation.seg.nrrd, roi.mrk.json per case)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_out_argument(parser, help="dataset folder to write the case folders into")
    parser.add_argument("--cases", type=int, default=6, help="number of cases (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="grid size in voxels")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="voxel size in mm")


def run(args: argparse.Namespace) -> int:
    from ..io import load_case, scan_dataset
    from ..phantom import case_name, make_phantom_dataset, phantom_grid, prominences

    if args.cases < 1:
        raise InputError("phantom", "--cases", "a positive integer", got=args.cases)
    if args.seed < 0:
        raise InputError("phantom", "--seed", "a non-negative integer", got=args.seed)
    shape, spacing = phantom_grid(args.shape, args.spacing)  # validates before anything is written
    out = args.out
    t0 = time.perf_counter()
    with output_folder(out, args.overwrite, tuple(case_name(n) for n in range(args.cases)),
                       owned=lambda n: re.fullmatch(r"case\d+", n) is not None) as stage:
        staged = make_phantom_dataset(stage, cases=args.cases, seed=args.seed, shape=shape, spacing=spacing)
    folders = [out / f.name for f in staged]
    elapsed = time.perf_counter() - t0
    for folder in folders:
        files = ", ".join(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))
        print(f"wrote {folder}: {files}")
    segs = [load_case(folder)[1] for folder in folders]
    print(f"{len(folders)} cases, grid {list(shape)} (z, y, x) voxels of {[round(s, 4) for s in spacing]} "
          f"(x, y, z) mm, seed {args.seed}, {elapsed:.1f} s")
    print("prominence (fraction of true voxels over the dataset):")
    for name, value in prominences(segs).items():
        print(f"  {name:<14s} {value:.3g}")
    scan = scan_dataset(out)
    for case, reason in scan.problems:
        print(f"warning: {case}: {reason}")
    return 0
