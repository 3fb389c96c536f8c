"""NRRD and NIfTI volumes (read and write through SimpleITK).

The format is chosen from the file name: ``.nrrd`` / ``.nhdr`` (NRRD, attached or detached data) and
``.nii`` / ``.nii.gz`` (NIfTI). SimpleITK converts NIfTI's RAS storage to LPS, so every
:class:`~AutoSegSensitivity.volume.Volume` read here is in LPS whatever the format. Writes are compressed
and atomic.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..volume import Volume
from .integrity import check_nifti_complete

PathLike = Union[str, "os.PathLike[str]"]

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz")


def volume_suffix(path: PathLike) -> str:
    """The recognised volume suffix of ``path`` (``.nrrd``, ``.nhdr``, ``.nii``, ``.nii.gz``) or ``""``."""
    name = Path(path).name.lower()
    for suffix in (".nii.gz", ".nrrd", ".nhdr", ".nii"):
        if name.endswith(suffix):
            return suffix
    return ""


def _check_suffix(path: Path) -> str:
    suffix = volume_suffix(path)
    if not suffix:
        raise InputError(path, "file name", f"a volume file ending in one of {', '.join(VOLUME_SUFFIXES)}",
                         got=repr(path.name))
    return suffix


def read_volume(path: PathLike) -> Volume:
    """Read a 3D scalar NRRD or NIfTI image into a :class:`Volume` (array (z, y, x), LPS geometry in mm).

    Raises :class:`InputError` naming the file for a missing, unreadable, truncated (NIfTI: checked here,
    :mod:`~AutoSegSensitivity.io.integrity`), non-3D or multi-component image."""
    import SimpleITK as sitk

    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing volume file", got="no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(path, "file", "a readable NRRD/NIfTI image", got=reason[:200]) from None
    if volume_suffix(path) in (".nii", ".nii.gz"):
        check_nifti_complete(path)  # SimpleITK reads a cut-short NIfTI as zeros (NRRD: it raises)
    if image.GetDimension() != 3:
        raise InputError(path, "dimension", "a 3D image", got=f"{image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "pixel type", "one scalar component per voxel",
                         got=f"{image.GetNumberOfComponentsPerPixel()} components")
    try:
        return Volume.from_sitk(image)
    except InputError as exc:
        raise InputError(path, exc.field, exc.expected, got=exc.got) from None


def write_volume(volume: Volume, path: PathLike) -> Path:
    """Write ``volume`` (values and LPS geometry) to NRRD or NIfTI, compressed, atomically.

    Boolean arrays are stored as uint8. ``.nhdr`` writes a detached header and its data file next to it
    (each moved into place atomically, data first). Returns the path written."""
    import SimpleITK as sitk

    path = Path(path)
    suffix = _check_suffix(path)
    if not isinstance(volume, Volume):
        raise InputError("write_volume", "volume", "a Volume", got=type(volume).__name__)
    image = volume.to_sitk()
    if suffix == ".nhdr":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            sitk.WriteImage(image, str(tmpdir / path.name), True)
            others = sorted(p for p in tmpdir.iterdir() if p.name != path.name)
            for p in others:
                os.replace(p, path.parent / p.name)
            os.replace(tmpdir / path.name, path)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return path
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


def read_header(path: PathLike, expected: str = "a readable NRRD/NIfTI header"):
    """A SimpleITK ``ImageFileReader`` of ``path`` with the header read (size, spacing, origin, direction,
    components; no voxels); an unreadable header is one :class:`InputError` naming the file."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(path, "header", expected, got=reason[:200]) from None
    return reader


def geometry_of(path: PathLike) -> Volume:
    """The grid of a NRRD/NIfTI file without reading its voxels: a :class:`Volume` whose array is a
    zero-size placeholder broadcast to the image shape (for quick checks such as dataset scans)."""
    path = Path(path)
    _check_suffix(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing volume file", got="no such file")
    reader = read_header(path)
    if reader.GetDimension() != 3:
        raise InputError(path, "dimension", "a 3D image", got=f"{reader.GetDimension()}D")
    shape = tuple(int(n) for n in reversed(reader.GetSize()))
    placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), shape)
    try:
        return Volume(placeholder, reader.GetSpacing(), reader.GetOrigin(),
                      np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3))
    except InputError as exc:
        raise InputError(path, exc.field, exc.expected, got=exc.got) from None
