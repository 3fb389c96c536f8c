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
* **Surface Dice at tolerance** (NSD, Nikolov et al. 2021, DeepMind's ``surface-distance``
  ``compute_surface_dice_at_tolerance``): the surface is made of *surfels*, one per 2x2x2 cell of voxels
  (2x2 in 2D) whose corners are neither all inside nor all outside, with the area (mm^2; contour length in
  mm in 2D) of the marching-cubes surface inside that cell (vertices at edge midpoints, see
  :func:`surfel_area_table`). Each surfel sits at its cell; distances between surfels are Euclidean with
  spacing. NSD = (area of reference surfels within ``tau`` mm of the predicted surface + area of predicted
  surfels within ``tau`` of the reference surface) / (total reference area + total predicted area), a
  fraction in [0, 1] (higher is better; "within" is ``d <= tau``). Both empty: 1 (as Dice; the package
  gives NaN); one empty: 0 (as the package).
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

import itertools
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
    "DEFAULT_NSD_TOLERANCE_MM",
    "surfel_area_table",
    "surface_dice",
    "nsd_column",
]

DEFAULT_NSD_TOLERANCE_MM = 2.0
"""Default tolerance (mm) of the surface Dice (``--nsd-tolerance``)."""

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
"""Keys of the dictionary :func:`compare_masks` returns, in table-column order (then ``nsd_<tau>mm``, see
:func:`nsd_column`)."""


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
# surfels and the surface Dice at tolerance
# --------------------------------------------------------------------------------------------------------


def nsd_column(tolerance_mm: float) -> str:
    """Table column of the surface Dice at ``tolerance_mm``: ``nsd_2mm``, ``nsd_1.5mm`` (compact)."""
    return f"nsd_{float(tolerance_mm):g}mm"


def _check_tolerance(tolerance_mm: float) -> float:
    try:
        tau = float(tolerance_mm)
    except (TypeError, ValueError):
        tau = math.nan
    if not math.isfinite(tau) or tau < 0:
        raise InputError("surface Dice", "tolerance", "a finite tolerance >= 0 in mm", got=tolerance_mm)
    return tau


def _corner_bit(corner: Tuple[int, ...]) -> int:
    """Bit of a cell corner in the cell's code: corner (i, j, k) -> 4i + 2j + k (2D: 2i + j)."""
    return int(sum(c << (len(corner) - 1 - a) for a, c in enumerate(corner)))


def _cell_pieces(code: int, ndim: int) -> List[np.ndarray]:
    """The marching-cubes pieces of one cell, in unit-cell coordinates: 2D segments (2, 2) or 3D triangles
    (3, 3), with vertices at the midpoints of the cell's edges whose corners differ.

    The surface is built around the corners of the side with fewer corners (the inside on a tie), so a
    configuration and its complement give the same surface; on a face with four cut edges the segments
    separate that side's corners. Each closed 3D polygon is cut into a fan of triangles from the vertex
    whose fan holds the most triangles lying in a mid-plane of the cell (then the most diagonals joining two
    vertices in one mid-plane, then the first vertex): for non-planar polygons this is the triangulation of
    the reference implementation's table (checked for all codes in the tests)."""
    corners = list(itertools.product((0, 1), repeat=ndim))
    inside = {c: bool(code >> _corner_bit(c) & 1) for c in corners}
    if sum(inside.values()) > len(corners) // 2:
        inside = {c: not v for c, v in inside.items()}
    edges = [(a, b) for a in corners for b in corners
             if a < b and sum(x != y for x, y in zip(a, b)) == 1 and inside[a] != inside[b]]
    if not edges:
        return []
    mid = {e: tuple((a + b) / 2.0 for a, b in zip(*e)) for e in edges}
    faces = [()] if ndim == 2 else [(ax, v) for ax in range(3) for v in (0, 1)]
    links: Dict[tuple, List[tuple]] = {e: [] for e in edges}
    segments = []
    for face in faces:
        on = [e for e in edges if not face or (e[0][face[0]] == face[1] and e[1][face[0]] == face[1])]
        if len(on) == 2:
            pairs = [on]
        else:  # 0 or 4 cut edges; 4: one segment around each corner of the chosen side
            pairs = [[e for e in on if c in e] for c in corners
                     if inside[c] and (not face or c[face[0]] == face[1])] if on else []
        for a, b in pairs:
            links[a].append(b)
            links[b].append(a)
            segments.append(np.array([mid[a], mid[b]]))
    if ndim == 2:
        return segments
    triangles: List[np.ndarray] = []
    seen: set = set()
    for first in edges:
        if first in seen:
            continue
        loop, prev, cur = [first], None, first
        seen.add(first)
        while True:
            nxt = [e for e in links[cur] if e != prev and e not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        pts = [mid[e] for e in loop]

        def rank(start: int) -> Tuple[int, int, int]:
            v = pts[start:] + pts[:start]
            flat = sum(any(all(p[ax] == 0.5 for p in (v[0], v[i], v[i + 1])) for ax in range(3))
                       for i in range(1, len(v) - 1))
            diag = sum(any(v[0][ax] == 0.5 == v[i][ax] for ax in range(3)) for i in range(2, len(v) - 1))
            return flat, diag, -start

        start = max(range(len(pts)), key=rank)
        v = pts[start:] + pts[:start]
        triangles.extend(np.array([v[0], v[i], v[i + 1]]) for i in range(1, len(v) - 1))
    return triangles


_PIECES: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}


