"""The confirmed dependency step of every module, built from Slicer's dialogs, Slicer's pip and the
PyTorch extension's installer (Slicer-side wrapper of ``AutoSegSensitivity.mrml.dependencies``)."""

from __future__ import annotations

import slicer

TORCH_VERSION_REQUIREMENT = ">=2.1"
"""The torch versions the engine supports (as in pyproject.toml), handed to PyTorchUtils."""


def installTorch():
    """torch through the PyTorch extension (PyTorchUtils picks the build that fits the GPU driver).
    Returns the torch module, or None when the user declined or the install failed."""
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        slicer.util.errorDisplay("This module needs the PyTorch extension: install 'PyTorch' from the "
                                 "Extensions Manager, restart Slicer and try again.")
        return None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if logic.torchInstalled():
        return logic.torch
    return logic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)


def ensureDependencies(needTorch: bool = False) -> bool:
    """True when everything the action needs is importable, after installing what is missing with the
    user's consent (torch first, then pip). False, with a message shown, when anything failed; the action
    must then change nothing."""
    from AutoSegSensitivity.mrml import dependencies

    packages = dependencies.PACKAGES if needTorch else dependencies.CORE_PACKAGES
    try:
        ok = dependencies.ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install,
                                              install_torch=installTorch, need_torch=needTorch, packages=packages)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False
    if not ok:
        slicer.util.showStatusMessage("AutoSegSensitivity: the packages this action needs are not installed; "
                                      "nothing was changed.", 5000)
    return ok
