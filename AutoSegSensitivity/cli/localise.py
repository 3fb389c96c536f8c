"""Localise an organ in a CT image, then (optionally) segment it in the crop.

The box comes either from a localisation model (a checkpoint trained on low-resolution copies of a
dataset, see `AutoSegSensitivity.localisation.make_lowres_dataset`; the largest connected component of its
thresholded output) or from a markups ROI drawn by the user (`--roi`, a Slicer .mrk.json; an ROI partly
outside the image is clipped with a warning, one wholly outside is an error).

Writes, in --out:
  roi.mrk.json             the organ box (without padding) as a markups ROI, to inspect or adjust in
                           Slicer and feed back with --roi
  prob_<structure>.nrrd    with --organ-model: the organ model's probability map on the crop (box plus
                           --padding voxels per side, air-padded past the image edge) pasted into a
                           full-size map on the image grid, zeros outside the crop
  localisation.json        box, crop box (voxels, z y x), found, message

If the localiser finds no voxel above --threshold, the command says "organ not found", writes
localisation.json (found: false) and exits with code 1.

Example:
  autosegsens localise --image case01/image.nrrd --model runs/localiser/best.pt \\
      --organ-model runs/parotid/best.pt --structure Parotid_L --padding 15 --out out/case01
  autosegsens localise --image case01/image.nrrd --roi case01/roi.mrk.json \\
      --organ-model runs/parotid/best.pt --structure Parotid_L --out out/case01_roi
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .common import add_out_argument, check_out_dir, output_folder

NAME = "localise"
HELP = "find an organ's box (localisation model or ROI), segment the crop, paste it back"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", type=Path, required=True, help="CT image (.nrrd, .nii, .nii.gz)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="localisation model checkpoint (trained on low-resolution copies)")
    src.add_argument("--roi", type=Path, help="markups ROI (.mrk.json) that gives the box instead of a model")
    parser.add_argument("--organ-model", type=Path, help="organ model checkpoint (trained on padded crops)")
    parser.add_argument("--structure", help="class name to take from the models' outputs "
                        "(needed when a model has several classes)")
    parser.add_argument("--padding", type=int, default=15, help="voxels added on each side of the box (default 15)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="threshold on the localiser's probability map (default 0.5)")
    parser.add_argument("--factors", type=float, nargs=3, default=(3.0, 2.0, 2.0), metavar=("Z", "Y", "X"),
                        help="low-resolution divisors the localiser was trained with (default 3 2 2)")
    parser.add_argument("--pad-value", type=float, default=-1000.0,
                        help="image value past the image edge (default -1000 HU, air)")
    parser.add_argument("--device", default="cpu", help="torch device for the models (default cpu)")
    add_out_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io import read_roi, read_volume, write_roi, write_volume
    from ..localisation import LocalisationWarning, two_stage_predict

    if args.padding < 0:
        raise InputError("--padding", None, "a non-negative number of voxels", got=args.padding)
    if not 0.0 <= args.threshold <= 1.0:
        raise InputError("--threshold", None, "a number in [0, 1]", got=args.threshold)
    image = read_volume(args.image)
    organ = None
    if args.organ_model is not None:
        from ..inference import load_checkpoint

        organ = load_checkpoint(args.organ_model, device=args.device)
    if args.roi is not None:
        localiser = read_roi(args.roi)
    else:
        from ..inference import load_checkpoint

        localiser = load_checkpoint(args.model, device=args.device)

    structure = args.structure
    if structure is None and organ is not None and len(getattr(organ, "class_names", [])) == 1:
        structure = organ.class_names[0]
    names = ["roi.mrk.json", "localisation.json"] + ([f"prob_{structure or 'organ'}.nrrd"] if organ is not None else [])
    out = check_out_dir(args.out, args.overwrite, tuple(names))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LocalisationWarning)
        result = two_stage_predict(image, localiser, organ, structure=structure, padding=args.padding,
                                   threshold=args.threshold, factors=tuple(args.factors), pad_value=args.pad_value,
                                   device=args.device)
    for w in caught:
        print(f"autosegsens localise: warning: {w.message}", file=sys.stderr)

    info = {
        "image": str(args.image),
        "localiser": str(args.roi if args.roi is not None else args.model),
        "organ_model": str(args.organ_model) if args.organ_model is not None else None,
        "structure": structure,
        "padding": args.padding,
        "threshold": args.threshold,
        "factors": list(args.factors),
        "found": result.found,
        "message": result.message,
        "box": result.box.to_dict() if result.box is not None else None,
        "crop_box": result.crop_box.to_dict() if result.crop_box is not None else None,
    }
    from ..atomic import write_text


    def owned(n: str) -> bool:  # this command's files (--overwrite replaces all of them)
        return n in ("roi.mrk.json", "localisation.json") or (n.startswith("prob_") and n.endswith(".nrrd"))

    with output_folder(out, args.overwrite, tuple(names), owned=owned, last=("localisation.json",)) as stage:
        write_text(stage / "localisation.json", json.dumps(info, indent=2) + "\n")
        if result.found:
            write_roi(result.roi, stage / "roi.mrk.json")
            if result.probability is not None:
                write_volume(result.probability, stage / f"prob_{structure or 'organ'}.nrrd")
    if not result.found:
        print(f"autosegsens localise: {result.message}", file=sys.stderr)
        return 1
    print(result.message)
    return 0
