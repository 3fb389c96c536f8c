"""Python packages the engine needs inside Slicer, and installing the missing ones after a confirmation.

Slicer ships numpy, SimpleITK, pydicom and vtk; torch comes from the PyTorch extension (its PyTorchUtils
module picks the build that fits the GPU driver); the rest is pip-installed on first use. torch is installed
first: monai depends on torch, and pip would otherwise pull a generic torch build instead of the one
PyTorchUtils chooses. The dialogs and the installers are passed in as callables, so this module imports
neither ``qt`` nor the Slicer app.

PyTorchUtils API used (SlicerPyTorch, ``PyTorchUtils/PyTorchUtils.py``, class ``PyTorchUtilsLogic``):
``torchInstalled()`` (static, bool: presence only, it imports torch and reads no version), ``installTorch(askConfirmation=False, forceComputationBackend=None,
torchVersionRequirement=None, torchvisionVersionRequirement=None)`` returning the ``torch`` module, or
``None`` when the user declined, and the ``torch`` property (imports torch). SlicerMONAIAuto3DSeg's
``MONAIAuto3DSegLib/dependency_handler.py`` installs in the same order: torch first, stop when
``installTorch`` returns None, then pip. ``installTorch`` passes ``torchVersionRequirement`` to
light-the-torch as ``torch<requirement>`` (``_getPipInstallArguments``), so an installed torch below the
requirement is upgraded by it; the installed version is read here from the distribution's metadata (as
``torchInstalled`` finds the distribution), without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
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


def torch_version() -> Optional[str]:
    """Version string of the installed torch distribution (``importlib.metadata``; torch is not imported),
    or None when there is none."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple:
    """The release numbers of a version string: '2.0.1+cu118' -> (2, 0, 1); '2.1.0rc1' -> (2, 1, 0)."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if m is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def version_satisfies(version: str, requirement: str) -> bool:
    """Whether ``version`` meets ``requirement``: comma-separated clauses of ``>=``, ``>``, ``<=``, ``<``,
    ``==`` or ``!=`` and a version (e.g. ``">=2.1"``); release numbers are compared, shorter ones padded with
    zeros (local and pre-release parts are ignored)."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in requirement.split(","))):
        m = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*(\S+)", clause)
        if m is None:
            raise ValueError(f"unsupported requirement clause: {clause!r}")
        op, want = m.group(1), _release(m.group(2))
        n = max(len(have), len(want))
        a, b = have + (0,) * (n - len(have)), want + (0,) * (n - len(want))
        if not {">=": a >= b, "<=": a <= b, "==": a == b, "!=": a != b, ">": a > b, "<": a < b}[op]:
            return False
    return True


def torch_problem(requirement: str = TORCH_REQUIREMENT) -> Optional[str]:
    """None when torch is importable and its installed version meets ``requirement``; ``"missing"`` when it
    cannot be imported; else the installed version (too old)."""
    if torch_missing():
        return "missing"
    version = torch_version()
    if version is not None and not version_satisfies(version, requirement):
        return version
    return None


def _pip_arguments(requirements: List[str]) -> str:
    """One ``pip install`` argument string; requirements with version operators are quoted (Slicer's
    ``pip_install`` splits a string the way a shell does)."""
    return " ".join(f'"{r}"' if any(c in r for c in "<>=") else r for r in requirements)


