"""Fuse several models' probability maps (rank-weighted, class-wise) and measure their disagreement.

Each --prob-dir holds prob_<structure>.nrrd files as `autosegsens predict` writes them, all on one grid
and with the same structures; the folder name is the model's name. For each structure the models are
weighted by their rank in ranking.json (best first: weights 5, 4, 3, 1, 1, 1 for ranks 1..6, and 1 for
ranks past the list; fewer models take the first weights), as in Lei et al.; without --ranking all
weights are equal.

ranking.json maps each structure to the prob dirs' folder names from best to worst:
  {"Parotid_L": ["slf1_a05", "slf2_a1", "slf3_a05"], "Brain": ["slf2_a1", "slf1_a05", "slf3_a05"]}

Writes, in --out:
  prob_<structure>.nrrd          fused probability maps
  entropy.nrrd                   voxel-wise entropy (nats, natural log) of the models' label votes (Lei
                                 Eq. 11); each model votes the most probable structure at or above
                                 --threshold, or background
  entropy_mean_<structure>.nrrd  binary entropy (nats) of the models' mean probability
  vvc.csv                        structure, mean_ml, std_ml, vvc (= std / mean of the models' volumes at
                                 --threshold; population standard deviation)
  weights.json                   the weight each model got for each structure

Example:
  autosegsens ensemble --prob-dir preds/slf1_a05 --prob-dir preds/slf2_a1 --prob-dir preds/slf3_a05 \\
      --ranking ranking.json --threshold 0.5 --out preds/ensemble
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_out_argument, output_folder

NAME = "ensemble"
HELP = "rank-weighted ensemble of probability maps, vote entropy and volume variation coefficient"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prob-dir", type=Path, action="append", required=True, dest="prob_dirs",
                        help="folder of prob_<structure>.nrrd from one model (repeat for each model)")
    parser.add_argument("--ranking", type=Path, help="JSON {structure: [folder names best to worst]}")
    parser.add_argument("--threshold", type=float, default=0.5, help="threshold for votes and volumes (default 0.5)")
    parser.add_argument("--weights", type=float, nargs="+", default=None, metavar="W",
                        help="weights for ranks 1, 2, ... (default 5 4 3 1 1 1)")
    add_out_argument(parser)


def read_prob_dir(folder: Path) -> dict:
    """``{structure: Volume}`` from the prob_<structure>.nrrd files of one folder."""
    from ..errors import InputError
    from ..io import read_volume

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, None, "a folder of prob_<structure>.nrrd files", got="no such folder")
    files = sorted(folder.glob("prob_*.nrrd"))
    if not files:
        raise InputError(folder, None, "prob_<structure>.nrrd files", got="none")
    return {f.name[len("prob_"):-len(".nrrd")]: read_volume(f) for f in files}


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text
    from ..ensemble import DEFAULT_RANK_WEIGHTS, run_ensemble
    from ..errors import InputError
    from ..io import write_volume

    names = [Path(d).resolve().name for d in args.prob_dirs]
    if len(set(names)) != len(names):
        raise InputError("--prob-dir", "folder names", "distinct folder names (they name the models)", got=names)
    ranking = None
    if args.ranking is not None:
        try:
            ranking = json.loads(Path(args.ranking).read_text())
        except json.JSONDecodeError as exc:
            raise InputError(args.ranking, None, "valid JSON", got=str(exc)) from None
        if not isinstance(ranking, dict) or not all(isinstance(v, list) for v in ranking.values()):
            raise InputError(args.ranking, None, "an object {structure: [folder names best to worst]}",
                             got=type(ranking).__name__)
    probs = {name: read_prob_dir(d) for name, d in zip(names, args.prob_dirs)}
    weights = tuple(args.weights) if args.weights else DEFAULT_RANK_WEIGHTS
    result = run_ensemble(probs, ranking, threshold=args.threshold, weights=weights)

    structures = list(result.fused)
    outputs = ([f"prob_{s}.nrrd" for s in structures] + [f"entropy_mean_{s}.nrrd" for s in structures]
               + ["entropy.nrrd", "vvc.csv", "weights.json"])
    out = args.out

    def owned(n: str) -> bool:  # this command's files (--overwrite replaces all of them)
        return n in ("entropy.nrrd", "vvc.csv", "weights.json") or n.startswith(("prob_", "entropy_mean_"))

    with output_folder(out, args.overwrite, tuple(outputs), owned=owned, last=("weights.json",)) as stage:
        for s in structures:
            write_volume(result.fused[s], stage / f"prob_{s}.nrrd")
            write_volume(result.mean_entropy[s], stage / f"entropy_mean_{s}.nrrd")
        write_volume(result.vote_entropy, stage / "entropy.nrrd")
        write_text(stage / "vvc.csv", result.vvc_csv())
        write_text(stage / "weights.json", json.dumps({"models": result.models, "threshold": args.threshold,
                                                       "weights": result.weights}, indent=2) + "\n")
    print(f"fused {len(structures)} structures from {len(names)} models into {out}")
    return 0
