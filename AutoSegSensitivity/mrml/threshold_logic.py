"""Logic of the AutoSegThreshold module: threshold sweeps on probability-map volume nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from . import nodes

METRIC_COLORS = {"dice": (0.2, 0.4, 0.8), "nsd": (0.5, 0.3, 0.7), "msd": (0.2, 0.6, 0.3), "hd": (0.8, 0.3, 0.2),
                 "hd95": (0.8, 0.6, 0.1)}


class ThresholdTuningLogic:
    """Sweeps thresholds over probability maps against reference segments, draws the curves with the
    optimum and 0.5 marked, thresholds a map into a segment, stores a tuned threshold in a checkpoint."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def case_arrays(self, probability_nodes: Sequence[Any], reference_nodes: Sequence[Any],
                    segment: str) -> Tuple[List[np.ndarray], List[Optional[np.ndarray]], List[tuple], List[str]]:
        """Probability arrays, reference masks on each map's grid (None where the segment is missing),
        spacings (z, y, x) and case names (the probability nodes' names)."""
        if not probability_nodes or len(probability_nodes) != len(reference_nodes):
            raise InputError("threshold sweep", "cases", "one reference segmentation per probability map",
                             got=f"{len(probability_nodes)} maps, {len(reference_nodes)} references")
        probs, refs, spacings, names = [], [], [], []
        for p_node, r_node in zip(probability_nodes, reference_nodes):
            prob = nodes.volume_from_node(p_node, copy=False)
            sid = nodes.segment_id_by_name(r_node, segment)
            probs.append(prob.array.astype(np.float32, copy=False))
            refs.append(None if sid is None else nodes.segment_mask(r_node, sid, prob))
            spacings.append(prob.spacing_zyx)
            names.append(p_node.GetName())
        return probs, refs, spacings, names

    def sweep(self, probability_nodes: Sequence[Any], reference_nodes: Sequence[Any], segment: str,
              thresholds: Any = None, metrics: Sequence[str] = ("dice", "nsd", "msd", "hd", "hd95"),
              name: Optional[str] = None, device: Optional[str] = "numpy",
              nsd_tolerance: float = 2.0) -> Tuple[Any, Any, Any, Any]:
        """Run ``sweep.sweep_thresholds`` on the scene's maps. Returns ``(result, table_node, chart_node,
        summary_table_node)``: the per-threshold table (units in column names), a chart with one curve per
        metric plus the optimum and 0.5 marked, and a summary (optimum, value and loss at 0.5, perturbation
        losses, prominence). ``nsd_tolerance``: the surface Dice's tolerance in mm. Nodes are named
        ``<segment> sweep ...`` and reused on re-run."""
        from ..sweep import DEFAULT_THRESHOLDS, column_name, prominence, sweep_thresholds

        probs, refs, spacings, names = self.case_arrays(probability_nodes, reference_nodes, segment)
        result = sweep_thresholds(probs, refs, spacings, DEFAULT_THRESHOLDS if thresholds is None else thresholds,
                                  metrics=tuple(metrics), case_names=names, structure=segment, device=device,
                                  nsd_tolerance=nsd_tolerance)
        base = name or f"{segment} sweep"
        table = nodes.table_from_rows(result.to_table(), self.scene, base)
        series = []
        marks: List[Dict[str, Any]] = []
        for m in result.metrics:
            col = column_name(m)
            series.append(nodes.plot_series(self.scene, table, "threshold", col, f"{base} {m}", METRIC_COLORS[m]))
            t_opt, v_opt = result.optimum(m)
            marks.append({"metric": m, "kind": "optimum", "threshold": t_opt, "value": v_opt})
            v05 = result.value_at(0.5, m)
            if v05 is not None:
                marks.append({"metric": m, "kind": "0.5", "threshold": 0.5, "value": v05})
        marks_node = nodes.table_from_rows(marks, self.scene, f"{base} marks")
        for kind, marker, color in (("optimum", "diamond", (0.9, 0.1, 0.1)), ("0.5", "square", (0.2, 0.2, 0.2))):
            rows = [r for r in marks if r["kind"] == kind and r["metric"] == "dice"]
            if rows:
                t = nodes.table_from_rows(rows, self.scene, f"{base} dice {kind}")
                series.append(nodes.plot_series(self.scene, t, "threshold", "value", f"{base} dice {kind}",
                                                color, line=False, marker=marker))
        chart = nodes.plot_chart(self.scene, base, series, title=f"{segment}: metrics vs threshold",
                                 x_title="threshold", y_title="Dice / distance (mm)")
        summary_rows = []
        masks = [r for r in refs if r is not None]
        prom = prominence(masks) if masks else float("nan")
        for m in result.metrics:
            t_opt, v_opt = result.optimum(m)
            row: Dict[str, Any] = {"metric": m, "optimum_threshold": t_opt, "optimum_value": v_opt,
                                   "value_at_0.5": result.value_at(0.5, m), "loss_at_0.5": result.loss_at(0.5, m),
                                   "prominence": prom}
            for d, sides in result.perturbation_losses(m).items():
                row[f"loss_pm{d:g}"] = sides["mean"]
            summary_rows.append(row)
        summary = nodes.table_from_rows(summary_rows, self.scene, f"{base} summary")
        marks_node.SetAttribute("AutoSegSensitivity.role", "sweep marks")
        return result, table, chart, summary

    def apply_threshold(self, probability_node: Any, threshold: float, segmentation_node: Any = None,
                        segment: Optional[str] = None, interactive: bool = False) -> Any:
        """Threshold a probability map (foreground where p >= t) into segment ``segment`` (default the
        map's name) of ``segmentation_node`` (default ``<map> segmentation``, reused); other segments kept.

        For a slider: ``interactive=True`` while it is dragged (only the map's work box is thresholded and
        only the binary labelmap is updated), ``interactive=False`` on release (the segment's other
        representations, e.g. the closed surface, are regenerated). See ``nodes.threshold_to_segment``."""
        nodes.checked_threshold(threshold)
        if segmentation_node is None:
            segmentation_node = nodes.get_or_create_node(self.scene, "vtkMRMLSegmentationNode",
                                                         f"{probability_node.GetName()} segmentation")
        nodes.threshold_to_segment(probability_node, threshold, segmentation_node,
                                   segment or probability_node.GetName(), interactive)
        return segmentation_node

    @staticmethod
    def store_threshold(checkpoint: Union[str, Path], structure: str, threshold: float, source: str = "sweep") -> Path:
        """Store a tuned threshold with the model (``inference.store_thresholds``)."""
        from ..inference import store_thresholds

        return store_thresholds(checkpoint, {structure: float(threshold)}, source=source)

    @staticmethod
    def save_thresholds(path: Union[str, Path], thresholds: Dict[str, float], metric: str = "dice",
                        source: str = "AutoSegThreshold") -> Path:
        """Write ``{structure: threshold}`` as a ``thresholds.json`` (the file ``autosegsens tune`` writes and
        ``apply`` / ``predict --thresholds`` read), atomically; thresholds outside [0, 1] are refused."""
        from ..tune import write_thresholds

        return write_thresholds(path, thresholds, metric=metric, source=source)

    @classmethod
    def add_threshold(cls, path: Union[str, Path], structure: str, threshold: float, metric: str = "dice",
                      source: str = "AutoSegThreshold") -> Path:
        """Store one structure's tuned threshold in the ``thresholds.json`` at ``path``: the other structures
        of an existing file are kept, with each structure's calibration temperature (``tune --calibration``;
        it does not depend on the threshold) (a file that is not a valid thresholds.json is an error, never
        overwritten); a new file is created otherwise. Atomic."""
        from ..tune import read_thresholds_file

        table: Dict[str, Any] = {}
        if Path(path).exists():
            for name, entry in read_thresholds_file(path)["structures"].items():
                table[name] = {"threshold": float(entry["threshold"])}
                if "temperature" in entry:
                    table[name]["temperature"] = entry["temperature"]
        table.setdefault(str(structure), {})["threshold"] = float(threshold)
        return cls.save_thresholds(path, table, metric=metric, source=source)

    @staticmethod
    def load_thresholds(path: Union[str, Path]) -> Dict[str, float]:
        """``{structure: threshold}`` from a ``thresholds.json`` (validated; an :class:`InputError` names the
        file and the field otherwise)."""
        from ..tune import read_thresholds

        return read_thresholds(path)
