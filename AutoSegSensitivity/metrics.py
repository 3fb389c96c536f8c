"""Overlap, volume and surface-distance metrics between a predicted and a reference binary mask.

Conventions (checked against MONAI 1.6 and SimpleITK in ``Testing/Python/test_metrics.py``):

* Masks are boolean arrays in array order ``(z, y, x)`` (2D ``(y, x)`` also works); ``spacing`` is given in
  the **same array-axis order** in millimetres (``Volume.spacing_zyx``). Distances are in mm, volumes in ml.
* **Dice** ``2|P∩R| / (|P| + |R|)``, **Jaccard** ``|P∩R| / |P∪R|`` (paper 000, Eq. 1, for one case).
* **Surface** of a mask = the mask XOR its binary erosion with the face-connected (6-neighbour in 3D,
  ``scipy.ndimage.generate_binary_structure(ndim, 1)``) structuring element, voxels outside the array
  counting as background. This is ``monai.metrics.utils.get_mask_edges`` without sub-voxel areas.
* **Directed surface distances** A->B: for every surface voxel of A, the Euclidean distance (with spacing)
  to the nearest surface voxel of B (as MONAI's ``get_surface_distance``, metric "euclidean").
* **HD** (symmetric Hausdorff, paper Eq. 8) = max of the two directed maxima.
  **HD95** = max of the two directed 95th percentiles (linear interpolation between order statistics, the
  position computed as ``torch.quantile`` does, see :func:`percentile`), as MONAI
  ``compute_hausdorff_distance(percentile=95)``.
  **MSD** (paper Eq. 7) = (sum of A->B distances + sum of B->A distances) / (|surface A| + |surface B|), which
  is MONAI ``compute_average_surface_distance(symmetric=True)``.
* **Empty masks** (never a crash, never a NaN): both empty: Dice = Jaccard = 1, sensitivity = precision = 1,
  distances 0, volume differences 0. One empty: Dice = Jaccard = 0, sensitivity / precision 0 (the side that
  is defined keeps its value: a non-empty prediction against an empty reference has precision 0, and
  sensitivity 0), distances and the centre-of-mass distance ``inf`` (reported as such; aggregates such as
  :func:`mean_finite` leave them out and count them). Relative volume difference with an empty reference
  and a non-empty prediction is ``inf``.
* Masks on different grids are an error unless the caller asks for the prediction to be resampled
  (nearest neighbour) onto the reference (:func:`compare_volumes`, :func:`compare_segmentations`).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .errors import InputError
from .segmentation import Segmentation
from .volume import Volume

__all__ = [
    "SurfaceDistances",
    "dice",
    "jaccard",
    "surface_mask",
    "directed_surface_distances",
    "summarise_distances",
    "surface_distances",
    "compare_masks",
    "compare_volumes",
    "compare_segmentations",
    "mean_finite",
    "percentile",
    "COMPARE_KEYS",
]

COMPARE_KEYS = (
    "dice",
    "jaccard",
    "volume_ref_ml",
    "volume_pred_ml",
    "volume_diff_ml",
    "relative_volume_diff",
    "sensitivity",
    "precision",
    "com_distance_mm",
    "hd_mm",
    "hd95_mm",
    "msd_mm",
)
"""Keys of the dictionary :func:`compare_masks` returns, in table-column order."""


class SurfaceDistances(NamedTuple):
    """Symmetric surface-distance metrics in mm (see the module docstring for the conventions)."""

    hd: float
    hd95: float
    msd: float


# --------------------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------------------


def _as_mask(mask: np.ndarray, name: str) -> np.ndarray:
    if isinstance(mask, Volume):
        mask = mask.array
    arr = np.asarray(mask)
    if arr.ndim not in (2, 3):
        raise InputError(name, "ndim", "a 2D or 3D mask", got=arr.ndim)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number):
            raise InputError(name, "dtype", "a boolean or numeric mask", got=arr.dtype)
        arr = arr != 0
    return arr


def _as_pair(pred: np.ndarray, ref: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    p = _as_mask(pred, "pred")
    r = _as_mask(ref, "ref")
    if p.shape != r.shape:
        raise InputError("pred", "shape", f"the reference shape {r.shape}", got=p.shape)
    return p, r


def _as_spacing(spacing: Optional[Sequence[float]], ndim: int) -> np.ndarray:
    if spacing is None:
        raise InputError("metrics", "spacing", f"{ndim} voxel sizes in mm in array-axis order")
    s = np.asarray(spacing, dtype=float).reshape(-1)
    if s.size == 1:
        s = np.repeat(s, ndim)
    if s.size != ndim or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError("metrics", "spacing", f"{ndim} positive voxel sizes in mm (array-axis order)",
                         got=tuple(np.asarray(spacing).reshape(-1).tolist()))
    return s


def _bbox(mask: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(start, stop) of the true voxels of ``mask`` or None when empty."""
    if not mask.any():
        return None
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start.append(hits[0])
        stop.append(hits[-1] + 1)
    return np.asarray(start), np.asarray(stop)


