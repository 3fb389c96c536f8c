"""Logic of the AutoSegTraining module: training in a background process (the CLI), progress from its
event stream, cancel and resume; prediction of probability maps and a segmentation from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from . import nodes
from .background import (SW_HIDE, STARTF_USESHOWWINDOW, BackgroundProcess, default_python,  # noqa: F401
                         engine_command, engine_env, kill_command, kill_process_tree, popen_options)


class TrainingProcess(BackgroundProcess):
    """A training run of ``python -m AutoSegSensitivity train`` in the background (a :class:`BackgroundProcess`
    whose cancel writes ``OUT/CANCEL``: the CLI stops at the next batch, keeping the last complete epoch, and
    is killed by :meth:`poll` once ``grace_s`` seconds have passed since the cancel without an exit)."""

    def __init__(self, command: List[str], out_dir: Path, env: Optional[Dict[str, str]] = None,
                 grace_s: float = 30.0, log_name: str = "train.log") -> None:
        from ..training import CANCEL_FILE

        super().__init__(command, out_dir, env, log_name=log_name, cancel_file=CANCEL_FILE, grace_s=grace_s)

    def progress(self) -> Tuple[int, int]:
        """``(epochs done, epochs planned)`` from the events read so far."""
        total = done = 0
        for e in self.events:
            if e.get("event") == "start":
                total = int(e.get("epochs", total))
            elif e.get("event") == "epoch":
                done = int(e.get("epoch", done))
                total = int(e.get("epochs", total))
        return done, total

    def curve_rows(self) -> List[Dict[str, Any]]:
        """One row per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_dice_mean`` (for the live plot)."""
        rows = []
        for e in self.events:
            if e.get("event") == "epoch":
                rows.append({k: e.get(k) for k in ("epoch", "train_loss", "val_loss", "val_dice_mean")})
        return rows


class TrainingLogic:
    """Builds and launches training commands, draws their curves, exports scene cases to a dataset folder
    and predicts probability maps from checkpoints into volume nodes."""

    def __init__(self, scene: Any, python: Optional[str] = None) -> None:
        self.scene = scene
        self.python = python or default_python()

    def build_command(self, config: Union[str, Path], data_dir: Union[str, Path], out_dir: Union[str, Path],
                      resume: bool = False, device: Optional[str] = None, overrides: Sequence[str] = (),
                      overwrite: bool = False) -> List[str]:
        """The command line of a training run (``python -m AutoSegSensitivity train ...``)."""
        config, data_dir = Path(config), Path(data_dir)
        if not config.is_file():
            raise InputError(config, "config", "an existing training config (.yaml/.json)")
        if not data_dir.is_dir():
            raise InputError(data_dir, "data", "an existing dataset folder (one sub-folder per case)")
        cmd = engine_command(self.python, "train", "--config", str(config), "--data", str(data_dir),
                             "--out", str(out_dir), "--quiet")
        if resume:
            cmd.append("--resume")
        elif overwrite:
            cmd.append("--overwrite")
        if device:
            if device not in ("auto", "cpu", "cuda"):
                raise InputError("training", "device", "auto, cpu or cuda", got=device)
            cmd += ["--device", device]
        for item in overrides:
            cmd += ["--set", str(item)]
        return cmd

    def start(self, config: Union[str, Path], data_dir: Union[str, Path], out_dir: Union[str, Path],
              extra_env: Optional[Dict[str, str]] = None, **kwargs: Any) -> TrainingProcess:
        """Launch training in the background; poll the returned process (the widget does so with a timer).
        ``kwargs`` go to :meth:`build_command`; ``extra_env`` adds environment variables (e.g. threads)."""
        cmd = self.build_command(config, data_dir, out_dir, **kwargs)
        return TrainingProcess(cmd, Path(out_dir), engine_env(extra_env))

    def update_curves(self, process: TrainingProcess, name: str = "Training curves") -> Tuple[Any, Any]:
        """Table and chart nodes of the loss and validation curves so far (reused by name)."""
        table = nodes.table_from_rows(process.curve_rows(), self.scene, f"{name} table",
                                      columns=["epoch", "train_loss", "val_loss", "val_dice_mean"])
        series = [nodes.plot_series(self.scene, table, "epoch", "train_loss", f"{name} train loss", (0.2, 0.4, 0.8)),
                  nodes.plot_series(self.scene, table, "epoch", "val_loss", f"{name} val loss", (0.8, 0.3, 0.2)),
                  nodes.plot_series(self.scene, table, "epoch", "val_dice_mean", f"{name} val Dice", (0.2, 0.6, 0.3))]
        chart = nodes.plot_chart(self.scene, name, series, x_title="epoch", y_title="loss / Dice")
        return table, chart

    def pair_scene_cases(self, volume_nodes: Sequence[Any]) -> List[Tuple[Any, Any]]:
        """Pair each volume node with its segmentation: the segmentation node whose reference geometry is
        that volume, else the first one whose name starts with the volume's name. InputError if none."""
        segs = [self.scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
                for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
        pairs = []
        for volume_node in volume_nodes:
            match = [s for s in segs if s.GetNodeReference("referenceImageGeometryRef") is volume_node]
            match = match or [s for s in segs if s.GetName().startswith(volume_node.GetName())]
            if not match:
                raise InputError(volume_node.GetName(), "segmentation", "a segmentation node that references this "
                                 "volume (or whose name starts with the volume's name)")
            pairs.append((volume_node, match[0]))
        return pairs

    def export_cases(self, pairs: Sequence[Tuple[Any, Any]], root: Union[str, Path]) -> List[Path]:
        """Write (volume node, segmentation node) pairs of the scene as a dataset folder (one sub-folder per
        volume name, ``io.write_case``) so that the background process can train on them."""
        from ..io import write_case

        out = []
        for volume_node, seg_node in pairs:
            image = nodes.volume_from_node(volume_node)
            seg = nodes.segmentation_from_node(seg_node, image)
            out.append(write_case(Path(root) / volume_node.GetName(), image, seg))
        return out

    def predict(self, checkpoint: Union[str, Path, Any], volume_node: Any, make_segmentation: bool = True,
                device: str = "cpu") -> Tuple[Dict[str, Any], Any]:
        """Probability-map volume nodes (``<volume>_<class>_prob``, one per class) and, optionally, a
        segmentation node ``<volume>_AutoSeg`` at the checkpoint's tuned thresholds. Nodes are reused."""
        from ..inference import load_checkpoint, predict_volume

        model = load_checkpoint(checkpoint, device=device) if isinstance(checkpoint, (str, Path)) else checkpoint
        image = nodes.volume_from_node(volume_node, copy=False)
        probs = predict_volume(model, image, device=device)
        prob_nodes = {name: nodes.volume_to_node(vol, self.scene, f"{volume_node.GetName()}_{name}_prob")
                      for name, vol in probs.items()}
        seg_node = None
        if make_segmentation:
            seg_node = nodes.get_or_create_node(self.scene, "vtkMRMLSegmentationNode", f"{volume_node.GetName()}_AutoSeg")
            for name, vol in probs.items():
                t = float(model.thresholds.get(name, 0.5))
                nodes.write_segment(seg_node, name, np.asarray(vol.array) >= t, image)
        return prob_nodes, seg_node

    def start_predict(self, checkpoint: Union[str, Path], volume_node: Any, out_dir: Union[str, Path],
                      device: str = "auto", segmentation: bool = True,
                      extra_env: Optional[Dict[str, str]] = None) -> BackgroundProcess:
        """Predict in a background process (``python -m AutoSegSensitivity predict``): the volume is written to
        ``out_dir/input/image.nrrd`` and the maps to ``out_dir/prediction``; load them with
        :meth:`load_prediction` once the process has exited with 0. With ``segmentation`` a segmentation is
        written too, at the checkpoint's tuned thresholds (0.5 where it has none)."""
        from ..io import write_volume

        checkpoint, out_dir = Path(checkpoint), Path(out_dir)
        if not checkpoint.is_file():
            raise InputError(checkpoint, "checkpoint", "an existing .pt file written by training")
        if device not in ("auto", "cpu", "cuda"):
            raise InputError("prediction", "device", "auto, cpu or cuda", got=device)
        image = write_volume(nodes.volume_from_node(volume_node), out_dir / "input" / "image.nrrd")
        cmd = engine_command(self.python, "predict", "--model", str(checkpoint), "--image", str(image),
                             "--out", str(out_dir / "prediction"), "--overwrite", "--device", device)
        if segmentation:
            from ..training import read_checkpoint

            tuned = str(read_checkpoint(checkpoint).get("thresholds_source", "default 0.5")) != "default 0.5"
            cmd += ["--tuned"] if tuned else ["--threshold", "0.5"]
        return BackgroundProcess(cmd, out_dir, engine_env(extra_env), log_name="predict.log")

    def load_prediction(self, out_dir: Union[str, Path], volume_node: Any) -> Tuple[Dict[str, Any], Any]:
        """Probability maps of a finished :meth:`start_predict` into ``<volume>_<structure>_prob`` nodes and,
        when the run wrote one, its segmentation into ``<volume>_AutoSeg`` (both reused by name)."""
        from ..io import read_segmentation, read_volume

        folder = Path(out_dir) / "prediction"
        maps = sorted(folder.glob("prob_*.nrrd"))
        if not maps:
            raise InputError(folder, "probability maps", "prob_<structure>.nrrd files written by predict")
        base = volume_node.GetName()
        prob_nodes = {}
        for path in maps:
            name = path.name[len("prob_"):-len(".nrrd")]
            prob_nodes[name] = nodes.volume_to_node(read_volume(path), self.scene, f"{base}_{name}_prob")
        seg_node = None
        if (folder / "segmentation.seg.nrrd").is_file():
            seg = read_segmentation(folder / "segmentation.seg.nrrd")
            seg_node = nodes.get_or_create_node(self.scene, "vtkMRMLSegmentationNode", f"{base}_AutoSeg")
            nodes.segmentation_to_node(seg, self.scene, f"{base}_AutoSeg", seg_node, reference_node=volume_node)
        return prob_nodes, seg_node

    @staticmethod
    def cuda_available() -> bool:
        """Whether torch sees a CUDA device (the GUI shows CUDA only then); False without torch."""
        try:
            import torch
        except ImportError:
            return False
        return bool(torch.cuda.is_available())
