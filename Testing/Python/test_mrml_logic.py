"""The module Logic classes on real MRML nodes (slicer-core wheel): results equal the engine's on the same
data, geometry survives, result nodes are named after the input and reused on re-run."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import slicer  # the slicer-core wheel: real MRML, no application

from AutoSegSensitivity.intensity import apply_transform, get_transform
from AutoSegSensitivity.localisation import two_stage_predict
from AutoSegSensitivity.metrics import compare_masks, compare_segmentations, surface_dice
from AutoSegSensitivity.mrml import nodes
from AutoSegSensitivity.mrml.intensity_logic import IntensityTransformLogic
from AutoSegSensitivity.mrml.localisation_logic import LocalisationLogic
from AutoSegSensitivity.mrml.segment_metrics_logic import SegmentMetricsLogic
from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic
from AutoSegSensitivity.phantom import make_phantom
from AutoSegSensitivity.segmentation import Segmentation
from AutoSegSensitivity.sweep import prominence, sweep_thresholds
from AutoSegSensitivity.volume import Box, Volume


@pytest.fixture(scope="module")
def phantom():
    volume, seg = make_phantom(seed=3, shape=(20, 40, 40))
    # an oblique direction so geometry errors cannot hide behind an identity matrix
    c, s = np.cos(0.3), np.sin(0.3)
    direction = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    volume = Volume(volume.array, volume.spacing, volume.origin, direction)
    seg.geometry = Volume(seg.geometry.array, volume.spacing, volume.origin, direction)
    return volume, seg


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def _count(scene, cls, name):
    return scene.GetNodesByClassByName(cls, name).GetNumberOfItems()


# ---- SLF intensity transform -----------------------------------------------------------------------------


def test_intensity_logic_matches_engine_names_and_reuses_output(scene, phantom):
    volume, _ = phantom
    ct = nodes.volume_to_node(volume, scene, "CT")
    logic = IntensityTransformLogic(scene)
    out = logic.apply(ct, "SLF1")
    assert out.GetName() == "CT_SLF1"
    result = nodes.volume_from_node(out)
    assert result.same_grid(volume)
    assert np.array_equal(result.array, apply_transform(volume.array, get_transform("SLF1")))
    assert logic.apply(ct, "SLF1") is out and _count(scene, "vtkMRMLScalarVolumeNode", "CT_SLF1") == 1
    custom = logic.apply(ct, [(-300, 0.0), (0, 0.5), (300, 1.0)])
    assert custom.GetName() == "CT_custom"
    assert np.allclose(nodes.volume_from_node(custom).array,
                       np.clip((volume.array.astype(np.float64) + 300) / 600, 0, 1), atol=1e-6)
    assert np.array_equal(nodes.volume_from_node(ct).array, volume.array)  # input untouched
    logic.apply(ct, "NLF1", in_place=True)
    assert np.array_equal(nodes.volume_from_node(ct).array, apply_transform(volume.array, "NLF1"))


def test_intensity_transfer_curve_plot(scene):
    table, chart = IntensityTransformLogic(scene).transfer_curve("SLF2")
    rows = nodes.rows_from_table(table)
    hu = np.array([r["HU"] for r in rows])
    assert np.allclose([r["value"] for r in rows], apply_transform(hu.reshape(1, 1, -1), "SLF2").ravel())
    assert {-500.0, -100.0, 100.0, 1500.0} <= set(hu.tolist())
    assert nodes.chart_series_names(chart) == ["SLF transfer curve curve", "SLF transfer curve points"]


def test_intensity_bad_points_raise_input_error(scene, phantom):
    ct = nodes.volume_to_node(phantom[0], scene, "CT")
    with pytest.raises(ValueError, match="increasing"):
        IntensityTransformLogic(scene).apply(ct, [(100, 0.0), (-100, 1.0)])


# ---- segment statistics comparison -----------------------------------------------------------------------


def test_segment_metrics_equal_engine_with_intensity_stats_and_csv(scene, phantom, tmp_path):
    volume, seg = phantom
    ct = nodes.volume_to_node(volume, scene, "CT")
    ref_node = nodes.segmentation_to_node(seg, scene, "Reference")
    pred = make_phantom(seed=3, shape=(20, 40, 40))[1]  # same grid, shifted masks below
    names = ["Brain", "Parotid_L", "SpinalCord"]
    cmp_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Compared")
    for name in names:
        nodes.write_segment(cmp_node, name, np.roll(pred.mask(name), 1, axis=2), volume)
    table, rows = SegmentMetricsLogic(scene).compare(ref_node, cmp_node, intensity_node=ct)
    assert table.GetName() == "Reference vs Compared"
    assert [r["segment"] for r in rows] == names  # paired by name, reference order
    for row, name in zip(rows, names):
        expected = compare_masks(np.roll(pred.mask(name), 1, axis=2), seg.mask(name), volume.spacing_zyx)
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-12), key
        inside = volume.array[seg.mask(name)].astype(float)
        assert row["ref_mean"] == pytest.approx(inside.mean()) and row["ref_max"] == inside.max()
    # the same rows as the engine's compare_segmentations on the engine's objects
    engine_pred = Segmentation.on_grid(volume)
    for name in names:
        engine_pred.add(name, np.roll(pred.mask(name), 1, axis=2))
    engine_rows = compare_segmentations(seg, engine_pred)
    assert [{k: v for k, v in r.items() if not k.startswith(("ref_", "pred_"))} for r in rows] == \
        [{k: v for k, v in r.items() if k != "pred_segment"} for r in engine_rows]
    columns = [table.GetTable().GetColumn(i).GetName() for i in range(table.GetTable().GetNumberOfColumns())]
    assert "hd95_mm" in columns and "ref_mean [HU]" in columns and "volume_ref_ml" in columns
    assert "nsd_2mm" in columns
    _, rows3 = SegmentMetricsLogic(scene).compare(ref_node, cmp_node, grid_node=ct, nsd_tolerance_mm=3.0,
                                                  table_name="tolerance 3")
    for row, name in zip(rows3, names):
        assert row["nsd_3mm"] == pytest.approx(surface_dice(np.roll(pred.mask(name), 1, axis=2), seg.mask(name),
                                                            volume.spacing_zyx, 3.0), rel=1e-12)
    again, _ = SegmentMetricsLogic(scene).compare(ref_node, cmp_node, intensity_node=ct)
    assert again is table and _count(scene, "vtkMRMLTableNode", "Reference vs Compared") == 1
    path = SegmentMetricsLogic.export_csv(table, tmp_path / "metrics.csv")
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert [r["segment"] for r in read] == names
    assert float(read[0]["dice"]) == rows[0]["dice"]


def test_segment_metrics_hand_pairs_and_other_grid(scene, phantom):
    volume, seg = phantom
    ct = nodes.volume_to_node(volume, scene, "CT")
    ref_node = nodes.segmentation_to_node(seg, scene, "Reference")
    # compared segmentation stored on a cropped grid: exported back onto the CT grid for the comparison
    box = Box((2, 5, 5), (18, 35, 35))
    crop = volume.crop(box)
    cmp_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Model")
    nodes.write_segment(cmp_node, "parotid left", seg.mask("Parotid_L")[box.slices], crop)
    table, rows = SegmentMetricsLogic(scene).compare(ref_node, cmp_node, grid_node=ct,
                                                     pairs=[("Parotid_L", "parotid left")])
    assert len(rows) == 1 and rows[0]["pred_segment"] == "parotid left"
    assert seg.mask("Parotid_L")[box.slices].sum() == seg.mask("Parotid_L").sum()
    assert rows[0]["dice"] == 1.0 and rows[0]["hd_mm"] == 0.0
    with pytest.raises(ValueError, match="shared"):
        SegmentMetricsLogic(scene).compare(ref_node, cmp_node, grid_node=ct)


# ---- threshold tuning ------------------------------------------------------------------------------------


def _prob_cases(scene, phantom, n=2):
    volume, seg = phantom
    rng = np.random.default_rng(7)
    prob_nodes, ref_nodes, probs, refs = [], [], [], []
    for i in range(n):
        ref = np.roll(seg.mask("Parotid_L"), i, axis=1)
        soft = np.clip(ref * 0.7 + rng.uniform(0, 0.45, ref.shape), 0, 1).astype(np.float32)
        prob_nodes.append(nodes.volume_to_node(volume.with_array(soft), scene, f"case{i}_Parotid_L_prob"))
        ref_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"case{i} reference")
        nodes.write_segment(ref_node, "Parotid_L", ref, volume)
        ref_nodes.append(ref_node)
        probs.append(soft)
        refs.append(ref)
    return prob_nodes, ref_nodes, probs, refs


def test_threshold_sweep_equals_engine_with_chart_and_summary(scene, phantom):
    volume, _ = phantom
    prob_nodes, ref_nodes, probs, refs = _prob_cases(scene, phantom)
    th = np.round(np.arange(0, 1.0001, 0.05), 2)
    logic = ThresholdTuningLogic(scene)
    result, table, chart, summary = logic.sweep(prob_nodes, ref_nodes, "Parotid_L", thresholds=th)
    engine = sweep_thresholds(probs, refs, [volume.spacing_zyx] * 2, th, device="numpy",
                              metrics=("dice", "nsd", "msd", "hd", "hd95"))
    for m in ("dice", "nsd", "msd", "hd", "hd95"):
        assert np.allclose(result.pooled[m], engine.pooled[m], equal_nan=True)
    rows = nodes.rows_from_table(table)
    assert np.allclose([r["dice"] for r in rows], engine.pooled["dice"])
    assert np.allclose([r["nsd"] for r in rows], engine.pooled["nsd"])  # a fraction: no unit in the name
    assert "hd95_mm" in rows[0]
    names = nodes.chart_series_names(chart)
    assert names[:5] == [f"Parotid_L sweep {m}" for m in ("dice", "nsd", "msd", "hd", "hd95")]
    tight, _, _, _ = logic.sweep(prob_nodes, ref_nodes, "Parotid_L", thresholds=[0.5], metrics=("nsd",),
                                 nsd_tolerance=0.5, name="tight")
    assert tight.pooled["nsd"][0] == pytest.approx(
        sweep_thresholds(probs, refs, [volume.spacing_zyx] * 2, [0.5], metrics=("nsd",), nsd_tolerance=0.5,
                         device="numpy").pooled["nsd"][0])
    assert "Parotid_L sweep dice optimum" in names and "Parotid_L sweep dice 0.5" in names
    s_rows = {r["metric"]: r for r in nodes.rows_from_table(summary)}
    t_opt, v_opt = engine.optimum("dice")
    assert s_rows["dice"]["optimum_threshold"] == t_opt and s_rows["dice"]["optimum_value"] == pytest.approx(v_opt)
    assert s_rows["dice"]["loss_at_0.5"] == pytest.approx(engine.loss_at(0.5, "dice"))
    assert s_rows["dice"]["prominence"] == pytest.approx(prominence(refs))
    assert s_rows["dice"]["loss_pm0.05"] == pytest.approx(engine.perturbation_losses("dice")[0.05]["mean"])
    n_tables = scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    logic.sweep(prob_nodes, ref_nodes, "Parotid_L", thresholds=th)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == n_tables  # reused, not duplicated


def test_apply_threshold_writes_one_segment_and_stores_with_model(scene, phantom, tmp_path):
    volume, _ = phantom
    prob_nodes, ref_nodes, probs, _ = _prob_cases(scene, phantom, n=1)
    logic = ThresholdTuningLogic(scene)
    other = np.zeros(volume.shape, bool)
    other[0, 0, :5] = True
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Auto")
    nodes.write_segment(seg_node, "Other", other, volume)
    for t in (0.3, 0.62):  # the slider moves: the same segment is updated
        out = logic.apply_threshold(prob_nodes[0], t, seg_node, "Parotid_L")
    seg = nodes.segmentation_from_node(out, volume)
    assert seg.names == ["Other", "Parotid_L"]
    assert np.array_equal(seg.mask("Parotid_L"), probs[0] >= np.float32(0.62))
    assert np.array_equal(seg.mask("Other"), other)
    default = logic.apply_threshold(prob_nodes[0], 0.5)
    assert default.GetName() == "case0_Parotid_L_prob segmentation"
    with pytest.raises(ValueError, match="0, 1"):
        logic.apply_threshold(prob_nodes[0], 1.5)


# ---- two-stage localisation ------------------------------------------------------------------------------


def _organ_model(volume: Volume):
    """A stand-in organ model: probability = a smooth function of HU (what a network would return)."""
    return {"Brain": volume.with_array((1 / (1 + np.exp(np.clip(-(volume.array.astype(np.float32) - 20) / 10, -50, 50)))).astype(np.float32))}


def test_localisation_with_user_roi_equals_engine(scene, phantom):
    volume, seg = phantom
    ct = nodes.volume_to_node(volume, scene, "CT")
    box = Box.from_mask(seg.mask("Brain"))
    roi_node = nodes.box_to_roi_node(box, volume, scene, "Brain ROI")
    prob_node, seg_node, used_roi, message = LocalisationLogic(scene).run(
        ct, _organ_model, roi_node=roi_node, structure="Brain", padding=2)
    assert used_roi is roi_node and "ROI" in message
    assert prob_node.GetName() == "CT_Brain_prob" and seg_node.GetName() == "CT_Brain_seg"
    prob = nodes.volume_from_node(prob_node)
    assert prob.same_grid(volume)
    engine = two_stage_predict(volume, nodes.roi_from_node(roi_node), _organ_model, "Brain", padding=2)
    assert np.array_equal(prob.array, engine.probability.array)
    outside = np.ones(volume.shape, bool)
    outside[box.pad(2).clip(volume.shape).slices] = False
    assert not prob.array[outside].any() and prob.array[~outside].any()
    mask = nodes.segmentation_from_node(seg_node, volume).mask("Brain")
    assert np.array_equal(mask, engine.probability.array >= 0.5)
    LocalisationLogic(scene).run(ct, _organ_model, roi_node=roi_node, structure="Brain", padding=2)
    assert _count(scene, "vtkMRMLScalarVolumeNode", "CT_Brain_prob") == 1


def test_localisation_threshold_moves_the_segment_that_run_wrote(scene, phantom):
    volume, seg = phantom
    ct = nodes.volume_to_node(volume, scene, "CT")
    roi_node = nodes.box_to_roi_node(Box.from_mask(seg.mask("Brain")), volume, scene, "Brain ROI")
    logic = LocalisationLogic(scene)
    prob_node, seg_node, _, _ = logic.run(ct, _organ_model, roi_node=roi_node, structure="Brain", padding=2)
    other = np.zeros(volume.shape, bool)
    other[0, :3, :3] = True
    nodes.write_segment(seg_node, "Other", other, volume)
    p = nodes.volume_from_node(prob_node).array
    n_seg = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    for t, interactive in ((0.8, True), (0.3, True), (0.65, False)):
        assert logic.apply_threshold(prob_node, t, interactive=interactive) is seg_node  # run's node and segment
        assert np.array_equal(nodes.segment_mask(seg_node, nodes.segment_id_by_name(seg_node, "Brain"), volume),
                              p >= np.float32(t))
        assert np.array_equal(nodes.segment_mask(seg_node, nodes.segment_id_by_name(seg_node, "Other"), volume), other)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == n_seg
    with pytest.raises(ValueError, match="0, 1"):
        logic.apply_threshold(prob_node, 2.0)


def test_localisation_proposes_an_adjustable_roi_from_a_localiser(scene, phantom):
    volume, seg = phantom
    ct = nodes.volume_to_node(volume, scene, "CT")

    def localiser(low: Volume):
        return {"Brain": low.with_array((low.array > 20).astype(np.float32))}

    roi_node = LocalisationLogic(scene).propose_roi(ct, localiser, "Brain")
    assert roi_node.GetName() == "CT_Brain_ROI"
    box = nodes.box_from_roi_node(roi_node, volume)
    engine = two_stage_predict(volume, localiser, None, "Brain")
    assert box == engine.box
    with pytest.raises(ValueError, match="ROI"):
        LocalisationLogic(scene).run(ct, _organ_model)