def _union_box(shape: Sequence[int], *masks: np.ndarray, margin: int = 1) -> Optional[Tuple[slice, ...]]:
    """Slices of the bounding box of the union of ``masks``, grown by ``margin`` and clipped to ``shape``."""
    boxes = [b for b in (_bbox(m) for m in masks) if b is not None]
    if not boxes:
        return None
    start = np.min([b[0] for b in boxes], axis=0) - margin
    stop = np.max([b[1] for b in boxes], axis=0) + margin
    start = np.maximum(start, 0)
    stop = np.minimum(stop, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


_STRUCTURES: Dict[int, np.ndarray] = {}


def _cross(ndim: int) -> np.ndarray:
    if ndim not in _STRUCTURES:
        _STRUCTURES[ndim] = ndimage.generate_binary_structure(ndim, 1)
    return _STRUCTURES[ndim]


# --------------------------------------------------------------------------------------------------------
# overlap
# --------------------------------------------------------------------------------------------------------


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """3D Dice coefficient ``2|P∩R| / (|P|+|R|)`` of two masks of the same shape; 1.0 when both are empty."""
    p, r = _as_pair(pred, ref)
    inter = int(np.count_nonzero(p & r))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    return 1.0 if total == 0 else 2.0 * inter / total


def jaccard(pred: np.ndarray, ref: np.ndarray) -> float:
    """Jaccard index ``|P∩R| / |P∪R|`` of two masks of the same shape; 1.0 when both are empty."""
    p, r = _as_pair(pred, ref)
    inter = int(np.count_nonzero(p & r))
    union = int(np.count_nonzero(p | r))
    return 1.0 if union == 0 else inter / union


# --------------------------------------------------------------------------------------------------------
# surfaces
# --------------------------------------------------------------------------------------------------------


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a mask: the mask XOR its erosion by the face-connected structuring element,
    with voxels outside the array counted as background (MONAI ``get_mask_edges`` convention)."""
    m = _as_mask(mask, "mask")
    out = np.zeros(m.shape, dtype=bool)
    box = _union_box(m.shape, m, margin=1)
    if box is None:
        return out
    sub = m[box]
    out[box] = sub & ~ndimage.binary_erosion(sub, structure=_cross(m.ndim), border_value=0)
    return out


def _surface_points(mask: np.ndarray, spacing: np.ndarray, offset: Optional[np.ndarray] = None) -> np.ndarray:
    """Physical coordinates (mm, array-axis order) of the surface voxels of a (cropped) mask."""
    if not mask.any():
        return np.zeros((0, mask.ndim))
    surf = mask & ~ndimage.binary_erosion(mask, structure=_cross(mask.ndim), border_value=0)
    idx = np.argwhere(surf).astype(np.float64)
    if offset is not None:
        idx += offset
    return idx * spacing


def directed_surface_distances(pred: np.ndarray, ref: np.ndarray,
                               spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(pred -> ref, ref -> pred)``, one value per surface voxel.

    An empty side gives an empty array for its own direction and ``inf`` for every voxel of the other
    direction (both empty: two empty arrays)."""
    p, r = _as_pair(pred, ref)
    s = _as_spacing(spacing, p.ndim)
    box = _union_box(p.shape, p, r, margin=1)
    if box is None:
        return np.zeros(0), np.zeros(0)
    pts_p = _surface_points(p[box], s)
    pts_r = _surface_points(r[box], s)
    if len(pts_p) == 0:
        return np.zeros(0), np.full(len(pts_r), np.inf)
    if len(pts_r) == 0:
        return np.full(len(pts_p), np.inf), np.zeros(0)
    d_pr = cKDTree(pts_r).query(pts_p, k=1)[0]
    d_rp = cKDTree(pts_p).query(pts_r, k=1)[0]
    return d_pr, d_rp


def percentile(values: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation between order statistics, with
    the interpolation position computed as ``torch.quantile`` computes it for the float32 distances MONAI
    uses (rank = float32(q / 100) * float32(n - 1) in float32), so that HD95 agrees with MONAI to float
    precision. (A float64 rank would differ by up to 1e-4 of the gap between neighbouring order statistics.)"""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n = v.size
    if n == 0:
        raise InputError("percentile", "values", "at least one value")
    if n == 1:
        return float(v[0])
    rank = np.float32(np.float32(q / 100.0) * np.float32(n - 1))
    lo = min(int(np.floor(rank)), n - 1)
    hi = min(lo + 1, n - 1)
    w = float(rank) - lo
    part = np.partition(v, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    return a + w * (b - a) if w < 0.5 else b - (b - a) * (1.0 - w)


def summarise_distances(d_ab: np.ndarray, d_ba: np.ndarray) -> SurfaceDistances:
    """HD, HD95 and MSD (mm) from the two directed distance sets, with the empty-mask rules: both sets
    empty gives zeros, an ``inf`` anywhere (one mask empty) gives ``inf``."""
    d_ab = np.asarray(d_ab, dtype=float)
    d_ba = np.asarray(d_ba, dtype=float)
    if d_ab.size == 0 and d_ba.size == 0:
        return SurfaceDistances(0.0, 0.0, 0.0)
    if (d_ab.size and not np.isfinite(d_ab).all()) or (d_ba.size and not np.isfinite(d_ba).all()) \
            or d_ab.size == 0 or d_ba.size == 0:
        return SurfaceDistances(math.inf, math.inf, math.inf)
    hd = max(float(d_ab.max()), float(d_ba.max()))
    hd95 = max(percentile(d_ab, 95.0), percentile(d_ba, 95.0))
    msd = (float(d_ab.sum()) + float(d_ba.sum())) / (d_ab.size + d_ba.size)
    return SurfaceDistances(hd, hd95, msd)


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """Symmetric Hausdorff distance, HD95 and mean surface distance (paper 000 Eqs. 7-8) in mm.

    ``spacing`` is in the masks' array-axis order (z, y, x) in mm. Both masks empty: all 0; one empty: all
    ``inf``. See the module docstring for the exact (MONAI) conventions."""
    return summarise_distances(*directed_surface_distances(pred, ref, spacing))


# --------------------------------------------------------------------------------------------------------
# all metrics of one pair
# --------------------------------------------------------------------------------------------------------


def compare_masks(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """Every metric of one mask pair on the same grid, as a dict with the keys :data:`COMPARE_KEYS`.

    Volumes in ml, distances in mm; ``volume_diff_ml`` = pred - ref (signed, positive = over-segmentation),
    ``relative_volume_diff`` = (pred - ref) / ref; ``sensitivity`` = |P∩R|/|R|, ``precision`` = |P∩R|/|P|,
    ``com_distance_mm`` = distance between the centres of mass. Empty-mask rules: module docstring."""
    p, r = _as_pair(pred, ref)
    s = _as_spacing(spacing, p.ndim)
    voxel_ml = float(np.prod(s)) / 1000.0
    box = _union_box(p.shape, p, r, margin=1)
    if box is None:
        return {
            "dice": 1.0, "jaccard": 1.0, "volume_ref_ml": 0.0, "volume_pred_ml": 0.0, "volume_diff_ml": 0.0,
            "relative_volume_diff": 0.0, "sensitivity": 1.0, "precision": 1.0, "com_distance_mm": 0.0,
            "hd_mm": 0.0, "hd95_mm": 0.0, "msd_mm": 0.0,
        }
    pc, rc = p[box], r[box]
    n_p = int(np.count_nonzero(pc))
    n_r = int(np.count_nonzero(rc))
    n_i = int(np.count_nonzero(pc & rc))
    n_u = n_p + n_r - n_i
    out: Dict[str, float] = {
        "dice": 2.0 * n_i / (n_p + n_r),
        "jaccard": n_i / n_u,
        "volume_ref_ml": n_r * voxel_ml,
        "volume_pred_ml": n_p * voxel_ml,
        "volume_diff_ml": (n_p - n_r) * voxel_ml,
        "relative_volume_diff": (n_p - n_r) / n_r if n_r else math.inf,
        "sensitivity": n_i / n_r if n_r else 0.0,
        "precision": n_i / n_p if n_p else 0.0,
    }
    if n_p and n_r:
        com_p = np.mean(np.argwhere(pc), axis=0)
        com_r = np.mean(np.argwhere(rc), axis=0)
        out["com_distance_mm"] = float(np.linalg.norm((com_p - com_r) * s))
        pts_p = _surface_points(pc, s)
        pts_r = _surface_points(rc, s)
        d_pr = cKDTree(pts_r).query(pts_p, k=1)[0]
        d_rp = cKDTree(pts_p).query(pts_r, k=1)[0]
        sd = summarise_distances(d_pr, d_rp)
    else:
        out["com_distance_mm"] = math.inf
        sd = SurfaceDistances(math.inf, math.inf, math.inf)
    out["hd_mm"], out["hd95_mm"], out["msd_mm"] = sd.hd, sd.hd95, sd.msd
    return {k: out[k] for k in COMPARE_KEYS}


def _grid_check(pred: Volume, ref: Volume, resample: bool, source: str) -> Volume:
    if ref.same_grid(pred):
        return pred
    if not resample:
        raise InputError(source, "grid", "the prediction on the reference grid (or resample=True)",
                         got=ref.grid_difference(pred))
    arr = pred.array.astype(np.uint8) if pred.array.dtype == bool else pred.array
    out = pred.with_array(arr).resample_like(ref, interpolation="nearest")
    return out.with_array(out.array != 0)


def compare_volumes(pred: Volume, ref: Volume, resample: bool = False) -> Dict[str, float]:
    """:func:`compare_masks` for two mask Volumes (non-zero = inside). Different grids are an
    :class:`InputError` unless ``resample`` is true; then the prediction is resampled (nearest neighbour)
    onto the reference grid."""
    pred = _grid_check(pred, ref, resample, "prediction")
    return compare_masks(pred.array, ref.array, ref.spacing_zyx)


def compare_segmentations(ref: Segmentation, pred: Segmentation,
                          pairs: Union[None, Mapping[str, str], Iterable[Tuple[str, str]]] = None,
                          resample: bool = False) -> List[Dict[str, object]]:
    """Compare segments of two segmentations: one row (dict) per pair, with ``segment`` (reference name),
    ``pred_segment`` (prediction name) and the :data:`COMPARE_KEYS` metrics.

    ``pairs`` maps reference names to prediction names (a dict or ``(ref, pred)`` tuples); by default the
    segments are paired by equal name, in reference order (an :class:`InputError` if no name is shared).
    Different grids are an error unless ``resample`` is true (prediction resampled nearest onto the
    reference)."""
    if pairs is None:
        pair_list = [(n, n) for n in ref.names if n in pred]
        if not pair_list:
            raise InputError("prediction", "segment names", f"at least one name shared with the reference "
                             f"{ref.names}", got=pred.names)
    else:
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        pair_list = [(str(a), str(b)) for a, b in items]
        for a, b in pair_list:
            if a not in ref:
                raise InputError("reference", "segment", f"one of {ref.names}", got=repr(a))
            if b not in pred:
                raise InputError("prediction", "segment", f"one of {pred.names}", got=repr(b))
    same = ref.geometry.same_grid(pred.geometry)
    if not same and not resample:
        raise InputError("prediction", "grid", "the reference grid (or resample=True)",
                         got=ref.geometry.grid_difference(pred.geometry))
    spacing = ref.geometry.spacing_zyx
    rows: List[Dict[str, object]] = []
    for a, b in pair_list:
        mask_p = pred.mask(b)
        if not same:
            mask_p = _grid_check(pred.mask_volume(b), ref.geometry, True, "prediction").array
        row: Dict[str, object] = {"segment": a, "pred_segment": b}
        row.update(compare_masks(mask_p, ref.mask(a), spacing))
        rows.append(row)
    return rows


def mean_finite(values: Iterable[float]) -> Tuple[float, int, int]:
    """``(mean of the finite values, number of finite values, number left out as inf)``.

    The mean is ``inf`` when no value is finite and at least one is ``inf``, 0.0 for no values at all.
    NaN is refused (the metrics here never produce it)."""
    arr = np.asarray(list(values), dtype=float).reshape(-1)
    if np.isnan(arr).any():
        raise InputError("mean_finite", "values", "numbers or inf, not NaN")
    finite = np.isfinite(arr)
    n_f, n_inf = int(finite.sum()), int((~finite).sum())
    if n_f:
        return float(arr[finite].mean()), n_f, n_inf
    return (math.inf if n_inf else 0.0), 0, n_inf
