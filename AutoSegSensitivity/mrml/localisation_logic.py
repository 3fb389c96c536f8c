"""Logic of the AutoSegLocalisation module: two-stage (localise, then segment the crop) prediction."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple, Union

from ..errors import InputError
from . import nodes

ModelSpec = Union[str, Path, Any]

# How a probability map written by LocalisationLogic.run names its segmentation (a MRML node reference,
# saved with the scene) and its segment (a node attribute), so that its threshold can be moved later.
SEGMENTATION_REFERENCE = "AutoSegSensitivity.segmentation"
SEGMENT_ATTRIBUTE = "AutoSegSensitivity.segment"


def load_model(spec: ModelSpec, device: str = "cpu") -> Any:
    """A checkpoint path loaded with ``inference.load_checkpoint``; anything else (a LoadedModel or a
    callable ``f(volume) -> {class: probability Volume}``) is returned as is."""
    if isinstance(spec, (str, Path)):
        from ..inference import load_checkpoint

        path = Path(spec)
        if not path.is_file():
            raise InputError(path, "checkpoint", "an existing .pt file written by training")
        return load_checkpoint(path, device=device)
    if spec is None:
        raise InputError("localisation", "model", "a checkpoint path or a model")
    return spec


class LocalisationLogic:
    """Runs ``localisation.two_stage_predict`` on a volume node with a user ROI node or a localisation
    model; results go to nodes named after the input and the structure, reused on re-run."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def propose_roi(self, volume_node: Any, localiser: ModelSpec, structure: Optional[str] = None,
                    roi_node: Any = None, threshold: float = 0.5, device: str = "cpu") -> Any:
        """An ROI node around the organ found by a low-resolution localisation model (the user can then
        adjust it); :class:`InputError` when nothing is found."""
        from ..localisation import two_stage_predict

        image = nodes.volume_from_node(volume_node, copy=False)
        result = two_stage_predict(image, load_model(localiser, device), None, structure, threshold=threshold,
                                   device=device)
        if not result.found:
            raise InputError(volume_node.GetName(), "localisation", "an organ found by the localiser", got=result.message)
        name = f"{volume_node.GetName()}_{structure or 'organ'}_ROI"
        return nodes.roi_to_node(result.roi, self.scene, name, roi_node)

    def run(self, volume_node: Any, organ_model: ModelSpec, roi_node: Any = None, localiser: ModelSpec = None,
            structure: Optional[str] = None, padding: int = 15, threshold: float = 0.5,
            device: str = "cpu") -> Tuple[Any, Any, Any, str]:
        """Segment the organ inside ``roi_node`` (or the box found by ``localiser``). Returns
        ``(probability_node, segmentation_node, roi_node, message)``: the probability map on the full grid,
        a segment at ``threshold``, and the ROI used (the user's, or a new one from the localiser)."""
        from ..localisation import two_stage_predict

        if volume_node is None:
            raise InputError("localisation", "input volume", "a scalar volume node")
        image = nodes.volume_from_node(volume_node, copy=False)
        if roi_node is not None:
            where: Any = nodes.roi_from_node(roi_node)
        elif localiser is not None:
            where = load_model(localiser, device)
        else:
            raise InputError("localisation", "ROI", "an ROI node or a localisation model")
        result = two_stage_predict(image, where, load_model(organ_model, device), structure, padding=padding,
                                   threshold=threshold, device=device)
        label = structure or "organ"
        base = f"{volume_node.GetName()}_{label}"
        prob_node = nodes.volume_to_node(result.probability, self.scene, f"{base}_prob")
        seg_node = nodes.get_or_create_node(self.scene, "vtkMRMLSegmentationNode", f"{base}_seg")
        prob_node.SetNodeReferenceID(SEGMENTATION_REFERENCE, seg_node.GetID())
        prob_node.SetAttribute(SEGMENT_ATTRIBUTE, label)
        self.apply_threshold(prob_node, threshold)
        if roi_node is None and result.roi is not None:
            roi_node = nodes.roi_to_node(result.roi, self.scene, f"{base}_ROI")
        return prob_node, seg_node, roi_node, result.message

    def apply_threshold(self, probability_node: Any, threshold: float, segmentation_node: Any = None,
                        segment: Optional[str] = None, interactive: bool = False) -> Any:
        """Re-threshold a probability map of :meth:`run` (foreground where p >= t) into its segment; returns
        the segmentation node. Defaults: the segmentation and segment that :meth:`run` wrote for this map
        (else ``<map> segmentation`` and the map's name). ``interactive`` as in
        ``ThresholdTuningLogic.apply_threshold``: True while a slider is dragged (binary labelmap of the
        work box only), False on release (other representations regenerated)."""
        nodes.checked_threshold(threshold)
        if segmentation_node is None:
            segmentation_node = probability_node.GetNodeReference(SEGMENTATION_REFERENCE) or nodes.get_or_create_node(
                self.scene, "vtkMRMLSegmentationNode", f"{probability_node.GetName()} segmentation")
        name = segment or probability_node.GetAttribute(SEGMENT_ATTRIBUTE) or probability_node.GetName()
        nodes.threshold_to_segment(probability_node, threshold, segmentation_node, name, interactive)
        return segmentation_node
