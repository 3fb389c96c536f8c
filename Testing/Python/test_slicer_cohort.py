"""The Slicer side of cohort tuning and of the modules' background processes, without the Slicer application:
the Cohort section's button states (mrml/actions.py) on real folders, the Lib's BackgroundRunner driving real
processes under a stand-in for ``qt.QTimer``, ParameterNodeBinding on slicer-core MRML after a scene close
while the module is not open (issue 19 finding 8), and how the module files use the one helper (read with
ast: they import Slicer and cannot be imported here).

Slicer sources the rules come from (Slicer/Slicer v5.10.0 and v5.8.1):
* ``Base/Python/slicer/ScriptedLoadableModule.py`` l. 109-140: ``ScriptedLoadableModuleWidget.cleanup`` runs on
  ``qSlicerModuleManager::moduleAboutToBeUnloaded``; ``Base/QTCore/qSlicerCoreApplication.cxx``
  ``onAboutToQuit`` unloads every module: cleanup is where a run must be ended, or it outlives Slicer.
* ``Base/Python/slicer/util.py`` ``tryWithErrorDisplay`` (l. 3368): a click handler's exception is shown,
  and PythonQt swallows exceptions in slots, so the self-tests check every click's effect.
"""

from __future__ import annotations

import ast
import sys
import time
import types
from pathlib import Path

import pytest

from AutoSegSensitivity.mrml import actions

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "AutoSegSlicerLib"
MODULES = ["AutoSegTraining", "AutoSegIntensity", "AutoSegLocalisation", "AutoSegThreshold", "AutoSegSegmentMetrics"]


def _module_source(module: str) -> str:
    return (ROOT / "ScriptedModules" / module / f"{module}.py").read_text()


def _method(module: str, cls: str, name: str) -> ast.FunctionDef:
    tree = ast.parse(_module_source(module))
    klass = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls)
    return next(f for f in klass.body if isinstance(f, ast.FunctionDef) and f.name == name)


# ---- button states of the Cohort section -------------------------------------------------------------------
@pytest.mark.parametrize("empty", [None, "", ".", Path()])
def test_run_needs_both_folders(tmp_path, empty):
    state = actions.cohort_run(empty, tmp_path, False)
    assert not state.enabled and "probability-maps folder" in state.tooltip
    state = actions.cohort_run(tmp_path, empty, False)
    assert not state.enabled and "contours folder" in state.tooltip and "maps" not in state.tooltip


def test_run_needs_existing_folders_and_no_run(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    state = actions.cohort_run(tmp_path / "file.txt", tmp_path / "nope", False)
    assert not state.enabled and "is not a folder" in state.tooltip and str(tmp_path / "nope") in state.tooltip
    assert actions.cohort_run(tmp_path, tmp_path, False).enabled
    state = actions.cohort_run(tmp_path, tmp_path, True)
    assert not state.enabled and "running" in state.tooltip


def test_cancel_case_and_save_follow_the_run(tmp_path):
    assert actions.cohort_cancel(True).enabled and not actions.cohort_cancel(False).enabled
    assert not actions.cohort_case(False, 0, False).enabled
    assert "Run first" in actions.cohort_case(False, 0, False).tooltip
    assert actions.cohort_case(True, 10, False).enabled
    assert not actions.cohort_case(True, 0, False).enabled and not actions.cohort_case(True, 10, True).enabled
    path = tmp_path / "thresholds.json"
    assert actions.cohort_save(True, path, False).enabled  # a new file may be written
    assert "thresholds.json" in actions.cohort_save(True, Path(), False).tooltip
    assert not actions.cohort_save(False, path, False).enabled and not actions.cohort_save(True, path, True).enabled


def test_one_cancel_button_stops_training_and_prediction():
    assert "training" in actions.cancel(True).tooltip and actions.cancel(True).enabled
    state = actions.cancel(False, True)
    assert state.enabled and "prediction" in state.tooltip and "training" not in state.tooltip
    assert not actions.cancel(False, False).enabled


# ---- the Lib's runner on real processes --------------------------------------------------------------------
class FakeSignal:
    """A Qt signal: ``connect`` a slot, ``emit`` calls every slot."""

    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in list(self.slots):
            slot(*args)


class FakeTimer:
    """The part of qt.QTimer the runner uses (setInterval, timeout.connect, start, stop, active); ``fire``
    is one timeout."""

    def __init__(self):
        self.timeout = FakeSignal()
        self.active = False
        self.interval = None

    def setInterval(self, ms):
        self.interval = ms

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        for slot in self.timeout.slots:
            slot()


@pytest.fixture
def runner_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "qt", types.SimpleNamespace(QTimer=FakeTimer))
    monkeypatch.syspath_prepend(str(ROOT))
    import AutoSegSlicerLib.background as background

    return background


