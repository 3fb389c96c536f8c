"""AutoSegThreshold: tune the threshold that turns probability maps into segments (Bice et al.).

Sweep thresholds over probability-map volumes against reference segmentations, see Dice, MSD, HD and HD95
against the threshold with the optimum and 0.5 marked, the perturbation losses and the prominence; move a
slider to update a segmentation live; 'Apply optimum' writes it and stores the threshold with the model.
The widget only moves GUI state into the parameter node and calls
AutoSegSensitivity.mrml.threshold_logic.ThresholdTuningLogic.
"""

import logging
from pathlib import Path

import slicer
import vtk
from slicer import vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


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
            "on disk use the command line: autosegsens sweep.")
        self.parent.acknowledgementText = "Threshold sensitivity after Bice et al. (see the extension's papers list)."


@parameterNodeWrapper
class AutoSegThresholdParameterNode:
    structure: str = ""
    step: float = 0.01
    surfaceMetrics: bool = True
    threshold: float = 0.5
    liveSegmentation: vtkMRMLSegmentationNode
    liveUpdate: bool = True
    checkpoint: Path


class AutoSegThresholdLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by ThresholdTuningLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegThresholdParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

        return ThresholdTuningLogic(slicer.mrmlScene)


def ensureDependencies():
    """Packages the engine needs (scipy, PyYAML, ...) pip-installed after a confirmation; no torch needed here."""
    from AutoSegSensitivity.mrml.dependencies import CORE_PACKAGES, ensure_dependencies

    try:
        return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, need_torch=False,
                                   packages=CORE_PACKAGES)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False


class AutoSegThresholdWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._result = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegThreshold.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoSegThresholdLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.sweepButton.clicked.connect(self.onSweep)
        self.ui.thresholdSlider.valueChanged.connect(self.onThresholdChanged)
        self.ui.applyOptimumButton.clicked.connect(self.onApplyOptimum)
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
        self._result = None

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

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
        self.ui.sweepButton.enabled = bool(p and p.structure)
        self.ui.applyOptimumButton.enabled = self._result is not None

    def _maps(self):
        return list(self.ui.probabilityVolumesSelector.checkedNodes())

    def onSweep(self):
        if not ensureDependencies():
            return
        import numpy as np

        with slicer.util.tryWithErrorDisplay("Threshold sweep failed.", waitCursor=True):
            p = self._parameterNode
            thresholds = np.round(np.arange(0.0, 1.0 + 1e-9, p.step), 6)
            metrics = ("dice", "msd", "hd", "hd95") if p.surfaceMetrics else ("dice",)
            result, table, chart, summary = self.logic.engine().sweep(
                self._maps(), list(self.ui.referenceSegmentationsSelector.checkedNodes()), p.structure,
                thresholds=thresholds, metrics=metrics)
            self._result = result
            t_opt, v_opt = result.optimum("dice")
            loss = result.loss_at(0.5, "dice")
            self.ui.resultLabel.text = (f"Dice optimum {v_opt:.4f} at t = {t_opt:.2f}; loss at 0.5: "
                                        f"{100 * loss:.2f} %" if loss is not None else f"Dice optimum at t = {t_opt:.2f}")
            slicer.modules.plots.logic().ShowChartInLayout(chart)
            p.threshold = t_opt
            self._checkCanApply()

    def onThresholdChanged(self, value):
        p = self._parameterNode
        if not p or not p.liveUpdate or not p.liveSegmentation or not self._maps():
            return
        with slicer.util.tryWithErrorDisplay("Could not update the segmentation.", waitCursor=False):
            self.logic.engine().apply_threshold(self._maps()[0], value, p.liveSegmentation, p.structure or None)

    def onApplyOptimum(self):
        with slicer.util.tryWithErrorDisplay("Could not apply the optimum threshold.", waitCursor=True):
            p = self._parameterNode
            t_opt, _ = self._result.optimum("dice")
            p.threshold = t_opt
            engine = self.logic.engine()
            for prob in self._maps():
                seg = engine.apply_threshold(prob, t_opt, p.liveSegmentation if len(self._maps()) == 1 else None,
                                             p.structure or None)
                if p.liveSegmentation is None:
                    p.liveSegmentation = seg
            if p.checkpoint and Path(p.checkpoint).is_file():
                engine.store_threshold(p.checkpoint, p.structure, t_opt, source="sweep dice (Slicer)")
                slicer.util.infoDisplay(f"Threshold {t_opt:.2f} for {p.structure} stored in {p.checkpoint}")


class AutoSegThresholdTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: a sweep on a phantom structure with a soft map has its Dice optimum where the
    engine finds it."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_sweep_on_phantom()

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
        logging.info("AutoSegThreshold self-test passed")
        self.delayDisplay("Test passed")
