"""Volumes with geometry, and boxes of voxel indices.

Conventions (the one place they are written down; every other module refers here):

* **Array order** is ``(z, y, x)`` = (slice k, row j, column i), as ``SimpleITK.GetArrayFromImage`` gives.
* **Geometry** is in patient **LPS** millimetres, as DICOM and ITK use:
  ``spacing`` is ``(sx, sy, sz)`` in **(x, y, z) = (i, j, k) order**, ``origin`` is the LPS position of the
  centre of voxel (i, j, k) = (0, 0, 0), and ``direction`` is a 3x3 matrix whose **columns** are the LPS unit
  vectors of the i, j and k axes (ITK's ``GetDirection()`` reshaped row-major to 3x3).
  ``Volume.spacing_zyx`` gives the spacing in array-axis order, which is what functions that take a bare
  array and a spacing (metrics, surface distances) expect.
* The voxel-to-physical map is ``p_LPS = origin + direction @ (spacing * (i, j, k))``.
* **Slicer** works in **RAS**: ``p_RAS = diag(-1, -1, 1) @ p_LPS``. Slicer's ``IJKToRASMatrix`` is
  therefore ``LPS_TO_RAS @ ijk_to_lps`` with the same (i, j, k) index order (i along array axis 2).
  :func:`lps_to_ras` / :func:`ras_to_lps` and :meth:`Volume.ijk_to_ras` are the only conversions;
  file formats that store RAS (NIfTI via SimpleITK is already converted; .mrk.json may say RAS) use them.
* A :class:`Box` holds voxel indices in array order: ``start`` inclusive, ``stop`` exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
"""3x3 matrix that maps LPS coordinates to RAS (it is its own inverse)."""

Triple = Tuple[float, float, float]


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Map points (..., 3) from LPS to RAS millimetres."""
    return np.asarray(points, dtype=float) * np.array([-1.0, -1.0, 1.0])


def ras_to_lps(points: np.ndarray) -> np.ndarray:
    """Map points (..., 3) from RAS to LPS millimetres."""
    return lps_to_ras(points)


