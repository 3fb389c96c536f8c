"""Compare a predicted segmentation with a reference: Dice, Jaccard, volumes, HD, HD95 and MSD per segment.

REF and PRED are Slicer segmentation files (.seg.nrrd) or label volumes (.nrrd, .nii, .nii.gz). A label
volume's segments are named by --names (a JSON file {"value": "name"}, like labels.json of the shared
abdomen data); without --names every non-zero label value is a segment named by its number. Segments
are paired by name (reference order) unless --pair REF_NAME=PRED_NAME is given (repeatable).

Writes one CSV row per pair with the columns segment, pred_segment, dice, jaccard, volume_ref_ml,
volume_pred_ml, volume_diff_ml (pred - ref), relative_volume_diff, sensitivity, precision,
com_distance_mm, hd_mm, hd95_mm, msd_mm (distances in mm, with the MONAI surface conventions; a segment
empty on one side gives distances "inf"), nsd_<tau>mm (surface Dice at tolerance --nsd-tolerance, default
2 mm: e.g. nsd_2mm). Without --out the table goes to stdout.

Both files must share one grid unless --resample is given (the prediction is then resampled, nearest
neighbour, onto the reference grid).

Example:
  autosegsens compare case01/segmentation.seg.nrrd pred01.seg.nrrd --out compare.csv
  autosegsens compare labels.nii.gz pred_labels.nii.gz --names labels.json --pair liver=liver --out t.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import InputError
from ..metrics import DEFAULT_NSD_TOLERANCE_MM, nsd_column

NAME = "compare"
HELP = "compare a predicted segmentation with a reference (Dice, volumes, HD, HD95, MSD, NSD per segment)"

COLUMNS = ("segment", "pred_segment", "dice", "jaccard", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml",
           "relative_volume_diff", "sensitivity", "precision", "com_distance_mm", "hd_mm", "hd95_mm", "msd_mm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", type=Path, help="reference: .seg.nrrd or label volume")
    parser.add_argument("pred", type=Path, help="prediction: .seg.nrrd or label volume")
    parser.add_argument("--names", type=Path, help="JSON {label value: name} for label volumes")
    parser.add_argument("--pair", action="append", default=[], metavar="REF_NAME=PRED_NAME",
                        help="compare these two segments (repeatable); default: pair by equal names")
    parser.add_argument("--resample", action="store_true",
                        help="resample the prediction (nearest) onto the reference grid if grids differ")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help="tolerance of the surface Dice in mm (column nsd_<MM>mm; default %(default)s)")
    parser.add_argument("--out", type=Path, help="CSV file to write (default: print to stdout)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def load_names(path: Optional[Path]):
    """The ``--names`` table as given (a path that ``io.read_label_segmentation`` reads), or None."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def read_any_segmentation(path: Path, names):
    """A Segmentation from a .seg.nrrd file or a label volume (named by ``names``, a ``{value: name}`` dict
    or a JSON file, or else by label value)."""
    from ..segmentation import Segmentation

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.name.lower().endswith(".seg.nrrd"):
        from ..io import read_segmentation

        return read_segmentation(path)
    if names is not None:
        from ..io import read_label_segmentation

        return read_label_segmentation(path, names)
    from ..io import read_volume

    vol = read_volume(path)
    arr = np.asarray(vol.array)
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError(path, "voxel values", "integer labels (a label volume)", got=arr.dtype)
    values = [int(v) for v in np.unique(arr) if v != 0]
    return Segmentation.from_labels(vol, {v: str(v) for v in values})


def parse_pairs(items: List[str]) -> Optional[List[tuple]]:
    if not items:
        return None
    pairs = []
    for item in items:
        if "=" not in item:
            raise InputError("--pair", "value", "REF_NAME=PRED_NAME", got=repr(item))
        a, b = item.split("=", 1)
        pairs.append((a.strip(), b.strip()))
    return pairs


def run(args: argparse.Namespace) -> int:
    from ..metrics import compare_segmentations, mean_finite
    from ..report import write_csv

    if args.out is not None:
        from .common import check_out_file

        check_out_file(args.out)
    if args.out is not None and Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} exists")
    names = load_names(args.names)
    ref = read_any_segmentation(args.ref, names)
    pred = read_any_segmentation(args.pred, names)
    rows = compare_segmentations(ref, pred, pairs=parse_pairs(args.pair), resample=args.resample,
                                 nsd_tolerance_mm=args.nsd_tolerance)
    nsd_key = nsd_column(args.nsd_tolerance)
    columns = COLUMNS + (nsd_key,)
    parts = []
    for key in ("dice", nsd_key, "hd_mm", "hd95_mm", "msd_mm"):
        mean, n_ok, n_inf = mean_finite(float(r[key]) for r in rows)
        parts.append(f"{key} {mean:.4g}" + (f" ({n_inf} inf left out)" if n_inf else ""))
    print(f"mean over {len(rows)} pair(s): " + ", ".join(parts), file=sys.stderr)
    if args.out is not None:
        write_csv(rows, args.out, columns=columns)
        print(f"compared {len(rows)} segment pair(s): {args.out}", file=sys.stderr)
    else:
        import csv

        from ..report import _cell

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c, "")) for c in columns])
    return 0
