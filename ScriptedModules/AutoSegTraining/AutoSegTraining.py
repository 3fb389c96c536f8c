"""AutoSegTraining: train a segmentation network in a background process and predict with it.

Train launches `python -m AutoSegSensitivity train` (the CLI) in the background; a timer reads its event
stream into a progress bar and a live loss / validation chart; Cancel stops it at the next batch keeping
the last epoch; 'Resume' continues. Predict runs `python -m AutoSegSensitivity predict` in the background
too and loads probability-map volumes (one per class) and a segmentation at the checkpoint's tuned
thresholds. The widget only moves GUI state
into the parameter node and calls AutoSegSensitivity.mrml.training_logic.TrainingLogic.
"""

import logging
from pathlib import Path

import qt
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

POLL_MS = 1000


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
            "volume give '<volume>_<class>_prob' volumes and the segmentation '<volume>_AutoSeg'.")
        self.parent.acknowledgementText = ""


@parameterNodeWrapper
class AutoSegTrainingParameterNode:
    dataDir: Path
    config: Path
    network: str = "unet2d"
    loss: str = "bce"
    intensity: str = "SLF1"
    epochs: int = 50
    device: str = "auto"
    outputDir: Path
    resume: bool = False
    checkpoint: Path
    predictVolume: vtkMRMLScalarVolumeNode
    makeSegmentation: bool = True


class AutoSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Holds the parameter node; the work is done by TrainingLogic (AutoSegSensitivity.mrml)."""

    def getParameterNode(self):
        return AutoSegTrainingParameterNode(super().getParameterNode())

    def engine(self):
        from AutoSegSensitivity.mrml.training_logic import TrainingLogic

        return TrainingLogic(slicer.mrmlScene)


def ensureDependencies(needTorch=True):
    """torch through the PyTorch extension and the other packages with pip, after a confirmation."""
    from AutoSegSensitivity.mrml.dependencies import ensure_dependencies

    def installTorch():
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError("This module needs the PyTorch extension: install it from the Extensions Manager.")
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)

    try:
        return ensure_dependencies(slicer.util.confirmOkCancelDisplay, slicer.util.pip_install, installTorch, need_torch=needTorch)
    except Exception as exc:  # shown to the user, not only in the Python console
        slicer.util.errorDisplay(f"Could not install the Python packages this module needs: {exc}")
        return False


class AutoSegTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._process = None
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.timeout.connect(self.onPoll)
        self._predictProcess = None
        self._predictVolume = None
        self._predictTimer = qt.QTimer()
        self._predictTimer.setInterval(POLL_MS)
        self._predictTimer.timeout.connect(self.onPredictPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AutoSegTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AutoSegTrainingLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for combo, field in ((self.ui.networkComboBox, "network"), (self.ui.lossComboBox, "loss"),
                             (self.ui.intensityComboBox, "intensity"), (self.ui.deviceComboBox, "device")):
            combo.currentTextChanged.connect(lambda text, f=field: self._setField(f, text))
        self.ui.trainButton.clicked.connect(self.onTrain)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.predictButton.clicked.connect(self.onPredict)
        self.initializeParameterNode()

    def cleanup(self):
        self._timer.stop()
        self._predictTimer.stop()
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
        p = self._parameterNode
        self.ui.networkComboBox.setCurrentText(p.network)
        self.ui.lossComboBox.setCurrentText(p.loss)
        self.ui.intensityComboBox.setCurrentText(p.intensity)
        self.ui.deviceComboBox.setCurrentText(p.device)

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _setField(self, field, value):
        if self._parameterNode:
            setattr(self._parameterNode, field, value)

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameterNode
        running = self._process is not None and self._process.running
        self.ui.trainButton.enabled = bool(p and p.config and p.outputDir) and not running
        self.ui.cancelButton.enabled = running
        self.ui.predictButton.enabled = bool(p and p.checkpoint and p.predictVolume) and self._predictProcess is None

    def _showCudaIfPresent(self):
        if self.logic.engine().cuda_available() and self.ui.deviceComboBox.findText("cuda") < 0:
            self.ui.deviceComboBox.addItem("cuda")

    # ---- training -----------------------------------------------------------------------------------
    def onTrain(self):
        if not ensureDependencies():
            return
        self._showCudaIfPresent()
        with slicer.util.tryWithErrorDisplay("Could not start training.", waitCursor=True):
            p = self._parameterNode
            engine = self.logic.engine()
            data = p.dataDir if p.dataDir and str(p.dataDir) not in ("", ".") else None
            if data is None:
                volumes = list(self.ui.sceneVolumesSelector.checkedNodes())
                if not volumes:
                    raise ValueError("Choose a dataset folder or check volumes of the scene.")
                data = Path(p.outputDir) / "scene-cases"
                engine.export_cases(engine.pair_scene_cases(volumes), data)
            overrides = [f"model={p.network}", f"loss={p.loss}", f"intensity={p.intensity}", f"epochs={p.epochs}"]
            self._process = engine.start(p.config, data, p.outputDir, resume=p.resume, device=p.device,
                                         overrides=overrides)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Training started..."
            self._timer.start()
            self._checkCanApply()

    def onPoll(self):
        from AutoSegSensitivity.progress import describe_epoch

        process = self._process
        if process is None:
            self._timer.stop()
            return
        try:
            events = process.poll()
            done, total = process.progress()
            if total:
                self.ui.progressBar.maximum = total
                self.ui.progressBar.value = done
            epochs = [e for e in events if e.get("event") == "epoch"]
            if epochs:
                self.ui.statusLabel.text = describe_epoch(epochs[-1])
                _, chart = self.logic.engine().update_curves(process)
                if len(process.curve_rows()) == 1:
                    slicer.modules.plots.logic().ShowChartInLayout(chart)
            code = process.returncode
        except Exception as exc:  # a broken event line or a scene change must not kill the timer silently
            logging.exception("AutoSegTraining poll")
            code = None
            self.ui.statusLabel.text = f"Progress could not be read: {exc}"
        if code is not None:
            self._timer.stop()
            self._checkCanApply()
            if code == 0:
                self.ui.statusLabel.text = f"Done. Checkpoints in {process.out_dir}"
                self._parameterNode.checkpoint = process.out_dir / "best.pt"
            elif code == 130:
                self.ui.statusLabel.text = "Cancelled; the last complete epoch is kept (tick Resume to continue)."
            else:
                slicer.util.errorDisplay(f"Training stopped with exit code {code}.",
                                         detailedText=process.log_tail())

    def onCancel(self):
        if self._process is not None and self._process.running:
            with slicer.util.tryWithErrorDisplay("Could not cancel training.", waitCursor=True):
                self.ui.statusLabel.text = "Cancelling at the next batch..."
                slicer.app.processEvents()
                self._process.cancel()
                self.onPoll()

    # ---- prediction (background process, polled like training) ---------------------------------------
    def onPredict(self):
        import tempfile

        if not ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay("Prediction failed to start.", waitCursor=True):
            p = self._parameterNode
            outDir = Path(tempfile.mkdtemp(prefix="AutoSegPredict-", dir=slicer.app.temporaryPath))
            self._predictProcess = self.logic.engine().start_predict(p.checkpoint, p.predictVolume, outDir,
                                                                      p.device, p.makeSegmentation)
            self._predictVolume = p.predictVolume
            self.ui.predictButton.enabled = False
            self.ui.statusLabel.text = "Predicting..."
            self._predictTimer.start()

    def onPredictPoll(self):
        process = self._predictProcess
        if process is None or process.running:
            return
        self._predictTimer.stop()
        self._predictProcess = None
        self._checkCanApply()
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
        self.setUp()
        self.test_train_and_predict_on_phantom()

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
        while process.running:
            slicer.app.processEvents()
            process.poll()
            time.sleep(0.2)
        process.poll()
        self.assertEqual(process.returncode, 0, process.log_tail())
        self.assertEqual(process.progress(), (1, 1))
        probs, seg = engine.predict(tmp / "run" / "best.pt", volumes[0])
        self.assertEqual(list(probs), ["Brain"])
        self.assertEqual(seg.GetName(), "case0_AutoSeg")
        logging.info("AutoSegTraining self-test passed")
        self.delayDisplay("Test passed")
