"""Apply a CT intensity transform (Segmental Linear Function or plain window, Lei et al.) to a volume.

Reads an HU volume (NRRD/NIfTI), maps it through the transform and writes a float32 volume in [0, 1] with
the same geometry (format by the output's suffix). The transform is a preset (``--preset``: SLF1, SLF2,
SLF3, NLF1, NLF2) or points (``--points``: HU:value pairs, HU strictly increasing, values non-decreasing
in [0, 1]; 0 below the first HU, 1 above the last, linear between). Write ``--points=...`` with an equals
sign, because the value starts with a minus sign. An existing OUT is refused unless ``--overwrite``.

Exit codes: 0 done, 2 bad input (one line on stderr).

Example:
  autosegsens transform --preset SLF1 case000/image.nrrd case000/image_slf1.nrrd
  autosegsens transform --points=-500:0,-200:0.2,200:0.8,1500:1 ct.nii.gz ct_slf.nii.gz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError

NAME = "transform"
HELP = "map an HU volume through an SLF/NLF intensity transform (float32 output, same geometry)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", metavar="NAME", help="SLF1, SLF2, SLF3, NLF1 or NLF2")
    which.add_argument("--points", metavar="HU:X,...", help="custom points, e.g. --points=-500:0,-200:0.2,200:0.8,1500:1")
    parser.add_argument("input", type=Path, metavar="IN", help="HU volume (.nrrd, .nhdr, .nii, .nii.gz)")
    parser.add_argument("output", type=Path, metavar="OUT", help="output volume (.nrrd, .nhdr, .nii, .nii.gz)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from ..intensity import PRESETS, apply_transform, get_transform
    from ..io import read_volume, write_volume
    from ..io.images import volume_suffix

    if args.preset is not None:
        if args.preset.strip().upper() not in PRESETS:
            raise InputError("transform", "--preset", f"one of {', '.join(PRESETS)}", got=repr(args.preset))
        transform = PRESETS[args.preset.strip().upper()]
    else:
        transform = get_transform(args.points)
    if not volume_suffix(args.output):
        raise InputError(args.output, "file name", "a volume file ending in .nrrd, .nhdr, .nii or .nii.gz",
                         got=repr(args.output.name))
    from .common import check_out_file

    check_out_file(args.output)
    if args.output.exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists")
    if args.output.resolve() == args.input.resolve():
        raise InputError("transform", "OUT", "a file other than IN", got=str(args.output))
    volume = read_volume(args.input)
    out = volume.with_array(apply_transform(volume.array, transform))
    write_volume(out, args.output)
    arr = out.array
    print(f"wrote {args.output} ({transform.name}: {transform.to_string()}; shape {list(volume.shape)}, "
          f"float32 in [{float(np.nanmin(arr)):.3f}, {float(np.nanmax(arr)):.3f}])")
    return 0
