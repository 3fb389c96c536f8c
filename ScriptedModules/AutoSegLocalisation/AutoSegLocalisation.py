"""AutoSegLocalisation: two-stage segmentation of one organ (localise, then segment the crop).

The ROI is placed by the user or proposed by a low-resolution localisation model and then adjusted; Run
segments the crop with the organ model and pastes the probability map back on the full grid, plus a
segment at the chosen threshold. The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.localisation_logic.LocalisationLogic.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:  # built extension: the shared Lib is installed beside the modules
    import AutoSegSlicerLib  # noqa: F401
except ModuleNotFoundError:  # loaded from a clone: the Lib and the engine sit at the repository root
    sys.path.append(str(Path(__file__).resolve().parents[2]))
from AutoSegSlicerLib import sampledata
from AutoSegSlicerLib.dependencies import ensureDependencies, installForSelfTest
from AutoSegSlicerLib.enginepath import find_engine
from AutoSegSlicerLib.widgets import (ParameterNodeBinding, connectLiveSlider, firstVolumeDefaults, loadModuleUI, ready,
                                     showState)

find_engine(__file__)
from AutoSegSensitivity.mrml import actions  # noqa: E402  (needs the engine found above)


class AutoSegLocalisation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSeg Two-Stage Localisation"
        self.parent.categories = ["Segmentation.AutoSegSensitivity"]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoSegSensitivity developers"]
        self.parent.helpText = (
            "Segment one organ in two stages: an ROI around it (placed by you, or proposed by a localisation "
            "model and then adjusted), then the organ model on the padded crop. Results: '<volume>_<organ>_prob' "
            "(probability map on the full grid) and '<volume>_<organ>_seg', reused on re-run." + sampledata.HELP)
        self.parent.acknowledgementText = "Two-stage localisation after Lei et al. (see the extension's papers list)."
        sampledata.registerAtStartup(self)


@parameterNodeWrapper
class AutoSegLocalisationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    localiserModel: Optional[Path] = None  # unset: None, shown empty (AutoSegSensitivity.mrml.path_fields)
    organModel: Optional[Path] = None
    structure: str = ""
    padding: Annotated[int, WithinRange(0, 200)] = 15
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class AutoSegLocalisationLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by LocalisationLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegLocalisationParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.localisation_logic import LocalisationLogic

        return LocalisationLogic(slicer.mrmlScene)




class AutoSegLocalisationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None
        self._output = None  # (probability node, segmentation node, segment name) of the last Run

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = loadModuleUI(self)
        self.logic = AutoSegLocalisationLogic()
        self.binding = ParameterNodeBinding(self, self.logic, self.updateButtons, firstVolumeDefaults("inputVolume"))
        self.ui.proposeRoiButton.clicked.connect(self.onProposeRoi)
        self.ui.runButton.clicked.connect(self.onRun)
        # ctkSliderWidget without tracking: labelmap while dragged, everything once released; one update per change
        self._sliderUpdates = connectLiveSlider(self.ui.thresholdSlider, self.onThresholdChanged)
        self.binding.initialize()

    def cleanup(self):
        self.binding.cleanup()

    def enter(self):
        self.binding.enter()

    def exit(self):
        self.binding.exit()

    def proposeRoiState(self):
        p = self.binding.node
        return actions.propose_roi(p.inputVolume if p else None, p.localiserModel if p else None)

    def runState(self):
        p = self.binding.node
        if not p:
            return actions.localisation_run(None, None, None, None)
        return actions.localisation_run(p.inputVolume, p.organModel, p.roi, p.localiserModel)

    def updateButtons(self):
        showState(self.ui.proposeRoiButton, self.proposeRoiState())
        showState(self.ui.runButton, self.runState())

    def onProposeRoi(self):
        if not ready(self.proposeRoiState()) or not ensureDependencies(needTorch=True):
            return
        with slicer.util.tryWithErrorDisplay("Localisation failed.", waitCursor=True):
            p = self.binding.node
            p.roi = self.logic.engine().propose_roi(p.inputVolume, p.localiserModel, p.structure or None, p.roi)

    def onRun(self):
        if not ready(self.runState()) or not ensureDependencies(needTorch=True):
            return
        with slicer.util.tryWithErrorDisplay("Two-stage segmentation failed.", waitCursor=True):
            p = self.binding.node
            localiser = p.localiserModel if actions.propose_roi(p.inputVolume, p.localiserModel).enabled else None
            prob, seg, roi, message = self.logic.engine().run(
                p.inputVolume, p.organModel, p.roi, localiser, p.structure or None, p.padding, p.threshold)
            p.roi = roi
            self._output = (prob, seg, p.structure or "organ")
            slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=prob, foregroundOpacity=0.4)
            slicer.util.showStatusMessage(message, 5000)

    def onThresholdChanged(self, value, interactive):
        """Re-threshold the last probability map into its segment: labelmap only while the slider is
        dragged (interactive), every representation once it is released."""
        if self._output is None or slicer.mrmlScene.IsNodePresent(self._output[1]) == 0:
            return
        prob, seg, organ = self._output
        with slicer.util.tryWithErrorDisplay("Could not update the segmentation.", waitCursor=False):
            self.logic.engine().apply_threshold(prob, value, seg, organ, interactive=interactive)


class AutoSegLocalisationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a user ROI around the phantom's brain and a stand-in organ model give a
    probability map that is zero outside the padded box."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.assertTrue(installForSelfTest(), "the packages this module needs are not installed")
        self.setUp()
        self.test_roi_on_phantom()
        self.setUp()
        self.test_widget_on_phantom()

    def test_roi_on_phantom(self):
        import numpy as np

        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.phantom import make_phantom
        from AutoSegSensitivity.volume import Box

        self.delayDisplay("Two-stage segmentation in a user ROI")
        volume, seg = make_phantom(seed=0)
        ct = nodes.volume_to_node(volume, slicer.mrmlScene, "CT")
        box = Box.from_mask(seg.mask("Brain"))
        roi = nodes.box_to_roi_node(box, volume, slicer.mrmlScene, "Brain ROI")

        def model(v):
            return {"Brain": v.with_array((v.array > 20).astype(np.float32))}

        prob, seg_node, _, _ = AutoSegLocalisationLogic().engine().run(ct, model, roi, structure="Brain", padding=2)
        arr = slicer.util.arrayFromVolume(prob)
        outside = np.ones(arr.shape, bool)
        outside[box.pad(2).clip(arr.shape).slices] = False
        self.assertFalse(arr[outside].any())
        self.assertTrue(arr[~outside].any())

    def test_widget_on_phantom(self):
        import numpy as np

        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.volume import Box

        self.delayDisplay("Driving the AutoSegLocalisation widget on the phantom sample data")
        widget = slicer.util.getModuleWidget("AutoSegLocalisation")  # set up (also without a main window)
        widget.enter()  # as when the module is opened: binds the parameter node of this scene
        p = widget.binding.node
        p.inputVolume = None
        self.assertFalse(widget.ui.runButton.enabled)
        self.assertFalse(widget.ui.proposeRoiButton.enabled)
        phantom = sampledata.loadPhantom()
        widget.ui.inputVolumeSelector.setCurrentNode(phantom.ct)
        self.assertIs(p.inputVolume, phantom.ct)
        # an empty organ-model field is unset, a missing file is named in the tooltip
        self.assertIn("organ model", widget.ui.runButton.toolTip)
        widget.ui.organModelPathLineEdit.currentPath = "/no/such/organ.pt"
        self.assertFalse(widget.ui.runButton.enabled)
        self.assertIn("/no/such/organ.pt", widget.ui.runButton.toolTip)
        widget.ui.paddingSpinBox.value = 500  # above the field's WithinRange(0, 200)
        self.assertEqual(p.padding, 200)
        # the slider re-thresholds the last probability map, labelmap while moving and in full on release
        volume = nodes.volume_from_node(phantom.ct)
        box = Box.from_mask(slicer.util.arrayFromVolume(phantom.probabilities["Brain"]) > 0.5)
        roi = nodes.box_to_roi_node(box, volume, slicer.mrmlScene, "Brain ROI")

        def model(v):
            return {"Brain": v.with_array(np.clip((v.array + 100.0) / 400.0, 0, 1).astype(np.float32))}

        prob, seg, _, _ = widget.logic.engine().run(phantom.ct, model, roi, structure="Brain", padding=2)
        widget._output = (prob, seg, "Brain")
        for interactive in (True, False):
            widget.onThresholdChanged(0.35, interactive)
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(
                seg, seg.GetSegmentation().GetSegmentIdBySegmentName("Brain"), phantom.ct)
            np.testing.assert_array_equal(mask > 0, slicer.util.arrayFromVolume(prob) >= 0.35)
        # a programmatic change (the parameter node moves the slider) makes one full update, not two
        calls, update = [], widget._sliderUpdates.update
        widget._sliderUpdates.update = lambda value, interactive: calls.append((round(value, 2), interactive))
        p.threshold = 0.4
        slicer.app.processEvents()
        widget._sliderUpdates.update = update
        self.assertEqual(calls, [(0.4, False)])
        logging.info("AutoSegLocalisation self-test passed")
        self.delayDisplay("Test passed")
