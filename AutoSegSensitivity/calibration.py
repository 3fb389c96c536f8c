"""Calibration of probability maps per structure: reliability, ECE, Brier, NLL and temperature scaling.

An optimum threshold far from 0.5 says a structure's maps are miscalibrated; a threshold fixes the contour
but not the probabilities people show as uncertainty or feed to an ensemble. This module measures the
calibration of a structure's maps over a cohort and fits one temperature ``T`` per structure:
``p' = sigmoid(logit(p) / T)`` (``T > 1`` softens over-confident maps, ``T < 1`` sharpens under-confident
ones), chosen to minimise the negative log-likelihood.

**Voxels used** (all voxels of a CT are dominated by easy background): the union of the reference dilated
by ``margin_mm`` (default 10 mm; Euclidean distance between voxel centres in mm, the spacing of each axis
honoured) and the voxels with ``p >= 0.01``. Probabilities are clipped to ``[1e-6, 1 - 1e-6]`` (so the
NLL is finite); the logit range is then ``[-L, L]`` with ``L = logit(1 - 1e-6) ~ 13.8``.

**Single pass, mergeable statistics.** Of each case and structure only a fine histogram on the logit scale
is kept (:class:`CalibrationCounts`): ``N_FINE = 2000`` equal bins of width ``w = 2L / N_FINE ~ 0.0138``
over ``[-L, L]``, per bin and per label (reference-negative / -positive) the voxel count and the sum of the
logits. Histograms of cases add up, so folds, shards and the cohort are sums.

**The approximation and its bound.** Every statistic is a mean over voxels of ``f(z / T)`` for a smooth
``f`` (``z`` the logit); it is computed with every voxel of a (bin, label) cell at the cell's mean logit
``z̄``. For a cell whose logits lie within a width ``w``, ``|mean f(z) - f(z̄)| <= sup|f''| w² / 8`` (Taylor
about the mean, the linear term vanishes), so the error of the cohort mean is at most:

* NLL (``softplus(±z/T)``, ``f'' <= 1/(4T²)``): ``w² / (32 T²)`` ~ ``6e-6 / T²``;
* Brier (``(sigmoid(z/T) - y)²``, ``|f''| <= 0.318/T²``): ``0.318 w² / (8 T²)`` ~ ``7.6e-6 / T²``;
* mean predicted probability of a reliability bin, hence ECE (``|sigmoid''| <= 0.0962/T²``):
  ``0.0962 w² / (8 T²)`` ~ ``2.3e-6 / T²``.

:data:`ERROR_BOUNDS` holds these; Testing/Python/test_calibration.py checks them against a brute-force
computation over the full voxels. The temperature is the exact minimiser of the histogram NLL (convex in
``1/T``; found by root finding on its derivative, bounded to ``[0.01, 100]``).

**Reliability diagram**: equal-mass bins (``RELIABILITY_BINS`` = 15 by default) of the voxels sorted by
the predicted probability; a bin is a union of whole fine bins (a fine bin goes to the reliability bin of
its middle voxel, so heavily tied probabilities can leave a bin empty: empty bins are dropped), with per
bin the voxel count, the mean predicted probability and the observed frequency of the reference.
``ECE = Σ_b (n_b / N) |mean p_b - observed_b|``.

**Cross-validation**, like the thresholds of :mod:`AutoSegSensitivity.tune`: cases sorted by name, case
``i`` in fold ``i mod K``; fold ``k``'s temperature is fitted on the other folds; the held-out numbers pool
every case at its fold's temperature (before = ``T = 1``, which needs no fit). A threshold ``t`` on the
maps is the threshold ``t' = sigmoid(logit(t) / T)`` on the calibrated maps (the map is transformed
monotonically), so where the Dice optimum of the calibrated maps lies needs no second pass.

**What a temperature cannot do**: ``sigmoid(logit(0.5) / T) = 0.5`` for every ``T``, so temperature scaling
moves an optimum toward 0.5 only when ``T > 1`` (over-confident maps) and never across 0.5. Maps whose
optimum lies far below 0.5 with a fitted ``T < 1`` are shifted, not merely too soft (the demo's BCE maps of
Lens_L: ``T`` about 0.2 to 0.5 and the optimum moves further from 0.5); fixing that needs a bias on the
logit (Platt scaling, ``sigmoid(a logit(p) + b)``), which is not fitted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "EPS", "LOW_P", "N_FINE", "LOGIT_MAX", "BIN_WIDTH", "DEFAULT_MARGIN_MM", "RELIABILITY_BINS", "T_BOUNDS",
    "ERROR_BOUNDS", "CalibrationCounts", "ReliabilityBin", "CalibrationMetrics", "StructureCalibration",
    "calibration_region", "case_calibration", "fit_temperature", "metrics_at", "calibrate_structure",
    "calibrate_threshold", "calibrate_array", "logit", "sum_counts", "reliability_rows", "calibrated_thresholds",
    "calibrated_volumes", "write_calibrated_maps",
]

EPS = 1e-6
LOW_P = 0.01
N_FINE = 2000
LOGIT_MAX = math.log((1.0 - EPS) / EPS)
BIN_WIDTH = 2.0 * LOGIT_MAX / N_FINE
DEFAULT_MARGIN_MM = 10.0
RELIABILITY_BINS = 15
T_BOUNDS = (0.01, 100.0)
#: per-voxel bounds of the histogram approximation at T = 1 (divide by T² for another T); see the docstring
ERROR_BOUNDS = {"nll": BIN_WIDTH ** 2 / 32.0, "brier": 0.318 * BIN_WIDTH ** 2 / 8.0,
                "ece": 0.0962 * BIN_WIDTH ** 2 / 8.0}


def logit(p: Union[float, np.ndarray]) -> Union[float, np.ndarray]:
    """``log(p / (1 - p))`` (``-inf`` at 0, ``inf`` at 1)."""
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-np.asarray(p, dtype=np.float64))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


@dataclass
class CalibrationCounts:
    """Fine logit histogram of one structure over some voxels (one case, or a sum of cases): ``n[y, b]``
    voxels of label ``y`` (0: outside the reference, 1: inside) whose clipped logit falls in fine bin ``b``,
    ``s[y, b]`` the sum of their logits."""

    n: np.ndarray  # (2, N_FINE) int64
    s: np.ndarray  # (2, N_FINE) float64

    @classmethod
    def empty(cls) -> "CalibrationCounts":
        return cls(np.zeros((2, N_FINE), np.int64), np.zeros((2, N_FINE), np.float64))

    def __add__(self, other: "CalibrationCounts") -> "CalibrationCounts":
        return CalibrationCounts(self.n + other.n, self.s + other.s)

    @property
    def total(self) -> int:
        return int(self.n.sum())


def sum_counts(items: Sequence[CalibrationCounts]) -> CalibrationCounts:
    """The sum of histograms (an empty one for no items)."""
    out = CalibrationCounts.empty()
    for c in items:
        out = out + c
    return out


def _region_indices(prob: np.ndarray, ref: np.ndarray, spacing: Sequence[float], margin_mm: float) -> np.ndarray:
    """Sorted flat indices of :func:`calibration_region` (a few passes over the volume; the distance
    transform only over the reference's bounding box padded by the margin)."""
    from scipy import ndimage

    p = np.asarray(prob)
    region = p >= np.asarray(LOW_P, dtype=p.dtype)
    ref_idx = np.flatnonzero(ref.ravel())
    if ref_idx.size:
        coords = np.unravel_index(ref_idx, ref.shape)
        sp = np.asarray(spacing, dtype=float)
        pad = np.floor(float(margin_mm) / sp).astype(int)
        box = tuple(slice(max(int(c.min()) - k, 0), min(int(c.max()) + 1 + k, n))
                    for c, k, n in zip(coords, pad, ref.shape))
        sub = ref[box]
        region[box] |= ndimage.distance_transform_edt(~sub, sampling=sp) <= float(margin_mm) if float(margin_mm) > 0 else sub
    return np.flatnonzero(region)


def calibration_region(prob: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                       margin_mm: float = DEFAULT_MARGIN_MM) -> np.ndarray:
    """The voxels calibration is measured on (bool, the shape of ``prob``): ``p >= 0.01`` or within
    ``margin_mm`` (Euclidean, between voxel centres, ``spacing`` in mm per axis z, y, x) of the reference."""
    region = np.zeros(np.asarray(prob).shape, bool)
    region.ravel()[_region_indices(prob, np.asarray(ref, dtype=bool), spacing, margin_mm)] = True
    return region


def case_calibration(prob: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                     margin_mm: float = DEFAULT_MARGIN_MM) -> CalibrationCounts:
    """The fine logit histogram of one map ``prob`` (z, y, x, values in [0, 1], already checked) against
    its reference mask ``ref`` over :func:`calibration_region`."""
    p = np.asarray(prob)
    r = np.asarray(ref, dtype=bool)
    idx = _region_indices(p, r, spacing, margin_mm)
    pv = np.clip(p.ravel()[idx].astype(np.float64), EPS, 1.0 - EPS)
    yv = r.ravel()[idx]
    z = np.log(pv / (1.0 - pv))
    cell = np.clip(((z + LOGIT_MAX) / BIN_WIDTH).astype(np.int64), 0, N_FINE - 1) + N_FINE * yv
    n = np.bincount(cell, minlength=2 * N_FINE).reshape(2, N_FINE)
    s = np.bincount(cell, weights=z, minlength=2 * N_FINE).reshape(2, N_FINE)
    return CalibrationCounts(n.astype(np.int64), s)


# --------------------------------------------------------------------------------------------------------
# statistics from histograms
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Cells:
    """Fine bins as (bin, label) cells: ``key`` (the ordering value of the bin, shared by its two labels),
    ``z`` (the cell's mean logit, already divided by its temperature), ``n``, ``y``."""

    key: np.ndarray
    z: np.ndarray
    n: np.ndarray
    y: np.ndarray
    half: np.ndarray  # half the bin width on the scaled logit axis


def _cells(counts: CalibrationCounts, temperature: float = 1.0) -> _Cells:
    centres = -LOGIT_MAX + (np.arange(N_FINE) + 0.5) * BIN_WIDTH
    keys, zs, ns, ys, hs = [], [], [], [], []
    for y in (0, 1):
        nz = np.flatnonzero(counts.n[y])
        keys.append(centres[nz] / temperature)
        zs.append(counts.s[y, nz] / counts.n[y, nz] / temperature)
        ns.append(counts.n[y, nz])
        ys.append(np.full(nz.size, y, np.int8))
        hs.append(np.full(nz.size, BIN_WIDTH / 2.0 / temperature))
    return _Cells(np.concatenate(keys), np.concatenate(zs), np.concatenate(ns).astype(np.float64),
                  np.concatenate(ys), np.concatenate(hs))


def _join(parts: Sequence[_Cells]) -> _Cells:
    return _Cells(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("key", "z", "n", "y", "half")))


