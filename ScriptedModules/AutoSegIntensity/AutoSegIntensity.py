"""AutoSegIntensity: Segmental Linear Function (SLF) intensity transforms of CT volumes (Lei et al.).

The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.intensity_logic.IntensityTransformLogic; all computing is in the engine.
"""

import logging

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

PRESETS = ["SLF1", "SLF2", "SLF3", "NLF1", "NLF2"]


class AutoSegIntensity(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSeg Intensity (SLF)"
        self.parent.categories = ["Segmentation.AutoSegSensitivity"]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoSegSensitivity developers"]
        self.parent.helpText = (
            "Map CT numbers (HU) to [0, 1] with a Segmental Linear Function: presets SLF1-3 and the plain "
            "windows NLF1-2, or your own points. The result goes to a new volume named after the input and "
            "the transform (reused on re-run), to a chosen volume, or replaces the input. "
            "'Show transfer curve' plots the function.")
        self.parent.acknowledgementText = "SLF presets after Lei et al. (see the extension's papers list)."


@parameterNodeWrapper
class AutoSegIntensityParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    preset: str = "SLF1"
    points: str = "-500:0,-200:0.2,200:0.8,1500:1"
    inPlace: bool = False


class AutoSegIntensityLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by IntensityTransformLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegIntensityParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.intensity_logic import IntensityTransformLogic

        return IntensityTransformLogic(slicer.mrmlScene)


def ensureDependencies():
    """Packages the engine needs (scipy, PyYAML, ...) pip-installed after a confirmation; no torch needed here."""
    from AutoSegSensitivity.mrml.dependencies import CORE_PACKAGES, ensure_dependencies

    try:
        return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, need_torch=False,
                                   packages=CORE_PACKAGES)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False


class AutoSegIntensityWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegIntensity.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoSegIntensityLogic()
        self.ui.pointsTableWidget.setHorizontalHeaderLabels(["HU", "value"])
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.presetComboBox.currentTextChanged.connect(self.onPresetChanged)
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.showCurveButton.clicked.connect(self.onShowCurve)
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
        self.ui.presetComboBox.setCurrentText(self._parameterNode.preset)
        self._pointsToTable(self._parameterNode.points)

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
        ok = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ok
        self.ui.applyButton.toolTip = "Apply the transform" if ok else "Select an input volume"

    # ---- GUI <-> parameter node -------------------------------------------------------------------
    def onPresetChanged(self, text):
        if self._parameterNode:
            self._parameterNode.preset = text
        self.ui.pointsTableWidget.enabled = text == "Custom"

    def _pointsToTable(self, text):
        import qt

        pairs = [p.split(":") for p in text.split(",") if ":" in p]
        self.ui.pointsTableWidget.setRowCount(len(pairs))
        for r, (h, x) in enumerate(pairs):
            self.ui.pointsTableWidget.setItem(r, 0, qt.QTableWidgetItem(h.strip()))
            self.ui.pointsTableWidget.setItem(r, 1, qt.QTableWidgetItem(x.strip()))

    def _tableToPoints(self):
        table = self.ui.pointsTableWidget
        cells = [(table.item(r, 0), table.item(r, 1)) for r in range(table.rowCount)]
        return ",".join(f"{h.text()}:{x.text()}" for h, x in cells if h and x and h.text() and x.text())

    def _transform(self):
        """The preset name, or the custom points as 'HU:value,...' (validated by the engine)."""
        if self._parameterNode.preset == "Custom":
            self._parameterNode.points = self._tableToPoints()
            return self._parameterNode.points
        return self._parameterNode.preset

    # ---- actions ------------------------------------------------------------------------------------
    def onApply(self):
        if not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Intensity transform failed.", waitCursor=True):
            p = self._parameterNode
            out = self.logic.engine().apply(p.inputVolume, self._transform(), p.outputVolume, p.inPlace)
            if not p.inPlace:
                p.outputVolume = out
            slicer.util.setSliceViewerLayers(background=out, fit=True)

    def onShowCurve(self):
        if not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not draw the transfer curve.", waitCursor=True):
            _, chart = self.logic.engine().transfer_curve(self._transform())
            slicer.modules.plots.logic().ShowChartInLayout(chart)


class AutoSegIntensityTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the SLF1 transform of a phantom CT equals the engine's."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_slf1_on_phantom()

    def test_slf1_on_phantom(self):
        import numpy as np

        from AutoSegSensitivity.intensity import apply_transform
        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.phantom import make_phantom

        self.delayDisplay("SLF1 on the phantom")
        volume, _ = make_phantom(seed=0)
        ct = nodes.volume_to_node(volume, slicer.mrmlScene, "CT")
        logic = AutoSegIntensityLogic().engine()
        out = logic.apply(ct, "SLF1")
        self.assertEqual(out.GetName(), "CT_SLF1")
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(out), apply_transform(volume.array, "SLF1")))
        self.assertIs(logic.apply(ct, "SLF1"), out)
        logging.info("AutoSegIntensity self-test passed")
        self.delayDisplay("Test passed")
