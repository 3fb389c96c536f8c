"""The Slicer side beyond the rules table: the engine lookup of AutoSegSlicerLib on this repository's real
layout, the phantom sample data on slicer-core MRML, the self-test runner, and how the module files use
the shared Lib (read with ast: they import Slicer and cannot be imported here)."""

from __future__ import annotations

import ast
import json
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "AutoSegSlicerLib"
MODULES = ["AutoSegTraining", "AutoSegIntensity", "AutoSegLocalisation", "AutoSegThreshold", "AutoSegSegmentMetrics"]


def _module_source(module: str) -> str:
    return (ROOT / "ScriptedModules" / module / f"{module}.py").read_text()


def _lookup(code: str, cwd: Path) -> dict:
    """Run ``code`` in a bare Python (-S: no site-packages, no PYTHONPATH) that has loaded the Lib's
    enginepath from its file as ``ep``; the code prints one JSON line."""
    prologue = ("import importlib.util, json, sys\n"
                f"spec = importlib.util.spec_from_file_location('ep', {str(LIB / 'enginepath.py')!r})\n"
                "ep = importlib.util.module_from_spec(spec); spec.loader.exec_module(ep)\n")
    out = subprocess.run([sys.executable, "-S", "-c", prologue + code], cwd=cwd, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- engine lookup (issue 15) ----------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_a_module_file_in_this_clone_finds_this_repositorys_engine(module, tmp_path):
    module_file = ROOT / "ScriptedModules" / module / f"{module}.py"
    got = _lookup(f"before = ep.installed_engine()\nengine = ep.find_engine({str(module_file)!r})\n"
                  "spec = importlib.util.find_spec('AutoSegSensitivity')\n"
                  "print(json.dumps({'before': str(before), 'engine': str(engine), 'last': sys.path[-1],"
                  " 'origin': spec.origin}))", tmp_path)
    assert got["before"] == "None"  # not importable in the bare interpreter: the clone is the only copy
    assert Path(got["engine"]) == ROOT / "AutoSegSensitivity"
    assert Path(got["last"]) == ROOT  # appended, so an installed copy would stay first
    assert Path(got["origin"]) == ROOT / "AutoSegSensitivity" / "__init__.py"


def test_an_installed_engine_is_preferred_to_the_clone(tmp_path):
    installed = tmp_path / "site" / "AutoSegSensitivity"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    module_file = ROOT / "ScriptedModules" / "AutoSegThreshold" / "AutoSegThreshold.py"
    got = _lookup(f"sys.path.insert(0, {str(tmp_path / 'site')!r})\nn = len(sys.path)\n"
                  f"engine = ep.find_engine({str(module_file)!r})\n"
                  "print(json.dumps({'engine': str(engine), 'added': len(sys.path) - n}))", tmp_path)
    assert Path(got["engine"]) == installed.resolve() and got["added"] == 0


def test_a_layout_without_the_engine_says_where_it_looked(tmp_path):
    module_file = tmp_path / "ScriptedModules" / "AutoSegThreshold" / "AutoSegThreshold.py"
    module_file.parent.mkdir(parents=True)
    module_file.write_text("")
    got = _lookup(f"try:\n    ep.find_engine({str(module_file)!r})\n    msg = ''\n"
                  "except ModuleNotFoundError as e:\n    msg = str(e)\nprint(json.dumps({'msg': msg}))", tmp_path)
    assert str(tmp_path / "AutoSegSensitivity") in got["msg"]


def test_the_engine_lookup_needs_only_the_standard_library():
    tree = ast.parse((LIB / "enginepath.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "importlib", "sys", "pathlib", "typing"}


@pytest.mark.parametrize("module", MODULES)
def test_each_module_finds_the_lib_and_the_engine_before_importing_the_engine(module):
    tree = ast.parse(_module_source(module))
    body = [ast.unparse(n) for n in tree.body]
    bootstrap = next(i for i, s in enumerate(body) if s.startswith("try:") and "import AutoSegSlicerLib" in s)
    assert "sys.path.append(str(Path(__file__).resolve().parents[2]))" in body[bootstrap]
    lookup = body.index("find_engine(__file__)")
    first_engine = min(i for i, s in enumerate(body) if s.startswith("from AutoSegSensitivity"))
    assert bootstrap < lookup < first_engine
    # the repository root computed that way is this repository
    assert (ROOT / "ScriptedModules" / module / f"{module}.py").resolve().parents[2] == ROOT


# ---- the shared Lib as the modules use it ----------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_each_widget_leaves_the_shared_wiring_to_the_lib(module):
    source = _module_source(module)
    assert "ParameterNodeBinding(self, self.logic, self.updateButtons" in source
    assert "self.ui = loadModuleUI(self)" in source
    for gone in ("def setParameterNode", "def initializeParameterNode", "def ensureDependencies", "def ensureTorch",
                 "_parameterNodeGuiTag", "confirmOkCancelDisplay", "pip_install"):
        assert gone not in source, gone
    # every button handler checks its ActionState before any dependency dialog
    for handler in re.findall(r"if not ready\(([^)]*\))\)( or not ensureDependencies\([^)]*\))?:", source):
        assert handler[0].endswith("State()") or handler[0].startswith("self.states()")
    assert source.count("if not ready(") >= 1


def test_the_dependency_wrapper_calls_the_engine_step_with_torch_through_pytorchutils():
    tree = ast.parse((LIB / "dependencies.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("ensure_dependencies")]
    assert len(calls) == 1
    keywords = {k.arg: ast.unparse(k.value) for k in calls[0].keywords}
    assert keywords["install_torch"] == "dependencies.torch_installer()" and keywords["need_torch"] == "needTorch"
    assert [ast.unparse(a) for a in calls[0].args] == ["confirm or slicer.util.confirmOkCancelDisplay",
                                                       "slicer.util.pip_install"]
    # the version handed to PyTorchUtils is the one pyproject.toml requires
    from AutoSegSensitivity.mrml.dependencies import TORCH_REQUIREMENT

    assert f'"torch{TORCH_REQUIREMENT}"' in (ROOT / "pyproject.toml").read_text()


def test_apply_optimum_asks_for_torch_and_stores_the_threshold_before_writing_any_segment():
    source = _module_source("AutoSegThreshold")
    handler = source[source.index("    def onApplyOptimum"):source.index("class AutoSegThresholdTest")]
    deps = handler.index("ensureDependencies(needTorch=checkpoint is not None)")
    store = handler.index("engine.store_threshold(")
    segments = handler.index("engine.apply_threshold(")
    assert deps < store < segments


@pytest.mark.parametrize("module", ["AutoSegThreshold", "AutoSegLocalisation"])
def test_the_threshold_slider_is_driven_through_the_one_update_per_change_helper(module):
    """Issue 19, finding 9: the slider's signals go through ``connectLiveSlider`` (never connected one to one,
    which updates twice per programmatic change), whose update is the module's ``onThresholdChanged``."""
    source = _module_source(module)
    assert "self._sliderUpdates = connectLiveSlider(self.ui.thresholdSlider, self.onThresholdChanged)" in source
    assert "valueIsChanging" not in source and "valueChanged.connect" not in source
    assert "interactive=interactive)" in source


class FakeCtkSliderWidget:
    """ctkSliderWidget's signals as CTK ``Libs/Widgets/ctkSliderWidget.cpp`` emits them (CTK dd4caea, the
    revision Slicer v5.10.0 builds; unchanged since 82cae57 of v5.8.1): ``setValue`` (l. 297-313) clears
    Changing for the call; ``setSpinBoxValue`` (l. 354-372) emits valueIsChanging when tracking is off and
    valueChanged unless Changing; ``startChanging``/``stopChanging`` (l. 316-341, slider pressed/released)
    set Changing and, on release, emit valueChanged if the value moved."""

    class Signal:
        def __init__(self):
            self.slots = []

        def connect(self, slot):
            self.slots.append(slot)

        def emit(self, value):
            for slot in list(self.slots):
                slot(value)

    def __init__(self, value=0.5):
        self.tracking, self.changing, self.value, self.before = True, False, value, value
        self.valueIsChanging, self.valueChanged = self.Signal(), self.Signal()

    def _setSpinBoxValue(self, value):
        self.value = value
        if not self.tracking:
            self.valueIsChanging.emit(value)
        if not self.changing:
            self.valueChanged.emit(value)

    def setValue(self, value):
        was, self.changing = self.changing, False
        self._setSpinBoxValue(value)
        self.changing = was

    def press(self):
        if not self.tracking:
            self.before, self.changing = self.value, True

    def drag(self, value):
        self._setSpinBoxValue(value)

    def release(self):
        if not self.tracking:
            self.changing = False
            if abs(self.value - self.before) > 0:
                self.valueChanged.emit(self.value)


@pytest.fixture
def live_slider(monkeypatch):
    """``connectLiveSlider`` of the Lib on a FakeCtkSliderWidget, with a stand-in ``qt`` whose
    ``QTimer.singleShot(0, f)`` queues ``f`` for the next event-loop turn (``turn()``)."""
    import types

    queue = []
    qt = types.SimpleNamespace(QTimer=types.SimpleNamespace(singleShot=lambda ms, f: queue.append(f)))
    monkeypatch.setitem(sys.modules, "qt", qt)
    from AutoSegSlicerLib import widgets

    def turn():
        while queue:
            queue.pop(0)()

    slider, updates = FakeCtkSliderWidget(), []
    widgets.connectLiveSlider(slider, lambda value, interactive: updates.append((value, interactive)))
    return slider, updates, turn


def test_the_fake_slider_emits_both_signals_for_a_programmatic_change():
    """What the one-to-one wiring of 746dced did with it: two updates for one change."""
    slider, updates = FakeCtkSliderWidget(), []
    slider.tracking = False
    slider.valueIsChanging.connect(lambda value: updates.append((value, True)))
    slider.valueChanged.connect(lambda value: updates.append((value, False)))
    slider.setValue(0.3)
    assert updates == [(0.3, True), (0.3, False)]


def test_a_programmatic_change_updates_once(live_slider):
    slider, updates, turn = live_slider
    assert slider.tracking is False
    slider.setValue(0.3)
    turn()
    assert updates == [(0.3, False)]
    slider.setValue(0.4)
    slider.setValue(0.45)
    turn()
    assert updates == [(0.3, False), (0.4, False), (0.45, False)]


def test_a_drag_updates_the_labelmap_once_per_turn_and_everything_on_release(live_slider):
    slider, updates, turn = live_slider
    slider.press()
    for v in (0.2, 0.25, 0.3):  # three moves before the event loop runs: one labelmap update, the last
        slider.drag(v)
    turn()
    assert updates == [(0.3, True)]
    slider.drag(0.35)
    turn()
    slider.release()
    turn()
    assert updates == [(0.3, True), (0.35, True), (0.35, False)]
    slider.press()
    slider.drag(0.4)
    slider.release()  # released before the event loop ran: only the full update
    turn()
    assert updates[3:] == [(0.4, False)]


@pytest.mark.parametrize("module", MODULES)
def test_each_module_offers_the_phantom_on_first_open(module):
    source = _module_source(module)
    assert "+ sampledata.HELP)" in source and "sampledata.registerAtStartup(self)" in source
    assert "sampledata.loadPhantom()" in source or module == "AutoSegTraining"  # its self-test trains on phantom cases
    help_text = (LIB / "sampledata.py").read_text()
    assert "nothing is downloaded" in help_text and "customDownloader=loadPhantom, **fields" in help_text


def test_the_extension_installs_every_lib_file_beside_the_modules():
    text = (ROOT / "CMakeLists.txt").read_text()
    listed = re.search(r"set\(AutoSegSlicerLib_SCRIPTS\s+(.*?)\)", text, re.S).group(1).split()
    assert sorted(listed) == sorted(f"AutoSegSlicerLib/{p.name}" for p in LIB.glob("*.py"))
    block = text[text.index("TARGET_NAME AutoSegSlicerLib"):]
    assert "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in block.split(")")[0]


def test_lib_files_compile(tmp_path):
    for path in LIB.glob("*.py"):
        py_compile.compile(str(path), cfile=str(tmp_path / "x.pyc"), doraise=True)


# ---- self-test runner ------------------------------------------------------------------------------------
def test_the_self_test_runner_runs_all_five_and_exits_non_zero_on_failure(tmp_path):
    path = ROOT / "Testing" / "Slicer" / "run_self_tests.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "r.pyc"), doraise=True)
    tree = ast.parse(path.read_text())
    names = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "MODULES")
    assert sorted(names) == sorted(MODULES)
    source = path.read_text()
    assert "slicer.selfTests" in source and "slicer.util.exit(1 if failed else 0)" in source
    assert ast.unparse(tree.body[-1]) == "main()"


# ---- phantom sample data on slicer-core MRML -------------------------------------------------------------
def test_the_phantom_sample_data_nodes():
    import slicer

    from AutoSegSensitivity.mrml import nodes, sampledata
    from AutoSegSensitivity.phantom import STRUCTURES, make_phantom

    scene = slicer.vtkMRMLScene()
    shape = (12, 48, 48)
    loaded = sampledata.load_phantom(scene, seed=3, shape=shape)
    ct, ref = make_phantom(seed=3, shape=shape)
    assert loaded.ct.GetName() == "AutoSegPhantom CT" and loaded.reference.GetName() == "AutoSegPhantom reference"
    assert sorted(loaded.probabilities) == sorted(sampledata.PROBABILITY_STRUCTURES)
    got = nodes.volume_from_node(loaded.ct)
    np.testing.assert_array_equal(got.array, ct.array)
    np.testing.assert_allclose(got.spacing_zyx, ct.spacing_zyx)
    np.testing.assert_allclose(got.origin, ct.origin)
    seg = loaded.reference.GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())] == list(STRUCTURES)
    assert loaded.reference.GetNodeReferenceID("referenceImageGeometryRef") == loaded.ct.GetID()
    for name, node in loaded.probabilities.items():
        assert node.GetName() == f"AutoSegPhantom {name}_prob"
        p = nodes.volume_from_node(node).array
        mask = nodes.segment_mask(loaded.reference, nodes.segment_id_by_name(loaded.reference, name), got)
        np.testing.assert_array_equal(mask, ref.mask(name))
        assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= sampledata.PEAK + 1e-6
        # zero far from the structure: beyond 5 blur widths (distance by scipy's exact Euclidean transform)
        from scipy import ndimage

        far = ndimage.distance_transform_edt(~mask, sampling=ct.spacing_zyx) > 5 * sampledata.BLUR_MM
        assert far.any() and np.all(p[far] < 1e-3)
        # the maps are cautious: the brute-force Dice optimum lies below 0.5
        ts = np.round(np.arange(0.05, 0.96, 0.05), 2)
        dice = [2 * np.sum((p >= t) & mask) / (np.sum(p >= t) + mask.sum()) for t in ts]
        assert ts[int(np.argmax(dice))] < 0.5
    count = scene.GetNumberOfNodes()
    sampledata.load_phantom(scene, seed=3, shape=shape)  # loading again reuses the nodes
    assert scene.GetNumberOfNodes() == count


def test_loading_a_module_needs_only_what_slicer_ships():
    """The module files' own imports of the Lib and the engine (run here verbatim, with slicer-core as
    ``slicer``) pull in none of the packages the confirmed dependency step installs, so a module opens
    before they are installed."""
    statements = set()
    for module in MODULES:
        tree = ast.parse(_module_source(module))
        statements |= {ast.unparse(n) for n in tree.body if isinstance(n, ast.ImportFrom)
                       and n.module and n.module.split(".")[0] in ("AutoSegSensitivity", "AutoSegSlicerLib")}
    assert "from AutoSegSensitivity.mrml import actions" in statements
    assert any(s.startswith("from AutoSegSlicerLib.widgets import") for s in statements)
    code = ("import sys\n" + "\n".join(sorted(statements)) +
            "\nheavy = {'scipy', 'yaml', 'torch', 'monai', 'matplotlib', 'slicerio', 'pydicom'}\n"
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_training_cancel_returns_at_once_and_a_killed_run_reads_as_cancelled():
    """Issue 10 item 6: Cancel must not block Slicer's main thread (no wait cursor, no processEvents, no
    sleep); ``TrainingProcess.cancel`` returns at once and the poll timer sees the exit. A run killed after
    the grace period exits -9 (POSIX) or with taskkill's code, and must still read as cancelled."""
    source = _module_source("AutoSegTraining")
    handler = source[source.index("    def onCancel"):source.index("    # ---- prediction")]
    for blocking in ("waitCursor=True", "processEvents", "sleep", ".wait("):
        assert blocking not in handler, blocking
    assert "self._training.cancel()" in handler and "self._predicting.cancel()" in handler  # the Lib's runners
    finished = source[source.index("    def onTrainingFinished"):source.index("    def onCancel")]
    assert "process.cancel_requested" in finished


def test_intensity_module_offers_every_engine_preset_in_the_ui_order():
    """The preset list of AutoSegIntensity (module and its .ui combo box) is the engine's presets (issue 14:
    SLF1-CODE, SepNet's released variant, beside the paper's printed SLF1-3 and NLF1-2), plus Custom."""
    import xml.etree.ElementTree as ET

    from AutoSegSensitivity.intensity import PRESETS as ENGINE_PRESETS

    tree = ast.parse(_module_source("AutoSegIntensity"))
    module_presets = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                          and any(getattr(t, "id", None) == "PRESETS" for t in n.targets))
    assert sorted(module_presets) == sorted(ENGINE_PRESETS)
    ui = ET.parse(ROOT / "ScriptedModules" / "AutoSegIntensity" / "Resources" / "UI" / "AutoSegIntensity.ui")
    combo = next(w for w in ui.iter("widget") if w.get("name") == "presetComboBox")
    items = [i.find("property/string").text for i in combo.findall("item")]
    assert items == module_presets + ["Custom"]


def test_thresholds_are_stored_under_the_swept_structure_not_the_field_as_it_is_now():
    """Review finding: sweeping Parotid_L, then typing another name in the field, must not store Parotid_L's
    optimum under the new name (in the checkpoint or the thresholds.json)."""
    source = _module_source("AutoSegThreshold")
    for handler in ("onApplyOptimum", "onSaveThresholds"):
        body = source[source.index(f"    def {handler}"):]
        body = body[:body.index("\n    def ", 10)] if "\n    def " in body[10:] else body
        assert "structure = self._result.structure" in body, handler
        assert "p.structure, t_opt" not in body, handler


def test_self_test_command_puts_the_module_paths_on_the_command_line():
    """--testing implies --disable-settings (Slicer's qSlicerCoreCommandOptions.cxx): module paths saved in
    the settings are not read, so the documented command names the five module folders itself."""
    readme = (ROOT / "README.md").read_text()
    runner = (ROOT / "Testing" / "Slicer" / "run_self_tests.py").read_text()
    for text in (readme, runner):
        command = text[text.index("Slicer --no-main-window --testing"):]
        command = command[:command.index("run_self_tests.py")]
        assert "--additional-module-paths" in command
        for module in MODULES:
            assert f"ScriptedModules/{module}" in command, module


def _commands(text: str) -> list:
    """Every ``Slicer ... --testing ... run_self_tests.py`` command written in ``text`` (continuation lines
    joined), as argument lists."""
    import shlex

    joined = re.sub(r"\\\s*\n\s*", " ", text)
    found = []
    for m in re.finditer(r"Slicer --no-main-window --testing.*?run_self_tests\.py", joined, re.S):
        found.append(shlex.split(m.group(0)))
    return found


def test_the_runner_never_advises_dropping_the_module_paths_for_an_installed_extension():
    """Issue 19, finding 4. Under --testing an installed extension is not loaded: --testing implies
    --disable-settings (Slicer/Slicer Base/QTCore/qSlicerCoreCommandOptions.cxx ``settingsDisabled``, v5.10.0
    l. 366-371, v5.8.1 l. 362-367), and installed extensions are registered in the revision-specific settings
    (qSlicerCoreApplication.cxx v5.10.0 l. 499 ``setExtensionsSettingsFilePath(slicerRevisionUserSettingsFilePath())``),
    whose file is then ``...-tmp.ini``, cleared at start (l. 1675-1699; v5.8.1 l. 1588-1616). So every
    command the runner and the README give keeps --additional-module-paths, and the installed case names the
    installed modules' folder (Slicer_QTSCRIPTEDMODULES_LIB_DIR = lib/Slicer-X.Y/qt-scripted-modules,
    CMake/SlicerDirectories.cmake l. 67, 140-144)."""
    runner = (ROOT / "Testing" / "Slicer" / "run_self_tests.py").read_text()
    readme = (ROOT / "README.md").read_text()
    doc = ast.get_docstring(ast.parse(runner))
    assert "without --additional-module-paths" not in runner and "without `--additional-module-paths`" not in readme
    commands = _commands(doc)
    assert len(commands) == 2, commands
    for argv in commands + _commands(readme):
        paths = argv[argv.index("--additional-module-paths") + 1:argv.index("--python-script")]
        assert paths, argv
    clone, installed = commands
    assert clone[clone.index("--additional-module-paths") + 1:clone.index("--python-script")] == \
        [f"ScriptedModules/{m}" for m in MODULES]
    folder = installed[installed.index("--additional-module-paths") + 1]
    assert re.fullmatch(r"EXTENSIONS/AutoSegSensitivity/lib/Slicer-X\.Y/qt-scripted-modules", folder), folder
    assert "slicer.app.extensionsInstallPath" in doc and "cleared" in doc
    assert "lib/Slicer-X.Y/qt-scripted-modules" in readme


# ---- every self-test click checks its effect (issue 19, finding 10) --------------------------------------
def _unchecked_clicks(tree: ast.AST, test_class: str) -> list:
    """``(method, line)`` of each ``.click()`` in ``test_class`` that no assertion follows before the next
    click or the end of its method. An assertion is an ``assert`` statement or a call of a function whose
    name starts with ``assert`` (``self.assertEqual``, ``np.testing.assert_array_equal``, ...)."""
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == test_class)
    unchecked = []
    for method in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
        events = []
        for node in ast.walk(method):
            if isinstance(node, ast.Assert):
                events.append((node.lineno, node.col_offset, "assert"))
            elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                if name == "click" and not node.args:
                    events.append((node.lineno, node.col_offset, "click"))
                elif name.startswith("assert"):
                    events.append((node.lineno, node.col_offset, "assert"))
        events.sort()
        for i, (line, _, kind) in enumerate(events):
            if kind != "click":
                continue
            following = [k for _, _, k in events[i + 1:]]
            nxt = following.index("click") if "click" in following else len(following)
            if "assert" not in following[:nxt]:
                unchecked.append((method.name, line))
    return unchecked


