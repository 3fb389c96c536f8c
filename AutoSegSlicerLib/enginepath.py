"""Finding the engine (the ``AutoSegSensitivity`` package) from a module file, without Slicer.

In a built extension the engine is installed beside the modules and imports directly. Loaded from a
clone (the ``ScriptedModules`` folder dropped on Slicer's window, or the module paths in the application
settings; see README "In 3D Slicer") the module
files are ``<root>/ScriptedModules/<Module>/<Module>.py`` and the engine is ``<root>/AutoSegSensitivity``:
the root is put at the end of ``sys.path``, so that an installed copy, when there is one, still wins.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import List, Optional, Union

ENGINE = "AutoSegSensitivity"


def source_root(module_file: Union[str, Path]) -> Path:
    """The repository root of a module file laid out as ``<root>/ScriptedModules/<Module>/<Module>.py``."""
    return Path(module_file).resolve().parents[2]


def installed_engine() -> Optional[Path]:
    """Folder of the importable ``AutoSegSensitivity`` package, or None when it cannot be imported."""
    spec = importlib.util.find_spec(ENGINE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def find_engine(module_file: Union[str, Path], path: Optional[List[str]] = None) -> Path:
    """Folder of the engine the module will use: the importable one, else the clone's
    ``<root>/AutoSegSensitivity`` (then the root is appended to ``path``, default ``sys.path``).
    Raises ModuleNotFoundError naming both places looked at when neither has it."""
    found = installed_engine()
    if found is not None:
        return found
    root = source_root(module_file)
    engine = root / ENGINE
    if not (engine / "__init__.py").is_file():
        raise ModuleNotFoundError(
            f"The AutoSegSensitivity engine is neither installed beside the modules nor at {engine} "
            f"(looked up from {module_file}); load the extension from a complete clone or build it.")
    search = sys.path if path is None else path
    if str(root) not in search:
        search.append(str(root))
    importlib.invalidate_caches()
    return engine
