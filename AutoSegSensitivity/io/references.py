"""Reference contours of a tuning cohort (``tune --ref-dir``, ``apply --ref-dir``), in two layouts.

* ``dataset``: one folder per case, ``<case>/segmentation.seg.nrrd`` or ``<case>/labels.nii.gz`` (also
  ``.nrrd`` / ``.nii`` / ``.nhdr``) with its name table ``labels.json``, or a ``dicom/`` folder with a CT
  series and an RTSTRUCT (:mod:`AutoSegSensitivity.io.dataset`). The image (``image.nrrd`` ...) is
  **optional**: tune never reads its voxels. With an image, the reference is put on the image's grid as
  :func:`~AutoSegSensitivity.io.dataset.load_case` does (a cropped ``.seg.nrrd`` is placed back); without
  one, the grid of the label file (or ``.seg.nrrd``) is the case's grid, and a reference cropped to its
  segments is placed onto an aligned map's grid by whole voxels (:func:`reference_on_grid`).
* ``nnunet``: nnU-Net v2's own label folder, a flat folder (``labelsTs/``, ``labelsTr/`` or any) of
  ``<case><file_ending>`` label volumes, the names and values in ``dataset.json``'s ``labels`` (read by
  :func:`~AutoSegSensitivity.io.nnunet.read_dataset_labels`: region-based labels are refused; the
  ``ignore`` label is no structure, so its voxels count as outside every structure). ``file_ending``
  comes from the same ``dataset.json`` (default ``.nii.gz``). The geometry is the label file's.

``auto`` (:func:`detect_ref_format`) is ``nnunet`` when the folder holds volume files directly (not in
case folders), else ``dataset``. The ``dataset.json`` is ``--dataset-json`` when given, else the first of
``REF/dataset.json``, ``REF/../dataset.json`` (nnU-Net's raw layout: ``DatasetXXX/labelsTs`` beside
``DatasetXXX/dataset.json``) and ``PROB/dataset.json`` (the copy ``nnUNetv2_predict`` leaves with its
output) that exists (:func:`find_dataset_json`).

:func:`scan_references` never stops at a bad case: usable references in a dict by case name, the others
as ``(case, reason)`` problems. Only headers are read; :func:`read_reference` reads the voxels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["REF_FORMATS", "Reference", "find_dataset_json", "detect_ref_format", "scan_references",
           "read_reference", "reference_geometry", "reference_location", "missing_reference_reason",
           "reference_on_grid", "case_reference"]

REF_FORMATS = ("auto", "dataset", "nnunet")
_TOP_LEVEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")


@dataclass
class Reference:
    """One usable reference case: ``name``, ``path`` (the case folder or, for ``nnunet``, the label file),
    ``kind`` (``segmentation``, ``labels``, ``dicom`` or ``nnunet``), the files it is read from and, when the
    case has one, its image (used for the grid, never for voxels). ``names`` is the ``{value: name}`` table
    of a label file (a ``labels.json`` path for ``labels``; a dict for ``nnunet``)."""

    name: str
    path: Path
    kind: str
    image_path: Optional[Path] = None
    segmentation_path: Optional[Path] = None
    labels_path: Optional[Path] = None
    names: Any = None
    case: Any = None  # the io.dataset.Case when the case has an image or DICOM


def find_dataset_json(ref_dir: Optional[PathLike], prob_dir: Optional[PathLike] = None,
                      given: Optional[PathLike] = None) -> Path:
    """The ``dataset.json`` of an nnU-Net label folder: ``given``, else the first existing of
    ``ref_dir/dataset.json``, ``ref_dir/../dataset.json``, ``prob_dir/dataset.json``; InputError naming
    the places looked at otherwise."""
    if given is not None:
        return Path(given)
    places = []
    if ref_dir is not None:
        places += [Path(ref_dir) / "dataset.json", Path(ref_dir).resolve().parent / "dataset.json"]
    if prob_dir is not None:
        places.append(Path(prob_dir) / "dataset.json")
    for p in places:
        if p.is_file():
            return p
    raise InputError(ref_dir, "dataset.json", "nnU-Net's dataset.json with the labels (--dataset-json, or in "
                     "the label folder, its parent or the prediction folder)",
                     got="none in " + ", ".join(str(p.parent) for p in places))


def _top_level_volumes(folder: Path, ending: Optional[str] = None) -> List[Path]:
    endings = (ending,) if ending else _TOP_LEVEL_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and any(p.name.lower().endswith(e.lower()) for e in endings))


def detect_ref_format(ref_dir: PathLike, fmt: str = "auto") -> str:
    """``dataset`` or ``nnunet``: ``auto`` is ``nnunet`` when ``ref_dir`` holds volume files directly."""
    if fmt not in REF_FORMATS:
        raise InputError("tune", "ref-format", ", ".join(REF_FORMATS), got=repr(fmt))
    ref_dir = Path(ref_dir)
    if not ref_dir.is_dir():
        raise InputError(ref_dir, "folder", "a folder of reference cases (case folders, or nnU-Net's "
                         "<case>.nii.gz label files)", got="no such folder" if not ref_dir.exists() else "a file")
    if fmt != "auto":
        return fmt
    return "nnunet" if _top_level_volumes(ref_dir) else "dataset"


def scan_references(ref_dir: PathLike, fmt: str = "auto", labels: Optional[Dict[str, int]] = None,
                    file_ending: str = ".nii.gz") -> Tuple[Dict[str, Reference], List[Tuple[str, str]]]:
    """``({case: Reference}, [(case, reason)])`` of the reference folder ``ref_dir`` (sorted by name).
    ``nnunet`` needs ``labels`` (``{name: value}``, :func:`~AutoSegSensitivity.io.nnunet.read_dataset_labels`)
    and the dataset's ``file_ending``."""
    ref_dir = Path(ref_dir)
    fmt = detect_ref_format(ref_dir, fmt)
    refs: Dict[str, Reference] = {}
    problems: List[Tuple[str, str]] = []
    if fmt == "nnunet":
        if not labels:
            raise InputError(ref_dir, "labels", "the dataset.json labels of an nnU-Net label folder", got="none")
        names = {v: n for n, v in labels.items()}
        for p in _top_level_volumes(ref_dir, file_ending):
            case = p.name[: -len(file_ending)]
            refs[case] = Reference(case, p, "nnunet", labels_path=p, names=names)
        if not refs:
            found = [p.name for p in _top_level_volumes(ref_dir)][:3]
            problems.append(("", str(InputError(ref_dir, "files", f"label files <case>{file_ending} (dataset.json "
                                                "file_ending)", got=", ".join(found) or "none"))))
        return refs, problems
    for folder in sorted(p for p in ref_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            refs[folder.name] = _dataset_reference(folder)
        except InputError as exc:
            problems.append((folder.name, str(exc)))
        except Exception as exc:  # never stop a cohort on one bad case
            problems.append((folder.name, f"{type(exc).__name__}: {exc}"))
    return refs, problems


def _dataset_reference(folder: Path) -> Reference:
    from .dataset import DICOM_DIR, IMAGE_NAMES, LABEL_NAMES, NAMES_JSON, SEGMENTATION_NAME, inspect_case

    expected = (f"{SEGMENTATION_NAME}, or {LABEL_NAMES[0]} with {NAMES_JSON}, or a {DICOM_DIR}/ folder with an "
                "RTSTRUCT (an image is optional)")
    if any((folder / n).is_file() for n in IMAGE_NAMES) or (folder / DICOM_DIR).is_dir():
        case = inspect_case(folder)
        if case.kind == "image" or (case.kind == "dicom" and case.rtstruct_path is None):
            raise InputError(folder, "reference", expected, got="an image without contours")
        return Reference(folder.name, folder, case.kind, image_path=case.image_path,
                         segmentation_path=case.segmentation_path, labels_path=case.labels_path,
                         names=case.names_path, case=case)
    seg = folder / SEGMENTATION_NAME
    if seg.is_file():
        return Reference(folder.name, folder, "segmentation", segmentation_path=seg)
    labels = [folder / n for n in LABEL_NAMES if (folder / n).is_file()]
    if len(labels) > 1:
        raise InputError(folder, "labels", "one label volume", got=", ".join(p.name for p in labels))
    if labels:
        names = folder / NAMES_JSON
        if not names.is_file():
            raise InputError(folder, NAMES_JSON, f"a name table for {labels[0].name}", got="missing")
        return Reference(folder.name, folder, "labels", labels_path=labels[0], names=names)
    raise InputError(folder, "reference", expected, got="none")


def read_reference(ref: Reference):
    """The reference :class:`~AutoSegSensitivity.segmentation.Segmentation` of a case, on the image's grid
    when the case has an image (header read only, unless a cropped ``.seg.nrrd`` must be placed back), else
    on the label file's grid."""
    from .dataset import load_case
    from .images import geometry_of
    from .labels import read_label_segmentation
    from .segnrrd import read_segmentation

    if ref.kind == "nnunet":
        return read_label_segmentation(ref.labels_path, ref.names)
    if ref.case is None:
        if ref.kind == "segmentation":
            return read_segmentation(ref.segmentation_path)
        return read_label_segmentation(ref.labels_path, ref.names)
    case = ref.case
    if case.kind == "segmentation":
        seg = read_segmentation(case.segmentation_path)
        if seg.geometry.same_grid(geometry_of(case.image_path), atol=1e-3):
            return seg
    elif case.kind == "labels":
        return read_label_segmentation(case.labels_path, case.names_path)
    return load_case(case)[1]


def reference_geometry(ref: Reference):
    """The grid of a reference case (a :class:`~AutoSegSensitivity.volume.Volume` with a placeholder
    array): the image's when the case has one, else the label file's (headers only; DICOM reads the
    series)."""
    from .images import geometry_of

    if ref.image_path is not None:
        return geometry_of(ref.image_path)
    if ref.kind == "dicom":
        from .dicom_series import read_dicom_series

        return read_dicom_series(ref.case.dicom_path).volume
    if ref.kind == "segmentation":
        from .segnrrd import read_segmentation

        return read_segmentation(ref.segmentation_path).geometry
    return geometry_of(ref.labels_path)


def reference_location(ref_dir: PathLike, fmt: str, case: str, file_ending: str = ".nii.gz") -> Path:
    """Where the reference of ``case`` is looked for: ``REF/<case><file_ending>`` (nnunet) or ``REF/<case>``."""
    return Path(ref_dir) / (f"{case}{file_ending}" if fmt == "nnunet" else case)


def missing_reference_reason(ref_dir: PathLike, fmt: str, case: str, file_ending: str = ".nii.gz") -> str:
    """The one-line reason of a case with probabilities but no reference: the file or folder expected."""
    where = reference_location(ref_dir, fmt, case, file_ending)
    if fmt == "nnunet":
        return str(InputError(where, "file", "the reference labels of this case", got="no such file"))
    return str(InputError(where, "folder", "the reference case folder", got="no such folder"))


def reference_on_grid(seg, grid, ref: Any, source: Any):
    """``seg`` on the grid of a probability map ``grid`` (a Volume): ``seg`` itself when on it; for a
    reference without an image (its grid is its own file's, e.g. a ``.seg.nrrd`` cropped to the segments by
    Slicer) on an aligned grid (same spacing and direction, a whole-voxel offset), the segments placed onto
    ``grid`` exactly (no interpolation); otherwise, or when a segment reaches outside ``grid``, an
    :class:`InputError` naming ``source`` and the field ``grid``."""
    from ..segmentation import Segment, Segmentation

    g = seg.geometry
    if g.same_grid(grid, atol=1e-3):
        return seg
    expected = f"the grid of the reference {Path(getattr(ref, 'path', ref)).name}"
    has_image = getattr(ref, "image_path", None) is not None or getattr(ref, "kind", "") == "dicom"
    aligned = (np.allclose(g.spacing, grid.spacing, atol=1e-3) and np.allclose(g.direction, grid.direction, atol=1e-4))
    if has_image or not aligned:
        raise InputError(source, "grid", expected, got=g.grid_difference(grid, atol=1e-3))
    step = np.asarray(grid.direction, float) * np.asarray(grid.spacing, float)[None, :]
    k = np.linalg.solve(step, np.asarray(g.origin, float) - np.asarray(grid.origin, float))  # (x, y, z) voxels
    if not np.allclose(k, np.round(k), atol=1e-2):
        raise InputError(source, "grid", expected + " or one offset from it by whole voxels",
                         got=g.grid_difference(grid, atol=1e-3))
    off = np.round(k).astype(int)[::-1]  # (z, y, x)
    out = Segmentation.on_grid(grid)
    for s in seg.segments:
        m = seg.mask(s.name)
        placed = np.zeros(grid.shape, dtype=bool)
        src = tuple(slice(max(0, -o), min(n, N - o)) for o, n, N in zip(off, m.shape, grid.shape))
        dst = tuple(slice(max(0, o), max(0, o) + (sl.stop - sl.start)) for o, sl in zip(off, src))
        if all(sl.stop > sl.start for sl in src):
            placed[dst] = m[src]
        if int(np.count_nonzero(placed)) != int(np.count_nonzero(m)):
            raise InputError(source, "grid", f"{expected}: segment {s.name!r} inside the map's grid",
                             got="voxels outside it")
        out.segments.append(Segment(s.name, placed, s.color, s.id))
    return out


def case_reference(ref_dir: PathLike, case: str, fmt: str = "auto", labels: Optional[Dict[str, int]] = None,
                   file_ending: str = ".nii.gz") -> Reference:
    """The :class:`Reference` of one case of ``ref_dir``, found as :func:`scan_references` finds it (only
    that case is looked at): ``REF/<case><file_ending>`` (``nnunet``, which needs ``labels``) or the case
    folder ``REF/<case>``; an :class:`InputError` naming the file or folder and why otherwise."""
    ref_dir = Path(ref_dir)
    fmt = detect_ref_format(ref_dir, fmt)
    where = reference_location(ref_dir, fmt, case, file_ending)
    if fmt == "nnunet":
        if not labels:
            raise InputError(ref_dir, "labels", "the dataset.json labels of an nnU-Net label folder", got="none")
        if not where.is_file():
            raise InputError(where, "file", "the reference labels of this case", got="no such file")
        return Reference(case, where, "nnunet", labels_path=where, names={v: n for n, v in labels.items()})
    if not where.is_dir():
        raise InputError(where, "folder", "the reference case folder", got="no such folder")
    return _dataset_reference(where)
