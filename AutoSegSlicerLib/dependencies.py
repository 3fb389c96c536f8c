"""The confirmed dependency step of every module, built from Slicer's dialogs, Slicer's pip and the
PyTorch extension's installer (Slicer-side wrapper of ``AutoSegSensitivity.mrml.dependencies``, whose
``torch_installer`` asks PyTorchUtils for torch first and is tested there)."""

from __future__ import annotations

import logging
from typing import Callable, Optional

import slicer

def ensureDependencies(needTorch: bool = False, confirm: Optional[Callable[[str], bool]] = None) -> bool:
    """True when everything the action needs is importable, after installing what is missing with the
    user's consent (torch first, then pip). False, with a message shown, when anything failed; the action
    must then change nothing. ``confirm(message)`` asks the user (default: Slicer's OK/Cancel dialog)."""
    from AutoSegSensitivity.mrml import dependencies

    packages = dependencies.PACKAGES if needTorch else dependencies.CORE_PACKAGES
    try:
        ok = dependencies.ensure_dependencies(confirm or slicer.util.confirmOkCancelDisplay, slicer.util.pip_install,
                                              install_torch=dependencies.torch_installer(), need_torch=needTorch,
                                              packages=packages)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False
    if not ok:
        slicer.util.showStatusMessage("AutoSegSensitivity: the packages this action needs are not installed; "
                                      "nothing was changed.", 5000)
    return ok


def installForSelfTest(needTorch: bool = False) -> bool:
    """The first step of every module's self-test: install what the module's actions need (torch through the
    PyTorch extension when ``needTorch``), as the actions themselves would. Stock Slicer 5.8/5.10 ships numpy,
    scipy and pydicom but not slicerio, PyYAML, torch or monai. Running the self-test is the consent: the
    question is logged and answered yes here, because under ``--testing`` Slicer's dialog is skipped and its
    answer is not a plain yes (Base/Python/slicer/util.py: ``confirmOkCancelDisplay`` compares the testing
    return value True with ``qt.QMessageBox.Ok``). True when everything is importable afterwards."""

    def consent(message: str) -> bool:
        logging.info("Self-test installs: %s", message)
        return True

    return ensureDependencies(needTorch=needTorch, confirm=consent)
