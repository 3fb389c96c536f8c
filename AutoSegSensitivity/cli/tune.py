"""Tune the thresholds of any model's probability maps on a cohort, with an honest held-out estimate.

For every structure: the threshold that maximises the pooled Dice over all cases (Bice et al. 2021,
Eq. 1-2; ties toward 0.5), and a deterministic cross-validation that says whether it beats 0.5 on cases it
was not tuned on: cases sorted by name, case i in fold i mod K (K = min(--folds, cases)); each fold's
threshold is tuned on the other folds; cv_gain = pooled Dice of all cases at their fold's threshold minus
the pooled Dice at 0.5, with a seeded 95 % bootstrap CI over cases.

--prob-dir holds, per case (--format, auto-detected):
  maps      P/<case>/prob_<Structure>.nrrd (or .nii.gz), the layout `predict` writes;
  nnunet    nnU-Net v2 --save_probabilities output P/<case>.npz with its dataset.json (label value =
            channel; geometry from the reference case);
  channels  one multi-channel image per case, channels last (MONAI SaveImage of a softmax/sigmoid output):
            P/<case>.nii.gz (4D NIfTI or vector image) or .nrrd (vector/list axis), or P/<case>/<one file>;
            channel names from --dataset-json (dataset.json labels, or a {"value": "name"} labels JSON;
            default P/dataset.json or P/labels.json); channel = label value, background channel 0 dropped
            (softmax, max+1 channels) or channel = value - 1 (sigmoid, max channels).
--ref-dir holds the references (--ref-format, auto-detected; images are never needed):
  dataset   <case>/segmentation.seg.nrrd, or <case>/labels.nii.gz + labels.json (an image.nrrd beside
            them, if any, gives the grid);
  nnunet    nnU-Net's label folder: flat <case>.nii.gz (dataset.json file_ending), names and values from
            dataset.json's labels (--dataset-json, else REF/dataset.json, REF/../dataset.json or
            PROB/dataset.json); auto when REF holds volume files directly.
A map on a grid offset by whole voxels from an image-less reference's (a cropped map: same spacing and
direction) is accepted when every reference voxel lies inside it, and counts as zero outside its grid (the
same Dice as the map zero-padded to the reference grid; the prominence is counted on the map's grid).
Cases are matched by name. Cases, maps or structures with problems are listed one line each on stderr and
the rest goes on; when no case can be used, the error names the first cases' reasons. Cases are read one
at a time (--jobs N: N processes): memory does not grow with the cohort.

Unfinished predictions: a maps folder written by `predict --data` (some case holds prediction.json, or a
shard-I-of-N.json lies in it) must be finished: a reference case whose folder lacks a prediction.json
listing its maps (all present), or that a shard json assigns but has no folder, stops tune (exit 2, one
line naming the cases). Run the same `predict --data` again to finish them, or pass --allow-incomplete to
tune without them (they are listed on stderr and in thresholds.json). Folders with no prediction.json and
no shard json at all (maps made by another tool) and nnU-Net .npz output are read as they are.

Writes to --out DIR:
  thresholds.json   per structure the threshold (chosen on all cases), the fold thresholds and the CV
                    numbers; read by `autosegsens apply`, `predict --thresholds` and AutoSegThreshold
  summary.csv       a row per structure: n_cases, prominence, t_opt, dice_at_opt, dice_at_0.5,
                    loss_at_0.5, cv_dice_at_0.5, cv_dice_at_tuned, cv_gain, cv_gain_ci_low/high
  cases.csv         a row per structure and case: fold, fold threshold, the case's Dice at the threshold,
                    at its fold's threshold and at 0.5
  events.jsonl      progress events (start, case, done, error) as training writes them
  sweeps/<structure>/sweep.csv   the cohort sweep, as `autosegsens sweep` writes it
  report.html       the page: curves, fold thresholds, held-out gains (a CI holding 0 is flagged)
The outputs are written into a temporary folder beside OUT and appear in OUT only when all are complete
(thresholds.json last): a failed, cancelled or killed run leaves OUT as it was. --overwrite replaces all
four (sweeps/ as a whole: no sweeps of structures the new run did not tune).

With --calibration (from the same pass over the maps), per structure also the calibration: reliability
(equal-mass bins), ECE, Brier and NLL on the voxels within --calibration-margin mm of the reference or
with p >= 0.01, and the temperature T of p' = sigmoid(logit(p) / T) minimising the NLL, cross-validated
like the thresholds (T of each fold fitted on the other folds; numbers after scaling are held out):
  calibration.csv   a row per structure: temperature, fold temperatures, NLL / ECE / Brier before and
                    after (in-sample and held out), t_opt and t_opt_calibrated = sigmoid(logit(t_opt) / T)
  thresholds.json   gains "temperature" (and "threshold_calibrated") per structure; old readers ignore it
  sweeps/<structure>/reliability.csv   the reliability bins before and after (held out)
`autosegsens apply --calibrated` and `predict --thresholds FILE --calibrated` write calibrated maps.

Cohorts beyond one machine: --shard I/N counts only cases I, I+N, ... of the sorted matched names (as
`predict --shard`) and writes only OUT/counts-I-of-N.npz; `tune --merge OUT_0 ... OUT_N-1 --out M` then
writes the same outputs as one run over all cases (settings come from the shards, which must agree).
See examples/slurm/tune_array.sbatch and tune_merge.sbatch.

Examples:
  autosegsens tune --prob-dir preds --ref-dir data --out tuned --folds 5 --seed 0 --calibration
  autosegsens tune --prob-dir preds --ref-dir data --out part1 --shard 1/4
  autosegsens tune --merge part0 part1 part2 part3 --out tuned
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_out_argument, check_out_dir, output_folder

NAME = "tune"
HELP = "tune per-structure thresholds on a cohort, cross-validated against 0.5 (thresholds.json)"
OUTPUTS = ("thresholds.json", "summary.csv", "cases.csv", "report.html", "sweeps")
CALIBRATION_OUTPUTS = ("calibration.csv",)


def add_prob_arguments(parser: argparse.ArgumentParser) -> None:
    """--prob-dir, --out/--overwrite, --format and --dataset-json (shared with `apply`)."""
    parser.add_argument("--prob-dir", type=Path, required=True, help="probability maps, one case per folder or .npz")
    add_out_argument(parser)
    parser.add_argument("--format", choices=("auto", "maps", "nnunet", "channels"), default="auto",
                        help="layout of --prob-dir (auto: nnunet when it holds .npz files, channels when it holds "
                             "one image per case, else maps)")
    parser.add_argument("--dataset-json", type=Path,
                        help="labels: nnU-Net dataset.json (nnunet --prob-dir: default PROB_DIR/dataset.json; "
                             "nnU-Net label folder --ref-dir: default the first of REF_DIR/dataset.json, "
                             "REF_DIR/../dataset.json, PROB_DIR/dataset.json) or, for channels, a dataset.json "
                             "or {\"value\": \"name\"} JSON (default PROB_DIR/dataset.json, then PROB_DIR/labels.json)")


def add_ref_format_argument(parser: argparse.ArgumentParser) -> None:
    """--ref-format (shared with `apply`)."""
    parser.add_argument("--ref-format", choices=("auto", "dataset", "nnunet"), default="auto",
                        help="layout of --ref-dir: dataset (case folders) or nnunet (flat <case>.nii.gz label "
                             "files + dataset.json labels); auto: nnunet when it holds volume files directly")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_prob_arguments(parser)
    parser.add_argument("--ref-dir", type=Path, required=True,
                        help="references: a dataset folder, or nnU-Net's label folder (labelsTs/)")
    add_ref_format_argument(parser)
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
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="tune without the cases whose prediction (by `predict --data`) did not finish, "
                             "listing them, instead of stopping (folders without any prediction.json are "
                             "never checked)")
    parser.add_argument("--calibration", action="store_true",
                        help="also measure calibration and fit a temperature per structure (calibration.csv)")
    parser.add_argument("--calibration-margin", type=float, default=None, metavar="MM",
                        help="calibration voxels: within this distance of the reference (mm, default 10) or p >= 0.01")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="count only cases I, I+N, ... of the sorted names into OUT/counts-I-of-N.npz")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="SHARD_OUT",
                        help="aggregate the counts-I-of-N.npz of these shard outputs (instead of --prob-dir)")
    parser.add_argument("--events", type=Path, metavar="FILE",
                        help="write progress as JSON lines (start, case, done, error) to FILE while tuning "
                             "(what the Slicer cohort section reads); not an output: OUT's results still "
                             "appear only when complete")
    for action in parser._actions:  # --prob-dir / --ref-dir are not needed with --merge (checked in run)
        if action.dest in ("prob_dir", "ref_dir"):
            action.required = False


def kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed run left: nothing (the outputs appear only when complete)."""
    return f"nothing written: {args.out} is as it was (run the same command again)"


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..tune import calibration_rows, problem_line, summary_rows, write_outputs

    if args.merge:
        if args.prob_dir is not None or args.ref_dir is not None or args.shard is not None:
            raise InputError("--merge", None, "only shard outputs and --out (the settings come from the shards)",
                             got="--prob-dir, --ref-dir or --shard as well")
        from ..tune import tune_from_counts
        from ..tune_shards import merge_counts

        out = check_out_dir(args.out, args.overwrite, will_write=OUTPUTS + CALIBRATION_OUTPUTS)
        result = tune_from_counts(merge_counts(args.merge))
        for p in result.problems:
            print(f"note: {problem_line(p)}", file=sys.stderr)
        if not result.structures:
            raise InputError("tune --merge", "structures", "at least one structure with maps and references",
                             got="none (see the notes above)")
    else:
        for flag, value in (("--prob-dir", args.prob_dir), ("--ref-dir", args.ref_dir)):
            if value is None:
                raise InputError(flag, None, "a folder (or --merge SHARD_OUT ...)", got="none")
        if args.shard is not None:
            return _run_shard(args)
        # refused before the work, not after
        out = check_out_dir(args.out, args.overwrite, will_write=OUTPUTS + CALIBRATION_OUTPUTS)
        result = _run_whole(args)
    with output_folder(out, args.overwrite, will_write=OUTPUTS + CALIBRATION_OUTPUTS,
                       last=("thresholds.json",)) as stage:
        write_outputs(result, stage)
    m = result.metric
    for r in summary_rows(result):
        cv = (f"held-out gain {r['cv_gain']:+.4f} (95 % CI {r['cv_gain_ci_low']:+.4f} .. {r['cv_gain_ci_high']:+.4f})"
              + (" CI holds 0" if r["ci_holds_zero"] else "")) if r["cv_gain"] is not None else "not cross-validated"
        print(f"{r['structure']}: t={r['t_opt']:.2f} {m} {r[f'{m}_at_opt']:.4f} (at 0.5 {r[f'{m}_at_0.5']:.4f}); {cv}")
    for r in calibration_rows(result):
        held = (f"held out NLL {r['cv_nll_before']:.4f} -> {r['cv_nll_after']:.4f}, ECE {r['cv_ece_before']:.4f} -> "
                f"{r['cv_ece_after']:.4f}" if r["cv_nll_after"] is not None else
                f"NLL {r['nll_before']:.4f} -> {r['nll_after']:.4f} (in-sample)")
        print(f"{r['structure']}: temperature {r['temperature']:.3f}; {held}; optimum t={r['t_opt']:.2f} is "
              f"t'={r['t_opt_calibrated']:.3f} on the calibrated maps")
    print(f"wrote {out}")
    return 0