def _tick_until(runner, condition, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        if runner.timer.active:
            runner.timer.fire()
        time.sleep(0.02)
    return condition()


def test_the_runner_hands_events_and_the_exit_once_to_the_widget(runner_module, tmp_path):
    from AutoSegSensitivity.mrml.background import BackgroundProcess

    seen, finished = [], []
    runner = runner_module.BackgroundRunner("test", lambda p, ev: seen.extend(ev), finished.append)
    assert runner.timer.interval == runner_module.POLL_MS and not runner.running
    script = ("import json, sys, time\n"
              "f = open(sys.argv[1], 'a')\n"
              "for i in range(3):\n"
              "    f.write(json.dumps({'event': 'case', 'done': i + 1}) + '\\n'); f.flush(); time.sleep(0.05)\n")
    process = BackgroundProcess([sys.executable, "-c", script, str(tmp_path / "events.jsonl")], tmp_path)
    runner.start(process)
    assert runner.active
    assert _tick_until(runner, lambda: finished, 30)
    assert finished == [process] and process.returncode == 0 and not runner.active
    assert [e["done"] for e in seen] == [1, 2, 3]
    runner.timer.fire()  # a late tick reports nothing twice
    assert finished == [process]


def test_the_runner_cancels_at_once_and_cleanup_ends_the_run(runner_module, tmp_path):
    from AutoSegSensitivity.mrml.background import BackgroundProcess

    finished = []
    runner = runner_module.BackgroundRunner("test", onFinished=finished.append)
    process = runner.start(BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path))
    t0 = time.monotonic()
    runner.cancel()
    assert time.monotonic() - t0 < 1.0
    assert _tick_until(runner, lambda: finished, 1.0) and process.cancel_requested and process.killed
    # cleanup: the timer stops and a run still going is ended, whatever state the widget is in
    second = runner.start(BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b"))
    assert runner.running
    runner.cleanup()
    assert not runner.active and not second.running and second.killed
    # starting a new run ends the one before (never two writers from one runner)
    third = runner.start(BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "c"))
    fourth = runner.start(BackgroundProcess([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "d"))
    assert not third.running and fourth.running
    runner.cleanup()
    assert not fourth.running


def test_a_failing_event_handler_neither_stops_the_timer_nor_hides_the_exit(runner_module, tmp_path):
    from AutoSegSensitivity.mrml.background import BackgroundProcess

    messages, finished = [], []

    def broken(process, events):
        raise KeyError("epoch")

    runner = runner_module.BackgroundRunner("test", broken, finished.append, messages.append)
    script = "import sys; open(sys.argv[1], 'w').write('{\"event\": \"start\"}\\n')"
    runner.start(BackgroundProcess([sys.executable, "-c", script, str(tmp_path / "events.jsonl")], tmp_path))
    assert _tick_until(runner, lambda: finished, 30)
    assert messages and "epoch" in messages[0]


# ---- finding 8: the binding after a scene close while the module is not open ------------------------------
class FakeNode:
    def __init__(self):
        self.checkpoint = None

    def connectGui(self, ui):
        return "tag"

    def disconnectGui(self, tag):
        pass


class FakeWidget:
    """What ParameterNodeBinding uses of a ScriptedLoadableModuleWidget with VTKObservationMixin."""

    def __init__(self):
        self.parent = types.SimpleNamespace(isEntered=True)
        self.ui = object()
        self.observers = []

    def addObserver(self, obj, event, method):
        self.observers.append((obj, event, method))

    def removeObserver(self, obj, event, method):
        self.observers.remove((obj, event, method))

    def removeObservers(self):
        self.observers.clear()


def test_a_run_finishing_after_the_scene_was_closed_while_the_module_was_not_open_has_a_node(monkeypatch):
    """Issue 19 finding 8: the scene is closed while the module is not open (binding unset, node None until
    the module is entered again); a background run that finishes then must still store its result in this
    scene's parameter node, not raise AttributeError on None."""
    import slicer  # slicer-core: real MRML, no application

    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    monkeypatch.syspath_prepend(str(ROOT))
    from AutoSegSlicerLib.widgets import ParameterNodeBinding

    fresh = []

    class Logic:
        def getParameterNode(self):
            fresh.append(FakeNode())
            return fresh[-1]

    widget, updates = FakeWidget(), []
    binding = ParameterNodeBinding(widget, Logic(), lambda: updates.append(1))
    binding.initialize()
    widget.parent.isEntered = False
    binding.exit()  # the user switched to another module
    binding.onSceneStartClose()
    binding.onSceneEndClose()  # not entered: nothing is bound again
    assert binding.node is None
    node = binding.currentNode()
    node.checkpoint = Path("run/best.pt")  # what onTrainingFinished does
    assert node is fresh[-1] and len(fresh) == 2
    widget.parent.isEntered = True
    binding.initialize()
    assert binding.currentNode() is binding.node


@pytest.mark.parametrize("module,cls,methods", [
    ("AutoSegTraining", "AutoSegTrainingWidget", ["onTrainingEvents", "onTrainingFinished", "onPredictFinished"]),
    ("AutoSegThreshold", "AutoSegThresholdWidget", ["onCohortEvents", "onCohortFinished"]),
])
def test_handlers_run_by_the_poll_timer_never_write_through_the_unset_binding(module, cls, methods):
    """A timer handler can run while no node is bound: it writes through ``binding.currentNode()``."""
    for name in methods:
        source = ast.unparse(_method(module, cls, name))
        assert "self.binding.node." not in source and "p = self.binding.node" not in source, name


# ---- one helper for every background process ---------------------------------------------------------------
@pytest.mark.parametrize("module,runners", [("AutoSegTraining", ["_training", "_predicting"]),
                                            ("AutoSegThreshold", ["_cohortRunner"])])
def test_every_module_run_goes_through_the_lib_runner_and_is_ended_at_cleanup(module, runners):
    source = _module_source(module)
    for name in runners:
        assert f"self.{name} = BackgroundRunner(" in source, name
    cleanup = ast.unparse(_method(module, f"{module}Widget", "cleanup"))
    if module == "AutoSegThreshold":  # its cohort block keeps its own cleanup, called from cleanup()
        assert "self.cleanupCohort()" in cleanup
        cleanup = ast.unparse(_method(module, f"{module}Widget", "cleanupCohort"))
        assert "runner.cleanup()" in cleanup
    else:
        for name in runners:
            assert f"self.{name}.cleanup()" in cleanup, name


@pytest.mark.parametrize("module", MODULES)
def test_no_module_starts_or_polls_a_process_itself(module):
    source = _module_source(module)
    for own in ("QTimer", "subprocess", "Popen", "os.kill", "killpg"):
        assert own not in source, own


def test_only_the_helper_starts_processes_in_the_mrml_layer():
    starters = []
    for path in (ROOT / "AutoSegSensitivity" / "mrml").glob("*.py"):
        if "subprocess.Popen(" in path.read_text():
            starters.append(path.name)
    assert starters == ["background.py"]
    # a repeating poll timer lives only in the runner (widgets.py's QTimer.singleShot coalesces slider drags)
    lib = {p.name for p in LIB.glob("*.py") if "QTimer()" in p.read_text() or "QTimer(" in p.read_text()}
    assert lib == {"background.py"}
    for p in LIB.glob("*.py"):
        if p.name != "background.py":
            text = p.read_text()
            assert "subprocess" not in text and "Popen" not in text and "killpg" not in text, p.name


def test_cohort_cancel_does_not_block():
    """The cancel handler returns at once: no wait cursor, no waiting, no event loop of its own."""
    handler = ast.unparse(_method("AutoSegThreshold", "AutoSegThresholdWidget", "onCohortCancel"))
    for blocking in ("waitCursor=True", "processEvents", "sleep", ".wait(", ".end("):
        assert blocking not in handler, blocking
    assert "self._cohortRunner.cancel()" in handler


def test_the_cohort_self_test_checks_every_click():
    """Each ``.click()`` of the cohort self-test is followed by an assertion before the next click."""
    source = ast.unparse(_method("AutoSegThreshold", "AutoSegThresholdTest", "test_cohort_on_phantom"))
    lines = [line.strip() for line in source.splitlines()]
    clicks = [i for i, line in enumerate(lines) if ".click()" in line]
    assert len(clicks) >= 4  # Run, Save, Run again, Cancel
    for i, j in zip(clicks, clicks[1:] + [len(lines)]):
        assert any(line.startswith("self.assert") or "assert_array_equal" in line for line in lines[i + 1:j]), lines[i]
    assert "cohortCaseComboBox.currentIndex = row" in source
    assert "test_cohort_on_phantom" in ast.unparse(_method("AutoSegThreshold", "AutoSegThresholdTest", "runTest"))


# ---- self-tests never hang and leave no run behind ---------------------------------------------------------
def _test_methods(module: str):
    tree = ast.parse(_module_source(module))
    for klass in tree.body:
        if isinstance(klass, ast.ClassDef) and klass.name == f"{module}Test":
            yield from (f for f in klass.body if isinstance(f, ast.FunctionDef))


@pytest.mark.parametrize("module", MODULES)
def test_every_wait_loop_of_a_self_test_has_a_deadline(module):
    """A self-test runs under ``--testing`` with nobody watching: a loop waiting on a process must give up at a
    deadline (its condition compares ``time.time()``/``time.monotonic()``) and then fail, not hang until the
    test driver's timeout."""
    for method in _test_methods(module):
        for loop in (n for n in ast.walk(method) if isinstance(n, ast.While)):
            condition = ast.unparse(loop.test)
            assert "time.time()" in condition or "time.monotonic()" in condition, f"{method.name}: while {condition}"


@pytest.mark.parametrize("module", MODULES)
def test_a_process_a_self_test_starts_itself_is_ended_in_a_finally(module):
    """Runs started through a widget's BackgroundRunner are ended by module cleanup (Slicer quitting under
    ``--testing`` unloads every module: ``qSlicerCoreApplication::onAboutToQuit``). A run a self-test starts
    itself (``engine.start(...)``, in its own process session, see mrml/background.py ``popen_options``) has
    no owner: a failed assertion or a missed deadline would leave it running after Slicer, so it is ended in
    a ``finally``."""
    for method in _test_methods(module):
        started = [n for n in ast.walk(method) if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)
                   and ast.unparse(n.value.func).endswith(".start") and "Runner" not in ast.unparse(n.value.func)]
        for assign in started:
            name = ast.unparse(assign.targets[0])
            ended = [t for t in ast.walk(method) if isinstance(t, ast.Try)
                     and any(f"{name}.end()" in ast.unparse(s) for s in t.finalbody)]
            assert ended, f"{method.name}: {name} = {ast.unparse(assign.value)} is never ended in a finally"