@dataclass
class ReliabilityBin:
    """One equal-mass bin: voxel count, the range of (clipped) predicted probabilities its fine bins span,
    the mean predicted probability and the observed frequency of the reference."""

    count: int
    p_low: float
    p_high: float
    mean_p: float
    observed: float


@dataclass
class CalibrationMetrics:
    """NLL (nats per voxel), Brier score, ECE and the reliability bins over some voxels."""

    n_voxels: int
    nll: float
    brier: float
    ece: float
    bins: List[ReliabilityBin] = field(default_factory=list)


def _metrics(cells: _Cells, n_bins: int = RELIABILITY_BINS) -> CalibrationMetrics:
    total = float(cells.n.sum())
    if total == 0:
        return CalibrationMetrics(0, math.nan, math.nan, math.nan, [])
    z, n, y = cells.z, cells.n, cells.y.astype(np.float64)
    q = _sigmoid(z)
    nll = float(np.sum(n * np.logaddexp(0.0, np.where(y > 0, -z, z))) / total)
    brier = float(np.sum(n * (q - y) ** 2) / total)
    # equal-mass bins over whole fine bins: group the cells of one key, order by key
    ukey, inv = np.unique(cells.key, return_inverse=True)
    gn = np.bincount(inv, weights=n, minlength=ukey.size)
    mid = np.cumsum(gn) - gn / 2.0
    gbin = np.minimum((n_bins * mid / total).astype(np.int64), n_bins - 1)
    b = gbin[inv]
    cnt = np.bincount(b, weights=n, minlength=n_bins)
    sq = np.bincount(b, weights=n * q, minlength=n_bins)
    sy = np.bincount(b, weights=n * y, minlength=n_bins)
    bins: List[ReliabilityBin] = []
    ece = 0.0
    for k in np.flatnonzero(cnt):
        sel = b == k
        mp, ob = sq[k] / cnt[k], sy[k] / cnt[k]
        ece += cnt[k] / total * abs(mp - ob)
        lo = float(_sigmoid(np.min(cells.key[sel] - cells.half[sel])))
        hi = float(_sigmoid(np.max(cells.key[sel] + cells.half[sel])))
        bins.append(ReliabilityBin(int(round(cnt[k])), lo, hi, float(mp), float(ob)))
    return CalibrationMetrics(int(round(total)), nll, brier, float(ece), bins)


