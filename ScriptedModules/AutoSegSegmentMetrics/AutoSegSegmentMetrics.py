"""AutoSegSegmentMetrics: per-segment comparison of two segmentations (Dice, Jaccard, volumes, HD, HD95,
MSD, sensitivity, precision) plus intensity statistics. (Named so as not to collide with Slicer's
SegmentStatistics or SlicerRT's SegmentComparison.)

The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.segment_metrics_logic.SegmentMetricsLogic.
"""

import logging
import sys
from pathlib import Path
from typing import Optional

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
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
            "paired by name or by hand in the pairs table. The result is a table node; export it as CSV." + sampledata.HELP)
        self.parent.acknowledgementText = (
            "Surface metrics checked against DeepMind's surface-distance and SimpleITK; per-segment reporting in the "
            "spirit of Slicer's SegmentStatistics and SlicerRT's SegmentComparison.")
        sampledata.registerAtStartup(self)


@parameterNodeWrapper
class AutoSegSegmentMetricsParameterNode:
    referenceSegmentation: vtkMRMLSegmentationNode
    comparedSegmentation: vtkMRMLSegmentationNode
    gridVolume: vtkMRMLScalarVolumeNode
    intensityStatistics: bool = True
    outputTable: vtkMRMLTableNode
    csvPath: Optional[Path] = None  # unset: None, shown empty (AutoSegSensitivity.mrml.path_fields)


class AutoSegSegmentMetricsLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by SegmentMetricsLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegSegmentMetricsParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.segment_metrics_logic import SegmentMetricsLogic

        return SegmentMetricsLogic(slicer.mrmlScene)




class AutoSegSegmentMetricsWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = loadModuleUI(self)
        self.logic = AutoSegSegmentMetricsLogic()
        self.ui.pairsTableWidget.setHorizontalHeaderLabels(["Reference segment", "Compared segment"])
        self.binding = ParameterNodeBinding(self, self.logic, self.updateButtons, firstVolumeDefaults("gridVolume"))
        self.ui.pairByNameButton.clicked.connect(self.onPairByName)
        self.ui.computeButton.clicked.connect(self.onCompute)
        self.ui.exportCsvButton.clicked.connect(self.onExportCsv)
        self.binding.initialize()

    def cleanup(self):
        self.binding.cleanup()

    def enter(self):
        self.binding.enter()

    def exit(self):
        self.binding.exit()

    def states(self):
        """ActionState of Pair by name, Compute and Export CSV."""
        p = self.binding.node
        if not p:
            return actions.pair_by_name(None, None), actions.compute_metrics(None, None, None), actions.export_csv(None, None)
        return (actions.pair_by_name(p.referenceSegmentation, p.comparedSegmentation),
                actions.compute_metrics(p.referenceSegmentation, p.comparedSegmentation, p.gridVolume),
                actions.export_csv(p.outputTable, p.csvPath))

    def updateButtons(self):
        for button, state in zip((self.ui.pairByNameButton, self.ui.computeButton, self.ui.exportCsvButton), self.states()):
            showState(button, state)

    def _pairs(self):
        table = self.ui.pairsTableWidget
        cells = [(table.item(r, 0), table.item(r, 1)) for r in range(table.rowCount)]
        return [(a.text(), b.text()) for a, b in cells if a and b and a.text() and b.text()]

    def onPairByName(self):
        import qt

        if not ready(self.states()[0]):
            return
        with slicer.util.tryWithErrorDisplay("Could not pair the segments.", waitCursor=True):
            p = self.binding.node
            pairs = self.logic.engine().pairs_by_name(p.referenceSegmentation, p.comparedSegmentation)
            self.ui.pairsTableWidget.setRowCount(len(pairs))
            for r, (a, b) in enumerate(pairs):
                self.ui.pairsTableWidget.setItem(r, 0, qt.QTableWidgetItem(a))
                self.ui.pairsTableWidget.setItem(r, 1, qt.QTableWidgetItem(b))

    def onCompute(self):
        if not ready(self.states()[1]) or not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Segment comparison failed.", waitCursor=True):
            p = self.binding.node
            intensity = p.gridVolume if p.intensityStatistics else None
            name = p.outputTable.GetName() if p.outputTable else None
            table, _ = self.logic.engine().compare(p.referenceSegmentation, p.comparedSegmentation, p.gridVolume,
                                                   self._pairs() or None, intensity, name)
            p.outputTable = table
            self.ui.resultsTableView.setMRMLTableNode(table)

    def onExportCsv(self):
        if not ready(self.states()[2]):
            return
        with slicer.util.tryWithErrorDisplay("CSV export failed.", waitCursor=True):
            p = self.binding.node
            path = self.logic.engine().export_csv(p.outputTable, p.csvPath)
            slicer.util.infoDisplay(f"Written {path}")


class AutoSegSegmentMetricsTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: comparing the phantom's segmentation with itself gives Dice 1 and HD 0."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.assertTrue(installForSelfTest(), "the packages this module needs are not installed")
        self.setUp()
        self.test_phantom_against_itself()
        self.setUp()
        self.test_widget_on_phantom()

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

    def test_widget_on_phantom(self):
        import csv
        import tempfile

        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.mrml.sampledata import phantom_sample

        self.delayDisplay("Driving the AutoSegSegmentMetrics widget on the phantom sample data")
        widget = slicer.util.getModuleWidget("AutoSegSegmentMetrics")  # set up (also without a main window)
        widget.enter()  # as when the module is opened: binds the parameter node of this scene
        p = widget.binding.node
        self.assertFalse(widget.ui.computeButton.enabled)
        self.assertIn("reference segmentation", widget.ui.computeButton.toolTip)
        phantom = sampledata.loadPhantom()
        _, reference, _ = phantom_sample()
        compared = nodes.segmentation_to_node(reference, slicer.mrmlScene, "Compared", reference_node=phantom.ct)
        widget.ui.referenceSegmentationSelector.setCurrentNode(phantom.reference)
        widget.ui.comparedSegmentationSelector.setCurrentNode(compared)
        widget.ui.gridVolumeSelector.setCurrentNode(phantom.ct)
        self.assertIs(p.comparedSegmentation, compared)
        self.assertTrue(widget.ui.computeButton.enabled, widget.ui.computeButton.toolTip)
        widget.ui.pairByNameButton.click()
        self.assertEqual(widget.ui.pairsTableWidget.rowCount, phantom.reference.GetSegmentation().GetNumberOfSegments())
        self.assertFalse(widget.ui.exportCsvButton.enabled)  # no table, no file name
        widget.ui.computeButton.click()
        self.assertIsNotNone(p.outputTable)
        self.assertFalse(widget.ui.exportCsvButton.enabled)  # still no file name (an empty path is unset)
        self.assertEqual(widget.ui.csvPathLineEdit.currentPath, "")  # unset shows empty, not "."
        csvPath = Path(tempfile.mkdtemp()) / "metrics.csv"
        widget.ui.csvPathLineEdit.currentPath = str(csvPath)
        self.assertTrue(widget.ui.exportCsvButton.enabled, widget.ui.exportCsvButton.toolTip)
        widget.ui.exportCsvButton.click()
        rows = list(csv.DictReader(csvPath.open()))
        self.assertEqual(len(rows), phantom.reference.GetSegmentation().GetNumberOfSegments())
        logging.info("AutoSegSegmentMetrics self-test passed")
        self.delayDisplay("Test passed")
