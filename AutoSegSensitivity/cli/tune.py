"""Tune the thresholds of any model's probability maps on a cohort, with an honest held-out estimate.

For every structure: the threshold that maximises the pooled Dice over all cases (Bice et al. 2021,
Eq. 1-2; ties toward 0.5), and a deterministic cross-validation that says whether it beats 0.5 on cases it
was not tuned on: cases sorted by name, case i in fold i mod K (K = min(--folds, cases)); each fold's
threshold is tuned on the other folds; cv_gain = pooled Dice of all cases at their fold's threshold minus
the pooled Dice at 0.5, with a seeded 95 % bootstrap CI over cases.

--prob-dir holds, per case, either (--format maps) P/<case>/prob_<Structure>.nrrd (or .nii.gz), the layout
`predict` writes, or (--format nnunet) nnU-Net v2 --save_probabilities output P/<case>.npz with its
dataset.json (label value = channel; geometry from the reference case). --ref-dir is a dataset folder
(<case>/image.nrrd + segmentation.seg.nrrd, or labels.nii.gz + labels.json); cases are matched by name.
Cases, maps or structures with problems are listed one line each on stderr and the rest goes on. Cases
are read one at a time (--jobs N: N processes): memory does not grow with the cohort.

Writes to --out DIR:
  thresholds.json   per structure the threshold (chosen on all cases), the fold thresholds and the CV
                    numbers; read by `autosegsens apply`, `predict --thresholds` and AutoSegThreshold
  summary.csv       a row per structure: n_cases, prominence, t_opt, dice_at_opt, dice_at_0.5,
                    loss_at_0.5, cv_dice_at_0.5, cv_dice_at_tuned, cv_gain, cv_gain_ci_low/high
  sweeps/<structure>/sweep.csv   the cohort sweep, as `autosegsens sweep` writes it
  report.html       the page: curves, fold thresholds, held-out gains (a CI holding 0 is flagged)
The outputs are written into a temporary folder beside OUT and appear in OUT only when all are complete
(thresholds.json last): a failed, cancelled or killed run leaves OUT as it was. --overwrite replaces all
four (sweeps/ as a whole: no sweeps of structures the new run did not tune).

Example:
  autosegsens tune --prob-dir preds --ref-dir data --out tuned --folds 5 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_out_argument, check_out_dir, output_folder

NAME = "tune"
HELP = "tune per-structure thresholds on a cohort, cross-validated against 0.5 (thresholds.json)"
OUTPUTS = ("thresholds.json", "summary.csv", "report.html", "sweeps")


def add_prob_arguments(parser: argparse.ArgumentParser) -> None:
    """--prob-dir, --out/--overwrite, --format and --dataset-json (shared with `apply`)."""
    parser.add_argument("--prob-dir", type=Path, required=True, help="probability maps, one case per folder or .npz")
    add_out_argument(parser)
    parser.add_argument("--format", choices=("auto", "maps", "nnunet"), default="auto",
                        help="layout of --prob-dir (auto: nnunet when it holds .npz files)")
    parser.add_argument("--dataset-json", type=Path, help="nnU-Net dataset.json (default PROB_DIR/dataset.json)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_prob_arguments(parser)
    parser.add_argument("--ref-dir", type=Path, required=True, help="dataset folder with the reference cases")
    parser.add_argument("--structures", nargs="+", help="structures to tune (default: all found)")
    parser.add_argument("--metric", default="dice",
                        help="metric to optimise: any metric of `autosegsens sweep` (dice, nsd, msd, hd, hd95); "
                             "Dice is pooled over cases, other metrics are means of the case values")
    parser.add_argument("--nsd-tolerance", type=float, default=2.0, metavar="MM",
                        help="tolerance of the surface Dice (--metric nsd), in mm (default 2.0)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (K = min(folds, cases))")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap CI")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CI")
    parser.add_argument("--train-dir", type=Path,
                        help="training dataset folder for the prominence (Eq. 4); default: the references")
    parser.add_argument("--jobs", type=int, default=1, help="processes over cases")


def kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed run left: nothing (the outputs appear only when complete)."""
    return f"nothing written: {args.out} is as it was (run the same command again)"


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..tune import problem_line, summary_rows, tune_cohort, write_outputs

    out = check_out_dir(args.out, args.overwrite, will_write=OUTPUTS)  # refused before the work, not after
    result = tune_cohort(args.prob_dir, args.ref_dir, fmt=args.format, dataset_json=args.dataset_json,
                         structures=args.structures, metric=args.metric, folds=args.folds, seed=args.seed,
                         nsd_tolerance=args.nsd_tolerance,
                         train_dir=args.train_dir, jobs=args.jobs, n_boot=args.bootstrap)
    for p in result.problems:
        print(f"note: {problem_line(p)}", file=sys.stderr)
    if not result.structures:
        raise InputError(args.prob_dir, "structures", "at least one structure with maps and references",
                         got="none (see the notes above)")
    with output_folder(out, args.overwrite, will_write=OUTPUTS, last=("thresholds.json",)) as stage:
        write_outputs(result, stage)
    m = result.metric
    for r in summary_rows(result):
        cv = (f"held-out gain {r['cv_gain']:+.4f} (95 % CI {r['cv_gain_ci_low']:+.4f} .. {r['cv_gain_ci_high']:+.4f})"
              + (" CI holds 0" if r["ci_holds_zero"] else "")) if r["cv_gain"] is not None else "not cross-validated"
        print(f"{r['structure']}: t={r['t_opt']:.2f} {m} {r[f'{m}_at_opt']:.4f} (at 0.5 {r[f'{m}_at_0.5']:.4f}); {cv}")
    print(f"wrote {out}")
    return 0
