"""A small synthetic tuning cohort written to disk, and brute-force references for the tuning tests.

Two structures whose best thresholds lie far from 0.5: ``Low`` (maps scaled so that the reference's edge
sits near p = 0.2) and ``High`` (edge near p = 0.8); per-case noise makes each case's optimum differ."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from AutoSegSensitivity.io import write_case, write_volume
from AutoSegSensitivity.segmentation import Segmentation
from AutoSegSensitivity.volume import Volume

SPACING_XYZ = (1.2, 0.9, 2.0)
ORIGIN = (-10.0, 5.0, 30.0)
SHAPE = (10, 20, 18)
TH = np.round(np.arange(0, 1.0001, 0.01), 2)


def case_arrays(i: int, shape=SHAPE) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """``(maps, masks)`` of case ``i``: float32 probabilities and bool references per structure."""
    rng = np.random.default_rng(100 + i)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    maps, masks = {}, {}
    for k, (name, lo, hi) in enumerate((("Low", 0.0, 0.4), ("High", 0.6, 1.0))):
        c = np.array([shape[0] / 2, 6 + 7 * k, 9], float) + rng.normal(0, 0.7, 3)
        r = np.sqrt(((z - c[0]) * 2.0) ** 2 + ((y - c[1]) * 0.9) ** 2 + ((x - c[2]) * 1.2) ** 2)
        radius = 4.5 + rng.uniform(-0.5, 0.5)
        ref = r <= radius
        bias = rng.normal(0, 0.6)  # each case over- or under-segments a little
        q = 1.0 / (1.0 + np.exp((r - radius - bias) / 1.2)) + rng.normal(0, 0.05, shape)
        q = np.clip(q, 0.0, 1.0)
        maps[name] = (lo + (hi - lo) * q).astype(np.float32)
        masks[name] = ref
    return maps, masks


def write_cohort(root: Path, n: int = 7, shape=SHAPE) -> Tuple[Path, Path]:
    """``root/probs/<case>/prob_<S>.nrrd`` and ``root/refs/<case>/{image.nrrd, segmentation.seg.nrrd}``."""
    probs, refs = root / "probs", root / "refs"
    for i in range(n):
        name = f"case{i:02d}"
        maps, masks = case_arrays(i, shape)
        image = Volume(np.zeros(shape, np.int16), SPACING_XYZ, ORIGIN)
        seg = Segmentation.on_grid(image)
        for s, m in masks.items():
            seg.add(s, m)
        write_case(refs / name, image, seg)
        for s, p in maps.items():
            write_volume(image.with_array(p), probs / name / f"prob_{s}.nrrd")
    return probs, refs


def brute_counts(maps: List[np.ndarray], masks: List[np.ndarray], th=TH) -> np.ndarray:
    """(cases, thresholds, 3) array of tp, npred, nref by plain loops over thresholds."""
    out = np.zeros((len(maps), len(th), 3), dtype=np.int64)
    for i, (p, r) in enumerate(zip(maps, masks)):
        for j, t in enumerate(th):
            m = p >= np.float32(t)
            out[i, j] = (np.count_nonzero(m & r), np.count_nonzero(m), np.count_nonzero(r))
    return out


def brute_dice(c: np.ndarray) -> float:
    tp, npred, nref = (float(v) for v in c)
    return 1.0 if npred + nref == 0 else 2 * tp / (npred + nref)


def brute_optimum(curve: List[float], th=TH) -> int:
    """Index of the best Dice; ties toward 0.5, then the lower threshold."""
    best = max(curve)
    cands = [j for j, v in enumerate(curve) if v >= best - 1e-12 * abs(best)]
    return min(cands, key=lambda j: (round(abs(th[j] - 0.5), 9), th[j]))


def brute_cv(counts: np.ndarray, folds: int, seed: int, n_boot: int, th=TH):
    """Fold of each case, fold thresholds, CV Dice at the fold thresholds and at 0.5, gain and its CI."""
    n = counts.shape[0]
    k = min(folds, n)
    fold = [i % k for i in range(n)]
    fold_j = []
    for f in range(k):
        curve = []
        for j in range(len(th)):
            tot = np.zeros(3)
            for i in range(n):
                if fold[i] != f:
                    tot += counts[i, j]
            curve.append(brute_dice(tot))
        fold_j.append(brute_optimum(curve, th))
    j05 = int(np.flatnonzero(np.isclose(th, 0.5))[0])

    def dice_of(sample):
        a, b = np.zeros(3), np.zeros(3)
        for i in sample:
            a += counts[i, fold_j[fold[i]]]
            b += counts[i, j05]
        return brute_dice(a), brute_dice(b)

    tuned, at05 = dice_of(range(n))
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    gains = []
    for row in draws:
        a, b = dice_of(row)
        gains.append(a - b)
    lo, hi = np.percentile(gains, [2.5, 97.5])
    return fold, [float(th[j]) for j in fold_j], tuned, at05, tuned - at05, float(lo), float(hi)


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def miscalibrated_arrays(i: int, T0: float, shape=(12, 32, 30), spacing_zyx=(2.0, 0.9, 1.3)):
    """Case ``i`` of a cohort made miscalibrated on purpose: calibrated maps ``q`` (a soft ellipsoid, clipped
    to [1e-3, 1 - 1e-3]) whose reference is drawn voxel by voxel as ``Bernoulli(q)``, then
    ``p = sigmoid(logit(q) * T0)`` so that temperature ``T0`` calibrates them again. ``(p float32, ref bool)``."""
    rng = np.random.default_rng(500 + i)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.normal(0, 0.5, 3)
    r = np.sqrt(sum(((a - ca) * s) ** 2 for a, ca, s in zip((z, y, x), c, spacing_zyx)))
    q = np.clip(1.0 / (1.0 + np.exp((r - 8.0 - rng.uniform(-1, 1)) / 2.0)), 1e-3, 1 - 1e-3)
    ref = rng.random(shape) < q
    p = 1.0 / (1.0 + np.exp(-np.log(q / (1 - q)) * T0))
    return p.astype(np.float32), ref


def write_miscalibrated_cohort(root: Path, n: int = 6, temperatures=(("Under", 0.5), ("Over", 2.0)),
                               shape=(12, 32, 30)) -> Tuple[Path, Path]:
    """``root/probs`` and ``root/refs`` (as :func:`write_cohort`) of structures miscalibrated with known
    temperatures (:func:`miscalibrated_arrays`); spacing (x, y, z) = (1.3, 0.9, 2.0) mm."""
    probs, refs = root / "probs", root / "refs"
    for i in range(n):
        name = f"case{i:02d}"
        image = Volume(np.zeros(shape, np.int16), (1.3, 0.9, 2.0), ORIGIN)
        seg = Segmentation.on_grid(image)
        for k, (s, t0) in enumerate(temperatures):
            p, ref = miscalibrated_arrays(10 * i + k, t0, shape)
            seg.add(s, ref)
            write_volume(image.with_array(p), probs / name / f"prob_{s}.nrrd")
        write_case(refs / name, image, seg)
    return probs, refs
