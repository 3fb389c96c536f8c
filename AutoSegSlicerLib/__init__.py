"""What the five AutoSegSensitivity Slicer modules share: finding the engine (installed, or in a clone),
the confirmed dependency step, the parameter-node wiring of the widgets and the phantom sample data.

Installed beside the modules (CMake copies it there, like the engine); in a clone it sits at the
repository root and each module puts that root on ``sys.path`` (see :mod:`.enginepath`). Only
:mod:`.enginepath` imports without Slicer; the other modules import ``slicer``, ``qt`` and ``vtk``.
"""