def test_the_click_audit_finds_a_click_without_a_check():
    tree = ast.parse("class T:\n"
                     "    def test_a(self):\n        w.ui.a.click()\n        w.ui.b.click()\n        self.assertTrue(x)\n"
                     "    def test_b(self):\n        w.ui.c.click()\n        for i in r:\n            y = 1\n"
                     "    def test_c(self):\n        w.ui.d.click()\n        while w.busy:\n            pass\n"
                     "        np.testing.assert_array_equal(a, b)\n        assert z\n")
    assert _unchecked_clicks(tree, "T") == [("test_a", 3), ("test_b", 7)]


@pytest.mark.parametrize("module", MODULES)
def test_every_self_test_click_is_followed_by_a_check_of_its_effect(module):
    """PythonQt prints an exception raised in a slot connected to ``clicked`` and goes on (the click returns
    normally), so a self-test that clicks and checks nothing passes whatever the handler did."""
    tree = ast.parse(_module_source(module))
    assert _unchecked_clicks(tree, f"{module}Test") == []


# ---- the self-tests install what they use first (issue 19, finding 3) ------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_each_self_test_runs_the_dependency_step_before_anything_else(module):
    """Stock Slicer 5.8/5.10 ships numpy, scipy and pydicom only; AutoSegTraining's self-test exports scene
    cases (slicerio) and trains (torch from the PyTorch extension). The first statement of every runTest is
    the dependency step, asserted; AutoSegTraining's includes torch."""
    tree = ast.parse(_module_source(module))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Test")
    run = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    first = run.body[0]
    assert isinstance(first, ast.Expr) and ast.unparse(first.value.func) == "self.assertTrue", ast.unparse(first)
    step = first.value.args[0]
    assert isinstance(step, ast.Call) and ast.unparse(step.func) == "installForSelfTest"
    torch = {k.arg: ast.literal_eval(k.value) for k in step.keywords}.get("needTorch", False)
    assert torch is (module == "AutoSegTraining")
    calls = [ast.unparse(s) for s in run.body[1:]]
    assert calls and all(c.startswith("self.") for c in calls)  # the tests themselves come after it


