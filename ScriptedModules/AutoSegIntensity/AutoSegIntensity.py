"""AutoSegIntensity: Segmental Linear Function (SLF) intensity transforms of CT volumes (Lei et al.).

The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.intensity_logic.IntensityTransformLogic; all computing is in the engine.
"""

import logging
import sys
from pathlib import Path

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
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
from AutoSegSlicerLib.widgets import ParameterNodeBinding, firstVolumeDefaults, loadModuleUI, ready, showState

find_engine(__file__)
from AutoSegSensitivity.mrml import actions  # noqa: E402  (needs the engine found above)

PRESETS = ["SLF1", "SLF2", "SLF3", "NLF1", "NLF2", "SLF1-CODE"]  # SLF1-CODE: SepNet's released variant


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
            "'Show transfer curve' plots the function." + sampledata.HELP)
        self.parent.acknowledgementText = "SLF presets after Lei et al. (see the extension's papers list)."
        sampledata.registerAtStartup(self)


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




class AutoSegIntensityWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = loadModuleUI(self)
        self.logic = AutoSegIntensityLogic()
        self.ui.pointsTableWidget.setHorizontalHeaderLabels(["HU", "value"])
        self.binding = ParameterNodeBinding(self, self.logic, self.updateButtons, self.defaults)
        self.ui.presetComboBox.currentTextChanged.connect(self.onPresetChanged)
        self.ui.applyButton.clicked.connect(self.onApply)
        self.ui.showCurveButton.clicked.connect(self.onShowCurve)
        self.binding.initialize()

    def cleanup(self):
        self.binding.cleanup()

    def enter(self):
        self.binding.enter()

    def exit(self):
        self.binding.exit()

    def defaults(self, node):
        firstVolumeDefaults("inputVolume")(node)
        self.ui.presetComboBox.setCurrentText(node.preset)
        self._pointsToTable(node.points)

    def applyState(self):
        p = self.binding.node
        return actions.intensity_apply(p.inputVolume if p else None)

    def updateButtons(self):
        showState(self.ui.applyButton, self.applyState())

    # ---- GUI <-> parameter node -------------------------------------------------------------------
    def onPresetChanged(self, text):
        if self.binding and self.binding.node:
            self.binding.node.preset = text
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
        p = self.binding.node
        if p.preset == "Custom":
            p.points = self._tableToPoints()
            return p.points
        return p.preset

    # ---- actions ------------------------------------------------------------------------------------
    def onApply(self):
        if not ready(self.applyState()) or not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Intensity transform failed.", waitCursor=True):
            p = self.binding.node
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
        self.assertTrue(installForSelfTest(), "the packages this module needs are not installed")
        self.setUp()
        self.test_slf1_on_phantom()
        self.setUp()
        self.test_widget_on_phantom()

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

    def test_widget_on_phantom(self):
        import numpy as np

        from AutoSegSensitivity.intensity import apply_transform

        self.delayDisplay("Driving the AutoSegIntensity widget on the phantom sample data")
        widget = slicer.util.getModuleWidget("AutoSegIntensity")  # set up (also without a main window)
        widget.enter()  # as when the module is opened: binds the parameter node of this scene
        p = widget.binding.node
        p.inputVolume = None
        self.assertFalse(widget.ui.applyButton.enabled)
        self.assertIn("input volume", widget.ui.applyButton.toolTip)
        phantom = sampledata.loadPhantom()
        widget.ui.inputVolumeSelector.setCurrentNode(phantom.ct)
        self.assertIs(p.inputVolume, phantom.ct)  # bound through the parameter node
        self.assertTrue(widget.ui.applyButton.enabled)
        widget.ui.presetComboBox.setCurrentText("SLF2")
        self.assertEqual(p.preset, "SLF2")
        widget.ui.applyButton.click()
        self.assertIsNotNone(p.outputVolume)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(p.outputVolume),
                                       apply_transform(slicer.util.arrayFromVolume(phantom.ct), "SLF2")))
        # PythonQt prints and swallows an exception raised in a click handler: check what the click made
        widget.ui.showCurveButton.click()
        chart = slicer.mrmlScene.GetFirstNode("SLF transfer curve", "vtkMRMLPlotChartNode")
        self.assertIsNotNone(chart, "Show transfer curve made no chart")
        self.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)  # the curve and the transform's points
        table = slicer.mrmlScene.GetFirstNode("SLF transfer curve table", "vtkMRMLTableNode")
        hu = slicer.util.arrayFromTableColumn(table, "HU")
        np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "value"),
                                   apply_transform(hu.reshape(1, 1, -1), "SLF2").reshape(-1), rtol=1e-6)
        logging.info("AutoSegIntensity self-test passed")
        self.delayDisplay("Test passed")
