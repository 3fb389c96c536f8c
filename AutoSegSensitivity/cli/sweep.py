"""Threshold sweep (Bice et al. 2021): how Dice, MSD, HD and HD95 depend on the threshold of probability maps.

Pairs each --prob probability map (NRRD or NIfTI, values in [0, 1]; with --logits, logits that get a
sigmoid) with the --ref of the same position (a .seg.nrrd, or a label volume with --names, or a binary
mask volume). --segment picks the structure in the references (needed when they hold several); a case
whose reference lacks it is reported in summary.json and left out, the sweep goes on with the others.
Probability map and reference must share a grid unless --resample is given (the map is then resampled
linearly onto the reference grid).

Every threshold of --thresholds (default 0:1:0.01, i.e. 0.00, 0.01, ..., 1.00; also "0.3,0.5,0.7") is
evaluated; a voxel is foreground when p >= t. Writes to --out DIR:

  sweep.csv            threshold, dice (pooled over voxels and cases, paper Eq. 1), msd_mm, hd_mm, hd95_mm
                       (pooled over the cases' surfaces), then mean-of-cases values and counts of cases
                       left out as inf (one side empty)
  sweep_per_case.csv   case, threshold, dice, msd_mm, hd_mm, hd95_mm
  summary.json         optimum threshold and value per metric (ties toward 0.5), value and relative loss at
                       0.5, perturbation losses at t_opt +-0.02/0.05/0.1, the inputs it came from
  sweep.png, sweep_<metric>.png, perturbation_losses.png   figures
They appear in DIR only when all are written (summary.json last).

Example:
  autosegsens sweep --prob p01.nrrd --prob p02.nrrd --ref case01/segmentation.seg.nrrd \\
      --ref case02/segmentation.seg.nrrd --segment Parotid_L --out sweep_parotid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List

import numpy as np

from ..errors import InputError
from ..metrics import DEFAULT_NSD_TOLERANCE_MM
from ..sweep import SWEEP_METRICS
from .common import add_out_argument, check_out_dir, output_folder

NAME = "sweep"
HELP = "threshold sweep of probability maps against references (optimum, loss at 0.5, perturbation losses)"

METRIC_FILES = tuple(f"sweep_{m}.png" for m in SWEEP_METRICS)
OUTPUTS = ("sweep.csv", "sweep_per_case.csv", "summary.json", "sweep.png", "perturbation_losses.png") + METRIC_FILES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prob", type=Path, action="append", required=True,
                        help="probability map (repeat for several cases)")
    parser.add_argument("--ref", type=Path, action="append", required=True,
                        help="reference for the --prob of the same position (.seg.nrrd or label/mask volume)")
    parser.add_argument("--segment", help="structure name in the references")
    parser.add_argument("--names", type=Path, help="JSON {label value: name} for label-volume references")
    parser.add_argument("--thresholds", default="0:1:0.01", help="'start:stop:step' (stop included) or 'a,b,c'")
    parser.add_argument("--metrics", default=",".join(SWEEP_METRICS),
                        help="comma-separated subset of %(default)s (nsd: surface Dice at tolerance)")
    parser.add_argument("--nsd-tolerance", type=float, default=DEFAULT_NSD_TOLERANCE_MM, metavar="MM",
                        help="tolerance of the surface Dice (nsd) in mm (default %(default)s)")
    parser.add_argument("--logits", action="store_true", help="the maps hold logits: apply a sigmoid first")
    parser.add_argument("--resample", action="store_true",
                        help="resample a map (linear) onto its reference grid when the grids differ")
    add_out_argument(parser)


def _case_name(path: Path, used: set) -> str:
    name = path.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nrrd", ".nhdr", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name in ("prob", "probability", "image", "segmentation", "labels") or name in used:
        name = f"{path.parent.name}/{name}" if path.parent.name else name
    base, k = name, 2
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    from ..io import read_volume
    from ..report import plot_perturbation_losses, plot_sweep, plot_sweep_metrics, write_csv, write_json
    from ..sweep import check_probability, parse_thresholds, sweep_thresholds
    from .compare import load_names, read_any_segmentation

    if len(args.prob) != len(args.ref):
        raise InputError("sweep", "--prob/--ref", "as many --ref as --prob (paired in order)",
                         got=f"{len(args.prob)} --prob and {len(args.ref)} --ref")
    thresholds = parse_thresholds(args.thresholds)
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    out = check_out_dir(args.out, args.overwrite, will_write=OUTPUTS)
    names = load_names(args.names)

    probs: List[np.ndarray] = []
    refs: List[object] = []
    spacings: List[tuple] = []
    case_names: List[str] = []
    notes: List[dict] = []
    used: set = set()
    segment = args.segment
    for prob_path, ref_path in zip(args.prob, args.ref):
        case = _case_name(prob_path, used)
        case_names.append(case)
        prob = read_volume(prob_path)
        # checked here so that an error names the file; logits become probabilities
        prob = prob.with_array(check_probability(prob.array, str(prob_path), logits=args.logits))
        seg = read_any_segmentation(ref_path, names)
        if segment is None:
            if len(seg.names) != 1:
                raise InputError(ref_path, "segments", f"one segment, or --segment NAME (one of {seg.names})",
                                 got=len(seg.names))
            segment = seg.names[0]
        if segment not in seg:
            refs.append(None)
            probs.append(prob.array)
            spacings.append(prob.spacing_zyx)
            notes.append({"case": case, "reason": f"segment {segment!r} missing in {ref_path} (has {seg.names})"})
            continue
        if not seg.geometry.same_grid(prob):
            if not args.resample:
                raise InputError(prob_path, "grid", f"the grid of {ref_path} (or --resample)",
                                 got=seg.geometry.grid_difference(prob))
            arr = np.asarray(prob.array, dtype=np.float32)
            prob = prob.with_array(arr).resample_like(seg.geometry, interpolation="linear")
            prob = prob.with_array(np.clip(prob.array, 0.0, 1.0))
        probs.append(np.asarray(prob.array))
        refs.append(seg.mask(segment))
        spacings.append(seg.geometry.spacing_zyx)

    result = sweep_thresholds(probs, refs, spacings, thresholds=thresholds, metrics=metrics,
                              case_names=case_names, structure=segment, nsd_tolerance=args.nsd_tolerance)
    summary = result.summary()
    summary["inputs"] = {
        "probability_maps": [str(p) for p in args.prob],
        "references": [str(r) for r in args.ref],
        "segment": segment,
        "thresholds": args.thresholds,
        "logits": bool(args.logits),
        "resample": bool(args.resample),
        "metrics": list(metrics),
        "nsd_tolerance_mm": args.nsd_tolerance,
    }
    for n in notes:
        if n["case"] not in [p["case"] for p in summary["problems"]]:
            summary["problems"].append(n)
        else:
            for p in summary["problems"]:
                if p["case"] == n["case"]:
                    p["reason"] = n["reason"]
    with output_folder(out, args.overwrite, will_write=OUTPUTS, last=("summary.json",)) as stage:
        write_csv(result.to_table(), stage / "sweep.csv")
        write_csv(result.per_case_table(), stage / "sweep_per_case.csv")
        write_json(summary, stage / "summary.json")
        plot_sweep_metrics(result, stage / "sweep.png")
        for m in result.metrics:
            plot_sweep(result, stage / f"sweep_{m}.png", metric=m)
        plot_perturbation_losses({segment: result}, stage / "perturbation_losses.png",
                                 metric="dice" if "dice" in result.metrics else result.metrics[0])
    for p in summary["problems"]:
        print(f"note: {p['case']}: {p['reason']}", file=sys.stderr)
    for m in result.metrics:
        t_opt, v_opt = result.optimum(m)
        loss = result.loss_at(0.5, m)
        loss_txt = f"{100 * loss:.1f} %" if loss is not None else "n/a"
        print(f"{segment}: {m}: optimum t={t_opt:.2f} value {v_opt:.4g}; loss at 0.5: {loss_txt}")
    print(f"wrote {out}")
    return 0
