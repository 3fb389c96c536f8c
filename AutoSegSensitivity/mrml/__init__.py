"""The MRML layer: the only part of AutoSegSensitivity that talks to Slicer's scene.

Nothing is imported from ``slicer`` when this package is imported, so the engine and its tests load
without Slicer; each sub-module imports ``slicer`` where it needs it. ``qt`` is never imported here.

* ``nodes``: volume nodes <-> Volume, segmentation nodes <-> Segmentation (on a reference grid), markups
  ROI nodes <-> Roi / Box, result rows -> table nodes, plot series and charts.
* one Logic per Slicer module: ``training_logic.TrainingLogic`` (background training / prediction
  through the CLI), ``intensity_logic.IntensityTransformLogic``, ``localisation_logic.LocalisationLogic``,
  ``threshold_logic.ThresholdTuningLogic``, ``segment_metrics_logic.SegmentMetricsLogic``.
* ``dependencies``: missing Python packages installed on first use after a confirmation.
* ``converters``: segmentation converter rules for headless MRML.
"""
