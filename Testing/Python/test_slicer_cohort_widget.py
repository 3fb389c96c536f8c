"""AutoSegThreshold's Cohort widget code run for real, outside Slicer: the module file is imported with
stand-ins for what only the Slicer application has (Qt widgets and timer, the scripted-module base classes,
the parameter-node wrapper, dialogs), on slicer-core's real MRML scene, with the real logic and real
``autosegsens tune`` processes. Every handler of the Cohort section runs as a click would run it (Run, the
poll timer, a case chosen, Save, Cancel, cleanup), so a wrong attribute or call in the widget fails here and
not only inside Slicer (the module's self-test, which needs Slicer, drives the same path on real Qt).

What is stood in and why it is faithful (Slicer/Slicer v5.10.0):
* parameter node: fields with their defaults, ``Path()`` for an unset path (``serializers.py`` PathSerializer);
  WithinRange/Choice kept as annotations only (the GUI connectors are checked by test_slicer_rules.py);
* ``slicer.util.tryWithErrorDisplay`` (util.py l. 3368) and ``errorDisplay``: any error fails the test;
* qMRMLTableView ``setMRMLTableNode`` / ``mrmlTableNode`` (qMRMLTableView.h), QComboBox (currentIndex,
  count, clear, addItem, setCurrentIndex, blockSignals, currentIndexChanged), qMRMLCheckableNodeComboBox
  (setCheckState, checkedNodes), QTimer (setInterval, timeout, start, stop, active).
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from test_slicer_cohort import FakeSignal as Signal  # the stand-ins the runner's tests use
from test_slicer_cohort import FakeTimer as Timer

ROOT = Path(__file__).resolve().parents[2]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Widget:
    """A Qt/CTK/qMRML widget as the module uses it."""

    def __init__(self, name):
        self.name = name
        self.enabled = True
        self.toolTip = ""
        self.text = ""
        self.value = 0
        self.maximum = 100
        self.tracking = True
        self.clicked, self.checkedNodesChanged = Signal(), Signal()
        self.valueIsChanging, self.valueChanged = Signal(), Signal()
        self._currentIndexChanged = Signal()
        self._items, self._index, self._blocked = [], -1, False
        self._checked, self._table = [], None

    # QPushButton
    def click(self):
        if self.enabled:
            self.clicked.emit()

    # QComboBox
    @property
    def currentIndexChanged(self):
        return self._currentIndexChanged

    @property
    def count(self):
        return len(self._items)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self.setCurrentIndex(index)

    def setCurrentIndex(self, index):
        changed = index != self._index
        self._index = index
        if changed and not self._blocked:
            self._currentIndexChanged.emit(index)

    def clear(self):
        self._items = []
        self.setCurrentIndex(-1)

    def addItem(self, text):
        self._items.append(text)
        if self._index < 0:
            self.setCurrentIndex(0)  # as QComboBox does for the first item

    def blockSignals(self, block):
        was, self._blocked = self._blocked, bool(block)
        return was

    # qMRMLCheckableNodeComboBox
    def setCheckState(self, node, state):
        if state == "Checked" and node not in self._checked:
            self._checked.append(node)
        elif state == "Unchecked" and node in self._checked:
            self._checked.remove(node)
        self.checkedNodesChanged.emit()

    def checkedNodes(self):
        return list(self._checked)

    # qMRMLTableView
    def setMRMLTableNode(self, node):
        self._table = node

    def mrmlTableNode(self):
        return self._table


class UI:
    def __init__(self):
        self._widgets = {}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._widgets.setdefault(name, Widget(name))


@pytest.fixture
def module(monkeypatch, tmp_path):
    """The AutoSegThreshold module file imported on stand-ins; returns (module, scene, errors)."""
    import slicer  # slicer-core: real MRML
    import slicer.util

    scene = slicer.vtkMRMLScene()
    errors = []
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path / "slicer-tmp"),
                                                             processEvents=lambda: None,
                                                             connect=lambda *a: None), raising=False)
    (tmp_path / "slicer-tmp").mkdir()
    charts = []
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(
        plots=types.SimpleNamespace(logic=lambda: types.SimpleNamespace(ShowChartInLayout=charts.append))),
        raising=False)

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        try:
            yield
        except Exception as exc:
            errors.append(f"{message} {exc!r}")
            raise

    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text))
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: None)
    monkeypatch.setattr(slicer.util, "showStatusMessage", lambda *a: None)

    class VTKObservationMixin:
        def __init__(self):
            self.observers = []

        def addObserver(self, obj, event, method, *a):
            self.observers.append((obj, event, method))

        def removeObserver(self, obj, event, method):
            self.observers.remove((obj, event, method))

        def removeObservers(self, *a):
            self.observers = []

    monkeypatch.setattr(slicer.util, "VTKObservationMixin", VTKObservationMixin)

    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def getParameterNode(self):
            return "parameter node"

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = types.SimpleNamespace(isEntered=True)
            self.moduleName = "AutoSegThreshold"

        def setup(self):
            pass

    class ScriptedLoadableModuleTest:
        pass

    for c in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
              ScriptedLoadableModuleTest):
        setattr(slm, c.__name__, c)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    pnw.Choice = lambda choices: ("Choice", tuple(choices))

    def parameterNodeWrapper(cls):
        import typing

        hints = typing.get_type_hints(cls)
        instances = {}

        class Node:
            def __new__(klass, key=None):
                if key not in instances:
                    node = object.__new__(klass)
                    for name, hint in hints.items():
                        base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
                        default = cls.__dict__.get(name)
                        if default is None and base is Path:
                            default = Path()
                        object.__setattr__(node, name, default)
                    instances[key] = node
                return instances[key]

            def connectGui(self, ui):
                return "tag"

            def disconnectGui(self, tag):
                pass

        return Node

    pnw.parameterNodeWrapper = parameterNodeWrapper
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(
        QTimer=Timer, Qt=types.SimpleNamespace(Checked="Checked", Unchecked="Unchecked")))
    monkeypatch.syspath_prepend(str(ROOT))
    for name in [m for m in sys.modules if m.startswith("AutoSegSlicerLib")]:
        monkeypatch.delitem(sys.modules, name)
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "AutoSegThreshold_under_test", ROOT / "ScriptedModules" / "AutoSegThreshold" / "AutoSegThreshold.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "loadModuleUI", lambda widget: UI())
    monkeypatch.setattr(mod, "ensureDependencies", lambda needTorch=False: True)
    monkeypatch.setattr(mod, "ready", lambda state: bool(state.enabled))
    original = mod.AutoSegThresholdLogic.cohortEngine

    def cohortEngine(self):  # one thread per run, as every test here
        engine = original(self)
        start = engine.start
        engine.start = lambda *a, **kw: start(*a, extra_env=ONE_THREAD, **kw)
        return engine

    monkeypatch.setattr(mod.AutoSegThresholdLogic, "cohortEngine", cohortEngine)
    return mod, scene, errors, charts


def _tick_until(runner, condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        if runner.timer.active:
            runner.timer.timeout.emit()
        time.sleep(0.02)
    return condition()


def test_the_cohort_section_runs_end_to_end_through_its_handlers(module, tmp_path):
    import slicer

    from AutoSegSensitivity.mrml import nodes
    from AutoSegSensitivity.mrml.cohort_logic import write_phantom_cohort
    from AutoSegSensitivity.tune import read_thresholds

    mod, scene, errors, charts = module
    maps_dir, contours_dir = write_phantom_cohort(tmp_path / "cohort", cases=3)
    widget = mod.AutoSegThresholdWidget()
    widget.setup()
    ui, p = widget.ui, widget.binding.node
    assert not ui.cohortRunButton.enabled and "probability-maps folder" in ui.cohortRunButton.toolTip
    assert not ui.cohortCancelButton.enabled and not ui.cohortSaveButton.enabled and not ui.cohortCaseComboBox.enabled
    p.cohortMapsDir, p.cohortContoursDir, p.cohortFolds = maps_dir, contours_dir, 3
    widget.updateButtons()  # what the node's ModifiedEvent does in Slicer
    assert ui.cohortRunButton.enabled, ui.cohortRunButton.toolTip

    ui.cohortRunButton.click()
    runner = widget._cohortRunner
    assert runner.running and ui.cohortCancelButton.enabled and not ui.cohortRunButton.enabled
    assert Path(runner.process.out_dir).parent == tmp_path / "slicer-tmp"
    assert _tick_until(runner, lambda: not runner.active, 120), runner.process.log_tail()
    assert not errors, errors
    result = widget._cohort
    assert result is not None and ui.cohortProgressBar.value == ui.cohortProgressBar.maximum == 3
    assert ui.cohortSummaryTableView.mrmlTableNode() is result.summary_table and charts == [result.chart]
    assert ui.cohortCaseComboBox.count == len(result.cases) == 12 and ui.cohortCaseComboBox.currentIndex == -1
    assert scene.GetFirstNodeByName("case001") is None  # nothing loaded before a case is chosen
    assert ui.cohortCaseComboBox.enabled and not ui.cohortCancelButton.enabled and ui.cohortRunButton.enabled

    row = result.cases.index(("Parotid_R", "case001"))
    ui.cohortCaseComboBox.currentIndex = row
    assert not errors, errors
    prob = scene.GetFirstNodeByName("case001_Parotid_R_prob")
    assert widget._maps() == [prob] and [n.GetName() for n in widget._references()] == ["case001 reference"]
    assert p.structure == "Parotid_R" and p.threshold == result.thresholds["Parotid_R"]
    live = p.liveSegmentation
    image = nodes.volume_from_node(scene.GetFirstNodeByName("case001"))
    seg_id = nodes.segment_id_by_name(live, "Parotid_R")
    np.testing.assert_array_equal(nodes.segment_mask(live, seg_id, image) > 0,
                                  slicer.util.arrayFromVolume(prob) >= np.float32(p.threshold))
    widget.onThresholdChanged(0.7, False)  # the slider on the chosen case
    np.testing.assert_array_equal(nodes.segment_mask(live, seg_id, image) > 0,
                                  slicer.util.arrayFromVolume(prob) >= np.float32(0.7))
    ui.cohortCaseComboBox.currentIndex = result.cases.index(("Brain", "case002"))  # another: the first is unchecked
    assert [n.GetName() for n in widget._maps()] == ["case002_Brain_prob"] and p.structure == "Brain"

    p.thresholdsFile = tmp_path / "thresholds.json"
    widget.updateButtons()
    assert ui.cohortSaveButton.enabled
    ui.cohortSaveButton.click()
    assert not errors, errors
    assert read_thresholds(tmp_path / "thresholds.json") == result.thresholds
    assert str(tmp_path / "thresholds.json") in ui.cohortStatusLabel.text

    ui.cohortRunButton.click()  # a second run, cancelled at once
    process = runner.process
    assert process.running and widget._cohort is None and ui.cohortCaseComboBox.count == 0
    t0 = time.monotonic()
    ui.cohortCancelButton.click()
    assert time.monotonic() - t0 < 1.0
    assert _tick_until(runner, lambda: not runner.active, 1.0) and time.monotonic() - t0 < 1.0
    assert not process.running and process.killed and "cancelled" in ui.cohortStatusLabel.text
    assert not errors, errors
    assert ui.cohortRunButton.enabled and not ui.cohortCancelButton.enabled and not ui.cohortSaveButton.enabled

    ui.cohortRunButton.click()  # a third run, still going when the module is cleaned up (Slicer quits)
    process = runner.process
    assert process.running
    widget.cleanup()
    assert not process.running and process.killed and not runner.active


def test_a_failed_run_is_reported_and_leaves_no_result(module, tmp_path):
    mod, scene, errors, _ = module
    (tmp_path / "maps" / "a").mkdir(parents=True)
    (tmp_path / "contours" / "b").mkdir(parents=True)
    widget = mod.AutoSegThresholdWidget()
    widget.setup()
    p = widget.binding.node
    p.cohortMapsDir, p.cohortContoursDir = tmp_path / "maps", tmp_path / "contours"
    widget.updateButtons()
    widget.ui.cohortRunButton.click()
    assert _tick_until(widget._cohortRunner, lambda: not widget._cohortRunner.active, 60)
    assert errors and "exit code 2" in errors[0] and "exit code 2" in widget.ui.cohortStatusLabel.text
    assert widget._cohort is None and not widget.ui.cohortSaveButton.enabled
    widget.onCohortSceneStartClose()  # closing the scene clears the section
    assert widget.ui.cohortSummaryTableView.mrmlTableNode() is None and widget.ui.cohortCaseComboBox.count == 0


def test_channels_maps_with_the_dataset_json_field_and_contours_without_images(module, tmp_path, monkeypatch):
    """Other layouts through the widget: one multi-channel image per case with no dataset.json beside it
    (the optional dataset.json field names the channels) against contours without images. A chosen case
    shows its map as the background and says so; the live segment is p >= t on the map's grid."""
    import json

    import slicer

    from AutoSegSensitivity.mrml import nodes
    from test_io_channels import softmax, write_vector
    from tune_cohort import ORIGIN, SPACING_XYZ, case_arrays, write_cohort
    from AutoSegSensitivity.volume import Volume

    mod, scene, errors, _ = module
    layers = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: layers.append(kw))
    _, refs = write_cohort(tmp_path, 3)
    for f in refs.glob("*/image.nrrd"):
        f.unlink()
    chans = tmp_path / "monai"
    for i in range(3):
        maps = case_arrays(i)[0]
        write_vector(chans / f"case{i:02d}" / f"case{i:02d}_trans.nrrd", softmax(maps),
                     Volume(maps["Low"], SPACING_XYZ, ORIGIN))
    names = tmp_path / "labels" / "dataset.json"
    names.parent.mkdir()
    names.write_text(json.dumps({"labels": {"background": 0, "Low": 1, "High": 2}}))
    widget = mod.AutoSegThresholdWidget()
    widget.setup()
    ui, p = widget.ui, widget.binding.node
    assert p.cohortDatasetJson is None
    p.cohortMapsDir, p.cohortContoursDir, p.cohortFolds, p.cohortDatasetJson = chans, refs, 2, names
    widget.updateButtons()
    ui.cohortRunButton.click()
    runner = widget._cohortRunner
    cmd = runner.process.command
    assert cmd[cmd.index("--dataset-json") + 1] == str(names)
    assert _tick_until(runner, lambda: not runner.active, 120), runner.process.log_tail()
    assert not errors, errors
    result = widget._cohort
    assert result.inputs["format"] == "channels" and sorted(result.thresholds) == ["High", "Low"]
    ui.cohortCaseComboBox.currentIndex = result.cases.index(("High", "case01"))
    assert not errors, errors
    prob = scene.GetFirstNodeByName("case01_High_prob")
    assert scene.GetFirstNodeByName("case01") is None and layers[-1]["background"] is prob
    assert "no image" in ui.cohortStatusLabel.text and "case01: High" in ui.cohortStatusLabel.text
    grid = nodes.volume_from_node(prob)
    np.testing.assert_array_equal(grid.array, case_arrays(1)[0]["High"])
    live = p.liveSegmentation
    seg_id = nodes.segment_id_by_name(live, "High")
    np.testing.assert_array_equal(nodes.segment_mask(live, seg_id, grid) > 0, grid.array >= np.float32(p.threshold))
    ref = widget._references()[0]
    np.testing.assert_array_equal(nodes.segment_mask(ref, nodes.segment_id_by_name(ref, "High"), grid) > 0,
                                  case_arrays(1)[1]["High"])


