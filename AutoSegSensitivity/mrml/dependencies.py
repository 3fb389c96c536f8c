"""Python packages the engine needs inside Slicer, and installing the missing ones after a confirmation.

Slicer ships numpy, SimpleITK, pydicom and vtk; torch comes from the PyTorch extension (its PyTorchUtils
module picks the build that fits the GPU driver); the rest is pip-installed on first use. The dialogs and
the installers are passed in as callables, so this module imports neither ``qt`` nor the Slicer app.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, Dict, List, Mapping, Optional

# import name -> pip requirement (torch is handled apart, through the PyTorch extension)
CORE_PACKAGES: Dict[str, str] = {
    "numpy": "numpy>=1.24", "scipy": "scipy>=1.10", "SimpleITK": "SimpleITK>=2.2", "pydicom": "pydicom>=2.4",
    "slicerio": "slicerio>=1.0", "yaml": "PyYAML>=6.0",
}
"""What the modules without deep learning (intensity, metrics, threshold tuning) need."""

PACKAGES: Dict[str, str] = {**CORE_PACKAGES, "monai": "monai>=1.3", "matplotlib": "matplotlib>=3.7"}
"""What training, prediction and localisation need besides torch."""


def missing_packages(packages: Mapping[str, str] = PACKAGES) -> List[str]:
    """pip requirements of the packages in ``packages`` that cannot be imported here."""
    return [req for name, req in packages.items() if importlib.util.find_spec(name) is None]


def torch_missing() -> bool:
    """True when torch cannot be imported."""
    return importlib.util.find_spec("torch") is None


def ensure_dependencies(confirm: Callable[[str], bool], pip_install: Callable[[str], object],
                        install_torch: Optional[Callable[[], object]] = None, need_torch: bool = False,
                        packages: Mapping[str, str] = PACKAGES) -> bool:
    """Install what is missing after ``confirm(message)`` says yes; return True when everything needed is
    importable afterwards. ``pip_install("req1 req2")`` installs requirements (Slicer's
    ``slicer.util.pip_install``); ``install_torch()`` installs torch (PyTorchUtils in Slicer)."""
    missing = missing_packages(packages)
    torch_needed = need_torch and torch_missing()
    if not missing and not torch_needed:
        return True
    parts = []
    if missing:
        parts.append("Python packages: " + ", ".join(missing))
    if torch_needed:
        parts.append("PyTorch (through the PyTorch extension)")
    if not confirm("AutoSegSensitivity needs to install " + " and ".join(parts)
                   + ". This may take several minutes. Install now?"):
        return False
    if missing:
        pip_install(" ".join(f'"{m}"' if any(c in m for c in "<>=") else m for m in missing))
    if torch_needed:
        if install_torch is None:
            return False
        install_torch()
    importlib.invalidate_caches()
    return not missing_packages(packages) and not (need_torch and torch_missing())
