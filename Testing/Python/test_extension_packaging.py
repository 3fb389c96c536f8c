"""The Slicer extension's files: module folders, their CMakeLists, .ui files against the code that uses
them, the extension CMakeLists and ExtensionsIndex catalog entry (JSON), icons. Module .py files import slicer/qt
that only exist in the Slicer application, so they are parsed and compiled here, never imported."""

from __future__ import annotations

import ast
import py_compile
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["AutoSegTraining", "AutoSegIntensity", "AutoSegLocalisation", "AutoSegThreshold", "AutoSegSegmentMetrics"]


def _cmake_list(text: str, variable: str, module: str) -> list:
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert m, variable
    return [tok.replace("${MODULE_NAME}", module) for tok in m.group(1).split()]


def _png_size(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_module_folders_are_exactly_the_five_modules():
    found = sorted(p.name for p in (ROOT / "ScriptedModules").iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    assert found == sorted(MODULES)
    # no collision with Slicer's SegmentStatistics or SlicerRT's SegmentComparison
    assert not {"SegmentStatistics", "SegmentComparison"} & set(found)


@pytest.mark.parametrize("module", MODULES)
def test_module_cmakelists_lists_every_file_and_only_existing_files(module):
    folder = ROOT / "ScriptedModules" / module
    text = (folder / "CMakeLists.txt").read_text()
    assert re.search(rf"set\(MODULE_NAME {module}\)", text)
    listed = _cmake_list(text, "MODULE_PYTHON_SCRIPTS", module) + _cmake_list(text, "MODULE_PYTHON_RESOURCES", module)
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                     if p.is_file() and p.name != "CMakeLists.txt" and "__pycache__" not in p.parts)
    assert sorted(listed) == on_disk
    assert f"{module}.py" in listed and f"Resources/UI/{module}.ui" in listed and f"Resources/Icons/{module}.png" in listed
    assert "slicerMacroBuildScriptedModule" in text


def _module_ast(module):
    path = ROOT / "ScriptedModules" / module / f"{module}.py"
    return path, ast.parse(path.read_text())


@pytest.mark.parametrize("module", MODULES)
def test_module_file_compiles_and_follows_the_template(module, tmp_path):
    path, tree = _module_ast(module)
    py_compile.compile(str(path), cfile=str(tmp_path / "m.pyc"), doraise=True)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in c.bases] for name, c in classes.items()}
    assert bases[module] == ["ScriptedLoadableModule"]
    assert bases[f"{module}Widget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    assert [ast.unparse(d) for d in classes[f"{module}ParameterNode"].decorator_list] == ["parameterNodeWrapper"]
    source = path.read_text()
    # the widget delegates to a Logic class of AutoSegSensitivity.mrml and reports errors in a message box
    assert re.search(r"from AutoSegSensitivity\.mrml\.\w+_logic import \w+Logic", source)
    assert "slicer.util.tryWithErrorDisplay" in source
    assert 'categories = ["Segmentation.AutoSegSensitivity"]' in source


@pytest.mark.parametrize("module", MODULES)
def test_every_ui_name_the_code_uses_exists_in_the_ui_file(module):
    path, tree = _module_ast(module)
    ui = ET.parse(ROOT / "ScriptedModules" / module / "Resources" / "UI" / f"{module}.ui")
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Attribute) and n.value.attr == "ui"
            and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert used, "the widget uses no ui element"
    assert used <= set(names), sorted(used - set(names))
    assert ui.getroot().find("class").text == module
    # widgets bound to the parameter node name fields that the parameter node declares
    fields = {n.target.id for c in tree.body if isinstance(c, ast.ClassDef) and c.name == f"{module}ParameterNode"
              for n in c.body if isinstance(n, ast.AnnAssign)}
    bound = {p.find("string").text for p in ui.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound and bound <= fields, sorted(bound - fields)
    # every MRML widget receives the scene; a qMRMLTableView given its table node directly (no table view
    # node) needs none: Slicer v5.10.0 Libs/MRML/Widgets/qMRMLTableView.cxx l. 158-165 (v5.8.1 l. 164-171),
    # updateWidgetFromViewNode returns at once "used without view node (table node is set directly)"
    widgets = {w.get("name"): w.get("class", "") for w in ui.iter("widget")}
    mrml = {n for n, c in widgets.items() if c.startswith("qMRML") and c not in ("qMRMLWidget", "qMRMLTableView")}
    receivers = {c.find("receiver").text for c in ui.iter("connection") if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml and mrml == receivers - {n for n, c in widgets.items() if c == "qMRMLTableView"}


def test_extension_cmakelists_has_the_required_fields_and_one_subdirectory_per_module():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(AutoSegSensitivity\)", text, re.M)
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                  "EXTENSION_SCREENSHOTURLS"):
        m = re.search(rf'set\({field} "([^"]+)"\)', text)
        assert m and m.group(1).strip(), field
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text
    assert "find_package(Slicer REQUIRED)" in text and "include(${Slicer_USE_FILE})" in text
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text
    subdirs = re.findall(r"add_subdirectory\(([^)]+)\)", text)
    assert sorted(subdirs) == sorted(f"ScriptedModules/{m}" for m in MODULES)
    assert all((ROOT / s / "CMakeLists.txt").is_file() for s in subdirs)
    assert "AutoSegSensitivity/*.py" in text and "Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR" in text
    assert text.index("include(${Slicer_USE_FILE})") < text.index("add_subdirectory") < text.index("Slicer_EXTENSION_CPACK")


# Slicer's ExtensionsIndex catalog entry (``<Extension>.json``), restated from Slicer/Slicer
# ``Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json`` (the newest schema; added in Slicer commit
# a31a04c293, 2026-03-03): a draft-07 object with ``additionalProperties: false``, required ``$schema``,
# ``category`` and ``scm_url``; each property's JSON type and constraint below.
CATALOG_SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                      "slicer-extension-catalog-entry-schema-v1.0.2.json#")
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
CATALOG_PROPERTIES = {
    "$schema": ("string", None),
    "category": ("string", None),
    "scm_url": ("string", None),
    "scm_revision": ("string", None),
    "scm_type": ("string", {"enum": ["git", "local"]}),
    "build_dependencies": ("array", {"items": "string"}),
    "dicom_support_rule": ("string", None),
    "build_subdirectory": ("string", None),
    "enabled": ("boolean", None),
    "tier": ("integer", {"minimum": 1, "maximum": 5}),
}
_JSON_TYPES = {"string": lambda v: isinstance(v, str), "array": lambda v: isinstance(v, list),
               "boolean": lambda v: isinstance(v, bool),
               "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)}


def _catalog_entry_errors(entry) -> list:
    """What the schema above rejects in ``entry`` (empty when it is valid)."""
    if not isinstance(entry, dict):
        return ["not a JSON object"]
    errors = [f"missing required {k}" for k in CATALOG_REQUIRED if k not in entry]
    errors += [f"{k} is not a schema property" for k in entry if k not in CATALOG_PROPERTIES]
    for key, value in entry.items():
        if key not in CATALOG_PROPERTIES:
            continue
        kind, rule = CATALOG_PROPERTIES[key]
        if not _JSON_TYPES[kind](value):
            errors.append(f"{key} is not a JSON {kind}")
            continue
        rule = rule or {}
        if "enum" in rule and value not in rule["enum"]:
            errors.append(f"{key} not in {rule['enum']}")
        if "items" in rule and not all(_JSON_TYPES[rule["items"]](v) for v in value):
            errors.append(f"{key} items are not all {rule['items']}s")
        if "minimum" in rule and not rule["minimum"] <= value <= rule["maximum"]:
            errors.append(f"{key} out of range")
    return errors


def _catalog_entry() -> dict:
    import json

    return json.loads((ROOT / "AutoSegSensitivity.json").read_text(encoding="utf-8"))


def _cmake_field(field: str) -> str:
    m = re.search(rf'set\({field} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert m, field
    return m.group(1)


def test_catalog_entry_follows_slicers_schema_and_replaces_the_s4ext():
    entry = _catalog_entry()
    assert _catalog_entry_errors(entry) == []
    assert entry["$schema"] == CATALOG_SCHEMA_URL
    assert entry["scm_type"] == "git" and entry["scm_revision"] and entry["build_subdirectory"] == "."
    assert not list(ROOT.glob("*.s4ext")), "the retired .s4ext description must not come back"


@pytest.mark.parametrize("change, error", [
    ({"scmurl": "https://x/y.git"}, "scmurl is not a schema property"),  # the .s4ext-era key
    ({"homepage": "https://x"}, "homepage is not a schema property"),  # CMakeLists-only metadata
    ({"category": None}, "category is not a JSON string"),
    ({"tier": 0}, "tier out of range"), ({"tier": 6}, "tier out of range"),
    ({"tier": "1"}, "tier is not a JSON integer"), ({"tier": True}, "tier is not a JSON integer"),
    ({"scm_type": "svn"}, "scm_type not in"),
    ({"build_dependencies": "PyTorch"}, "build_dependencies is not a JSON array"),
    ({"build_dependencies": [1]}, "build_dependencies items are not all strings"),
    ({"enabled": 1}, "enabled is not a JSON boolean"),
])
def test_schema_checker_rejects_what_the_schema_rejects(change, error):
    entry = {**_catalog_entry(), **change}
    assert any(e.startswith(error) for e in _catalog_entry_errors(entry)), _catalog_entry_errors(entry)
    for key in CATALOG_REQUIRED:
        missing = {k: v for k, v in _catalog_entry().items() if k != key}
        assert _catalog_entry_errors(missing) == [f"missing required {key}"]


def test_catalog_entry_agrees_with_the_cmakelists():
    entry = _catalog_entry()
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\((\w+)\)", cmake, re.M).group(1) + ".json" == "AutoSegSensitivity.json"
    assert entry["category"] == _cmake_field("EXTENSION_CATEGORY")
    depends = _cmake_field("EXTENSION_DEPENDS").split()
    assert entry["build_dependencies"] == ([] if depends == ["NA"] else depends) == ["PyTorch"]
    repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(\.git)?", entry["scm_url"]).group(1)
    assert re.fullmatch(rf"https://github\.com/{re.escape(repo)}(#\w+)?", _cmake_field("EXTENSION_HOMEPAGE"))
    images = [_cmake_field("EXTENSION_ICONURL")] + _cmake_field("EXTENSION_SCREENSHOTURLS").split()
    for url in images:  # the images come from the revision that the index builds
        assert url.startswith(f"https://raw.githubusercontent.com/{repo}/{entry['scm_revision']}/"), url
    assert _cmake_field("EXTENSION_STATUS") == "Beta"


def test_icons_are_png_and_the_extension_icon_is_128_square():
    assert _png_size(ROOT / "Resources" / "Icons" / "AutoSegSensitivity.png") == (128, 128)
    for module in MODULES:
        w, h = _png_size(ROOT / "ScriptedModules" / module / "Resources" / "Icons" / f"{module}.png")
        assert w == h and w >= 32


def test_mrml_layer_never_imports_qt_and_loads_without_slicer():
    for path in (ROOT / "AutoSegSensitivity" / "mrml").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {"qt", "ctk", "PythonQt"} & imported, path.name
        top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        assert "slicer" not in top and "vtk" not in top, f"{path.name} imports slicer/vtk at import time"
    code = ("import sys, AutoSegSensitivity.mrml, AutoSegSensitivity.mrml.nodes, AutoSegSensitivity.mrml.training_logic;"
            "assert 'slicer' not in sys.modules and 'qt' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_icon_and_screenshot_urls_point_at_files_in_the_repository() -> None:
    """The ExtensionsIndex shows these images: each URL's path after the branch must exist here."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "CMakeLists.txt").read_text()
    urls = re.findall(r"https://raw\.githubusercontent\.com/\S+?/main/([^\s\"]+)", text)
    assert any("Screenshots" in u for u in urls) and any("Icons" in u for u in urls)
    for rel in urls:
        assert (root / rel).is_file(), f"{rel} is named in the extension metadata but missing"


# ---- the Extensions Index pull-request check (issue 19, finding 1) ---------------------------------------
# Restated from Slicer/ExtensionsIndex ``scripts/check_description_files.py`` (main, commit 07f1d1b, 2026-08-07):
# * ``check_license_file`` (l. 486-507): one of these files at the root of the cloned repository, else
#   "No license file found in repository root."
# * ``check_git_repository_name`` (l. 205-234): the last path part of ``scm_url`` without its extension must
#   start with one of ``allowed_prefixes`` (l. 222).
# * ``check_extension_name`` (l. 189-203): the extension's name (the .json file's name) must not start with
#   "slicer" (case-insensitive).
INDEX_LICENSE_FILE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
INDEX_REPOSITORY_PREFIXES = ["Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_"]


def _index_repository_name(scm_url: str) -> str:
    """The repository name as check_git_repository_name reads it from scm_url (l. 211-212)."""
    import os
    import urllib.parse

    url = scm_url.strip().strip("/")
    return os.path.splitext(urllib.parse.urlsplit(url).path.split("/")[-1])[0]


def _index_license_file(root: Path):
    """The licence file check_license_file finds at ``root`` (l. 488-494), or None."""
    return next((root / n for n in INDEX_LICENSE_FILE_NAMES if (root / n).is_file()), None)


def test_index_rule_readers_reject_what_the_index_rejects(tmp_path):
    assert _index_repository_name("https://github.com/o/AutoSegSensitivity.git") == "AutoSegSensitivity"
    assert _index_repository_name("https://github.com/o/SlicerX.git/") == "SlicerX"
    assert not any(_index_repository_name("https://github.com/o/AutoSegSensitivity.git").startswith(p)
                   for p in INDEX_REPOSITORY_PREFIXES)
    assert _index_license_file(tmp_path) is None
    (tmp_path / "COPYING").write_text("x")
    assert _index_license_file(tmp_path) == tmp_path / "COPYING"


def test_the_repository_has_the_licence_file_the_index_checks_for():
    found = _index_license_file(ROOT)
    assert found == ROOT / "LICENSE", found
    text = found.read_text()
    # the Apache License 2.0 as pyproject.toml declares it, whole (its nine sections and the appendix)
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    for section in range(1, 10):
        assert f"\n   {section}. " in text, section
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text


def test_the_extension_packages_its_own_licence_not_slicers():
    """Slicer/Slicer ``CMake/UseSlicer.cmake.in`` (v5.10.0 l. 381-383, v5.8.1 l. 387-389): ``if(NOT DEFINED
    EXTENSION_LICENSE_FILE) set(EXTENSION_LICENSE_FILE ${Slicer_LICENSE_FILE})``, and
    ``CMake/SlicerExtensionCPack.cmake`` (v5.10.0 l. 49-54, 136) packages it as CPACK_RESOURCE_FILE_LICENSE
    and stops when the file does not exist: so it is set, to this repository's LICENSE, before
    ``include(${Slicer_USE_FILE})``."""
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"^set\(EXTENSION_LICENSE_FILE (\S+)\)", text, re.M)
    assert m, "EXTENSION_LICENSE_FILE is not set: Slicer's licence would be packaged"
    assert m.group(1) == "${CMAKE_CURRENT_SOURCE_DIR}/LICENSE" and (ROOT / "LICENSE").is_file()
    assert m.start() < text.index("include(${Slicer_USE_FILE})")
    readme = re.search(r"^set\(EXTENSION_README_FILE (\S+)\)", text, re.M)
    assert readme and readme.group(1) == "${CMAKE_CURRENT_SOURCE_DIR}/README.md"
    assert readme.start() < text.index("include(${Slicer_USE_FILE})")


def test_the_catalog_entry_names_a_repository_the_index_accepts_and_the_readme_says_so():
    """The entry's scm_url names the repository; the index wants that name to start with "Slicer" and the
    extension's name not to. The README names the same repository (where the project is to be published)."""
    entry = _catalog_entry()
    name = _index_repository_name(entry["scm_url"])
    assert any(name.startswith(p) for p in INDEX_REPOSITORY_PREFIXES), name
    extension = (ROOT / "AutoSegSensitivity.json").stem
    assert not extension.lower().startswith("slicer")
    owner_repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(\.git)?", entry["scm_url"]).group(1)
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"https://github\.com/([\w.-]+/Slicer[\w.-]*)", readme))
    assert named == {owner_repo}, named
    assert "check_description_files.py" in readme and '"Slicer"' in readme


# ---- the generated per-module tests (issue 19, finding 2) ------------------------------------------------
# Every module's CMakeLists builds it ``WITH_GENERIC_TESTS``, which (Slicer/Slicer
# ``CMake/SlicerMacroBuildScriptedModule.cmake`` v5.10.0 l. 109-121) adds the test generated from
# ``Base/QTCore/Testing/Python/qSlicerModuleGenericTest.py.in`` (v5.10.0 and v5.8.1 l. 30-37):
# ``test_categories``: categories != "", ``test_acknowledgementText``: acknowledgementText != "",
# ``test_contributors``: contributors != "".
def _parent_assignments(module: str) -> dict:
    """``self.parent.<attr> = <literal>`` in the module class's __init__, evaluated with ast."""
    _, tree = _module_ast(module)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == module)
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    found = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = ast.unparse(node.targets[0])
            if target.startswith("self.parent."):
                try:
                    found[target[len("self.parent."):]] = ast.literal_eval(node.value)
                except ValueError:  # e.g. helpText + sampledata.HELP
                    found[target[len("self.parent."):]] = ast.unparse(node.value)
    return found


