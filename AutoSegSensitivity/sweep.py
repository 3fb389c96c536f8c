"""Threshold sweeps of probability maps (Bice et al. 2021, paper 000), fast.

Given probability maps and reference masks of one structure over a set of validation cases,
:func:`sweep_thresholds` evaluates every threshold of a grid (default 0.00..1.00 by 0.01) at once:

* **Thresholding** (paper Eq. 1 context): a voxel is foreground when ``p >= t`` (:func:`apply_threshold`),
  the comparison made in the probability map's floating type (``t`` rounded to it), so that the sweep and
  a plain ``prob >= t`` agree voxel for voxel.
* **Dice** per case and **pooled** over cases (paper Eq. 1: sums of voxels over voxels *and* cases), plus the
  mean of the per-case values. All thresholds come from one pass over the voxels (each voxel's
  probability is binned against the sorted thresholds; cumulative counts give |P(t)| and |P(t)∩R|).
* **MSD, HD, HD95** per case with the conventions of :mod:`AutoSegSensitivity.metrics` (MONAI's), and pooled
  over cases as if all cases were one image whose parts lie infinitely far apart: pooled MSD = sum of all
  directed distances / number of all surface voxels, pooled HD = max over cases, pooled HD95 = max of the
  95th percentiles of the pooled directed distances. Cases where one side is empty (distance ``inf``) are
  left out of the pooled and mean values and counted (``n_undefined``).
  The work is restricted to the box around the voxels where ``p`` reaches the lowest threshold that does
  not select the whole image, plus the reference; a threshold at or below the minimum of ``p`` selects the
  whole image, whose surface is the image border, and is solved once, exactly, outside that box.
  The reference surface's k-d tree is built once per case and reused for every threshold.
* **Surface Dice at tolerance** (``nsd``, :func:`AutoSegSensitivity.metrics.surface_dice`) per case and
  pooled like Dice (all cases' surfel areas within the tolerance / all cases' surfel areas), plus the mean
  of the per-case values. Inside the same box, the reference's surfels and one distance transform of them
  are computed once per case; the prediction's side needs no per-threshold pass at all: the per-voxel
  threshold counts of the Dice pass give every cell's surfel area as a piecewise-constant function of the
  threshold, and whether a reference surfel lies within the tolerance as a union of threshold intervals
  over a fixed stencil, both summed by difference arrays (:func:`_nsd_case`). A threshold that selects
  the whole image is solved once on the reference's neighbourhood.
* **Optimum** per metric (max Dice, min distances), ties broken toward 0.5 (then toward the lower
  threshold) (paper Eq. 2).
* **Perturbation loss** (paper Eq. 3) at ``t_opt ± delta`` and the loss at 0.5, as *relative* changes for the
  worse: Dice ``(D(t_opt) - D(t)) / D(t_opt)``; distances (lower is better) ``(d(t) - d(t_opt)) / d(t_opt)``
  (relative increase). A value off the grid is linearly interpolated between its neighbours; outside the
  grid it is ``None``.
* **Prominence** (paper Eq. 4): the fraction of true voxels over all masks of a training set, and the
  Pearson correlation between prominence and optimal threshold across structures.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage, special, stats
from scipy.spatial import cKDTree

from .errors import InputError
from .metrics import (DEFAULT_NSD_TOLERANCE_MM, _bbox, _cell_codes, _check_tolerance, _corner_bit, _nsd_parts,
                      _surfels, summarise_distances, surfel_area_table)
from .volume import Volume

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DEFAULT_DELTAS",
    "METRICS",
    "SWEEP_METRICS",
    "FRACTIONS",
    "column_name",
    "HIGHER_IS_BETTER",
    "SweepResult",
    "apply_threshold",
    "check_probability",
    "parse_thresholds",
    "prominence",
    "sweep_thresholds",
    "sweep_volumes",
    "correlate_prominence",
    "relative_loss",
]

DEFAULT_THRESHOLDS = np.round(np.arange(101) * 0.01, 2)
"""0.00, 0.01, ..., 1.00 (paper 000: 'thresholds varying from 0 to 1 by 0.01')."""

DEFAULT_DELTAS = (0.02, 0.05, 0.1)
"""Perturbations about the optimum threshold reported by default (paper Figures 14-15)."""

SWEEP_METRICS = ("dice", "nsd", "msd", "hd", "hd95")
"""Every metric the sweep offers, in table-column order (the default of ``autosegsens sweep`` and of the
AutoSegThreshold logic)."""
METRICS = ("dice", "msd", "hd", "hd95")
"""The metrics of paper 000 (:data:`SWEEP_METRICS` without ``nsd``): the default of
:func:`sweep_thresholds`, and what readers that name the columns themselves (the study report's reader)
know. A reader that maps columns with :func:`column_name` can iterate :data:`SWEEP_METRICS` instead."""
HIGHER_IS_BETTER = {"dice": True, "nsd": True, "msd": False, "hd": False, "hd95": False}
UNITS = {"dice": "", "nsd": "", "msd": "mm", "hd": "mm", "hd95": "mm"}
FRACTIONS = ("dice", "nsd")
"""Metrics that are fractions in [0, 1]: no unit in their column name, never undefined."""
DISTANCES = ("msd", "hd", "hd95")
_TIE_RTOL = 1e-12


# --------------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------------


def check_probability(prob: np.ndarray, source: str = "probability map", logits: bool = False) -> np.ndarray:
    """A floating array of probabilities in [0, 1] (float32, or float64 if given so).

    NaN, or values outside [0, 1], are an :class:`InputError` unless ``logits`` is true, in which case the
    values are logits and a sigmoid is applied (NaN is still an error)."""
    arr = np.asarray(prob.array if isinstance(prob, Volume) else prob)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32)
    elif arr.dtype not in (np.float32, np.float64):
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(source, "dtype", "a numeric probability map", got=arr.dtype)
        arr = arr.astype(np.float32)
    if arr.size == 0:
        raise InputError(source, "shape", "a non-empty array", got=arr.shape)
    lo, hi = arr.min(), arr.max()
    if np.isnan(lo) or np.isnan(hi):
        raise InputError(source, "values", "no NaN", got="NaN")
    if logits:
        if np.isinf(lo) or np.isinf(hi):
            arr = np.where(np.isfinite(arr), arr, np.sign(arr) * 1e30).astype(arr.dtype)
        return special.expit(arr).astype(arr.dtype, copy=False)
    if lo < 0 or hi > 1:
        raise InputError(source, "values", "probabilities in [0, 1] (or the logits option for logits)",
                         got=f"range [{float(lo):.4g}, {float(hi):.4g}]")
    return arr


def parse_thresholds(thresholds: Union[str, Sequence[float], np.ndarray, None]) -> np.ndarray:
    """A sorted, de-duplicated float64 threshold grid inside [0, 1].

    Accepts a sequence of numbers or a string ``"start:stop:step"`` (stop included, e.g. ``"0:1:0.01"``) or
    ``"0.1,0.3,0.5"``. Empty grids, non-finite values or values outside [0, 1] are an :class:`InputError`."""
    if thresholds is None:
        return DEFAULT_THRESHOLDS.copy()
    if isinstance(thresholds, str):
        text = thresholds.strip()
        try:
            if ":" in text:
                parts = [float(v) for v in text.split(":")]
                if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                    raise ValueError
                n = int(math.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
                arr = np.round(parts[0] + parts[2] * np.arange(n), 10)
            else:
                arr = np.asarray([float(v) for v in text.split(",") if v.strip()], dtype=float)
        except ValueError:
            raise InputError("thresholds", "grid", "'start:stop:step' with step > 0, or 'a,b,c'",
                             got=repr(thresholds)) from None
    else:
        arr = np.asarray(thresholds, dtype=float).reshape(-1)
    if arr.size == 0:
        raise InputError("thresholds", "grid", "at least one threshold", got="an empty grid")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise InputError("thresholds", "grid", "thresholds in [0, 1]", got=f"[{arr.min()}, {arr.max()}]")
    return np.unique(arr)


def apply_threshold(prob: Union[Volume, np.ndarray], t: float, logits: bool = False) -> Union[Volume, np.ndarray]:
    """The mask ``prob >= t`` (``t`` compared in the map's floating type); a Volume in gives a bool Volume
    with the same geometry, an array gives an array. Values are checked as in :func:`check_probability`."""
    t_arr = parse_thresholds([t])
    arr = check_probability(prob, "probability map", logits=logits)
    mask = arr >= arr.dtype.type(t_arr[0])
    if isinstance(prob, Volume):
        return Volume(mask, prob.spacing, prob.origin, prob.direction.copy())
    return mask


def prominence(masks: Sequence[np.ndarray]) -> float:
    """Paper Eq. 4: the fraction of true voxels over all masks of a training set
    (sum of true voxels / sum of voxels, over every mask)."""
    masks = list(masks)
    if not masks:
        raise InputError("prominence", "masks", "at least one mask", got="none")
    true, total = 0, 0
    for i, m in enumerate(masks):
        arr = np.asarray(m.array if isinstance(m, Volume) else m)
        if arr.size == 0:
            raise InputError("prominence", f"mask {i}", "a non-empty array", got=arr.shape)
        true += int(np.count_nonzero(arr))
        total += arr.size
    return true / total


def correlate_prominence(prominences: Sequence[float], optima: Sequence[float]) -> Tuple[float, float]:
    """Pearson ``(r, p)`` between prominence and optimal threshold across structures
    (``scipy.stats.pearsonr``, two-sided). At least two finite pairs are needed; when either sequence is
    constant the correlation is undefined and ``(nan, nan)`` is returned."""
    x = np.asarray(prominences, dtype=float).reshape(-1)
    y = np.asarray(optima, dtype=float).reshape(-1)
    if x.size != y.size:
        raise InputError("correlate_prominence", "lengths", "as many optima as prominences",
                         got=f"{x.size} and {y.size}")
    if x.size < 2:
        raise InputError("correlate_prominence", "structures", "at least two structures", got=x.size)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("correlate_prominence", "values", "finite numbers")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = stats.pearsonr(x, y)
    return float(res[0]), float(res[1])


def relative_loss(value: float, best: float, higher_is_better: bool) -> float:
    """Relative change for the worse from ``best`` to ``value``: ``(best - value) / best`` for metrics where
    higher is better, ``(value - best) / best`` otherwise. ``best`` 0 (or inf) gives 0 when ``value`` equals
    it and ``inf`` otherwise."""
    if value == best:
        return 0.0
    if best == 0 or not math.isfinite(best) or not math.isfinite(value):
        if not math.isfinite(best) and not math.isfinite(value):
            return 0.0
        return math.inf
    return (best - value) / best if higher_is_better else (value - best) / best


# --------------------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    """The outcome of :func:`sweep_thresholds` for one structure.

    ``pooled[metric]`` and ``mean[metric]`` are arrays over ``thresholds`` (see the module docstring);
    ``n_undefined[metric]`` counts per threshold the cases left out as ``inf``; ``per_case[case][metric]``
    the per-case curves; ``problems`` lists ``(case, reason)`` for cases left out or worth a note (a
    structure missing in a case, an empty reference)."""

    thresholds: np.ndarray
    metrics: Tuple[str, ...]
    pooled: Dict[str, np.ndarray]
    mean: Dict[str, np.ndarray]
    n_undefined: Dict[str, np.ndarray]
    per_case: Dict[str, Dict[str, np.ndarray]]
    case_names: List[str]
    problems: List[Tuple[str, str]] = field(default_factory=list)
    structure: Optional[str] = None
    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM

    # ---- lookups --------------------------------------------------------------------------------------
    def curve(self, metric: str, aggregate: str = "pooled") -> np.ndarray:
        """The curve of ``metric`` over the thresholds: ``aggregate`` is "pooled", "mean" or a case name."""
        if metric not in self.metrics:
            raise InputError("sweep result", "metric", f"one of {list(self.metrics)}", got=repr(metric))
        if aggregate == "pooled":
            return self.pooled[metric]
        if aggregate == "mean":
            return self.mean[metric]
        if aggregate in self.per_case:
            return self.per_case[aggregate][metric]
        raise InputError("sweep result", "aggregate", f"'pooled', 'mean' or a case in {self.case_names}",
                         got=repr(aggregate))

    def optimum(self, metric: str = "dice", aggregate: str = "pooled") -> Tuple[float, float]:
        """``(threshold, value)`` of the best value of ``metric`` (max Dice, min distances), ties broken toward
        0.5 and then toward the lower threshold."""
        y = self.curve(metric, aggregate)
        if HIGHER_IS_BETTER[metric]:
            best = np.max(y)
            tie = y >= best - _TIE_RTOL * abs(best) if math.isfinite(best) else y == best
        else:
            best = np.min(y)
            tie = y <= best + _TIE_RTOL * abs(best) if math.isfinite(best) else y == best
        idx = np.flatnonzero(tie)
        dist = np.abs(self.thresholds[idx] - 0.5)
        i = idx[np.flatnonzero(dist <= dist.min() + 1e-12)[0]]
        return float(self.thresholds[i]), float(y[i])

    def value_at(self, t: float, metric: str = "dice", aggregate: str = "pooled") -> Optional[float]:
        """The curve's value at threshold ``t``: exact on the grid, linearly interpolated between grid
        neighbours (``inf`` if a neighbour is ``inf``), ``None`` outside the grid."""
        y = self.curve(metric, aggregate)
        th = self.thresholds
        if t < th[0] - 1e-9 or t > th[-1] + 1e-9:
            return None
        hit = np.flatnonzero(np.abs(th - t) <= 1e-9)
        if hit.size:
            return float(y[hit[0]])
        j = int(np.searchsorted(th, t))
        a, b = y[j - 1], y[j]
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.inf
        w = (t - th[j - 1]) / (th[j] - th[j - 1])
        return float(a + w * (b - a))

    def loss_at(self, t: float, metric: str = "dice", aggregate: str = "pooled") -> Optional[float]:
        """Relative loss (see :func:`relative_loss`) of the value at ``t`` against the optimum; ``None`` when
        ``t`` is outside the grid."""
        _, best = self.optimum(metric, aggregate)
        v = self.value_at(t, metric, aggregate)
        return None if v is None else relative_loss(v, best, HIGHER_IS_BETTER[metric])

    def perturbation_losses(self, metric: str = "dice", deltas: Sequence[float] = DEFAULT_DELTAS,
                            aggregate: str = "pooled") -> Dict[float, Dict[str, Optional[float]]]:
        """Paper Eq. 3: for each ``delta``, ``{"minus": loss at t_opt - delta, "plus": loss at t_opt + delta,
        "mean": mean of the sides inside the grid}`` (relative losses; ``None`` outside the grid)."""
        t_opt, _ = self.optimum(metric, aggregate)
        out: Dict[float, Dict[str, Optional[float]]] = {}
        for d in deltas:
            d = float(d)
            minus = self.loss_at(round(t_opt - d, 10), metric, aggregate)
            plus = self.loss_at(round(t_opt + d, 10), metric, aggregate)
            sides = [v for v in (minus, plus) if v is not None]
            out[d] = {"minus": minus, "plus": plus, "mean": float(np.mean(sides)) if sides else None}
        return out

    # ---- tables ---------------------------------------------------------------------------------------
    def to_table(self) -> List[Dict[str, object]]:
        """One row per threshold: ``threshold``, pooled ``dice``, ``nsd``, ``msd_mm``, ``hd_mm``, ``hd95_mm``, then
        the mean-of-cases values (``*_mean``) and the count of cases left out as inf (``n_undefined_*``)."""
        rows = []
        for i, t in enumerate(self.thresholds):
            row: Dict[str, object] = {"threshold": float(t)}
            for m in self.metrics:
                row[_col(m)] = float(self.pooled[m][i])
            for m in self.metrics:
                row[_col(m, "_mean")] = float(self.mean[m][i])
            for m in self.metrics:
                if m not in FRACTIONS:
                    row[f"n_undefined_{m}"] = int(self.n_undefined[m][i])
            rows.append(row)
        return rows

    def per_case_table(self) -> List[Dict[str, object]]:
        """One row per (case, threshold) with the per-case metric values."""
        rows = []
        for case in self.case_names:
            for i, t in enumerate(self.thresholds):
                row: Dict[str, object] = {"case": case, "threshold": float(t)}
                for m in self.metrics:
                    row[_col(m)] = float(self.per_case[case][m][i])
                rows.append(row)
        return rows

    def summary(self, deltas: Sequence[float] = DEFAULT_DELTAS) -> Dict[str, object]:
        """JSON-friendly summary: per metric and aggregate ("pooled", "mean") the optimum threshold and value,
        the value and loss at 0.5 and the perturbation losses; plus the grid, cases and problems.
        Infinite values appear as the string ``"inf"`` (JSON has no infinity)."""
        th = self.thresholds
        out: Dict[str, object] = {
            "structure": self.structure,
            "thresholds": {"min": float(th[0]), "max": float(th[-1]), "count": int(th.size),
                           "values": [float(t) for t in th]},
            "cases": list(self.case_names),
            "problems": [{"case": c, "reason": r} for c, r in self.problems],
            "conventions": {
                "threshold": "foreground where p >= t",
                "loss": "relative change for the worse: Dice (D_opt - D)/D_opt; distances (d - d_opt)/d_opt",
                "pooled": "Dice pooled over voxels and cases (Eq. 1); distances pooled over the surface "
                          "voxels of all cases; cases with one empty side left out and counted",
                "tie_break": "closest to 0.5, then lower threshold",
            },
            "metrics": {},
        }
        for m in self.metrics:
            entry: Dict[str, object] = {"higher_is_better": HIGHER_IS_BETTER[m], "unit": UNITS[m]}
            if m == "nsd":
                entry["tolerance_mm"] = self.nsd_tolerance_mm
            for agg in ("pooled", "mean"):
                t_opt, v_opt = self.optimum(m, agg)
                entry[agg] = {
                    "optimum_threshold": t_opt,
                    "optimum_value": _jsonable(v_opt),
                    "value_at_0.5": _jsonable(self.value_at(0.5, m, agg)),
                    "loss_at_0.5": _jsonable(self.loss_at(0.5, m, agg)),
                    "perturbation_losses": {
                        f"{d:g}": {k: _jsonable(v) for k, v in sides.items()}
                        for d, sides in self.perturbation_losses(m, deltas, agg).items()
                    },
                }
            out["metrics"][m] = entry  # type: ignore[index]
        return out


def column_name(metric: str, suffix: str = "") -> str:
    """Table column of a metric in ``sweep.csv``: ``dice``, ``nsd``, ``msd_mm``, ``hd_mm``, ``hd95_mm``
    (+ ``suffix``)."""
    return (metric if metric in FRACTIONS else f"{metric}_mm") + suffix


_col = column_name


def _jsonable(v: Optional[float]) -> object:
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


# --------------------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------------------


def _border_points(shape: Sequence[int]) -> np.ndarray:
    """Indices (N, 3) of the voxels on the faces of an array of ``shape`` (each once)."""
    nz, ny, nx = (int(n) for n in shape)
    parts = []
    zs = sorted({0, nz - 1})
    yy, xx = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    for z in zs:
        parts.append(np.stack([np.full(yy.size, z), yy.ravel(), xx.ravel()], axis=1))
    zin = np.arange(1, nz - 1)
    if zin.size:
        for y in sorted({0, ny - 1}):
            zz, xx2 = np.meshgrid(zin, np.arange(nx), indexing="ij")
            parts.append(np.stack([zz.ravel(), np.full(zz.size, y), xx2.ravel()], axis=1))
        yin = np.arange(1, ny - 1)
        if yin.size:
            for x in sorted({0, nx - 1}):
                zz, yy2 = np.meshgrid(zin, yin, indexing="ij")
                parts.append(np.stack([zz.ravel(), yy2.ravel(), np.full(zz.size, x)], axis=1))
    return np.concatenate(parts, axis=0)


def _face_sq_distances(idx: np.ndarray, shape: Sequence[int], spacing: np.ndarray, axis: int, face: int) -> np.ndarray:
    """Squared distances (mm^2) from every voxel of the face ``index[axis] == face`` of an array of ``shape`` to
    the nearest of the points ``idx`` (N, 3 integer indices), as a 2D array over the two other axes.

    Exact and separable (lower envelope of parabolas, brute force over the points' own rows and columns):
    per column of the other two axes only the point nearest to the face matters."""
    b_ax, c_ax = [a for a in range(3) if a != axis]
    nb, nc = int(shape[b_ax]), int(shape[c_ax])
    sa, sb, sc = spacing[axis], spacing[b_ax], spacing[c_ax]
    qa = np.abs(idx[:, axis] - face) * sa
    qb = idx[:, b_ax].astype(np.int64)
    qc = idx[:, c_ax].astype(np.int64)
    b0, c0 = qb.min(), qc.min()
    fb, fc = int(qb.max() - b0 + 1), int(qc.max() - c0 + 1)
    f = np.full((fb, fc), np.inf)
    np.minimum.at(f, (qb - b0, qc - c0), qa * qa)
    rows = np.flatnonzero(np.isfinite(f).any(axis=1))
    f = f[rows]  # (R, fc)
    # pass 1 along c: g[r, x] = min_qc f[r, qc] + ((x - qc) sc)^2
    xs = np.arange(nc)
    dc2 = ((xs[:, None] - (np.arange(fc) + c0)[None, :]) * sc) ** 2  # (nc, fc)
    g = np.empty((rows.size, nc))
    for r in range(rows.size):
        g[r] = np.min(f[r][None, :] + dc2, axis=1)
    # pass 2 along b: d2[y, x] = min_r g[r, x] + ((y - qb_r) sb)^2
    qbr = rows + b0
    out = np.empty((nb, nc))
    step = max(1, int(4_000_000 // max(1, rows.size * nc)))
    for y0 in range(0, nb, step):
        ys = np.arange(y0, min(nb, y0 + step))
        db2 = ((ys[:, None] - qbr[None, :]) * sb) ** 2  # (Y, R)
        out[y0:y0 + ys.size] = np.min(g.T[None, :, :] + db2[:, None, :], axis=2)
    return out


def _border_distances(idx: np.ndarray, shape: Sequence[int], spacing: np.ndarray) -> np.ndarray:
    """Distances (mm) from every voxel on the faces of an array of ``shape`` to the nearest of the points
    ``idx`` (N, 3 indices), in the order of :func:`_border_points`."""
    nz, ny, nx = (int(n) for n in shape)
    parts = []
    for z in sorted({0, nz - 1}):
        parts.append(_face_sq_distances(idx, shape, spacing, 0, z).ravel())
    if nz > 2:
        for y in sorted({0, ny - 1}):
            parts.append(_face_sq_distances(idx, shape, spacing, 1, y)[1:nz - 1].ravel())
        if ny > 2:
            for x in sorted({0, nx - 1}):
                parts.append(_face_sq_distances(idx, shape, spacing, 2, x)[1:nz - 1, 1:ny - 1].ravel())
    return np.sqrt(np.concatenate(parts))


@dataclass
class _CaseOut:
    tp: np.ndarray
    npred: np.ndarray
    nref: int
    d_pr: List[Optional[np.ndarray]]
    d_rp: List[Optional[np.ndarray]]
    nsd_num: Optional[np.ndarray] = None
    nsd_den: Optional[np.ndarray] = None


def _torch_surfaces(pc, t_cast, todo, edt_r, pts_r, offset, spacing, device, d_pr, d_rp) -> None:
    """The per-threshold surfaces and distances of :func:`_sweep_case` with torch (on a GPU when given one):
    erosion by a face-connected convolution, pred->ref distances read from the reference's distance map,
    ref->pred distances as exact float64 minima of pairwise distances (chunked)."""
    import torch

    dev = torch.device(device)
    p_t = torch.from_numpy(np.ascontiguousarray(pc)).to(dev)
    edt_t = torch.from_numpy(np.ascontiguousarray(edt_r)).to(dev)
    r_t = torch.from_numpy(pts_r).to(dev)
    off = torch.as_tensor(offset, dtype=torch.float64, device=dev)
    sp = torch.as_tensor(spacing, dtype=torch.float64, device=dev)
    kernel = torch.zeros((1, 1, 3, 3, 3), dtype=torch.float32, device=dev)
    kernel[0, 0, 1, 1, :] = 1
    kernel[0, 0, 1, :, 1] = 1
    kernel[0, 0, :, 1, 1] = 1
    chunk = max(1, int(2 ** 24 // max(1, pts_r.shape[0])))
    for i in todo:
        m = p_t >= torch.tensor(t_cast[i], dtype=p_t.dtype, device=dev)
        neigh = torch.nn.functional.conv3d(m[None, None].float(), kernel, padding=1)[0, 0]
        surf = m & (neigh < 6.5)  # eroded = all 7 voxels of the cross inside (outside the box counts as 0)
        d_pr[i] = edt_t[surf].cpu().numpy()
        pts_p = (torch.nonzero(surf).double() + off) * sp
        best = torch.full((r_t.shape[0],), float("inf"), dtype=torch.float64, device=dev)
        for j in range(0, pts_p.shape[0], chunk):
            d = torch.cdist(r_t, pts_p[j:j + chunk], compute_mode="donot_use_mm_for_euclid_dist")
            best = torch.minimum(best, d.min(dim=1).values)
        d_rp[i] = best.cpu().numpy()


def _resolve_device(device: Optional[str]) -> Optional[str]:
    """None for the numpy/scipy path, else a torch device string. "auto": CUDA when torch sees a GPU."""
    if device in (None, "numpy", "scipy"):
        return None
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else None
        except ImportError:  # pragma: no cover - torch is a dependency
            return None
    try:
        import torch

        dev = torch.device(device)
    except (ImportError, RuntimeError) as exc:
        raise InputError("sweep", "device", "'auto', 'numpy', 'cpu' or a torch device such as 'cuda'",
                         got=repr(device)) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("sweep", "device", "a CUDA device that torch can see", got=repr(device))
    return str(dev)


def _nsd_full_image(ref: np.ndarray, spacing: np.ndarray, tau: float, table: np.ndarray) -> Tuple[float, float]:
    """``(area within tau, total area)`` of the surface Dice of the whole image as prediction against
    ``ref``, without full-volume work: the image's surfels are counted by their kind (corner, edge, face)
    and distances are taken in the reference's neighbourhood grown by the tolerance."""
    shape = np.asarray(ref.shape)
    codes = _cell_codes(np.ones([min(int(k), 2) for k in shape], dtype=bool))
    weight = np.ones(codes.shape)
    for axis, k in enumerate(shape):
        w = np.array([1.0, k - 1.0, 1.0]) if k >= 2 else np.array([1.0, 1.0])
        weight = weight * w.reshape([-1 if a == axis else 1 for a in range(ref.ndim)])
    area_full = float((table[codes] * weight).sum())  # codes 0 and 255 have no area
    bb = _bbox(ref)
    if bb is None:
        return 0.0, area_full
    grow = np.ceil(tau / spacing).astype(np.int64) + 1
    lo = np.maximum(bb[0] - grow, 0)
    hi = np.minimum(bb[1] + grow, shape)
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    # inside the image the region's own faces are not surface: pad with foreground there
    pad = [(0 if a == 0 else 1, 0 if b == k else 1) for a, b, k in zip(lo, hi, shape)]
    code_p = _cell_codes(np.ones(tuple(hi - lo), dtype=bool), pad)
    within, total = _nsd_parts(code_p, _cell_codes(ref[region]), spacing, tau, table)
    return within, total - float(table[code_p[_surfels(code_p)]].sum()) + area_full


def _nsd_case(ref: np.ndarray, box, k_box: Optional[np.ndarray], rc, n: int, n_full: int,
              spacing: np.ndarray, tau: float) -> Tuple[np.ndarray, np.ndarray]:
    """Per threshold ``(surfel area within tau, total surfel area)`` of both surfaces of one case, for all
    thresholds at once and with no per-threshold pass over the box.

    ``k_box[v]`` is the number of thresholds <= p at voxel v of the box (v is inside at threshold i iff
    ``i < k``). A cell is a surfel at i iff ``min k <= i < max k`` over its corners, and its code changes
    only where i passes one of its corners' k: each cell adds its piecewise-constant area to the totals by
    a difference array. A reference surfel lies within tau of the prediction at i iff one of the cells
    within tau of it (a fixed stencil, the distance computed as the distance transform computes it) is a
    surfel at i: a union of intervals, again by difference arrays. Thresholds selecting the whole image
    (the first ``n_full``) are solved by :func:`_nsd_full_image`."""
    num, den = np.zeros(n), np.zeros(n)
    table = surfel_area_table(spacing)
    if n_full:
        num[:n_full], den[:n_full] = _nsd_full_image(ref, spacing, tau, table)
    if box is None:
        return num, den
    code_r = _cell_codes(rc)
    sr = _surfels(code_r)
    areas_r = table[code_r[sr]]
    near_r = ndimage.distance_transform_edt(~sr, sampling=spacing) <= tau if sr.any() else np.zeros(sr.shape, bool)
    # k of every cell corner; outside the box nothing is inside at thresholds n_full.. (their p is lower)
    kpad = np.pad(k_box.astype(np.int32), 1, constant_values=n_full)
    shape = code_r.shape
    corners = [kpad[tuple(slice(c, c + m) for c, m in zip(corner, shape))]
               for corner in itertools.product((0, 1), repeat=3)]
    bits = np.array([1 << _corner_bit(corner) for corner in itertools.product((0, 1), repeat=3)])
    kmin = np.minimum.reduce(corners)
    kmax = np.maximum.reduce(corners)
    cells = np.flatnonzero(kmin < kmax)
    kc = np.stack([c.ravel()[cells] for c in corners], axis=1)
    order = np.argsort(kc, axis=1, kind="stable")
    ks = np.take_along_axis(kc, order, axis=1)
    ob = bits[order]
    # between the m-th and (m+1)-th smallest k the corners still inside are those sorted after m
    inside = np.zeros((cells.size, 8), dtype=np.int64)
    for m in range(6, -1, -1):
        inside[:, m] = inside[:, m + 1] | ob[:, m + 1]
    area = table[inside[:, :7]]
    starts, ends = ks[:, :7].ravel(), ks[:, 1:].ravel()
    near_cell = near_r.ravel()[cells]
    far = np.repeat(~near_cell, 7)
    a = area.ravel()
    # Areas are running sums of float differences, so an empty set of surfels would come out as ~1e-12
    # instead of 0 (and NSD as 0 instead of 1, or a hair above 1): integer counts of the surfels (all, and
    # those beyond tau) set the sums to exactly 0 where there are none, and the near area is the total less
    # the far area, so that "every surfel within tau" gives num == den exactly.
    lo_k, hi_k = kmin.ravel()[cells], kmax.ravel()[cells]
    n_surfels = np.cumsum(np.bincount(lo_k, minlength=n + 1) - np.bincount(hi_k, minlength=n + 1))[:n]
    n_far = np.cumsum(np.bincount(lo_k[~near_cell], minlength=n + 1)
                      - np.bincount(hi_k[~near_cell], minlength=n + 1))[:n]
    pred_area = np.where(n_surfels > 0, np.cumsum(np.bincount(starts, a, n + 1) - np.bincount(ends, a, n + 1))[:n], 0.0)
    pred_far = np.where(n_far > 0, np.cumsum(np.bincount(starts, a * far, n + 1) - np.bincount(ends, a * far, n + 1))[:n],
                        0.0)
    pred_near = pred_area - np.clip(pred_far, 0.0, pred_area)
    ref_far = np.zeros(n)
    if sr.any():
        radius = np.floor(tau / spacing).astype(np.int64)
        offs = np.array(list(itertools.product(*[range(-r, r + 1) for r in radius])), dtype=np.int64)
        d = offs.astype(np.float64) * spacing
        offs = offs[np.sqrt(np.add.reduce(d * d, axis=1)) <= tau]
        idx_r = np.argwhere(sr)
        kmin_f, kmax_f = kmin.ravel(), kmax.ravel()
        strides = np.array([shape[1] * shape[2], shape[2], 1])
        chunk = max(1, 2_000_000 // (n + 1))
        for j in range(0, len(idx_r), chunk):
            part = idx_r[j:j + chunk]
            q = part[:, None, :] + offs[None, :, :]
            ok = np.all((q >= 0) & (q < np.asarray(shape)), axis=2)
            flat = np.where(ok, q @ strides, 0)
            lo = np.where(ok, kmin_f[flat], 0)
            hi = np.where(ok, kmax_f[flat], 0)
            row = np.arange(len(part))[:, None] * (n + 1)
            size = len(part) * (n + 1)
            cover = np.bincount((row + lo).ravel(), minlength=size) - np.bincount((row + hi).ravel(), minlength=size)
            within = np.cumsum(cover.reshape(len(part), n + 1), axis=1)[:, :n] > 0
            ref_far += areas_r[j:j + chunk] @ ~within
    ref_total = areas_r.sum()
    ref_near = ref_total - np.clip(ref_far, 0.0, ref_total)
    num[n_full:] = (pred_near + ref_near)[n_full:]
    den[n_full:] = (pred_area + ref_total)[n_full:]
    return num, den


def _sweep_case(p: np.ndarray, ref: np.ndarray, spacing: np.ndarray, th: np.ndarray, surfaces: bool,
                torch_device: Optional[str] = None, nsd_tau: Optional[float] = None) -> _CaseOut:
    """Counts for Dice, if ``surfaces`` directed surface distances, and if ``nsd_tau`` is given the surface
    Dice's area sums for every threshold of one case.

    ``d_pr[i]`` / ``d_rp[i]`` are the directed distance arrays (pred->ref, ref->pred) at threshold i; an empty
    side gives an empty array for its own direction and an array of inf for the other."""
    n = th.size
    t_cast = th.astype(p.dtype)  # compare in the map's type, as apply_threshold does
    pmin, pmax = p.min(), p.max()
    full = t_cast <= pmin
    n_full = int(full.sum())  # thresholds are sorted: the first n_full select the whole image
    total = p.size
    npred = np.zeros(n, dtype=np.int64)
    tp = np.zeros(n, dtype=np.int64)
    npred[:n_full] = total

    box = None
    if n_full < n and t_cast[n_full] <= pmax:
        cand = p >= t_cast[n_full]
        boxes = [b for b in (_bbox(cand), _bbox(ref)) if b is not None]
    else:
        boxes = [b for b in (_bbox(ref),) if b is not None]
    if boxes:
        start = np.maximum(np.min([b[0] for b in boxes], axis=0) - 1, 0)
        stop = np.minimum(np.max([b[1] for b in boxes], axis=0) + 1, p.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(start, stop))
    if box is not None:
        pc = p[box]
        rc = ref[box]
        # one pass: k = number of thresholds <= p; voxel counts for threshold i iff i < k
        k = np.searchsorted(t_cast, pc.ravel(), side="right")
        cnt = np.bincount(k, minlength=n + 1)
        ge = cnt[::-1].cumsum()[::-1][1:]  # ge[i] = #(k > i) = #(p >= t_i) inside the box
        kr = k[rc.ravel()]
        cnt_r = np.bincount(kr, minlength=n + 1)
        ge_r = cnt_r[::-1].cumsum()[::-1][1:]
        npred[n_full:] = ge[n_full:]
        tp[:] = ge_r
        nref = int(rc.sum())
    else:
        pc = rc = None
        nref = 0
    tp[:n_full] = nref

    d_pr: List[Optional[np.ndarray]] = [None] * n
    d_rp: List[Optional[np.ndarray]] = [None] * n
    nsd = (None, None) if nsd_tau is None else _nsd_case(ref, box, None if box is None else k.reshape(pc.shape), rc,
                                                         n, n_full, spacing, nsd_tau)
    if not surfaces:
        return _CaseOut(tp, npred, nref, d_pr, d_rp, *nsd)

    empty = np.zeros(0)
    if nref == 0:
        for i in range(n):
            if npred[i] == 0:
                d_pr[i], d_rp[i] = empty, empty
            else:
                d_pr[i], d_rp[i] = np.full(1, np.inf), empty
        return _CaseOut(tp, npred, nref, d_pr, d_rp, *nsd)

    offset = np.asarray([s.start for s in box], dtype=np.float64)
    struct = ndimage.generate_binary_structure(p.ndim, 1)
    surf_r = rc & ~ndimage.binary_erosion(rc, structure=struct, border_value=0)
    idx_r = np.argwhere(surf_r).astype(np.float64) + offset
    pts_r = idx_r * spacing
    # distance (mm) from every voxel of the box to the reference surface: computed once, read at the
    # prediction's surface voxels for every threshold
    edt_r = ndimage.distance_transform_edt(~surf_r, sampling=spacing)

    if n_full:
        dpr_full = _border_distances(idx_r.astype(np.int64), p.shape, spacing)
        hi = np.asarray(p.shape, dtype=np.float64) - 1.0
        # nearest face voxel of the full box: project onto the closest face along one axis
        drp_full = np.min(np.minimum(idx_r, hi - idx_r) * spacing, axis=1)
        for i in range(n_full):
            d_pr[i], d_rp[i] = dpr_full, drp_full

    todo = []  # thresholds that need their own surface
    prev = None
    for i in range(n_full, n):
        if npred[i] == 0:
            d_pr[i], d_rp[i] = empty, np.full(len(pts_r), np.inf)
        elif prev is not None and npred[i] == npred[prev]:
            continue  # no voxel has p in [t_prev, t_i): the same mask, filled in below
        else:
            todo.append(i)
            prev = i
    if torch_device is None:
        for i in todo:
            m = pc >= t_cast[i]
            surf = m & ~ndimage.binary_erosion(m, structure=struct, border_value=0)
            d_pr[i] = edt_r[surf]
            pts_p = (np.argwhere(surf).astype(np.float64) + offset) * spacing
            d_rp[i] = cKDTree(pts_p).query(pts_r, k=1)[0]
    else:
        _torch_surfaces(pc, t_cast, todo, edt_r, pts_r, offset, spacing, torch_device, d_pr, d_rp)
    for i in range(n_full, n):
        if d_pr[i] is None:  # same mask as the previous threshold
            d_pr[i], d_rp[i] = d_pr[i - 1], d_rp[i - 1]
    return _CaseOut(tp, npred, nref, d_pr, d_rp, *nsd)


def sweep_thresholds(
    probs: Sequence[np.ndarray],
    refs: Sequence[Optional[np.ndarray]],
    spacings: Sequence[Sequence[float]],
    thresholds: Union[Sequence[float], np.ndarray, str, None] = DEFAULT_THRESHOLDS,
    metrics: Sequence[str] = METRICS,
    case_names: Optional[Sequence[str]] = None,
    logits: bool = False,
    structure: Optional[str] = None,
    device: Optional[str] = "auto",
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
) -> SweepResult:
    """Evaluate every threshold of ``thresholds`` on probability maps against reference masks.

    ``probs[i]`` (3D, values in [0, 1], or logits with ``logits=True``), ``refs[i]`` (bool mask of the same
    shape, or ``None`` when the structure is missing in that case: the case is reported in ``problems`` and
    left out) and ``spacings[i]`` (mm, array-axis order z, y, x) describe case i. ``metrics`` is a subset of
    :data:`SWEEP_METRICS` ``("dice", "nsd", "msd", "hd", "hd95")`` (default :data:`METRICS`, without
    ``nsd``); ``nsd_tolerance`` is the surface Dice's
    tolerance in mm (its work is numpy's on every device). ``device``: "auto" (torch on a CUDA GPU when
    there is one, else numpy and scipy), "numpy", or a torch device ("cpu", "cuda", "cuda:1") for the
    per-threshold surface work of MSD, HD and HD95; every path gives the same values. See the module docstring for definitions and the speed-ups."""
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in SWEEP_METRICS]
    if bad or not metrics:
        raise InputError("sweep", "metrics", f"a non-empty subset of {list(SWEEP_METRICS)}", got=metrics)
    th = parse_thresholds(thresholds)
    probs, refs, spacings = list(probs), list(refs), list(spacings)
    if not probs:
        raise InputError("sweep", "cases", "at least one probability map", got="none")
    if len(refs) != len(probs) or len(spacings) != len(probs):
        raise InputError("sweep", "cases", "as many references and spacings as probability maps",
                         got=f"{len(probs)} maps, {len(refs)} references, {len(spacings)} spacings")
    names = [str(c) for c in case_names] if case_names is not None else [f"case{i:03d}" for i in range(len(probs))]
    if len(names) != len(probs) or len(set(names)) != len(names):
        raise InputError("sweep", "case_names", f"{len(probs)} distinct names", got=names)
    surfaces = any(m in DISTANCES for m in metrics)
    nsd_tau = _check_tolerance(nsd_tolerance) if "nsd" in metrics else None
    torch_device = _resolve_device(device)

    problems: List[Tuple[str, str]] = []
    outs: Dict[str, _CaseOut] = {}
    for name, p, r, s in zip(names, probs, refs, spacings):
        if r is None:
            problems.append((name, "structure missing in the reference: case left out"))
            continue
        parr = check_probability(p, f"probability map of {name}", logits=logits)
        rarr = np.asarray(r.array if isinstance(r, Volume) else r)
        if parr.ndim != 3:
            raise InputError(f"probability map of {name}", "ndim", "a 3D array (z, y, x)", got=parr.ndim)
        if rarr.shape != parr.shape:
            raise InputError(f"reference of {name}", "shape", f"the probability map's shape {parr.shape}",
                             got=rarr.shape)
        rarr = rarr if rarr.dtype == bool else rarr != 0
        sp = np.asarray(s, dtype=float).reshape(-1)
        if sp.size != 3 or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise InputError(f"spacing of {name}", "spacing", "three positive numbers in mm (z, y, x)",
                             got=tuple(np.asarray(s).reshape(-1).tolist()))
        if not rarr.any():
            problems.append((name, "reference mask is empty"))
        outs[name] = _sweep_case(parr, rarr, sp, th, surfaces, torch_device, nsd_tau)
    if not outs:
        raise InputError("sweep", "cases", "at least one case with the structure in its reference",
                         got="none")
    used = list(outs)
    n = th.size

    per_case: Dict[str, Dict[str, np.ndarray]] = {c: {} for c in used}
    pooled: Dict[str, np.ndarray] = {}
    mean: Dict[str, np.ndarray] = {}
    n_undef: Dict[str, np.ndarray] = {}

    # Dice
    tp = np.sum([outs[c].tp for c in used], axis=0)
    npred = np.sum([outs[c].npred for c in used], axis=0)
    nref = sum(outs[c].nref for c in used)
    for c in used:
        o = outs[c]
        den = o.npred + o.nref
        per_case[c]["dice"] = np.where(den > 0, 2.0 * o.tp / np.maximum(den, 1), 1.0)
    if "dice" in metrics:
        den = npred + nref
        pooled["dice"] = np.where(den > 0, 2.0 * tp / np.maximum(den, 1), 1.0)
        mean["dice"] = np.mean([per_case[c]["dice"] for c in used], axis=0)
        n_undef["dice"] = np.zeros(n, dtype=int)
    if nsd_tau is not None:
        for c in used:
            o = outs[c]
            per_case[c]["nsd"] = np.clip(np.where(o.nsd_den > 0, o.nsd_num / np.where(o.nsd_den > 0, o.nsd_den, 1.0),
                                                  1.0), 0.0, 1.0)
        num = np.sum([outs[c].nsd_num for c in used], axis=0)
        den = np.sum([outs[c].nsd_den for c in used], axis=0)
        pooled["nsd"] = np.clip(np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0), 0.0, 1.0)
        mean["nsd"] = np.mean([per_case[c]["nsd"] for c in used], axis=0)
        n_undef["nsd"] = np.zeros(n, dtype=int)
    tol = DEFAULT_NSD_TOLERANCE_MM if nsd_tau is None else nsd_tau
    if not surfaces:
        for c in used:
            per_case[c] = {m: per_case[c][m] for m in metrics}
        return SweepResult(th, metrics, pooled, mean, n_undef, per_case, used, problems, structure, tol)

    dist_metrics = [m for m in metrics if m in DISTANCES]
    for c in used:
        vals = [summarise_distances(a, b) for a, b in zip(outs[c].d_pr, outs[c].d_rp)]
        per_case[c]["hd"] = np.array([v.hd for v in vals])
        per_case[c]["hd95"] = np.array([v.hd95 for v in vals])
        per_case[c]["msd"] = np.array([v.msd for v in vals])
    for m in dist_metrics:
        stack = np.array([per_case[c][m] for c in used])
        finite = np.isfinite(stack)
        n_undef[m] = (~finite).sum(axis=0)
        with np.errstate(invalid="ignore"):
            s = np.where(finite, stack, 0.0).sum(axis=0)
            cnt = finite.sum(axis=0)
            mean[m] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.inf)
    if len(used) == 1:
        for m in dist_metrics:
            pooled[m] = per_case[used[0]][m].copy()
    else:
        pool = {m: np.zeros(n) for m in dist_metrics}
        for i in range(n):
            ok = [c for c in used if np.isfinite(per_case[c]["hd"][i])]
            if not ok:
                for m in dist_metrics:
                    pool[m][i] = np.inf
                continue
            a = np.concatenate([outs[c].d_pr[i] for c in ok])
            b = np.concatenate([outs[c].d_rp[i] for c in ok])
            sd = summarise_distances(a, b)
            for m in dist_metrics:
                pool[m][i] = getattr(sd, m)
        pooled.update(pool)
    for c in used:
        per_case[c] = {m: per_case[c][m] for m in metrics}
    return SweepResult(th, metrics, pooled, mean, n_undef, per_case, used, problems, structure, tol)


def sweep_volumes(probs: Sequence[Volume], refs: Sequence[Optional[Volume]], resample: bool = False,
                  **kwargs) -> SweepResult:
    """:func:`sweep_thresholds` for Volumes: each probability map must lie on its reference's grid (an
    :class:`InputError` naming the case otherwise) unless ``resample`` is true, in which case the map is
    resampled linearly onto the reference grid. The spacing comes from the references. A ``None``
    reference marks the structure as missing in that case. Other keyword arguments go to
    :func:`sweep_thresholds`."""
    probs, refs = list(probs), list(refs)
    if len(probs) != len(refs):
        raise InputError("sweep", "cases", "as many references as probability maps",
                         got=f"{len(probs)} maps, {len(refs)} references")
    names = kwargs.get("case_names") or [f"case{i:03d}" for i in range(len(probs))]
    arrays, masks, spacings = [], [], []
    for name, p, r in zip(names, probs, refs):
        if r is None:
            arrays.append(p.array)
            masks.append(None)
            spacings.append(p.spacing_zyx)
            continue
        if not r.same_grid(p):
            if not resample:
                raise InputError(f"probability map of {name}", "grid", "the reference grid (or resample=True)",
                                 got=r.grid_difference(p))
            p = p.with_array(np.asarray(p.array, dtype=np.float32)).resample_like(r, interpolation="linear")
            p = p.with_array(np.clip(p.array, 0.0, 1.0) if not kwargs.get("logits") else p.array)
        arrays.append(p.array)
        masks.append(np.asarray(r.array) != 0)
        spacings.append(r.spacing_zyx)
    kwargs.setdefault("case_names", names)
    return sweep_thresholds(arrays, masks, spacings, **kwargs)
