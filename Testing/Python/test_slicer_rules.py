"""Slicer's parameter-node rules, stated once as a table, checked against every module's parameter node
and .ui file.

The modules cannot be imported here (they need the Slicer application), so the parameter-node class is
read with ``ast`` (field, type, ``Annotated[...]`` metadata, default) and the .ui file as XML (widget
class, ``SlicerParameterName`` dynamic property, limits). Each rule cites the Slicer source it comes
from: Slicer/Slicer at tag v5.8.1 and v5.10.0 (the line numbers are those of v5.10.0 unless said),
``Base/Python/slicer/parameterNodeWrapper/``:

* ``wrapper.py`` ``_connectGui`` / ``_connectParametersToGui`` (l. 192-256): every widget with a
  ``SlicerParameterName`` gets a connector, all at once; one that cannot be made fails ``connectGui``
  and no widget is bound.
* ``guiConnectors.py`` ``createGuiConnector`` (l. 126-150): no connector for (widget class, type) ->
  RuntimeError "Unable to create GUI connector".
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["AutoSegTraining", "AutoSegIntensity", "AutoSegLocalisation", "AutoSegThreshold", "AutoSegSegmentMetrics"]

PATH_TYPES = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}
OPTIONAL_PATH_TYPES = {f"Optional[{p}]" for p in PATH_TYPES}
"""``Optional[Path]`` fields: stored by serializers.py's UnionSerializer + NoneSerializer (v5.10.0 l. 899-1054,
v5.8.1 l. 828-975; default None for ``Optional[X]``), shown by this project's connector
(AutoSegSlicerLib/widgets.py registerOptionalPathConnector): Slicer has no connector for them."""
NODE = "vtkMRML*Node"  # any MRML node class (or a Union of them)


@dataclass(frozen=True)
class Rule:
    """What a widget class accepts when bound to a parameter-node field."""

    types: frozenset            # accepted field types (unannotated), in v5.8.1 (the oldest supported)
    bounds_required: bool       # the connector raises unless the field has WithinRange or Minimum+Maximum
    bounds_overwrite_ui: bool   # the connector sets the widget's limits from the field (+-inf / +-2**31 if none)
    source: str                 # where Slicer says so
    choice_required: bool = False  # the connector raises unless the field has a Choice annotation


GUI = "Base/Python/slicer/parameterNodeWrapper/guiConnectors.py"
RULES: Dict[str, Rule] = {
    "QCheckBox": Rule(frozenset({"bool"}), False, False,
                      f"{GUI} QCheckBoxToBoolConnector.canRepresent (v5.10.0 l. 162-166, v5.8.1 l. 156)"),
    "ctkCheckBox": Rule(frozenset({"bool"}), False, False, f"{GUI} QCheckBoxToBoolConnector (v5.10.0 l. 165)"),
    "QSpinBox": Rule(frozenset({"int"}), False, True,
                     f"{GUI} QSliderOrSpinBoxToIntConnector (v5.10.0 l. 276-321: setRange from WithinRange, "
                     "else Minimum/Maximum, else -2**31 .. 2**31-1)"),
    "QSlider": Rule(frozenset({"int"}), True, True,
                    f"{GUI} QSliderOrSpinBoxToIntConnector (v5.10.0 l. 306-307 'Cannot have a connection to QSlider "
                    "where the int type is unbounded', v5.8.1 l. 256)"),
    # v5.10.0 accepts float and int here (QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector, l. 340-346);
    # v5.8.1 only float (QDoubleSpinBoxCtkSliderWidgetToFloatConnector, l. 289-295)
    "QDoubleSpinBox": Rule(frozenset({"float"}), False, True,
                           f"{GUI} QDoubleSpinBoxCtkSliderWidgetToFloat(Int)Connector (v5.10.0 l. 382-393: "
                           "minimum/maximum from the field, else -inf / inf)"),
    "ctkDoubleSpinBox": Rule(frozenset({"float"}), False, True, f"{GUI} (v5.10.0 l. 343-346, 382-393)"),
    "qMRMLSpinBox": Rule(frozenset({"float"}), False, True, f"{GUI} (v5.10.0 l. 343-346, 382-393)"),
    "ctkDoubleSlider": Rule(frozenset({"float"}), False, True, f"{GUI} (v5.10.0 l. 343-346, 382-393)"),
    "ctkSliderWidget": Rule(frozenset({"float"}), True, True,
                            f"{GUI} (v5.10.0 l. 379-380 'Cannot have a connection to ctkSliderWidget where the "
                            "float types is unbounded', v5.8.1 l. 322-323)"),
    "qMRMLSliderWidget": Rule(frozenset({"float"}), True, True, f"{GUI} (v5.10.0 l. 379-380)"),
    "QLineEdit": Rule(frozenset({"str"}), False, False, f"{GUI} QLineEditToStrConnector (v5.10.0 l. 515-519)"),
    "ctkPathLineEdit": Rule(frozenset(PATH_TYPES | OPTIONAL_PATH_TYPES), False, False,
                            f"{GUI} ctkPathLineEditToPathConnector (v5.10.0 l. 673-705; read() is "
                            "Path(currentPath): an empty field reads Path('.'), write() shows str(Path()) = '.'); "
                            "Optional[Path]: AutoSegSlicerLib/widgets.py registerOptionalPathConnector"),
    "ctkDirectoryButton": Rule(frozenset(PATH_TYPES), False, False,
                               f"{GUI} ctkDirectoryButtonToPathConnector (v5.10.0 l. 709-741)"),
    "QComboBox": Rule(frozenset({"str", "int", "float", "bool"}), False, False,
                      f"{GUI} QComboBoxToStringableConnector (v5.10.0 l. 418-463, v5.8.1 l. 355-400: 'requires the "
                      "Choice annotation'; clears the combo box and adds the choices in order)", choice_required=True),
    "qMRMLNodeComboBox": Rule(frozenset({NODE}), False, False,
                              f"{GUI} qMRMLNodeComboBoxToNodeConnector (v5.10.0 l. 745-776; sets nodeTypes from "
                              "the field's type, overriding the .ui)"),
}
"""Widget class -> what Slicer's GUI connectors accept. A bound widget of a class not listed here has
no connector (``createGuiConnector`` raises)."""

SERIALIZABLE = {"bool", "int", "float", "str", NODE} | PATH_TYPES | OPTIONAL_PATH_TYPES
"""Field types Slicer's serializers store (``serializers.py``: NumberSerializer/StringSerializer/
BoolSerializer, PathSerializer l. 312-331 whose default is ``Path()``, NodeSerializer, UnionSerializer)."""

BOUNDS = {"WithinRange", "Minimum", "Maximum"}  # validators.py l. 83-124 (WithinRange(min, max), Minimum, Maximum)


# ---- reading the modules ---------------------------------------------------------------------------------
@dataclass
class FieldInfo:
    name: str
    type: str                                   # unannotated type name (NODE for MRML node classes)
    node_type: Optional[str] = None             # the vtkMRML class name for node fields
    annotations: Dict[str, tuple] = field(default_factory=dict)  # "WithinRange" -> (0.0, 1.0)
    default: object = None

    @property
    def bounds(self) -> Optional[Tuple[float, float]]:
        if "WithinRange" in self.annotations:
            return tuple(float(v) for v in self.annotations["WithinRange"])
        if "Minimum" in self.annotations and "Maximum" in self.annotations:
            return float(self.annotations["Minimum"][0]), float(self.annotations["Maximum"][0])
        return None


def _type_name(node: ast.expr) -> str:
    name = ast.unparse(node).split(".")[-1]
    return NODE if name.startswith("vtkMRML") and name.endswith("Node") else name


def parameter_fields(module: str, root: Path = ROOT) -> Dict[str, FieldInfo]:
    """The annotated fields of ``<module>ParameterNode`` in the module's .py file."""
    tree = ast.parse((root / "ScriptedModules" / module / f"{module}.py").read_text())
    cls = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == f"{module}ParameterNode")
    fields = {}
    for stmt in cls.body:
        if not isinstance(stmt, ast.AnnAssign):
            continue
        ann, metadata = stmt.annotation, []
        if isinstance(ann, ast.Subscript) and ast.unparse(ann.value).split(".")[-1] == "Annotated":
            ann, *metadata = ann.slice.elts
        info = FieldInfo(stmt.target.id, _type_name(ann))
        if info.type == NODE:
            info.node_type = ast.unparse(ann).split(".")[-1]
        for m in metadata:
            if isinstance(m, ast.Call):
                info.annotations[ast.unparse(m.func).split(".")[-1]] = tuple(ast.literal_eval(a) for a in m.args)
        if stmt.value is not None:
            info.default = ast.literal_eval(stmt.value) if not isinstance(stmt.value, ast.Call) else ast.unparse(stmt.value)
        fields[info.name] = info
    return fields