# --------------------------------------------------------------------------------------------------------
# Box
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """An axis-aligned box of voxel indices in array order ``(z, y, x)``: ``start`` inclusive, ``stop``
    exclusive. A box may extend outside an image (negative start, stop beyond the shape); use
    :meth:`clip` to bound it."""

    start: Tuple[int, int, int]
    stop: Tuple[int, int, int]

    def __post_init__(self) -> None:
        start = tuple(int(v) for v in self.start)
        stop = tuple(int(v) for v in self.stop)
        if len(start) != 3 or len(stop) != 3:
            raise InputError("Box", "start/stop", "three integers each (z, y, x)", got=(self.start, self.stop))
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Optional["Box"]:
        """Tightest box around the true voxels of a 3D mask, or ``None`` when the mask is empty."""
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3:
            raise InputError("mask", "ndim", "a 3D array", got=mask.ndim)
        if not mask.any():
            return None
        start, stop = [], []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hits = np.flatnonzero(mask.any(axis=other))
            start.append(int(hits[0]))
            stop.append(int(hits[-1]) + 1)
        return cls(tuple(start), tuple(stop))

    @property
    def size(self) -> Tuple[int, int, int]:
        """Number of voxels along (z, y, x); zero where the box is empty along an axis."""
        return tuple(max(0, b - a) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def is_empty(self) -> bool:
        """True when the box holds no voxel."""
        return any(s == 0 for s in self.size)

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        """Slices for indexing an array (only valid for a box inside the array; see :meth:`clip`)."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    def pad(self, margin: Union[int, Sequence[int]]) -> "Box":
        """Grow the box by ``margin`` voxels on each side (one int, or one per axis in (z, y, x))."""
        m = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
        return Box(tuple(np.subtract(self.start, m)), tuple(np.add(self.stop, m)))

    def clip(self, shape: Sequence[int]) -> "Box":
        """The part of the box inside an array of ``shape`` (z, y, x); may be empty."""
        start = tuple(min(max(0, a), n) for a, n in zip(self.start, shape))
        stop = tuple(min(max(s, b), n) for s, b, n in zip(start, self.stop, shape))
        return Box(start, stop)

    def inside(self, shape: Sequence[int]) -> bool:
        """True when the whole box lies within an array of ``shape``."""
        return all(a >= 0 and b <= n for a, b, n in zip(self.start, self.stop, shape))

    def scale(self, factors: Sequence[float]) -> "Box":
        """Map the box to a grid whose voxel counts are multiplied by ``factors`` (z, y, x).

        The result covers every voxel of the new grid that overlaps the original box (start floored, stop
        ceiled), so scaling down and back up never loses a voxel."""
        f = np.asarray(factors, dtype=float)
        start = np.floor(np.asarray(self.start) * f + 1e-9).astype(int)
        stop = np.ceil(np.asarray(self.stop) * f - 1e-9).astype(int)
        return Box(tuple(start), tuple(np.maximum(stop, start)))

    def union(self, other: "Box") -> "Box":
        """The smallest box holding both boxes."""
        return Box(tuple(np.minimum(self.start, other.start)), tuple(np.maximum(self.stop, other.stop)))

    def intersect(self, other: "Box") -> "Box":
        """The overlap of both boxes (possibly empty)."""
        start = np.maximum(self.start, other.start)
        stop = np.maximum(start, np.minimum(self.stop, other.stop))
        return Box(tuple(start), tuple(stop))

    def to_dict(self) -> dict:
        """JSON-friendly form ``{"start": [z, y, x], "stop": [z, y, x]}``."""
        return {"start": list(self.start), "stop": list(self.stop)}

    @classmethod
    def from_dict(cls, data: dict) -> "Box":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(tuple(data["start"]), tuple(data["stop"]))
        except (KeyError, TypeError) as exc:
            raise InputError("box", "start/stop", "a mapping with 'start' and 'stop' lists", got=data) from exc


# --------------------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------------------


def _as_triple(values: Iterable[float], name: str, positive: bool = False) -> Triple:
    arr = np.asarray(list(values), dtype=float).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InputError("Volume", name, "three finite numbers", got=tuple(arr.tolist()))
    if positive and np.any(arr <= 0):
        raise InputError("Volume", name, "three positive numbers (mm)", got=tuple(arr.tolist()))
    return tuple(float(v) for v in arr)  # type: ignore[return-value]


@dataclass
class Volume:
    """A 3D image: ``array`` in (z, y, x) order plus LPS geometry (see the module docstring).

    ``spacing`` is in (x, y, z) order in millimetres, ``origin`` the LPS position (mm) of voxel (0, 0, 0),
    ``direction`` a 3x3 matrix whose columns are the LPS directions of the i, j, k (x, y, z) index axes.
    """

    array: np.ndarray
    spacing: Triple = (1.0, 1.0, 1.0)
    origin: Triple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise InputError("Volume", "array", "a 3D array in (z, y, x) order", got=f"{self.array.ndim}D")
        self.spacing = _as_triple(self.spacing, "spacing", positive=True)
        self.origin = _as_triple(self.origin, "origin")
        d = np.asarray(self.direction, dtype=float)
        if d.size != 9:
            raise InputError("Volume", "direction", "a 3x3 matrix (9 numbers)", got=d.shape)
        d = d.reshape(3, 3)
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise InputError("Volume", "direction", "an orthonormal 3x3 matrix", got=d.tolist())
        self.direction = d

    # ---- geometry -------------------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> Triple:
        """Spacing in array-axis order (z, y, x), millimetres."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm^3)."""
        return float(np.prod(self.spacing)) / 1000.0

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 homogeneous matrix from (i, j, k) = (x, y, z) indices to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 homogeneous matrix from (i, j, k) indices to RAS mm (Slicer's IJKToRASMatrix)."""
        flip = np.eye(4)
        flip[:3, :3] = LPS_TO_RAS
        return flip @ self.ijk_to_lps()

    def index_to_lps(self, zyx: np.ndarray) -> np.ndarray:
        """Map continuous indices (..., 3) in (z, y, x) order to LPS points (..., 3)."""
        zyx = np.asarray(zyx, dtype=float)
        ijk = zyx[..., ::-1]
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map LPS points (..., 3) to continuous indices (..., 3) in (z, y, x) order."""
        points = np.asarray(points, dtype=float)
        inv = np.linalg.inv(self.direction @ np.diag(self.spacing))
        ijk = (points - np.asarray(self.origin)) @ inv.T
        return ijk[..., ::-1]

    def same_grid(self, other: "Volume", atol: float = 1e-4) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction (within ``atol`` mm)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def grid_difference(self, other: "Volume", atol: float = 1e-4) -> Optional[str]:
        """A human-readable description of how the grids differ, or ``None`` when they are the same."""
        diffs = []
        if self.shape != other.shape:
            diffs.append(f"shape {self.shape} vs {other.shape}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=atol):
                diffs.append(f"{name} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}")
        return "; ".join(diffs) if diffs else None

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new Volume with the same geometry and another array of the same shape."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise InputError("Volume", "array", f"shape {self.shape}", got=array.shape)
        return Volume(array, self.spacing, self.origin, self.direction.copy())

    def copy(self) -> "Volume":
        """Deep copy."""
        return Volume(self.array.copy(), self.spacing, self.origin, self.direction.copy())

    # ---- crop / pad -----------------------------------------------------------------------------------
    def crop(self, box: Box, fill: float = 0) -> "Volume":
        """The sub-volume under ``box`` with its geometry (origin moved to the box's first voxel).

        Parts of the box outside the image are filled with ``fill`` (e.g. -1000 HU for air), so that a
        box padded past the image edge always gives the full requested size."""
        out = np.full(box.size, fill, dtype=self.array.dtype)
        inner = box.clip(self.shape)
        if not inner.is_empty:
            dst = tuple(slice(a - s, b - s) for a, b, s in zip(inner.start, inner.stop, box.start))
            out[dst] = self.array[inner.slices]
        origin = self.index_to_lps(np.asarray(box.start, dtype=float))
        return Volume(out, self.spacing, tuple(origin), self.direction.copy())

    def pad(self, before: Union[int, Sequence[int]], after: Union[int, Sequence[int], None] = None,
            fill: float = 0) -> "Volume":
        """Pad with ``fill`` by ``before`` voxels at the start and ``after`` (default: same) at the end of
        each axis (one int, or (z, y, x)); geometry is kept so that old voxels keep their LPS position."""
        b = np.broadcast_to(np.asarray(before, dtype=int), (3,))
        a = b if after is None else np.broadcast_to(np.asarray(after, dtype=int), (3,))
        if np.any(b < 0) or np.any(a < 0):
            raise InputError("Volume.pad", "before/after", "non-negative voxel counts", got=(b.tolist(), a.tolist()))
        box = Box(tuple(-b), tuple(np.asarray(self.shape) + a))
        return self.crop(box, fill=fill)

    def paste(self, sub: "Volume", box: Box, background: float = 0) -> "Volume":
        """A volume on this grid, ``background`` everywhere except ``box``, where ``sub``'s values go.

        ``sub.shape`` must equal ``box.size``; the parts of the box outside this grid are dropped. This is
        the exact inverse of :meth:`crop` inside the image."""
        if tuple(sub.shape) != box.size:
            raise InputError("Volume.paste", "sub.shape", f"the box size {box.size}", got=sub.shape)
        out = np.full(self.shape, background, dtype=np.result_type(sub.array.dtype, np.asarray(background).dtype))
        inner = box.clip(self.shape)
        if not inner.is_empty:
            src = tuple(slice(a - s, b - s) for a, b, s in zip(inner.start, inner.stop, box.start))
            out[inner.slices] = sub.array[src]
        return Volume(out, self.spacing, self.origin, self.direction.copy())

    # ---- SimpleITK ------------------------------------------------------------------------------------
    def to_sitk(self) -> "sitk.Image":
        """A SimpleITK image with the same values and geometry (bool arrays become uint8)."""
        import SimpleITK as sitk

        arr = self.array.astype(np.uint8) if self.array.dtype == bool else self.array
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(tuple(self.direction.reshape(-1)))
        return img

    @classmethod
    def from_sitk(cls, image: "sitk.Image") -> "Volume":
        """A Volume from a 3D SimpleITK image, geometry included."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise InputError("SimpleITK image", "dimension", "3", got=image.GetDimension())
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError("SimpleITK image", "components", "1 (scalar image)", got=image.GetNumberOfComponentsPerPixel())
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.asarray(image.GetDirection(), dtype=float).reshape(3, 3),
        )

    # ---- resampling -----------------------------------------------------------------------------------
    def resample_like(self, reference: "Volume", interpolation: str = "linear", fill: float = 0) -> "Volume":
        """Resample onto ``reference``'s grid. ``interpolation`` is ``"linear"`` (images), ``"nearest"``
        (masks, labels) or ``"bspline"``; voxels mapping outside this volume get ``fill``."""
        import SimpleITK as sitk

        interp = _interpolator(interpolation)
        ref = sitk.Image(*[int(n) for n in reversed(reference.shape)], sitk.sitkUInt8)
        ref.SetSpacing(reference.spacing)
        ref.SetOrigin(reference.origin)
        ref.SetDirection(tuple(reference.direction.reshape(-1)))
        src = self.to_sitk()
        out = sitk.Resample(src, ref, sitk.Transform(), interp, float(fill), src.GetPixelID())
        arr = sitk.GetArrayFromImage(out)
        if self.array.dtype == bool:
            arr = arr.astype(bool)
        return Volume(arr, reference.spacing, reference.origin, reference.direction.copy())

    def resample_to_shape(self, shape: Sequence[int], interpolation: str = "linear") -> "Volume":
        """Resample so that the same physical extent is covered by ``shape`` (z, y, x) voxels.

        Voxel corners of the old and new grids coincide (the extent ``shape * spacing`` is kept), as
        ``skimage.transform.resize`` does; this is how low-resolution localisation copies are made."""
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise InputError("Volume.resample_to_shape", "shape", "three positive integers", got=shape)
        old = np.asarray(self.shape[::-1], dtype=float)  # (x, y, z)
        new = np.asarray(shape[::-1], dtype=float)
        spacing = np.asarray(self.spacing) * old / new
        # Keep the outer corner of voxel 0 fixed: centre moves by half the spacing change.
        shift_index = 0.5 * (spacing / np.asarray(self.spacing) - 1.0)  # in old voxel units, (x, y, z)
        origin = np.asarray(self.origin) + self.direction @ (shift_index * np.asarray(self.spacing))
        ref = Volume(np.zeros(shape, dtype=np.uint8), tuple(spacing), tuple(origin), self.direction)
        return self.resample_like(ref, interpolation=interpolation)

    def resample_to_spacing(self, spacing: Sequence[float], interpolation: str = "linear") -> "Volume":
        """Resample to a new spacing (x, y, z) mm over (about) the same extent."""
        spacing_arr = np.asarray(_as_triple(spacing, "spacing", positive=True))
        extent = np.asarray(self.spacing) * np.asarray(self.shape[::-1])
        new_xyz = np.maximum(1, np.round(extent / spacing_arr)).astype(int)
        return self.resample_to_shape(tuple(new_xyz[::-1]), interpolation=interpolation)


def _interpolator(name: str) -> int:
    import SimpleITK as sitk

    table = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}
    try:
        return table[name]
    except KeyError:
        raise InputError("resample", "interpolation", f"one of {sorted(table)}", got=name) from None
