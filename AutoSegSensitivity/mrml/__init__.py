"""The MRML layer: the only part of AutoSegSensitivity that talks to Slicer's scene.

Nothing is imported from ``slicer`` when this package is imported, so the engine and its tests load
without Slicer; each sub-module imports ``slicer`` where it needs it.
"""
