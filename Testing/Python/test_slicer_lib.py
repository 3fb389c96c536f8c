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
    assert [ast.unparse(a) for a in calls[0].args] == ["slicer.util.confirmOkCancelDisplay", "slicer.util.pip_install"]
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
def test_the_threshold_slider_updates_the_labelmap_while_moving_and_everything_on_release(module):
    """ctkSliderWidget (CTK Libs/Widgets/ctkSliderWidget.h/.cpp): with tracking off it emits
    valueIsChanging while dragged and valueChanged once released."""
    source = _module_source(module)
    assert "self.ui.thresholdSlider.tracking = False" in source
    assert "thresholdSlider.valueIsChanging.connect(lambda value: self.onThresholdChanged(value, True))" in source
    assert "thresholdSlider.valueChanged.connect(lambda value: self.onThresholdChanged(value, False))" in source
    assert "interactive=interactive)" in source


@pytest.mark.parametrize("module", MODULES)
def test_each_module_offers_the_phantom_on_first_open(module):
    source = _module_source(module)
    assert "+ sampledata.HELP)" in source and "sampledata.registerAtStartup(self)" in source
    assert "sampledata.loadPhantom()" in source or module == "AutoSegTraining"  # its self-test trains on phantom cases
    help_text = (LIB / "sampledata.py").read_text()
    assert "nothing is downloaded" in help_text and "uris=[]" in help_text


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