def metrics_at(counts: CalibrationCounts, temperature: float = 1.0, n_bins: int = RELIABILITY_BINS) -> CalibrationMetrics:
    """NLL, Brier, ECE and reliability bins of the voxels of ``counts`` with the maps scaled by ``temperature``."""
    return _metrics(_cells(counts, temperature), n_bins)


def fit_temperature(counts: CalibrationCounts) -> float:
    """The temperature minimising the NLL of ``counts`` (exact for the histogram; ``nan`` without voxels or
    without both labels, clamped to :data:`T_BOUNDS` when the optimum lies beyond them)."""
    from scipy.optimize import brentq

    cells = _cells(counts)
    if not (cells.n[cells.y == 1].sum() > 0 and cells.n[cells.y == 0].sum() > 0):
        return math.nan
    z, n, sgn = cells.z, cells.n, np.where(cells.y > 0, -1.0, 1.0)

    def grad(log_beta: float) -> float:  # d NLL / d beta (beta = 1/T), increasing in beta
        beta = math.exp(log_beta)
        return float(np.sum(n * sgn * z * _sigmoid(sgn * beta * z)))

    lo, hi = math.log(1.0 / T_BOUNDS[1]), math.log(1.0 / T_BOUNDS[0])
    if grad(lo) >= 0:
        return T_BOUNDS[1]
    if grad(hi) <= 0:
        return T_BOUNDS[0]
    return float(1.0 / math.exp(brentq(grad, lo, hi, xtol=1e-12, rtol=1e-12)))


