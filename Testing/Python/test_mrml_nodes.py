"""MRML conversions on the real MRML of the slicer-core wheel: volumes, segmentations, ROIs, tables, plots."""

from __future__ import annotations

import numpy as np
import pytest

import slicer  # noqa: E402  (the slicer-core wheel: real MRML, no application)

from scipy.spatial.transform import Rotation  # noqa: E402

from AutoSegSensitivity.io import Roi, box_to_roi, roi_to_box  # noqa: E402
from AutoSegSensitivity.mrml import nodes  # noqa: E402
from AutoSegSensitivity.volume import Box, Volume  # noqa: E402


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def oblique(rng) -> Volume:
    direction = Rotation.from_euler("xyz", [12, -25, 40], degrees=True).as_matrix()
    array = rng.normal(0, 100, size=(6, 9, 11)).astype(np.float32)
    return Volume(array, (0.7, 0.9, 2.5), (12.5, -30.0, 41.0), direction)


def test_volume_round_trip_keeps_voxels_and_oblique_geometry(scene, oblique):
    node = nodes.volume_to_node(oblique, scene, "CT")
    assert np.allclose(nodes.ijk_to_ras_of(node), oblique.ijk_to_ras())
    # Slicer's own accessors agree with the engine's LPS->RAS convention
    spacing = node.GetSpacing()
    assert np.allclose(spacing, oblique.spacing)
    assert np.allclose(node.GetOrigin(), [-oblique.origin[0], -oblique.origin[1], oblique.origin[2]])
    back = nodes.volume_from_node(node)
    assert back.same_grid(oblique, atol=1e-9)
    assert back.array.dtype == np.float32 and np.array_equal(back.array, oblique.array)
    # a voxel's RAS position computed by VTK's matrix equals the engine's LPS position flipped
    ijk = np.array([3.0, 5.0, 2.0, 1.0])
    ras = nodes.ijk_to_ras_of(node) @ ijk
    lps = oblique.index_to_lps(ijk[2::-1])
    assert np.allclose(ras[:3], lps * [-1, -1, 1])


def test_volume_node_is_reused_by_name(scene, oblique):
    a = nodes.volume_to_node(oblique, scene, "CT_SLF1")
    b = nodes.volume_to_node(oblique.with_array(oblique.array * 2), scene, "CT_SLF1")
    assert a is b
    assert scene.GetNodesByClassByName("vtkMRMLScalarVolumeNode", "CT_SLF1").GetNumberOfItems() == 1
    assert np.array_equal(nodes.volume_from_node(a).array, oblique.array * 2)


def test_masks_round_trip_with_names_colours_ids_and_overlap(scene, oblique):
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    a = np.zeros(oblique.shape, bool)
    a[1:4, 2:6, 3:8] = True
    b = np.zeros(oblique.shape, bool)
    b[2:6, 4:9, 5:11] = True  # overlaps a
    id_a = nodes.write_segment(seg_node, "Parotid_L", a, oblique, (0.9, 0.1, 0.2))
    id_b = nodes.write_segment(seg_node, "Brain", b, oblique, (0.1, 0.8, 0.3), segment_id="brain_id")
    assert id_b == "brain_id"
    seg = nodes.segmentation_from_node(seg_node, nodes.volume_to_node(oblique, scene, "CT"))
    assert seg.names == ["Parotid_L", "Brain"]
    assert seg.get("Parotid_L").id == id_a and seg.get("Brain").id == "brain_id"
    assert np.allclose(seg.get("Parotid_L").color, (0.9, 0.1, 0.2))
    assert np.array_equal(seg.mask("Parotid_L"), a) and np.array_equal(seg.mask("Brain"), b)
    assert seg.geometry.same_grid(oblique)


def test_writing_back_updates_one_segment_and_leaves_the_others(scene, oblique):
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    a = np.zeros(oblique.shape, bool)
    a[1:3, 1:3, 1:3] = True
    b = np.zeros(oblique.shape, bool)
    b[3:5, 5:8, 6:9] = True
    id_a = nodes.write_segment(seg_node, "A", a, oblique, (1, 0, 0))
    id_b = nodes.write_segment(seg_node, "B", b, oblique, (0, 0, 1))
    a2 = np.zeros(oblique.shape, bool)
    a2[0, 0, 0] = a2[5, 8, 10] = True
    assert nodes.write_segment(seg_node, "A", a2, oblique) == id_a
    seg = nodes.segmentation_from_node(seg_node, oblique)
    assert nodes.segment_ids(seg_node) == [id_a, id_b]
    assert np.array_equal(seg.mask("A"), a2) and np.array_equal(seg.mask("B"), b)
    assert np.allclose(seg.get("A").color, (1, 0, 0))  # colour kept when not given


