"""Conversions between MRML nodes and engine objects (Volume, Segmentation, Box, result tables, curves).

Geometry follows :mod:`AutoSegSensitivity.volume` (the one place LPS/RAS conventions are written down):
a node's ``IJKToRASMatrix`` is :meth:`Volume.ijk_to_ras`, and the engine's arrays are (z, y, x), which is
also the memory order of a ``vtkImageData`` (x fastest). Nothing here imports ``qt``; ``slicer`` and
``vtk`` are imported inside the functions so that ``import AutoSegSensitivity.mrml`` works without them.
Nodes under a linear parent transform are read and written in world coordinates (the transform is
composed with the node's own geometry, as Slicer displays it); a non-linear parent transform is an
:class:`InputError` (harden it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..segmentation import Segment, Segmentation
from ..volume import Box, Volume, lps_to_ras, ras_to_lps

# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------


def _vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _np_matrix(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _node_name(node: Any) -> str:
    return node.GetName() if node is not None and node.GetName() else "node"


def node_to_world(node: Any) -> np.ndarray:
    """4x4 matrix from a node's own coordinates to world RAS: identity without a parent transform, the
    transform's matrix for a linear one; :class:`InputError` for a non-linear one."""
    import vtk

    parent = node.GetParentTransformNode() if node is not None and hasattr(node, "GetParentTransformNode") else None
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(_node_name(node), "parent transform", "no transform or a linear one (harden a non-linear "
                         "transform before using this node)", got=_node_name(parent))
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return _np_matrix(m)


def get_or_create_node(scene: Any, class_name: str, name: str) -> Any:
    """The first node of ``class_name`` called ``name`` in ``scene``, or a new one (results are reused on
    re-run rather than duplicated)."""
    nodes = scene.GetNodesByClassByName(class_name, name)
    if nodes.GetNumberOfItems() > 0:
        return nodes.GetItemAsObject(0)
    return scene.AddNewNodeByClass(class_name, name)


# ---------------------------------------------------------------------------------------------------------
# volumes
# ---------------------------------------------------------------------------------------------------------


def ijk_to_ras_of(node: Any) -> np.ndarray:
    """The 4x4 IJKToRAS matrix of a volume node (or of a vtkOrientedImageData via its image-to-world)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    if hasattr(node, "GetIJKToRASMatrix"):
        node.GetIJKToRASMatrix(m)
    else:
        node.GetImageToWorldMatrix(m)
    return _np_matrix(m)


def geometry_from_ijk_to_ras(matrix: np.ndarray, shape_zyx: Sequence[int], array: Optional[np.ndarray] = None) -> Volume:
    """A Volume (placeholder array unless ``array`` is given) whose ``ijk_to_ras()`` equals ``matrix``."""
    matrix = np.asarray(matrix, dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix
    axes = lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise InputError("IJKToRAS matrix", "spacing", "non-zero axis lengths", got=spacing.tolist())
    direction = axes / spacing
    if array is None:
        array = np.broadcast_to(np.zeros((), dtype=np.uint8), tuple(int(n) for n in shape_zyx))
    return Volume(array, tuple(spacing), tuple(lps[:3, 3]), direction)


def volume_from_node(node: Any, copy: bool = True) -> Volume:
    """A scalar volume node as a Volume (array (z, y, x), LPS geometry from its IJKToRAS matrix)."""
    from vtk.util import numpy_support

    if node is None or node.GetImageData() is None:
        raise InputError(_node_name(node), "image data", "a volume node with voxels")
    image = node.GetImageData()
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise InputError(_node_name(node), "image data", "scalar voxel values")
    if scalars.GetNumberOfComponents() != 1:
        raise InputError(_node_name(node), "image data", "one scalar component", got=scalars.GetNumberOfComponents())
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    if copy:
        array = array.copy()
    return geometry_from_ijk_to_ras(node_to_world(node) @ ijk_to_ras_of(node), array.shape, array)


def _image_data_from_array(array: np.ndarray) -> Any:
    import vtk
    from vtk.util import numpy_support

    array = np.ascontiguousarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    vtk_array = numpy_support.numpy_to_vtk(array.reshape(-1), deep=True)
    vtk_array.SetName("ImageScalars")
    image.GetPointData().SetScalars(vtk_array)
    return image


def update_volume_node(node: Any, volume: Volume) -> Any:
    """Write a Volume's voxels and world geometry into an existing volume node (IJKToRAS = ijk_to_ras(),
    expressed in the node's own space when it has a linear parent transform)."""
    node.SetAndObserveImageData(_image_data_from_array(volume.array))
    node.SetIJKToRASMatrix(_vtk_matrix(np.linalg.inv(node_to_world(node)) @ volume.ijk_to_ras()))
    if node.GetDisplayNode() is None and node.GetScene() is not None:
        node.CreateDefaultDisplayNodes()
    node.Modified()
    return node