def calibrate_threshold(t: float, temperature: float) -> float:
    """The threshold on calibrated maps equivalent to ``t`` on the maps: ``sigmoid(logit(t) / T)``."""
    if not (temperature and math.isfinite(temperature)):
        return float(t)
    if t <= 0.0 or t >= 1.0:
        return float(t)
    return float(_sigmoid(np.asarray(logit(float(t)) / temperature)))


def calibrate_array(prob: np.ndarray, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)`` as float32 (0 and 1 stay 0 and 1; monotone, so thresholds map by
    :func:`calibrate_threshold`)."""
    p = np.asarray(prob, dtype=np.float64)
    return _sigmoid(logit(p) / float(temperature)).astype(np.float32)


def calibrated_thresholds(thresholds: Dict[str, float], temperatures: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """``{structure: {"threshold": t', "threshold_uncalibrated": t, "temperature_applied": T}}``: the
    thresholds of calibrated maps (a ``thresholds.json`` table; the maps in it are already calibrated)."""
    return {s: {"threshold": calibrate_threshold(t, temperatures[s]), "threshold_uncalibrated": float(t),
                "temperature_applied": float(temperatures[s])} for s, t in thresholds.items() if s in temperatures}


def calibrated_volumes(maps: Dict[str, Any], temperatures: Dict[str, float]) -> Dict[str, Any]:
    """Calibrated copies (:func:`calibrate_array`, float32, same geometry) of the Volumes ``maps``."""
    return {s: v.with_array(calibrate_array(v.array, temperatures[s])) for s, v in maps.items()}


def write_calibrated_maps(maps: Dict[str, Any], temperatures: Dict[str, float], case_dir: Any,
                          fmt: str = "nrrd") -> List[Any]:
    """Write ``case_dir/prob_<structure>.<fmt>`` calibrated (the layout ``predict`` writes and ``tune``
    reads); returns the paths."""
    from pathlib import Path

    from .io import write_volume
    from .mapnames import map_stem

    return [write_volume(v, Path(case_dir) / f"prob_{map_stem(s)}.{fmt}")
            for s, v in calibrated_volumes(maps, temperatures).items()]


# --------------------------------------------------------------------------------------------------------
# one structure over a cohort
# --------------------------------------------------------------------------------------------------------


@dataclass
class StructureCalibration:
    """Calibration of one structure: ``temperature`` fitted on all cases, ``before`` / ``after`` on all
    cases (in-sample), ``cv_after`` pooled over the cases each at its fold's temperature
    (``fold_temperatures[k]`` fitted on the other folds; ``None`` with fewer than 2 cases); the optimum
    threshold ``t_opt`` and its place ``t_opt_calibrated`` on the calibrated maps."""

    temperature: float
    before: CalibrationMetrics
    after: CalibrationMetrics
    cv_after: Optional[CalibrationMetrics]
    fold_temperatures: List[float]
    t_opt: float
    t_opt_calibrated: float
    fold_thresholds_calibrated: List[float]
    margin_mm: float

    def row(self) -> Dict[str, Any]:
        """The columns of ``calibration.csv`` (without the structure)."""
        cv = self.cv_after
        return {"n_voxels": self.before.n_voxels, "margin_mm": self.margin_mm, "temperature": self.temperature,
                "temperature_at_bound": bool(self.temperature in T_BOUNDS),
                "fold_temperatures": " ".join(f"{t:.4g}" for t in self.fold_temperatures),
                "nll_before": self.before.nll, "nll_after": self.after.nll,
                "ece_before": self.before.ece, "ece_after": self.after.ece,
                "brier_before": self.before.brier, "brier_after": self.after.brier,
                "cv_nll_before": self.before.nll, "cv_nll_after": cv.nll if cv else None,
                "cv_ece_before": self.before.ece, "cv_ece_after": cv.ece if cv else None,
                "cv_brier_before": self.before.brier, "cv_brier_after": cv.brier if cv else None,
                "t_opt": self.t_opt, "t_opt_calibrated": self.t_opt_calibrated,
                "fold_thresholds_calibrated": " ".join(f"{t:.4f}" for t in self.fold_thresholds_calibrated)}


def calibrate_structure(counts: Sequence[CalibrationCounts], folds: Optional[Sequence[int]], t_opt: float,
                        fold_thresholds: Sequence[float] = (), margin_mm: float = DEFAULT_MARGIN_MM,
                        n_bins: int = RELIABILITY_BINS) -> StructureCalibration:
    """Calibrate one structure from its cases' histograms (``counts``, cases sorted by name) with the fold of
    each case (``folds``, as :func:`AutoSegSensitivity.tune.fold_assignment`; None: no cross-validation)."""
    total = sum_counts(counts)
    t_all = fit_temperature(total)
    t_use = t_all if math.isfinite(t_all) else 1.0
    before = metrics_at(total, 1.0, n_bins)
    after = metrics_at(total, t_use, n_bins)
    cv_after, fold_t, fold_tc = None, [], []
    if folds is not None and len(counts) >= 2:
        folds = list(folds)
        k = max(folds) + 1
        parts = []
        for f in range(k):
            train = sum_counts([c for c, g in zip(counts, folds) if g != f])
            tf = fit_temperature(train)
            tf = tf if math.isfinite(tf) else 1.0
            fold_t.append(tf)
            parts.append(_cells(sum_counts([c for c, g in zip(counts, folds) if g == f]), tf))
        cv_after = _metrics(_join(parts), n_bins)
        fold_tc = [calibrate_threshold(t, tf) for t, tf in zip(fold_thresholds, fold_t)]
    return StructureCalibration(float(t_all), before, after, cv_after, [float(t) for t in fold_t], float(t_opt),
                                calibrate_threshold(t_opt, t_use), fold_tc, float(margin_mm))


def reliability_rows(cal: StructureCalibration) -> List[Dict[str, Any]]:
    """The reliability bins before (T = 1, all cases) and after (held out when cross-validated, else on all
    cases) as table rows."""
    rows = []
    after, label = (cal.cv_after, "after_cv") if cal.cv_after is not None else (cal.after, "after")
    for which, m in (("before", cal.before), (label, after)):
        for i, b in enumerate(m.bins):
            rows.append({"which": which, "bin": i, "count": b.count, "p_low": b.p_low, "p_high": b.p_high,
                         "mean_p": b.mean_p, "observed": b.observed})
    return rows
