"""Benchmark: the threshold sweep against looping MONAI's metrics, and one mask pair against SimpleITK.

Prints two ratios in one run:

1. ``sweep_thresholds`` (101 thresholds, Dice + MSD + HD + HD95: the metrics MONAI has) against a loop that
   thresholds the probability map and calls MONAI's ``DiceMetric``, ``compute_hausdorff_distance`` (max and 95th percentile)
   and ``compute_average_surface_distance(symmetric=True)`` at every threshold, with the values asserted
   equal. If the MONAI loop would take too long, it is timed on every ``--monai-every``-th threshold and its
   time per threshold is extrapolated to the full grid (the output says so).
2. The cost of the surface Dice at tolerance (``nsd``, 2 mm): the sweep with and without it, the sweep of
   ``nsd`` alone, and DeepMind's reference package ``surface-distance`` (``compute_surface_distances`` +
   ``compute_surface_dice_at_tolerance``) looped over the thresholds (on every ``--monai-every``-th,
   extrapolated the same way), values asserted equal to 1e-4. Skipped with a note if the package is not
   installed (``pip install surface-distance``; on numpy 2 it needs ``np.Inf``, which the script restores).
3. ``compare_masks`` of one mask pair (threshold 0.5) against SimpleITK's ``HausdorffDistanceImageFilter``
   plus ``LabelOverlapMeasuresImageFilter`` (Dice and Jaccard asserted equal).

The volume is 150 x 512 x 512 voxels (z, y, x) at 2.5 x 0.977 x 0.977 mm by default, holding an ellipsoid of
about 50 ml with a bumpy (noisy) surface; the probability map is that noisy mask blurred with a Gaussian
and bent so that the best threshold is not 0.5. Use ``--small`` for a quick run (48 x 128 x 128).

    python benchmarks/bench_sweep.py            # full size
    python benchmarks/bench_sweep.py --small    # quick
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
from scipy import ndimage


def make_case(shape, spacing, volume_ml=50.0, seed=0):
    """A probability map (float32) and reference mask (bool) of a ~``volume_ml`` ellipsoid."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape)
    spacing = np.asarray(spacing, dtype=float)
    ratios = np.array([1.0, 1.5, 1.0])  # semi-axes proportions (z, y, x)
    scale = (volume_ml * 1000.0 / (4.0 / 3.0 * np.pi * np.prod(ratios))) ** (1.0 / 3.0)
    semi = ratios * scale  # mm
    extent = shape * spacing
    semi = np.minimum(semi, 0.3 * extent)
    centre = shape / 2.0 + rng.uniform(-3, 3, 3)
    half = np.ceil(semi * 1.6 / spacing).astype(int) + 6
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int), shape)
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing)], indexing="ij")
    r = np.sqrt(sum((g / s) ** 2 for g, s in zip(grids, semi)))
    bumps = ndimage.gaussian_filter(rng.standard_normal(r.shape), sigma=(1.5, 4, 4))
    bumps /= np.abs(bumps).max() + 1e-12
    ref_sub = r < 1.0
    noisy = r < 1.0 + 0.15 * bumps
    flips = rng.random(r.shape) < 0.02
    near = np.abs(r - 1.0) < 0.1
    noisy ^= flips & near
    prob_sub = ndimage.gaussian_filter(noisy.astype(np.float32), sigma=(0.8, 2.0, 2.0))
    prob_sub = np.clip(prob_sub, 0, 1) ** 0.7  # under-confident: the best threshold is below 0.5
    prob = np.zeros(tuple(shape), dtype=np.float32)
    ref = np.zeros(tuple(shape), dtype=bool)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    prob[box] = prob_sub
    ref[box] = ref_sub
    return prob, ref


def monai_metrics(pred, ref_t, spacing):
    """Dice, MSD, HD, HD95 of one thresholded mask with MONAI (values as float)."""
    import torch
    from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(pred)[None, None].float()
    dm = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    d = float(dm(p, ref_t).item())
    hd = float(compute_hausdorff_distance(p, ref_t, include_background=True, spacing=spacing).item())
    hd95 = float(compute_hausdorff_distance(p, ref_t, include_background=True, spacing=spacing, percentile=95).item())
    msd = float(compute_average_surface_distance(p, ref_t, include_background=True, symmetric=True,
                                                 spacing=spacing).item())
    return d, msd, hd, hd95


DIST = ("dice", "msd", "hd", "hd95")


