"""Run the self-tests of the five AutoSegSensitivity modules inside Slicer and exit non-zero on failure.

From the clone's root:

    Slicer --no-main-window --testing --additional-module-paths ScriptedModules/AutoSegTraining \
        ScriptedModules/AutoSegIntensity ScriptedModules/AutoSegLocalisation ScriptedModules/AutoSegThreshold \
        ScriptedModules/AutoSegSegmentMetrics --python-script Testing/Slicer/run_self_tests.py

The module paths go on the command line because --testing implies --disable-settings
(Base/QTCore/qSlicerCoreCommandOptions.cxx, settingsDisabled), so paths saved in the application settings
are not read. The same holds for an installed extension: installed extensions are registered in the
revision-specific settings file, and under --testing that file is a temporary "-tmp" file that is cleared at
start (Base/QTCore/qSlicerCoreApplication.cxx, slicerRevisionUserSettingsFilePath), so an installed
AutoSegSensitivity (and PyTorch) is not loaded either. To test an installed extension, keep
--additional-module-paths and name its installed modules' folder instead of the clone's five:

    Slicer --no-main-window --testing \
        --additional-module-paths "EXTENSIONS/AutoSegSensitivity/lib/Slicer-X.Y/qt-scripted-modules" \
        --python-script Testing/Slicer/run_self_tests.py

where EXTENSIONS is the folder Slicer installs extensions into (``slicer.app.extensionsInstallPath`` in
Slicer's Python console, started normally) and X.Y is Slicer's version (Slicer_QTSCRIPTEDMODULES_LIB_DIR,
CMake/SlicerDirectories.cmake); add the PyTorch extension's folder the same way unless torch is already
installed in Slicer's Python.
--testing makes Slicer's message boxes close by themselves (slicer.util.messageBox / confirmOkCancelDisplay in
Base/Python/slicer/util.py). Each module's ScriptedLoadableModuleTest drives its widget (setup, parameter
node, button handlers) on the phantom. ScriptedLoadableModule registers each test as
``slicer.selfTests[<module>]`` (Base/Python/slicer/ScriptedLoadableModule.py); ``slicer.util.exit(status)``
ends Slicer with that status (Base/Python/slicer/util.py).
"""

import traceback

MODULES = ["AutoSegTraining", "AutoSegIntensity", "AutoSegLocalisation", "AutoSegThreshold", "AutoSegSegmentMetrics"]


def run_all():
    """Run every module's self-test; return the names of those that failed or were not found."""
    import slicer

    failed = []
    tests = getattr(slicer, "selfTests", {})
    for name in MODULES:
        test = tests.get(name)
        if test is None:
            print(f"FAIL {name}: module not loaded (no slicer.selfTests entry)", flush=True)
            failed.append(name)
            continue
        try:
            test(msec=0)
            print(f"PASS {name}", flush=True)
        except Exception:  # every failure is reported, then the next module runs
            traceback.print_exc()
            print(f"FAIL {name}", flush=True)
            failed.append(name)
    return failed


def main():
    import slicer

    try:
        failed = run_all()
    except Exception:
        traceback.print_exc()
        failed = ["(runner)"]
    print(f"{len(MODULES) - len(failed)}/{len(MODULES)} module self-tests passed", flush=True)
    slicer.util.exit(1 if failed else 0)


main()  # --python-script executes this file in Slicer's Python (qSlicerCoreApplication executeFile)