@dataclass
class BoundWidget:
    name: str
    cls: str
    parameter: str
    props: Dict[str, object]


def _prop_value(prop: ET.Element):
    child = list(prop)[0]
    if child.tag in ("double", "number"):
        return float(child.text)
    if child.tag == "stringlist":
        return [s.text for s in child]
    return child.text


def bound_widgets(module: str, root: Path = ROOT) -> List[BoundWidget]:
    """Widgets of the module's .ui that carry a ``SlicerParameterName`` dynamic property."""
    ui = ET.parse(root / "ScriptedModules" / module / "Resources" / "UI" / f"{module}.ui")
    found = []
    for w in ui.iter("widget"):
        props = {p.get("name"): _prop_value(p) for p in w.findall("property") if len(p)}
        if "SlicerParameterName" in props:
            found.append(BoundWidget(w.get("name"), w.get("class"), props["SlicerParameterName"], props))
    return found


# ---- the checks ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_every_bound_widget_has_a_connector_for_its_field(module):
    """connectGui binds every widget at once: one widget without a connector unbinds them all."""
    fields = parameter_fields(module)
    problems = []
    for w in bound_widgets(module):
        f = fields.get(w.parameter)
        if f is None:
            problems.append(f"{w.name}: no field {w.parameter!r}")
        elif w.cls not in RULES:
            problems.append(f"{w.name}: Slicer has no connector for {w.cls}")
        elif f.type not in RULES[w.cls].types:
            problems.append(f"{w.name} ({w.cls}) cannot show {w.parameter}: {f.type} ({RULES[w.cls].source})")
    assert not problems, problems