def _lib_dependencies_with_fake_slicer(monkeypatch, recorded):
    """AutoSegSlicerLib.dependencies loaded with a stand-in ``slicer`` whose dialog says no and whose pip
    records; the engine's ensure_dependencies records what it is given."""
    import importlib
    import types

    from AutoSegSensitivity.mrml import dependencies as engine

    util = types.SimpleNamespace(confirmOkCancelDisplay=lambda text: recorded.append(("dialog", text)) or False,
                                 pip_install=lambda req: recorded.append(("pip", req)),
                                 errorDisplay=lambda text: recorded.append(("error", text)),
                                 showStatusMessage=lambda text, ms: recorded.append(("status", text)))
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(util=util))

    def fake_ensure(confirm, pip_install, install_torch=None, need_torch=False, packages=None):
        recorded.append(("ensure", need_torch, confirm("install X?")))
        return True

    monkeypatch.setattr(engine, "ensure_dependencies", fake_ensure)
    monkeypatch.delitem(sys.modules, "AutoSegSlicerLib.dependencies", raising=False)
    return importlib.import_module("AutoSegSlicerLib.dependencies")


def test_the_self_test_dependency_step_consents_and_the_actions_ask(monkeypatch):
    recorded = []
    lib = _lib_dependencies_with_fake_slicer(monkeypatch, recorded)
    assert lib.installForSelfTest(needTorch=True)
    assert recorded == [("ensure", True, True)]  # no dialog: the self-test is the consent
    recorded.clear()
    assert lib.ensureDependencies(needTorch=False)
    assert recorded == [("dialog", "install X?"), ("ensure", False, False)]  # an action asks the user
    monkeypatch.delitem(sys.modules, "AutoSegSlicerLib.dependencies")


