"""AutoSegSegmentMetrics: per-segment comparison of two segmentations (Dice, Jaccard, volumes, HD, HD95,
MSD, sensitivity, precision) plus intensity statistics. (Named so as not to collide with Slicer's
SegmentStatistics or SlicerRT's SegmentComparison.)

The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.segment_metrics_logic.SegmentMetricsLogic.
"""

import logging
from pathlib import Path

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class AutoSegSegmentMetrics(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSeg Segment Metrics"
        self.parent.categories = ["Segmentation.AutoSegSensitivity"]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoSegSensitivity developers"]
        self.parent.helpText = (
            "Compare a reference and a compared segmentation segment by segment on the grid of a chosen volume: "
            "volumes (ml), volume difference, Dice, Jaccard, sensitivity, precision, centre-of-mass distance, "
            "HD, HD95 and mean surface distance (mm), and the intensity statistics of each segment. Segments are "
            "paired by name or by hand in the pairs table. The result is a table node; export it as CSV.")
        self.parent.acknowledgementText = ""


@parameterNodeWrapper
class AutoSegSegmentMetricsParameterNode:
    referenceSegmentation: vtkMRMLSegmentationNode
    comparedSegmentation: vtkMRMLSegmentationNode
    gridVolume: vtkMRMLScalarVolumeNode
    intensityStatistics: bool = True
    outputTable: vtkMRMLTableNode
    csvPath: Path


class AutoSegSegmentMetricsLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by SegmentMetricsLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegSegmentMetricsParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.segment_metrics_logic import SegmentMetricsLogic

        return SegmentMetricsLogic(slicer.mrmlScene)


def ensureDependencies():
    """Packages the engine needs (scipy, PyYAML, ...) pip-installed after a confirmation; no torch needed here."""
    from AutoSegSensitivity.mrml.dependencies import CORE_PACKAGES, ensure_dependencies

    try:
        return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, need_torch=False,
                                   packages=CORE_PACKAGES)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False


class AutoSegSegmentMetricsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegSegmentMetrics.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoSegSegmentMetricsLogic()
        self.ui.pairsTableWidget.setHorizontalHeaderLabels(["Reference segment", "Compared segment"])
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.pairByNameButton.clicked.connect(self.onPairByName)
        self.ui.computeButton.clicked.connect(self.onCompute)
        self.ui.exportCsvButton.clicked.connect(self.onExportCsv)
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
        if not self._parameterNode.gridVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.gridVolume = first

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
        ok = bool(p and p.referenceSegmentation and p.comparedSegmentation and p.gridVolume)
        self.ui.computeButton.enabled = ok
        self.ui.exportCsvButton.enabled = bool(p and p.outputTable)

    def _pairs(self):
        table = self.ui.pairsTableWidget
        cells = [(table.item(r, 0), table.item(r, 1)) for r in range(table.rowCount)]
        return [(a.text(), b.text()) for a, b in cells if a and b and a.text() and b.text()]

    def onPairByName(self):
        import qt

        with slicer.util.tryWithErrorDisplay("Could not pair the segments.", waitCursor=True):
            p = self._parameterNode
            pairs = self.logic.engine().pairs_by_name(p.referenceSegmentation, p.comparedSegmentation)
            self.ui.pairsTableWidget.setRowCount(len(pairs))
            for r, (a, b) in enumerate(pairs):
                self.ui.pairsTableWidget.setItem(r, 0, qt.QTableWidgetItem(a))
                self.ui.pairsTableWidget.setItem(r, 1, qt.QTableWidgetItem(b))

    def onCompute(self):
        if not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Segment comparison failed.", waitCursor=True):
            p = self._parameterNode
            intensity = p.gridVolume if p.intensityStatistics else None
            name = p.outputTable.GetName() if p.outputTable else None
            table, _ = self.logic.engine().compare(p.referenceSegmentation, p.comparedSegmentation, p.gridVolume,
                                                   self._pairs() or None, intensity, name)
            p.outputTable = table
            self.ui.resultsTableView.setMRMLTableNode(table)

    def onExportCsv(self):
        with slicer.util.tryWithErrorDisplay("CSV export failed.", waitCursor=True):
            p = self._parameterNode
            if not p.csvPath or str(p.csvPath) in ("", "."):
                raise ValueError("Choose a CSV file to write.")
            path = self.logic.engine().export_csv(p.outputTable, p.csvPath)
            slicer.util.infoDisplay(f"Written {path}")


class AutoSegSegmentMetricsTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: comparing the phantom's segmentation with itself gives Dice 1 and HD 0."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_against_itself()

    def test_phantom_against_itself(self):
        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.phantom import make_phantom

        self.delayDisplay("Comparing the phantom with itself")
        volume, seg = make_phantom(seed=0)
        ct = nodes.volume_to_node(volume, slicer.mrmlScene, "CT")
        ref = nodes.segmentation_to_node(seg, slicer.mrmlScene, "Reference", reference_node=ct)
        cmp = nodes.segmentation_to_node(seg, slicer.mrmlScene, "Compared", reference_node=ct)
        table, rows = AutoSegSegmentMetricsLogic().engine().compare(ref, cmp, ct, intensity_node=ct)
        self.assertEqual([r["segment"] for r in rows], seg.names)
        for row in rows:
            self.assertEqual(row["dice"], 1.0)
            self.assertEqual(row["hd_mm"], 0.0)
        self.assertEqual(table.GetNumberOfRows(), len(seg.names))
        logging.info("AutoSegSegmentMetrics self-test passed")
        self.delayDisplay("Test passed")