@pytest.mark.parametrize("module", MODULES)
def test_bounded_widgets_get_the_bounds_the_domain_needs(module):
    """Sliders raise without bounds; spin boxes and sliders take their limits from the field and lose the
    .ui limits: every such field carries bounds, equal to the .ui's, with its default inside."""
    fields = parameter_fields(module)
    problems = []
    for w in bound_widgets(module):
        rule, f = RULES.get(w.cls), fields.get(w.parameter)
        if rule is None or f is None or not (rule.bounds_required or rule.bounds_overwrite_ui):
            continue
        if f.bounds is None:
            kind = "raises in connectGui" if rule.bounds_required else "would wipe the .ui limits"
            problems.append(f"{w.parameter} on {w.cls} has no WithinRange/Minimum+Maximum: {kind} ({rule.source})")
            continue
        lo, hi = f.bounds
        ui_limits = (w.props.get("minimum"), w.props.get("maximum"))
        if ui_limits != (None, None) and ui_limits != (lo, hi):
            problems.append(f"{w.parameter}: bounds {(lo, hi)} differ from the .ui limits {ui_limits}")
        if f.default is not None and not lo <= f.default <= hi:
            problems.append(f"{w.parameter}: default {f.default} outside {(lo, hi)}")
    assert not problems, problems


@pytest.mark.parametrize("module", MODULES)
def test_node_and_path_fields_are_shown_by_the_widgets_made_for_them(module):
    """A path field goes to a ctkPathLineEdit/ctkDirectoryButton, a node field to a qMRMLNodeComboBox whose
    .ui nodeTypes are the field's class (the connector overrides them anyway)."""
    fields = parameter_fields(module)
    problems = []
    for w in bound_widgets(module):
        f = fields.get(w.parameter)
        if f is None:
            continue
        if f.type in PATH_TYPES | OPTIONAL_PATH_TYPES and w.cls not in ("ctkPathLineEdit", "ctkDirectoryButton"):
            problems.append(f"path field {f.name} on {w.cls}")
        if f.type == NODE:
            if w.cls != "qMRMLNodeComboBox":
                problems.append(f"node field {f.name} on {w.cls}")
            elif w.props.get("nodeTypes") not in (None, [f.node_type]):
                problems.append(f"{w.name} nodeTypes {w.props.get('nodeTypes')} but field {f.node_type}")
    assert not problems, problems


@pytest.mark.parametrize("module", MODULES)
def test_every_field_type_is_serializable(module):
    """Slicer stores each field in the parameter node through a serializer for its type."""
    bad = {f.name: f.type for f in parameter_fields(module).values() if f.type not in SERIALIZABLE}
    assert not bad, bad


def test_the_threshold_step_can_never_be_zero():
    """``np.arange(0, 1, step)`` raises on step 0: the step's lower bound is above 0."""
    step = parameter_fields("AutoSegThreshold")["step"]
    assert step.bounds is not None and step.bounds[0] > 0