def test_under_testing_the_self_test_installs_without_a_dialog_and_an_action_installs_nothing(monkeypatch):
    """What happens under ``--testing`` (review of issue 19, finding 3), on a restatement of the sources:

    * Slicer/Slicer ``Base/Python/slicer/util.py`` (v5.10.0 l. 3081-3093 and 3124-3155; v5.8.1 l. 2992-3004
      and 3035-3066): ``confirmOkCancelDisplay`` returns ``_messageDisplay(...) == qt.QMessageBox.Ok``, and
      ``_messageDisplay`` returns its ``testingReturnValue`` True without a dialog when
      ``slicer.app.testingEnabled()``; True == QMessageBox.Ok (0x400, a PythonQt int enum) is False, so the
      dialog is skipped and the answer reads as no.
    * fepegar/SlicerPyTorch ``PyTorchUtils/PyTorchUtils.py`` (main, e1c85cc) ``installTorch`` l. 207-214:
      it asks (``confirmOkCancelDisplay``) only ``if askConfirmation and not
      slicer.app.commandOptions().testingEnabled``.

    So no modal dialog can block a self-test; an action's own dependency step installs nothing (its consent
    reads as no), which is why every self-test runs ``installForSelfTest`` first: it answers yes itself,
    pip installs, and PyTorchUtils installs torch without asking."""
    import importlib
    import types

    from AutoSegSensitivity.mrml import dependencies as engine

    events = []
    QMessageBox_Ok = 0x00000400

    def _messageDisplay(logLevel, text, testingReturnValue, **kwargs):
        if app.testingEnabled():
            return testingReturnValue
        events.append(("dialog", text))  # a modal dialog: must never be reached under --testing
        return QMessageBox_Ok

    app = types.SimpleNamespace(testingEnabled=lambda: True,
                                commandOptions=lambda: types.SimpleNamespace(testingEnabled=True))
    util = types.SimpleNamespace(
        confirmOkCancelDisplay=lambda text, **kw: _messageDisplay(20, text, True, **kw) == QMessageBox_Ok,
        pip_install=lambda req: events.append(("pip", req)) or state["missing"].clear(),
        errorDisplay=lambda text, **kw: events.append(("error", text)),
        showStatusMessage=lambda text, ms=0: None)
    slicer = types.SimpleNamespace(app=app, util=util)
    monkeypatch.setitem(sys.modules, "slicer", slicer)

    state = {"torch": None, "missing": ["slicerio>=1.0"]}

    class PyTorchUtilsLogic:
        @staticmethod
        def torchInstalled():
            return state["torch"] is not None

        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            if askConfirmation and not slicer.app.commandOptions().testingEnabled:
                if not slicer.util.confirmOkCancelDisplay("PyTorch will be downloaded"):
                    return None
            events.append(("installTorch", torchVersionRequirement))
            state["torch"] = "2.5.0"
            return types.SimpleNamespace(__version__="2.5.0")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    monkeypatch.setattr(engine, "torch_missing", lambda: state["torch"] is None)
    monkeypatch.setattr(engine, "torch_version", lambda: state["torch"])
    monkeypatch.setattr(engine, "missing_packages", lambda packages=None: list(state["missing"]))
    monkeypatch.delitem(sys.modules, "AutoSegSlicerLib.dependencies", raising=False)
    lib = importlib.import_module("AutoSegSlicerLib.dependencies")

    assert slicer.util.confirmOkCancelDisplay("Install?") is False  # skipped, and read as no
    assert lib.ensureDependencies(needTorch=True) is False  # an action in a self-test: nothing installed
    assert [e for e in events if e[0] != "error"] == []
    events.clear()
    assert lib.installForSelfTest(needTorch=True) is True
    assert events[:2] == [("installTorch", engine.TORCH_REQUIREMENT), ("pip", '"slicerio>=1.0"')], events
    assert not [e for e in events if e[0] in ("dialog", "error")], events  # no dialog, no error
    monkeypatch.delitem(sys.modules, "AutoSegSlicerLib.dependencies")


