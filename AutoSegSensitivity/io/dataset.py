"""Dataset folders: one sub-folder per case under a root.

A case folder holds an image and its structures in one of these forms (checked in this order):

* ``image.nrrd`` or ``image.nii.gz`` (or ``image.nii`` / ``image.nhdr``) with ``segmentation.seg.nrrd``;
* the same image with a label volume ``labels.nii.gz`` / ``labels.nrrd`` / ``labels.nii`` and its name
  table ``labels.json``;
* a ``dicom/`` folder with one CT series and optionally one RTSTRUCT (the case's structures);
* an image alone (no structures: usable for prediction, not for training).

An optional ``roi.mrk.json`` (markups ROI) is recorded as :attr:`Case.roi_path`.

:func:`scan_dataset` never stops at a bad case: it lists the usable ones in ``cases`` and the others in
``problems`` as ``(folder name, reason)``. It reads headers only; :func:`load_case` reads the voxels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from ..errors import InputError
from ..segmentation import Segmentation
from ..volume import Volume
from .images import geometry_of, read_volume, write_volume
from .labels import read_label_names, read_label_segmentation
from .roi import Roi, write_roi
from .segnrrd import read_segmentation, segment_names, write_segmentation

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_NAMES = ("image.nrrd", "image.nii.gz", "image.nii", "image.nhdr")
SEGMENTATION_NAME = "segmentation.seg.nrrd"
LABEL_NAMES = ("labels.nii.gz", "labels.nrrd", "labels.nii", "labels.nhdr")
NAMES_JSON = "labels.json"
DICOM_DIR = "dicom"
ROI_NAME = "roi.mrk.json"


@dataclass
class Case:
    """One usable case: its folder ``name`` and ``path``, the ``structures`` it names, and where its
    parts are (``kind`` is ``"segmentation"``, ``"labels"``, ``"dicom"`` or ``"image"``)."""

    name: str
    path: Path
    structures: List[str] = field(default_factory=list)
    kind: str = "segmentation"
    image_path: Optional[Path] = None
    segmentation_path: Optional[Path] = None
    labels_path: Optional[Path] = None
    names_path: Optional[Path] = None
    dicom_path: Optional[Path] = None
    rtstruct_path: Optional[Path] = None
    roi_path: Optional[Path] = None


@dataclass
class DatasetScan:
    """The result of :func:`scan_dataset`: usable ``cases`` and ``problems`` (case folder name, reason)."""

    root: Path
    cases: List[Case] = field(default_factory=list)
    problems: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def structures(self) -> List[str]:
        """Structure names present in every usable case (in the first case's order)."""
        if not self.cases:
            return []
        common = set(self.cases[0].structures)
        for case in self.cases[1:]:
            common &= set(case.structures)
        return [s for s in self.cases[0].structures if s in common]


def _first(folder: Path, names) -> List[Path]:
    return [folder / n for n in names if (folder / n).is_file()]


def inspect_case(folder: PathLike) -> Case:
    """Identify one case folder (headers only); :class:`InputError` naming the folder and what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "case folder", "a folder", got="not a folder")
    case = Case(folder.name, folder)
    roi = folder / ROI_NAME
    case.roi_path = roi if roi.is_file() else None
    images = _first(folder, IMAGE_NAMES)
    if len(images) > 1:
        raise InputError(folder, "image", "one image file", got=", ".join(p.name for p in images))
    dicom = folder / DICOM_DIR
    if images:
        case.image_path = images[0]
        image_geom = geometry_of(images[0])
        seg = folder / SEGMENTATION_NAME
        labels = _first(folder, LABEL_NAMES)
        if seg.is_file():
            case.kind, case.segmentation_path = "segmentation", seg
            case.structures = segment_names(seg)
        elif labels:
            if len(labels) > 1:
                raise InputError(folder, "labels", "one label volume", got=", ".join(p.name for p in labels))
            names = folder / NAMES_JSON
            if not names.is_file():
                raise InputError(folder, NAMES_JSON, f"a name table for {labels[0].name}", got="missing")
            case.kind, case.labels_path, case.names_path = "labels", labels[0], names
            case.structures = list(read_label_names(names).values())
            label_geom = geometry_of(labels[0])
            diff = image_geom.grid_difference(label_geom, atol=1e-3)
            if diff:
                raise InputError(labels[0], "geometry", f"the grid of {images[0].name}", got=diff)
        else:
            case.kind = "image"
        return case
    if dicom.is_dir():
        from .dicom_series import list_dicom_series
        from .rtstruct import rtstruct_roi_names

        series = list_dicom_series(dicom)
        cts = [s for s in series if s.is_image and s.modality == "CT"]
        if len(cts) != 1:
            listed = "; ".join(s.describe() for s in series) or "no DICOM files"
            raise InputError(dicom, "series", "exactly one CT series", got=listed)
        rts = [p for s in series if s.modality == "RTSTRUCT" for p in s.files]
        if len(rts) > 1:
            raise InputError(dicom, "RTSTRUCT", "at most one RTSTRUCT", got=", ".join(p.name for p in rts))
        case.kind, case.dicom_path = "dicom", dicom
        if rts:
            case.rtstruct_path = rts[0]
            case.structures = rtstruct_roi_names(rts[0])
        return case
    raise InputError(folder, "image", f"one of {', '.join(IMAGE_NAMES)} or a {DICOM_DIR}/ folder", got="none")


def scan_dataset(root: PathLike) -> DatasetScan:
    """Scan the case folders under ``root`` (sorted by name; hidden folders skipped). Bad cases go to
    ``problems`` with their reason; only a missing ``root`` raises :class:`InputError`."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder", "an existing folder of case folders",
                         got="no such folder" if not root.exists() else "a file")
    scan = DatasetScan(root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            scan.cases.append(inspect_case(folder))
        except InputError as exc:
            scan.problems.append((folder.name, str(exc)))
        except Exception as exc:  # never stop a batch on one bad case
            scan.problems.append((folder.name, f"{type(exc).__name__}: {exc}"))
    return scan


def load_case(case: Union[Case, PathLike]) -> Tuple[Volume, Segmentation]:
    """Read a case's image (HU, LPS) and structures on the image grid. A ``.seg.nrrd`` on a different but
    aligned grid (same spacing and direction, e.g. cropped by Slicer) is placed onto the image grid
    (nearest neighbour); any other grid mismatch is an :class:`InputError`."""
    if not isinstance(case, Case):
        case = inspect_case(case)
    if case.kind == "dicom":
        from .dicom_series import read_dicom_series
        from .rtstruct import read_rtstruct

        series = read_dicom_series(case.dicom_path)
        if case.rtstruct_path is None:
            return series.volume, Segmentation.on_grid(series.volume)
        return series.volume, read_rtstruct(case.rtstruct_path, series).segmentation
    image = read_volume(case.image_path)
    if case.kind == "labels":
        seg = read_label_segmentation(case.labels_path, case.names_path)
        if not seg.geometry.same_grid(image, atol=1e-3):
            raise InputError(case.labels_path, "geometry", f"the grid of {case.image_path.name}",
                             got=seg.geometry.grid_difference(image, atol=1e-3))
        return image, _regrid(seg, image)
    if case.kind == "segmentation":
        seg = read_segmentation(case.segmentation_path)
        if not seg.geometry.same_grid(image, atol=1e-3):
            g = seg.geometry
            if not (np.allclose(g.spacing, image.spacing, atol=1e-3) and np.allclose(g.direction, image.direction, atol=1e-4)):
                raise InputError(case.segmentation_path, "geometry", f"the grid of {case.image_path.name}",
                                 got=g.grid_difference(image, atol=1e-3))
            seg = seg.resample_like(image)
        return image, _regrid(seg, image)
    return image, Segmentation.on_grid(image)


def _regrid(seg: Segmentation, image: Volume) -> Segmentation:
    """The same segments with the image's exact geometry (differences below tolerance dropped)."""
    out = Segmentation.on_grid(image)
    out.segments = seg.segments
    return out


def write_case(folder: PathLike, image: Volume, segmentation: Segmentation, roi: Optional[Roi] = None) -> Path:
    """Write a case folder: ``image.nrrd``, ``segmentation.seg.nrrd`` and ``roi.mrk.json`` (if ``roi``);
    every file atomically. The segmentation must be on the image's grid. Returns the folder."""
    folder = Path(folder)
    if not segmentation.geometry.same_grid(image, atol=1e-4):
        raise InputError("write_case", "segmentation geometry", "the image's grid",
                         got=segmentation.geometry.grid_difference(image, atol=1e-4))
    folder.mkdir(parents=True, exist_ok=True)
    write_volume(image, folder / IMAGE_NAMES[0])
    write_segmentation(segmentation, folder / SEGMENTATION_NAME)
    if roi is not None:
        write_roi(roi, folder / ROI_NAME)
    return folder