def volume_to_node(volume: Volume, scene: Any, name: str, node: Any = None,
                   class_name: str = "vtkMRMLScalarVolumeNode") -> Any:
    """Put a Volume into ``node`` or into the node of ``class_name`` called ``name`` (created if absent)."""
    if node is None:
        node = get_or_create_node(scene, class_name, name)
    return update_volume_node(node, volume)


# ---------------------------------------------------------------------------------------------------------
# segmentations
# ---------------------------------------------------------------------------------------------------------


def _oriented_image(geometry: Volume, array: Optional[np.ndarray] = None, world_to_node: Optional[np.ndarray] = None) -> Any:
    import slicer

    img = slicer.vtkOrientedImageData()
    if array is None:
        img.SetDimensions(geometry.shape[2], geometry.shape[1], geometry.shape[0])
        img.AllocateScalars(3, 1)  # VTK_UNSIGNED_CHAR
        img.GetPointData().GetScalars().Fill(0)
    else:
        img.ShallowCopy(_image_data_from_array(array))
    matrix = geometry.ijk_to_ras() if world_to_node is None else world_to_node @ geometry.ijk_to_ras()
    img.SetImageToWorldMatrix(_vtk_matrix(matrix))
    return img


def _oriented_to_array(img: Any) -> np.ndarray:
    from vtk.util import numpy_support

    ext = img.GetExtent()
    shape = (ext[5] - ext[4] + 1, ext[3] - ext[2] + 1, ext[1] - ext[0] + 1)
    return numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(shape)


def segment_ids(segmentation_node: Any) -> List[str]:
    """Segment ids of a segmentation node in display order."""
    seg = segmentation_node.GetSegmentation()
    return [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]


def segment_mask(segmentation_node: Any, segment_id: str, reference: Volume) -> np.ndarray:
    """One segment as a boolean mask (z, y, x) on ``reference``'s grid, whatever the extent, spacing or
    sharing of the segmentation's internal labelmap (nearest-neighbour resampling)."""
    import slicer

    from .converters import ensure_segmentation_converters

    ensure_segmentation_converters()
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        raise InputError(_node_name(segmentation_node), "segment", f"one of {segment_ids(segmentation_node)}", got=segment_id)
    rep_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(rep_name):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    internal = segment.GetRepresentation(rep_name)
    out = np.zeros(reference.shape, dtype=bool)
    if internal is None or internal.IsEmpty():
        return out
    target = _oriented_image(reference, world_to_node=np.linalg.inv(node_to_world(segmentation_node)))
    ok = slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(internal, target, target, False, False)
    if not ok:
        raise InputError(_node_name(segmentation_node), f"segment {segment.GetName()!r}", "a labelmap that can be resampled onto the reference grid")
    arr = _oriented_to_array(target)
    if arr.shape != reference.shape:  # the resampler keeps the reference extent; be explicit if not
        raise InputError(_node_name(segmentation_node), "resampled labelmap", f"shape {reference.shape}", got=arr.shape)
    return arr == segment.GetLabelValue()


