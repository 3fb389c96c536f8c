"""Convert a DICOM CT series (with an optional RTSTRUCT) or an image with a label volume into a case
folder of the dataset layout: ``image.nrrd`` and, when structures are given, ``segmentation.seg.nrrd``.

DICOM: ``--dicom DIR`` reads the one CT series in DIR (RTSTRUCT, RTDOSE and other objects in the folder
are set aside; with several CT series choose one with ``--series-uid``). ``--rtstruct FILE`` rasterises
its ROIs onto the CT grid (even-odd rule; names kept exactly); an RTSTRUCT of another series is refused
unless ``--force``. Warnings (contours between slices, ROIs outside the grid, empty ROIs) are printed.

Image: ``--image FILE`` (NRRD/NIfTI) with ``--labels FILE`` (a label volume on the same grid) and
``--names labels.json`` ({"value": "name"}; without it segments are called Label_<value>).

Exit codes: 0 done, 2 bad input (one line on stderr).

Example:
  autosegsens convert --dicom pat_1/ --rtstruct pat_1/DCM_RS_00060.dcm --out cases/pat_1
  autosegsens convert --image ct.nii.gz --labels labels.nii.gz --names labels.json --out cases/abdomen
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import add_out_argument, output_folder

NAME = "convert"
HELP = "DICOM CT (+ RTSTRUCT) or image + label volume -> image.nrrd + segmentation.seg.nrrd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("DICOM input")
    src.add_argument("--dicom", type=Path, metavar="DIR", help="folder holding the CT series")
    src.add_argument("--rtstruct", type=Path, metavar="FILE", help="RTSTRUCT to rasterise onto the CT grid")
    src.add_argument("--series-uid", metavar="UID", help="SeriesInstanceUID to read when DIR holds several CT series")
    src.add_argument("--force", action="store_true", help="rasterise an RTSTRUCT that references another series")
    img = parser.add_argument_group("image + label volume input")
    img.add_argument("--image", type=Path, metavar="FILE", help="NRRD/NIfTI image")
    img.add_argument("--labels", type=Path, metavar="FILE", help="label volume on the image grid")
    img.add_argument("--names", type=Path, metavar="JSON", help="label names {\"value\": \"name\"}")
    add_out_argument(parser, help="case folder to write image.nrrd and segmentation.seg.nrrd into")


def run(args: argparse.Namespace) -> int:
    from ..io import read_dicom_series, read_label_segmentation, read_rtstruct, read_volume, write_segmentation, write_volume

    if bool(args.dicom) == bool(args.image):
        raise InputError("convert", "--dicom / --image", "exactly one of --dicom DIR or --image FILE",
                         got="both" if args.dicom else "neither")
    warnings = []
    seg = None
    if args.dicom:
        if args.labels or args.names:
            raise InputError("convert", "--labels/--names", "only with --image", got="given with --dicom")
        series = read_dicom_series(args.dicom, series_uid=args.series_uid)
        image = series.volume
        if args.rtstruct:
            result = read_rtstruct(args.rtstruct, series, force=args.force)
            seg, warnings = result.segmentation, result.warnings
    else:
        if args.rtstruct or args.series_uid or args.force:
            raise InputError("convert", "--rtstruct/--series-uid/--force", "only with --dicom", got="given with --image")
        image = read_volume(args.image)
        if args.names and not args.labels:
            raise InputError("convert", "--names", "together with --labels", got="--names alone")
        if args.labels:
            if args.names:
                seg = read_label_segmentation(args.labels, args.names)
            else:
                labels = read_volume(args.labels)
                values = [int(v) for v in np.unique(labels.array) if v != 0]
                seg = read_label_segmentation(args.labels, {v: f"Label_{v}" for v in values} or {1: "Label_1"})
            if not seg.geometry.same_grid(image, atol=1e-3):
                raise InputError(args.labels, "geometry", f"the grid of {args.image}",
                                 got=seg.geometry.grid_difference(image, atol=1e-3))
            seg.geometry = image.with_array(np.broadcast_to(np.zeros((), np.uint8), image.shape))
    names = ["image.nrrd"] + (["segmentation.seg.nrrd"] if seg is not None else [])
    out = args.out
    with output_folder(out, args.overwrite, tuple(names), owned=("image.nrrd", "segmentation.seg.nrrd"),
                       last=("image.nrrd",)) as stage:
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        write_volume(image, stage / "image.nrrd")
        if seg is not None:
            write_segmentation(seg, stage / "segmentation.seg.nrrd")
    sx, sy, sz = image.spacing
    print(f"wrote {out / 'image.nrrd'} ({image.shape[2]}x{image.shape[1]}x{image.shape[0]} voxels, "
          f"{sx:.3g} x {sy:.3g} x {sz:.3g} mm)")
    if seg is not None:
        print(f"wrote {out / 'segmentation.seg.nrrd'} ({len(seg)} segments: {', '.join(seg.names)})")
    return 0