# ---- unset path fields show empty, not "." (issue 19, finding 5) -----------------------------------------
def test_path_field_values_and_line_edit_text():
    import typing
    from pathlib import PurePosixPath

    from AutoSegSensitivity.mrml.path_fields import optional_path_class, path_from_text, path_text

    assert path_text(None) == "" and path_text(Path()) == "" and path_text(Path("/a/b.pt")) == "/a/b.pt"
    assert path_from_text("") is None and path_from_text("  ") is None and path_from_text(".") is None
    assert path_from_text("/a/b.pt") == Path("/a/b.pt") and isinstance(path_from_text("/a", PurePosixPath), PurePosixPath)
    assert optional_path_class(typing.Optional[Path]) is Path
    assert optional_path_class(typing.Union[None, PurePosixPath]) is PurePosixPath
    for other in (Path, str, typing.Optional[str], typing.Union[Path, str], typing.Union[Path, str, None], int):
        assert optional_path_class(other) is None, other


@pytest.fixture
def fake_connector_world(monkeypatch):
    """A stand-in ``ctk`` (ctkPathLineEdit: ``currentPath`` text as given, ``currentPathChanged``) and
    ``slicer.parameterNodeWrapper``: GuiConnector as guiConnectors.py l. 53-111 (onChanged connects,
    changed calls back), createGuiConnector l. 126-147 (the first registered connector that can represent
    the pair), with Slicer's ctkPathLineEditToPathConnector (l. 673-705) registered first, as in Slicer."""
    import types
    import typing

    class Signal:
        """A PythonQt signal: a Python slot is called with as many of the signal's arguments as it takes
        (Slicer's ctkPathLineEditToPathConnector connects ``currentPathChanged(QString)`` to ``changed()``)."""

        def __init__(self):
            self.slots = []

        def connect(self, slot):
            self.slots.append(slot)

        def disconnect(self, slot):
            self.slots.remove(slot)

        def emit(self, *args):
            import inspect

            for slot in list(self.slots):
                params = inspect.signature(slot).parameters.values()
                slot(*args[:len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])])

    class ctkPathLineEdit:
        """CTK ``Libs/Widgets/ctkPathLineEdit.cpp`` (dd4caea, Slicer 5.10.0's CTK; 82cae57, 5.8.1's the same):
        ``currentPath`` is the line edit's text (l. 797-801); a text change runs ``updateHasValidInput``
        (l. 825-853): ``currentPathChanged`` only when the validator accepts the text, ``validInputChanged``
        when acceptance changes. Without name filters the validator's pattern is ``.+``
        (``Libs/Core/ctkUtils.cpp`` l. 179-182), so an empty text is not acceptable."""

        def __init__(self):
            self._text, self._valid = "", False
            self.currentPathChanged, self.validInputChanged = Signal(), Signal()

        @property
        def currentPath(self):
            return self._text

        @currentPath.setter
        def currentPath(self, text):  # setCurrentPath -> QLineEdit::setText -> textChanged when it differs
            if text == self._text:
                return
            self._text = text
            was, self._valid = self._valid, len(text) > 0  # QRegularExpressionValidator(".+")
            if self._valid:
                self.currentPathChanged.emit(text)
            if self._valid != was:
                self.validInputChanged.emit(self._valid)

        def type_in(self, text):  # the user edits the field
            self.currentPath = text

    class GuiConnector:
        def __init__(self):
            self._callback = None

        def onChanged(self, callback):
            self._callback = callback
            self._disconnect() if callback is None else self._connect()

        def changed(self):
            if self._callback:
                self._callback()

    registered = []

    def parameterNodeGuiConnector(cls):
        registered.append(cls)
        return cls

    def unannotatedType(t):
        return typing.get_args(t)[0] if typing.get_origin(t) is typing.Annotated else t

    class SlicersPathConnector(GuiConnector):
        @staticmethod
        def canRepresent(widget, datatype):
            return type(widget) == ctkPathLineEdit and unannotatedType(datatype) in (Path,)

        @staticmethod
        def create(widget, datatype):
            c = SlicersPathConnector()
            c._widget, c._type = widget, unannotatedType(datatype)
            return c

        def _connect(self):
            self._widget.currentPathChanged.connect(self.changed)

        def _disconnect(self):
            self._widget.currentPathChanged.disconnect(self.changed)

        def read(self):
            return self._type(self._widget.currentPath)

        def write(self, value):
            self._widget.currentPath = str(value)

    registered.append(SlicersPathConnector)

    def createGuiConnector(widget, datatype):
        for cls in registered:
            if cls.canRepresent(widget, datatype):
                return cls.create(widget, datatype)
        raise RuntimeError("Unable to create GUI connector")

    pnw = types.SimpleNamespace(GuiConnector=GuiConnector, parameterNodeGuiConnector=parameterNodeGuiConnector,
                                unannotatedType=unannotatedType)
    monkeypatch.setitem(sys.modules, "ctk", types.SimpleNamespace(ctkPathLineEdit=ctkPathLineEdit))
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    from AutoSegSlicerLib import widgets

    monkeypatch.setattr(widgets, "_pathConnectorRegistered", False)
    return types.SimpleNamespace(widgets=widgets, create=createGuiConnector, edit=ctkPathLineEdit, registered=registered)