def test_the_rules_table_reads_what_it_should():
    """The readers above find Annotated metadata, node types and .ui limits (on the threshold module)."""
    fields = parameter_fields("AutoSegThreshold")
    assert fields["threshold"].annotations == {"WithinRange": (0.0, 1.0)} and fields["threshold"].default == 0.5
    assert fields["liveSegmentation"].type == NODE and fields["liveSegmentation"].node_type == "vtkMRMLSegmentationNode"
    assert fields["checkpoint"].type == "Optional[Path]" and fields["checkpoint"].default is None
    slider = next(w for w in bound_widgets("AutoSegThreshold") if w.parameter == "threshold")
    assert slider.cls == "ctkSliderWidget" and (slider.props["minimum"], slider.props["maximum"]) == (0.0, 1.0)
    assert all(r.source.startswith(GUI) for r in RULES.values())


@pytest.mark.parametrize("module", MODULES)
def test_no_path_field_shows_a_dot_when_unset(module):
    """Issue 19, finding 5. A ``Path`` field defaults to ``Path()`` (serializers.py PathSerializer.default,
    v5.10.0 l. 331-332) and Slicer's connector shows it as ``str(Path())`` == '.' (guiConnectors.py
    ctkPathLineEditToPathConnector.write, l. 704-705; CTK ctkPathLineEdit.cpp setCurrentPath l. 804-816 shows
    the text as given). So every path field is ``Optional[Path] = None``, bound to a ctkPathLineEdit, whose
    connector (ours) shows None as ''."""
    fields = parameter_fields(module)
    bare = [f.name for f in fields.values() if f.type in PATH_TYPES]
    assert not bare, bare
    for w in bound_widgets(module):
        f = fields[w.parameter]
        if f.type in OPTIONAL_PATH_TYPES:
            assert w.cls == "ctkPathLineEdit" and f.default is None, (w.name, w.cls, f.default)
    assert str(Path()) == "."  # what Slicer's own connector would show


def _combo_items(module: str, widget: str) -> List[str]:
    ui = ET.parse(ROOT / "ScriptedModules" / module / "Resources" / "UI" / f"{module}.ui")
    w = next(w for w in ui.iter("widget") if w.get("name") == widget)
    return [i.find("property/string").text for i in w.findall("item")]


@pytest.mark.parametrize("module", MODULES)
def test_combo_boxes_bound_to_a_field_have_its_choices(module):
    """A QComboBox bound to a str/int/float/bool field needs a Choice annotation (validators.py ``Choice``,
    l. 126-137 in v5.8.1 and v5.10.0) or connectGui raises; the connector replaces the .ui items by the
    choices, so the .ui lists the same ones (what the designer shows), and the default is one of them."""
    fields = parameter_fields(module)
    problems = []
    for w in bound_widgets(module):
        rule, f = RULES.get(w.cls), fields.get(w.parameter)
        if rule is None or f is None or not rule.choice_required:
            continue
        if "Choice" not in f.annotations:
            problems.append(f"{w.parameter} on {w.cls} has no Choice: connectGui raises ({rule.source})")
            continue
        choices = list(f.annotations["Choice"][0])
        if f.default is not None and f.default not in choices:
            problems.append(f"{w.parameter}: default {f.default!r} not among {choices}")
        items = _combo_items(module, w.name)
        if items and items != [str(c) for c in choices]:
            problems.append(f"{w.name}: .ui items {items} differ from the choices {choices}")
    assert not problems, problems


def test_the_cohort_fields_are_read_and_match_the_engine():
    """The Cohort section of AutoSegThreshold: folds bounded as the .ui and as tune needs (>= 2), metric
    choices = the metrics ``autosegsens tune`` optimises (cohort_logic.METRICS), folders and the optional
    dataset.json on ctkPathLineEdit."""
    from AutoSegSensitivity.mrml.cohort_logic import MAX_FOLDS, METRICS, MIN_FOLDS

    fields = parameter_fields("AutoSegThreshold")
    assert fields["cohortFolds"].bounds == (MIN_FOLDS, MAX_FOLDS) and fields["cohortFolds"].default == 5
    assert tuple(fields["cohortMetric"].annotations["Choice"][0]) == METRICS and fields["cohortMetric"].default == "dice"
    widgets = {w.parameter: w for w in bound_widgets("AutoSegThreshold")}
    assert widgets["cohortMetric"].cls == "QComboBox" and widgets["cohortFolds"].cls == "QSpinBox"
    assert widgets["cohortMapsDir"].cls == widgets["cohortContoursDir"].cls == "ctkPathLineEdit"
    # the optional labels file of nnU-Net / multi-channel maps (tune --dataset-json): a file, empty = None
    assert fields["cohortDatasetJson"].type == "Optional[Path]" and fields["cohortDatasetJson"].default is None
    assert widgets["cohortDatasetJson"].cls == "ctkPathLineEdit"
    assert _combo_items("AutoSegThreshold", "cohortMetricComboBox") == list(METRICS)