def segmentation_from_node(segmentation_node: Any, reference: Any, names: Optional[Sequence[str]] = None) -> Segmentation:
    """A segmentation node as a Segmentation on the grid of ``reference`` (a volume node or a Volume).

    Segment names, colours and ids are kept; ``names`` selects segments (by name, in that order)."""
    ref = volume_from_node(reference, copy=False) if not isinstance(reference, Volume) else reference
    out = Segmentation.on_grid(ref)
    segmentation = segmentation_node.GetSegmentation()
    ids = segment_ids(segmentation_node)
    by_name = {segmentation.GetSegment(i).GetName(): i for i in ids}
    if names is not None:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError(_node_name(segmentation_node), "segments", f"segments named {list(names)} (have {list(by_name)})", got=missing)
        ids = [by_name[n] for n in names]
    for sid in ids:
        segment = segmentation.GetSegment(sid)
        out.segments.append(Segment(segment.GetName(), segment_mask(segmentation_node, sid, out.geometry),
                                    tuple(segment.GetColor()), sid))
    return out


def segment_id_by_name(segmentation_node: Any, name: str) -> Optional[str]:
    """The id of the first segment called ``name``, or None."""
    segmentation = segmentation_node.GetSegmentation()
    for sid in segment_ids(segmentation_node):
        if segmentation.GetSegment(sid).GetName() == name:
            return sid
    return None


def _prepare_segmentation(segmentation_node: Any, geometry: Volume) -> Tuple[Any, str]:
    """Converter rules registered, display nodes present and, for a segmentation without segments, the
    binary labelmap as source representation with ``geometry`` as reference image geometry. Returns the
    vtkSegmentation and the binary labelmap representation name."""
    import slicer

    from .converters import ensure_segmentation_converters

    ensure_segmentation_converters()
    if segmentation_node.GetDisplayNode() is None and segmentation_node.GetScene() is not None:
        segmentation_node.CreateDefaultDisplayNodes()
    segmentation = segmentation_node.GetSegmentation()
    rep_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    if segmentation.GetNumberOfSegments() == 0:
        segmentation.SetSourceRepresentationName(rep_name) if hasattr(segmentation, "SetSourceRepresentationName") \
            else segmentation.SetMasterRepresentationName(rep_name)
        geometry_image = _oriented_image(geometry, world_to_node=np.linalg.inv(node_to_world(segmentation_node)))
        geometry_string = slicer.vtkSegmentationConverter.SerializeImageGeometry(geometry_image)
        segmentation.SetConversionParameter(
            slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(), geometry_string)
    return segmentation, rep_name


def _add_segment(segmentation_node: Any, name: str, labelmap: Any, color: Optional[Sequence[float]] = None,
                 segment_id: str = "") -> str:
    """Add a new segment ``name`` whose binary labelmap is ``labelmap``; returns its id."""
    import slicer

    segment = slicer.vtkSegment()
    segment.SetName(name)
    if color is not None:
        segment.SetColor(*[float(c) for c in color])
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), labelmap)
    if segment_id:
        segmentation_node.GetSegmentation().AddSegment(segment, segment_id)
        return segment_id
    segmentation_node.GetSegmentation().AddSegment(segment)
    return segment_id_by_name(segmentation_node, name)  # type: ignore[return-value]


def write_segment(segmentation_node: Any, name: str, mask: np.ndarray, geometry: Volume,
                  color: Optional[Sequence[float]] = None, segment_id: str = "") -> str:
    """Create segment ``name`` from a boolean mask on ``geometry``'s grid, or replace the voxels of the
    existing segment with that name (its id and, unless given, its colour kept). Other segments are not
    touched. Returns the segment id."""
    import slicer

    mask = np.asarray(mask)
    if mask.shape != geometry.shape:
        raise InputError(f"segment {name!r}", "mask", f"shape {geometry.shape}", got=mask.shape)
    segmentation, rep_name = _prepare_segmentation(segmentation_node, geometry)
    image = _oriented_image(geometry, mask.astype(np.uint8), np.linalg.inv(node_to_world(segmentation_node)))
    sid = segment_id_by_name(segmentation_node, name)
    if sid is None:
        return _add_segment(segmentation_node, name, image, color, segment_id)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        image, segmentation_node, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, image.GetExtent())
    if color is not None:
        segmentation.GetSegment(sid).SetColor(*[float(c) for c in color])
    return sid