def ensure_dependencies(confirm: Callable[[str], bool], pip_install: Callable[[str], object],
                        install_torch: Optional[Callable[[], object]] = None, need_torch: bool = False,
                        packages: Mapping[str, str] = PACKAGES, torch_requirement: str = TORCH_REQUIREMENT) -> bool:
    """Install what is missing after ``confirm(message)`` says yes; True when everything needed is importable
    afterwards, False when the user declined or an installer did not deliver.

    torch is needed when it is missing or older than ``torch_requirement`` (then the message offers the
    upgrade). Before any question, ``install_torch.check()`` (when it has one, see :class:`TorchInstaller`)
    raises when torch cannot come at all (no PyTorch extension): the user is told that, not asked first.
    Order: torch first through ``install_torch()`` (PyTorchUtils in Slicer); when it returns None (declined or
    failed) nothing else is installed and the result is False. Only then ``pip_install("req1 req2")``
    (Slicer's ``slicer.util.pip_install``) for the packages still missing, so that what torch brought along
    is not installed again. Without ``install_torch`` a missing or old torch gives False at once, before any
    question. Exceptions of the installers propagate (the caller shows them)."""
    missing = missing_packages(packages)
    problem = torch_problem(torch_requirement) if need_torch else None
    if not missing and problem is None:
        return True
    if problem is not None:
        if install_torch is None:
            return False
        check = getattr(install_torch, "check", None)
        if check is not None:
            check()
    parts = []
    if problem == "missing":
        parts.append("PyTorch (through the PyTorch extension)")
    elif problem is not None:
        parts.append(f"an upgrade of PyTorch {problem} to torch{torch_requirement} (through the PyTorch extension)")
    if missing:
        parts.append("Python packages: " + ", ".join(missing))
    if not confirm("AutoSegSensitivity needs to install " + " and ".join(parts)
                   + ". This may take several minutes. Install now?"):
        return False
    if problem is not None:
        if install_torch() is None:  # type: ignore[misc]  # checked above
            return False
        importlib.invalidate_caches()
        missing = missing_packages(packages)
    if missing:
        pip_install(_pip_arguments(missing))
    importlib.invalidate_caches()
    return not missing_packages(packages) and not (need_torch and torch_problem(torch_requirement) is not None)


def pytorch_utils_logic() -> Any:
    """A ``PyTorchUtilsLogic`` of the PyTorch extension; RuntimeError naming the extension when it is not
    installed (only inside Slicer with that extension)."""
    try:
        module = importlib.import_module("PyTorchUtils")
    except ModuleNotFoundError as exc:
        raise RuntimeError("This module needs the PyTorch extension: install it from the Extensions Manager "
                           "and restart Slicer.") from exc
    return module.PyTorchUtilsLogic()


class TorchInstaller:
    """The ``install_torch`` of :func:`ensure_dependencies`, built on PyTorchUtils.

    ``check()`` creates the logic (``make_logic()``): RuntimeError naming the PyTorch extension when it is
    not installed, asked before any question. Calling it returns ``logic.torch`` when the installed torch
    meets ``version_requirement`` and ``logic.torchInstalled()``; else (missing, or older: the old torch is
    not imported) ``logic.installTorch(askConfirmation=ask_confirmation,
    torchVersionRequirement=version_requirement)``: the torch module, or None when the user declined or the
    install failed. RuntimeError when the torch module it returns is still below the requirement (an old
    torch was already loaded in this session: Slicer must be restarted)."""

    def __init__(self, make_logic: Callable[[], Any] = pytorch_utils_logic, version_requirement: str = TORCH_REQUIREMENT,
                 ask_confirmation: bool = True) -> None:
        self.make_logic = make_logic
        self.version_requirement = version_requirement
        self.ask_confirmation = ask_confirmation
        self._logic: Any = None

    def logic(self) -> Any:
        if self._logic is None:
            self._logic = self.make_logic()
        return self._logic

    def check(self) -> None:
        """Raise RuntimeError (naming the PyTorch extension) when torch cannot be installed at all."""
        self.logic()

    def __call__(self) -> Optional[Any]:
        logic = self.logic()
        version = torch_version()
        if (version is None or version_satisfies(version, self.version_requirement)) and logic.torchInstalled():
            return logic.torch
        torch = logic.installTorch(askConfirmation=self.ask_confirmation,
                                   torchVersionRequirement=self.version_requirement)
        loaded = getattr(torch, "__version__", None)
        if isinstance(loaded, str) and not version_satisfies(loaded, self.version_requirement):
            raise RuntimeError(f"PyTorch {torch_version()} is installed, but this session still runs torch {loaded}: "
                               "restart Slicer to use it.")
        return torch


def torch_installer(make_logic: Callable[[], Any] = pytorch_utils_logic, version_requirement: str = TORCH_REQUIREMENT,
                    ask_confirmation: bool = True) -> TorchInstaller:
    """A :class:`TorchInstaller` (nothing happens until it is checked or called)."""
    return TorchInstaller(make_logic, version_requirement, ask_confirmation)
