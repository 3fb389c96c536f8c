"""AutoSegLocalisation: two-stage segmentation of one organ (localise, then segment the crop).

The ROI is placed by the user or proposed by a low-resolution localisation model and then adjusted; Run
segments the crop with the organ model and pastes the probability map back on the full grid, plus a
segment at the chosen threshold. The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.localisation_logic.LocalisationLogic.
"""

import logging
from pathlib import Path

import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


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
            "(probability map on the full grid) and '<volume>_<organ>_seg', reused on re-run.")
        self.parent.acknowledgementText = "Two-stage localisation after Lei et al. (see the extension's papers list)."


@parameterNodeWrapper
class AutoSegLocalisationParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    localiserModel: Path
    organModel: Path
    structure: str = ""
    padding: int = 15
    threshold: float = 0.5


class AutoSegLocalisationLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by LocalisationLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegLocalisationParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.localisation_logic import LocalisationLogic

        return LocalisationLogic(slicer.mrmlScene)


def ensureTorch():
    """torch through the PyTorch extension and the other packages with pip, after a confirmation."""
    from AutoSegSensitivity.mrml.dependencies import ensure_dependencies

    def installTorch():
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError("This module needs the PyTorch extension: install it from the Extensions Manager.")
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)

    try:
        return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, installTorch, need_torch=True)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False


class AutoSegLocalisationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegLocalisation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoSegLocalisationLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.proposeRoiButton.clicked.connect(self.onProposeRoi)
        self.ui.runButton.clicked.connect(self.onRun)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameterNode
        has_localiser = bool(p and p.localiserModel and Path(p.localiserModel).is_file())
        self.ui.proposeRoiButton.enabled = bool(p and p.inputVolume and has_localiser)
        self.ui.runButton.enabled = bool(p and p.inputVolume and p.organModel and (p.roi or has_localiser))

    def onProposeRoi(self):
        if not ensureTorch():
            return
        with slicer.util.tryWithErrorDisplay("Localisation failed.", waitCursor=True):
            p = self._parameterNode
            p.roi = self.logic.engine().propose_roi(p.inputVolume, p.localiserModel, p.structure or None, p.roi)

    def onRun(self):
        if not ensureTorch():
            return
        with slicer.util.tryWithErrorDisplay("Two-stage segmentation failed.", waitCursor=True):
            p = self._parameterNode
            localiser = p.localiserModel if p.localiserModel and Path(p.localiserModel).is_file() else None
            prob, seg, roi, message = self.logic.engine().run(
                p.inputVolume, p.organModel, p.roi, localiser, p.structure or None, p.padding, p.threshold)
            p.roi = roi
            slicer.util.setSliceViewerLayers(background=p.inputVolume, foreground=prob, foregroundOpacity=0.4)
            slicer.util.showStatusMessage(message, 5000)


class AutoSegLocalisationTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a user ROI around the phantom's brain and a stand-in organ model give a
    probability map that is zero outside the padded box."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_roi_on_phantom()

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
        logging.info("AutoSegLocalisation self-test passed")
        self.delayDisplay("Test passed")