def segmentation_to_node(segmentation: Segmentation, scene: Any, name: str, node: Any = None,
                         reference_node: Any = None) -> Any:
    """Write every segment of a Segmentation into ``node`` (or the segmentation node called ``name``,
    created if absent); segments of the node that are not in ``segmentation`` are kept."""
    if node is None:
        node = get_or_create_node(scene, "vtkMRMLSegmentationNode", name)
    if reference_node is not None:
        node.SetNodeReferenceID("referenceImageGeometryRef", reference_node.GetID())
    for s in segmentation:
        write_segment(node, s.name, s.mask, segmentation.geometry, s.color, s.id if s.id != s.name else "")
    return node


# ---------------------------------------------------------------------------------------------------------
# live thresholding (the threshold slider)
# ---------------------------------------------------------------------------------------------------------

# Name of the Python attribute under which a map node keeps its ThresholdProfiles. VTK keeps the attributes
# of a Python wrapper for as long as the C++ object lives, so the cache lives and dies with the map node
# (no module-level state) and is found again by every logic instance that gets the same node.
_PROFILES_ATTRIBUTE = "_autoseg_threshold_profiles"


def _float32(array: np.ndarray, source: str) -> np.ndarray:
    """``array`` as float32 (itself when it is): the slider compares thresholds in float32, as the sweep
    of ``ThresholdTuningLogic`` evaluates them, so that a tuned threshold gives the segment it was tuned on."""
    if array.dtype != bool and not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(source, "dtype", "a numeric probability map", got=array.dtype)
    return array.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ThresholdProfiles:
    """The maximum of a probability map over each slice along each array axis (z, y, x).

    Index ``i`` along an axis holds a voxel with ``p >= t`` exactly when that axis's maximum at ``i`` is
    ``>= t``, so the tightest box around the foreground of any threshold (its *work box*) comes from three
    short scans instead of a pass over the map. ``key`` names the voxels the maxima were computed from
    (the image object and its modification time)."""

    key: Tuple[str, int]
    maxima: Tuple[np.ndarray, np.ndarray, np.ndarray]

    @classmethod
    def of(cls, array: np.ndarray, key: Tuple[str, int] = ("", 0), source: str = "probability map") -> "ThresholdProfiles":
        """Profiles of a 3D map (three passes over it); :class:`InputError` for NaN or values outside
        [0, 1], as ``sweep.check_probability``."""
        if array.ndim != 3 or array.size == 0:
            raise InputError(source, "shape", "a non-empty 3D array", got=array.shape)
        yx = _float32(array.max(axis=0), source)
        z = _float32(array.max(axis=(1, 2)), source)
        lo, hi = float(array.min()), float(z.max())
        if np.isnan(lo) or np.isnan(hi):
            raise InputError(source, "values", "no NaN", got="NaN")
        if lo < 0 or hi > 1:
            raise InputError(source, "values", "probabilities in [0, 1]", got=f"range [{lo:.4g}, {hi:.4g}]")
        return cls(key, (z, yx.max(axis=1), yx.max(axis=0)))

    def work_box(self, threshold: float) -> Optional[Box]:
        """The tightest box (array order) around the voxels with ``p >= threshold`` (compared in float32),
        or None when there is none."""
        start, stop = [], []
        for m in self.maxima:
            hits = np.flatnonzero(m >= np.float32(threshold))
            if hits.size == 0:
                return None
            start.append(int(hits[0]))
            stop.append(int(hits[-1]) + 1)
        return Box(tuple(start), tuple(stop))


def threshold_profiles(probability_node: Any, array: Optional[np.ndarray] = None) -> ThresholdProfiles:
    """The :class:`ThresholdProfiles` of a map node, computed once per version of its voxels (the image
    data object and its MTime) and kept with the node. ``array`` is the node's voxel array if the caller
    has it already."""
    image = probability_node.GetImageData() if probability_node is not None else None
    if image is None:
        raise InputError(_node_name(probability_node), "image data", "a volume node with voxels")
    key = (image.GetAddressAsString("vtkImageData"), int(image.GetMTime()))
    cached = getattr(probability_node, _PROFILES_ATTRIBUTE, None)
    if isinstance(cached, ThresholdProfiles) and cached.key == key:
        return cached
    if array is None:
        array = volume_from_node(probability_node, copy=False).array
    profiles = ThresholdProfiles.of(array, key, _node_name(probability_node))
    setattr(probability_node, _PROFILES_ATTRIBUTE, profiles)
    return profiles


