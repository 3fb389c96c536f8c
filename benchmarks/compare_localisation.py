"""Benchmark: one-stage vs two-stage (localise, then segment) vs ROI-localised on the phantom's smallest
structure, as Smith et al. (paper 002) compare baseline, two stage and "ground truth localised".

Same training budget: every network (the one-stage model on full-resolution images, the localiser on the
low-resolution copies, the organ model on the padded crops) gets the same model, loss, epochs, samples
per epoch, batch size, learning rate and seed. The two-stage pipeline therefore trains two networks, the
ROI-localised one reuses the organ model with the reference organ's box (plus the same padding) instead
of the localiser's. Dice is computed on full-resolution test cases that no network saw (another phantom
seed), at threshold 0.5, with ``AutoSegSensitivity.metrics.dice``. Training times are printed too.

    python benchmarks/compare_localisation.py                 # defaults (a few minutes on 1 CPU core)
    python benchmarks/compare_localisation.py --epochs 20 --train-cases 8 --test-cases 4

``--anti-alias-study`` answers another question (issue 14, drift 6): does smoothing the images before the
localiser's downsampling (``make_lowres_image(anti_alias=True)``) change how often the localiser finds the
small structures? It trains two localisers with the same budget and seed, one on smoothed and one on
plain low-resolution copies, each on all the phantom's small structures (``--small``), and prints per
structure in how many test cases each found it (largest component at 0.5 not empty) and hit it (the
box scaled back to full resolution overlaps the reference organ).

    python benchmarks/compare_localisation.py --anti-alias-study --train-cases 8 --test-cases 8 \
        --epochs 60 --samples-per-epoch 128 --small SpinalCord,Parotid_L,OpticNerve_L,Lens_L   # ~4 min
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-cases", type=int, default=6)
    parser.add_argument("--test-cases", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples-per-epoch", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--model", default="unet2d")
    parser.add_argument("--model-kwargs", default='{"base_features": 8}', help="JSON")
    parser.add_argument("--loss", default="bce_dice2d")
    parser.add_argument("--padding", type=int, default=15)
    parser.add_argument("--factors", type=float, nargs=3, default=(3.0, 2.0, 2.0), metavar=("Z", "Y", "X"),
                        help="low-resolution divisors for the localiser (default 3 2 2, as the paper)")
    parser.add_argument("--structure", default=None, help="default: the smallest structure of the phantom")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--anti-alias-study", action="store_true",
                        help="compare localisers trained with and without anti-aliasing (see above)")
    parser.add_argument("--small", default="Lens_L,Lens_R,OpticNerve_L,OpticNerve_R",
                        help="structures of the anti-alias study")
    parser.add_argument("--no-anti-alias", action="store_true",
                        help="default comparison: localiser on plain (unsmoothed) low-resolution copies")
    args = parser.parse_args()
    if args.anti_alias_study:
        return anti_alias_study(args)

    import torch

    from AutoSegSensitivity import Box
    from AutoSegSensitivity.inference import load_checkpoint, predict_volume
    from AutoSegSensitivity.io import load_case, scan_dataset
    from AutoSegSensitivity.localisation import (make_crop_dataset, make_lowres_dataset, make_lowres_image,
                                                 two_stage_predict)
    from AutoSegSensitivity.metrics import dice
    from AutoSegSensitivity.phantom import make_phantom_dataset
    from AutoSegSensitivity.training import train

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_localisation_"))
    train_root, test_root = work / "train", work / "test"
    make_phantom_dataset(train_root, cases=args.train_cases, seed=args.seed)
    make_phantom_dataset(test_root, cases=args.test_cases, seed=args.seed + 1000)

    structure = args.structure
    test_cases = [load_case(c) for c in scan_dataset(test_root).cases]
    if structure is None:
        sizes = {}
        for _, seg in test_cases:
            for s in seg:
                sizes.setdefault(s.name, []).append(int(s.mask.sum()))
        structure = min((n for n in sizes if min(sizes[n]) > 0), key=lambda n: np.mean(sizes[n]))
    voxels = np.mean([seg.mask(structure).sum() for _, seg in test_cases])
    shape = test_cases[0][0].shape

    base = {
        "model": args.model, "model_kwargs": json.loads(args.model_kwargs), "loss": args.loss,
        "structures": [structure], "epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch,
        "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "device": "cpu",
        "num_threads": args.threads, "foreground_fraction": 0.8,
        "early_stopping": {"rule": "patience", "patience": args.epochs},  # keep the best validation Dice
    }

    def fit(name: str, data: Path, extra: dict) -> tuple:
        t0 = time.perf_counter()
        train({**base, **extra, "name": name}, data, work / "runs" / name, device="cpu", progress_bar=False)
        return load_checkpoint(work / "runs" / name / "best.pt"), time.perf_counter() - t0

    low_root, crop_root = work / "lowres", work / "crops"
    make_lowres_dataset(train_root, low_root, factors=tuple(args.factors), anti_alias=not args.no_anti_alias)
    make_crop_dataset(train_root, crop_root, structure, padding=args.padding, jitter=3, seed=args.seed)
    one, t_one = fit("one_stage", train_root, {})
    loc, t_loc = fit("localiser", low_root, {})
    organ, t_organ = fit("organ", crop_root, {"patch_size": [48, 48]} if args.model.endswith("2d") else {})

    rows = {"one-stage": [], "two-stage": [], "ROI-localised": []}
    found = 0
    low_max = []
    for image, seg in test_cases:
        ref = seg.mask(structure)
        p_one = predict_volume(one, image)[structure].array
        rows["one-stage"].append(dice(p_one >= 0.5, ref))
        res = two_stage_predict(image, loc, organ, structure, padding=args.padding, factors=tuple(args.factors),
                                anti_alias=not args.no_anti_alias)
        found += int(res.found)
        low = make_lowres_image(image, tuple(args.factors), anti_alias=not args.no_anti_alias)
        low_max.append(float(predict_volume(loc, low)[structure].array.max()))
        rows["two-stage"].append(dice(res.probability.array >= 0.5, ref))
        gt = two_stage_predict(image, Box.from_mask(ref), organ, structure, padding=args.padding)
        rows["ROI-localised"].append(dice(gt.probability.array >= 0.5, ref))

    print(f"phantom {shape} (z, y, x), {args.train_cases} training / {args.test_cases} test cases; "
          f"structure {structure} (~{voxels:.0f} voxels); model {args.model}, loss {args.loss}, "
          f"{args.epochs} epochs x {args.samples_per_epoch} samples per network; localiser factors (z, y, x) "
          f"{tuple(args.factors)}")
    print(f"training time (s): one-stage {t_one:.1f}; localiser {t_loc:.1f} + organ {t_organ:.1f}")
    print(f"localiser found the organ in {found}/{len(test_cases)} test cases "
          f"(max localiser probability per case: {' '.join(f'{v:.2f}' for v in low_max)})")
    print(f"{'method':<15} {'mean Dice':>9}  per case")
    for k, v in rows.items():
        print(f"{k:<15} {np.mean(v):9.3f}  " + " ".join(f"{x:.3f}" for x in v))
    m1 = np.mean(rows["one-stage"])
    for k in ("two-stage", "ROI-localised"):
        ratio = np.mean(rows[k]) / m1 if m1 > 0 else float("inf")
        print(f"Dice ratio {k} / one-stage: {ratio:.2f}")
    return 0


def anti_alias_study(args: argparse.Namespace) -> int:
    """Localisers on smoothed vs plain low-resolution copies: found / hit counts per small structure."""
    import torch

    from AutoSegSensitivity import Box
    from AutoSegSensitivity.inference import load_checkpoint, predict_volume
    from AutoSegSensitivity.io import load_case, scan_dataset
    from AutoSegSensitivity.localisation import (largest_component_box, make_lowres_dataset, make_lowres_image,
                                                 scale_box)
    from AutoSegSensitivity.phantom import make_phantom_dataset
    from AutoSegSensitivity.training import train

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    work = args.work or Path(tempfile.mkdtemp(prefix="anti_alias_study_"))
    train_root, test_root = work / "train", work / "test"
    make_phantom_dataset(train_root, cases=args.train_cases, seed=args.seed)
    make_phantom_dataset(test_root, cases=args.test_cases, seed=args.seed + 1000)
    small = [s.strip() for s in args.small.split(",") if s.strip()]
    tests = [load_case(c) for c in scan_dataset(test_root).cases]
    factors = tuple(args.factors)
    print(f"phantom {tests[0][0].shape} (z, y, x); {args.train_cases} training / {len(tests)} test cases; "
          f"localiser {args.model} {args.model_kwargs}, loss {args.loss}, {args.epochs} epochs x "
          f"{args.samples_per_epoch} samples, factors (z, y, x) {factors}; structures {', '.join(small)} "
          f"(mean voxels " + ", ".join(f"{np.mean([seg.mask(n).sum() for _, seg in tests]):.0f}" for n in small)
          + ")")
    table = {}
    for smooth in (True, False):
        name = "smoothed" if smooth else "plain"
        low_root = work / f"lowres_{name}"
        make_lowres_dataset(train_root, low_root, factors=factors, anti_alias=smooth)
        t0 = time.perf_counter()
        train({"model": args.model, "model_kwargs": json.loads(args.model_kwargs), "loss": args.loss,
               "structures": small, "epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch,
               "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "device": "cpu",
               "num_threads": args.threads, "foreground_fraction": 0.8, "name": f"localiser_{name}",
               "early_stopping": {"rule": "patience", "patience": args.epochs}},
              low_root, work / "runs" / name, device="cpu", progress_bar=False)
        t_train = time.perf_counter() - t0
        loc = load_checkpoint(work / "runs" / name / "best.pt")
        counts = {s: [0, 0, []] for s in small}
        for image, seg in tests:
            low = make_lowres_image(image, factors, anti_alias=smooth)
            maps = predict_volume(loc, low)  # one prediction per case; boxes as localise() makes them
            for structure in small:
                prob = maps[structure].array
                low_box = largest_component_box(prob, 0.5)
                box = None if low_box is None else scale_box(low_box, low.shape, image.shape).clip(image.shape)
                ref = seg.mask(structure)
                counts[structure][0] += box is not None
                counts[structure][1] += box is not None and ref.any() and not box.intersect(Box.from_mask(ref)).is_empty
                counts[structure][2].append(float(prob.max()))
        for structure in small:
            table[(name, structure)] = counts[structure]
        print(f"{name}: localiser trained in {t_train:.0f} s")
    n = len(tests)
    print(f"{'structure':<14} {'smoothed found':>14} {'hit':>4} {'max p':>6} {'plain found':>12} {'hit':>4} "
          f"{'max p':>6}   (of {n} test cases; max p: mean over cases of the map's maximum)")
    for structure in small:
        fs, hs, ms = table[("smoothed", structure)]
        fp, hp, mp = table[("plain", structure)]
        print(f"{structure:<14} {fs:>14} {hs:>4} {np.mean(ms):6.2f} {fp:>12} {hp:>4} {np.mean(mp):6.2f}")
    tot = {k: sum(table[(k, s)][1] for s in small) for k in ("smoothed", "plain")}
    print(f"hits in total: smoothed {tot['smoothed']}/{n * len(small)}, plain {tot['plain']}/{n * len(small)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
