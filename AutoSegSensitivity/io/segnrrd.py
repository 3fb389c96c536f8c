"""Slicer ``.seg.nrrd`` segmentations (through ``slicerio``, the Slicer project's own reader/writer).

A ``.seg.nrrd`` stores one or more label layers (a 4D NRRD when segments overlap) plus per-segment
metadata (``SegmentN_Name``, ``_Color``, ``_ID``, ``_LabelValue``, ``_Layer``, ``_Extent``). Reading gives a
:class:`~AutoSegSensitivity.segmentation.Segmentation` with one boolean mask per segment on the file's
grid (LPS); writing packs the masks into as few layers as possible without losing overlaps, so the file
loads in Slicer with the same names, colours, ids and geometry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from ..atomic import atomic_path
from ..errors import InputError
from ..segmentation import Segment, Segmentation, default_color
from ..volume import Volume

PathLike = Union[str, "os.PathLike[str]"]


def _check_name(path: Path) -> None:
    if not path.name.lower().endswith(".seg.nrrd"):
        raise InputError(path, "file name", "a Slicer segmentation ending in .seg.nrrd", got=repr(path.name))


def _geometry_from_ijk_to_lps(path: Path, ijk_to_lps, shape_zyx) -> Volume:
    m = np.asarray(ijk_to_lps, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m[:3, :4])):
        raise InputError(path, "space directions/space origin", "a finite 3D voxel-to-LPS mapping", got=m.tolist())
    axes = m[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError(path, "space directions", "three non-zero axis vectors", got=axes.T.tolist())
    placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(shape_zyx))
    try:
        return Volume(placeholder, tuple(spacing), tuple(m[:3, 3]), axes / spacing)
    except InputError as exc:
        raise InputError(path, "space directions", exc.expected, got=exc.got) from None


def reference_geometry_string(geom: Volume) -> str:
    """Slicer's "Reference image geometry" conversion parameter for ``geom``: the IJK-to-RAS matrix row by
    row, then the extent (i0; i1; j0; j1; k0; k1), ``;``-separated."""
    m = geom.ijk_to_ras()
    nz, ny, nx = geom.shape
    values = [repr(float(v) + 0.0) for v in m.reshape(-1)] + [str(v) for v in (0, nx - 1, 0, ny - 1, 0, nz - 1)]
    return ";".join(values) + ";"


def _reference_geometry(data: dict):
    """The reference image grid named by the file's conversion parameters, or ``None``."""
    for parameter in data.get("conversionParameters") or []:
        if parameter.get("name") != "Reference image geometry":
            continue
        try:
            values = [float(v) for v in str(parameter.get("value", "")).split(";") if v.strip() != ""]
        except ValueError:
            return None
        if len(values) != 22:
            return None
        ijk_to_ras = np.asarray(values[:16]).reshape(4, 4)
        extent = [int(round(v)) for v in values[16:]]
        sizes = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        if min(sizes) < 1:
            return None
        ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
        ijk_to_lps[:3, 3] += ijk_to_lps[:3, :3] @ np.asarray(extent[0::2], dtype=float)
        try:
            return _geometry_from_ijk_to_lps(Path("reference"), ijk_to_lps, tuple(reversed(sizes)))
        except InputError:
            return None
    return None


def _aligned_offset(sub: Volume, ref: Volume):
    """Integer (z, y, x) index of ``sub``'s first voxel in ``ref`` when both grids share spacing and
    direction and the offset is a whole number of voxels; ``None`` otherwise."""
    if not (np.allclose(sub.spacing, ref.spacing, atol=1e-4) and np.allclose(sub.direction, ref.direction, atol=1e-5)):
        return None
    index = ref.lps_to_index(np.asarray(sub.origin))
    rounded = np.round(index)
    if np.max(np.abs(index - rounded)) > 1e-3:
        return None
    return tuple(int(v) for v in rounded)