def _labelmap_layer_shared(segmentation: Any, segment_id: str) -> bool:
    """True when other segments hold their voxels in the same labelmap object (a shared layer)."""
    others: List[str] = []
    segmentation.GetSegmentIDsSharingBinaryLabelmapRepresentation(segment_id, others, False)
    return bool(others)


def _box_labelmap(geometry: Volume, box: Box, world_to_node: np.ndarray, label: int,
                  fill: Callable[[np.ndarray], Any]) -> Any:
    """A vtkOrientedImageData on ``geometry``'s grid whose extent is ``box``, holding ``label`` where
    ``fill`` sets its boolean argument (the box's shape) true. ``fill`` writes into the image's own
    memory (no copy) when the label fits a byte."""
    import slicer
    import vtk
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    (k0, j0, i0), (k1, j1, i1) = box.start, box.stop
    image.SetExtent(i0, i1 - 1, j0, j1 - 1, k0, k1 - 1)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR if label < 256 else vtk.VTK_INT, 1)
    image.SetImageToWorldMatrix(_vtk_matrix(world_to_node @ geometry.ijk_to_ras()))
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(box.size)
    if label < 256:
        fill(values.view(bool))
        if label != 1:
            values *= np.uint8(label)
    else:
        inside = np.empty(box.size, bool)
        fill(inside)
        np.multiply(inside, label, out=values)
    return image


def write_segment_box(segmentation_node: Any, name: str, mask: Union[np.ndarray, Callable[[np.ndarray], Any]],
                      box: Box, geometry: Volume, interactive: bool = False,
                      color: Optional[Sequence[float]] = None) -> str:
    """Set segment ``name`` (created if absent) to ``mask`` placed at ``box`` on ``geometry``'s grid, empty
    elsewhere; returns the segment id. Costs what the box holds, not what the grid holds. ``mask`` is a
    boolean array of the box's shape, or a function that writes it into the boolean array it is given
    (then straight into the labelmap's memory).

    The segment gets a new binary labelmap whose extent is the box (Slicer's
    ``vtkSegmentationModifier`` replaces a labelmap the same way); a segment sharing its labelmap layer
    with other segments is first moved to a layer of its own (``vtkSegmentation::SeparateSegmentLabelmap``),
    so other segments are never touched. ``interactive`` (a slider being dragged) updates the binary
    labelmap only: the segment's other representations (closed surface) stay as they were; otherwise they
    are regenerated from the new labelmap. A segmentation whose source representation is not a binary
    labelmap (e.g. contours) is an :class:`InputError`."""
    if callable(mask):
        fill = mask
    else:
        mask = np.asarray(mask)
        if mask.shape != tuple(box.size):
            raise InputError(f"segment {name!r}", "mask", f"the shape {box.size} of its box", got=mask.shape)

        def fill(out: np.ndarray) -> None:
            np.copyto(out, mask, casting="unsafe")
    if not box.inside(geometry.shape):
        raise InputError(f"segment {name!r}", "box", f"a box inside the grid {geometry.shape}",
                         got=f"{box.start} to {box.stop}")
    segmentation, rep_name = _prepare_segmentation(segmentation_node, geometry)
    source = segmentation.GetSourceRepresentationName() if hasattr(segmentation, "GetSourceRepresentationName") \
        else segmentation.GetMasterRepresentationName()
    if segmentation.GetNumberOfSegments() and source != rep_name:
        raise InputError(_node_name(segmentation_node), "source representation", f"{rep_name!r} (a segmentation "
                         "edited as voxels; convert it in the Segmentations module, or pick another one)", got=source)
    sid = segment_id_by_name(segmentation_node, name)
    segment = None if sid is None else segmentation.GetSegment(sid)
    if segment is not None and _labelmap_layer_shared(segmentation, sid):
        segmentation.SeparateSegmentLabelmap(sid)
    label = 1 if segment is None else int(segment.GetLabelValue())
    image = _box_labelmap(geometry, box, np.linalg.inv(node_to_world(segmentation_node)), label, fill)
    if segment is None:
        return _add_segment(segmentation_node, name, image, color)
    contained: List[str] = []
    segment.GetContainedRepresentationNames(contained)
    segment.AddRepresentation(rep_name, image)  # a new object: no source-modified invalidation of others
    if not interactive:
        for rep in contained:
            if rep != rep_name:  # regenerate from the new labelmap, this segment only
                segment.RemoveRepresentation(rep)
                segmentation.CreateRepresentation(rep)
    if color is not None:
        segment.SetColor(*[float(c) for c in color])
    return sid


