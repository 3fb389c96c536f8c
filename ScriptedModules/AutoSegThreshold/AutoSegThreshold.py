"""AutoSegThreshold: tune the threshold that turns probability maps into segments (Bice et al.).

Sweep thresholds over probability-map volumes against reference segmentations, see Dice, MSD, HD and HD95
against the threshold with the optimum and 0.5 marked, the perturbation losses and the prominence; move a
slider to update a segmentation live; 'Apply optimum' writes it and stores the threshold with the model.
The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.threshold_logic.ThresholdTuningLogic.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import slicer
from slicer import vtkMRMLSegmentationNode
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
from AutoSegSlicerLib.widgets import ParameterNodeBinding, connectLiveSlider, loadModuleUI, ready, showState

find_engine(__file__)
from AutoSegSensitivity.mrml import actions  # noqa: E402  (needs the engine found above)


class AutoSegThreshold(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSeg Threshold Tuning"
        self.parent.categories = ["Segmentation.AutoSegSensitivity"]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoSegSensitivity developers"]
        self.parent.helpText = (
            "Check the probability maps and, in the same order, their reference segmentations; name the "
            "structure; Sweep. The table and chart show the metrics against the threshold, with the optimum "
            "and 0.5 marked; the summary table gives the loss at 0.5, the perturbation losses and the "
            "prominence. The slider thresholds the first map into the live segmentation. For many cases "
            "on disk use the command line: autosegsens sweep." + sampledata.HELP)
        self.parent.acknowledgementText = "Threshold sensitivity after Bice et al. (see the extension's papers list)."
        sampledata.registerAtStartup(self)


@parameterNodeWrapper
class AutoSegThresholdParameterNode:
    structure: str = ""
    step: Annotated[float, WithinRange(0.005, 0.25)] = 0.01
    surfaceMetrics: bool = True
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    liveSegmentation: vtkMRMLSegmentationNode
    liveUpdate: bool = True
    checkpoint: Optional[Path] = None  # unset: None, shown empty (AutoSegSensitivity.mrml.path_fields)
    nsdTolerance: Annotated[float, WithinRange(0.0, 20.0)] = 2.0
    thresholdsFile: Optional[Path] = None


class AutoSegThresholdLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by ThresholdTuningLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegThresholdParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

        return ThresholdTuningLogic(slicer.mrmlScene)


class AutoSegThresholdWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None
        self._result = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = loadModuleUI(self)
        self.logic = AutoSegThresholdLogic()
        self.binding = ParameterNodeBinding(self, self.logic, self.updateButtons)
        self.ui.sweepButton.clicked.connect(self.onSweep)
        self.ui.applyOptimumButton.clicked.connect(self.onApplyOptimum)
        self.ui.saveThresholdsButton.clicked.connect(self.onSaveThresholds)
        self.ui.loadThresholdsButton.clicked.connect(self.onLoadThresholds)
        self.ui.probabilityVolumesSelector.checkedNodesChanged.connect(self.updateButtons)
        self.ui.referenceSegmentationsSelector.checkedNodesChanged.connect(self.updateButtons)
        # ctkSliderWidget without tracking: labelmap while dragged, everything once released; one update per change
        self._sliderUpdates = connectLiveSlider(self.ui.thresholdSlider, self.onThresholdChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.binding.initialize()

    def cleanup(self):
        self.binding.cleanup()

    def enter(self):
        self.binding.enter()

    def exit(self):
        self.binding.exit()

    def onSceneStartClose(self, caller, event):
        self._result = None

    def _maps(self):
        return list(self.ui.probabilityVolumesSelector.checkedNodes())

    def _references(self):
        return list(self.ui.referenceSegmentationsSelector.checkedNodes())

    def sweepState(self):
        p = self.binding.node
        return actions.sweep(len(self._maps()), len(self._references()), p.structure if p else "")

    def applyOptimumState(self):
        p = self.binding.node
        return actions.apply_optimum(self._result is not None, len(self._maps()), p.checkpoint if p else None)

    def saveThresholdsState(self):
        p = self.binding.node
        return actions.save_thresholds(self._result is not None, p.structure if p else "",
                                       p.thresholdsFile if p else None)

    def loadThresholdsState(self):
        p = self.binding.node
        return actions.load_thresholds(p.structure if p else "", p.thresholdsFile if p else None)

    def updateButtons(self):
        showState(self.ui.sweepButton, self.sweepState())
        showState(self.ui.applyOptimumButton, self.applyOptimumState())
        showState(self.ui.saveThresholdsButton, self.saveThresholdsState())
        showState(self.ui.loadThresholdsButton, self.loadThresholdsState())

    def onSweep(self):
        if not ready(self.sweepState()) or not ensureDependencies():
            return
        import numpy as np

        with slicer.util.tryWithErrorDisplay("Threshold sweep failed.", waitCursor=True):
            p = self.binding.node
            thresholds = np.round(np.arange(0.0, 1.0 + 1e-9, p.step), 6)
            metrics = ("dice", "nsd", "msd", "hd", "hd95") if p.surfaceMetrics else ("dice",)
            result, table, chart, summary = self.logic.engine().sweep(
                self._maps(), self._references(), p.structure, thresholds=thresholds, metrics=metrics,
                nsd_tolerance=p.nsdTolerance)
            self._result = result
            t_opt, v_opt = result.optimum("dice")
            loss = result.loss_at(0.5, "dice")
            self.ui.resultLabel.text = (f"Dice optimum {v_opt:.4f} at t = {t_opt:.2f}; loss at 0.5: "
                                        f"{100 * loss:.2f} %" if loss is not None else f"Dice optimum at t = {t_opt:.2f}")
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            p.threshold = t_opt
            self.updateButtons()

    def onThresholdChanged(self, value, interactive):
        """While the slider is dragged only the labelmap is updated (interactive); on release, all
        representations."""
        p = self.binding.node
        maps = self._maps()
        if not p or not p.liveUpdate or not p.liveSegmentation or not maps:
            return
        with slicer.util.tryWithErrorDisplay("Could not update the segmentation.", waitCursor=False):
            self.logic.engine().apply_threshold(maps[0], value, p.liveSegmentation, p.structure or None,
                                                interactive=interactive)

    def onApplyOptimum(self):
        """Store the optimum in the checkpoint (when one is chosen) first, then write the segments: a
        checkpoint that cannot be read, or torch that cannot be installed, leaves the scene unchanged."""
        p = self.binding.node
        checkpoint = actions.path_or_none(p.checkpoint if p else None)
        if not ready(self.applyOptimumState()) or not ensureDependencies(needTorch=checkpoint is not None):
            return
        with slicer.util.tryWithErrorDisplay("Could not apply the optimum threshold.", waitCursor=True):
            t_opt, _ = self._result.optimum("dice")
            structure = self._result.structure  # the swept structure, whatever the field says now
            engine = self.logic.engine()
            if checkpoint is not None:
                engine.store_threshold(checkpoint, structure, t_opt, source="sweep dice (Slicer)")
            maps = self._maps()
            for prob in maps:
                seg = engine.apply_threshold(prob, t_opt, p.liveSegmentation if len(maps) == 1 else None,
                                             structure or None)
                if p.liveSegmentation is None:
                    p.liveSegmentation = seg
            p.threshold = t_opt
            if checkpoint is not None:
                slicer.util.infoDisplay(f"Threshold {t_opt:.2f} for {structure} stored in {checkpoint}")


    def onSaveThresholds(self):
        """Store this structure's Dice optimum in the thresholds.json (other structures kept)."""
        if not ready(self.saveThresholdsState()) or not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not save the threshold.", waitCursor=True):
            p = self.binding.node
            t_opt, _ = self._result.optimum("dice")
            structure = self._result.structure  # the swept structure, whatever the field says now
            path = self.logic.engine().add_threshold(actions.path_or_none(p.thresholdsFile), structure, t_opt)
            slicer.util.showStatusMessage(f"Threshold {t_opt:.2f} for {structure} saved in {path}", 5000)

    def onLoadThresholds(self):
        """Move the slider to this structure's threshold from the thresholds.json (the segmentation follows)."""
        if not ready(self.loadThresholdsState()) or not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Could not load the threshold.", waitCursor=True):
            p = self.binding.node
            table = self.logic.engine().load_thresholds(actions.path_or_none(p.thresholdsFile))
            if p.structure not in table:
                raise ValueError(f"{p.thresholdsFile} has no threshold for {p.structure!r} (it has {sorted(table)})")
            p.threshold = table[p.structure]
            self.ui.resultLabel.text = f"Threshold {table[p.structure]:.2f} for {p.structure} from {p.thresholdsFile}"


class AutoSegThresholdTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on the phantom sample data: the engine's sweep agrees with the array sweep, and
    the widget (parameter node, buttons, slider) sweeps, updates and applies."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.assertTrue(installForSelfTest(), "the packages this module needs are not installed")
        self.setUp()
        self.test_sweep_on_phantom()
        self.setUp()
        self.test_widget_on_phantom()

    def test_sweep_on_phantom(self):
        import numpy as np

        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.phantom import make_phantom
        from AutoSegSensitivity.sweep import sweep_thresholds

        self.delayDisplay("Sweeping thresholds on the phantom")
        volume, seg = make_phantom(seed=0)
        ref = seg.mask("Parotid_L")
        soft = np.clip(ref * 0.6 + np.random.default_rng(0).uniform(0, 0.5, ref.shape), 0, 1).astype(np.float32)
        prob = nodes.volume_to_node(volume.with_array(soft), slicer.mrmlScene, "Parotid_L_prob")
        ref_node = nodes.segmentation_to_node(seg, slicer.mrmlScene, "Reference")
        th = np.round(np.arange(0, 1.0001, 0.05), 2)
        result, _, chart, _ = AutoSegThresholdLogic().engine().sweep([prob], [ref_node], "Parotid_L", th, ("dice",))
        engine = sweep_thresholds([soft], [ref], [volume.spacing_zyx], th, metrics=("dice",))
        self.assertEqual(result.optimum("dice"), engine.optimum("dice"))
        self.assertGreater(chart.GetNumberOfPlotSeriesNodes(), 1)

    def test_widget_on_phantom(self):
        import numpy as np
        import qt

        self.delayDisplay("Driving the AutoSegThreshold widget on the phantom sample data")
        phantom = sampledata.loadPhantom()
        widget = slicer.util.getModuleWidget("AutoSegThreshold")  # set up (also without a main window)
        widget.enter()  # as when the module is opened: binds the parameter node of this scene
        p = widget.binding.node
        self.assertFalse(widget.ui.sweepButton.enabled)  # nothing checked, no structure
        self.assertIn("structure", widget.ui.sweepButton.toolTip)
        widget.ui.probabilityVolumesSelector.setCheckState(phantom.probabilities["Parotid_L"], qt.Qt.Checked)
        widget.ui.referenceSegmentationsSelector.setCheckState(phantom.reference, qt.Qt.Checked)
        widget.ui.structureLineEdit.text = "Parotid_L"
        self.assertEqual(p.structure, "Parotid_L")  # bound through the parameter node
        p.surfaceMetrics = False
        p.step = 0.05
        self.assertEqual(widget.ui.stepSpinBox.value, 0.05)
        self.assertTrue(widget.ui.sweepButton.enabled, widget.ui.sweepButton.toolTip)
        self.assertFalse(widget.ui.applyOptimumButton.enabled)
        widget.ui.sweepButton.click()
        self.assertIsNotNone(widget._result)
        t_opt = widget._result.optimum("dice")[0]
        self.assertLess(t_opt, 0.5)  # the phantom maps are cautious (peak 0.85)
        self.assertAlmostEqual(widget.ui.thresholdSlider.value, t_opt)
        live = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "live")
        p.liveSegmentation = live
        widget.onThresholdChanged(0.3, True)
        widget.onThresholdChanged(0.3, False)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(
            live, live.GetSegmentation().GetSegmentIdBySegmentName("Parotid_L"), phantom.ct)
        prob = slicer.util.arrayFromVolume(phantom.probabilities["Parotid_L"])
        np.testing.assert_array_equal(mask > 0, prob >= 0.3)
        self.assertTrue(widget.ui.applyOptimumButton.enabled)
        widget.ui.applyOptimumButton.click()
        self.assertAlmostEqual(p.threshold, t_opt)
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(
            live, live.GetSegmentation().GetSegmentIdBySegmentName("Parotid_L"), phantom.ct)
        np.testing.assert_array_equal(mask > 0, prob >= t_opt)
        # thresholds.json: save this structure's optimum, move the slider away, load it back
        import os
        import tempfile

        self.assertFalse(widget.ui.saveThresholdsButton.enabled)  # no file chosen yet
        path = os.path.join(tempfile.mkdtemp(prefix="AutoSegThresholdTest-"), "thresholds.json")
        p.thresholdsFile = Path(path)  # a Path field takes pathlib.Path only (IsInstance in serializers.py)
        self.assertTrue(widget.ui.saveThresholdsButton.enabled, widget.ui.saveThresholdsButton.toolTip)
        widget.ui.saveThresholdsButton.click()
        self.assertAlmostEqual(widget.logic.engine().load_thresholds(path)["Parotid_L"], t_opt)
        p.threshold = 0.9
        self.assertTrue(widget.ui.loadThresholdsButton.enabled, widget.ui.loadThresholdsButton.toolTip)
        widget.ui.loadThresholdsButton.click()
        self.assertAlmostEqual(p.threshold, t_opt)
        logging.info("AutoSegThreshold self-test passed")
        self.delayDisplay("Test passed")