@pytest.mark.parametrize("module", MODULES)
def test_each_module_passes_the_generic_tests_assertions(module):
    text = (ROOT / "ScriptedModules" / module / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in text  # so the generated test runs for this module
    parent = _parent_assignments(module)
    for attr in ("acknowledgementText", "categories", "contributors"):
        assert attr in parent, attr
        assert isinstance(parent[attr], (str, list)) and parent[attr] != "" and parent[attr] != [], (attr, parent[attr])
    assert parent["acknowledgementText"].strip()


# ---- the other checks of the Extensions Index pull-request check (review of issue 19, finding 1) ----------
# Slicer/ExtensionsIndex ``scripts/check_description_files.py`` (main, commit 07f1d1b), the checks ``main``
# runs (l. 628-640) besides the three above and the schema restated at the top of this file.
INDEX_ACCEPTED_CATEGORIES_EXCERPT = ["Segmentation", "Utilities", "Radiotherapy", "Quantification"]  # l. 802-864
INDEX_PROJECT_PATTERN = r'project\s*\(\s*([^\s\)\n\r]+)'  # l. 402
INDEX_ICON_URL_PATTERN = r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)'  # l. 424
INDEX_SCREENSHOT_URLS_PATTERN = r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)'  # l. 440


def test_index_json_file_format_is_json_with_lf_line_endings():
    """check_json_file_format (l. 97-114): the description file parses as JSON and has no CR byte."""
    import json

    data = (ROOT / "AutoSegSensitivity.json").read_bytes()
    json.loads(data.decode("utf-8"))
    assert b"\r" not in data
    attributes = ROOT / ".gitattributes"  # a checkout must not turn it into CRLF either
    assert not attributes.is_file() or "eol=crlf" not in attributes.read_text()


