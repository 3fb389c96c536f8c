"""Predict probability maps for one CT with a trained checkpoint.

Writes OUT/prob_<structure>.nrrd (float32 probabilities on the input grid, never thresholded). With
--threshold T (one threshold for all structures) or --tuned (the thresholds stored in the checkpoint by
threshold tuning) or --thresholds FILE (a thresholds.json from `autosegsens tune`, one threshold per
structure) also OUT/segmentation.seg.nrrd. The image is a volume file (.nrrd, .nii.gz, ...) or a
folder holding one DICOM CT series.

Example:
  autosegsens predict --model runs/quick/best.pt --image phantom-data/case000/image.nrrd \\
      --out pred/case000 --threshold 0.5
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .common import add_out_argument, prepare_out_dir

NAME = "predict"
HELP = "probability maps (and optionally a thresholded segmentation) from a checkpoint"


def safe_name(name: str) -> str:
    """A structure name made safe for a file name (characters other than letters, digits, ``._-`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "structure"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (best.pt or last.pt)")
    parser.add_argument("--image", type=Path, required=True, help="CT volume file or DICOM series folder (HU)")
    add_out_argument(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, default=None, help="write segmentation.seg.nrrd at this threshold")
    group.add_argument("--tuned", action="store_true", help="write segmentation.seg.nrrd at the checkpoint's tuned thresholds")
    group.add_argument("--thresholds", type=Path, default=None,
                       help="write segmentation.seg.nrrd at the thresholds of this thresholds.json (autosegsens tune)")
    parser.add_argument("--format", choices=("nrrd", "nii.gz"), default="nrrd", help="probability map file format")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="slices (2D) or windows (3D) per pass")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..inference import load_checkpoint, predict_volume, threshold_maps
    from ..io import read_dicom_series, read_volume, write_segmentation, write_volume

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError("--threshold", None, "a number in [0, 1]", got=args.threshold)
    model = load_checkpoint(args.model, device=args.device)
    if args.tuned and not model.thresholds_tuned:
        raise InputError(args.model, "thresholds", "tuned thresholds (run threshold tuning first, or use --threshold)",
                         got="only the 0.5 default")
    names = [f"prob_{safe_name(n)}.{args.format}" for n in model.class_names]
    seg_name = "segmentation.seg.nrrd"
    want_seg = args.threshold is not None or args.tuned or args.thresholds is not None
    if args.thresholds is not None:
        from ..tune import thresholds_for

        per_structure = thresholds_for(args.thresholds, model.class_names)
    prepare_out_dir(args.out, args.overwrite, will_write=tuple(names) + ((seg_name,) if want_seg else ()))
    if not args.image.exists():
        raise InputError(args.image, None, "an existing image file or DICOM folder", got="no such file")
    volume = read_dicom_series(args.image).volume if args.image.is_dir() else read_volume(args.image)
    probs = predict_volume(model, volume, batch_size=args.batch_size)
    for (name, vol), fname in zip(probs.items(), names):
        write_volume(vol, args.out / fname)
    if want_seg:
        chosen = (per_structure if args.thresholds is not None else model.thresholds if args.tuned
                  else float(args.threshold))
        seg = threshold_maps(probs, chosen)
        write_segmentation(seg, args.out / seg_name)
    print(f"wrote {len(names)} probability map(s){' and ' + seg_name if want_seg else ''} to {args.out}",
          file=sys.stdout)
    return 0
