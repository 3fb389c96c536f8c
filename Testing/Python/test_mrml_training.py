"""TrainingLogic on real MRML nodes: scene cases exported as a dataset, the CLI run for real in a background
process, its event stream read into curves, cancel, and prediction into volume and segmentation nodes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer  # the slicer-core wheel: real MRML, no application
import torch
import yaml

from AutoSegSensitivity.inference import load_checkpoint, predict_volume
from AutoSegSensitivity.io import load_case, scan_dataset
from AutoSegSensitivity.mrml import nodes
from AutoSegSensitivity.mrml.training_logic import TrainingLogic
from AutoSegSensitivity.phantom import make_phantom

CONFIG = {"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain", "SpinalCord"],
          "epochs": 2, "batch_size": 4, "samples_per_epoch": 8, "lr": 0.003, "crop": [48, 48], "resize": [32, 32]}
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    scene = slicer.vtkMRMLScene()
    logic = TrainingLogic(scene)
    pairs = []
    for i in range(3):
        volume, seg = make_phantom(seed=(5, i), shape=(8, 64, 64))
        volume_node = nodes.volume_to_node(volume, scene, f"case{i}")
        nodes.segmentation_to_node(seg, scene, f"structures {i}", reference_node=volume_node)
    volume_nodes = [scene.GetFirstNodeByName(f"case{i}") for i in range(3)]
    pairs = logic.pair_scene_cases(volume_nodes)
    assert [s.GetName() for _, s in pairs] == ["structures 0", "structures 1", "structures 2"]
    logic.export_cases(pairs, root / "data")
    (root / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    process = logic.start(root / "cfg.yaml", root / "data", root / "run", device="cpu", extra_env=ONE_THREAD)
    code = process.wait(timeout=240)
    process.poll()
    return scene, logic, process, code, root, pairs


def test_command_is_the_cli_with_the_chosen_options(tmp_path):
    (tmp_path / "cfg.yaml").write_text("{}")
    (tmp_path / "data").mkdir()
    cmd = TrainingLogic(None, python="/opt/Slicer/bin/PythonSlicer").build_command(
        tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "run", resume=True, device="cuda", overrides=["epochs=5"])
    assert cmd == ["/opt/Slicer/bin/PythonSlicer", "-m", "AutoSegSensitivity", "train", "--config", str(tmp_path / "cfg.yaml"),
                   "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet", "--resume",
                   "--device", "cuda", "--set", "epochs=5"]
    assert TrainingLogic(None).python == sys.executable
    with pytest.raises(ValueError, match="dataset folder"):
        TrainingLogic(None).build_command(tmp_path / "cfg.yaml", tmp_path / "nope", tmp_path / "run")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        TrainingLogic(None).build_command(tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "run", device="tpu")


def test_scene_cases_exported_as_a_dataset_with_geometry(trained):
    _, _, _, _, root, pairs = trained
    scan = scan_dataset(root / "data")
    assert [c.name for c in scan.cases] == ["case0", "case1", "case2"] and not scan.problems
    image, seg = load_case(scan.cases[1])
    assert image.same_grid(nodes.volume_from_node(pairs[1][0]))
    assert np.array_equal(seg.mask("SpinalCord"), nodes.segmentation_from_node(pairs[1][1], image).mask("SpinalCord"))


def test_background_training_runs_and_its_events_become_curves(trained):
    scene, logic, process, code, root, _ = trained
    assert code == 0, process.log_tail()
    kinds = [e["event"] for e in process.events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    assert process.progress() == (2, 2)
    table, chart = logic.update_curves(process)
    rows = nodes.rows_from_table(table)
    epochs = [e for e in process.events if e["event"] == "epoch"]
    assert [r["epoch"] for r in rows] == [1.0, 2.0]
    assert [r["train_loss"] for r in rows] == pytest.approx([e["train_loss"] for e in epochs])
    assert len(nodes.chart_series_names(chart)) == 3
    assert (root / "run" / "best.pt").is_file()


def test_predict_into_nodes_equals_engine(trained):
    scene, logic, _, _, root, pairs = trained
    torch.set_num_threads(1)
    volume_node = pairs[0][0]
    prob_nodes, seg_node = logic.predict(root / "run" / "best.pt", volume_node)
    assert sorted(prob_nodes) == ["Brain", "SpinalCord"]
    assert prob_nodes["Brain"].GetName() == "case0_Brain_prob" and seg_node.GetName() == "case0_AutoSeg"
    image = nodes.volume_from_node(volume_node)
    model = load_checkpoint(root / "run" / "best.pt")
    engine = predict_volume(model, image)
    prob = nodes.volume_from_node(prob_nodes["Brain"])
    assert prob.same_grid(image) and np.allclose(prob.array, engine["Brain"].array, atol=1e-6)
    seg = nodes.segmentation_from_node(seg_node, image)
    assert np.array_equal(seg.mask("SpinalCord"), nodes.volume_from_node(prob_nodes["SpinalCord"]).array >= 0.5)
    again, _ = logic.predict(model, volume_node)
    assert again["Brain"] is prob_nodes["Brain"]


def _poll_until(process, condition, timeout_s):
    """Call ``process.poll()`` like the GUI timer does until ``condition()`` holds; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_cancel_returns_at_once_and_the_run_stops_keeping_its_checkpoint(trained, tmp_path):
    from AutoSegSensitivity.training import read_checkpoint

    _, logic, _, _, root, _ = trained
    process = logic.start(root / "cfg.yaml", root / "data", tmp_path / "run", device="cpu", extra_env=ONE_THREAD,
                          overrides=["epochs=50"])
    assert _poll_until(process, lambda: any(e["event"] == "epoch" for e in process.events), 180), process.log_tail()
    t0 = time.monotonic()
    assert process.cancel(grace_s=120) is None
    assert time.monotonic() - t0 < 0.2 and process.cancel_requested
    assert _poll_until(process, lambda: not process.running, 120), process.log_tail()
    assert process.returncode == 130 and not process.killed, process.log_tail()
    stop = [e for e in process.events if e["event"] == "stop"]
    assert stop and stop[-1]["reason"] == "cancelled"
    epochs = [e["epoch"] for e in process.events if e["event"] == "epoch"]
    assert int(read_checkpoint(tmp_path / "run" / "last.pt")["epoch"]) == epochs[-1] == stop[-1]["epoch"] < 50
    assert not (tmp_path / "run" / "CANCEL").exists()