def _run_whole(args: argparse.Namespace):
    """Tune the whole cohort (nothing written yet), with progress events in ``--events`` FILE when given
    (start, case, done, error: what the Slicer cohort section reads)."""
    from ..errors import InputError
    from ..progress import ProgressWriter
    from ..tune import problem_line, tune_cohort

    if args.events is not None:
        Path(args.events).unlink(missing_ok=True)
    with ProgressWriter(args.events) as progress:
        state = {"done": 0, "total": 0}

        def on_start(names: list) -> None:
            state["total"] = len(names)
            progress.emit("start", cases=len(names), metric=args.metric, folds=args.folds)

        def on_case(name: str) -> None:
            state["done"] += 1
            progress.emit("case", case=name, done=state["done"], total=state["total"])

        try:
            try:
                result = tune_cohort(args.prob_dir, args.ref_dir, fmt=args.format, dataset_json=args.dataset_json,
                                     structures=args.structures, metric=args.metric, folds=args.folds,
                                     seed=args.seed, nsd_tolerance=args.nsd_tolerance, ref_format=args.ref_format,
                                     allow_incomplete=args.allow_incomplete, train_dir=args.train_dir,
                                     jobs=args.jobs, n_boot=args.bootstrap, on_start=on_start, on_case=on_case,
                                     calibration=args.calibration, calibration_margin=args.calibration_margin)
            except InputError as exc:  # no usable case: every reason as a note, then the error's summary
                for p in getattr(exc, "problems", []):
                    print(f"note: {problem_line(p)}", file=sys.stderr)
                raise
            for p in result.problems:
                print(f"note: {problem_line(p)}", file=sys.stderr)
            if not result.structures:
                raise InputError(args.prob_dir, "structures", "at least one structure with maps and references",
                                 got="none (see the notes above)")
        except BaseException as exc:
            progress.emit("error", message=str(exc) or type(exc).__name__)
            raise
        progress.emit("done", structures=list(result.structures), out=str(args.out))
    return result


