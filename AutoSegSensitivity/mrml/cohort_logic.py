"""Logic of AutoSegThreshold's "Cohort" section: ``autosegsens tune`` over a cohort on disk, run in a
background process, its results as MRML nodes, one case at a time loaded into the scene for the threshold
slider, and the thresholds saved as a ``thresholds.json``.

The run is the CLI (the same answer as in a terminal), started by :class:`~.background.BackgroundProcess`
like training; its progress comes from ``OUT/events.jsonl`` (:mod:`AutoSegSensitivity.progress`); cancel
kills it and its children at once. What it wrote (``summary.csv``, ``cases.csv``, ``sweeps/<s>/sweep.csv``,
``thresholds.json``) becomes a summary table node (one row per structure), a per-case table node and a
chart of the cohort's Dice against the threshold, one curve per structure.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import InputError
from . import nodes
from .background import EVENTS_FILE, BackgroundProcess, default_python, engine_command, engine_env

PathLike = Union[str, Path]

METRICS = ("dice", "nsd", "msd", "hd", "hd95")
"""The metrics ``autosegsens tune --metric`` optimises (``sweep.SWEEP_METRICS``)."""
MIN_FOLDS, MAX_FOLDS = 2, 20
"""Bounds of the folds field (tune needs at least 2; K = min(folds, cases))."""

CURVE_COLORS = ((0.85, 0.2, 0.2), (0.2, 0.45, 0.85), (0.2, 0.65, 0.3), (0.85, 0.55, 0.1), (0.55, 0.3, 0.75),
                (0.1, 0.65, 0.7), (0.6, 0.4, 0.2), (0.9, 0.4, 0.7))


class CohortRun(BackgroundProcess):
    """A ``tune`` run in the background. Cancel kills it and its children at once (tune keeps nothing
    half-done: its outputs are written atomically at the end)."""

    def __init__(self, command: Sequence[str], out_dir: PathLike, env: Optional[Dict[str, str]] = None) -> None:
        super().__init__(command, out_dir, env, log_name="tune.log", cancel_file=None, grace_s=0.0)

    def progress(self) -> Tuple[int, int]:
        """``(cases read, cases in all)`` from the events read so far (``(0, 0)`` before the start event)."""
        done = total = 0
        for e in self.events:
            if e.get("event") == "start":
                total = int(e.get("cases", total))
            elif e.get("event") == "case":
                done, total = int(e.get("done", done)), int(e.get("total", total))
        return done, total

    def error_message(self) -> str:
        """The run's ``error`` event, else the end of its output."""
        e = self.last_event("error")
        return str(e.get("message")) if e else self.log_tail()


@dataclass
class CohortResult:
    """The nodes made from one finished run and what they were made from."""

    out_dir: Path
    metric: str
    summary_table: Any
    cases_table: Any
    curves_table: Any
    chart: Any
    thresholds: Dict[str, float]
    """``{structure: threshold chosen on all cases}``."""
    cases: List[Tuple[str, str]]
    """``(structure, case)`` in the order of the rows of ``cases_table``."""
    inputs: Dict[str, Any] = field(default_factory=dict)
    """The run's inputs (``prob_dir``, ``ref_dir``, ``format``, ``dataset_json``, ...) from thresholds.json."""


@dataclass
class LoadedCase:
    """The nodes of one case loaded for the slider: the background volume ``image`` (the case's image, or,
    when the contours folder has none for it, the row's probability map: ``has_image`` False), maps
    ``{structure: node}``, reference segmentation and the thresholded segmentation (``structure`` at
    ``threshold``: p >= t), both on the grid of the row's map. ``status`` is the line to show."""

    case: str
    structure: str
    threshold: float
    image: Any
    maps: Dict[str, Any]
    reference: Any
    segmentation: Any
    has_image: bool = True

    @property
    def status(self) -> str:
        """One line for the GUI: the case, the structure at its threshold and, without an image, what is
        shown as the background instead."""
        text = (f"{self.case}: {self.structure} at the cohort's threshold {self.threshold:.2f}; move the slider "
                "to check it.")
        if not self.has_image:
            text += f" The case has no image: its {self.structure} probability map is the background."
        return text


