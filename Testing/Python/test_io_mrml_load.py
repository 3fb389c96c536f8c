"""Files written by our writers load in Slicer's own MRML (the slicer-core wheel) with the right segment
names, colours, voxels and geometry, and the right ROI centre, size and axes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from AutoSegSensitivity import Segmentation, Volume
from AutoSegSensitivity.io import Roi, read_roi, read_segmentation, write_roi, write_segmentation

import slicer  # noqa: E402  (the slicer-core wheel: real MRML)
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from AutoSegSensitivity.mrml.converters import RULE_CLASSES, ensure_segmentation_converters, registered_rule_classes  # noqa: E402

LPS_TO_RAS4 = np.diag([-1.0, -1.0, 1.0, 1.0])


def matrix(m: "vtk.vtkMatrix4x4") -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_converters_registered_once():
    ensure_segmentation_converters()
    assert ensure_segmentation_converters() == []
    names = registered_rule_classes()
    for name in RULE_CLASSES:
        assert names.count(name) == 1


def test_seg_nrrd_loads_in_mrml(tmp_path, rng):
    ensure_segmentation_converters()
    direction = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    geom = Volume(np.zeros((6, 7, 9), np.int16), (0.8, 1.1, 2.5), (10.0, -20.0, 30.0), direction)
    seg = Segmentation.on_grid(geom)
    a = np.zeros(geom.shape, bool)
    a[1:4, 2:5, 1:6] = True
    b = np.zeros(geom.shape, bool)
    b[2:6, 1:4, 3:9] = True  # overlaps a
    seg.add("Left parotid", a, (0.1, 0.2, 0.3))
    seg.add("Ödem – ß", b, (1.0, 0.5, 0.0))
    seg.add("Spinal cord", rng.random(geom.shape) > 0.8, (0.2, 0.9, 0.4))
    path = write_segmentation(seg, tmp_path / "seg.seg.nrrd")

    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 3
    for i, ours in enumerate(seg):
        s = segmentation.GetNthSegment(i)
        assert s.GetName() == ours.name
        assert s.GetColor() == pytest.approx(ours.color, abs=1e-6)
        labelmap = s.GetRepresentation("Binary labelmap")
        m = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(m)
        # Slicer's IJK-to-world is RAS; mapped back to LPS it is our grid's IJK-to-LPS
        np.testing.assert_allclose(LPS_TO_RAS4 @ matrix(m), geom.ijk_to_lps(), atol=1e-6)
        i0, i1, j0, j1, k0, k1 = labelmap.GetExtent()
        values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
        values = values.reshape(k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1)
        full = np.zeros(geom.shape, bool)
        full[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = values == s.GetLabelValue()
        np.testing.assert_array_equal(full, ours.mask)

    # What Slicer saves (cropped to the segments' extent) our reader places at the same LPS positions.
    writer = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(writer)
    writer.SetFileName(str(tmp_path / "slicer.seg.nrrd"))
    assert writer.WriteData(node) == 1
    back = read_segmentation(tmp_path / "slicer.seg.nrrd")
    assert back.names == seg.names
    on_grid = back.resample_like(geom)
    for ours, theirs in zip(seg, on_grid):
        np.testing.assert_array_equal(theirs.mask, ours.mask)


def _load_roi_node(scene, path):
    node = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    return node


def test_roi_loads_in_mrml(tmp_path):
    orientation = Rotation.from_euler("zx", [30, 15], degrees=True).as_matrix()
    roi = Roi([10.0, -20.0, 30.0], [40.0, 25.0, 12.5], orientation, name="Head box")
    scene = slicer.vtkMRMLScene()
    node = _load_roi_node(scene, write_roi(roi, tmp_path / "roi.mrk.json"))  # LPS, as Slicer writes by default
    center = [0.0, 0.0, 0.0]
    node.GetCenterWorld(center)
    np.testing.assert_allclose(center, [-10.0, 20.0, 30.0], atol=1e-9)  # RAS
    np.testing.assert_allclose(node.GetSize(), roi.size_mm, atol=1e-9)
    flip = np.diag([-1.0, -1.0, 1.0])
    for axis, getter in enumerate(("GetXAxisWorld", "GetYAxisWorld", "GetZAxisWorld")):
        v = [0.0, 0.0, 0.0]
        getattr(node, getter)(v)
        np.testing.assert_allclose(flip @ np.asarray(v), orientation[:, axis], atol=1e-9)

    # What Slicer's writer writes for this node, in either coordinate system, is what write_roi writes,
    # and read_roi reads it back to the same ROI.
    for system, code in (("LPS", 1), ("RAS", 0)):
        out = tmp_path / f"slicer_{system}.mrk.json"
        writer = slicer.vtkMRMLMarkupsROIJsonStorageNode()
        scene.AddNode(writer)
        writer.SetFileName(str(out))
        writer.SetCoordinateSystem(code)
        assert writer.WriteData(node) == 1
        theirs = json.loads(out.read_text())["markups"][0]
        ours = json.loads(write_roi(roi, tmp_path / f"ours_{system}.mrk.json", system).read_text())["markups"][0]
        assert theirs["coordinateSystem"] == ours["coordinateSystem"] == system
        for key in ("center", "orientation", "size"):
            np.testing.assert_allclose(ours[key], theirs[key], atol=1e-9)
        again = read_roi(out)
        np.testing.assert_allclose(again.center_lps, roi.center_lps, atol=1e-9)
        np.testing.assert_allclose(again.size_mm, roi.size_mm, atol=1e-9)
        np.testing.assert_allclose(again.orientation, orientation, atol=1e-9)

    # An RAS file of ours loads with the right centre and size.
    node_ras = _load_roi_node(scene, write_roi(roi, tmp_path / "roi_ras.mrk.json", coordinate_system="RAS"))
    node_ras.GetCenterWorld(center)
    np.testing.assert_allclose(center, [-10.0, 20.0, 30.0], atol=1e-9)
    np.testing.assert_allclose(node_ras.GetSize(), roi.size_mm, atol=1e-9)
