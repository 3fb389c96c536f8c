"""Slicer markups ROI files (``.mrk.json``) and their boxes in voxel indices.

An ROI is a box with a centre, a size (full edge lengths, mm) and an orientation (3x3, columns = the
box's x, y, z axes). The markups JSON stores them in its ``coordinateSystem`` (``"LPS"`` or ``"RAS"``):
``"center"`` is a point, ``"orientation"`` the 3x3 matrix row by row (its columns are the axes) and
``"size"`` the edge lengths. The engine keeps :class:`Roi` in LPS; RAS files are converted with
:func:`~AutoSegSensitivity.volume.ras_to_lps` (points) and ``diag(-1, -1, 1) @ M`` (axes).

:func:`roi_to_box` gives the voxels of a volume whose centres lie inside the ROI's bounding box in that
volume's index space; :func:`box_to_roi` gives the ROI whose faces are the outer faces of the box's
voxels, so that ``roi_to_box(box_to_roi(box, v), v) == box``.

Write LPS (the default, and what Slicer writes by default): files written here hold exactly the numbers
Slicer's own writer produces for the same ROI in either system (tested against the ``slicer-core`` MRML),
but Slicer's JSON reader (slicer-core 5.13) mis-reads the orientation of a *rotated* ROI stored in RAS
(its centre and size are right, and axis-aligned ROIs are unaffected); LPS files load exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ..atomic import write_text
from ..errors import InputError
from ..volume import LPS_TO_RAS, Box, Volume
from .jsonfile import read_json

PathLike = Union[str, "os.PathLike[str]"]

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                  "Resources/Schema/markups-schema-v1.0.3.json#")


@dataclass
class Roi:
    """A box ROI in LPS: ``center_lps`` (mm), ``size_mm`` (full edge lengths along the ROI's own axes),
    ``orientation`` (3x3, columns = the ROI's x, y, z axes as LPS unit vectors), and a ``name``."""

    center_lps: np.ndarray
    size_mm: np.ndarray
    orientation: np.ndarray = field(default_factory=lambda: np.eye(3))
    name: str = "ROI"

    def __post_init__(self) -> None:
        self.center_lps = np.asarray(self.center_lps, dtype=float).reshape(-1)
        self.size_mm = np.asarray(self.size_mm, dtype=float).reshape(-1)
        self.orientation = np.asarray(self.orientation, dtype=float)
        if self.center_lps.shape != (3,) or not np.all(np.isfinite(self.center_lps)):
            raise InputError(f"ROI {self.name!r}", "center", "three finite numbers (mm)", got=self.center_lps.tolist())
        if self.size_mm.shape != (3,) or not np.all(np.isfinite(self.size_mm)) or np.any(self.size_mm <= 0):
            raise InputError(f"ROI {self.name!r}", "size", "three positive numbers (mm)", got=self.size_mm.tolist())
        if self.orientation.size != 9:
            raise InputError(f"ROI {self.name!r}", "orientation", "a 3x3 matrix", got=self.orientation.shape)
        self.orientation = self.orientation.reshape(3, 3)
        if not np.allclose(self.orientation.T @ self.orientation, np.eye(3), atol=1e-4):
            raise InputError(f"ROI {self.name!r}", "orientation", "an orthonormal 3x3 matrix",
                             got=self.orientation.tolist())

    def corners_lps(self) -> np.ndarray:
        """The 8 corners (8, 3) in LPS mm."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
        return self.center_lps + (signs * (self.size_mm / 2.0)) @ self.orientation.T


def _number_list(value, n: int, source: Path, field_name: str):
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        raise InputError(source, field_name, f"a list of {n} numbers", got=value) from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(source, field_name, f"a list of {n} finite numbers", got=value)
    return arr


def read_roi(path: PathLike) -> Roi:
    """Read the first ROI of a markups ``.mrk.json`` file (LPS or RAS) into an LPS :class:`Roi`.

    Raises :class:`InputError` naming the file and field for invalid JSON, a markups file that holds no
    ROI (e.g. a point list), non-positive size, an unknown coordinate system or a bad orientation."""
    path = Path(path)
    data = read_json(path, "an existing markups .mrk.json file", "a markups JSON document")
    markups = data.get("markups") if isinstance(data, dict) else None
    if not isinstance(markups, list) or not markups:
        raise InputError(path, "markups", "a non-empty list of markups", got=type(markups).__name__)
    index = next((i for i, m in enumerate(markups) if isinstance(m, dict) and m.get("type") == "ROI"), None)
    if index is None:
        types = [m.get("type") if isinstance(m, dict) else type(m).__name__ for m in markups]
        raise InputError(path, "markups[0].type", "ROI (a markups ROI file)", got=", ".join(map(str, types)))
    m = markups[index]
    where = f"markups[{index}]"
    system = str(m.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(path, f"{where}.coordinateSystem", "LPS or RAS", got=m.get("coordinateSystem"))
    units = m.get("coordinateUnits", "mm")
    if units not in ("mm", ["mm"]):
        raise InputError(path, f"{where}.coordinateUnits", "mm", got=units)
    points = m.get("controlPoints") or []
    if "center" in m:
        center = _number_list(m["center"], 3, path, f"{where}.center")
    elif points and isinstance(points[0], dict) and "position" in points[0]:
        center = _number_list(points[0]["position"], 3, path, f"{where}.controlPoints[0].position")
    else:
        raise InputError(path, f"{where}.center", "the ROI centre (3 numbers)", got="missing")
    if "size" not in m:
        raise InputError(path, f"{where}.size", "three positive numbers (mm)", got="missing")
    size = _number_list(m["size"], 3, path, f"{where}.size")
    if np.any(size <= 0):
        raise InputError(path, f"{where}.size", "three positive numbers (mm)", got=size.tolist())
    orientation = _number_list(m.get("orientation", np.eye(3).reshape(-1).tolist()), 9, path,
                               f"{where}.orientation").reshape(3, 3)
    if not np.allclose(orientation.T @ orientation, np.eye(3), atol=1e-4):
        raise InputError(path, f"{where}.orientation", "an orthonormal 3x3 matrix (row by row)",
                         got=orientation.reshape(-1).tolist())
    if system == "RAS":
        center = LPS_TO_RAS @ center
        orientation = LPS_TO_RAS @ orientation
    name = ""
    if points and isinstance(points[0], dict):
        name = str(points[0].get("label", "") or "")
    if not name:
        name = path.name[: -len(".mrk.json")] if path.name.lower().endswith(".mrk.json") else path.stem
    return Roi(center, size, orientation, name)


def write_roi(roi: Roi, path: PathLike, coordinate_system: str = "LPS") -> Path:
    """Write ``roi`` as a Slicer markups ROI ``.mrk.json`` in ``coordinate_system`` (``"LPS"`` or ``"RAS"``),
    atomically. Returns the path written."""
    path = Path(path)
    system = str(coordinate_system).upper()
    if system not in ("LPS", "RAS"):
        raise InputError("write_roi", "coordinate_system", "LPS or RAS", got=coordinate_system)
    if not path.name.lower().endswith(".mrk.json"):
        raise InputError(path, "file name", "a markups file ending in .mrk.json", got=repr(path.name))
    center = np.asarray(roi.center_lps, dtype=float)
    orientation = np.asarray(roi.orientation, dtype=float)
    if system == "RAS":
        center = LPS_TO_RAS @ center
        orientation = LPS_TO_RAS @ orientation
    center_list = [float(v) + 0.0 for v in center]
    orient_list = [float(v) + 0.0 for v in orientation.reshape(-1)]
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [
            {
                "type": "ROI",
                "coordinateSystem": system,
                "coordinateUnits": "mm",
                "locked": False,
                "fixedNumberOfControlPoints": False,
                "labelFormat": "%N-%d",
                "lastUsedControlPointNumber": 1,
                "roiType": "Box",
                "center": center_list,
                "orientation": orient_list,
                "size": [float(v) for v in roi.size_mm],
                "insideOut": False,
                "controlPoints": [
                    {
                        "id": "1",
                        "label": roi.name,
                        "description": "",
                        "associatedNodeID": "",
                        "position": center_list,
                        "orientation": orient_list,
                        "selected": True,
                        "locked": False,
                        "visibility": True,
                        "positionStatus": "defined",
                    }
                ],
                "measurements": [],
            }
        ],
    }
    return write_text(path, json.dumps(doc, indent=4, ensure_ascii=False) + "\n")


def roi_to_box(roi: Roi, volume: Volume) -> Box:
    """The box (array order (z, y, x), stop exclusive) of the voxels of ``volume`` whose centres lie inside
    the bounding box, in ``volume``'s index space, of the ROI's 8 corners. Exact for an ROI aligned with
    the volume; for a rotated ROI the box encloses it. The box may extend outside the volume (callers
    clip)."""
    corners = volume.lps_to_index(roi.corners_lps())
    eps = 1e-6
    start = np.ceil(corners.min(axis=0) - eps).astype(int)
    stop = np.floor(corners.max(axis=0) + eps).astype(int) + 1
    return Box(tuple(start), tuple(np.maximum(stop, start)))


def box_to_roi(box: Box, volume: Volume, name: str = "ROI") -> Roi:
    """The ROI covering the voxels of ``box`` (faces on the outer voxel faces), oriented like ``volume``."""
    if box.is_empty:
        raise InputError(f"box {box.to_dict()}", "size", "a non-empty box", got=box.size)
    centre_index = (np.asarray(box.start, dtype=float) + np.asarray(box.stop, dtype=float) - 1.0) / 2.0
    center = volume.index_to_lps(centre_index)
    size = np.asarray(box.size[::-1], dtype=float) * np.asarray(volume.spacing)
    return Roi(center, size, volume.direction.copy(), name)


def roi_volume_ml(roi: Roi) -> float:
    """The ROI's volume in millilitres."""
    return float(math.prod(roi.size_mm)) / 1000.0