def checked_threshold(threshold: Any) -> float:
    """``threshold`` as a float in [0, 1]; :class:`InputError` otherwise."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        t = float("nan")
    if not 0.0 <= t <= 1.0:
        raise InputError("threshold", "value", "a number in [0, 1]", got=threshold)
    return t


def threshold_to_segment(probability_node: Any, threshold: float, segmentation_node: Any, name: str,
                         interactive: bool = False) -> str:
    """Segment ``name`` of ``segmentation_node`` := ``p >= threshold`` (compared in float32) of a
    probability-map volume node; returns the segment id. Only the map's work box for this
    threshold (:class:`ThresholdProfiles`, cached per version of the map) is thresholded and written, and
    ``interactive`` leaves the other representations for the final call (:func:`write_segment_box`), so a
    slider move costs about what the organ's box holds."""
    t = checked_threshold(threshold)
    prob = volume_from_node(probability_node, copy=False)
    box = threshold_profiles(probability_node, prob.array).work_box(t) or Box((0, 0, 0), (0, 0, 0))
    sub = _float32(prob.array[box.slices], _node_name(probability_node))

    def fill(out: np.ndarray) -> None:
        np.greater_equal(sub, np.float32(t), out=out)

    return write_segment_box(segmentation_node, name, fill, box, prob, interactive)


# ---------------------------------------------------------------------------------------------------------
# markups ROI
# ---------------------------------------------------------------------------------------------------------


def roi_from_node(roi_node: Any) -> Any:
    """A markups ROI node as an engine :class:`~AutoSegSensitivity.io.Roi` (centre, size along the ROI's
    own axes, orientation columns in LPS), in world coordinates (a linear parent transform is applied; it
    must not scale)."""
    from ..io import Roi

    if roi_node is None or not roi_node.IsA("vtkMRMLMarkupsROINode"):
        raise InputError(_node_name(roi_node), "node", "a markups ROI node")
    m = node_to_world(roi_node) @ _np_matrix(roi_node.GetObjectToNodeMatrix())  # ROI axes (columns), centre: RAS
    axes_lps = np.diag([-1.0, -1.0, 1.0]) @ m[:3, :3]
    return Roi(ras_to_lps(m[:3, 3]), np.array(roi_node.GetSize(), dtype=float), axes_lps, roi_node.GetName() or "ROI")


