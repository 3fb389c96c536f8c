"""RTSTRUCT to binary masks on the grid of its CT series.

Every ROI of ``StructureSetROISequence`` becomes one segment, named exactly as in ``ROIName`` and
coloured by ``ROIDisplayColor``. ``CLOSED_PLANAR`` contours are mapped to continuous voxel indices of the
reference CT and rasterised slice by slice with the **even-odd rule**: a voxel centre is inside when a
ray from it crosses the contours of its slice an odd number of times, so holes (a contour inside another)
and islands (a contour inside a hole) come out right whether the planning system wrote them as separate
contours or not.

What cannot be rasterised exactly is reported in :attr:`RTStructResult.warnings`, never silently dropped:
contours lying between slice planes (put on the nearest slice), contours outside the grid, ROIs with no
contours, non-planar or open contours.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..segmentation import Segment, Segmentation, default_color
from .dicom_series import DicomSeries

PathLike = Union[str, "os.PathLike[str]"]

PLANE_TOLERANCE = 0.1
"""A contour more than this fraction of the slice spacing away from a slice plane is 'between planes'."""


@dataclass
class RTStructResult:
    """The rasterised structures (``segmentation`` on the CT grid, one segment per ROI in file order) and
    the ``warnings`` about what could not be rasterised exactly."""

    segmentation: Segmentation
    warnings: List[str] = field(default_factory=list)
    roi_numbers: Dict[str, int] = field(default_factory=dict)


def fill_polygons_even_odd(polygons: Sequence[np.ndarray], shape: Tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons with the even-odd rule onto a 2D grid of ``shape`` (rows, cols).

    Each polygon is an (N, 2) array of continuous (column, row) = (x, y) indices; pixel (r, c) has its
    centre at (c, r). A pixel is inside when a ray from its centre towards +x crosses the polygons' edges
    an odd number of times (edges count for rows ``min(y0, y1) <= r < max(y0, y1)``). Vectorised: the
    work is proportional to the number of (edge, row) crossings, not to the number of pixels."""
    rows, cols = int(shape[0]), int(shape[1])
    toggles = np.zeros(rows * (cols + 1), dtype=np.int64)
    for poly in polygons:
        poly = np.asarray(poly, dtype=float)
        if poly.ndim != 2 or poly.shape[0] < 3:
            continue
        x0, y0 = poly[:, 0], poly[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        keep = y0 != y1
        x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
        ymin, ymax = np.minimum(y0, y1), np.maximum(y0, y1)
        r_start = np.clip(np.ceil(ymin), 0, rows).astype(np.int64)
        r_stop = np.clip(np.ceil(ymax), 0, rows).astype(np.int64)
        counts = np.maximum(r_stop - r_start, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        edge = np.repeat(np.arange(counts.size), counts)
        first = np.cumsum(counts) - counts
        r = r_start[edge] + (np.arange(total) - first[edge])
        t = (r - y0[edge]) / (y1[edge] - y0[edge])
        xc = x0[edge] + t * (x1[edge] - x0[edge])
        c = np.clip(np.floor(xc).astype(np.int64) + 1, 0, cols)
        toggles += np.bincount(r * (cols + 1) + c, minlength=toggles.size)
    parity = np.cumsum(toggles.reshape(rows, cols + 1), axis=1) & 1
    return parity[:, :cols].astype(bool)


def _referenced_series_uids(ds) -> List[str]:
    uids = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []:
        for st in fr.get("RTReferencedStudySequence", []) or []:
            for se in st.get("RTReferencedSeriesSequence", []) or []:
                uid = str(se.get("SeriesInstanceUID", "") or "").strip()
                if uid:
                    uids.append(uid)
    return uids


def _referenced_frames(ds) -> List[str]:
    uids = [str(fr.get("FrameOfReferenceUID", "") or "").strip()
            for fr in ds.get("ReferencedFrameOfReferenceSequence", []) or []]
    return [u for u in uids if u]


def _referenced_images(ds) -> set:
    uids = set()
    for rc in ds.get("ROIContourSequence", []) or []:
        for contour in rc.get("ContourSequence", []) or []:
            for image in contour.get("ContourImageSequence", []) or []:
                uid = str(image.get("ReferencedSOPInstanceUID", "") or "").strip()
                if uid:
                    uids.add(uid)
    return uids


def read_rtstruct_header(path: PathLike):
    """The RTSTRUCT dataset (checked to be an RTSTRUCT); InputError naming the file otherwise."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing RTSTRUCT file", got="no such file")
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        raise InputError(path, "file", "a DICOM RTSTRUCT file", got="not DICOM") from None
    except Exception as exc:
        raise InputError(path, "file", "a complete DICOM file", got=f"{type(exc).__name__}: {exc}"[:200]) from None
    modality = str(ds.get("Modality", "") or "")
    if modality != "RTSTRUCT":
        raise InputError(path, "Modality", "RTSTRUCT", got=modality or "(empty)")
    if "StructureSetROISequence" not in ds:
        raise InputError(path, "StructureSetROISequence", "a list of ROIs", got="missing")
    return ds


def rtstruct_roi_names(path: PathLike) -> List[str]:
    """ROI names of an RTSTRUCT in file order, without rasterising."""
    ds = read_rtstruct_header(path)
    return [str(r.get("ROIName", "")) for r in ds.StructureSetROISequence]


def read_rtstruct(path: PathLike, reference: DicomSeries, force: bool = False) -> RTStructResult:
    """Rasterise every ROI of the RTSTRUCT at ``path`` onto the grid of ``reference`` (its CT series).

    Raises :class:`InputError` (naming the file and field) for a file that is not an RTSTRUCT, one without
    any contour, and one that references another series or frame of reference (unless ``force``)."""
    path = Path(path)
    ds = read_rtstruct_header(path)
    warnings: List[str] = []

    # ---- does it belong to this series? ------------------------------------------------------------------
    ref_series = _referenced_series_uids(ds)
    ref_frames = _referenced_frames(ds)
    mismatch = None
    if ref_series and reference.series_uid and reference.series_uid not in ref_series:
        mismatch = ("RTReferencedSeriesSequence.SeriesInstanceUID", f"the CT series {reference.series_uid}",
                    ", ".join(ref_series))
    elif ref_frames and reference.frame_of_reference_uid and reference.frame_of_reference_uid not in ref_frames:
        mismatch = ("ReferencedFrameOfReferenceSequence.FrameOfReferenceUID",
                    f"the CT frame of reference {reference.frame_of_reference_uid}", ", ".join(ref_frames))
    if mismatch is None and not ref_series and not ref_frames and any(reference.sop_instance_uids):
        images = _referenced_images(ds)
        if images and not images & set(reference.sop_instance_uids):
            mismatch = ("ContourImageSequence.ReferencedSOPInstanceUID", "slices of the CT series",
                        f"{len(images)} other images")
    if mismatch is not None:
        if not force:
            raise InputError(path, mismatch[0], mismatch[1] + " (use force to rasterise anyway)", got=mismatch[2])
        warnings.append(f"{path.name}: references {mismatch[2]}, not {mismatch[1]}; rasterised anyway (forced)")

    # ---- ROIs ------------------------------------------------------------------------------------------------
    rois: List[Tuple[int, str]] = []
    for item in ds.StructureSetROISequence:
        try:
            number = int(item.ROINumber)
        except (AttributeError, TypeError, ValueError):
            raise InputError(path, "StructureSetROISequence.ROINumber", "an integer for every ROI",
                             got=item.get("ROINumber")) from None
        rois.append((number, str(item.get("ROIName", "") or f"ROI_{number}")))
    contours_by_roi: Dict[int, list] = {}
    colors: Dict[int, Tuple[float, float, float]] = {}
    for rc in ds.get("ROIContourSequence", []) or []:
        try:
            number = int(rc.ReferencedROINumber)
        except (AttributeError, TypeError, ValueError):
            continue
        contours_by_roi[number] = list(rc.get("ContourSequence", []) or [])
        color = rc.get("ROIDisplayColor")
        if color is not None and len(color) == 3:
            colors[number] = tuple(min(1.0, max(0.0, float(c) / 255.0)) for c in color)  # type: ignore
    if not any(contours_by_roi.get(n) for n, _ in rois):
        raise InputError(path, "ROIContourSequence.ContourSequence", "at least one ROI with contours",
                         got=f"{len(rois)} ROIs without any contour")

    volume = reference.volume
    nz, ny, nx = volume.shape
    seg = Segmentation.on_grid(volume)
    z_lo = volume.index_to_lps(np.array([-0.5, 0, 0]))
    z_hi = volume.index_to_lps(np.array([nz - 0.5, 0, 0]))
    k_axis = volume.direction[:, 2]
    grid_span = f"{float(z_lo @ k_axis):.2f} to {float(z_hi @ k_axis):.2f} mm along the slice normal"
    names_seen: Dict[str, int] = {}
    roi_numbers: Dict[str, int] = {}
    for index, (number, name) in enumerate(rois):
        mask = np.zeros(volume.shape, dtype=bool)
        contours = contours_by_roi.get(number, [])
        label = f"ROI {name!r}"
        if not contours:
            warnings.append(f"{label}: empty (no contours)")
        else:
            mask = _rasterise_roi(path, label, contours, volume, warnings, grid_span)
        seg_id = name
        if name in names_seen:
            seg_id = f"{name}_{number}"
            warnings.append(f"{label}: name used by more than one ROI (numbers {names_seen[name]} and {number});"
                            f" kept both, this one with id {seg_id!r}")
        else:
            names_seen[name] = number
            roi_numbers[name] = number
        seg.segments.append(Segment(name, mask, colors.get(number, default_color(index)), seg_id))
    return RTStructResult(seg, warnings, roi_numbers)


def _contour_data(contour):
    """ContourData as a float array, parsed from the raw DS bytes when possible (pydicom's per-value DS
    objects are slow for RTSTRUCTs with many thousands of points); ``None`` when absent or unparsable."""
    try:
        element = contour.get_item(0x30060050)
    except KeyError:
        element = None
    if element is None:
        return None
    value = element.value
    try:
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("ascii", "replace").replace("\x00", " ")
            return np.array([v for v in text.split("\\") if v.strip()], dtype=float)
        if isinstance(value, (str, int, float)):
            return np.array([float(value)])
        return np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None


def _rasterise_roi(path: Path, label: str, contours: list, volume, warnings: List[str], grid_span: str) -> np.ndarray:
    nz, ny, nx = volume.shape
    mask = np.zeros(volume.shape, dtype=bool)
    # Group closed contours by their plane (continuous k index, rounded), so that every plane is filled
    # with the even-odd rule over all its contours, and planes landing on the same slice are OR-ed.
    planes: Dict[float, List[np.ndarray]] = defaultdict(list)
    skipped_types: Dict[str, int] = defaultdict(int)
    outside, between, nonplanar = [], [], 0
    k_axis = volume.direction[:, 2]
    for contour in contours:
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR") or "CLOSED_PLANAR")
        if kind != "CLOSED_PLANAR":
            skipped_types[kind] += 1
            continue
        data = _contour_data(contour)
        if data is None or data.size < 9 or data.size % 3 or not np.all(np.isfinite(data)):
            skipped_types["malformed ContourData"] += 1
            continue
        pts = data.reshape(-1, 3)
        zyx = volume.lps_to_index(pts)
        k = zyx[:, 0]
        if np.ptp(k) > PLANE_TOLERANCE:
            nonplanar += 1
        kc = float(np.mean(k))
        kr = int(np.round(kc))
        if kr < 0 or kr >= nz:
            outside.append(float(np.mean(pts @ k_axis)))
            continue
        if abs(kc - kr) > PLANE_TOLERANCE:
            between.append(float(np.mean(pts @ k_axis)))
        planes[round(kc, 3)].append(zyx[:, [2, 1]])
    for kc, polys in planes.items():
        kr = int(np.round(kc))
        mask[kr] |= fill_polygons_even_odd(polys, (ny, nx))
    total = len(contours)
    if outside:
        where = f"{min(outside):.2f} to {max(outside):.2f} mm" if len(outside) > 1 else f"{outside[0]:.2f} mm"
        if len(outside) == total:
            warnings.append(f"{label}: outside the image grid (all {total} contours at {where}; "
                            f"the grid spans {grid_span})")
        else:
            warnings.append(f"{label}: {len(outside)} of {total} contours outside the image grid (at {where}; "
                            f"the grid spans {grid_span}); the rest rasterised")
    if between:
        warnings.append(f"{label}: {len(between)} contours lie between slice planes (at "
                        f"{', '.join(f'{z:.2f}' for z in between[:5])}{' ...' if len(between) > 5 else ''} mm); "
                        f"put on the nearest slice")
    if nonplanar:
        warnings.append(f"{label}: {nonplanar} contours are not planar in the CT's slice direction; "
                        f"put on the slice of their mean position")
    for kind, n in skipped_types.items():
        warnings.append(f"{label}: {n} contours of type {kind} skipped (only CLOSED_PLANAR is rasterised)")
    if planes and not mask.any():
        warnings.append(f"{label}: its contours cover no voxel centre of the image grid (outside in-plane)")
    return mask