def test_index_category_and_scm_url_syntax():
    """check_category (l. 168-172): the category is one of ACCEPTED_EXTENSION_CATEGORIES (l. 802-864, which
    lists "Segmentation"); check_scm_url_syntax (l. 175-187): scm_url has "://" and the scheme git or https."""
    import urllib.parse

    entry = _catalog_entry()
    assert entry["category"] in INDEX_ACCEPTED_CATEGORIES_EXCERPT and entry["category"] == "Segmentation"
    assert "://" in entry["scm_url"] and urllib.parse.urlsplit(entry["scm_url"]).scheme in ("git", "https")


def test_index_cmakelists_content_is_found_by_the_index_patterns():
    """check_cmakelists_content (l. 369-460): the first ``project(`` names the extension (the .json file's
    name), and EXTENSION_ICONURL / EXTENSION_SCREENSHOTURLS are found by the index's own patterns (the
    images are then downloaded: they must exist at the published repository, see the URL tests above)."""
    text = (ROOT / "CMakeLists.txt").read_text()
    projects = re.findall(INDEX_PROJECT_PATTERN, text, re.IGNORECASE | re.MULTILINE)
    assert projects and projects[0].strip().strip('"').strip("'") == (ROOT / "AutoSegSensitivity.json").stem
    icon = re.findall(INDEX_ICON_URL_PATTERN, text, re.IGNORECASE | re.MULTILINE)
    assert icon and icon[0].strip() == _cmake_field("EXTENSION_ICONURL") and icon[0].startswith("http")
    shots = re.findall(INDEX_SCREENSHOT_URLS_PATTERN, text, re.IGNORECASE | re.MULTILINE)
    assert shots and shots[0].split() == _cmake_field("EXTENSION_SCREENSHOTURLS").split()
    assert all(u.lower().endswith((".png", ".jpg", ".jpeg", ".gif")) for u in icon + shots[0].split())