def test_an_unset_optional_path_shows_empty_and_an_emptied_field_reads_none(fake_connector_world):
    import typing

    world = fake_connector_world
    # what Slicer alone does with a Path field: Path() shows "."
    edit = world.edit()
    slicers = world.create(edit, Path)
    slicers.write(Path())
    assert edit.currentPath == "."
    with pytest.raises(RuntimeError):  # and it has no connector for Optional[Path]
        world.create(world.edit(), typing.Optional[Path])
    world.widgets.registerOptionalPathConnector()
    world.widgets.registerOptionalPathConnector()  # once only
    assert len(world.registered) == 2
    edit, values = world.edit(), []
    connector = world.create(edit, typing.Optional[Path])
    assert type(connector).__name__ == "OptionalPathLineEditConnector"
    connector.write(None)  # the wrapper writes the value, then listens (wrapper.py _connectParametersToGui)
    assert edit.currentPath == ""
    connector.onChanged(lambda: values.append(connector.read()))
    edit.type_in("/data/model.pt")
    edit.type_in("")
    edit.type_in(" . ")
    assert values == [Path("/data/model.pt"), None, None]
    connector.write(Path("/out"))
    assert edit.currentPath == "/out"
    assert type(world.create(world.edit(), Path)).__name__ == "SlicersPathConnector"  # Path fields untouched


