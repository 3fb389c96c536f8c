"""Predict probability maps for one CT, or for every case of a dataset folder, with a trained checkpoint.

With --image: writes OUT/prob_<structure>.nrrd (float32 probabilities on the input grid, never
thresholded). With --threshold T (one threshold for all structures), --tuned (the thresholds stored in
the checkpoint by threshold tuning) or --thresholds FILE (a thresholds.json from `autosegsens tune`, one
threshold per structure) also OUT/segmentation.seg.nrrd. The image is a volume file (.nrrd, .nii.gz, ...)
or a folder holding one DICOM CT series. With --thresholds FILE --calibrated (FILE from `tune
--calibration`) the maps written are calibrated, p' = sigmoid(logit(p) / T) with each structure's
temperature T; the segmentation is the same (p >= t is p' >= t' = sigmoid(logit(t) / T)).
The files appear in OUT only when all are written; --overwrite replaces every prob_* map and the
segmentation of an earlier run.

With --data DATASET (one sub-folder per case): writes OUT/<case>/prob_<structure>.nrrd for every case,
or with --shard I/N (0 <= I < N) for cases I, I+N, I+2N, ... of the names sorted (one task of a job
array; the N shards are disjoint and cover every case). A case is finished when OUT/<case>/prediction.json
lists its files, the model (the sha256 of its weights), the thresholds and the input image (path, size,
modification time) that made them; finished cases are skipped, so a re-queued task resumes; a case made by
other weights (a checkpoint retrained into the same path), at other thresholds or from another image (another
dataset with the same case names, a re-converted CT) is redone, and the terminal says which and every
reason; a redone case loses the files its old prediction.json listed that this run does not write.
With --thresholds FILE tuned on the maps of another model (FILE records it), one warning line names both.
Failed cases do not stop the run: they are listed at the end and in OUT/shard-I-of-N.json (exit code 1
if any failed). Ctrl-C stops after writing OUT/shard-I-of-N.json (finished cases kept; the same command resumes).

Examples:
  autosegsens predict --model runs/quick/best.pt --image phantom-data/case000/image.nrrd \\
      --out pred/case000 --threshold 0.5
  autosegsens predict --model runs/quick/best.pt --data phantom-data --out pred --shard 0/4
  (SLURM job array: --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; see examples/slurm/)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional

from ..predict_shards import safe_name  # noqa: F401 - the file-name rule, importable from here as before
from .common import add_out_argument, check_out_path, output_folder

NAME = "predict"
HELP = "probability maps (and optionally a thresholded segmentation) from a checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="checkpoint (best.pt or last.pt)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="CT volume file or DICOM series folder (HU)")
    source.add_argument("--data", type=Path, help="dataset folder: predict every case into OUT/<case>/")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="with --data: only cases I, I+N, ... of the sorted names (0 <= I < N)")
    add_out_argument(parser)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, default=None, help="write segmentation.seg.nrrd at this threshold")
    group.add_argument("--tuned", action="store_true", help="write segmentation.seg.nrrd at the checkpoint's tuned thresholds")
    group.add_argument("--thresholds", type=Path, default=None,
                       help="write segmentation.seg.nrrd at the thresholds of this thresholds.json (autosegsens tune)")
    parser.add_argument("--calibrated", action="store_true",
                        help="with --thresholds: write the maps calibrated with the file's temperatures")
    parser.add_argument("--format", choices=("nrrd", "nii.gz"), default="nrrd", help="probability map file format")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="slices (2D) or windows (3D) per pass")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory layout for 2D models (default: on; faster on CPU and tensor-core GPUs)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..inference import load_checkpoint, predict_volume, threshold_maps
    from ..io import read_dicom_series, read_volume, write_segmentation, write_volume

    check_out_path(args.out)  # a bad --out is one line before the model is loaded
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError("--threshold", None, "a number in [0, 1]", got=args.threshold)
    if args.shard is not None and args.data is None:
        raise InputError("--shard", None, "--data DATASET (shards split a dataset folder)", got="--image")
    model = load_checkpoint(args.model, device=args.device)
    if (Path(args.model).parent / "INCOMPLETE").is_file():
        print(f"note: {args.model} comes from a training run that has not finished "
              f"({Path(args.model).parent / 'INCOMPLETE'})", file=sys.stderr)
    if args.tuned and not model.thresholds_tuned:
        raise InputError(args.model, "thresholds", "tuned thresholds (run threshold tuning first, or use --threshold)",
                         got="only the 0.5 default")
    per_structure = None
    temperatures = None
    if args.calibrated and args.thresholds is None:
        raise InputError("--calibrated", None, "--thresholds FILE (a thresholds.json of tune --calibration)",
                         got="no --thresholds")
    if args.thresholds is not None:
        from ..tune import temperatures_for, thresholds_for

        per_structure = thresholds_for(args.thresholds, model.class_names)
        from ..tune import thresholds_model_warning

        other_model = thresholds_model_warning(args.thresholds, model)  # tuned on another model's maps
        if other_model:
            print(other_model, file=sys.stderr)
        if args.calibrated:
            temperatures = temperatures_for(args.thresholds, model.class_names)
    if args.data is not None:
        return _run_dataset(args, model, per_structure, temperatures)
    names = [f"prob_{safe_name(n)}.{args.format}" for n in model.class_names]
    seg_name = "segmentation.seg.nrrd"
    want_seg = args.threshold is not None or args.tuned or per_structure is not None
    will_write = tuple(names) + ((seg_name,) if want_seg else ())
    check_out_path(args.out)
    if not args.image.exists():
        raise InputError(args.image, None, "an existing image file or DICOM folder", got="no such file")
    volume = read_dicom_series(args.image).volume if args.image.is_dir() else read_volume(args.image)
    with output_folder(args.out, args.overwrite, will_write=will_write, owned=_owned_by_image_run) as stage:
        probs = predict_volume(model, volume, batch_size=args.batch_size, channels_last=args.channels_last)
        shown = probs
        if temperatures is not None:
            from ..calibration import calibrated_volumes

            shown = calibrated_volumes(probs, temperatures)
        for (name, vol), fname in zip(shown.items(), names):
            write_volume(vol, stage / fname)
        if want_seg:
            chosen = (per_structure if per_structure is not None else model.thresholds if args.tuned
                      else float(args.threshold))
            seg = threshold_maps(probs, chosen)
            write_segmentation(seg, stage / seg_name)
    print(f"wrote {len(names)} probability map(s){' and ' + seg_name if want_seg else ''} to {args.out}",
          file=sys.stdout)
    return 0


def _owned_by_image_run(name: str) -> bool:
    """The files a `predict --image` run writes (replaced as a whole by --overwrite)."""
    return name == "segmentation.seg.nrrd" or (name.startswith("prob_") and name.endswith((".nrrd", ".nii.gz")))


def kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed run left in OUT and how to continue."""
    out = Path(args.out)
    if args.data is None:
        return f"{out} unchanged (outputs appear only when complete)"
    from ..predict_shards import MARKER

    done = sum(1 for p in out.glob(f"*/{MARKER}")) if out.is_dir() else 0
    return (f"{out} holds {done} finished case(s) (each with its {MARKER}); run the same command again to "
            "finish the rest (finished cases are skipped)")