def test_cancel_before_the_run_has_started_still_reaches_it(trained, tmp_path):
    """Training clears ``CANCEL`` when it starts; polling renews the request, so an early cancel is not lost."""
    _, logic, _, _, root, _ = trained
    process = logic.start(root / "cfg.yaml", root / "data", tmp_path / "run", device="cpu", extra_env=ONE_THREAD,
                          overrides=["epochs=50"])
    t0 = time.monotonic()
    process.cancel(grace_s=120)
    assert time.monotonic() - t0 < 0.2
    assert _poll_until(process, lambda: not process.running, 150), process.log_tail()
    assert process.returncode == 130 and not process.killed, process.log_tail()
    assert any(e["event"] == "stop" and e["reason"] == "cancelled" for e in process.events)


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(120)
"""


def _gone(pid):
    """True when ``pid`` no longer runs: absent, or (Linux) a zombie waiting for its reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.skipif(sys.platform.startswith("win"), reason="the process-group kill is the POSIX branch")
def test_a_run_that_ignores_the_cancel_is_killed_with_its_children_after_the_grace_period(tmp_path):
    from AutoSegSensitivity.mrml.training_logic import TrainingProcess

    (tmp_path / "stubborn.py").write_text(STUBBORN)
    pid_file = tmp_path / "child.pid"
    process = TrainingProcess([sys.executable, str(tmp_path / "stubborn.py"), str(pid_file)], tmp_path / "out")
    assert _poll_until(process, lambda: pid_file.is_file() and pid_file.read_text(), 30)
    child = int(pid_file.read_text())
    t0 = time.monotonic()
    assert process.cancel(grace_s=2.0) is None
    assert time.monotonic() - t0 < 0.2
    assert (tmp_path / "out" / "CANCEL").is_file()
    time.sleep(0.3)
    process.poll()
    assert process.running and not process.killed  # within the grace period nothing is killed
    assert _poll_until(process, lambda: not process.running, 10)
    assert time.monotonic() - t0 >= 2.0 and process.killed
    assert process.returncode == -signal.SIGKILL
    assert _poll_until(process, lambda: _gone(child), 5), "the run's child outlived the kill"
    process.poll()
    assert not (tmp_path / "out" / "CANCEL").exists()


class FakeStartupInfo:
    """The two fields of Windows' STARTUPINFO that a hidden window needs, with their defaults."""

    def __init__(self):
        self.dwFlags = 0
        self.wShowWindow = 1