def _pieces(ndim: int) -> Tuple[np.ndarray, np.ndarray]:
    """All pieces of all codes of a ``ndim`` cell: ``(code of each piece, vertices (P, ndim, ndim))``."""
    if ndim not in _PIECES:
        codes, verts = [], []
        full = 2 ** (2 ** ndim) - 1
        pieces: Dict[int, List[np.ndarray]] = {}
        for code in range(full + 1):
            # a configuration and its complement have the same surface
            if full - code not in pieces:
                pieces[code] = _cell_pieces(code, ndim)
            for piece in pieces.get(code, pieces.get(full - code)):
                codes.append(code)
                verts.append(piece)
        _PIECES[ndim] = (np.asarray(codes), np.asarray(verts))
    return _PIECES[ndim]


def surfel_area_table(spacing: Sequence[float]) -> np.ndarray:
    """Surface area (mm^2) of the marching-cubes surface in one cell of voxels of ``spacing`` (mm, array-axis
    order), for every cell code (256 in 3D; 16 contour lengths in mm in 2D). A cell's code has bit
    ``4i + 2j + k`` (2D ``2i + j``) set when its corner ``(i, j, k)`` is inside the mask."""
    s = np.asarray(spacing, dtype=float).reshape(-1)
    codes, verts = _pieces(s.size)
    v = verts * s
    if s.size == 2:
        size = np.linalg.norm(v[:, 1] - v[:, 0], axis=1)
    else:
        size = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    return np.bincount(codes, weights=size, minlength=2 ** (2 ** s.size))


def _cell_codes(mask: np.ndarray, pad: Union[int, Sequence[Tuple[int, int]]] = 0) -> np.ndarray:
    """Codes (uint8) of the cells of ``mask`` padded by one voxel on every side (``pad``: the padding
    value, or one ``(before, after)`` pair per axis); cell ``c`` has the voxels ``c - 1 .. c`` of ``mask`` as
    corners, so the result is one larger than ``mask`` along every axis."""
    m = np.pad(mask.astype(np.uint8), 1, constant_values=pad)
    n = mask.shape
    out = np.zeros(tuple(k + 1 for k in n), dtype=np.uint8)
    for corner in itertools.product((0, 1), repeat=mask.ndim):
        sl = tuple(slice(c, c + k + 1) for c, k in zip(corner, n))
        out |= m[sl] << np.uint8(_corner_bit(corner))
    return out


def _surfels(codes: np.ndarray) -> np.ndarray:
    """Cells that hold a piece of surface: neither no corner nor every corner inside."""
    return (codes != 0) & (codes != 2 ** (2 ** codes.ndim) - 1)


def _nsd_parts(code_p: np.ndarray, code_r: np.ndarray, spacing: np.ndarray, tau: float,
               table: Optional[np.ndarray] = None) -> Tuple[float, float]:
    """``(area within tau, total area)`` of both surfaces, from their cell codes on one grid."""
    table = surfel_area_table(spacing) if table is None else table
    sp, sr = _surfels(code_p), _surfels(code_r)
    area_p = table[code_p[sp]].sum()
    area_r = table[code_r[sr]].sum()
    if not sp.any() or not sr.any():
        return 0.0, float(area_p + area_r)
    near_r = ndimage.distance_transform_edt(~sr, sampling=spacing) <= tau
    near_p = ndimage.distance_transform_edt(~sp, sampling=spacing) <= tau
    within = table[code_p[sp & near_r]].sum() + table[code_r[sr & near_p]].sum()
    return float(within), float(area_p + area_r)