def test_clearing_a_chosen_path_unsets_the_field(fake_connector_world):
    """Review of issue 19's fix: an emptied ctkPathLineEdit emits no currentPathChanged (the validator's
    ``.+`` does not accept ''; ctkPathLineEdit.cpp updateHasValidInput), only validInputChanged(false); the
    connector listened to currentPathChanged alone, so clearing a chosen path left it in the parameter node."""
    import typing

    world = fake_connector_world
    world.widgets.registerOptionalPathConnector()
    edit, values = world.edit(), []
    connector = world.create(edit, typing.Optional[Path])
    connector.write(Path("/data/model.pt"))  # the node holds a chosen path
    connector.onChanged(lambda: values.append(connector.read()))
    edit.type_in("")  # the user deletes it
    assert values == [None]
    edit.type_in("/data/other.pt")  # becoming valid again reads once, from currentPathChanged
    assert values == [None, Path("/data/other.pt")]
    connector.onChanged(None)  # disconnect (wrapper.py _disconnectGui): no slot of the connector is left
    assert edit.currentPathChanged.slots == [] and edit.validInputChanged.slots == []
    edit.type_in("")
    assert values == [None, Path("/data/other.pt")]


def test_the_optional_path_connector_is_registered_before_the_gui_is_bound():
    source = (LIB / "widgets.py").read_text()
    body = source[source.index("def loadModuleUI"):]
    assert body.index("registerOptionalPathConnector()") < body.index("slicer.util.loadUI(")
    for module in MODULES:
        setup = _module_source(module)
        setup = setup[setup.index("    def setup(self):"):]
        assert setup.index("loadModuleUI(self)") < setup.index("self.binding.initialize()"), module


# ---- SampleData.downloadSample("AutoSegPhantom") (issue 19, finding 6) ---------------------------------
class SampleDataModel:
    """What Slicer/Slicer ``Modules/Scripted/SampleData/SampleData.py`` does with a registered source,
    restated (v5.10.0; v5.8.1 the same): ``registerCustomSampleDataSource`` (l. 510-561) appends a
    SampleDataSource whose fields must have equal lengths (l. 205-215) to ``slicer.modules.sampleDataSources``;
    ``downloadSample`` is ``downloadSamples(name)[0]`` (l. 987-991) and ``downloadSamples`` is
    ``downloadFromSource(source)`` (l. 993-1001), which never calls ``customDownloader`` (only the button
    does, l. 445-446): for each (uri, fileName, nodeName, loadFileType, checksum) it downloads ``uri`` into
    ``<cache>/<fileName>`` unless the file is there (``downloadFile`` l. 1079-1129: ``urllib.request.urlretrieve``;
    a file already there is reused unless a checksum is given and its digest differs, then it is fetched again)
    and, with a node name, loads it as that node (l. 900-908). Loading is done here with slicer-core's
    storage nodes."""

    def __init__(self, scene, cache):
        import types

        self.scene, self.cache, self.sources = scene, Path(cache), {}
        model = self

        class SampleDataLogic:
            @staticmethod
            def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,
                                               nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                               loadFileTypes=None, loadFiles=None, loadFileProperties={},
                                               checksums=None, loadFileType=None):
                uris = list(uris or [])
                loadFileTypes = list(loadFileTypes) if isinstance(loadFileTypes, (list, tuple)) else [loadFileTypes] * len(uris)
                nodeNames = list(nodeNames) if nodeNames is not None else [None] * len(uris)
                checksums = list(checksums) if checksums is not None else [None] * len(uris)
                assert len(uris) == len(fileNames) == len(nodeNames) == len(loadFileTypes) == len(checksums)
                source = types.SimpleNamespace(sampleName=sampleName, uris=uris, fileNames=list(fileNames),
                                               nodeNames=nodeNames, loadFileTypes=loadFileTypes,
                                               checksums=checksums, customDownloader=customDownloader)
                model.sources.setdefault(category, []).append(source)

        self.module = types.SimpleNamespace(SampleDataLogic=SampleDataLogic)

    def downloadSamples(self, name):
        import hashlib
        import urllib.request

        source = next(s for c in self.sources.values() for s in c if s.sampleName == name)
        nodes = []
        for uri, file_name, node_name, file_type, checksum in zip(source.uris, source.fileNames, source.nodeNames,
                                                                  source.loadFileTypes, source.checksums):
            path = self.cache / file_name
            if path.exists() and path.stat().st_size > 0 and checksum is not None:
                algo, digest = checksum.split(":")  # slicer.util.extractAlgoAndDigest
                assert len(digest) == {"SHA256": 64, "SHA512": 128, "MD5": 32}[algo]
                if hashlib.new(algo, path.read_bytes()).hexdigest() != digest:  # slicer.util.computeChecksum
                    path.unlink()  # "File already exists in cache but checksum is different - re-downloading it."
            if not path.exists() or path.stat().st_size == 0:
                urllib.request.urlretrieve(uri, str(path))
                if checksum is not None:
                    algo, digest = checksum.split(":")
                    assert hashlib.new(algo, path.read_bytes()).hexdigest() == digest, "Checksum verification failed"
            if node_name:
                cls, storage = {"VolumeFile": ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode"),
                                "SegmentationFile": ("vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode")}[file_type]
                node = self.scene.AddNewNodeByClass(cls, node_name)
                reader = self.scene.AddNewNodeByClass(storage)
                reader.SetFileName(str(path))
                assert reader.ReadData(node), path
                nodes.append(node)
        return nodes

    def downloadSample(self, name):
        return self.downloadSamples(name)[0]


@pytest.fixture
def sample_data(monkeypatch, tmp_path):
    """AutoSegSlicerLib.sampledata with slicer-core as ``slicer`` (``slicer.app.cachePath`` and
    ``slicer.modules`` stand-ins) and the SampleData model as ``SampleData``; the phantom made small."""
    import types

    import slicer

    from AutoSegSensitivity.mrml import sampledata as engine

    scene = slicer.vtkMRMLScene()
    model = SampleDataModel(scene, tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(cachePath=str(tmp_path / "slicer-cache")), raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(sampleDataSources=model.sources), raising=False)
    monkeypatch.setitem(sys.modules, "SampleData", model.module)
    small = getattr(engine, "write_phantom_files", None)  # (absent before issue 19)
    if small is not None:
        monkeypatch.setattr(engine, "write_phantom_files", lambda folder: small(folder, shape=(10, 40, 40)))
    from AutoSegSlicerLib import sampledata as lib

    return types.SimpleNamespace(lib=lib, model=model, scene=scene, engine=engine, tmp=tmp_path, write=small)