def test_export_is_on_the_reference_grid_when_the_labelmap_has_another_extent_and_spacing(scene):
    reference = Volume(np.zeros((8, 10, 12), np.int16), (2.0, 2.0, 2.0), (-5.0, 7.0, 3.0))
    # a labelmap on a finer (1 mm) grid covering only part of the reference, with the same origin, so
    # every reference voxel centre coincides with a fine voxel centre: nearest neighbour is exact
    fine = Volume(np.zeros((10, 14, 16), np.uint8), (1.0, 1.0, 1.0), reference.origin)
    fine_mask = np.zeros(fine.shape, bool)
    fine_mask[2:9, 3:12, 4:15] = True
    fine_mask[4, 6, 8] = False
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    nodes.write_segment(seg_node, "Organ", fine_mask, fine)
    internal = seg_node.GetSegmentation().GetSegment(nodes.segment_ids(seg_node)[0]).GetRepresentation("Binary labelmap")
    assert internal.GetDimensions() != tuple(reverse for reverse in reference.shape[::-1])
    mask = nodes.segmentation_from_node(seg_node, reference).mask("Organ")
    assert mask.shape == reference.shape
    expected = np.zeros(reference.shape, bool)
    expected[:5, :7, :8] = fine_mask[::2, ::2, ::2]
    assert np.array_equal(mask, expected)
    # the same through the engine's own resampling (SimpleITK nearest neighbour)
    engine = fine.with_array(fine_mask.astype(np.uint8)).resample_like(reference, "nearest").array.astype(bool)
    assert np.array_equal(mask, engine)