def read_segmentation(path: PathLike) -> Segmentation:
    """Read a ``.seg.nrrd``: every segment's name, colour (RGB 0..1), id and boolean mask (z, y, x) on the
    file's grid (LPS mm). Overlapping segments (several layers) are preserved. When the file names its
    reference image grid (Slicer's "Reference image geometry" conversion parameter, which Slicer keeps and
    this module writes) and the stored voxels are an aligned sub-block of it (Slicer crops to the segments'
    extent when saving), the segments are returned on the full reference grid.

    Raises :class:`InputError` naming the file for a missing or unreadable file and for a file with no
    segments."""
    import slicerio

    path = Path(path)
    _check_name(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing .seg.nrrd file", got="no such file")
    try:
        data = slicerio.read_segmentation(str(path))
    except Exception as exc:
        raise InputError(path, "file", "a readable .seg.nrrd (NRRD) file",
                         got=f"{type(exc).__name__}: {exc}"[:200]) from None
    voxels = data.get("voxels")
    segments = data.get("segments") or []
    if not segments:
        raise InputError(path, "Segment0_Name", "at least one segment", got="no segments")
    if voxels is None or np.asarray(voxels).ndim not in (3, 4):
        raise InputError(path, "dimension", "a 3D label volume or a 4D stack of label layers",
                         got=None if voxels is None else f"{np.asarray(voxels).ndim}D")
    voxels = np.asarray(voxels)
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    # slicerio gives (i, j, k) index order; the engine uses (z, y, x) = (k, j, i).
    layers = np.transpose(layers, (0, 3, 2, 1))
    geometry = _geometry_from_ijk_to_lps(path, data.get("ijkToLPS"), layers.shape[1:])
    reference = _reference_geometry(data)
    offset = _aligned_offset(geometry, reference) if reference is not None else None
    if offset is not None and (any(offset) or reference.shape != geometry.shape):
        # Slicer saves the segments' minimal extent; put them back onto the reference image grid.
        full = np.zeros((layers.shape[0],) + reference.shape, dtype=layers.dtype)
        src, dst = [slice(None)], [slice(None)]
        for o, n_sub, n_ref in zip(offset, layers.shape[1:], reference.shape):
            a, b = max(0, o), min(n_ref, o + n_sub)
            dst.append(slice(a, max(a, b)))
            src.append(slice(a - o, max(a, b) - o))
        full[tuple(dst)] = layers[tuple(src)]
        layers, geometry = full, reference
    out = Segmentation(geometry)
    utf8 = _utf8_segment_fields(path)
    legacy = all("labelValue" not in s for s in segments) and layers.shape[0] == len(segments)
    for index, info in enumerate(segments):
        name = utf8.get((index, "Name"), str(info.get("name", info.get("id", f"Segment_{index + 1}"))))
        seg_id = utf8.get((index, "ID"), str(info.get("id", name)))
        if legacy:
            layer, value = index, None
        else:
            layer = int(info.get("layer", 0))
            if "labelValue" not in info:
                raise InputError(path, f"Segment{index}_LabelValue", "a label value for every segment", got="missing")
            value = int(info["labelValue"])
        if not 0 <= layer < layers.shape[0]:
            raise InputError(path, f"Segment{index}_Layer", f"a layer in 0..{layers.shape[0] - 1}", got=layer)
        mask = layers[layer] != 0 if value is None else layers[layer] == value
        color = info.get("color")
        if color is None or len(color) != 3:
            color = default_color(index)
        out.segments.append(Segment(name, mask, tuple(float(c) for c in color), seg_id))
    return out


def write_segmentation(seg: Segmentation, path: PathLike) -> Path:
    """Write ``seg`` as a Slicer ``.seg.nrrd`` (gzip, atomic): names and ids kept exactly, colours,
    geometry (LPS), and overlapping segments in extra layers. Empty segments are kept (empty extent).
    Returns the path written."""
    import slicerio

    path = Path(path)
    _check_name(path)
    if not isinstance(seg, Segmentation):
        raise InputError("write_segmentation", "seg", "a Segmentation", got=type(seg).__name__)
    if len(seg) == 0:
        raise InputError("write_segmentation", "segments", "at least one segment", got="none")
    geom = seg.geometry
    shape_ijk = tuple(reversed(geom.shape))
    data = slicerio.create_segmentation(shape_ijk, geom.ijk_to_lps(), dtype="uint8")
    data["containedRepresentationNames"] = ["Binary labelmap"]
    data["masterRepresentation"] = "Binary labelmap"
    data["referenceImageExtentOffset"] = [0, 0, 0]
    data["conversionParameters"] = [{
        "name": "Reference image geometry",
        "value": reference_geometry_string(geom),
        "description": "Image geometry description string determining the geometry of the labelmap that is "
                       "created in course of conversion.",
    }]
    used_ids = set()
    tokens = {}  # ASCII placeholder -> UTF-8 text (pynrrd writes ASCII headers only; Slicer reads UTF-8)

    def ascii_safe(text: str) -> str:
        if text.isascii() and "\n" not in text:
            return text
        token = f"@@AUTOSEG_UTF8_{len(tokens)}@@"
        tokens[token] = text.replace("\n", " ")
        return token

    for index, s in enumerate(seg.segments):
        if s.mask.shape != geom.shape:
            raise InputError("write_segmentation", f"segment {s.name!r} mask", f"shape {geom.shape}", got=s.mask.shape)
        seg_id = s.id or s.name
        n = 1
        while seg_id in used_ids:
            n += 1
            seg_id = f"{s.id or s.name}_{n}"
        used_ids.add(seg_id)
        info = {"id": ascii_safe(seg_id), "name": ascii_safe(s.name), "color": [float(c) for c in s.color],
                "nameAutoGenerated": False, "colorAutoGenerated": False}
        slicerio.add_segment(data, np.transpose(s.mask, (2, 1, 0)), info)
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), data)
        if tokens:
            _patch_header(tmp, tokens)
    return path


