"""Held-out evaluation of a threshold study, as paper 000 (Bice et al. 2021) did it: cases split into
training / validation / test, thresholds chosen on validation, errors measured on test.

* :func:`split_roles`: the deterministic three-way split of case names (seeded, documented below).
* :func:`dice_counts`: per threshold, the voxel counts behind pooled Dice (intersection, predicted) and the
  reference count of one case; :func:`counts_table` / :func:`read_counts` write and read them
  (``counts_per_case.csv`` beside a test sweep), so a report can recompute pooled Dice of any resample of the
  test cases without the probability maps.
* :func:`pooled_dice`: pooled Dice (paper Eq. 1) from summed counts, empty on both sides = 1 (as the sweep).
* :func:`bootstrap_ci`: a seeded percentile bootstrap over cases.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

__all__ = ["ROLES", "split_roles", "dice_counts", "counts_table", "read_counts", "pooled_dice", "bootstrap_ci",
           "N_BOOTSTRAP", "relative_dice_loss"]

ROLES = ("training", "validation", "test")
N_BOOTSTRAP = 2000
"""Bootstrap resamples of the test cases for every confidence interval of a study."""


def split_roles(names: Sequence[str], val_fraction: float, test_fraction: float, seed: int,
                source: str = "study") -> Dict[str, List[str]]:
    """Split case names into ``{"training", "validation", "test"}`` (each sorted by name, disjoint, covering
    all names). Rule: names sorted, permuted with ``numpy.random.default_rng(seed)``; the first
    ``n_test = max(1, round(test_fraction * n))`` are test, the next ``n_val = max(1, round(val_fraction * n))``
    validation, the rest training. The same names and seed always give the same split. Fewer than one
    training case left is an :class:`InputError` naming ``source``."""
    names = sorted(set(str(n) for n in names))
    n = len(names)
    n_test = max(1, int(round(float(test_fraction) * n)))
    n_val = max(1, int(round(float(val_fraction) * n)))
    if n - n_test - n_val < 1:
        raise InputError(source, "cases", f"at least {n_test + n_val + 1} cases for {n_test} test, {n_val} "
                         "validation and one training case", got=n)
    perm = [names[i] for i in np.random.default_rng(int(seed)).permutation(n)]
    return {"training": sorted(perm[n_test + n_val:]), "validation": sorted(perm[n_test:n_test + n_val]),
            "test": sorted(perm[:n_test])}


def dice_counts(prob: np.ndarray, ref: np.ndarray, thresholds: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
    """For one case: per threshold ``t``, the intersection and predicted voxel counts of ``prob >= t`` (``t``
    compared in the map's floating type, as :func:`AutoSegSensitivity.sweep.apply_threshold`) and the
    reference voxel count. Returns ``(intersection[n], predicted[n], reference)`` as int64 / int."""
    p = np.asarray(prob)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float32)
    r = np.asarray(ref, dtype=bool)
    t = np.asarray(thresholds, dtype=float).astype(p.dtype)
    all_sorted = np.sort(p, axis=None)
    in_ref = np.sort(p[r], axis=None)
    predicted = all_sorted.size - np.searchsorted(all_sorted, t, side="left")
    inter = in_ref.size - np.searchsorted(in_ref, t, side="left")
    return inter.astype(np.int64), predicted.astype(np.int64), int(in_ref.size)


def counts_table(cases: Sequence[Tuple[str, np.ndarray, np.ndarray]], thresholds: np.ndarray) -> List[Dict[str, object]]:
    """Rows ``case, threshold, intersection, predicted, reference`` (voxel counts) for ``(name, prob, ref)``
    cases over ``thresholds``: the table behind pooled Dice of any subset of the cases."""
    th = np.asarray(thresholds, dtype=float)
    rows: List[Dict[str, object]] = []
    for name, prob, ref in cases:
        inter, pred, nref = dice_counts(prob, ref, th)
        rows += [{"case": name, "threshold": float(t), "intersection": int(i), "predicted": int(p),
                  "reference": nref} for t, i, p in zip(th, inter, pred)]
    return rows


def read_counts(rows: Sequence[Mapping[str, str]], source: str = "counts_per_case.csv"
                ) -> Tuple[np.ndarray, Dict[str, Dict[str, np.ndarray]]]:
    """Back from :func:`counts_table` rows (as read from CSV): ``(thresholds, {case: {"intersection",
    "predicted", "reference"}})``, every case on the same thresholds."""
    by_case: Dict[str, List[Mapping[str, str]]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    th: Optional[np.ndarray] = None
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for case, rs in by_case.items():
        rs = sorted(rs, key=lambda r: float(r["threshold"]))
        t = np.array([float(r["threshold"]) for r in rs])
        if th is None:
            th = t
        elif t.shape != th.shape or not np.allclose(t, th, atol=1e-9):
            raise InputError(source, "threshold", "the same thresholds for every case", got=f"case {case} differs")
        out[case] = {k: np.array([int(float(r[k])) for r in rs], dtype=np.int64)
                     for k in ("intersection", "predicted", "reference")}
    return (th if th is not None else np.zeros(0)), out


def pooled_dice(intersection: np.ndarray, predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Pooled Dice ``2 sum(I) / (sum(P) + sum(R))`` over the first axis (cases); 1 where both sums are 0."""
    i = np.asarray(intersection, dtype=float).sum(axis=0)
    den = np.asarray(predicted, dtype=float).sum(axis=0) + np.asarray(reference, dtype=float).sum(axis=0)
    return np.where(den > 0, 2.0 * i / np.maximum(den, 1), 1.0)


def bootstrap_ci(statistic: Callable[[np.ndarray], np.ndarray], n_cases: int, seed: int, n_boot: int = N_BOOTSTRAP,
                 level: float = 0.95) -> Tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap over cases: ``statistic(idx)`` gets an ``(n_boot, n_cases)`` array of case indices
    (resamples with replacement drawn by ``numpy.random.default_rng(seed)``) and returns one value per row;
    non-finite values are dropped. Returns ``(low, high)`` at ``level``, or ``(None, None)`` without cases or
    finite values."""
    if n_cases < 1:
        return None, None
    idx = np.random.default_rng(int(seed)).integers(0, n_cases, size=(int(n_boot), int(n_cases)))
    vals = np.asarray(statistic(idx), dtype=float).ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return None, None
    a = (1.0 - float(level)) / 2.0
    lo, hi = np.quantile(vals, [a, 1.0 - a])
    return float(lo), float(hi)


def relative_dice_loss(dice_ref: np.ndarray, dice: np.ndarray) -> np.ndarray:
    """``(D_ref - D) / D_ref`` element-wise (as :func:`AutoSegSensitivity.sweep.relative_loss` for Dice): 0
    where equal, ``inf`` where ``D_ref`` is 0 and ``D`` differs."""
    d_ref = np.asarray(dice_ref, dtype=float)
    d = np.asarray(dice, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(d_ref > 0, (d_ref - d) / np.where(d_ref > 0, d_ref, 1.0), np.inf)
    return np.where(d == d_ref, 0.0, out)