def test_export_crops_a_labelmap_that_extends_beyond_the_reference(scene):
    reference = Volume(np.zeros((4, 5, 6), np.int16), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    big = Volume(np.zeros((6, 9, 10), np.uint8), (1.0, 1.0, 3.0), (-2.0, -2.0, -3.0))  # 1 slice, 2 rows/cols before
    big_mask = np.zeros(big.shape, bool)
    big_mask[0:3, 1:5, 1:6] = True
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    nodes.write_segment(seg_node, "X", big_mask, big)
    mask = nodes.segmentation_from_node(seg_node, reference).mask("X")
    assert np.array_equal(mask, big_mask[1:5, 2:7, 2:8])


def test_segments_selected_by_name_and_missing_names_reported(scene, oblique):
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    for i, name in enumerate(["A", "B", "C"]):
        m = np.zeros(oblique.shape, bool)
        m[i, i, i] = True
        nodes.write_segment(seg_node, name, m, oblique)
    assert nodes.segmentation_from_node(seg_node, oblique, ["C", "A"]).names == ["C", "A"]
    with pytest.raises(ValueError, match="Nope"):
        nodes.segmentation_from_node(seg_node, oblique, ["Nope"])


def test_roi_node_box_round_trip_and_agreement_with_io(scene, oblique):
    box = Box((1, 2, 3), (4, 7, 9))
    roi_node = nodes.box_to_roi_node(box, oblique, scene, "Head ROI")
    assert nodes.box_from_roi_node(roi_node, oblique) == box
    roi = nodes.roi_from_node(roi_node)
    expected = box_to_roi(box, oblique)
    assert np.allclose(roi.center_lps, expected.center_lps) and np.allclose(roi.size_mm, expected.size_mm)
    assert np.allclose(roi.orientation, expected.orientation)
    # Slicer reports the centre in RAS
    centre = [0.0, 0.0, 0.0]
    roi_node.GetCenter(centre)
    assert np.allclose(centre, expected.center_lps * [-1, -1, 1])
    assert nodes.box_to_roi_node(Box((0, 0, 0), (2, 2, 2)), oblique, scene, "Head ROI") is roi_node


def test_rotated_roi_gives_the_box_around_its_corners(scene):
    volume = Volume(np.zeros((20, 20, 20), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    rot = Rotation.from_euler("z", 45, degrees=True).as_matrix()
    roi = Roi(np.array([10.0, 10.0, 10.0]), np.array([4.0, 4.0, 6.0]), rot, "rotated")
    node = nodes.roi_to_node(roi, scene)
    assert node.GetName() == "rotated"
    box = nodes.box_from_roi_node(node, volume)
    assert box == roi_to_box(roi, volume)
    # the 45 degree ROI spans 4*sqrt(2) = 5.66 mm in x and y: voxel centres 8..12 inside, 6 along z (7..13)
    assert box == Box((7, 8, 8), (14, 13, 13))


def test_table_from_rows_with_units_and_reuse(scene):
    rows = [{"segment": "Brain", "dice": 0.9, "hd_mm": 2.5, "volume": 10.0},
            {"segment": "Lens_L", "dice": 0.5, "hd_mm": float("inf"), "volume": None}]
    table = nodes.table_from_rows(rows, scene, "Results", units={"hd_mm": "mm", "volume": "ml"})
    t = table.GetTable()
    names = [t.GetColumn(i).GetName() for i in range(t.GetNumberOfColumns())]
    assert names == ["segment", "dice", "hd_mm", "volume [ml]"]
    assert table.GetColumnUnitLabel("volume [ml]") == "ml"
    back = nodes.rows_from_table(table)
    assert back[0] == {"segment": "Brain", "dice": 0.9, "hd_mm": 2.5, "volume [ml]": 10.0}
    assert back[1]["hd_mm"] == float("inf") and np.isnan(back[1]["volume [ml]"])
    again = nodes.table_from_rows(rows[:1], scene, "Results")
    assert again is table and table.GetTable().GetNumberOfRows() == 1


def test_plot_series_and_chart(scene):
    table = nodes.table_from_rows([{"threshold": t, "dice": 1 - abs(t - 0.4)} for t in (0.1, 0.4, 0.7)], scene, "T")
    s1 = nodes.plot_series(scene, table, "threshold", "dice", "dice curve")
    s2 = nodes.plot_series(scene, table, "threshold", "dice", "dice marks", line=False, marker="diamond")
    chart = nodes.plot_chart(scene, "Chart", [s1, s2], x_title="threshold", y_title="Dice")
    assert nodes.chart_series_names(chart) == ["dice curve", "dice marks"]
    assert s1.GetTableNodeID() == table.GetID() and s1.GetYColumnName() == "dice"
    assert s2.GetMarkerStyle() == slicer.vtkMRMLPlotSeriesNode.MarkerStyleDiamond
    assert s2.GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleNone
    assert nodes.plot_chart(scene, "Chart", [s1]) is chart and nodes.chart_series_names(chart) == ["dice curve"]


def _linear_transform(scene, name="Registration"):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("zyx", [20, -10, 5], degrees=True).as_matrix()
    m[:3, 3] = (4.0, -7.5, 12.0)
    transform.SetMatrixTransformToParent(nodes._vtk_matrix(m))
    return transform, m


def test_linear_parent_transforms_are_applied_in_world_coordinates(scene, oblique):
    transform, m = _linear_transform(scene)
    node = nodes.volume_to_node(oblique, scene, "CT")
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = nodes.volume_from_node(node)
    assert np.allclose(world.ijk_to_ras(), m @ oblique.ijk_to_ras())
    # writing world geometry back into the transformed node leaves its own geometry unchanged
    nodes.update_volume_node(node, world)
    assert np.allclose(nodes.ijk_to_ras_of(node), oblique.ijk_to_ras())
    # a segmentation under the same transform, written and read on the world grid, round-trips exactly
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    seg_node.SetAndObserveTransformNodeID(transform.GetID())
    mask = np.zeros(oblique.shape, bool)
    mask[1:5, 2:7, 3:9] = True
    nodes.write_segment(seg_node, "A", mask, world)
    assert np.array_equal(nodes.segmentation_from_node(seg_node, node).mask("A"), mask)
    # the same segmentation seen from an untransformed copy of the grid: empty or shifted, not equal
    plain = nodes.segmentation_from_node(seg_node, oblique).mask("A")
    assert not np.array_equal(plain, mask)
    # ROIs: the box of world voxels survives a transformed ROI node
    roi_node = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    roi_node.SetAndObserveTransformNodeID(transform.GetID())
    box = Box((1, 2, 3), (4, 7, 9))
    nodes.box_to_roi_node(box, world, scene, node=roi_node)
    assert nodes.box_from_roi_node(roi_node, world) == box


def test_non_linear_parent_transform_is_an_input_error(scene, oblique):
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Warp")
    node = nodes.volume_to_node(oblique, scene, "CT")
    node.SetAndObserveTransformNodeID(grid.GetID())
    assert not grid.IsTransformToWorldLinear()
    with pytest.raises(ValueError, match="parent transform"):
        nodes.volume_from_node(node)


def test_shared_labelmap_layers_from_a_seg_nrrd_and_saving_through_slicer(scene, oblique, tmp_path, rng):
    """A .seg.nrrd (overlapping segments in shared layers with label values) loaded by Slicer's storage
    node exports segment by segment; what Slicer saves from our nodes reads back equal."""
    from AutoSegSensitivity.io import read_segmentation, write_segmentation
    from AutoSegSensitivity.segmentation import Segmentation

    seg = Segmentation.on_grid(oblique)
    a = np.zeros(oblique.shape, bool)
    a[1:4, 2:6, 1:7] = True
    b = np.zeros(oblique.shape, bool)
    b[2:6, 4:9, 3:10] = True
    seg.add("Parotid_L", a, (0.1, 0.2, 0.3))
    seg.add("Brain", b, (1.0, 0.5, 0.0))
    seg.add("Noise", rng.random(oblique.shape) > 0.7, (0.2, 0.9, 0.4))
    path = write_segmentation(seg, tmp_path / "in.seg.nrrd")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Loaded")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    loaded = nodes.segmentation_from_node(node, oblique)
    assert loaded.names == seg.names
    for s in seg:
        assert np.array_equal(loaded.mask(s.name), s.mask), s.name
        assert np.allclose(loaded.get(s.name).color, s.color)
    # our nodes saved by Slicer read back with the IO reader (Slicer crops to the segments' extent)
    ours = nodes.segmentation_to_node(seg, scene, "Ours")
    # disjoint segments merged into one shared layer, told apart by label value, export one by one
    disjoint = Segmentation.on_grid(oblique)
    disjoint.add("A", a)
    disjoint.add("C", np.pad(np.ones((1,) + oblique.shape[1:], bool), ((0, oblique.shape[0] - 1), (0, 0), (0, 0))))
    merged = nodes.segmentation_to_node(disjoint, scene, "Merged")
    merged.GetSegmentation().CollapseBinaryLabelmaps(False)
    assert merged.GetSegmentation().GetNumberOfLayers() == 1
    assert sorted(merged.GetSegmentation().GetNthSegment(i).GetLabelValue() for i in range(2)) == [1, 2]
    shared = nodes.segmentation_from_node(merged, oblique)
    assert np.array_equal(shared.mask("A"), a) and np.array_equal(shared.mask("C"), disjoint.mask("C"))
    writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    writer.SetFileName(str(tmp_path / "out.seg.nrrd"))
    assert writer.WriteData(ours) == 1
    back = read_segmentation(tmp_path / "out.seg.nrrd").resample_like(oblique)
    for s in seg:
        assert np.array_equal(back.mask(s.name), s.mask), s.name


def test_export_onto_an_offset_coarser_grid_is_nearest_neighbour_like_the_engine(scene, rng):
    direction = Rotation.from_euler("z", 15, degrees=True).as_matrix()
    labelmap = Volume(np.zeros((12, 20, 22), np.uint8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction)
    mask = np.zeros(labelmap.shape, bool)
    mask[2:10, 3:17, 4:19] = rng.random((8, 14, 15)) > 0.35
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Seg")
    nodes.write_segment(seg_node, "Organ", mask, labelmap)
    # reference voxels 1.7 x 1.3 x 2.2 mm, shifted by a fraction of a voxel: no centre falls on a tie
    reference = Volume(np.zeros((5, 14, 12), np.int16), (1.7, 1.3, 2.2),
                       tuple(labelmap.index_to_lps([0.31, 0.27, 0.33])), direction)
    got = nodes.segmentation_from_node(seg_node, reference).mask("Organ")
    engine = labelmap.with_array(mask.astype(np.uint8)).resample_like(reference, "nearest").array.astype(bool)
    assert got.any() and np.array_equal(got, engine)