def _number(text: str) -> Any:
    """A CSV cell as a float, bool or None (empty), else the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def read_csv_rows(path: Path) -> List[Dict[str, Any]]:
    """Rows of a CSV written by the engine (``report.write_csv``), numbers as floats."""
    if not path.is_file():
        raise InputError(path, "file", "a CSV written by autosegsens tune", got="no such file")
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]


class CohortTuningLogic:
    """Starts ``autosegsens tune`` on a maps folder and a contours folder, turns its outputs into nodes,
    loads a case for the slider and saves the thresholds."""

    def __init__(self, scene: Any, python: Optional[str] = None) -> None:
        self.scene = scene
        self.python = python or default_python()

    # ---- the run -----------------------------------------------------------------------------------------
    @staticmethod
    def check_inputs(maps_dir: Optional[PathLike], contours_dir: Optional[PathLike], metric: str, folds: int,
                     nsd_tolerance: float = 2.0, dataset_json: Optional[PathLike] = None, fmt: str = "auto",
                     ref_format: str = "auto") -> None:
        """InputError naming the field when an input cannot be used (before any process starts)."""
        from ..io.references import REF_FORMATS
        from ..tune import PROB_FORMATS

        for value, name, what in ((maps_dir, "maps folder", "probability maps: one folder per case "
                                   "(prob_<S>.nrrd), nnU-Net's .npz files, or one multi-channel image per case"),
                                  (contours_dir, "contours folder", "reference cases: one folder per case (an image "
                                   "optional), or nnU-Net's label folder (<case>.nii.gz)")):
            if value is None or not Path(value).is_dir():
                raise InputError(value if value is not None else "cohort", name, f"an existing folder of {what}",
                                 got="no such folder" if value is not None else "none")
        if dataset_json is not None and not Path(dataset_json).is_file():
            raise InputError(dataset_json, "dataset.json", "an existing dataset.json (or labels JSON) naming the "
                             "labels, or no file (then found beside the maps or the contours)", got="no such file")
        if fmt not in PROB_FORMATS:
            raise InputError("cohort", "format", ", ".join(PROB_FORMATS), got=repr(fmt))
        if ref_format not in REF_FORMATS:
            raise InputError("cohort", "reference format", ", ".join(REF_FORMATS), got=repr(ref_format))
        if metric not in METRICS:
            raise InputError("cohort", "metric", f"one of {', '.join(METRICS)}", got=repr(metric))
        if isinstance(folds, bool) or int(folds) != folds or not MIN_FOLDS <= int(folds) <= MAX_FOLDS:
            raise InputError("cohort", "folds", f"an integer in [{MIN_FOLDS}, {MAX_FOLDS}]", got=repr(folds))
        if metric == "nsd" and not (math.isfinite(float(nsd_tolerance)) and float(nsd_tolerance) >= 0):
            raise InputError("cohort", "NSD tolerance", "a finite number of mm >= 0", got=repr(nsd_tolerance))

    def build_command(self, maps_dir: PathLike, contours_dir: PathLike, out_dir: PathLike, metric: str = "dice",
                      folds: int = 5, nsd_tolerance: float = 2.0, seed: int = 0,
                      bootstrap: Optional[int] = None, dataset_json: Optional[PathLike] = None, fmt: str = "auto",
                      ref_format: str = "auto") -> List[str]:
        """The command line of the run (``python -m AutoSegSensitivity tune ... --overwrite``, progress in
        ``out_dir/events.jsonl`` by ``--events``: tune's results appear beside it when complete). The layouts
        are tune's: ``fmt`` (``--format``) and ``ref_format`` (``--ref-format``) are detected by tune when
        ``auto``; ``dataset_json`` (``--dataset-json``) names the labels when no dataset.json lies beside the
        maps (nnU-Net output, one multi-channel image per case) or the nnU-Net label folder."""
        self.check_inputs(maps_dir, contours_dir, metric, folds, nsd_tolerance, dataset_json, fmt, ref_format)
        args = ["--prob-dir", str(maps_dir), "--ref-dir", str(contours_dir), "--out", str(out_dir), "--overwrite",
                "--events", str(Path(out_dir) / EVENTS_FILE),
                "--metric", metric, "--folds", str(int(folds)), "--seed", str(int(seed)),
                "--format", fmt, "--ref-format", ref_format]
        if dataset_json is not None:
            args += ["--dataset-json", str(dataset_json)]
        if metric == "nsd":
            args += ["--nsd-tolerance", repr(float(nsd_tolerance))]
        if bootstrap is not None:
            args += ["--bootstrap", str(int(bootstrap))]
        return engine_command(self.python, "tune", *args)

    def start(self, maps_dir: PathLike, contours_dir: PathLike, out_dir: PathLike, metric: str = "dice",
              folds: int = 5, nsd_tolerance: float = 2.0, extra_env: Optional[Dict[str, str]] = None,
              **kwargs: Any) -> CohortRun:
        """Start the run in the background and return at once; poll the returned run (the widget does so with
        a timer) and call :meth:`load_results` once it exited with 0. ``kwargs`` go to :meth:`build_command`
        (``dataset_json``, ``fmt``, ``ref_format``, ``seed``, ``bootstrap``)."""
        cmd = self.build_command(maps_dir, contours_dir, out_dir, metric, folds, nsd_tolerance, **kwargs)
        return CohortRun(cmd, out_dir, engine_env(extra_env))

    # ---- results as nodes ----------------------------------------------------------------------------------
    def load_results(self, out_dir: PathLike, name: str = "Cohort tuning") -> CohortResult:
        """Table and chart nodes (created or reused by name) from a finished run's output folder:

        * ``<name> summary``: one row per structure: ``structure``, ``n_cases``, ``threshold``,
          ``dice_at_threshold``, ``dice_at_0.5`` (pooled over the cases), the tuned metric at both when it is
          not Dice, ``cv_gain`` with ``cv_gain_ci_low`` / ``cv_gain_ci_high`` (95 % bootstrap) and
          ``ci_holds_zero``, ``fold_thresholds``;
        * ``<name> cases``: one row per (structure, case) of ``cases.csv`` (fold, fold threshold, the case's
          values at the threshold, at its fold's threshold and at 0.5);
        * ``<name> Dice vs threshold``: a table (``threshold`` and one pooled-Dice column per structure) and a
          chart with one curve per structure."""
        from ..tune import CASES_CSV, SUMMARY_CSV, SWEEPS_DIR, THRESHOLDS_JSON, map_stem, read_thresholds_file

        out = Path(out_dir)
        doc = read_thresholds_file(out / THRESHOLDS_JSON)
        metric = str(doc.get("metric", "dice"))
        summary = read_csv_rows(out / SUMMARY_CSV)
        curves: Dict[str, List[Dict[str, Any]]] = {}
        for row in summary:
            s = str(row["structure"])
            curves[s] = read_csv_rows(out / SWEEPS_DIR / map_stem(s) / "sweep.csv")

        def dice_at(s: str, t: float) -> Optional[float]:
            hit = [r for r in curves[s] if abs(float(r["threshold"]) - t) <= 1e-9]
            return float(hit[0]["dice"]) if hit else None

        rows = []
        for r in summary:
            s, t = str(r["structure"]), float(r["t_opt"])
            row: Dict[str, Any] = {"structure": s, "n_cases": r["n_cases"], "threshold": t,
                                   "dice_at_threshold": dice_at(s, t), "dice_at_0.5": dice_at(s, 0.5)}
            if metric != "dice":
                row[f"{metric}_at_threshold"] = r.get(f"{metric}_at_opt")
                row[f"{metric}_at_0.5"] = r.get(f"{metric}_at_0.5")
            row.update({k: r.get(k) for k in ("cv_gain", "cv_gain_ci_low", "cv_gain_ci_high", "ci_holds_zero")})
            row["fold_thresholds"] = "" if r.get("fold_thresholds") is None else str(r["fold_thresholds"])
            rows.append(row)
        summary_node = nodes.table_from_rows(rows, self.scene, f"{name} summary")
        case_rows = read_csv_rows(out / CASES_CSV)
        for r in case_rows:
            r["structure"], r["case"] = str(r["structure"]), str(r["case"])
        cases_node = nodes.table_from_rows(case_rows, self.scene, f"{name} cases")

        structures = [str(r["structure"]) for r in summary]
        grid = [float(r["threshold"]) for r in curves[structures[0]]] if structures else []
        curve_rows = []
        for i, t in enumerate(grid):
            row = {"threshold": t}
            for s in structures:
                row[s] = float(curves[s][i]["dice"]) if i < len(curves[s]) else None
            curve_rows.append(row)
        base = f"{name} Dice vs threshold"
        curves_node = nodes.table_from_rows(curve_rows, self.scene, base, columns=["threshold", *structures])
        series = [nodes.plot_series(self.scene, curves_node, "threshold", s, f"{base} {s}",
                                    CURVE_COLORS[k % len(CURVE_COLORS)]) for k, s in enumerate(structures)]
        chart = nodes.plot_chart(self.scene, base, series, title="Cohort: pooled Dice vs threshold",
                                 x_title="threshold", y_title="Dice (pooled over cases)")
        for node, role in ((summary_node, "cohort summary"), (cases_node, "cohort cases"), (curves_node, "cohort curves")):
            node.SetAttribute("AutoSegSensitivity.role", role)
            node.SetAttribute("AutoSegSensitivity.source", str(out))
        thresholds = {s: float(e["threshold"]) for s, e in doc["structures"].items()}
        return CohortResult(out, metric, summary_node, cases_node, curves_node, chart, thresholds,
                            [(r["structure"], r["case"]) for r in case_rows], dict(doc.get("inputs") or {}))

    # ---- one case into the scene -------------------------------------------------------------------------
    def load_case(self, result: CohortResult, row: int, threshold: Optional[float] = None) -> LoadedCase:
        """Load the case of row ``row`` of the per-case table, read as ``tune`` read it (every layout of
        :mod:`AutoSegSensitivity.io.references` for the contours: a dataset folder with or without an image,
        nnU-Net's label folder; maps, nnU-Net's .npz or one multi-channel image per case for the
        probabilities, :func:`~AutoSegSensitivity.tune.read_case_maps`): every structure's map
        (``<case>_<structure>_prob``), the contours (``<case> reference``) on the grid of the row's map, and
        ``<case> threshold``, the row's structure thresholded at ``threshold`` (default the cohort's
        threshold; p >= t) as AutoSegThreshold's slider does it (``ThresholdTuningLogic.apply_threshold``).
        The background volume is the case's image (``<case>``) when it has one, else the row's map
        (:attr:`LoadedCase.has_image`). Nodes are reused by name."""
        from ..io.dataset import load_case
        from ..io.references import case_reference, detect_ref_format, read_reference, reference_on_grid
        from ..tune import read_case_maps
        from .threshold_logic import ThresholdTuningLogic

        if not 0 <= int(row) < len(result.cases):
            raise InputError(result.cases_table.GetName(), "row", f"a row in [0, {len(result.cases) - 1}]", got=row)
        structure, case = result.cases[int(row)]
        inputs = result.inputs
        prob_dir, ref_dir = Path(str(inputs["prob_dir"])), Path(str(inputs.get("ref_dir", "")))
        dataset_json = inputs.get("dataset_json") or None
        ref_format = detect_ref_format(ref_dir, str(inputs.get("ref_format") or "auto"))
        labels, ending = None, ".nii.gz"
        if ref_format == "nnunet":
            from ..io.nnunet import dataset_file_ending, read_dataset_labels
            from ..io.references import find_dataset_json

            dj = find_dataset_json(ref_dir, prob_dir, dataset_json)
            labels, ending = read_dataset_labels(dj), dataset_file_ending(dj)
        ref = case_reference(ref_dir, case, ref_format, labels, ending)
        image = None
        if ref.case is not None:  # an image (or a DICOM series) in the case folder: the reference on its grid
            image, reference = load_case(ref.case)
        else:
            reference = read_reference(ref)
        maps, problems = read_case_maps(prob_dir, case, list(result.thresholds), fmt=str(inputs.get("format", "auto")),
                                        dataset_json=dataset_json, ref_dir=ref_dir, ref_format=ref_format)
        if structure not in maps:
            reason = "; ".join(p[2] for p in problems if p[1] == structure) or "not found"
            raise InputError(prob_dir, f"{case}: {structure}", "a readable probability map", got=reason)
        reference = reference_on_grid(reference, maps[structure], ref, f"{prob_dir} ({case}, {structure})")
        map_nodes = {s: nodes.volume_to_node(v, self.scene, f"{case}_{s}_prob") for s, v in maps.items()}
        map_node = map_nodes[structure]
        image_node = nodes.volume_to_node(image, self.scene, case) if image is not None else map_node
        ref_node = nodes.segmentation_to_node(reference, self.scene, f"{case} reference", reference_node=map_node)
        t = float(result.thresholds[structure] if threshold is None else threshold)
        seg_node = nodes.get_or_create_node(self.scene, "vtkMRMLSegmentationNode", f"{case} threshold")
        seg_node.SetNodeReferenceID("referenceImageGeometryRef", map_node.GetID())
        ThresholdTuningLogic(self.scene).apply_threshold(map_node, t, seg_node, structure)
        return LoadedCase(case, structure, t, image_node, map_nodes, ref_node, seg_node, has_image=image is not None)

    # ---- thresholds.json -----------------------------------------------------------------------------------
    @staticmethod
    def save(result: CohortResult, path: PathLike, thresholds: Optional[Dict[str, float]] = None) -> Path:
        """Write the run's thresholds (or ``thresholds``: ``{structure: t}`` overriding some of them, e.g. after
        the slider) into the ``thresholds.json`` at ``path``, atomically, with tune's per-structure entries
        (fold thresholds, CV numbers). Structures of an existing file that the run did not tune are kept; a
        file that is not a valid thresholds.json is an error and is not overwritten."""
        from ..tune import THRESHOLDS_JSON, read_thresholds_file, write_thresholds

        path = Path(path)
        entries: Dict[str, Any] = {}
        if path.exists():
            entries.update({s: dict(e) for s, e in read_thresholds_file(path)["structures"].items()})
        tuned = read_thresholds_file(result.out_dir / THRESHOLDS_JSON)["structures"]
        for s, e in tuned.items():
            entry = dict(e)
            if thresholds and s in thresholds:
                entry["threshold"] = float(thresholds[s])
                entry["source"] = "set in AutoSegThreshold (cohort)"
            entries[s] = entry
        return write_thresholds(path, entries, metric=result.metric, source="AutoSegThreshold cohort tuning",
                                inputs=result.inputs)


def write_phantom_cohort(root: PathLike, cases: int = 4, seed: int = 0,
                         shape: Optional[Sequence[int]] = (8, 48, 48)) -> Tuple[Path, Path]:
    """A small cohort on disk for trying the Cohort section (and its self-test): ``cases`` phantom cases
    (``phantom.make_phantom``: CT and reference structures) with cautious probability maps of
    ``sampledata.PROBABILITY_STRUCTURES`` (``sampledata.probability_map``, blurred by at least 1.5 voxels so
    that the optimum lies below 0.5 at any grid size), written as ``root/maps/<case>/prob_<structure>.nrrd``
    (what ``predict`` writes) and ``root/contours/<case>/{image.nrrd, segmentation.seg.nrrd}`` (a dataset
    folder). Returns ``(maps folder, contours folder)``."""
    from ..io import write_case, write_volume
    from ..phantom import case_name, make_phantom
    from ..tune import map_stem
    from .sampledata import BLUR_MM, PROBABILITY_STRUCTURES, probability_map

    root = Path(root)
    maps_dir, contours_dir = root / "maps", root / "contours"
    for n in range(int(cases)):
        ct, reference = make_phantom(seed=(int(seed), n), shape=shape)
        blur = max(BLUR_MM, 1.5 * max(ct.spacing_zyx[1:]))
        write_case(contours_dir / case_name(n), ct, reference)
        for s in PROBABILITY_STRUCTURES:
            prob = probability_map(reference.mask(s), ct.spacing_zyx, blur_mm=blur)
            write_volume(ct.with_array(prob), maps_dir / case_name(n) / f"prob_{map_stem(s)}.nrrd")
    return maps_dir, contours_dir