def _close(a, b, rtol=2e-5, atol=2e-5):
    if np.isinf(a) or np.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="150,512,512", help="volume shape z,y,x (default 150,512,512)")
    ap.add_argument("--spacing", default="2.5,0.977,0.977", help="spacing z,y,x in mm")
    ap.add_argument("--small", action="store_true", help="quick run on 48 x 128 x 128 (12 ml structure)")
    ap.add_argument("--monai-every", type=int, default=10,
                    help="time MONAI on every N-th threshold and extrapolate (1 = all 101; default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats of the fast timings (best is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for MONAI (default 1)")
    ap.add_argument("--device", default="auto",
                    help="sweep device: auto (CUDA if present, else numpy/scipy), numpy, cpu, cuda")
    args = ap.parse_args(argv)

    import torch
    import SimpleITK as sitk

    from AutoSegSensitivity.metrics import compare_masks
    from AutoSegSensitivity.sweep import DEFAULT_THRESHOLDS, sweep_thresholds

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    shape = tuple(int(v) for v in args.shape.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    volume_ml = 50.0
    if args.small:
        shape, volume_ml = (48, 128, 128), 12.0
    prob, ref = make_case(shape, spacing, volume_ml=volume_ml)
    vox_ml = np.prod(spacing) / 1000.0
    print(f"volume {shape} (z,y,x) at {spacing} mm; structure {ref.sum() * vox_ml:.1f} ml; "
          f"{DEFAULT_THRESHOLDS.size} thresholds; sweep device {args.device} "
          f"(CUDA available: {torch.cuda.is_available()}); torch threads {args.threads}")

    # ---- 1. sweep vs MONAI loop -----------------------------------------------------------------------
    best = np.inf
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        res = sweep_thresholds([prob], [ref], [spacing], device=args.device, metrics=DIST)
        best = min(best, time.perf_counter() - t0)
    t_sweep = best
    subset = np.arange(0, DEFAULT_THRESHOLDS.size, max(1, args.monai_every))
    ref_t = torch.from_numpy(ref)[None, None].float()
    # warm up MONAI (imports, first-call set-up) so that it is not charged to the first threshold
    tiny = np.zeros((8, 8, 8), bool)
    tiny[2:5, 2:6, 3:6] = True
    monai_metrics(tiny, torch.from_numpy(np.roll(tiny, 1, axis=2))[None, None].float(), spacing)
    times = {}
    for i in subset:
        t = DEFAULT_THRESHOLDS[i]
        t0 = time.perf_counter()
        pred = prob >= np.float32(t)
        vals = monai_metrics(pred, ref_t, spacing)
        times[i] = time.perf_counter() - t0
        ours = [res.pooled[m][i] for m in ("dice", "msd", "hd", "hd95")]
        for name, a, b in zip(("dice", "msd", "hd", "hd95"), ours, vals):
            if not _close(a, b):
                print(f"MISMATCH at t={t}: {name} ours {a} MONAI {b}")
                return 1
    # extrapolate: thresholds that select the whole image (t <= min p) cost more than the others, so each
    # kind is extrapolated with its own mean time
    whole = DEFAULT_THRESHOLDS.astype(np.float32) <= prob.min()
    t_monai = 0.0
    for kind in (True, False):
        measured = [times[i] for i in subset if whole[i] == kind]
        count = int((whole == kind).sum())
        if count:
            t_monai += (np.mean(measured) if measured else np.mean(list(times.values()))) * count
    note = "" if subset.size == DEFAULT_THRESHOLDS.size else (
        f" (MONAI timed on {subset.size} of {DEFAULT_THRESHOLDS.size} thresholds "
        f"{DEFAULT_THRESHOLDS[subset].tolist()}, extrapolated per threshold; whole-image thresholds "
        f"{int(whole.sum())} of {whole.size}; per threshold {1000 * max(times.values()):.0f} ms at most, "
        f"{1000 * np.median(list(times.values())):.0f} ms median)")
    print(f"values equal to MONAI at {subset.size} thresholds (Dice, MSD, HD, HD95; float32 tolerance)")
    print(f"sweep: AutoSegSensitivity {t_sweep:.3f} s, MONAI loop {t_monai:.1f} s{note}")
    print(f"RATIO sweep vs MONAI loop: {t_monai / t_sweep:.1f}x (target >= 50x)")

    # ---- 2. the cost of NSD ---------------------------------------------------------------------------
    tau = 2.0
    timed = {}
    # all three timed here, after the warm-up of section 1, each the best of --repeat runs
    for label, metrics in (("four", DIST), ("all five", ("dice", "nsd") + DIST[1:]), ("nsd only", ("nsd",))):
        best = np.inf
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            res_n = sweep_thresholds([prob], [ref], [spacing], device=args.device, metrics=metrics,
                                     nsd_tolerance=tau)
            best = min(best, time.perf_counter() - t0)
        timed[label] = best
    print(f"NSD cost: sweep Dice+MSD+HD+HD95 {timed['four']:.3f} s, with NSD {timed['all five']:.3f} s "
          f"({timed['all five'] - timed['four']:+.3f} s, {timed['all five'] / timed['four']:.2f}x), NSD alone "
          f"{timed['nsd only']:.3f} s ({1000 * timed['nsd only'] / DEFAULT_THRESHOLDS.size:.1f} ms per threshold)")
    try:
        from surface_distance import metrics as sd_metrics
    except ImportError:
        print("surface-distance not installed: no reference timing (pip install surface-distance)")
    else:
        if not hasattr(np, "Inf"):
            np.Inf = np.inf  # the package (0.1) still writes np.Inf, which numpy 2 removed
        sd_times = {}
        for i in subset:
            t = DEFAULT_THRESHOLDS[i]
            t0 = time.perf_counter()
            d = sd_metrics.compute_surface_distances(ref, prob >= np.float32(t), spacing)
            v = float(sd_metrics.compute_surface_dice_at_tolerance(d, tau))
            sd_times[i] = time.perf_counter() - t0
            if not _close(res_n.pooled["nsd"][i], v, 0.0, 1e-4):
                print(f"MISMATCH at t={t}: nsd ours {res_n.pooled['nsd'][i]} surface-distance {v}")
                return 1
        t_sd = 0.0
        for kind in (True, False):
            measured = [sd_times[i] for i in subset if whole[i] == kind]
            count = int((whole == kind).sum())
            if count:
                t_sd += (np.mean(measured) if measured else np.mean(list(sd_times.values()))) * count
        print(f"NSD values equal to surface-distance (to 1e-4) at {subset.size} thresholds; surface-distance "
              f"loop {t_sd:.1f} s (extrapolated as above; median {1000 * np.median(list(sd_times.values())):.0f} ms "
              f"per threshold)")
        print(f"RATIO NSD sweep vs surface-distance loop: {t_sd / timed['nsd only']:.1f}x")

    # ---- 3. one pair vs SimpleITK ---------------------------------------------------------------------
    pred = prob >= np.float32(0.5)
    best = np.inf
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        ours = compare_masks(pred, ref, spacing)
        best = min(best, time.perf_counter() - t0)
    t_ours = best
    img_p = sitk.GetImageFromArray(pred.astype(np.uint8))
    img_r = sitk.GetImageFromArray(ref.astype(np.uint8))
    for img in (img_p, img_r):
        img.SetSpacing(spacing[::-1])
    best = np.inf
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        hdf = sitk.HausdorffDistanceImageFilter()
        hdf.Execute(img_r, img_p)
        lom = sitk.LabelOverlapMeasuresImageFilter()
        lom.Execute(img_r, img_p)
        best = min(best, time.perf_counter() - t0)
    t_sitk = best
    assert _close(ours["dice"], lom.GetDiceCoefficient(), 1e-12, 1e-12), (ours["dice"], lom.GetDiceCoefficient())
    assert _close(ours["jaccard"], lom.GetJaccardCoefficient(), 1e-12, 1e-12)
    print(f"pair metrics: Dice {ours['dice']:.6f} (SimpleITK {lom.GetDiceCoefficient():.6f}), HD {ours['hd_mm']:.4f} mm "
          f"(SimpleITK voxel-set HD {hdf.GetHausdorffDistance():.4f} mm), HD95 {ours['hd95_mm']:.4f}, MSD {ours['msd_mm']:.4f}")
    print(f"pair: AutoSegSensitivity compare_masks {t_ours * 1000:.1f} ms (all 13 metrics, NSD included), "
          f"SimpleITK Hausdorff + LabelOverlap {t_sitk * 1000:.1f} ms")
    print(f"RATIO pair vs SimpleITK: {t_sitk / t_ours:.1f}x (target > 1x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
