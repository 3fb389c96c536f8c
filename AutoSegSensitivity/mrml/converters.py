"""Registration of Slicer's segmentation converter rules (the one place that does it).

The Slicer application registers the binary-labelmap / closed-surface / fractional-labelmap converter
rules with ``vtkSegmentationConverterFactory`` at start-up. Outside the application (the ``slicer-core``
wheel, headless tests) nothing does, and segmentation nodes then cannot be stored or converted.
:func:`ensure_segmentation_converters` does it once; calling it again, or inside the Slicer application
where the rules already exist, changes nothing.
"""

from __future__ import annotations

from typing import List

# Rule classes that Slicer's Segmentations module registers (SlicerRT adds planar-contour rules itself).
RULE_CLASSES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)


def registered_rule_classes() -> List[str]:
    """Class names of the converter rules registered now."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    return [rule.GetClassName() for rule in factory.GetConverterRules()]


def ensure_segmentation_converters() -> List[str]:
    """Register every rule of :data:`RULE_CLASSES` that is available and not registered yet (idempotent).
    Returns the class names registered by this call (empty when nothing was missing)."""
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    added = []
    for name in RULE_CLASSES:
        if name in present:
            continue
        cls = getattr(slicer, name, None)
        if cls is None:
            continue
        factory.RegisterConverterRule(cls())
        added.append(name)
    return added