def test_index_repository_size_is_far_below_the_limit():
    """check_repository_size (l. 463-483): the cloned repository must not exceed 100 MB. The tracked files
    (what a clone checks out) are counted here; test data stays out of the repository (fetch_test_data.py)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / p for p in listed.decode().split("\0") if p]
    total = sum(p.stat().st_size for p in files if p.is_file())
    assert total < 20 * 1024 * 1024, f"{total / 1048576:.1f} MB tracked"


def test_index_build_dependencies_are_extensions_of_the_index():
    """check_dependencies (l. 510-547): every build_dependencies name must be the name of a description file
    of the index; ``PyTorch.json`` is there (scm_url https://github.com/fepegar/SlicerPyTorch.git)."""
    assert _catalog_entry()["build_dependencies"] == ["PyTorch"]


def test_the_readme_says_the_repository_needs_the_index_topic():
    """check_git_repository_topics (l. 236-272): a GitHub repository must carry the topic
    "3d-slicer-extension" (read from the GitHub API), which no file of the repository can hold: the README
    says so where it lists what the index needs."""
    readme = (ROOT / "README.md").read_text()
    part = readme[readme.index("check_description_files.py"):]
    part = part[:part.index("\n\n")]
    assert "3d-slicer-extension" in part and "topic" in part