def _run_dataset(args: argparse.Namespace, model: object, per_structure: Optional[Dict[str, float]],
                 temperatures: Optional[Dict[str, float]] = None) -> int:
    """--data [--shard I/N]: every case (of the shard); finished cases skipped; failures summarised."""
    from ..atomic import clean_stale_temps
    from ..predict_shards import parse_shard, predict_shard

    index, count = parse_shard(args.shard) if args.shard is not None else (0, 1)
    check_out_path(args.out)
    clean_stale_temps(args.out)  # temporaries of killed runs (live ones of concurrent shards are kept)
    thresholds = per_structure if per_structure is not None else model.thresholds if args.tuned else args.threshold
    result = predict_shard(model, args.data, args.out, index, count, fmt=args.format, thresholds=thresholds,
                           batch_size=args.batch_size, channels_last=args.channels_last, redo=args.overwrite,
                           temperatures=temperatures,
                           on_failure=lambda f: print(f"warning: {f.name} failed: {f.reason}", file=sys.stderr),
                           notify=lambda line: print(line, file=sys.stderr))
    for line in result.summary():
        print(line, file=sys.stderr if result.batch.failed else sys.stdout)
    if result.batch.cancelled:  # the shard json is written; the CLI says what was kept (exit 130/143)
        raise KeyboardInterrupt(f"shard {index}/{count}: {kept(args)}; listed in "
                                f"{Path(args.out) / f'shard-{index}-of-{count}.json'}")
    return result.batch.exit_code()