def _run_shard(args: argparse.Namespace) -> int:
    """--shard I/N: count this shard's cases and write OUT/counts-I-of-N.npz only."""
    from ..predict_shards import parse_shard
    from ..tune import collect_counts, problem_line
    from ..tune_shards import counts_name, save_counts

    index, count = parse_shard(args.shard)
    name = counts_name(index, count)
    out = check_out_dir(args.out, args.overwrite, will_write=(name,))  # refused before the work, not after
    counts = collect_counts(args.prob_dir, args.ref_dir, fmt=args.format, dataset_json=args.dataset_json,
                            structures=args.structures, metric=args.metric, folds=args.folds, seed=args.seed,
                            nsd_tolerance=args.nsd_tolerance, train_dir=args.train_dir, jobs=args.jobs,
                            n_boot=args.bootstrap, shard=(index, count), calibration=args.calibration,
                            calibration_margin=args.calibration_margin, ref_format=args.ref_format,
                            allow_incomplete=args.allow_incomplete)
    for res in counts.outs:
        for s, reason in res.problems:
            print(f"note: {problem_line((res.name, s, reason))}", file=sys.stderr)
    with output_folder(out, args.overwrite, will_write=(name,)) as stage:
        save_counts(counts, (index, count), stage)
    path = out / name
    print(f"wrote the counts of {len(counts.cases)} of {len(counts.names)} case(s) to {path}")
    return 0