def roi_to_node(roi: Any, scene: Any, name: Optional[str] = None, node: Any = None) -> Any:
    """Write an engine Roi into ``node`` or into the ROI node called ``name`` (default the Roi's name),
    created if absent; orientation and size are kept."""
    if node is None:
        node = get_or_create_node(scene, "vtkMRMLMarkupsROINode", name or roi.name)
    m = np.eye(4)
    m[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(roi.orientation, dtype=float)
    m[:3, 3] = lps_to_ras(roi.center_lps)
    node.SetAndObserveObjectToNodeMatrix(_vtk_matrix(np.linalg.inv(node_to_world(node)) @ m))
    node.SetSize(*[float(v) for v in roi.size_mm])
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def box_from_roi_node(roi_node: Any, volume: Volume) -> Box:
    """The voxel box (array order, possibly outside the image: callers clip) of ``volume`` whose voxel
    centres lie in the ROI node; a rotated ROI gives the box around its 8 corners (``io.roi_to_box``)."""
    from ..io import roi_to_box

    return roi_to_box(roi_from_node(roi_node), volume)


def box_to_roi_node(box: Box, volume: Volume, scene: Any, name: str = "ROI", node: Any = None) -> Any:
    """A markups ROI node (created or reused by ``name``) whose faces lie on the outer faces of ``box``'s
    voxels and whose axes are ``volume``'s index axes (``io.box_to_roi``)."""
    from ..io import box_to_roi

    return roi_to_node(box_to_roi(box, volume, name), scene, name, node)


# ---------------------------------------------------------------------------------------------------------
# tables and plots
# ---------------------------------------------------------------------------------------------------------


def table_from_rows(rows: Sequence[Mapping[str, Any]], scene: Any, name: str, node: Any = None,
                    units: Optional[Mapping[str, str]] = None, columns: Optional[Sequence[str]] = None) -> Any:
    """A vtkMRMLTableNode (created or reused by ``name``) from result rows (list of dicts). Numeric
    columns become double columns, others strings; ``units`` maps a key to its unit, shown in the column
    name as ``key [unit]`` and stored as the column's unit property."""
    import vtk

    if node is None:
        node = get_or_create_node(scene, "vtkMRMLTableNode", name)
    if columns is None:
        columns = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
    units = dict(units or {})
    table = vtk.vtkTable()
    for key in columns:
        values = [row.get(key) for row in rows]
        numeric = all(v is None or isinstance(v, (int, float, np.integer, np.floating, bool, np.bool_)) for v in values)
        col = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        col.SetName(column_title(key, units.get(key, "")))
        for v in values:
            if numeric:
                col.InsertNextValue(float("nan") if v is None else float(v))
            else:
                col.InsertNextValue("" if v is None else str(v))
        table.AddColumn(col)
    node.SetAndObserveTable(table)
    for key in columns:
        if units.get(key):
            node.SetColumnUnitLabel(column_title(key, units[key]), units[key])
    node.Modified()
    return node


def column_title(key: str, unit: str = "") -> str:
    """Column name with its unit: ``hd95_mm`` with unit ``mm`` stays ``hd95_mm``; ``volume`` with ``ml``
    becomes ``volume [ml]``."""
    if not unit or key.endswith("_" + unit):
        return key
    return f"{key} [{unit}]"


def rows_from_table(node: Any) -> List[Dict[str, Any]]:
    """The rows of a table node as dicts (column name -> float or str)."""
    table = node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            col = table.GetColumn(c)
            v = col.GetValue(r)
            row[col.GetName()] = float(v) if col.IsNumeric() else str(v)
        rows.append(row)
    return rows


def plot_series(scene: Any, table_node: Any, x_column: str, y_column: str, name: str,
                color: Sequence[float] = (0.2, 0.4, 0.8), line: bool = True, marker: str = "none") -> Any:
    """A vtkMRMLPlotSeriesNode (created or reused by ``name``) plotting two columns of ``table_node``;
    ``marker`` is none/circle/square/diamond/cross, ``line`` False draws markers only."""
    import slicer

    series = get_or_create_node(scene, "vtkMRMLPlotSeriesNode", name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x_column)
    series.SetYColumnName(y_column)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid if line else slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
    styles = {"none": slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone, "circle": slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle,
              "square": slicer.vtkMRMLPlotSeriesNode.MarkerStyleSquare, "diamond": slicer.vtkMRMLPlotSeriesNode.MarkerStyleDiamond,
              "cross": slicer.vtkMRMLPlotSeriesNode.MarkerStyleCross}
    series.SetMarkerStyle(styles[marker])
    series.SetColor(*[float(c) for c in color])
    return series


def plot_chart(scene: Any, name: str, series: Sequence[Any], title: str = "", x_title: str = "",
               y_title: str = "") -> Any:
    """A vtkMRMLPlotChartNode (created or reused by ``name``) showing exactly ``series``."""
    chart = get_or_create_node(scene, "vtkMRMLPlotChartNode", name)
    chart.RemoveAllPlotSeriesNodeIDs()
    for s in series:
        chart.AddAndObservePlotSeriesNodeID(s.GetID())
    chart.SetTitle(title or name)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    return chart


def chart_series_names(chart: Any) -> List[str]:
    """Names of the plot series a chart shows (for tests and the GUI)."""
    return [chart.GetNthPlotSeriesNode(i).GetName() for i in range(chart.GetNumberOfPlotSeriesNodes())]