def test_a_scene_close_leaves_no_case_to_pick_whatever_the_observer_order(module):
    """Scene close drops the result (its nodes go with the scene). The binding's StartClose observer and the
    Cohort section's are called in an order VTK does not promise for equal priorities (VTK
    ``Common/Core/vtkObject.cxx`` vtkSubjectHelper::AddObserver inserts a new observer before the last one of
    its priority: with an earlier observer on the scene, as in Slicer, the binding's runs first and re-evaluates
    the buttons while the result still exists; checked on the venv's vtk below). The Cohort handler must
    re-evaluate them itself and not leave 'pick a case' shown."""
    import vtk

    mod, scene, errors, _ = module
    order = []
    subject = vtk.vtkObject()
    subject.AddObserver("ModifiedEvent", lambda *a: order.append("earlier"))
    subject.AddObserver("ModifiedEvent", lambda *a: order.append("binding"))
    subject.AddObserver("ModifiedEvent", lambda *a: order.append("cohort"))
    subject.Modified()
    assert order == ["binding", "cohort", "earlier"]

    widget = mod.AutoSegThresholdWidget()
    widget.setup()
    ui = widget.ui
    widget._cohort = types.SimpleNamespace(cases=[("Brain", "case001")], thresholds={"Brain": 0.4})
    widget._fillCohortCases(["Brain / case001"])
    ui.cohortStatusLabel.text = "Done: 1 structures; pick a case to check its threshold with the slider."
    ui.cohortProgressBar.value = ui.cohortProgressBar.maximum
    widget.updateButtons()
    assert ui.cohortCaseComboBox.enabled
    widget.parent.isEntered = False  # module not open: EndClose binds nothing again
    widget.binding.onSceneStartClose()  # in Slicer's order
    widget.onSceneStartClose(None, None)
    widget.onCohortSceneStartClose()
    widget.binding.onSceneEndClose()
    assert widget._cohort is None and ui.cohortCaseComboBox.count == 0
    assert not ui.cohortCaseComboBox.enabled and not ui.cohortSaveButton.enabled, ui.cohortCaseComboBox.toolTip
    assert "pick a case" not in ui.cohortStatusLabel.text and ui.cohortProgressBar.value == 0
    assert not errors, errors