def test_download_sample_loads_the_registered_phantom(sample_data):
    from AutoSegSensitivity.mrml import nodes

    lib, model = sample_data.lib, sample_data.model
    lib.registerSampleData("thumb.png")
    lib.registerSampleData("thumb.png")  # once only
    (source,) = model.sources[lib.CATEGORY]
    assert source.customDownloader is lib.loadPhantom  # the button keeps the in-memory loader
    assert all(u.startswith("file://") for u in source.uris)
    ct = model.downloadSample(lib.SAMPLE_NAME)
    assert ct.GetName() == "AutoSegPhantom CT"
    import slicer

    expected = sample_data.engine.load_phantom(slicer.vtkMRMLScene(), shape=(10, 40, 40))
    np.testing.assert_array_equal(nodes.volume_from_node(ct).array, nodes.volume_from_node(expected.ct).array)
    loaded = {n.GetName(): n for n in model.downloadSamples(lib.SAMPLE_NAME)}
    assert sorted(loaded) == sorted(f.node_name for f in sample_data.engine.phantom_files())
    for name, node in expected.probabilities.items():
        np.testing.assert_array_equal(nodes.volume_from_node(loaded[f"AutoSegPhantom {name}_prob"]).array,
                                      nodes.volume_from_node(node).array)
    ref = loaded["AutoSegPhantom reference"].GetSegmentation()
    want = expected.reference.GetSegmentation()
    assert [ref.GetNthSegment(i).GetName() for i in range(ref.GetNumberOfSegments())] == \
        [want.GetNthSegment(i).GetName() for i in range(want.GetNumberOfSegments())]


def test_download_sample_loads_a_changed_phantom_not_the_copy_cached_from_the_old_one(sample_data, monkeypatch):
    """Review of issue 19's fix: SampleData copies each file:// URI into ``<cache>/<fileName>`` and, without a
    checksum, reuses that copy forever (SampleData.py ``downloadFile``, v5.10.0 l. 1079-1129, v5.8.1
    l. 934-980). Raising PHANTOM_FILES_VERSION wrote new files into a new folder, but downloadSample went on
    loading the old copies; the source's checksums make SampleData copy a file whose digest changed."""
    from AutoSegSensitivity.mrml import nodes

    lib, model, engine = sample_data.lib, sample_data.model, sample_data.engine
    lib.registerSampleData()
    assert nodes.volume_from_node(model.downloadSample(lib.SAMPLE_NAME)).array.shape == (10, 40, 40)
    # a later release changes the phantom and raises the version; a new session registers it again
    monkeypatch.setattr(lib, "PHANTOM_FILES_VERSION", lib.PHANTOM_FILES_VERSION + 1)
    monkeypatch.setattr(engine, "write_phantom_files", lambda folder: sample_data.write(folder, shape=(12, 40, 40)))
    model.sources.clear()
    lib.registerSampleData()
    ct = model.downloadSample(lib.SAMPLE_NAME)
    assert nodes.volume_from_node(ct).array.shape == (12, 40, 40), "the cached copy of the old phantom was loaded"
    (source,) = model.sources[lib.CATEGORY]  # as slicer.util.extractAlgoAndDigest wants them
    assert len(source.checksums) == len(source.uris)
    assert all(c.startswith("SHA256:") and len(c) == len("SHA256:") + 64 for c in source.checksums)


def test_the_old_registration_without_uris_raises_index_error_in_the_model(sample_data):
    """What 746dced registered (``uris=[]``): downloadSample finds the source and loads nothing."""
    sample_data.model.module.SampleDataLogic.registerCustomSampleDataSource(
        category="X", sampleName="Old", uris=[], fileNames=[], nodeNames=[], customDownloader=print)
    with pytest.raises(IndexError):
        sample_data.model.downloadSample("Old")


def test_phantom_files_are_written_once_and_completed_when_one_is_missing(tmp_path):
    from AutoSegSensitivity.mrml import sampledata

    paths = sampledata.write_phantom_files(tmp_path / "p", shape=(8, 32, 32))
    assert [p.name for p in paths] == [f.file_name for f in sampledata.phantom_files()]
    assert paths[0].name == "AutoSegPhantom-CT.nrrd"  # downloadSample returns the first node
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    assert sampledata.write_phantom_files(tmp_path / "p", shape=(8, 32, 32)) == paths
    assert {p: p.stat().st_mtime_ns for p in paths} == stamps
    paths[3].unlink()
    sampledata.write_phantom_files(tmp_path / "p", shape=(8, 32, 32))
    assert paths[3].is_file() and sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(p.name for p in paths)
    fields = sampledata.sample_data_source_fields(tmp_path / "p")
    assert len({len(v) for v in fields.values()}) == 1 and all(fields["nodeNames"])
    assert fields["loadFileTypes"][:2] == ["VolumeFile", "SegmentationFile"]


def test_a_module_set_up_after_start_up_adds_the_phantom_to_an_open_sample_data_widget():
    """SampleDataWidget builds its buttons once (SampleData.py setup, l. 282): loadModuleUI registers with
    ``refreshSampleDataWidget=True``, which adds the category's frame (built by SampleData's own
    setCategoriesFromSampleDataSources, frames named "<category>CollapsibleGroupBox", l. 405-408) before the
    last frame, "Load data from URL" (l. 286-287), unless it is there."""
    widgets = (LIB / "widgets.py").read_text()
    assert "registerSampleData(widget.resourcePath(f\"Icons/{widget.moduleName}.png\"), refreshSampleDataWidget=True)" in widgets
    lib = (LIB / "sampledata.py").read_text()
    body = lib[lib.index("def addButtonsToSampleDataWidget"):]
    assert 'f"{CATEGORY}CollapsibleGroupBox"' in body and "setCategoriesFromSampleDataSources(" in body
    assert "layout.insertWidget(max(layout.count() - 1, 0), frame)" in body
