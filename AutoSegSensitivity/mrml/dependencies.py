"""Python packages the engine needs inside Slicer, and installing the missing ones after a confirmation.

Slicer ships numpy, SimpleITK, pydicom and vtk; torch comes from the PyTorch extension (its PyTorchUtils
module picks the build that fits the GPU driver); the rest is pip-installed on first use. torch is installed
first: monai depends on torch, and pip would otherwise pull a generic torch build instead of the one
PyTorchUtils chooses. The dialogs and the installers are passed in as callables, so this module imports
neither ``qt`` nor the Slicer app.

PyTorchUtils API used (SlicerPyTorch, ``PyTorchUtils/PyTorchUtils.py``, class ``PyTorchUtilsLogic``):
``torchInstalled()`` (static, bool), ``installTorch(askConfirmation=False, forceComputationBackend=None,
torchVersionRequirement=None, torchvisionVersionRequirement=None)`` returning the ``torch`` module, or
``None`` when the user declined, and the ``torch`` property (imports torch). SlicerMONAIAuto3DSeg's
``MONAIAuto3DSegLib/dependency_handler.py`` installs in the same order: torch first, stop when
``installTorch`` returns None, then pip.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Dict, List, Mapping, Optional

# import name -> pip requirement (torch is handled apart, through the PyTorch extension)
CORE_PACKAGES: Dict[str, str] = {
    "numpy": "numpy>=1.24", "scipy": "scipy>=1.10", "SimpleITK": "SimpleITK>=2.2", "pydicom": "pydicom>=2.4",
    "slicerio": "slicerio>=1.0", "yaml": "PyYAML>=6.0",
}
"""What the modules without deep learning (intensity, metrics, threshold tuning) need."""

PACKAGES: Dict[str, str] = {**CORE_PACKAGES, "monai": "monai>=1.3", "matplotlib": "matplotlib>=3.7"}
"""What training, prediction and localisation need besides torch."""

TORCH_REQUIREMENT = ">=2.1"
"""The torch version the engine needs (as in pyproject.toml), passed to PyTorchUtils' ``installTorch``."""


def missing_packages(packages: Mapping[str, str] = PACKAGES) -> List[str]:
    """pip requirements of the packages in ``packages`` that cannot be imported here."""
    return [req for name, req in packages.items() if importlib.util.find_spec(name) is None]


def torch_missing() -> bool:
    """True when torch cannot be imported."""
    return importlib.util.find_spec("torch") is None


def _pip_arguments(requirements: List[str]) -> str:
    """One ``pip install`` argument string; requirements with version operators are quoted (Slicer's
    ``pip_install`` splits a string the way a shell does)."""
    return " ".join(f'"{r}"' if any(c in r for c in "<>=") else r for r in requirements)


def ensure_dependencies(confirm: Callable[[str], bool], pip_install: Callable[[str], object],
                        install_torch: Optional[Callable[[], object]] = None, need_torch: bool = False,
                        packages: Mapping[str, str] = PACKAGES) -> bool:
    """Install what is missing after ``confirm(message)`` says yes; True when everything needed is importable
    afterwards, False when the user declined or an installer did not deliver.

    Order: torch first through ``install_torch()`` (PyTorchUtils in Slicer, see :func:`torch_installer`); when
    it returns None (declined or failed) nothing else is installed and the result is False. Only then
    ``pip_install("req1 req2")`` (Slicer's ``slicer.util.pip_install``) for the packages still missing, so that
    what torch brought along is not installed again. Without ``install_torch`` a missing torch gives False at
    once, before any question. Exceptions of the installers propagate (the caller shows them)."""
    missing = missing_packages(packages)
    torch_needed = need_torch and torch_missing()
    if not missing and not torch_needed:
        return True
    if torch_needed and install_torch is None:
        return False
    parts = []
    if torch_needed:
        parts.append("PyTorch (through the PyTorch extension)")
    if missing:
        parts.append("Python packages: " + ", ".join(missing))
    if not confirm("AutoSegSensitivity needs to install " + " and ".join(parts)
                   + ". This may take several minutes. Install now?"):
        return False
    if torch_needed:
        if install_torch() is None:  # type: ignore[misc]  # checked above
            return False
        importlib.invalidate_caches()
        missing = missing_packages(packages)
    if missing:
        pip_install(_pip_arguments(missing))
    importlib.invalidate_caches()
    return not missing_packages(packages) and not (need_torch and torch_missing())


def pytorch_utils_logic() -> Any:
    """A ``PyTorchUtilsLogic`` of the PyTorch extension; RuntimeError naming the extension when it is not
    installed (only inside Slicer with that extension)."""
    try:
        module = importlib.import_module("PyTorchUtils")
    except ModuleNotFoundError as exc:
        raise RuntimeError("This module needs the PyTorch extension: install it from the Extensions Manager "
                           "and restart Slicer.") from exc
    return module.PyTorchUtilsLogic()


def torch_installer(make_logic: Callable[[], Any] = pytorch_utils_logic, version_requirement: str = TORCH_REQUIREMENT,
                    ask_confirmation: bool = True) -> Callable[[], Optional[Any]]:
    """The ``install_torch`` callable of :func:`ensure_dependencies`, built on PyTorchUtils.

    Calling it creates the logic (``make_logic()``, so the PyTorch extension is imported only when torch is
    needed), returns ``logic.torch`` when ``logic.torchInstalled()``, else
    ``logic.installTorch(askConfirmation=ask_confirmation, torchVersionRequirement=version_requirement)``:
    the torch module, or None when the user declined or the install failed."""

    def install() -> Optional[Any]:
        logic = make_logic()
        if logic.torchInstalled():
            return logic.torch
        return logic.installTorch(askConfirmation=ask_confirmation, torchVersionRequirement=version_requirement)

    return install
