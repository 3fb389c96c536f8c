"""The live threshold (slider) path on the real MRML of the slicer-core wheel: the work box of a threshold,
its cache per version of the map, the segment after interactive moves and after the release (equal to
p >= t on the map's grid, other segments untouched, shared layers, oblique geometry, parent transforms),
and the closed surface kept during a drag and regenerated on release."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import slicer  # noqa: E402  (the slicer-core wheel: real MRML, no application)

from scipy.spatial.transform import Rotation  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from AutoSegSensitivity.errors import InputError  # noqa: E402
from AutoSegSensitivity.mrml import nodes  # noqa: E402
from AutoSegSensitivity.mrml.converters import ensure_segmentation_converters  # noqa: E402
from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic  # noqa: E402
from AutoSegSensitivity.segmentation import Segmentation  # noqa: E402
from AutoSegSensitivity.volume import Box, Volume  # noqa: E402

LABELMAP = "Binary labelmap"
SURFACE = "Closed surface"


@pytest.fixture
def scene():
    # converter rules registered before any segmentation exists, as the Slicer application does at start-up
    # (a vtkSegmentation copies the registered rules when it is created)
    ensure_segmentation_converters()
    return slicer.vtkMRMLScene()


def _smooth_map(rng, shape=(14, 22, 26), centre=(7, 10, 14), radii=(4, 6, 7), noise=0.0) -> np.ndarray:
    """A compact organ: p falls smoothly from ~1 inside an ellipsoid to ~0 outside (+ an optional noise floor)."""
    idx = np.indices(shape, dtype=float)
    d = np.sqrt(sum(((i - c) / r) ** 2 for i, c, r in zip(idx, centre, radii)))
    p = 1 / (1 + np.exp((d - 1) * 6))
    if noise:
        p = np.clip(p + rng.uniform(0, noise, shape), 0, 1)
    return p.astype(np.float32)


@pytest.fixture
def oblique_map(rng) -> Volume:
    direction = Rotation.from_euler("xyz", [15, -30, 50], degrees=True).as_matrix()
    return Volume(_smooth_map(rng, noise=0.02), (2.5, 0.7, 0.9), (12.5, -30.0, 41.0), direction)


def _brute_force_box(mask: np.ndarray):
    """Bounding box of the true voxels by listing them (an independent implementation)."""
    where = np.argwhere(mask)
    if where.size == 0:
        return None
    return Box(tuple(where.min(axis=0)), tuple(where.max(axis=0) + 1))


def _labelmap(seg_node, sid):
    return seg_node.GetSegmentation().GetSegment(sid).GetRepresentation(LABELMAP)


def _mask(seg_node, name, grid):
    return nodes.segment_mask(seg_node, nodes.segment_id_by_name(seg_node, name), grid)


# ---- the work box ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_work_box_is_the_tightest_box_of_p_ge_t_for_every_threshold(rng, dtype):
    p = _smooth_map(rng, noise=0.05)
    p[2, 20, 1] = 0.4  # a speckle far from the organ widens the box for t <= 0.4 only
    if dtype == np.uint8:
        p = (p > 0.5).astype(np.uint8)
    p = p.astype(dtype)
    profiles = nodes.ThresholdProfiles.of(p)
    for t in (0.0, 0.01, 0.05, 0.2, 0.4, 0.41, 0.5, 0.9, 0.99, 1.0):
        expected = _brute_force_box(p.astype(np.float32) >= np.float32(t))  # float32, as the logic's sweep
        assert profiles.work_box(t) == expected, t
    assert profiles.work_box(0.0) == Box((0, 0, 0), p.shape)


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (1.5, r"\[0, 1\]"), (-0.1, r"\[0, 1\]")])
def test_map_values_outside_0_1_or_nan_are_an_input_error_naming_the_node(scene, rng, bad, message):
    p = _smooth_map(rng)
    p[3, 4, 5] = bad
    node = nodes.volume_to_node(Volume(p), scene, "bad map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    with pytest.raises(InputError, match=message) as err:
        ThresholdTuningLogic(scene).apply_threshold(node, 0.5, seg_node, interactive=True)
    assert "bad map" in str(err.value)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 0


def test_threshold_outside_0_1_is_an_input_error_and_creates_no_node(scene, rng):
    node = nodes.volume_to_node(Volume(_smooth_map(rng)), scene, "map")
    n_seg = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    for bad in (1.5, -0.2, "high"):
        with pytest.raises(InputError, match=r"\[0, 1\]"):
            ThresholdTuningLogic(scene).apply_threshold(node, bad, interactive=True)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == n_seg


def test_profiles_are_computed_once_per_version_of_the_map_and_kept_with_the_node(scene, rng):
    p = _smooth_map(rng)
    node = nodes.volume_to_node(Volume(p), scene, "map")
    node_id = node.GetID()
    first = nodes.threshold_profiles(node)
    del node
    gc.collect()  # the Python wrapper goes; the node and its cache stay
    node = scene.GetNodeByID(node_id)
    assert nodes.threshold_profiles(node) is first
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    ThresholdTuningLogic(scene).apply_threshold(node, 0.5, seg_node, interactive=True)  # another logic instance
    assert nodes.threshold_profiles(node) is first
    # voxels edited in place (as slicer.util.arrayFromVolumeModified signals it): recomputed
    view = nodes.volume_from_node(node, copy=False).array
    view[0, 0, 0] = 0.9
    node.GetImageData().GetPointData().GetScalars().Modified()
    second = nodes.threshold_profiles(node)
    assert second is not first and second.work_box(0.8) == _brute_force_box(view >= np.float32(0.8))
    ThresholdTuningLogic(scene).apply_threshold(node, 0.8, seg_node, interactive=True)
    assert np.array_equal(_mask(seg_node, "map", Volume(view)), view >= np.float32(0.8))
    # a new image: recomputed
    nodes.update_volume_node(node, Volume(p))
    assert nodes.threshold_profiles(node).work_box(0.8) == _brute_force_box(p >= np.float32(0.8))


# ---- the segment after moves and after the release -------------------------------------------------------


def test_moves_and_release_give_p_ge_t_on_an_oblique_anisotropic_map_with_a_transformed_segmentation(scene, oblique_map):
    p = oblique_map.array
    prob_node = nodes.volume_to_node(oblique_map, scene, "map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "couch shift")
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("z", 20, degrees=True).as_matrix()
    m[:3, 3] = (5.0, -12.0, 3.5)
    transform.SetMatrixTransformToParent(nodes._vtk_matrix(m))
    seg_node.SetAndObserveTransformNodeID(transform.GetID())
    other = np.zeros(p.shape, bool)
    other[5:9, 8:12, 10:16] = True  # inside the organ: overlaps every foreground below
    nodes.write_segment(seg_node, "Other", other, oblique_map)
    logic = ThresholdTuningLogic(scene)
    for t in (0.2, 0.7, 0.4, 0.97, 0.03, 0.55):
        logic.apply_threshold(prob_node, t, seg_node, "Organ", interactive=True)
        expected = p >= np.float32(t)
        assert np.array_equal(_mask(seg_node, "Organ", oblique_map), expected), t
        assert np.array_equal(_mask(seg_node, "Other", oblique_map), other), t
        # only the work box is held: the labelmap's extent is the box around p >= t
        ext = _labelmap(seg_node, nodes.segment_id_by_name(seg_node, "Organ")).GetExtent()
        box = _brute_force_box(expected)
        assert ext == (box.start[2], box.stop[2] - 1, box.start[1], box.stop[1] - 1, box.start[0], box.stop[0] - 1)
    logic.apply_threshold(prob_node, 0.6, seg_node, "Organ")
    assert np.array_equal(_mask(seg_node, "Organ", oblique_map), p >= np.float32(0.6))
    assert np.array_equal(_mask(seg_node, "Other", oblique_map), other)
    assert nodes.segment_ids(seg_node)[0] == nodes.segment_id_by_name(seg_node, "Other")
    # the labelmap lies on the map's grid, in the segmentation node's own (transformed) space
    labelmap = _labelmap(seg_node, nodes.segment_id_by_name(seg_node, "Organ"))
    assert np.allclose(np.linalg.inv(m) @ oblique_map.ijk_to_ras(), nodes.ijk_to_ras_of(labelmap))


def test_a_float64_map_is_thresholded_in_float32_as_the_sweep_evaluates_it(scene, rng):
    p = _smooth_map(rng).astype(np.float64)
    p[7, 10, 14] = 0.5 - 1e-12  # below 0.5 in float64, equal to it in float32
    grid = Volume(p)
    prob_node = nodes.volume_to_node(grid, scene, "map")
    logic = ThresholdTuningLogic(scene)
    probs, _, _, _ = logic.case_arrays([prob_node], [scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ref")], "x")
    seg_node = logic.apply_threshold(prob_node, 0.5, interactive=True)
    mask = _mask(seg_node, "map", grid)
    assert np.array_equal(mask, probs[0] >= np.float32(0.5)) and mask[7, 10, 14]
    assert not np.array_equal(mask, p >= 0.5)


def test_thresholds_above_the_maximum_give_an_empty_segment_and_zero_gives_the_whole_grid(scene, rng):
    p = _smooth_map(rng) * np.float32(0.8)
    grid = Volume(p)
    prob_node = nodes.volume_to_node(grid, scene, "map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    logic = ThresholdTuningLogic(scene)
    logic.apply_threshold(prob_node, 0.5, seg_node, interactive=True)
    logic.apply_threshold(prob_node, 0.9, seg_node, interactive=True)
    assert not _mask(seg_node, "map", grid).any()
    assert _labelmap(seg_node, nodes.segment_id_by_name(seg_node, "map")).IsEmpty()
    logic.apply_threshold(prob_node, 0.0, seg_node)
    assert _mask(seg_node, "map", grid).all()
    logic.apply_threshold(prob_node, 0.3, seg_node)
    assert np.array_equal(_mask(seg_node, "map", grid), p >= np.float32(0.3))


def test_a_segment_on_a_shared_layer_leaves_the_other_segments_of_the_layer_untouched(scene, oblique_map):
    p = oblique_map.array
    prob_node = nodes.volume_to_node(oblique_map, scene, "map")
    seg = Segmentation.on_grid(oblique_map)
    a = np.zeros(p.shape, bool)
    a[6:9, 9:13, 12:17] = True  # in the organ's core: p >= t overlaps it for every t below
    b = np.zeros(p.shape, bool)
    b[0:2, 0:3, 0:4] = True
    organ = np.zeros(p.shape, bool)
    organ[0:2, 18:22, 20:26] = True  # the live segment before the moves, disjoint from a and b
    seg.add("A", a, (0.9, 0.1, 0.1))
    seg.add("B", b, (0.1, 0.9, 0.1))
    seg.add("Organ", organ, (0.1, 0.1, 0.9))
    seg_node = nodes.segmentation_to_node(seg, scene, "Shared")
    segmentation = seg_node.GetSegmentation()
    segmentation.CollapseBinaryLabelmaps(False)
    assert segmentation.GetNumberOfLayers() == 1
    labels = {n: segmentation.GetSegment(nodes.segment_id_by_name(seg_node, n)).GetLabelValue() for n in "AB"}
    logic = ThresholdTuningLogic(scene)
    for t in (0.5, 0.1, 0.8):
        logic.apply_threshold(prob_node, t, seg_node, "Organ", interactive=True)
        assert np.array_equal(_mask(seg_node, "Organ", oblique_map), p >= np.float32(t)), t
        assert np.array_equal(_mask(seg_node, "A", oblique_map), a), t
        assert np.array_equal(_mask(seg_node, "B", oblique_map), b), t
    logic.apply_threshold(prob_node, 0.45, seg_node, "Organ")
    assert np.array_equal(_mask(seg_node, "Organ", oblique_map), p >= np.float32(0.45))
    assert np.array_equal(_mask(seg_node, "A", oblique_map), a) and np.array_equal(_mask(seg_node, "B", oblique_map), b)
    # the live segment moved to a layer of its own; A and B still share theirs with their label values
    ids = {n: nodes.segment_id_by_name(seg_node, n) for n in ("A", "B", "Organ")}
    assert segmentation.GetNumberOfLayers() == 2
    assert segmentation.GetLayerIndex(ids["A"]) == segmentation.GetLayerIndex(ids["B"]) != segmentation.GetLayerIndex(ids["Organ"])
    assert {n: segmentation.GetSegment(ids[n]).GetLabelValue() for n in "AB"} == labels
    # and the old voxels of the live segment are gone from the shared layer (no orphan label left there)
    shared_values = numpy_support.vtk_to_numpy(_labelmap(seg_node, ids["A"]).GetPointData().GetScalars())
    assert set(np.unique(shared_values)) == {0, *labels.values()}


@pytest.mark.parametrize("label", [7, 300])
def test_a_segment_alone_on_its_layer_keeps_its_label_value(scene, rng, label):
    p = _smooth_map(rng)
    grid = Volume(p)
    prob_node = nodes.volume_to_node(grid, scene, "map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    sid = nodes.write_segment(seg_node, "Organ", p > 0.5, grid)
    seg_node.GetSegmentation().GetSegment(sid).SetLabelValue(label)
    ThresholdTuningLogic(scene).apply_threshold(prob_node, 0.3, seg_node, "Organ", interactive=True)
    assert seg_node.GetSegmentation().GetSegment(sid).GetLabelValue() == label
    values = numpy_support.vtk_to_numpy(_labelmap(seg_node, sid).GetPointData().GetScalars())
    assert set(np.unique(values)) == {0, label}
    assert np.array_equal(_mask(seg_node, "Organ", grid), p >= np.float32(0.3))


def test_write_segment_box_places_an_array_mask_at_its_box(scene, oblique_map):
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    box = Box((2, 3, 4), (9, 15, 11))
    inner = np.random.default_rng(5).random(box.size) > 0.5
    sid = nodes.write_segment_box(seg_node, "Blob", inner, box, oblique_map, color=(0.2, 0.3, 0.4))
    expected = np.zeros(oblique_map.shape, bool)
    expected[box.slices] = inner
    assert np.array_equal(_mask(seg_node, "Blob", oblique_map), expected)
    assert np.allclose(seg_node.GetSegmentation().GetSegment(sid).GetColor(), (0.2, 0.3, 0.4))
    assert nodes.write_segment_box(seg_node, "Blob", ~inner, box, oblique_map) == sid  # replaced, same id
    expected[box.slices] = ~inner
    assert np.array_equal(_mask(seg_node, "Blob", oblique_map), expected)


# ---- other representations -------------------------------------------------------------------------------


def _surface_state(seg_node, name):
    surface = seg_node.GetSegmentation().GetSegment(nodes.segment_id_by_name(seg_node, name)).GetRepresentation(SURFACE)
    return None if surface is None else (surface, surface.GetMTime(), surface.GetNumberOfPoints())


def test_closed_surface_is_kept_during_a_drag_and_regenerated_on_release_for_the_moved_segment_only(scene, rng):
    p = _smooth_map(rng)
    grid = Volume(p, (2.0, 1.0, 1.0))
    prob_node = nodes.volume_to_node(grid, scene, "map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    other = np.zeros(p.shape, bool)
    other[1:4, 1:5, 1:6] = True
    nodes.write_segment(seg_node, "Other", other, grid)
    logic = ThresholdTuningLogic(scene)
    logic.apply_threshold(prob_node, 0.9, seg_node, "Organ")
    assert seg_node.CreateClosedSurfaceRepresentation()
    before, other_before = _surface_state(seg_node, "Organ"), _surface_state(seg_node, "Other")
    for t in (0.5, 0.2, 0.1):
        logic.apply_threshold(prob_node, t, seg_node, "Organ", interactive=True)
        assert _surface_state(seg_node, "Organ") == before, t  # same object, not modified: not regenerated
        assert _surface_state(seg_node, "Other") == other_before
    logic.apply_threshold(prob_node, 0.1, seg_node, "Organ")
    surface, mtime, n_points = _surface_state(seg_node, "Organ")
    assert surface is not before[0] or mtime > before[1]
    assert n_points > before[2]  # t = 0.1 holds many more voxels than t = 0.9
    assert _surface_state(seg_node, "Other") == other_before  # only the moved segment is regenerated
    # the new surface wraps p >= 0.1: its bounds are those of the foreground voxels' centres, within a voxel
    fg = np.argwhere(p >= np.float32(0.1))
    corners = np.array([[i, j, k] for i in fg[:, 0][[0, -1]] for j in (fg[:, 1].min(), fg[:, 1].max())
                        for k in (fg[:, 2].min(), fg[:, 2].max())], dtype=float)
    ras = np.array([grid.ijk_to_ras() @ np.r_[c[::-1], 1.0] for c in corners])[:, :3]
    bounds = np.array(surface.GetBounds()).reshape(3, 2)
    assert np.all(np.abs(bounds[:, 0] - ras.min(axis=0)) <= 2.0) and np.all(np.abs(bounds[:, 1] - ras.max(axis=0)) <= 2.0)


def test_without_a_closed_surface_the_release_creates_none(scene, rng):
    p = _smooth_map(rng)
    prob_node = nodes.volume_to_node(Volume(p), scene, "map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    logic = ThresholdTuningLogic(scene)
    logic.apply_threshold(prob_node, 0.4, seg_node, interactive=True)
    logic.apply_threshold(prob_node, 0.5, seg_node)
    names: list = []
    seg_node.GetSegmentation().GetContainedRepresentationNames(names)
    assert names == [LABELMAP]


def test_a_closed_surface_source_segmentation_is_an_input_error_and_is_left_as_it_was(scene, rng):
    p = _smooth_map(rng)
    grid = Volume(p)
    prob_node = nodes.volume_to_node(grid, scene, "map")
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Contours")
    nodes.write_segment(seg_node, "Organ", p >= 0.5, grid)
    assert seg_node.CreateClosedSurfaceRepresentation()
    seg_node.GetSegmentation().SetSourceRepresentationName(SURFACE)
    surface = _surface_state(seg_node, "Organ")
    with pytest.raises(InputError, match="Contours.*source representation.*Closed surface"):
        ThresholdTuningLogic(scene).apply_threshold(prob_node, 0.3, seg_node, "Organ", interactive=True)
    assert _surface_state(seg_node, "Organ") == surface
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 1


def test_write_segment_box_rejects_a_mask_that_does_not_fit_its_box(scene, rng):
    grid = Volume(_smooth_map(rng))
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Live")
    with pytest.raises(InputError, match="box"):
        nodes.write_segment_box(seg_node, "Organ", np.ones((2, 2, 2), bool), Box((0, 0, 0), (2, 3, 2)), grid)
    with pytest.raises(InputError, match="box"):
        nodes.write_segment_box(seg_node, "Organ", np.ones((2, 2, 2), bool), Box((13, 0, 0), (15, 2, 2)), grid)
    assert seg_node.GetSegmentation().GetNumberOfSegments() == 0
