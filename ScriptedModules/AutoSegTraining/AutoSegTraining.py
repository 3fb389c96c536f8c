"""AutoSegTraining: train a segmentation network in a background process and predict with it.

Train launches `python -m AutoSegSensitivity train` (the CLI) in the background; a timer reads its event
stream into a progress bar and a live loss / validation chart; Cancel stops it at the next batch keeping
the last epoch; 'Resume' continues. Predict runs `python -m AutoSegSensitivity predict` in the background
too and loads probability-map volumes (one per class) and a segmentation at the checkpoint's tuned
thresholds. The widget only moves GUI state
into the parameter node and calls AutoSegSensitivity.mrml.training_logic.TrainingLogic.
"""

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
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
from AutoSegSlicerLib.background import BackgroundRunner
from AutoSegSlicerLib.dependencies import ensureDependencies, installForSelfTest
from AutoSegSlicerLib.enginepath import find_engine
from AutoSegSlicerLib.widgets import ParameterNodeBinding, loadModuleUI, ready, showState

find_engine(__file__)
from AutoSegSensitivity.mrml import actions  # noqa: E402  (needs the engine found above)


class AutoSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "AutoSeg Training and Inference"
        self.parent.categories = ["Segmentation.AutoSegSensitivity"]
        self.parent.dependencies = []
        self.parent.contributors = ["AutoSegSensitivity developers"]
        self.parent.helpText = (
            "Train: choose a dataset folder (one sub-folder per case) or check volumes of the scene (each paired "
            "with the segmentation that references it), a base config, and override the network, loss, "
            "intensity transform, epochs and device. Training runs in a background process; the chart shows the "
            "training and validation loss and the validation Dice as epochs finish. Predict: a checkpoint and a "
            "volume give '<volume>_<class>_prob' volumes and the segmentation '<volume>_AutoSeg'." + sampledata.HELP)
        self.parent.acknowledgementText = (
            "Networks and losses after Bice et al., Smith et al. and Lei et al. (see the extension's papers list); "
            "torch through the PyTorch extension (SlicerPyTorch).")
        sampledata.registerAtStartup(self)


@parameterNodeWrapper
class AutoSegTrainingParameterNode:
    dataDir: Optional[Path] = None  # unset: None, shown empty (AutoSegSensitivity.mrml.path_fields)
    config: Optional[Path] = None
    network: str = "unet2d"
    loss: str = "bce"
    intensity: str = "SLF1"
    epochs: Annotated[int, WithinRange(1, 10000)] = 50
    device: str = "auto"
    outputDir: Optional[Path] = None
    resume: bool = False
    checkpoint: Optional[Path] = None
    predictVolume: vtkMRMLScalarVolumeNode
    makeSegmentation: bool = True


class AutoSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by TrainingLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegTrainingParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.training_logic import TrainingLogic

        return TrainingLogic(slicer.mrmlScene)


class AutoSegTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None
        self._chartShown = False
        self._predictVolume = None
        # training and prediction run in background processes, polled, cancelled and ended at cleanup by the Lib
        self._training = BackgroundRunner("AutoSegTraining train", self.onTrainingEvents, self.onTrainingFinished,
                                          self.onPollError)
        self._predicting = BackgroundRunner("AutoSegTraining predict", onFinished=self.onPredictFinished,
                                            onError=self.onPollError)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = loadModuleUI(self)
        self.logic = AutoSegTrainingLogic()
        self.binding = ParameterNodeBinding(self, self.logic, self.updateButtons, self.defaults)
        for combo, field in ((self.ui.networkComboBox, "network"), (self.ui.lossComboBox, "loss"),
                             (self.ui.intensityComboBox, "intensity"), (self.ui.deviceComboBox, "device")):
            combo.currentTextChanged.connect(lambda text, f=field: self._setField(f, text))
        self.ui.sceneVolumesSelector.checkedNodesChanged.connect(self.updateButtons)
        self.ui.trainButton.clicked.connect(self.onTrain)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.predictButton.clicked.connect(self.onPredict)
        self.binding.initialize()

    def cleanup(self):
        """Module unloaded (also when Slicer quits): a training or prediction still running is ended with its
        children, so none outlives Slicer (a later Resume would otherwise be a second writer)."""
        self._training.cleanup()
        self._predicting.cleanup()
        if self.binding is not None:
            self.binding.cleanup()

    def enter(self):
        self.binding.enter()

    def exit(self):
        self.binding.exit()

    def defaults(self, node):
        self.ui.networkComboBox.setCurrentText(node.network)
        self.ui.lossComboBox.setCurrentText(node.loss)
        self.ui.intensityComboBox.setCurrentText(node.intensity)
        self.ui.deviceComboBox.setCurrentText(node.device)

    def _setField(self, field, value):
        if self.binding and self.binding.node:
            setattr(self.binding.node, field, value)

    @property
    def _process(self):
        """The training run (a TrainingProcess), or None."""
        return self._training.process

    @property
    def _predictProcess(self):
        """The prediction run (a BackgroundProcess), or None."""
        return self._predicting.process

    def _running(self):
        return self._training.running

    def trainState(self):
        p = self.binding.node
        volumes = len(self.ui.sceneVolumesSelector.checkedNodes())
        if not p:
            return actions.train(None, None, None, volumes, self._running())
        return actions.train(p.config, p.outputDir, p.dataDir, volumes, self._running())

    def predictState(self):
        p = self.binding.node
        return actions.predict(p.checkpoint if p else None, p.predictVolume if p else None,
                               self._predicting.running)

    def updateButtons(self):
        showState(self.ui.trainButton, self.trainState())
        showState(self.ui.cancelButton, actions.cancel(self._running(), self._predicting.running))
        showState(self.ui.predictButton, self.predictState())

    def _showCudaIfPresent(self):
        if self.logic.engine().cuda_available() and self.ui.deviceComboBox.findText("cuda") < 0:
            self.ui.deviceComboBox.addItem("cuda")

    # ---- training -----------------------------------------------------------------------------------
    def onTrain(self):
        if not ready(self.trainState()) or not ensureDependencies(needTorch=True):
            return
        self._showCudaIfPresent()
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            p = self.binding.node
            engine = self.logic.engine()
            data = actions.path_or_none(p.dataDir)
            if data is None:
                volumes = list(self.ui.sceneVolumesSelector.checkedNodes())
                data = Path(p.outputDir) / "scene-cases"
                engine.export_cases(engine.pair_scene_cases(volumes), data)
            overrides = [f"model={p.network}", f"loss={p.loss}", f"intensity={p.intensity}", f"epochs={p.epochs}"]
            self._chartShown = False
            self._training.start(engine.start(p.config, data, p.outputDir, resume=p.resume, device=p.device,
                                              overrides=overrides))
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Training started..."
            self.updateButtons()

    def onPollError(self, message):
        self.ui.statusLabel.text = message

    def onTrainingEvents(self, process, events):
        from AutoSegSensitivity.progress import describe_epoch

        done, total = process.progress()
        if total:
            self.ui.progressBar.maximum = total
            self.ui.progressBar.value = done
        epochs = [e for e in events if e.get("event") == "epoch"]
        if epochs:
            self.ui.statusLabel.text = describe_epoch(epochs[-1])
            _, chart = self.logic.engine().update_curves(process)
            if not self._chartShown:  # once per run, whatever number of epochs the first poll read
                slicer.modules.plots.logic().ShowChartInLayout(chart)
                self._chartShown = True

    def onTrainingFinished(self, process):
        code = process.returncode
        self.updateButtons()
        if code == 0:
            self.ui.statusLabel.text = f"Done. Checkpoints in {process.out_dir}"
            # the bound node, or this scene's node when the module is not open (closed scene: binding unset)
            self.binding.currentNode().checkpoint = process.out_dir / "best.pt"
        elif code == 130 or process.cancel_requested:  # a killed run exits -9 (POSIX) or taskkill's code
            self.ui.statusLabel.text = "Cancelled; the last complete epoch is kept (tick Resume to continue)."
        else:
            slicer.util.errorDisplay(f"Training stopped with exit code {code}.", detailedText=process.log_tail())

    def onCancel(self):
        """Stops what runs and returns at once: training is asked to stop at the next batch (killed after the
        grace period if it does not), a prediction is killed; the poll timers see the exits."""
        with slicer.util.tryWithErrorDisplay("Could not cancel."):
            if self._training.running:
                self._training.cancel()
                self.ui.statusLabel.text = "Cancelling at the next batch..."
            if self._predicting.running:
                self._predicting.cancel()
                self.ui.statusLabel.text = "Cancelling the prediction..."

    # ---- prediction (background process, polled like training) ---------------------------------------
    def onPredict(self):
        import tempfile

        if not ready(self.predictState()) or not ensureDependencies(needTorch=True):
            return
        with slicer.util.tryWithErrorDisplay("Prediction failed to start.", waitCursor=True):
            p = self.binding.node
            outDir = Path(tempfile.mkdtemp(prefix="AutoSegPredict-", dir=slicer.app.temporaryPath))
            self._predictVolume = p.predictVolume
            self._predicting.start(self.logic.engine().start_predict(p.checkpoint, p.predictVolume, outDir,
                                                                     p.device, p.makeSegmentation))
            self.ui.statusLabel.text = "Predicting..."
            self.updateButtons()

    def onPredictFinished(self, process):
        self.updateButtons()
        if process.cancel_requested:
            self.ui.statusLabel.text = "Prediction cancelled."
            return
        if process.returncode != 0:
            slicer.util.errorDisplay(f"Prediction stopped with exit code {process.returncode}.",
                                     detailedText=process.log_tail())
            return
        with slicer.util.tryWithErrorDisplay("Could not load the prediction.", waitCursor=True):
            probs, seg = self.logic.engine().load_prediction(process.out_dir, self._predictVolume)
            first = next(iter(probs.values()))
            slicer.util.setSliceViewerLayers(background=self._predictVolume, foreground=first, foregroundOpacity=0.4)
            self.ui.statusLabel.text = f"Predicted {', '.join(probs)}"


class AutoSegTrainingTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: exports phantom cases from the scene, trains one short epoch in the background
    (the CLI) and predicts into volume nodes."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        # the dependency step first: exporting scene cases needs slicerio, training torch (PyTorch extension)
        self.assertTrue(installForSelfTest(needTorch=True), "the packages training needs are not installed")
        self.setUp()
        self.test_train_and_predict_on_phantom()
        self.setUp()
        self.test_widget_on_phantom()

    def test_train_and_predict_on_phantom(self):
        import tempfile
        import time

        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.phantom import make_phantom

        self.delayDisplay("Training on phantom cases in the background")
        tmp = Path(tempfile.mkdtemp(prefix="AutoSegTraining-"))
        engine = AutoSegTrainingLogic().engine()
        volumes = []
        for i in range(3):
            volume, seg = make_phantom(seed=(1, i), shape=(8, 64, 64))
            node = nodes.volume_to_node(volume, slicer.mrmlScene, f"case{i}")
            nodes.segmentation_to_node(seg, slicer.mrmlScene, f"case{i} structures", reference_node=node)
            volumes.append(node)
        engine.export_cases(engine.pair_scene_cases(volumes), tmp / "data")
        (tmp / "cfg.json").write_text('{"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain"],'
                                      ' "epochs": 1, "batch_size": 4, "samples_per_epoch": 8}')
        process = engine.start(tmp / "cfg.json", tmp / "data", tmp / "run", device="cpu")
        try:  # no widget owns this run: ended here, also after a failed assertion or the deadline
            deadline = time.time() + 600
            while process.running and time.time() < deadline:
                slicer.app.processEvents()
                process.poll()
                time.sleep(0.2)
            process.poll()
            self.assertEqual(process.returncode, 0, process.log_tail())
        finally:
            process.end()
        self.assertEqual(process.progress(), (1, 1))
        probs, seg = engine.predict(tmp / "run" / "best.pt", volumes[0])
        self.assertEqual(list(probs), ["Brain"])
        self.assertEqual(seg.GetName(), "case0_AutoSeg")

    def test_widget_on_phantom(self):
        import tempfile
        import time

        from AutoSegSensitivity.mrml import nodes
        from AutoSegSensitivity.phantom import make_phantom

        self.delayDisplay("Driving the AutoSegTraining widget: Train from checked scene volumes, then Predict")
        widget = slicer.util.getModuleWidget("AutoSegTraining")  # set up (also without a main window)
        widget.enter()  # as when the module is opened: binds the parameter node of this scene
        p = widget.binding.node
        for field in ("config", "outputDir", "dataDir", "checkpoint"):
            setattr(p, field, None)  # unset (an emptied ctkPathLineEdit reads as None)
        for edit in (widget.ui.configPathLineEdit, widget.ui.outputDirPathLineEdit, widget.ui.dataDirPathLineEdit,
                     widget.ui.checkpointPathLineEdit):
            self.assertEqual(edit.currentPath, "")  # an unset path shows empty, not "."
        self.assertFalse(widget.ui.trainButton.enabled)
        for missing in ("config", "output folder", "dataset folder"):
            self.assertIn(missing, widget.ui.trainButton.toolTip)
        self.assertFalse(widget.ui.predictButton.enabled)
        tmp = Path(tempfile.mkdtemp(prefix="AutoSegTrainingWidget-"))
        volumes = []
        for i in range(3):
            volume, seg = make_phantom(seed=(2, i), shape=(8, 64, 64))
            node = nodes.volume_to_node(volume, slicer.mrmlScene, f"case{i}")
            nodes.segmentation_to_node(seg, slicer.mrmlScene, f"case{i} structures", reference_node=node)
            widget.ui.sceneVolumesSelector.setCheckState(node, qt.Qt.Checked)
            volumes.append(node)
        (tmp / "cfg.json").write_text('{"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain"],'
                                      ' "batch_size": 4, "samples_per_epoch": 8}')
        widget.ui.configPathLineEdit.currentPath = str(tmp / "cfg.json")
        widget.ui.outputDirPathLineEdit.currentPath = str(tmp / "run")
        widget.ui.epochsSpinBox.value = 0  # below the field's WithinRange(1, 10000)
        self.assertEqual(p.epochs, 1)
        widget.ui.deviceComboBox.setCurrentText("cpu")
        self.assertTrue(widget.ui.trainButton.enabled, widget.ui.trainButton.toolTip)
        widget.ui.trainButton.click()
        self.assertTrue(widget.ui.cancelButton.enabled)
        self.assertFalse(widget.ui.trainButton.enabled)
        deadline = time.time() + 600
        while widget._training.active and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertEqual(widget._process.returncode, 0, widget._process.log_tail())
        self.assertTrue(widget._chartShown)
        self.assertEqual(Path(p.checkpoint), tmp / "run" / "best.pt")
        widget.ui.predictVolumeSelector.setCurrentNode(volumes[0])
        self.assertTrue(widget.ui.predictButton.enabled, widget.ui.predictButton.toolTip)
        widget.ui.predictButton.click()
        while widget._predicting.active and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.1)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("case0_Brain_prob"))
        logging.info("AutoSegTraining self-test passed")
        self.delayDisplay("Test passed")
