"""The MRML side of the review page: one opened case as nodes of a Slicer scene, and the threshold slider.

Everything goes through :mod:`AutoSegSensitivity.mrml` (one engine, two faces): the CT and the probability
map become volume nodes with ``nodes.volume_to_node``, the reference mask a segment with
``nodes.write_segment``, and the slider calls ``ThresholdTuningLogic.apply_threshold`` -- the very call the
AutoSegThreshold module's slider makes -- so the segment shown is ``p >= t`` compared in float32, written
only in the map's work box while dragging (``interactive``) and with its other representations (the 3D
surface) regenerated on release. No ``qt``; the scene is any ``vtkMRMLScene`` (a trame-slicer
``SlicerApp``'s in the page, a bare one in tests).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import numpy as np

from ..mrml import nodes
from ..mrml.threshold_logic import ThresholdTuningLogic
from ..volume import Volume
from .cohort import CaseImages

CT_NODE = "review CT"
MAP_NODE = "review probability"
REFERENCE_NODE = "review reference"
RESULT_NODE = "review threshold"

REFERENCE_COLOR = (1.0, 0.85, 0.1)
RESULT_COLOR = (0.15, 0.55, 1.0)
CT_WINDOW_LEVEL = (400.0, 40.0)
"""Soft-tissue window and level (HU) of the CT in the slice views."""


class ReviewScene:
    """The nodes of the opened case in ``scene``: CT (slice background), probability map (data only), the
    reference segment as an outline and the thresholded segment filled (and as a surface in 3D)."""

    def __init__(self, scene: Any) -> None:
        from ..mrml.converters import ensure_segmentation_converters

        ensure_segmentation_converters()  # the 3D surface needs the rules, whatever is written first
        self.scene = scene
        self.logic = ThresholdTuningLogic(scene)
        self.case: Optional[CaseImages] = None
        self.ct_node: Any = None
        self.map_node: Any = None
        self.reference_node: Any = None
        self.result_node: Any = None
        self.threshold: Optional[float] = None

    @property
    def segment_name(self) -> str:
        return self.case.structure if self.case is not None else ""

    def show_case(self, case: CaseImages, threshold: float, show_ct: Optional[Callable[[Any], None]] = None) -> None:
        """Put ``case`` into the scene (the nodes are reused from case to case) and threshold it at
        ``threshold``. ``show_ct(ct_node)`` is called before the segmentations are made: views that show
        the CT must have it as background first, or they draw the segments' fill under it, over black."""
        self.case = case
        # display nodes made before the voxels, with a fixed window/level: no automatic window/level (a
        # histogram of every voxel) is computed when the voxels arrive
        self.ct_node = nodes.volume_to_node(case.image, self.scene, CT_NODE, node=self._volume_node(CT_NODE))
        disp = self.ct_node.GetDisplayNode()
        if disp.GetColorNodeID() is None:
            disp.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
        if show_ct is not None:
            show_ct(self.ct_node)
        self.map_node = nodes.volume_to_node(case.probability, self.scene, MAP_NODE, node=self._volume_node(MAP_NODE))
        self.map_node.GetDisplayNode().SetVisibility(False)

        # the result node first: the slice views draw segmentations in the order they were added, so the
        # reference outline comes over the result's fill (where the two agree it would be hidden otherwise)
        self.result_node = self._fresh_segmentation(RESULT_NODE)
        self.result_node.SetReferenceImageGeometryParameterFromVolumeNode(self.ct_node)
        d = self.result_node.GetDisplayNode()
        d.SetVisibility2DFill(True)
        d.SetVisibility2DOutline(False)  # filled only: the one outline in the slice views is the reference's
        d.SetOpacity2DFill(0.35)
        self.set_threshold(threshold, interactive=False)
        self.result_node.CreateClosedSurfaceRepresentation()

        self.reference_node = self._fresh_segmentation(REFERENCE_NODE)
        nodes.write_segment(self.reference_node, f"{case.structure} reference", case.reference, case.image,
                            REFERENCE_COLOR)
        rd = self.reference_node.GetDisplayNode()
        rd.SetVisibility2DFill(False)
        rd.SetVisibility2DOutline(True)
        rd.SetVisibility3D(False)

    def _volume_node(self, name: str) -> Any:
        """The scalar volume node ``name`` (made on first use) with a display node whose window/level is
        fixed (:data:`CT_WINDOW_LEVEL`; the map is never shown)."""
        node = nodes.get_or_create_node(self.scene, "vtkMRMLScalarVolumeNode", name)
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        disp = node.GetDisplayNode()
        disp.SetAutoWindowLevel(0)
        disp.SetWindowLevel(*CT_WINDOW_LEVEL)
        return node

    def _fresh_segmentation(self, name: str) -> Any:
        """An empty segmentation node called ``name`` (the previous case's one is removed)."""
        # Libs/MRML/Core/vtkMRMLScene.h: the by-class-by-name collection is the caller's to delete (the Python
        # wrapping does not), so GetFirstNode(name, class) until none is left
        while (old := self.scene.GetFirstNode(name, "vtkMRMLSegmentationNode")) is not None:
            self.scene.RemoveNode(old)
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.CreateDefaultDisplayNodes()
        return node

    def set_threshold(self, threshold: float, interactive: bool = False) -> str:
        """The slider: segment ``<structure>`` of the result node := ``p >= threshold`` through
        ``ThresholdTuningLogic.apply_threshold`` (AutoSegThreshold's call). Returns the segment id."""
        if self.case is None:
            raise RuntimeError("no case is open")
        self.logic.apply_threshold(self.map_node, float(threshold), self.result_node, self.segment_name,
                                   interactive=interactive)
        sid = nodes.segment_id_by_name(self.result_node, self.segment_name)
        if sid is not None:
            self.result_node.GetSegmentation().GetSegment(sid).SetColor(*RESULT_COLOR)
        self.threshold = float(threshold)
        return sid or ""

    def result_mask(self) -> np.ndarray:
        """The thresholded segment as it is in the scene, on the CT's grid (z, y, x)."""
        sid = nodes.segment_id_by_name(self.result_node, self.segment_name)
        return nodes.segment_mask(self.result_node, sid, nodes.volume_from_node(self.ct_node, copy=False))

    def slice_ras(self) -> Tuple[float, float, float]:
        """RAS of the centre of the reference (or of the CT): where the views are centred on opening."""
        case = self.case
        assert case is not None
        idx = np.argwhere(case.reference)
        centre_zyx = idx.mean(axis=0) if idx.size else (np.asarray(case.image.shape) - 1) / 2.0
        ijk1 = np.array([centre_zyx[2], centre_zyx[1], centre_zyx[0], 1.0])
        ras = case.image.ijk_to_ras() @ ijk1
        return float(ras[0]), float(ras[1]), float(ras[2])


def volume_of(node: Any) -> Volume:
    """A volume node as an engine Volume (for tests and the benchmark)."""
    return nodes.volume_from_node(node)


__all__ = ["ReviewScene", "CT_NODE", "MAP_NODE", "REFERENCE_NODE", "RESULT_NODE", "volume_of"]