def test_popen_options_hide_the_console_on_windows_and_group_the_run_elsewhere(monkeypatch):
    from AutoSegSensitivity.mrml import training_logic as tl

    monkeypatch.delattr(subprocess, "STARTUPINFO", raising=False)  # as on Linux: the Windows branch must not need it
    options = tl.popen_options("win32", startupinfo_factory=FakeStartupInfo)
    assert set(options) == {"startupinfo"}
    info = options["startupinfo"]
    assert info.dwFlags & tl.STARTF_USESHOWWINDOW and info.wShowWindow == tl.SW_HIDE
    assert (tl.STARTF_USESHOWWINDOW, tl.SW_HIDE) == (1, 0)  # winbase.h / winuser.h, as launchConsoleProcess sets
    assert tl.popen_options("linux") == {"start_new_session": True} == tl.popen_options("darwin")
    assert tl.kill_command("win32", 1234) == ["taskkill", "/F", "/T", "/PID", "1234"]
    assert tl.kill_command("linux", 1234) is None


def test_background_runs_are_launched_with_the_platform_options(tmp_path):
    from AutoSegSensitivity.mrml.training_logic import TrainingProcess

    process = TrainingProcess([sys.executable, "-c", "import os; print(os.getpgid(0) == os.getpid())"], tmp_path)
    assert process.wait(timeout=30) == 0
    assert process.log_tail().strip() == ("True" if not sys.platform.startswith("win") else "False")


def test_background_prediction_loads_the_same_maps_into_nodes(trained, tmp_path):
    scene, logic, _, _, root, pairs = trained
    volume_node = pairs[1][0]
    process = logic.start_predict(root / "run" / "best.pt", volume_node, tmp_path / "pred", device="cpu",
                                  extra_env=ONE_THREAD)
    assert process.wait(timeout=240) == 0, process.log_tail()
    prob_nodes, seg_node = logic.load_prediction(tmp_path / "pred", volume_node)
    assert sorted(prob_nodes) == ["Brain", "SpinalCord"] and seg_node.GetName() == "case1_AutoSeg"
    torch.set_num_threads(1)
    image = nodes.volume_from_node(volume_node)
    engine = predict_volume(load_checkpoint(root / "run" / "best.pt"), image)
    for name, node in prob_nodes.items():
        prob = nodes.volume_from_node(node)
        assert prob.same_grid(image) and np.allclose(prob.array, engine[name].array, atol=1e-5)
    seg = nodes.segmentation_from_node(seg_node, image)
    assert np.array_equal(seg.mask("Brain"), engine["Brain"].array >= 0.5)
    with pytest.raises(ValueError, match="checkpoint"):
        logic.start_predict(tmp_path / "missing.pt", volume_node, tmp_path / "x")


def test_a_background_prediction_is_cancelled_at_once_and_ended_with_its_children(trained, tmp_path):
    """Issue 19: prediction runs through the same helper as training and tuning, so it can be cancelled
    (killed at once: predict keeps nothing half-written) and is ended at module cleanup."""
    from AutoSegSensitivity.mrml.background import BackgroundProcess

    scene, logic, _, _, root, pairs = trained
    process = logic.start_predict(root / "run" / "best.pt", pairs[0][0], tmp_path / "pred", device="cpu",
                                  extra_env=ONE_THREAD)
    assert isinstance(process, BackgroundProcess) and process.running
    t0 = time.monotonic()
    assert process.cancel() is None
    assert _poll_until(process, lambda: not process.running, 1.0) and time.monotonic() - t0 < 1.0
    assert process.killed and process.cancel_requested and process.returncode == -signal.SIGKILL
    assert not (tmp_path / "pred" / "prediction" / "segmentation.seg.nrrd").exists()
    second = logic.start_predict(root / "run" / "best.pt", pairs[0][0], tmp_path / "pred2", device="cpu")
    assert second.end() == -signal.SIGKILL and not second.running  # what module cleanup does


def test_threshold_stored_with_the_model_is_used_for_the_segmentation(trained, tmp_path):
    import shutil

    from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

    scene, logic, _, _, root, pairs = trained
    torch.set_num_threads(1)
    checkpoint = Path(shutil.copy(root / "run" / "best.pt", tmp_path / "tuned.pt"))
    ThresholdTuningLogic.store_threshold(checkpoint, "Brain", 0.3, source="sweep dice (test)")
    model = load_checkpoint(checkpoint)
    assert model.thresholds["Brain"] == 0.3 and model.thresholds["SpinalCord"] == 0.5
    prob_nodes, seg_node = logic.predict(model, pairs[2][0])
    image = nodes.volume_from_node(pairs[2][0])
    seg = nodes.segmentation_from_node(seg_node, image)
    assert np.array_equal(seg.mask("Brain"), nodes.volume_from_node(prob_nodes["Brain"]).array >= np.float32(0.3))
