"""Cohort tuning from AutoSegThreshold's logic (CohortTuningLogic) on real MRML (slicer-core): ``autosegsens
tune`` run for real in a background process on a small written cohort, its events, its outputs as table and
plot nodes (checked against tune's own files and against brute-force Dice), a case loaded for the slider
(segment == p >= t), thresholds.json saved and read back; and the one background-process helper
(mrml/background.py) that every module uses: cancel within 1 s, a run that ignores SIGTERM killed with its
children when the module cleans up."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import slicer  # the slicer-core wheel: real MRML, no application

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.mrml import nodes
from AutoSegSensitivity.mrml.background import BackgroundProcess
from AutoSegSensitivity.mrml.cohort_logic import CohortTuningLogic
from AutoSegSensitivity.tune import read_thresholds, read_thresholds_file

from test_mrml_training import _gone  # True when a pid no longer runs
from tune_cohort import TH, brute_counts, brute_dice, case_arrays, write_cohort

N_CASES = 5
SHAPE = (8, 16, 14)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _poll_until(process, condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
        if condition():
            return True
        time.sleep(0.02)
    process.poll()
    return bool(condition())




@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    probs, refs = write_cohort(root, N_CASES, SHAPE)
    scene = slicer.vtkMRMLScene()
    logic = CohortTuningLogic(scene)
    run = logic.start(probs, refs, root / "run", metric="dice", folds=3, bootstrap=200, extra_env=ONE_THREAD)
    assert run.running or run.returncode == 0
    assert _poll_until(run, lambda: not run.running, 120), run.log_tail()
    assert run.returncode == 0, run.log_tail()
    result = logic.load_results(root / "run")
    return scene, logic, run, result, root


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# ---- the run and its events --------------------------------------------------------------------------------
def test_the_run_is_the_cli_in_the_background_and_reports_progress_per_case(tuned):
    _, logic, run, _, root = tuned
    assert run.command[1:4] == ["-m", "AutoSegSensitivity", "tune"]
    assert run.command[run.command.index("--folds") + 1] == "3"
    kinds = [e["event"] for e in run.events]
    assert kinds == ["start"] + ["case"] * N_CASES + ["done"]
    assert run.progress() == (N_CASES, N_CASES)
    assert [e["done"] for e in run.events if e["event"] == "case"] == list(range(1, N_CASES + 1))
    assert sorted(run.last_event("done")["structures"]) == ["High", "Low"]
    assert (root / "run" / "tune.log").is_file()


def test_bad_inputs_are_one_line_naming_the_field(tmp_path):
    logic = CohortTuningLogic(slicer.vtkMRMLScene())
    (tmp_path / "m").mkdir()
    (tmp_path / "c").mkdir()
    cases = [((tmp_path / "nope", tmp_path / "c", "dice", 5), "maps folder"),
             ((tmp_path / "m", None, "dice", 5), "contours folder"),
             ((tmp_path / "m", tmp_path / "c", "jaccard", 5), "metric"),
             ((tmp_path / "m", tmp_path / "c", "dice", 1), "folds"),
             ((tmp_path / "m", tmp_path / "c", "dice", 21), "folds")]
    for (maps, contours, metric, folds), field in cases:
        with pytest.raises(InputError) as info:
            logic.build_command(maps, contours, tmp_path / "o", metric, folds)
        assert field in str(info.value) and "\n" not in str(info.value)
    cmd = logic.build_command(tmp_path / "m", tmp_path / "c", tmp_path / "o", "nsd", 4, nsd_tolerance=1.5)
    assert cmd[cmd.index("--nsd-tolerance") + 1] == "1.5" and cmd[cmd.index("--metric") + 1] == "nsd"
    assert "--nsd-tolerance" not in logic.build_command(tmp_path / "m", tmp_path / "c", tmp_path / "o")


def test_a_failed_run_reports_its_error_event(tmp_path):
    (tmp_path / "m" / "a").mkdir(parents=True)
    (tmp_path / "c" / "b").mkdir(parents=True)
    run = CohortTuningLogic(slicer.vtkMRMLScene()).start(tmp_path / "m", tmp_path / "c", tmp_path / "o")
    assert _poll_until(run, lambda: not run.running, 60)
    assert run.returncode == 2
    assert "cases" in run.error_message() and str(tmp_path / "m") in run.error_message()


# ---- results as nodes --------------------------------------------------------------------------------------
def test_summary_table_is_tunes_summary_with_dice_checked_by_brute_force(tuned):
    _, _, _, result, root = tuned
    rows = {r["structure"]: r for r in nodes.rows_from_table(result.summary_table)}
    truth = {r["structure"]: r for r in _csv(root / "run" / "summary.csv")}
    assert list(rows) == list(truth) and result.summary_table.GetNumberOfRows() == 2
    arrays = [case_arrays(i, SHAPE) for i in range(N_CASES)]
    j05 = int(np.flatnonzero(np.isclose(TH, 0.5))[0])
    for s, row in rows.items():
        ref = truth[s]
        assert row["threshold"] == float(ref["t_opt"]) == result.thresholds[s]
        assert row["dice_at_threshold"] == pytest.approx(float(ref["dice_at_opt"]), abs=1e-12)
        assert row["dice_at_0.5"] == pytest.approx(float(ref["dice_at_0.5"]), abs=1e-12)
        for k in ("cv_gain", "cv_gain_ci_low", "cv_gain_ci_high"):
            assert row[k] == pytest.approx(float(ref[k]), abs=1e-12), k
        assert row["n_cases"] == N_CASES and row["fold_thresholds"] == ref["fold_thresholds"]
        counts = brute_counts([a[0][s] for a in arrays], [a[1][s] for a in arrays]).sum(axis=0)
        j = int(np.flatnonzero(np.isclose(TH, row["threshold"]))[0])
        assert row["dice_at_threshold"] == pytest.approx(brute_dice(counts[j]), abs=1e-12)
        assert row["dice_at_0.5"] == pytest.approx(brute_dice(counts[j05]), abs=1e-12)
    assert rows["Low"]["threshold"] < 0.35 < 0.65 < rows["High"]["threshold"]


def test_per_case_table_has_one_row_per_structure_and_case(tuned):
    _, _, _, result, root = tuned
    rows = nodes.rows_from_table(result.cases_table)
    assert len(rows) == 2 * N_CASES == result.cases_table.GetNumberOfRows() == len(result.cases)
    truth = _csv(root / "run" / "cases.csv")
    folds = read_thresholds_file(root / "run" / "thresholds.json")["structures"]
    for row, ref, (s, case) in zip(rows, truth, result.cases):
        assert (row["structure"], row["case"]) == (ref["structure"], ref["case"]) == (s, case)
        i = int(case[-2:])
        maps, masks = case_arrays(i, SHAPE)
        c = brute_counts([maps[s]], [masks[s]])[0]
        j = int(np.flatnonzero(np.isclose(TH, result.thresholds[s]))[0])
        assert row["dice_at_opt"] == pytest.approx(brute_dice(c[j]), abs=1e-12)
        k = folds[s]["cases"].index(case)
        assert row["fold"] == folds[s]["folds_of_cases"][k]
        assert row["fold_threshold"] == folds[s]["fold_thresholds"][int(row["fold"])]
        jf = int(np.flatnonzero(np.isclose(TH, row["fold_threshold"]))[0])
        assert row["dice_at_fold_threshold"] == pytest.approx(brute_dice(c[jf]), abs=1e-12)


def test_chart_has_one_dice_curve_per_structure_from_the_cohort_sweep(tuned):
    scene, _, _, result, root = tuned
    chart = result.chart
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 2
    table = nodes.rows_from_table(result.curves_table)
    for k, s in enumerate(["High", "Low"]):
        series = chart.GetNthPlotSeriesNode(k)
        assert series.GetName().endswith(s)
        assert series.GetTableNode() is result.curves_table
        assert (series.GetXColumnName(), series.GetYColumnName()) == ("threshold", s)
        sweep = _csv(root / "run" / "sweeps" / s / "sweep.csv")
        assert [r["threshold"] for r in table] == [float(r["threshold"]) for r in sweep]
        assert [r[s] for r in table] == [float(r["dice"]) for r in sweep]
    count = scene.GetNumberOfNodes()
    CohortTuningLogic(scene).load_results(root / "run")  # loading again reuses the nodes
    assert scene.GetNumberOfNodes() == count


# ---- a case into the scene ---------------------------------------------------------------------------------
def test_selecting_a_case_loads_its_image_maps_and_contours_thresholded_at_the_cohort_threshold(tuned):
    scene, logic, _, result, root = tuned
    row = result.cases.index(("Low", "case02"))
    loaded = logic.load_case(result, row)
    assert (loaded.case, loaded.structure, loaded.threshold) == ("case02", "Low", result.thresholds["Low"])
    image = nodes.volume_from_node(loaded.image)
    assert image.array.shape == SHAPE and scene.GetFirstNodeByName("case02") is loaded.image
    maps, masks = case_arrays(2, SHAPE)
    assert sorted(loaded.maps) == ["High", "Low"]
    for s, node in loaded.maps.items():
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), maps[s])
        assert node.GetName() == f"case02_{s}_prob"
        ref_id = nodes.segment_id_by_name(loaded.reference, s)
        np.testing.assert_array_equal(nodes.segment_mask(loaded.reference, ref_id, image) > 0, masks[s])
    seg_id = nodes.segment_id_by_name(loaded.segmentation, "Low")
    got = nodes.segment_mask(loaded.segmentation, seg_id, image) > 0
    np.testing.assert_array_equal(got, maps["Low"] >= np.float32(loaded.threshold))
    again = logic.load_case(result, row, threshold=0.3)  # the slider's value: same nodes, new segment
    assert again.segmentation is loaded.segmentation and again.image is loaded.image
    got = nodes.segment_mask(again.segmentation, seg_id, image) > 0
    np.testing.assert_array_equal(got, maps["Low"] >= np.float32(0.3))
    with pytest.raises(InputError):
        logic.load_case(result, len(result.cases))


# ---- thresholds.json ---------------------------------------------------------------------------------------
def test_save_writes_a_thresholds_json_that_tune_reads_back(tuned, tmp_path):
    _, logic, _, result, root = tuned
    path = logic.save(result, tmp_path / "thresholds.json")
    assert read_thresholds(path) == result.thresholds
    doc = read_thresholds_file(path)
    assert doc["structures"]["Low"]["fold_thresholds"] == read_thresholds_file(
        root / "run" / "thresholds.json")["structures"]["Low"]["fold_thresholds"]
    assert doc["metric"] == "dice" and doc["inputs"]["ref_dir"] == result.inputs["ref_dir"]
    # a structure the run did not tune is kept; a slider value overrides the cohort's
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "autosegsens-thresholds", "structures": {"Brain": {"threshold": 0.4}}}))
    logic.save(result, other, thresholds={"High": 0.7})
    assert read_thresholds(other) == {"Brain": 0.4, "High": 0.7, "Low": result.thresholds["Low"]}
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob("*.tmp*"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError):
        logic.save(result, bad)
    assert bad.read_text() == "{not json"


# ---- cancel and the helper at cleanup ----------------------------------------------------------------------
def test_cancel_returns_at_once_and_the_tune_process_is_gone_within_a_second(tmp_path):
    probs, refs = write_cohort(tmp_path, 6, SHAPE)
    run = CohortTuningLogic(slicer.vtkMRMLScene()).start(probs, refs, tmp_path / "run", bootstrap=20000)
    assert _poll_until(run, lambda: run.progress()[1] > 0, 60), run.log_tail()  # tune is running
    assert run.running
    t0 = time.monotonic()
    assert run.cancel() is None
    assert time.monotonic() - t0 < 1.0 and run.cancel_requested
    assert _poll_until(run, lambda: not run.running and _gone(run.pid), 1.0)
    assert time.monotonic() - t0 < 1.0
    assert run.killed and run.returncode == -signal.SIGKILL
    assert not (tmp_path / "run" / "thresholds.json").exists()


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


@pytest.mark.skipif(sys.platform.startswith("win"), reason="the process-group kill is the POSIX branch")
@pytest.mark.parametrize("cancel_file", [None, "CANCEL"])
def test_end_at_cleanup_kills_a_run_that_ignores_sigterm_and_its_children(tmp_path, cancel_file):
    (tmp_path / "stubborn.py").write_text(STUBBORN)
    pid_file = tmp_path / "child.pid"
    process = BackgroundProcess([sys.executable, str(tmp_path / "stubborn.py"), str(pid_file)], tmp_path / "out",
                                cancel_file=cancel_file, grace_s=60)
    assert _poll_until(process, lambda: pid_file.is_file() and pid_file.read_text(), 30)
    child = int(pid_file.read_text())
    os.kill(process.pid, signal.SIGTERM)  # ignored: only a kill ends it
    time.sleep(0.2)
    assert process.running and not _gone(child)
    t0 = time.monotonic()
    code = process.end()
    assert time.monotonic() - t0 < 2.0
    assert code == -signal.SIGKILL and process.killed and not process.running
    assert _poll_until(process, lambda: _gone(child), 2), "the run's child outlived the module"
    assert not (tmp_path / "out" / "CANCEL").exists()
    assert process.end() == code  # ending again is harmless


def test_cancel_without_a_stop_file_kills_at_once_and_a_finished_run_is_left_alone(tmp_path):
    process = BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path)
    t0 = time.monotonic()
    assert process.cancel() is None
    assert _poll_until(process, lambda: not process.running, 1.0) and time.monotonic() - t0 < 1.0
    assert process.killed and process.cancel_requested
    done = BackgroundProcess([sys.executable, "-c", "print('hi')"], tmp_path, log_name="done.log")
    assert done.wait(30) == 0
    assert done.cancel() == 0 and done.end() == 0 and not done.killed
    assert done.log_tail().strip() == "hi"


# ---- the other layouts and the self-test's cohort ------------------------------------------------------------
def test_an_nnunet_maps_folder_runs_and_its_case_loads_on_the_reference_grid(tmp_path):
    from test_io_nnunet import LABELS, write_nnunet_output

    probs, refs = write_cohort(tmp_path, 4)
    nn = tmp_path / "nnunet"
    write_nnunet_output(nn, 4)
    scene = slicer.vtkMRMLScene()
    logic = CohortTuningLogic(scene)
    run = logic.start(nn, refs, tmp_path / "run", folds=2, bootstrap=100, extra_env=ONE_THREAD)
    assert _poll_until(run, lambda: not run.running, 120) and run.returncode == 0, run.log_tail()
    result = logic.load_results(tmp_path / "run")
    assert result.inputs["format"] == "nnunet" and sorted(result.thresholds) == ["High", "Low"]
    loaded = logic.load_case(result, result.cases.index(("High", "case03")))
    channels = np.load(nn / "case03.npz")["probabilities"]
    image = nodes.volume_from_node(loaded.image)
    for s in ("Low", "High"):
        got = nodes.volume_from_node(loaded.maps[s])
        np.testing.assert_array_equal(got.array, channels[LABELS[s]])
        assert got.same_grid(image, atol=1e-6)  # nnU-Net's .npz has no geometry: the reference case's
    seg_id = nodes.segment_id_by_name(loaded.segmentation, "High")
    np.testing.assert_array_equal(nodes.segment_mask(loaded.segmentation, seg_id, image) > 0,
                                  channels[LABELS["High"]] >= channels.dtype.type(loaded.threshold))


def test_the_phantom_cohort_of_the_self_test_tunes_below_half(tmp_path):
    """What AutoSegThreshold's self-test runs from the widget: the phantom's cautious maps tune below 0.5
    with a held-out gain, every case and structure listed, a case loaded, the thresholds saved."""
    from AutoSegSensitivity.mrml.cohort_logic import write_phantom_cohort
    from AutoSegSensitivity.mrml.sampledata import PROBABILITY_STRUCTURES

    maps_dir, contours_dir = write_phantom_cohort(tmp_path / "cohort", cases=4)
    scene = slicer.vtkMRMLScene()
    logic = CohortTuningLogic(scene)
    run = logic.start(maps_dir, contours_dir, tmp_path / "run", folds=3, extra_env=ONE_THREAD)
    assert _poll_until(run, lambda: not run.running, 120) and run.returncode == 0, run.log_tail()
    assert run.progress() == (4, 4)
    result = logic.load_results(tmp_path / "run")
    rows = nodes.rows_from_table(result.summary_table)
    assert [r["structure"] for r in rows] == list(PROBABILITY_STRUCTURES)
    for r in rows:
        assert r["threshold"] < 0.5 and r["dice_at_threshold"] > r["dice_at_0.5"], r
        assert r["cv_gain"] > 0, r
    assert len(result.cases) == 4 * len(PROBABILITY_STRUCTURES) == result.cases_table.GetNumberOfRows()
    assert result.chart.GetNumberOfPlotSeriesNodes() == len(PROBABILITY_STRUCTURES)
    loaded = logic.load_case(result, result.cases.index(("Parotid_L", "case001")))
    prob = slicer.util.arrayFromVolume(loaded.maps["Parotid_L"])
    image = nodes.volume_from_node(loaded.image)
    seg_id = nodes.segment_id_by_name(loaded.segmentation, "Parotid_L")
    np.testing.assert_array_equal(nodes.segment_mask(loaded.segmentation, seg_id, image) > 0,
                                  prob >= np.float32(result.thresholds["Parotid_L"]))
    assert read_thresholds(logic.save(result, tmp_path / "t.json")) == result.thresholds


# ---- every layout tune reads: the run, the results and a case for the slider -------------------------------
def test_the_command_passes_the_layouts_to_tune(tmp_path):
    """Formats auto-detected by tune unless named; the dataset.json only when given (and then existing)."""
    logic = CohortTuningLogic(slicer.vtkMRMLScene())
    (tmp_path / "m").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "dataset.json").write_text("{}")
    cmd = logic.build_command(tmp_path / "m", tmp_path / "c", tmp_path / "o")
    assert cmd[cmd.index("--format") + 1] == cmd[cmd.index("--ref-format") + 1] == "auto"
    assert "--dataset-json" not in cmd
    cmd = logic.build_command(tmp_path / "m", tmp_path / "c", tmp_path / "o", dataset_json=tmp_path / "dataset.json",
                              fmt="channels", ref_format="nnunet")
    assert cmd[cmd.index("--dataset-json") + 1] == str(tmp_path / "dataset.json")
    assert (cmd[cmd.index("--format") + 1], cmd[cmd.index("--ref-format") + 1]) == ("channels", "nnunet")
    for kwargs, field in (({"dataset_json": tmp_path / "nope.json"}, "dataset.json"), ({"fmt": "npz"}, "format"),
                          ({"ref_format": "labels"}, "reference format")):
        with pytest.raises(InputError) as info:
            logic.build_command(tmp_path / "m", tmp_path / "c", tmp_path / "o", **kwargs)
        assert f": {field}: expected" in str(info.value) and "\n" not in str(info.value)


def _run_and_load(tmp_path, probs, refs, **kwargs):
    scene = slicer.vtkMRMLScene()
    logic = CohortTuningLogic(scene)
    run = logic.start(probs, refs, tmp_path / "run", folds=2, bootstrap=50, extra_env=ONE_THREAD, **kwargs)
    assert _poll_until(run, lambda: not run.running, 120) and run.returncode == 0, run.log_tail()
    result = logic.load_results(tmp_path / "run")
    assert sorted(result.thresholds) == ["High", "Low"] and len(result.cases) == 2 * 4
    assert result.summary_table.GetNumberOfRows() == 2 and result.chart.GetNumberOfPlotSeriesNodes() == 2
    return scene, logic, result


def _check_loaded(scene, loaded, probability, references, has_image):
    """The row's map is ``probability[s]`` for every structure, the reference segments are ``references[s]``
    and the thresholded segment is p >= t, all on the grid of the row's map; the background is the image, or
    the row's map when the case has none."""
    grid = nodes.volume_from_node(loaded.maps[loaded.structure])
    for s in ("Low", "High"):
        got = nodes.volume_from_node(loaded.maps[s])
        np.testing.assert_array_equal(got.array, probability[s])
        assert got.same_grid(grid, atol=1e-6)
        ref_id = nodes.segment_id_by_name(loaded.reference, s)
        np.testing.assert_array_equal(nodes.segment_mask(loaded.reference, ref_id, grid) > 0, references[s])
    for node in (loaded.reference, loaded.segmentation):
        assert node.GetNodeReference("referenceImageGeometryRef").GetID() == loaded.maps[loaded.structure].GetID()
    seg_id = nodes.segment_id_by_name(loaded.segmentation, loaded.structure)
    p = probability[loaded.structure]
    np.testing.assert_array_equal(nodes.segment_mask(loaded.segmentation, seg_id, grid) > 0,
                                  p >= p.dtype.type(loaded.threshold))
    assert loaded.has_image is has_image
    if has_image:
        assert loaded.image.GetName() == loaded.case and nodes.volume_from_node(loaded.image).same_grid(grid, atol=1e-3)
        assert "no image" not in loaded.status
    else:
        assert loaded.image is loaded.maps[loaded.structure] and scene.GetFirstNodeByName(loaded.case) is None
        assert f"no image: its {loaded.structure} probability map is the background" in loaded.status
    assert loaded.status.startswith(f"{loaded.case}: {loaded.structure} at the cohort's threshold")


