"""DICOM image series (CT) from a folder, with pydicom.

A folder may hold several series and other objects (RTSTRUCT, RTDOSE, RTPLAN, files that are not DICOM):
:func:`list_dicom_series` groups the files by ``SeriesInstanceUID``; :func:`read_dicom_series` picks the
one CT series (or the one named by ``series_uid``) and sets everything else aside.

Geometry: slices are sorted by the projection of ``ImagePositionPatient`` on the slice normal
(row direction x column direction of ``ImageOrientationPatient``). The resulting
:class:`~AutoSegSensitivity.volume.Volume` has i along the rows (``ImageOrientationPatient[0:3]``), j along
the columns (``[3:6]``), k along the normal; spacing (x, y, z) = (``PixelSpacing[1]``, ``PixelSpacing[0]``,
distance between slice positions). Values are ``stored * RescaleSlope + RescaleIntercept`` (HU for CT),
int16 when that is exact, float32 otherwise.

Errors (:class:`~AutoSegSensitivity.errors.InputError`, naming the file or folder and the field): empty
folder, several CT series and none chosen (the message lists them), non-CT modality when CT is required,
truncated or unreadable files, mixed orientations or pixel grids, gantry tilt, duplicate or missing slices
(irregular spacing), multi-frame images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..volume import Volume

PathLike = Union[str, "os.PathLike[str]"]

# Modalities that are never image series to read as a volume (set aside).
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "SEG", "SR", "PR", "KO", "RTIMAGE"}

POSITION_TOLERANCE_MM = 0.05
"""In-plane drift of slice positions (mm) above which a series counts as gantry-tilted."""

SPACING_TOLERANCE = 0.01
"""Relative deviation of one slice gap from the median gap above which spacing counts as irregular."""


@dataclass
class SeriesInfo:
    """One series found in a folder: its UID, modality, description and files (header order)."""

    series_uid: str
    modality: str
    description: str = ""
    files: List[Path] = field(default_factory=list)
    has_pixels: bool = False

    @property
    def is_image(self) -> bool:
        """True for an image series that :func:`read_dicom_series` can read (not RT objects)."""
        return self.has_pixels and self.modality.upper() not in NON_IMAGE_MODALITIES

    def describe(self) -> str:
        """One line: UID, modality, number of files, description."""
        text = f"{self.series_uid or '(no SeriesInstanceUID)'} ({self.modality or '?'}, {len(self.files)} files"
        if self.description:
            text += f", {self.description!r}"
        return text + ")"


@dataclass
class DicomSeries:
    """A CT (or other image) series read from DICOM: ``volume`` in HU with LPS geometry, the series' UIDs
    and the files in slice order (``sop_instance_uids[k]`` and ``files[k]`` are slice ``k`` of the
    volume's array)."""

    volume: Volume
    series_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: List[str]
    files: List[Path]
    modality: str = "CT"
    study_uid: str = ""
    description: str = ""
    folder: Optional[Path] = None


def _iter_files(folder: Path) -> List[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                out.append(Path(root) / name)
    return out


def _read_header(path: Path):
    """The dataset without pixel data; ``None`` for a file that is not DICOM; InputError if truncated."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise InputError(path, "file", "a readable file", got=str(exc)) from None
    is_part10 = len(head) >= 132 and head[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except InvalidDicomError:
        return None
    except Exception as exc:  # truncated header, bad element lengths
        if not is_part10:
            return None
        raise InputError(path, "file", "a complete DICOM file", got=f"{type(exc).__name__}: {exc}"[:200]) from None
    if not is_part10 and "SOPClassUID" not in ds and "Modality" not in ds:
        return None
    if is_part10:
        # A Part-10 file whose data set stops early parses without error: look for what every object has,
        # and what every image object has.
        missing = [k for k in ("SOPClassUID", "Modality", "SeriesInstanceUID") if k not in ds]
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        try:
            is_image_class = "Image Storage" in pydicom.uid.UID(sop_class).name
        except Exception:
            is_image_class = False
        if is_image_class:
            missing += [k for k in ("Rows", "Columns", "ImagePositionPatient") if k not in ds]
        if missing:
            raise InputError(path, missing[0], "a complete DICOM file (the data set ends early: truncated?)",
                             got=f"missing {', '.join(missing)}")
    return ds


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _scan(folder: PathLike) -> Tuple[Path, Dict[str, SeriesInfo], Dict[Path, object]]:
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "folder", "an existing DICOM folder", got="no such folder")
    if not folder.is_dir():
        raise InputError(folder, "folder", "a folder of DICOM files", got="a file")
    series: Dict[str, SeriesInfo] = {}
    headers: Dict[Path, object] = {}
    for path in _iter_files(folder):
        ds = _read_header(path)
        if ds is None:
            continue
        uid = _text(ds, "SeriesInstanceUID")
        modality = _text(ds, "Modality").upper()
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(uid, modality, _text(ds, "SeriesDescription"))
        elif info.modality != modality and modality:
            info.modality = info.modality or modality
        info.files.append(path)
        has_pixels = "Rows" in ds and "Columns" in ds and modality not in NON_IMAGE_MODALITIES
        info.has_pixels = info.has_pixels or has_pixels
        headers[path] = ds
    return folder, series, headers


def list_dicom_series(folder: PathLike) -> List[SeriesInfo]:
    """Every DICOM series under ``folder`` (recursively; files that are not DICOM are skipped), image
    series first, then RT objects and others; each with UID, modality, description and files."""
    _, series, _ = _scan(folder)
    return sorted(series.values(), key=lambda s: (not s.is_image, s.modality, s.series_uid))


def _choose(folder: Path, series: Dict[str, SeriesInfo], series_uid: Optional[str], require_ct: bool) -> SeriesInfo:
    images = [s for s in series.values() if s.is_image]
    if series_uid is not None:
        info = series.get(series_uid)
        if info is None or not info.is_image:
            listed = "; ".join(s.describe() for s in images) or "none"
            raise InputError(folder, "SeriesInstanceUID", f"one of the image series in the folder: {listed}",
                             got=repr(series_uid))
        if require_ct and info.modality != "CT":
            raise InputError(folder, "Modality", f"CT for series {series_uid}", got=info.modality or "(empty)")
        return info
    if not series:
        raise InputError(folder, "files", "at least one DICOM file (the folder holds none)", got="empty series")
    if not images:
        listed = ", ".join(sorted({s.modality or "?" for s in series.values()}))
        raise InputError(folder, "files", "an image series (CT)", got=f"only {listed} objects")
    candidates = [s for s in images if s.modality == "CT"] if require_ct else images
    if not candidates:
        listed = "; ".join(s.describe() for s in images)
        raise InputError(folder, "Modality", "a CT series", got=listed)
    if len(candidates) > 1:
        listed = "; ".join(s.describe() for s in candidates)
        raise InputError(folder, "SeriesInstanceUID",
                         f"one image series, or a series UID chosen among: {listed}",
                         got=f"{len(candidates)} series")
    return candidates[0]


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(path, keyword, f"{n} numbers", got=value)
    return arr


def read_dicom_series(folder: PathLike, series_uid: Optional[str] = None, require_ct: bool = True) -> DicomSeries:
    """Read one image series from ``folder`` (see the module docstring for the rules and errors).

    ``series_uid`` picks a series when the folder holds several; ``require_ct`` refuses other
    modalities. Returns a :class:`DicomSeries` whose ``volume`` is in HU (int16 or float32), LPS mm."""
    import pydicom

    folder, series, headers = _scan(folder)
    info = _choose(folder, series, series_uid, require_ct)

    # ---- geometry from the headers ----------------------------------------------------------------------
    entries = []
    iop0 = None
    grid0 = None
    for path in info.files:
        ds = headers[path]
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(path, "NumberOfFrames", "single-frame images (one slice per file)",
                             got=ds.get("NumberOfFrames"))
        iop = _floats(ds, "ImageOrientationPatient", 6, path)
        ipp = _floats(ds, "ImagePositionPatient", 3, path)
        ps = _floats(ds, "PixelSpacing", 2, path)
        if np.any(ps <= 0):
            raise InputError(path, "PixelSpacing", "two positive numbers (mm)", got=list(ps))
        grid = (int(ds.Rows), int(ds.Columns), round(ps[0], 6), round(ps[1], 6))
        if iop0 is None:
            iop0, grid0, first, spacing0 = iop, grid, path, ps
        else:
            if not np.allclose(iop, iop0, atol=1e-4):
                raise InputError(path, "ImageOrientationPatient",
                                 f"the same orientation as the rest of the series ({list(np.round(iop0, 5))} in {first.name})",
                                 got=list(np.round(iop, 5)))
            if grid != grid0:
                raise InputError(path, "Rows/Columns/PixelSpacing",
                                 f"the same pixel grid as {first.name} {grid0}", got=grid)
        tilt = ds.get("GantryDetectorTilt")
        if tilt is not None and str(tilt).strip() != "" and abs(float(tilt)) > 1e-3:
            raise InputError(path, "GantryDetectorTilt", "0 degrees (tilted acquisitions are not supported)",
                             got=float(tilt))
        entries.append((path, ipp, ds))

    row = iop0[:3] / np.linalg.norm(iop0[:3])
    col = iop0[3:] / np.linalg.norm(iop0[3:])
    if abs(float(row @ col)) > 1e-3:
        raise InputError(first, "ImageOrientationPatient", "orthogonal row and column directions", got=list(iop0))
    col = col - (row @ col) * row
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = np.array([e[1] for e in entries])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    entries = [entries[i] for i in order]
    positions = positions[order]
    distance = distance[order]

    rows, cols = grid0[0], grid0[1]
    ps_row, ps_col = float(spacing0[0]), float(spacing0[1])
    if len(entries) > 1:
        gaps = np.diff(distance)
        dup = np.flatnonzero(gaps < 1e-3)
        if dup.size:
            a, b = entries[dup[0]][0], entries[dup[0] + 1][0]
            raise InputError(folder, "ImagePositionPatient", "one slice per position",
                             got=f"{a.name} and {b.name} both at {distance[dup[0]]:.3f} mm along the normal")
        offsets = positions - positions[0]
        inplane = offsets - np.outer(offsets @ normal, normal)
        drift = np.linalg.norm(inplane, axis=1)
        if drift.max() > POSITION_TOLERANCE_MM:
            k = int(np.argmax(drift))
            raise InputError(entries[k][0], "ImagePositionPatient",
                             "slice positions along the slice normal (no gantry tilt)",
                             got=f"{drift[k]:.3f} mm in-plane shift from the first slice")
        step = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - step) > max(1e-3, SPACING_TOLERANCE * step))
        if bad.size:
            details = ", ".join(
                f"{gaps[i]:.3f} mm between {entries[i][0].name} and {entries[i + 1][0].name}" for i in bad[:5])
            raise InputError(folder, "ImagePositionPatient",
                             f"evenly spaced slices ({step:.3f} mm; a missing slice leaves a larger gap)",
                             got=details)
        dz = step
    else:
        ds = entries[0][2]
        dz = 0.0
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            try:
                dz = float(ds.get(keyword) or 0.0)
            except (TypeError, ValueError):
                dz = 0.0
            if dz > 0:
                break
        if dz <= 0:
            dz = 1.0

    # ---- pixel data ---------------------------------------------------------------------------------------
    values = np.empty((len(entries), rows, cols), dtype=np.float64)
    exact_int = True
    sop_uids: List[str] = []
    for k, (path, _, _) in enumerate(entries):
        try:
            ds = pydicom.dcmread(str(path))
        except Exception as exc:
            raise InputError(path, "file", "a complete DICOM file", got=f"{type(exc).__name__}: {exc}"[:200]) from None
        if "PixelData" not in ds:
            raise InputError(path, "PixelData", "pixel data in an image file", got="missing (truncated file?)")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputError(path, "SamplesPerPixel", "1 (grey-scale CT)", got=ds.get("SamplesPerPixel"))
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise InputError(path, "PixelData", f"{rows}x{cols} decodable pixels",
                             got=f"{type(exc).__name__}: {exc}"[:200]) from None
        if pixels.shape != (rows, cols):
            raise InputError(path, "PixelData", f"one {rows}x{cols} frame", got=pixels.shape)
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        if slope != 1.0 or intercept != round(intercept) or pixels.dtype.kind == "f":
            exact_int = False
        values[k] = pixels.astype(np.float64) * slope + intercept
        sop_uids.append(_text(ds, "SOPInstanceUID"))

    if exact_int and values.size and values.min() >= -32768 and values.max() <= 32767:
        array = values.astype(np.int16)
    else:
        array = values.astype(np.float32)

    direction = np.stack([row, col, normal], axis=1)
    volume = Volume(array, (ps_col, ps_row, dz), tuple(positions[0]), direction)
    ds0 = entries[0][2]
    return DicomSeries(
        volume=volume,
        series_uid=info.series_uid,
        frame_of_reference_uid=_text(ds0, "FrameOfReferenceUID"),
        sop_instance_uids=sop_uids,
        files=[e[0] for e in entries],
        modality=info.modality,
        study_uid=_text(ds0, "StudyInstanceUID"),
        description=info.description,
        folder=folder,
    )


def rtstruct_files(folder: PathLike) -> List[Path]:
    """The RTSTRUCT files under ``folder`` (for dataset scans and the CLI)."""
    return [p for s in list_dicom_series(folder) if s.modality == "RTSTRUCT" for p in s.files]


__all__: Sequence[str] = ("DicomSeries", "SeriesInfo", "list_dicom_series", "read_dicom_series", "rtstruct_files")
