"""Run the threshold-sensitivity study of Bice et al. (2021, paper 000) in miniature, end to end, on CPU.

With no arguments: writes 12 synthetic head-and-neck phantom cases into OUT/data and splits them, by a
seeded permutation of the sorted names, into 6 training, 2 validation and 4 test cases (30 % test, 20 %
validation, the rest training; --data: the same rule on that dataset's cases). As the paper ("10
individual models were trained"), trains one binary narrow 2D U-Net (paper 000's Table A1 layout, width 8,
no dropout, on the full 128 x 128 slices) per structure (Brain, Parotid_L, SpinalCord, Lens_L) and per training loss:
binary cross entropy (BCE) and BCE + lambda * 2D Dice (lambda 0.5, paper Eq. 5), all on the same training
cases and seed, with early stopping on the validation cases (lowest running mean of the last 10 validation
losses, as the paper) (--multi-label: one model per loss with one sigmoid output per structure instead;
the foreground-biased sampling is then class-balanced); predicts the validation and test cases
(OUT/predictions/<loss>/<case>/prob_<Structure>.nrrd, the layout of 'autosegsens predict'); sweeps the
threshold from 0 to 1 by 0.01 with Dice, NSD, MSD, HD and HD95 per structure and loss on both (OUT/sweeps);
chooses each threshold on the validation cases and measures, as paper 000 did, every reported number on
the test cases: Dice at that threshold and at 0.5, the loss at 0.5 with a 95 % bootstrap interval over test
cases, the losses at t +- 0.02/0.05/0.1, the volume bias; the Pearson r and p between training-set
prominence (Eq. 4) and the chosen threshold. Writes OUT/report.html (one self-contained page naming the
cases of each role) with summary.csv, volume_bias.csv, correlation.csv and study.json behind it. About 5
minutes on 2 otherwise idle CPU cores; options scale it up.

An OUT folder that is not empty is refused unless --overwrite. Ctrl-C stops cleanly and says what was kept
(study.json records it; a partial report is written when some sweeps finished).

Exit codes: 0 done, 1 failed, 2 bad usage or bad input (one line on stderr), 130 cancelled.

Example:
  autosegsens demo --out demo-output
  autosegsens demo --out big-study --epochs 60 --cases 16 --structures Brain Parotid_L Parotid_R \\
      SpinalCord Mandible Lens_L OpticNerve_L --device cuda --seed 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import InputError

NAME = "demo"
HELP = "run the whole threshold-sensitivity study (paper 000) in miniature on the phantom; writes report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..study import DEFAULT_STRUCTURES, StudyConfig

    d = StudyConfig()
    parser.add_argument("--out", type=Path, default=Path("demo-output"),
                        help="output folder (default ./demo-output; refused if not empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--data", type=Path, help="use this dataset folder instead of generating the phantom")
    parser.add_argument("--cases", type=int, default=d.cases, help=f"phantom cases (default {d.cases}; "
                        f"{100 * d.test_fraction:.0f} %% test, {100 * d.val_fraction:.0f} %% validation, the rest "
                        "training)")
    parser.add_argument("--structures", nargs="+", default=list(DEFAULT_STRUCTURES),
                        help=f"structures (default {' '.join(DEFAULT_STRUCTURES)})")
    parser.add_argument("--multi-label", action="store_true",
                        help="one multi-label model per loss (one sigmoid output per structure) instead of one "
                        "binary model per structure and loss")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs per model (default {d.epochs})")
    parser.add_argument("--samples-per-epoch", type=int, default=d.samples_per_epoch,
                        help=f"slices per epoch (default {d.samples_per_epoch})")
    parser.add_argument("--width", type=int, default=d.base_features,
                        help=f"U-Net base features (paper: 16; default {d.base_features})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("ROWS", "COLS"), default=d.resize,
                        help="network input size: axial slices are resized to it and the probability maps back "
                        "(default: " + ("none, the slices as they are" if d.resize is None else
                                        " ".join(map(str, d.resize))) + ")")
    parser.add_argument("--full-resolution", action="store_true", help="train on the slices as they are (no resize)")
    parser.add_argument("--lam", type=float, default=d.lam, help=f"lambda of BCE + lambda * 2D Dice (default {d.lam})")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="phantom grid in voxels (default 32 128 128)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the phantom, split and training "
                        f"(default {d.seed})")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--threads", type=int, default=d.num_threads,
                        help=f"CPU threads for torch (default {d.num_threads})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..html_report import fmt_num, fmt_pct
    from ..study import StudyConfig, run_study
    from .common import prepare_out_dir

    settings = {"structures": list(args.structures), "cases": args.cases, "epochs": args.epochs,
                "samples_per_epoch": args.samples_per_epoch, "base_features": args.width, "lam": args.lam,
                "lr": args.lr, "per_structure": not args.multi_label,
                "resize": None if args.full_resolution or args.resize is None else list(args.resize),
                "seed": args.seed, "device": args.device, "num_threads": args.threads,
                "phantom_shape": list(args.shape) if args.shape else None,
                "data_dir": str(args.data) if args.data else None}
    if args.data is not None and not args.data.is_dir():
        raise InputError(args.data, None, "an existing dataset folder", got="no such folder")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device", None, "cpu or auto (no CUDA GPU is available here)", got=args.device)
    cfg = StudyConfig.from_dict(settings, source="demo options")  # validates before anything is written
    out = prepare_out_dir(args.out, args.overwrite)
    progress = None if not args.no_progress else False
    t0 = time.monotonic()
    result = run_study(cfg, out, progress=progress)
    print(f"report: {result.report} ("
          + ("one binary model per structure and loss" if cfg.per_structure else "one multi-label model per loss")
          + ")")
    print("  thresholds chosen on the validation cases; Dice and losses on the test cases:")
    for row in result.rows:
        if row.get("dice_test_at_threshold") is None:
            continue
        print(f"  {row['structure']:<12s} {row['loss_label']:<28s} t {row['dice_threshold_chosen_on_validation']:.2f}: "
              f"test Dice {fmt_num(row['dice_test_at_threshold'])}; at 0.5 {fmt_num(row['dice_test_at_0.5'])} "
              f"(loss {fmt_pct(row['dice_test_loss_at_0.5'])}, 95 % CI "
              f"{fmt_pct(row['dice_test_loss_at_0.5_ci_low'])} to {fmt_pct(row['dice_test_loss_at_0.5_ci_high'])})")
    for key, c in result.correlation.items():
        v = c.get("validation", {})
        if v.get("pearson_r") is not None:
            print(f"  prominence vs chosen threshold ({key}): Pearson r {v['pearson_r']:.3f}, p {v['p_value']:.3g}")
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0
