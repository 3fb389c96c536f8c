"""A synthetic head-and-neck CT phantom with organ-at-risk masks, deterministic from a seed.

The phantom stands in where no real data can: known answers, as many cases as wanted, and fast CPU
training. Anatomy is built from simple shapes in millimetres around the head centre (LPS axes: +x patient
left, +y posterior, +z superior), each tissue with a CT-like HU value:

* air -1000 outside and in the pharynx; subcutaneous and orbital fat about -100 / -80;
  soft tissue (muscle) about 40; brain about 30; parotid glands about -20 (fattier than muscle);
  vitreous (eye globe) about 10, lens about 100 (brighter than the globe around it); optic nerve about
  35 inside orbital fat; spinal cord about 35 inside CSF (about 10) inside a bony canal;
  bone about 700-1000 (skull shell and base, mandible, cervical vertebrae).
* The image is smoothed slightly (partial volume) and Gaussian noise is added; HU are stored as int16.
* Each case differs: the head is shifted (mm), scaled, rotated about the z axis; every structure has its
  own size and position jitter and the tissue HU vary a little.

Structures (:data:`STRUCTURES`) span very different sizes: ``Brain`` (large), ``Parotid_L``/``_R``
(medium), ``Mandible``, ``SpinalCord`` (thin, long), ``OpticNerve_L``/``_R`` (thin, tiny) and
``Lens_L``/``_R`` (tiny); their prominences (fraction of true voxels, paper 000 Eq. 4) span more than two
orders of magnitude. Masks are exclusive (each voxel belongs to at most one structure) and never empty:
on a grid too coarse for a structure, the voxel nearest its centre is used.

The default grid is 32 x 128 x 128 voxels (z, y, x) of 1.6 x 1.6 x 3 mm (x, y, z), i.e. a 205 x 205 x 96
mm field of view; a 2D U-Net trains on six such cases in about a minute on two CPU cores. Give ``shape``
alone to sample the same field of view more coarsely or finely, ``spacing`` alone to choose the voxel
size (the shape follows), or both.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError
from .segmentation import Segmentation
from .volume import Box, Volume

PathLike = Union[str, "os.PathLike[str]"]
SeedLike = Union[int, Sequence[int]]

DEFAULT_SHAPE: Tuple[int, int, int] = (32, 128, 128)
"""Default grid (z, y, x) in voxels."""
DEFAULT_SPACING: Tuple[float, float, float] = (1.6, 1.6, 3.0)
"""Default voxel size (x, y, z) in mm."""
FIELD_OF_VIEW_MM: Tuple[float, float, float] = (204.8, 204.8, 96.0)
"""Default field of view (x, y, z) in mm: the anatomy is laid out to fit it."""

STRUCTURES: Tuple[str, ...] = (
    "Brain", "Parotid_L", "Parotid_R", "SpinalCord", "Mandible",
    "Lens_L", "Lens_R", "OpticNerve_L", "OpticNerve_R",
)
"""The structures every phantom case has, in segmentation order."""

COLORS: Dict[str, Tuple[float, float, float]] = {
    "Brain": (0.98, 0.82, 0.70),
    "Parotid_L": (0.35, 0.75, 0.35),
    "Parotid_R": (0.25, 0.55, 0.90),
    "SpinalCord": (1.00, 0.90, 0.20),
    "Mandible": (0.90, 0.90, 0.80),
    "Lens_L": (0.20, 0.85, 0.85),
    "Lens_R": (0.85, 0.30, 0.85),
    "OpticNerve_L": (0.95, 0.50, 0.15),
    "OpticNerve_R": (0.85, 0.20, 0.20),
}

# Tissue labels used while painting (later tissues overwrite earlier ones).
_OUTSIDE, _FAT, _SOFT, _ORBIT_FAT, _AIRWAY, _BONE, _CSF, _EYE = range(8)
_FIRST_STRUCTURE = 16  # structure k (index in STRUCTURES) is label 16 + k


# --------------------------------------------------------------------------------------------------------
# Geometry helpers (level functions: <= 1 inside)
# --------------------------------------------------------------------------------------------------------


def _ellipsoid(u: Tuple[np.ndarray, ...], centre: Sequence[float], semi: Sequence[float]) -> np.ndarray:
    return sum(((u[a] - centre[a]) / semi[a]) ** 2 for a in range(3))


def _ellipse_xy(u: Tuple[np.ndarray, ...], centre_xy: Sequence[float], semi_xy: Sequence[float],
                z_range: Tuple[float, float]) -> np.ndarray:
    lev = ((u[0] - centre_xy[0]) / semi_xy[0]) ** 2 + ((u[1] - centre_xy[1]) / semi_xy[1]) ** 2
    return np.where((u[2] >= z_range[0]) & (u[2] <= z_range[1]), lev, np.inf)


def _capsule(u: Tuple[np.ndarray, ...], a: Sequence[float], b: Sequence[float], radius: float) -> np.ndarray:
    """Distance to the segment a-b divided by ``radius``, squared (so <= 1 inside)."""
    a = np.asarray(a, dtype=float)
    d = np.asarray(b, dtype=float) - a
    rel = [u[i] - a[i] for i in range(3)]
    t = np.clip(sum(rel[i] * d[i] for i in range(3)) / float(d @ d), 0.0, 1.0)
    return sum((rel[i] - t * d[i]) ** 2 for i in range(3)) / radius ** 2


def _check_shape(shape: Sequence[int]) -> Tuple[int, int, int]:
    try:
        vals = tuple(int(v) for v in shape)
        ok = len(vals) == 3 and all(float(v) == int(v) for v in shape)
    except (TypeError, ValueError):
        ok, vals = False, ()
    if not ok or min(vals) < 2 or min(vals[1:]) < 8:
        raise InputError("phantom", "shape", "three integers (z, y, x), at least 2 slices of 8 x 8", got=shape)
    return vals  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> Tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError("phantom", "spacing", "three positive numbers (x, y, z) in mm", got=spacing)
    return vals  # type: ignore[return-value]


def phantom_grid(shape: Optional[Sequence[int]] = None,
                 spacing: Optional[Sequence[float]] = None) -> Tuple[Tuple[int, int, int], Tuple[float, float, float]]:
    """The grid ``(shape (z, y, x), spacing (x, y, z) mm)`` that :func:`make_phantom` uses.

    Neither given: the defaults. ``shape`` alone: the default field of view sampled on ``shape``.
    ``spacing`` alone: the default field of view at that voxel size. Both: as given."""
    if shape is None and spacing is None:
        return DEFAULT_SHAPE, DEFAULT_SPACING
    if shape is not None and spacing is not None:
        return _check_shape(shape), _check_spacing(spacing)
    fov = np.asarray(FIELD_OF_VIEW_MM)
    if shape is not None:
        shp = _check_shape(shape)
        sp = tuple(float(v) for v in fov / np.asarray(shp[::-1], dtype=float))
        return shp, sp  # type: ignore[return-value]
    sp = _check_spacing(spacing)  # type: ignore[arg-type]
    xyz = np.maximum(np.round(fov / np.asarray(sp)), [8, 8, 2]).astype(int)
    return (int(xyz[2]), int(xyz[1]), int(xyz[0])), sp


# --------------------------------------------------------------------------------------------------------
# The phantom
# --------------------------------------------------------------------------------------------------------


def make_phantom(seed: SeedLike = 0, shape: Optional[Sequence[int]] = None,
                 spacing: Optional[Sequence[float]] = None, noise_hu: float = 10.0,
                 smoothing: float = 0.6) -> Tuple[Volume, Segmentation]:
    """One synthetic head-and-neck CT case and its structures.

    ``seed`` (an int or a sequence of ints) fixes everything random: the same seed gives identical
    arrays. ``shape`` (z, y, x) voxels and ``spacing`` (x, y, z) mm choose the grid (see
    :func:`phantom_grid`). ``noise_hu`` is the standard deviation of the added Gaussian noise (HU);
    ``smoothing`` the in-plane Gaussian blur in voxels applied before the noise (half of it along z).

    Returns ``(image, segmentation)``: an int16 HU :class:`Volume` with LPS geometry (axial, identity
    direction, origin away from zero like a scanner's) and a :class:`Segmentation` on the same grid
    holding :data:`STRUCTURES` with colours."""
    from scipy import ndimage

    if not (math.isfinite(noise_hu) and noise_hu >= 0):
        raise InputError("phantom", "noise_hu", "a non-negative number of HU", got=noise_hu)
    if not (math.isfinite(smoothing) and smoothing >= 0):
        raise InputError("phantom", "smoothing", "a non-negative number of voxels", got=smoothing)
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise InputError("phantom", "seed", "a non-negative integer (or a sequence of them)", got=seed) from None
    shp, sp = phantom_grid(shape, spacing)
    nz, ny, nx = shp
    sx, sy, sz = sp

    # Scanner-like geometry: table centre at y = +25 mm, slices around z = -180 mm.
    origin = (-(nx - 1) * sx / 2.0, -(ny - 1) * sy / 2.0 + 25.0, -(nz - 1) * sz / 2.0 - 180.0)
    centre = np.array([0.0, 25.0, -180.0])

    # ---- per-case variation (drawn in a fixed order so that a seed always gives the same case) ----
    shift = np.array([rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(-4, 4)])
    scale = rng.uniform(0.94, 1.06) * rng.uniform(0.97, 1.03, size=3)
    theta = math.radians(rng.uniform(-5.0, 5.0))

    def jit(c: Sequence[float], a: Sequence[float], dc: float = 1.5, da: float = 0.1):
        c2 = np.asarray(c, float) + rng.uniform(-dc, dc, size=3)
        a2 = np.asarray(a, float) * rng.uniform(1 - da, 1 + da, size=3)
        return c2, a2

    hu = {
        "air": -1000.0, "fat": rng.normal(-100, 6), "soft": rng.normal(40, 4), "orbit_fat": rng.normal(-80, 6),
        "bone": rng.normal(900, 60), "csf": rng.normal(10, 2), "eye": rng.normal(10, 3),
        "Brain": rng.normal(30, 2), "Parotid": rng.normal(-20, 5), "SpinalCord": rng.normal(35, 3),
        "Mandible": rng.normal(950, 60), "Lens": rng.normal(100, 6), "OpticNerve": rng.normal(35, 3),
    }

    # Anatomy coordinates u (mm, LPS axes, head centre at 0) of every voxel centre.
    k, j, i = np.meshgrid(np.arange(nz, dtype=np.float32), np.arange(ny, dtype=np.float32),
                          np.arange(nx, dtype=np.float32), indexing="ij")
    px = origin[0] + i * sx - (centre[0] + shift[0])
    py = origin[1] + j * sy - (centre[1] + shift[1])
    pz = origin[2] + k * sz - (centre[2] + shift[2])
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    u = ((cos_t * px + sin_t * py) / scale[0], (-sin_t * px + cos_t * py) / scale[1], pz / scale[2])
    del k, j, i, px, py, pz

    label = np.zeros(shp, dtype=np.uint8)
    levels: Dict[int, np.ndarray] = {}

    def paint(lab: int, inside: np.ndarray) -> None:
        label[inside] = lab

    # Body: cranium and face/neck, with a subcutaneous fat layer.
    c_cr, a_cr = jit((0, 6, 8), (76, 94, 64), 1.0, 0.04)
    c_nk, a_nk = jit((0, 8, 0), (64, 84, 1), 1.0, 0.04)
    body = (_ellipsoid(u, c_cr, a_cr) <= 1) | (_ellipse_xy(u, c_nk[:2], a_nk[:2], (-1e9, 8.0)) <= 1)
    inner = (_ellipsoid(u, c_cr, a_cr - 6) <= 1) | (_ellipse_xy(u, c_nk[:2], a_nk[:2] - 6, (-1e9, 8.0)) <= 1)
    paint(_FAT, body)
    paint(_SOFT, inner)

    # Orbits (fat), parotids, pharynx.
    sides = {"L": 1.0, "R": -1.0}
    for side, sgn in sides.items():
        c, a = jit((sgn * 30, -58, 4), (17, 22, 13))
        paint(_ORBIT_FAT, (_ellipsoid(u, c, a) <= 1) & inner)
    for side, sgn in sides.items():
        c, a = jit((sgn * 47, 21, -22), (10, 15, 14), 2.0, 0.12)
        lev = _ellipsoid(u, c, a)
        levels[_FIRST_STRUCTURE + STRUCTURES.index(f"Parotid_{side}")] = lev
        paint(_FIRST_STRUCTURE + STRUCTURES.index(f"Parotid_{side}"), (lev <= 1) & body)
    c, a = jit((0, 6, 0), (9, 6, 1), 1.0, 0.15)
    paint(_AIRWAY, _ellipse_xy(u, c[:2], a[:2], (-1e9, -10.0)) <= 1)

    # Skull shell and base (with the foramen magnum), brain inside.
    c_br, a_br = jit((0, 18, 16), (62, 64, 42), 1.0, 0.05)
    brain_lev = np.where(u[2] > -6.0, _ellipsoid(u, c_br, a_br), np.inf)
    in_brain_ell = _ellipsoid(u, c_br, a_br) <= 1
    skull = (_ellipsoid(u, c_br, a_br + 6) <= 1) & ~in_brain_ell & (u[2] > -14)
    base = in_brain_ell & (u[2] > -12) & (u[2] <= -6)
    cord_xy = np.array([0.0, 46.0]) + rng.uniform(-1.5, 1.5, size=2)
    r_cord = 4.5 * rng.uniform(0.9, 1.1)
    r_xy2 = (u[0] - cord_xy[0]) ** 2 + (u[1] - cord_xy[1]) ** 2
    foramen = r_xy2 <= (r_cord + 3.5) ** 2
    paint(_BONE, (skull | (base & ~foramen)) & body)

    # Cervical vertebrae (arch around the canal and a body in front), CSF and cord inside.
    verts = ((r_xy2 <= 15.0 ** 2) | (_ellipse_xy(u, (cord_xy[0], cord_xy[1] - 20), (14, 9), (-1e9, 0)) <= 1))
    paint(_BONE, verts & (u[2] <= -12) & (r_xy2 > (r_cord + 3.0) ** 2))
    paint(_CSF, (r_xy2 <= (r_cord + 3.0) ** 2) & (u[2] <= -6))
    cord_lev = np.where(u[2] <= -7.0, r_xy2 / r_cord ** 2, np.inf)
    levels[_FIRST_STRUCTURE + STRUCTURES.index("SpinalCord")] = cord_lev
    paint(_FIRST_STRUCTURE + STRUCTURES.index("SpinalCord"), cord_lev <= 1)

    # Mandible: a horseshoe body and two rami.
    c_md = np.array([0.0, -20.0]) + rng.uniform(-1.5, 1.5, size=2)
    a_md = np.array([44.0, 46.0]) * rng.uniform(0.95, 1.05, size=2)
    th = 7.0 * rng.uniform(0.9, 1.1)
    z_md = (-44.0 + rng.uniform(-2, 2), -16.0 + rng.uniform(-2, 2))
    outer = _ellipse_xy(u, c_md, a_md, z_md)
    inner_md = _ellipse_xy(u, c_md, a_md - th, z_md)
    body_md = (outer <= 1) & (inner_md > 1) & (u[1] < c_md[1] + 8)
    rami = np.zeros(shp, dtype=bool)
    for sgn in sides.values():
        rx = sgn * (a_md[0] - th / 2 - 1.0)
        rami |= _ellipse_xy(u, (rx, c_md[1] + 16), (th * 0.65, 10), (z_md[0] + 4, -6.0)) <= 1
    mand = body_md | rami
    mand_lev = np.where(mand, 0.0, outer + 1.0)
    levels[_FIRST_STRUCTURE + STRUCTURES.index("Mandible")] = mand_lev
    paint(_FIRST_STRUCTURE + STRUCTURES.index("Mandible"), mand)

    # Brain after the bone (its ellipsoid is the skull's inside).
    levels[_FIRST_STRUCTURE + STRUCTURES.index("Brain")] = brain_lev
    paint(_FIRST_STRUCTURE + STRUCTURES.index("Brain"), brain_lev <= 1)

    # Eyes with lenses in front, optic nerves from the back of each globe to the optic canal.
    for side, sgn in sides.items():
        c_eye, a_eye = jit((sgn * 31, -66, 4), (12, 12, 12), 1.5, 0.06)
        paint(_EYE, _ellipsoid(u, c_eye, a_eye) <= 1)
        c_ln = c_eye + np.array([0.0, -a_eye[1] + 3.0, 0.0]) + rng.uniform(-0.5, 0.5, size=3)
        a_ln = np.array([4.5, 2.2, 3.5]) * rng.uniform(0.9, 1.1, size=3)
        lev = _ellipsoid(u, c_ln, a_ln)
        levels[_FIRST_STRUCTURE + STRUCTURES.index(f"Lens_{side}")] = lev
        paint(_FIRST_STRUCTURE + STRUCTURES.index(f"Lens_{side}"), lev <= 1)
    for side, sgn in sides.items():
        start = np.array([sgn * 30.0, -66 + 11.0, 4.0]) + rng.uniform(-1, 1, size=3)
        stop = np.array([sgn * 15.0, -47.0, 5.0]) + rng.uniform(-1, 1, size=3)
        lev = _capsule(u, start, stop, 2.2 * rng.uniform(0.9, 1.1))
        levels[_FIRST_STRUCTURE + STRUCTURES.index(f"OpticNerve_{side}")] = lev
        paint(_FIRST_STRUCTURE + STRUCTURES.index(f"OpticNerve_{side}"), lev <= 1)

    # Every structure has at least one voxel: on a coarse grid, the voxel nearest its centre.
    for lab, lev in levels.items():
        if not np.any(label == lab):
            flat = int(np.argmin(lev))
            label.reshape(-1)[flat] = lab

    # ---- intensities ----
    table = np.zeros(256, dtype=np.float32)
    table[_OUTSIDE], table[_FAT], table[_SOFT] = hu["air"], hu["fat"], hu["soft"]
    table[_ORBIT_FAT], table[_AIRWAY], table[_BONE] = hu["orbit_fat"], hu["air"], hu["bone"]
    table[_CSF], table[_EYE] = hu["csf"], hu["eye"]
    for n, name in enumerate(STRUCTURES):
        table[_FIRST_STRUCTURE + n] = hu[name.split("_")[0]]
    image = table[label]
    # Texture before blurring: strong heterogeneity in bone (about 80 HU), a little (4 HU) elsewhere.
    image += rng.normal(0.0, 1.0, size=shp).astype(np.float32) * np.where(table[label] > 300, 80.0, 4.0)
    if smoothing > 0:
        image = ndimage.gaussian_filter(image, sigma=(smoothing / 2, smoothing, smoothing), mode="nearest")
    if noise_hu > 0:
        image += rng.normal(0.0, noise_hu, size=shp).astype(np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    volume = Volume(image, sp, origin, np.eye(3))
    seg = Segmentation.on_grid(volume)
    for n, name in enumerate(STRUCTURES):
        seg.add(name, label == _FIRST_STRUCTURE + n, COLORS[name])
    return volume, seg


def body_mask(volume: Volume, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient's body in a CT: voxels above ``threshold_hu``, holes (airways) filled slice by slice."""
    from scipy import ndimage

    mask = np.asarray(volume.array) > threshold_hu
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def head_box(volume: Volume, margin_mm: float = 5.0) -> Box:
    """The voxel box (z, y, x) around the body, grown by ``margin_mm`` in-plane, clipped to the grid."""
    box = Box.from_mask(body_mask(volume))
    if box is None:
        raise InputError("phantom", "image", "a body above -500 HU", got="no such voxel")
    m = [0, int(math.ceil(margin_mm / volume.spacing[1])), int(math.ceil(margin_mm / volume.spacing[0]))]
    return box.pad(m).clip(volume.shape)


def prominences(segmentations: Sequence[Segmentation]) -> Dict[str, float]:
    """Prominence of each structure over a set of cases (paper 000 Eq. 4): true voxels of the structure
    summed over all cases divided by all voxels of all cases."""
    total = sum(int(np.prod(s.geometry.shape)) for s in segmentations)
    names: List[str] = []
    for s in segmentations:
        names += [n for n in s.names if n not in names]
    return {n: float(sum(int(np.count_nonzero(s.mask(n))) for s in segmentations if n in s)) / total
            for n in names}


def case_name(index: int) -> str:
    """Folder name of case ``index`` in a phantom dataset (``case000``, ``case001``, ...)."""
    return f"case{index:03d}"


def make_phantom_dataset(root: PathLike, cases: int = 6, seed: int = 0, **kw) -> List[Path]:
    """Write ``cases`` phantom cases under ``root`` in the dataset layout (``caseNNN/image.nrrd``,
    ``segmentation.seg.nrrd``, ``roi.mrk.json`` around the head) through
    :func:`AutoSegSensitivity.io.write_case`; returns the case folders. Case ``n`` is
    ``make_phantom(seed=(seed, n), **kw)``; ``kw`` goes to :func:`make_phantom` (shape, spacing...)."""
    from .io import box_to_roi, write_case

    try:
        n_cases = int(cases)
        ok = n_cases == cases and n_cases >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError("phantom", "cases", "a positive integer", got=cases)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError("phantom", "seed", "a non-negative integer", got=seed)
    root = Path(root)
    folders = []
    for n in range(n_cases):
        image, seg = make_phantom(seed=(int(seed), n), **kw)
        roi = box_to_roi(head_box(image), image, name="Head")
        folders.append(write_case(root / case_name(n), image, seg, roi))
    return folders


__all__ = [
    "STRUCTURES", "COLORS", "DEFAULT_SHAPE", "DEFAULT_SPACING", "FIELD_OF_VIEW_MM", "phantom_grid",
    "make_phantom", "make_phantom_dataset", "body_mask", "head_box", "prominences", "case_name",
]
