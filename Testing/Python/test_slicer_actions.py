"""When each Slicer-module button is enabled (AutoSegSensitivity.mrml.actions), with real MRML nodes
from slicer-core: empty fields disable the action and the tooltip names what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from AutoSegSensitivity.mrml import actions


@pytest.fixture
def scene():
    import slicer

    return slicer.vtkMRMLScene()


@pytest.fixture
def volume(scene):
    return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")


@pytest.fixture
def segmentations(scene):
    return (scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Reference"),
            scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Compared"))


@pytest.mark.parametrize("empty", [None, "", "  ", ".", Path(), Path("."), "./"])
def test_every_spelling_of_an_empty_path_is_unset(empty):
    # Path() is what Slicer's PathSerializer gives an unset field, and what the ctkPathLineEdit
    # connector reads from an empty line edit (Path('')); "./" normalises to the same
    assert actions.path_or_none(empty) is None


def test_a_real_path_is_kept():
    assert actions.path_or_none("/data/cases") == Path("/data/cases")
    assert actions.path_or_none(Path("out")) == Path("out")


def test_train_names_everything_missing_and_accepts_a_complete_form(tmp_path):
    state = actions.train(Path(), Path(), Path(), 0, running=False)
    assert not state.enabled
    for missing in ("config", "output folder", "dataset folder or checked scene volumes"):
        assert missing in state.tooltip
    config = tmp_path / "cfg.json"
    config.write_text("{}")
    assert not actions.train(tmp_path / "nope.json", tmp_path, tmp_path, 0, False).enabled  # not a file
    assert "nope.json is not a file" in actions.train(tmp_path / "nope.json", tmp_path, tmp_path, 0, False).tooltip
    assert actions.train(config, tmp_path / "run", tmp_path, 0, False).enabled
    assert actions.train(config, tmp_path / "run", Path(), 3, False).enabled  # scene volumes instead of a folder
    assert not actions.train(config, tmp_path / "run", tmp_path, 0, True).enabled  # already running


def test_cancel_only_while_running():
    assert actions.cancel(True).enabled and not actions.cancel(False).enabled


def test_predict_needs_an_existing_checkpoint_and_a_volume(tmp_path, volume):
    ckpt = tmp_path / "best.pt"
    assert "checkpoint" in actions.predict(Path(), volume, False).tooltip
    assert not actions.predict(ckpt, volume, False).enabled  # does not exist yet
    ckpt.write_bytes(b"x")
    assert "volume" in actions.predict(ckpt, None, False).tooltip
    assert actions.predict(ckpt, volume, False).enabled
    assert not actions.predict(ckpt, volume, True).enabled


def test_intensity_apply_needs_an_input_volume(volume):
    assert not actions.intensity_apply(None).enabled and "input volume" in actions.intensity_apply(None).tooltip
    assert actions.intensity_apply(volume).enabled


def test_localisation_needs_an_roi_or_a_localiser_and_an_organ_model(tmp_path, scene, volume):
    organ, localiser = tmp_path / "organ.pt", tmp_path / "loc.pt"
    organ.write_bytes(b"x")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "ROI")
    assert not actions.propose_roi(volume, Path()).enabled
    state = actions.localisation_run(volume, organ, None, Path())
    assert not state.enabled and "an ROI or a localisation model" in state.tooltip
    assert actions.localisation_run(volume, organ, roi, Path()).enabled
    assert not actions.localisation_run(volume, Path(), roi, Path()).enabled
    assert not actions.localisation_run(None, organ, roi, Path()).enabled
    localiser.write_bytes(b"x")
    assert actions.propose_roi(volume, localiser).enabled
    assert actions.localisation_run(volume, organ, None, localiser).enabled


def test_sweep_needs_one_reference_per_map_and_a_structure():
    assert actions.sweep(2, 2, "Parotid_L").enabled
    assert "structure" in actions.sweep(2, 2, " ").tooltip
    assert "one checked reference segmentation per map (1 for 2)" in actions.sweep(2, 1, "Brain").tooltip
    assert "probability maps" in actions.sweep(0, 0, "Brain").tooltip


def test_apply_optimum_needs_a_result_and_an_existing_checkpoint_when_one_is_named(tmp_path):
    assert not actions.apply_optimum(False, 1, Path()).enabled
    assert actions.apply_optimum(True, 1, Path()).enabled  # no checkpoint: only the segments
    missing = actions.apply_optimum(True, 1, tmp_path / "model.pt")
    assert not missing.enabled and "model.pt" in missing.tooltip
    (tmp_path / "model.pt").write_bytes(b"x")
    assert "store it in model.pt" in actions.apply_optimum(True, 1, tmp_path / "model.pt").tooltip


def test_segment_metrics_buttons(segmentations, volume, scene):
    ref, cmp = segmentations
    assert not actions.pair_by_name(ref, None).enabled
    assert actions.pair_by_name(ref, cmp).enabled
    state = actions.compute_metrics(None, None, None)
    assert state.tooltip == "Missing: a reference segmentation; a compared segmentation; a grid volume."
    assert actions.compute_metrics(ref, cmp, volume).enabled
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "T")
    assert "CSV file name" in actions.export_csv(table, Path()).tooltip
    assert actions.export_csv(table, "out.csv").enabled


def test_thresholds_file_actions_need_a_structure_a_file_and_for_saving_a_result(tmp_path):
    for empty in (None, "", ".", Path()):
        state = actions.save_thresholds(True, "Brain", empty)
        assert not state.enabled and "thresholds.json" in state.tooltip
        state = actions.load_thresholds("Brain", empty)
        assert not state.enabled and "thresholds.json" in state.tooltip
    target = tmp_path / "thresholds.json"
    assert not actions.save_thresholds(False, "Brain", target).enabled
    assert "Sweep" in actions.save_thresholds(False, "Brain", target).tooltip
    assert "structure" in actions.save_thresholds(True, " ", target).tooltip
    assert actions.save_thresholds(True, "Brain", target).enabled  # a new file may be created
    assert "not a file" in actions.load_thresholds("Brain", target).tooltip  # loading needs it to exist
    target.write_text("{}")
    assert actions.load_thresholds("Brain", target).enabled
