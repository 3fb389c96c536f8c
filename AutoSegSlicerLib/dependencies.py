"""The confirmed dependency step of every module, built from Slicer's dialogs, Slicer's pip and the
PyTorch extension's installer (Slicer-side wrapper of ``AutoSegSensitivity.mrml.dependencies``, whose
``torch_installer`` asks PyTorchUtils for torch first and is tested there)."""

from __future__ import annotations

import slicer

def ensureDependencies(needTorch: bool = False) -> bool:
    """True when everything the action needs is importable, after installing what is missing with the
    user's consent (torch first, then pip). False, with a message shown, when anything failed; the action
    must then change nothing."""
    from AutoSegSensitivity.mrml import dependencies

    packages = dependencies.PACKAGES if needTorch else dependencies.CORE_PACKAGES
    try:
        ok = dependencies.ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install,
                                              install_torch=dependencies.torch_installer(), need_torch=needTorch,
                                              packages=packages)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False
    if not ok:
        slicer.util.showStatusMessage("AutoSegSensitivity: the packages this action needs are not installed; "
                                      "nothing was changed.", 5000)
    return ok