def test_an_nnunet_label_folder_with_nnunet_npz_maps_loads_a_case_without_an_image(tmp_path):
    """nnU-Net end to end: ``<case>.npz`` probabilities (dataset.json and plans.json beside them, as
    nnUNetv2_predict leaves them) tuned against nnU-Net's own label folder (labelsTs/<case>.nii.gz, the
    dataset.json one level up): no image anywhere, so the map is the background and the .npz, which has no
    geometry, takes the label file's grid."""
    from AutoSegSensitivity.io import read_volume
    from test_io_nnunet import LABELS, write_nnunet_output
    from test_io_references import label_map, write_label_layouts

    labels_ts, _, _ = write_label_layouts(tmp_path, 4)
    nn = tmp_path / "nnunet"
    write_nnunet_output(nn, 4)
    scene, logic, result = _run_and_load(tmp_path, nn, labels_ts)
    assert (result.inputs["format"], result.inputs["ref_format"]) == ("nnunet", "nnunet")
    for row in (result.cases.index(("High", "case03")), result.cases.index(("Low", "case01"))):
        loaded = logic.load_case(result, row)
        i = int(loaded.case[-2:])
        channels = np.load(nn / f"{loaded.case}.npz")["probabilities"]
        lab = label_map(case_arrays(i)[1])
        _check_loaded(scene, loaded, {s: channels[LABELS[s]] for s in ("Low", "High")},
                      {s: lab == LABELS[s] for s in ("Low", "High")}, has_image=False)
        assert nodes.volume_from_node(loaded.image).same_grid(read_volume(labels_ts / f"{loaded.case}.nii.gz"),
                                                              atol=1e-4)
    again = logic.load_case(result, row, threshold=0.3)  # the slider: same nodes, new segment
    assert again.segmentation is loaded.segmentation and again.image is loaded.image
    seg_id = nodes.segment_id_by_name(again.segmentation, "Low")
    grid = nodes.volume_from_node(again.image)
    np.testing.assert_array_equal(nodes.segment_mask(again.segmentation, seg_id, grid) > 0,
                                  channels[LABELS["Low"]] >= np.float32(0.3))
    (labels_ts / "case02.nii.gz").unlink()  # a reference gone since the run: one line naming the file
    with pytest.raises(InputError) as info:
        logic.load_case(result, result.cases.index(("Low", "case02")))
    assert str(labels_ts / "case02.nii.gz") in str(info.value) and "\n" not in str(info.value)