def surface_dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                 tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> float:
    """Surface Dice at tolerance ``tolerance_mm`` (NSD, a fraction in [0, 1]) of two masks of one shape,
    ``spacing`` in mm in array-axis order. Both masks empty: 1.0; one empty: 0.0. Definition: module
    docstring (that of DeepMind's ``surface-distance``, ``compute_surface_dice_at_tolerance``)."""
    p, r = _as_pair(pred, ref)
    s = _as_spacing(spacing, p.ndim)
    tau = _check_tolerance(tolerance_mm)
    box = _union_box(p.shape, p, r, margin=0)
    if box is None:
        return 1.0
    within, total = _nsd_parts(_cell_codes(p[box]), _cell_codes(r[box]), s, tau)
    return within / total


# --------------------------------------------------------------------------------------------------------
# all metrics of one pair
# --------------------------------------------------------------------------------------------------------


def compare_masks(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                  nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Dict[str, float]:
    """Every metric of one mask pair on the same grid, as a dict with the keys :data:`COMPARE_KEYS` and then
    the surface Dice at ``nsd_tolerance_mm`` under :func:`nsd_column` (e.g. ``nsd_2mm``).

    Volumes in ml, distances in mm; ``volume_diff_ml`` = pred - ref (signed, positive = over-segmentation),
    ``relative_volume_diff`` = (pred - ref) / ref; ``sensitivity`` = |P∩R|/|R|, ``precision`` = |P∩R|/|P|,
    ``com_distance_mm`` = distance between the centres of mass. Empty-mask rules: module docstring."""
    p, r = _as_pair(pred, ref)
    s = _as_spacing(spacing, p.ndim)
    tau = _check_tolerance(nsd_tolerance_mm)
    nsd_key = nsd_column(tau)
    voxel_ml = float(np.prod(s)) / 1000.0
    box = _union_box(p.shape, p, r, margin=1)
    if box is None:
        return {
            "dice": 1.0, "jaccard": 1.0, "volume_ref_ml": 0.0, "volume_pred_ml": 0.0, "volume_diff_ml": 0.0,
            "relative_volume_diff": 0.0, "sensitivity": 1.0, "precision": 1.0, "com_distance_mm": 0.0,
            "hd_mm": 0.0, "hd95_mm": 0.0, "msd_mm": 0.0, nsd_key: 1.0,
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
    within, total = _nsd_parts(_cell_codes(pc), _cell_codes(rc), s, tau)
    out[nsd_key] = within / total
    return {k: out[k] for k in COMPARE_KEYS + (nsd_key,)}


def _grid_check(pred: Volume, ref: Volume, resample: bool, source: str) -> Volume:
    if ref.same_grid(pred):
        return pred
    if not resample:
        raise InputError(source, "grid", "the prediction on the reference grid (or resample=True)",
                         got=ref.grid_difference(pred))
    arr = pred.array.astype(np.uint8) if pred.array.dtype == bool else pred.array
    out = pred.with_array(arr).resample_like(ref, interpolation="nearest")
    return out.with_array(out.array != 0)


def compare_volumes(pred: Volume, ref: Volume, resample: bool = False,
                    nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Dict[str, float]:
    """:func:`compare_masks` for two mask Volumes (non-zero = inside). Different grids are an
    :class:`InputError` unless ``resample`` is true; then the prediction is resampled (nearest neighbour)
    onto the reference grid."""
    pred = _grid_check(pred, ref, resample, "prediction")
    return compare_masks(pred.array, ref.array, ref.spacing_zyx, nsd_tolerance_mm)


def compare_segmentations(ref: Segmentation, pred: Segmentation,
                          pairs: Union[None, Mapping[str, str], Iterable[Tuple[str, str]]] = None,
                          resample: bool = False,
                          nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> List[Dict[str, object]]:
    """Compare segments of two segmentations: one row (dict) per pair, with ``segment`` (reference name),
    ``pred_segment`` (prediction name), the :data:`COMPARE_KEYS` metrics and the surface Dice at
    ``nsd_tolerance_mm`` (column :func:`nsd_column`).

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
        row.update(compare_masks(mask_p, ref.mask(a), spacing, nsd_tolerance_mm))
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