def _split_header(raw: bytes) -> int:
    """Byte offset of the end of the NRRD header (the blank line included)."""
    end = raw.find(b"\n\n")
    if end < 0:
        raise ValueError("no end of NRRD header")
    return end + 2


def _patch_header(path: Path, tokens: dict) -> None:
    raw = path.read_bytes()
    end = _split_header(raw)
    header = raw[:end]
    for token, text in tokens.items():
        header = header.replace(token.encode("ascii"), text.encode("utf-8"))
    path.write_bytes(header + raw[end:])


def _utf8_segment_fields(path: Path) -> dict:
    """``{(segment index, field): value}`` for the ``SegmentN_Name`` / ``SegmentN_ID`` header lines decoded as
    UTF-8 (pynrrd drops non-ASCII characters; Slicer writes UTF-8)."""
    import re

    found = {}
    indices = set()
    with open(path, "rb") as fh:
        for raw_line in fh:
            line = raw_line.rstrip(b"\r\n")
            if not line.strip():
                break
            m = re.match(rb"Segment(\d+)_([A-Za-z]+):=(.*)$", line)
            if m:
                indices.add(int(m.group(1)))
                if m.group(2) in (b"Name", b"ID"):
                    found[(int(m.group(1)), m.group(2).decode())] = m.group(3).decode("utf-8", "replace").strip()
    # Re-key by position in index order, as slicerio lists the segments.
    position = {index: pos for pos, index in enumerate(sorted(indices))}
    return {(position[i], key): value for (i, key), value in found.items()}


def segment_names(path: PathLike) -> list:
    """Segment names of a ``.seg.nrrd`` from its header only (no voxels read)."""
    import slicerio

    path = Path(path)
    _check_name(path)
    if not path.is_file():
        raise InputError(path, "file", "an existing .seg.nrrd file", got="no such file")
    try:
        data = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception as exc:
        raise InputError(path, "header", "a readable .seg.nrrd header", got=f"{type(exc).__name__}: {exc}"[:200]) from None
    segments = data.get("segments") or []
    if not segments:
        raise InputError(path, "Segment0_Name", "at least one segment", got="no segments")
    utf8 = _utf8_segment_fields(path)
    return [utf8.get((i, "Name"), str(s.get("name", s.get("id", "")))) for i, s in enumerate(segments)]