def test_segmentation_references_without_images_cropped_by_slicer_load_on_the_maps_grid(tmp_path):
    """Contours only: ``<case>/segmentation.seg.nrrd`` cropped to its segments (as Slicer may save it), no
    image. The reference is placed back onto the map's grid by whole voxels, and the map is the background."""
    from test_io_references import write_cropped_references

    probs, refs = write_cohort(tmp_path, 4)
    bare = write_cropped_references(refs, tmp_path / "bare")
    scene, logic, result = _run_and_load(tmp_path, probs, bare)
    assert (result.inputs["format"], result.inputs["ref_format"]) == ("maps", "dataset")
    loaded = logic.load_case(result, result.cases.index(("High", "case02")))
    maps, masks = case_arrays(2)
    _check_loaded(scene, loaded, maps, masks, has_image=False)
    # the same cohort with its images: the image is the background, the same segments
    with_image = logic.load_case(_with_inputs(result, ref_dir=str(refs)), result.cases.index(("High", "case02")))
    _check_loaded(scene, with_image, maps, masks, has_image=True)


def _with_inputs(result, **inputs):
    """The same result as if the run had been given other inputs (e.g. another contours folder)."""
    from dataclasses import replace

    return replace(result, inputs={**result.inputs, **inputs})


def test_channels_maps_with_the_dataset_json_elsewhere_and_image_less_label_references(tmp_path):
    """One multi-channel image per case (MONAI's SaveImage: a 4D NIfTI, softmax with background), no
    dataset.json beside it: tune cannot name the channels until the optional dataset.json is given (the
    Cohort section's field). References: case folders with labels.nii.gz + labels.json, no image."""
    from test_io_channels import softmax, write_nifti_4d
    from test_io_references import label_map, write_label_layouts
    from tune_cohort import ORIGIN, SPACING_XYZ
    from AutoSegSensitivity.volume import Volume

    _, _, no_image = write_label_layouts(tmp_path, 4)
    chans = tmp_path / "monai"
    for i in range(4):
        maps = case_arrays(i)[0]
        write_nifti_4d(chans / f"case{i:02d}.nii.gz", softmax(maps), Volume(maps["Low"], SPACING_XYZ, ORIGIN))
    names = tmp_path / "elsewhere" / "dataset.json"
    names.parent.mkdir()
    names.write_text(json.dumps({"labels": {"background": 0, "Low": 1, "High": 2}}))
    logic = CohortTuningLogic(slicer.vtkMRMLScene())
    run = logic.start(chans, no_image, tmp_path / "no_names", folds=2, extra_env=ONE_THREAD)
    assert _poll_until(run, lambda: not run.running, 60) and run.returncode == 2
    assert "channel names" in run.error_message() and "--dataset-json" in run.error_message()
    scene, logic, result = _run_and_load(tmp_path, chans, no_image, dataset_json=names)
    assert (result.inputs["format"], result.inputs["dataset_json"]) == ("channels", str(names))
    loaded = logic.load_case(result, result.cases.index(("Low", "case01")))
    maps, masks = case_arrays(1)
    lab = label_map(masks)
    _check_loaded(scene, loaded, maps, {"Low": lab == 1, "High": lab == 2}, has_image=False)
