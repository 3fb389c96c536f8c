"""Cohort threshold tuning (Bice et al. 2021, paper 000) with an honest held-out estimate.

For every structure of many cases: the threshold that maximises the pooled Dice (or optimises another
metric of :mod:`AutoSegSensitivity.sweep`), chosen on all cases, and a deterministic cross-validation that
says whether it beats 0.5 on cases it was not tuned on.

**Streaming.** Cases are read one at a time (``jobs`` processes over cases); of each case only small
per-structure arrays over the threshold grid are kept: the confusion counts ``tp[t]`` and ``npred[t]``
(|P(t) ∩ R| and |P(t)|, from one binning pass of :mod:`AutoSegSensitivity.sweep`) and ``nref`` = |R|, plus
the case's curve of the metric when the metric is not Dice. Pooled Dice of any subset of cases is then a
sum: ``2 Σ tp / (Σ npred + Σ nref)``. Memory does not grow with the number of cases beyond these arrays.

**Aggregate per metric.** Dice: pooled over voxels and cases (paper Eq. 1). Other metrics (distances,
and any metric :func:`~AutoSegSensitivity.sweep.sweep_thresholds` supports): the mean over cases of the
per-case values, cases where the value is infinite (one side empty) left out; pooling surface distances
would need every case's distance arrays, which a streaming tuner does not keep. ``sweep.csv`` of a
non-Dice metric therefore holds its mean curve and an empty pooled column.

**Optimum**: :meth:`SweepResult.optimum` (best value, ties toward 0.5, then the lower threshold).

**Cross-validation** (deterministic): cases sorted by name, case ``i`` in fold ``i mod K`` with
``K = min(folds, n_cases)``; fold ``k``'s threshold is the optimum of the aggregate over the other folds;
``cv_at_tuned`` is the aggregate over all cases, each case at its fold's threshold (for Dice: the pooled
Dice of the sums of each case's counts at its own fold threshold); ``cv_at_0.5`` the aggregate at 0.5;
``cv_gain`` = ``cv_at_tuned - cv_at_0.5`` for metrics where higher is better and ``cv_at_0.5 -
cv_at_tuned`` otherwise (positive = the tuned thresholds are better on held-out cases).
The **95 % bootstrap CI** of the gain resamples cases with replacement (``n_boot`` resamples drawn as
``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))``) with the fold thresholds fixed, and
takes the 2.5th and 97.5th percentiles (``numpy.percentile``, linear). A CI that holds 0 is flagged.

**thresholds.json** (:func:`write_thresholds`, :func:`read_thresholds`): ``{"format":
"autosegsens-thresholds", "version": 1, "metric": "dice", "structures": {name: {"threshold": t,
"fold_thresholds": [...], ...}}, "inputs": {...}}``; read by ``apply``, ``predict --thresholds`` and the
AutoSegThreshold module. With calibration (:mod:`AutoSegSensitivity.calibration`, counted in the same pass)
each structure also holds ``"temperature"``, ``"fold_temperatures"`` and ``"threshold_calibrated"``; readers
that do not know them ignore them.

**Shards**: :func:`collect_counts` (discovery + counting, optionally of one shard's cases) and
:func:`tune_from_counts` (aggregation) are the two halves of :func:`tune_cohort`;
:mod:`AutoSegSensitivity.tune_shards` writes a shard's counts and merges them.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .held_out import bootstrap_ci
from .metrics import DEFAULT_NSD_TOLERANCE_MM, _check_tolerance
from .atomic import write_text
from .mapnames import map_stem  # noqa: F401  (re-exported: tune.map_stem is public)
from .errors import InputError
from .sweep import (DEFAULT_THRESHOLDS, HIGHER_IS_BETTER, SWEEP_METRICS, SweepResult, _sweep_case, check_probability,
                    parse_thresholds, sweep_thresholds)

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "THRESHOLDS_JSON", "SUMMARY_CSV", "SWEEPS_DIR", "REPORT_HTML", "FORMAT_TAG",
    "StructureCounts", "CrossValidation", "StructureTuning", "TuneResult",
    "structure_counts", "fold_assignment", "aggregate_curve", "cross_validate",
    "map_stem", "find_map", "tune_cohort", "write_outputs", "CohortCounts", "collect_counts", "tune_from_counts",
    "calibration_rows", "CALIBRATION_CSV", "temperatures_for",
    "write_thresholds", "read_thresholds_file", "read_thresholds", "thresholds_for",
    "threshold_case", "apply_cohort", "problem_line", "no_usable_case_error", "detect_format", "list_prob_cases",
]

THRESHOLDS_JSON = "thresholds.json"
SUMMARY_CSV = "summary.csv"
CASES_CSV = "cases.csv"
SWEEPS_DIR = "sweeps"
REPORT_HTML = "report.html"
CALIBRATION_CSV = "calibration.csv"
FORMAT_TAG = "autosegsens-thresholds"
MAP_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".nhdr")
PROB_FORMATS = ("auto", "maps", "nnunet", "channels")
DEFAULT_FOLDS = 5
DEFAULT_BOOTSTRAP = 2000


# --------------------------------------------------------------------------------------------------------
# per case: counts
# --------------------------------------------------------------------------------------------------------


@dataclass
class StructureCounts:
    """One structure of one case over the threshold grid: ``tp[i]`` = |P(t_i) ∩ R|, ``npred[i]`` = |P(t_i)|,
    ``nref`` = |R|, ``nvox`` = voxels of the map, ``curve`` = the case's values of a non-Dice metric
    (None for Dice) and ``calibration`` = the case's :class:`~AutoSegSensitivity.calibration.CalibrationCounts`
    (None unless asked for)."""

    tp: np.ndarray
    npred: np.ndarray
    nref: int
    nvox: int
    curve: Optional[np.ndarray] = None
    calibration: Optional[Any] = None  # calibration.CalibrationCounts when tuning with --calibration


def structure_counts(prob: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                     thresholds: Union[np.ndarray, Sequence[float]] = DEFAULT_THRESHOLDS, metric: str = "dice",
                     source: str = "probability map",
                     nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM,
                     calibration_margin: Optional[float] = None) -> StructureCounts:
    """Counts (and, for a non-Dice ``metric``, the per-case curve) of one map ``prob`` (z, y, x; values in
    [0, 1]) against its reference mask ``ref`` (same shape), spacing in mm (z, y, x); ``nsd_tolerance`` (mm)
    is the surface Dice's tolerance when ``metric`` is ``nsd``; with ``calibration_margin`` (mm) also the
    calibration histogram (:func:`AutoSegSensitivity.calibration.case_calibration`). NaN or values outside
    [0, 1], or a shape mismatch, are an :class:`InputError` naming ``source``."""
    _check_metric(metric)
    th = parse_thresholds(thresholds)
    p = check_probability(prob, source)
    r = np.asarray(ref)
    r = r if r.dtype == bool else r != 0
    if p.ndim != 3 or r.shape != p.shape:
        raise InputError(source, "shape", f"a 3D map on the reference grid {r.shape}", got=p.shape)
    sp = np.asarray(spacing, dtype=float)
    out = _sweep_case(p, r, sp, th, False)
    curve = None
    if metric != "dice":
        res = sweep_thresholds([p], [r], [sp], th, metrics=(metric,), case_names=["case"], device="numpy",
                               nsd_tolerance=nsd_tolerance)
        curve = np.asarray(res.per_case["case"][metric], dtype=float)
    cal = None
    if calibration_margin is not None:
        from .calibration import case_calibration

        cal = case_calibration(p, r, sp, calibration_margin)
    return StructureCounts(np.asarray(out.tp, dtype=np.int64), np.asarray(out.npred, dtype=np.int64),
                           int(out.nref), int(p.size), curve, cal)


def _check_metric(metric: str) -> None:
    if metric not in SWEEP_METRICS:
        raise InputError("tune", "metric", f"one of {list(SWEEP_METRICS)}", got=repr(metric))


# --------------------------------------------------------------------------------------------------------
# aggregation and cross-validation
# --------------------------------------------------------------------------------------------------------


def _dice(tp: np.ndarray, npred: np.ndarray, nref: Union[int, np.ndarray]) -> np.ndarray:
    den = npred + nref
    return np.where(den > 0, 2.0 * tp / np.maximum(den, 1), 1.0)


def aggregate_curve(counts: Sequence[StructureCounts], metric: str = "dice") -> np.ndarray:
    """The cohort curve over the grid: pooled Dice, or for another metric the mean of the finite per-case
    values (``inf`` where no case is finite)."""
    if metric == "dice":
        return _dice(np.sum([c.tp for c in counts], axis=0), np.sum([c.npred for c in counts], axis=0),
                     sum(c.nref for c in counts))
    stack = np.array([c.curve for c in counts], dtype=float)
    return _finite_mean(stack, axis=0)


def _finite_mean(stack: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(stack)
    cnt = finite.sum(axis=axis)
    s = np.where(finite, stack, 0.0).sum(axis=axis)
    return np.where(cnt > 0, s / np.maximum(cnt, 1), np.inf)


def _curve_result(th: np.ndarray, curve: np.ndarray, metric: str, structure: Optional[str] = None) -> SweepResult:
    """A one-curve :class:`SweepResult` (for its optimum / value / loss rules)."""
    return SweepResult(th, (metric,), {metric: curve}, {metric: curve}, {metric: np.zeros(th.size, int)}, {}, [],
                       [], structure)


def fold_assignment(n_cases: int, folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """Fold of each case (cases sorted by name): case ``i`` in fold ``i mod K``, ``K = min(folds, n)``."""
    if folds < 2:
        raise InputError("tune", "folds", "at least 2", got=folds)
    k = min(int(folds), int(n_cases))
    return np.arange(n_cases) % max(k, 1)


@dataclass
class CrossValidation:
    """Held-out estimate of one structure (see the module docstring). ``folds[i]`` is case i's fold,
    ``fold_thresholds[k]`` fold k's threshold; values are the metric's aggregate."""

    folds: List[int]
    fold_thresholds: List[float]
    at_05: float
    at_tuned: float
    gain: float
    ci_low: float
    ci_high: float
    n_boot: int

    @property
    def ci_holds_zero(self) -> bool:
        return bool(self.ci_low <= 0.0 <= self.ci_high)


def _index_of(th: np.ndarray, t: float) -> int:
    hit = np.flatnonzero(np.abs(th - t) <= 1e-9)
    if not hit.size:
        raise InputError("tune", "thresholds", f"a grid holding {t:g}", got=f"[{th[0]:g} .. {th[-1]:g}]")
    return int(hit[0])


def cross_validate(counts: Sequence[StructureCounts], thresholds: Union[np.ndarray, Sequence[float]] = DEFAULT_THRESHOLDS,
                   metric: str = "dice", folds: int = DEFAULT_FOLDS, seed: int = 0,
                   n_boot: int = DEFAULT_BOOTSTRAP) -> CrossValidation:
    """Cross-validate the threshold of one structure over cases already sorted by name (at least 2)."""
    _check_metric(metric)
    th = parse_thresholds(thresholds)
    n = len(counts)
    if n < 2:
        raise InputError("tune", "cases", "at least 2 cases with the structure for cross-validation", got=n)
    fold = fold_assignment(n, folds)
    k = int(fold.max()) + 1
    fold_t = []
    for f in range(k):
        train = [c for c, g in zip(counts, fold) if g != f]
        fold_t.append(_curve_result(th, aggregate_curve(train, metric), metric).optimum(metric)[0])
    j_tuned = np.array([_index_of(th, fold_t[g]) for g in fold])
    j05 = _index_of(th, 0.5)
    higher = HIGHER_IS_BETTER[metric]

    if metric == "dice":
        rows = np.arange(n)
        tp = np.array([c.tp for c in counts])
        npred = np.array([c.npred for c in counts])
        nref = np.array([c.nref for c in counts])
        a_tp, a_np = tp[rows, j_tuned], npred[rows, j_tuned]
        b_tp, b_np = tp[:, j05], npred[:, j05]

        def agg(idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            r = nref[idx].sum(axis=-1)
            return (_dice(a_tp[idx].sum(axis=-1), a_np[idx].sum(axis=-1), r),
                    _dice(b_tp[idx].sum(axis=-1), b_np[idx].sum(axis=-1), r))
    else:
        curves = np.array([c.curve for c in counts], dtype=float)
        a_v = curves[np.arange(n), j_tuned]
        b_v = curves[:, j05]

        def agg(idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
            return _finite_mean(a_v[idx], axis=-1), _finite_mean(b_v[idx], axis=-1)

    tuned, at05 = (float(v) for v in agg(np.arange(n)))
    gain = _gain(tuned, at05, higher)

    def resampled_gains(idx: np.ndarray) -> np.ndarray:
        bt, b5 = agg(idx)
        with np.errstate(invalid="ignore"):
            return (bt - b5) if higher else (b5 - bt)

    lo, hi = bootstrap_ci(resampled_gains, n, seed, n_boot)
    lo, hi = (math.nan, math.nan) if lo is None else (lo, hi)
    return CrossValidation([int(g) for g in fold], [float(t) for t in fold_t], at05, tuned, gain, lo, hi, int(n_boot))


def _gain(tuned: float, at05: float, higher: bool) -> float:
    if not (math.isfinite(tuned) and math.isfinite(at05)):
        return math.nan
    return tuned - at05 if higher else at05 - tuned


# --------------------------------------------------------------------------------------------------------
# files of a cohort
# --------------------------------------------------------------------------------------------------------


def _maps_in(folder: Path) -> Dict[str, Path]:
    """``{file stem after prob_: path}`` of the probability maps in a case folder."""
    out: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        name = p.name
        if not (p.is_file() and name.startswith("prob_")):
            continue
        for suffix in MAP_SUFFIXES:
            if name.lower().endswith(suffix):
                out.setdefault(name[len("prob_"):-len(suffix)], p)
                break
    return out


def find_map(case_dir: PathLike, structure: str) -> Optional[Path]:
    """``<case_dir>/prob_<structure>.(nrrd|nii.gz|nii|nhdr)`` or None."""
    return _maps_in(Path(case_dir)).get(map_stem(structure)) if Path(case_dir).is_dir() else None


def detect_format(prob_dir: PathLike, fmt: str = "auto") -> str:
    """``maps``, ``nnunet`` or ``channels``. ``auto``: ``nnunet`` when ``prob_dir`` holds ``*.npz`` files;
    ``channels`` when it holds volume files directly, or when its first case folder holding volume files
    has no ``prob_*`` map but one volume file (MONAI's ``SaveImage`` layout, see
    :mod:`AutoSegSensitivity.io.channels`); else ``maps``. A case folder holding a reference segmentation
    (``labels.nii.gz``, ``segmentation.seg.nrrd``) and no ``prob_*`` map raises :class:`InputError` (a
    reference folder given as the maps)."""
    from .io.channels import CHANNEL_SUFFIXES, is_channels_folder
    from .io.dataset import LABEL_NAMES, SEGMENTATION_NAME

    if fmt not in PROB_FORMATS:
        raise InputError("tune", "format", ", ".join(PROB_FORMATS), got=repr(fmt))
    if fmt != "auto":
        return fmt
    prob_dir = Path(prob_dir)
    if not prob_dir.is_dir():
        return "maps"  # list_prob_cases names the missing folder
    if any(prob_dir.glob("*.npz")):
        return "nnunet"
    if is_channels_folder(prob_dir):
        return "channels"
    for folder in sorted(p for p in prob_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        volumes = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(CHANNEL_SUFFIXES)]
        refs = [p.name for p in volumes if p.name in LABEL_NAMES + (SEGMENTATION_NAME,)]
        if refs and not _maps_in(folder):  # a reference folder given as --prob-dir
            raise InputError(prob_dir, "format", "probability maps (<case>/prob_<Structure>.nrrd, <case>.npz or "
                             "one multi-channel image per case)",
                             got=f"reference segmentations ({folder.name}/{refs[0]}): this looks like a reference "
                                 "folder (labels, not probability maps)")
        if volumes:
            return "channels" if len(volumes) == 1 and not _maps_in(folder) else "maps"
    return "maps"


def list_prob_cases(prob_dir: PathLike, fmt: str) -> Dict[str, Path]:
    """``{case name: case folder (maps), .npz file (nnunet) or image / case folder (channels)}``, sorted."""
    prob_dir = Path(prob_dir)
    if not prob_dir.is_dir():
        raise InputError(prob_dir, "folder", "a folder of probability maps", got="no such folder")
    if fmt == "nnunet":
        items = {p.name[:-4]: p for p in prob_dir.glob("*.npz")}
    elif fmt == "channels":
        from .io.channels import list_channel_cases

        items = list_channel_cases(prob_dir)
    else:
        items = {p.name: p for p in prob_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return dict(sorted(items.items()))


def _missing_prob_reason(prob_dir: PathLike, fmt: str, case: str) -> str:
    where = {"nnunet": f"{case}.npz", "channels": f"{case}.nii.gz (or {case}/)"}.get(fmt, f"{case}/")
    return str(InputError(Path(prob_dir) / where, "file", "the probabilities of this reference case",
                          got="none"))


def _read_reference(case: Any):
    """The reference segmentation of a case: an :class:`~AutoSegSensitivity.io.references.Reference`
    (any layout) or a dataset :class:`~AutoSegSensitivity.io.dataset.Case`, reading the image header only
    when possible."""
    from .io.references import Reference, read_reference

    if not isinstance(case, Reference):
        case = Reference(case.name, case.path, case.kind, image_path=case.image_path,
                         segmentation_path=case.segmentation_path, labels_path=case.labels_path,
                         names=case.names_path, case=case)
    return read_reference(case)


def _reference_labels(ref_dir: PathLike, prob_dir: Optional[PathLike], ref_fmt: str,
                      dataset_json: Optional[PathLike]) -> Tuple[str, Optional[Dict[str, int]], str]:
    """``(reference format, labels of an nnU-Net label folder or None, its file ending)``."""
    from .io.references import detect_ref_format, find_dataset_json

    ref_fmt = detect_ref_format(ref_dir, ref_fmt)
    if ref_fmt != "nnunet":
        return ref_fmt, None, ".nii.gz"
    from .io.nnunet import dataset_file_ending, read_dataset_labels

    dj = find_dataset_json(ref_dir, prob_dir, dataset_json)
    return ref_fmt, read_dataset_labels(dj), dataset_file_ending(dj)


def _prob_labels(prob_dir: PathLike, fmt: str, dataset_json: Optional[PathLike]) -> Tuple[Optional[Dict[str, int]], str, Optional[Path]]:
    """``(channel labels, file ending, labels file)`` of nnU-Net or channels probabilities (None for maps)."""
    if fmt == "nnunet":
        from .io.nnunet import check_plans, dataset_file_ending, read_dataset_labels

        dj = Path(dataset_json) if dataset_json is not None else Path(prob_dir) / "dataset.json"
        labels, ending = read_dataset_labels(dj), dataset_file_ending(dj)
        check_plans(Path(prob_dir) / "plans.json")
        return labels, ending, dj
    if fmt == "channels":
        from .io.channels import find_channel_labels, read_channel_labels

        dj = find_channel_labels(prob_dir, dataset_json)
        return read_channel_labels(dj), ".nii.gz", dj
    return None, ".nii.gz", None


def no_usable_case_error(source: PathLike, problems: Sequence[Tuple[str, str, str]], first: int = 5) -> InputError:
    """The error when no case can be used: the first reason of each of the first ``first`` cases (file and
    field), then ``and N more``; a reason about a whole folder (no case, no structure) comes first, and
    reasons of structures only when no case has one. ``problems`` rides along on the error
    (``.problems``) for callers that list them all."""
    by_case: Dict[str, str] = {}
    for case, s, reason in problems:
        if case:
            by_case.setdefault(case, f"{s}: {reason}" if s else reason)
    items = [reason for case, s, reason in problems if not case and not s]
    items += [f"{c}: {by_case[c]}" for c in sorted(by_case)]
    if not items:
        items = [problem_line(p) for p in problems]
    text = "; ".join(items[:first]) if items else f"no cases found in {source}"
    if len(items) > first:
        text += f"; and {len(items) - first} more"
    err = InputError(source, "cases", f"no usable case: {text}")
    err.problems = list(problems)
    return err


# --------------------------------------------------------------------------------------------------------
# the per-case job (runs in worker processes)
# --------------------------------------------------------------------------------------------------------


@dataclass
class _CaseTask:
    name: str
    ref_case: Any  # io.references.Reference (or io.dataset.Case)
    prob_path: Path
    fmt: str
    structures: Optional[List[str]]
    labels: Optional[Dict[str, int]]
    metric: str
    thresholds: np.ndarray
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM
    calibration_margin: Optional[float] = None


@dataclass
class _CaseOut:
    name: str
    counts: Dict[str, StructureCounts] = field(default_factory=dict)
    problems: List[Tuple[str, str]] = field(default_factory=list)
    seen: List[str] = field(default_factory=list)


def _count_case(task: _CaseTask) -> _CaseOut:
    from .io.references import reference_on_grid

    out = _CaseOut(task.name)
    try:
        seg = _read_reference(task.ref_case)
    except Exception as exc:  # one bad case never stops the cohort
        out.problems.append(("", _reason(exc)))
        return out
    spacing = seg.geometry.spacing_zyx
    ref_names = seg.names

    def use(structure: str, prob: np.ndarray, source: str) -> None:
        if structure not in ref_names:
            out.problems.append((structure, f"{task.ref_case.path}: segments: expected {structure!r}, "
                                            f"got {ref_names}"))
            return
        try:
            out.counts[structure] = structure_counts(prob, seg.mask(structure), spacing, task.thresholds,
                                                     task.metric, source, task.nsd_tolerance,
                                                     task.calibration_margin)
        except Exception as exc:
            out.problems.append((structure, _reason(exc)))

    if task.fmt == "nnunet":
        from .io.nnunet import iter_probabilities

        wanted = [s for s in (task.structures or list(task.labels)) if s in task.labels]
        out.seen = list(wanted)
        try:
            for s, arr in iter_probabilities(task.prob_path, task.labels, seg.geometry.shape, wanted):
                use(s, arr, f"{task.prob_path} channel {task.labels[s]} ({s})")
        except Exception as exc:
            out.problems.append(("", _reason(exc)))
        return out

    if task.fmt == "channels":
        from .io.channels import channel_file, channel_header, channel_index, iter_channel_maps

        wanted = [s for s in (task.structures or list(task.labels)) if s in task.labels]
        out.seen = list(wanted)
        try:
            image = channel_file(task.prob_path)
            geom, n, _ = channel_header(image)
            index = channel_index(task.labels, n, image)
            seg = reference_on_grid(seg, geom, task.ref_case, image)
            for s, vol in iter_channel_maps(image, task.labels, wanted):
                use(s, vol.array, f"{image} channel {index[s]} ({s})")
        except Exception as exc:
            out.problems.append(("", _reason(exc)))
        return out

    from .io.images import read_volume

    maps = _maps_in(task.prob_path)
    by_stem = {map_stem(n): n for n in ref_names}
    wanted = task.structures if task.structures is not None else [by_stem.get(st, st) for st in maps]
    out.seen = list(wanted)
    if not wanted:
        out.problems.append(("", str(InputError(task.prob_path, "files", "probability maps prob_<structure>.nrrd "
                                                "(or .nii.gz)", got="none"))))
    for s in wanted:
        path = maps.get(map_stem(s))
        if path is None:
            out.problems.append((s, f"{task.prob_path}: prob_{map_stem(s)}.nrrd: expected a probability map, "
                                    "got none"))
            continue
        try:
            vol = read_volume(path)
            seg = reference_on_grid(seg, vol, task.ref_case, path)  # a cropped image-less reference is placed
        except Exception as exc:
            out.problems.append((s, _reason(exc)))
            continue
        use(s, vol.array, str(path))
        del vol
    return out


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------------------
# the cohort
# --------------------------------------------------------------------------------------------------------


@dataclass
class StructureTuning:
    """The tuning of one structure: its cohort sweep (a :class:`SweepResult` holding Dice, plus the metric
    when it is not Dice), the optimum on all cases and the cross-validation (None with fewer than 2 cases)."""

    structure: str
    cases: List[str]
    result: SweepResult
    t_opt: float
    value_at_opt: float
    value_at_05: float
    loss_at_05: Optional[float]
    prominence: Optional[float]
    cv: Optional[CrossValidation]
    calibration: Optional[Any] = None  # calibration.StructureCalibration with --calibration


@dataclass
class TuneResult:
    """Everything ``autosegsens tune`` writes: per-structure tunings, problems as ``(case, structure,
    reason)`` one-liners, the inputs and settings."""

    metric: str
    structures: Dict[str, StructureTuning]
    problems: List[Tuple[str, str, str]]
    inputs: Dict[str, Any]
    cases: List[str]
    prominence_source: str

    def problem_lines(self) -> List[str]:
        return [problem_line(p) for p in self.problems]


def problem_line(problem: Tuple[str, str, str]) -> str:
    """``case: structure: reason`` (empty parts left out): one line naming the file, field and expectation."""
    case, structure, reason = problem
    return ": ".join(x for x in (case, structure) if x) + f": {reason}"


def _prominence_from(ref_dir: PathLike, structures: Sequence[str],
                     dataset_json: Optional[PathLike] = None) -> Dict[str, float]:
    """Paper Eq. 4 per structure over the references of a dataset folder or an nnU-Net label folder
    (streamed: one case at a time)."""
    from .io.references import scan_references

    true = {s: 0 for s in structures}
    total = {s: 0 for s in structures}
    ref_fmt, labels, ending = _reference_labels(ref_dir, None, "auto", dataset_json)
    for case in scan_references(ref_dir, ref_fmt, labels, ending)[0].values():
        try:
            seg = _read_reference(case)
        except Exception:  # a bad training case is left out of the prominence
            continue
        for s in structures:
            if s in seg:
                true[s] += int(np.count_nonzero(seg.mask(s)))
                total[s] += int(np.prod(seg.geometry.shape))
    return {s: true[s] / total[s] for s in structures if total[s]}


@dataclass
class CohortCounts:
    """What tune keeps of a cohort before aggregating (all cases, or one shard's): the matched case names
    of the whole cohort (``names``, sorted), the cases counted here (``cases``), each case's probability path
    (for problem lines), the problems found before counting, the per-case outputs in name order, the
    structures asked for, the threshold grid and the inputs/settings (``inputs`` of thresholds.json)."""

    names: List[str]
    cases: List[str]
    prob_paths: Dict[str, str]
    problems: List[Tuple[str, str, str]]
    outs: List[_CaseOut]
    wanted: Optional[List[str]]
    thresholds: np.ndarray
    inputs: Dict[str, Any]


def tune_cohort(prob_dir: PathLike, ref_dir: PathLike, fmt: str = "auto", dataset_json: Optional[PathLike] = None,
                structures: Optional[Sequence[str]] = None, metric: str = "dice", folds: int = DEFAULT_FOLDS,
                seed: int = 0, train_dir: Optional[PathLike] = None, jobs: int = 1,
                thresholds: Union[np.ndarray, Sequence[float], str, None] = DEFAULT_THRESHOLDS,
                n_boot: int = DEFAULT_BOOTSTRAP, on_case: Optional[Callable[[str], None]] = None,
                nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM, ref_format: str = "auto",
                allow_incomplete: bool = False, on_start: Optional[Callable[[List[str]], None]] = None,
                calibration: bool = False, calibration_margin: Optional[float] = None) -> TuneResult:
    """Tune every structure over the cases of ``prob_dir`` (``fmt``: maps, nnU-Net output or one
    multi-channel image per case) matched by name with the references in ``ref_dir`` (``ref_format``: a
    dataset folder or nnU-Net's label folder, :mod:`AutoSegSensitivity.io.references`; images are not
    needed); see the module docstring. Cases, structures and maps with problems are listed in
    :attr:`TuneResult.problems` and the rest goes on; when no case can be used, an :class:`InputError`
    lists the first cases' reasons (:func:`no_usable_case_error`). ``on_case(name)`` is called as each case
    finishes (progress); ``on_start(names)`` once, with the cases to be read, before the first is read.
    ``nsd_tolerance`` (mm): the surface Dice's tolerance when ``metric`` is ``nsd``.
    A maps folder written by ``predict`` whose cases lack a finished ``prediction.json`` is refused with an
    :class:`InputError` (:func:`~AutoSegSensitivity.predict_shards.check_finished`); ``allow_incomplete``
    leaves those cases out instead and lists them in the problems and ``inputs["incomplete_cases_left_out"]``.
    With ``calibration``, also each structure's calibration (:mod:`AutoSegSensitivity.calibration`, region
    margin ``calibration_margin`` mm, default 10) from the same pass over the maps."""
    return tune_from_counts(collect_counts(prob_dir, ref_dir, fmt, dataset_json, structures, metric, folds, seed,
                                           train_dir, jobs, thresholds, n_boot, on_case, nsd_tolerance,
                                           ref_format=ref_format, allow_incomplete=allow_incomplete,
                                           on_start=on_start, calibration=calibration,
                                           calibration_margin=calibration_margin))


def collect_counts(prob_dir: PathLike, ref_dir: PathLike, fmt: str = "auto", dataset_json: Optional[PathLike] = None,
                   structures: Optional[Sequence[str]] = None, metric: str = "dice", folds: int = DEFAULT_FOLDS,
                   seed: int = 0, train_dir: Optional[PathLike] = None, jobs: int = 1,
                   thresholds: Union[np.ndarray, Sequence[float], str, None] = DEFAULT_THRESHOLDS,
                   n_boot: int = DEFAULT_BOOTSTRAP, on_case: Optional[Callable[[str], None]] = None,
                   nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM, shard: Optional[Tuple[int, int]] = None,
                   calibration: bool = False, calibration_margin: Optional[float] = None,
                   ref_format: str = "auto", allow_incomplete: bool = False,
                   on_start: Optional[Callable[[List[str]], None]] = None) -> CohortCounts:
    """Find the cohort's cases and count them (one pass over each case's maps): everything
    :func:`tune_from_counts` needs. ``shard = (I, N)`` counts only cases I, I+N, ... of the sorted matched
    names (as ``predict --shard``); the settings are checked and recorded as for a whole run."""
    from .io.references import missing_reference_reason, scan_references
    from .predict_shards import check_finished, model_identity, unfinished_reasons

    _check_metric(metric)
    if metric == "nsd":
        _check_tolerance(nsd_tolerance)
    th = parse_thresholds(thresholds)
    _index_of(th, 0.5)
    for name, value, least in (("jobs", jobs, 1), ("folds", folds, 2), ("bootstrap resamples", n_boot, 1)):
        if int(value) < least:
            raise InputError("tune", name, f"at least {least}", got=value)
    margin = None
    if calibration:
        from .calibration import DEFAULT_MARGIN_MM

        margin = float(DEFAULT_MARGIN_MM if calibration_margin is None else calibration_margin)
        if not (math.isfinite(margin) and margin >= 0):
            raise InputError("tune", "calibration margin", "a number of mm >= 0", got=calibration_margin)
    fmt = detect_format(prob_dir, fmt)
    problems: List[Tuple[str, str, str]] = []
    wanted = list(structures) if structures else None
    ref_fmt, ref_labels, ref_ending = _reference_labels(ref_dir, prob_dir, ref_format, dataset_json)
    labels, _, dj = _prob_labels(prob_dir, fmt, dataset_json)
    if labels is not None and wanted:
        for s in [s for s in wanted if s not in labels]:
            problems.append(("", s, f"{dj}: labels: expected a label named {s!r}, got {list(labels)}"))
        wanted = [s for s in wanted if s in labels]
    probs = list_prob_cases(prob_dir, fmt)
    refs, ref_problems = scan_references(ref_dir, ref_fmt, ref_labels, ref_ending)
    for name, reason in ref_problems:
        problems.append((name, "", reason))
    left_out = check_finished(prob_dir, refs, allow_incomplete) if fmt == "maps" else []
    why = unfinished_reasons(prob_dir, left_out) if left_out else {}
    for name in left_out:  # unfinished predictions: left out (--allow-incomplete), said once per case
        problems.append((name, "", f"{Path(prob_dir) / name}: {why.get(name, 'unfinished')} "
                                   "(case left out: --allow-incomplete)"))
        probs.pop(name, None)
        refs.pop(name, None)
    for name in sorted(set(probs) - set(refs)):
        if not any(p[0] == name for p in problems):
            problems.append((name, "", missing_reference_reason(ref_dir, ref_fmt, name, ref_ending)))
    for name in sorted(set(refs) - set(probs)):
        problems.append((name, "", _missing_prob_reason(prob_dir, fmt, name)))
    names = sorted(set(probs) & set(refs))
    if not names:
        raise no_usable_case_error(prob_dir, sorted(problems, key=lambda p: p[0]))
    model = model_identity(prob_dir, names) if fmt == "maps" else None  # the maps' model, for predict --thresholds
    counted = names
    if shard is not None:
        from .predict_shards import shard_names

        counted = shard_names(names, int(shard[0]), int(shard[1]))
    tasks = [_CaseTask(n, refs[n], probs[n], fmt, wanted, labels, metric, th, float(nsd_tolerance),
                       calibration_margin=margin) for n in counted]
    if on_start is not None:
        on_start(list(counted))
    outs: List[_CaseOut] = []

    def take(res: _CaseOut) -> None:
        outs.append(res)
        if on_case is not None:
            on_case(res.name)

    if int(jobs) > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(int(jobs), len(tasks))) as pool:
            for res in pool.map(_count_case, tasks):
                take(res)
    else:
        for t in tasks:
            take(_count_case(t))
    inputs = {"prob_dir": str(prob_dir), "ref_dir": str(ref_dir), "format": fmt, "ref_format": ref_fmt,
              "dataset_json": str(dataset_json) if dataset_json else None, "train_dir": str(train_dir) if train_dir else None,
              "structures": list(structures) if structures else None, "metric": metric, "folds": int(folds),
              "seed": int(seed), "bootstrap_resamples": int(n_boot),
              **({"nsd_tolerance_mm": float(nsd_tolerance)} if metric == "nsd" else {}),
              **({"incomplete_cases_left_out": left_out} if left_out else {}),
              **({"calibration": {"margin_mm": margin}} if margin is not None else {}),
              **({"model": model} if model is not None else {}),
              "thresholds": {"min": float(th[0]), "max": float(th[-1]), "count": int(th.size)}}
    return CohortCounts(names, list(counted), {n: str(probs[n]) for n in names}, problems, outs, wanted, th, inputs)


def tune_from_counts(cc: CohortCounts) -> TuneResult:
    """Aggregate the counts of a whole cohort (one run, or merged shards) into a :class:`TuneResult`:
    optimum, cross-validation, prominence and, when counted, calibration of every structure."""
    inputs = cc.inputs
    metric, folds, seed, n_boot = inputs["metric"], int(inputs["folds"]), int(inputs["seed"]), int(inputs["bootstrap_resamples"])
    train_dir, ref_dir, th = inputs.get("train_dir"), inputs["ref_dir"], cc.thresholds
    names = cc.names
    problems = list(cc.problems)
    per_structure: Dict[str, Dict[str, StructureCounts]] = {}
    order: List[str] = list(cc.wanted or [])
    for res in cc.outs:
        for s in res.seen:
            if s not in order:
                order.append(s)
        for s, c in res.counts.items():
            per_structure.setdefault(s, {})[res.name] = c
        for s, reason in res.problems:
            problems.append((res.name, s, reason))

    if not per_structure:
        raise no_usable_case_error(inputs["prob_dir"], problems)
    found = [s for s in order if s in per_structure]
    for s in order:
        if s not in per_structure:
            problems.append(("", s, "structure: expected maps and references in at least one case, got none"))
    # a structure tuned on fewer cases than the cohort says so, case by case (a case without that map
    # is otherwise silent when the structures come from the files found)
    for s in found:
        for n in names:
            if n not in per_structure[s] and not any(p[0] == n and p[1] in (s, "") for p in problems):
                problems.append((n, s, f"{cc.prob_paths[n]}: structure {s!r}: expected a probability map in this "
                                       "case, got none (the structure is tuned without this case)"))
    if train_dir is not None:
        prom = _prominence_from(train_dir, found, inputs.get("dataset_json"))
        prom_source = f"training references ({train_dir})"
    else:
        prom = {}
        for s in found:
            cs = per_structure[s].values()
            prom[s] = sum(c.nref for c in cs) / sum(c.nvox for c in cs)
        prom_source = f"tuning references ({ref_dir}); no --train-dir given"

    margin = (inputs.get("calibration") or {}).get("margin_mm")
    tunings: Dict[str, StructureTuning] = {}
    for s in found:
        cases = sorted(per_structure[s])
        counts = [per_structure[s][c] for c in cases]
        tunings[s] = tu = _tune_structure(s, cases, counts, th, metric, folds, seed, n_boot, prom.get(s))
        if tu.cv is None:
            problems.append(("", s, f"cross-validation: expected at least 2 cases, got {len(cases)}"))
        if margin is not None and all(c.calibration is not None for c in counts):
            from .calibration import calibrate_structure

            tu.calibration = calibrate_structure([c.calibration for c in counts], tu.cv.folds if tu.cv else None,
                                                 tu.t_opt, tu.cv.fold_thresholds if tu.cv else [], margin)
    return TuneResult(metric, tunings, problems, dict(inputs), list(names), prom_source)


def _tune_structure(s: str, cases: List[str], counts: List[StructureCounts], th: np.ndarray, metric: str,
                    folds: int, seed: int, n_boot: int, prom: Optional[float]) -> StructureTuning:
    metrics = ("dice",) if metric == "dice" else ("dice", metric)
    per_case = {c: {"dice": _dice(k.tp, k.npred, k.nref)} for c, k in zip(cases, counts)}
    pooled = {"dice": aggregate_curve(counts, "dice")}
    mean = {"dice": np.mean([per_case[c]["dice"] for c in cases], axis=0)}
    n_undef = {"dice": np.zeros(th.size, dtype=int)}
    if metric != "dice":
        stack = np.array([k.curve for k in counts], dtype=float)
        for c, k in zip(cases, counts):
            per_case[c][metric] = k.curve
        pooled[metric] = np.full(th.size, np.nan)  # not pooled: see the module docstring
        mean[metric] = aggregate_curve(counts, metric)
        n_undef[metric] = (~np.isfinite(stack)).sum(axis=0)
    result = SweepResult(th, metrics, pooled, mean, n_undef, per_case, list(cases), [], s)
    agg = "pooled" if metric == "dice" else "mean"
    t_opt, v_opt = result.optimum(metric, agg)
    v05 = result.value_at(0.5, metric, agg)
    loss = result.loss_at(0.5, metric, agg)
    cv = cross_validate(counts, th, metric, folds, seed, n_boot) if len(cases) >= 2 else None
    return StructureTuning(s, list(cases), result, t_opt, v_opt, float(v05), loss, prom, cv)


# --------------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------------


def summary_rows(result: TuneResult) -> List[Dict[str, Any]]:
    """One row per structure (the columns of ``summary.csv``); ``<m>`` is the metric's name."""
    m = result.metric
    rows = []
    for s, tu in result.structures.items():
        cv = tu.cv
        rows.append({
            "structure": s, "n_cases": len(tu.cases), "prominence": tu.prominence, "t_opt": tu.t_opt,
            f"{m}_at_opt": tu.value_at_opt, f"{m}_at_0.5": tu.value_at_05, "loss_at_0.5": tu.loss_at_05,
            f"cv_{m}_at_0.5": cv.at_05 if cv else None, f"cv_{m}_at_tuned": cv.at_tuned if cv else None,
            "cv_gain": cv.gain if cv else None, "cv_gain_ci_low": cv.ci_low if cv else None,
            "cv_gain_ci_high": cv.ci_high if cv else None,
            "ci_holds_zero": cv.ci_holds_zero if cv else None,
            "fold_thresholds": " ".join(f"{t:.2f}" for t in cv.fold_thresholds) if cv else "",
        })
    return rows


def case_rows(result: TuneResult) -> List[Dict[str, Any]]:
    """One row per (structure, case), the columns of ``cases.csv``: the case's fold and its fold's threshold,
    and the case's Dice (and the metric, when it is not Dice) at the cohort threshold, at its fold's
    threshold and at 0.5. Dice here is the case's own (not pooled)."""
    rows = []
    for s, tu in result.structures.items():
        res = tu.result
        th = res.thresholds
        metrics = list(res.metrics)
        for i, case in enumerate(tu.cases):
            fold = int(tu.cv.folds[i]) if tu.cv else None
            t_fold = float(tu.cv.fold_thresholds[fold]) if tu.cv else None
            row: Dict[str, Any] = {"structure": s, "case": case, "fold": fold, "fold_threshold": t_fold}
            for m in metrics:
                curve = res.per_case[case][m]
                row[f"{m}_at_opt"] = float(curve[_index_of(th, tu.t_opt)])
                row[f"{m}_at_fold_threshold"] = float(curve[_index_of(th, t_fold)]) if t_fold is not None else None
                row[f"{m}_at_0.5"] = float(curve[_index_of(th, 0.5)])
            rows.append(row)
    return rows


def thresholds_document(result: TuneResult) -> Dict[str, Any]:
    """The content of ``thresholds.json``."""
    structures = {}
    for row in summary_rows(result):
        s = row["structure"]
        tu = result.structures[s]
        entry = {"threshold": tu.t_opt, "fold_thresholds": tu.cv.fold_thresholds if tu.cv else [],
                 "cases": tu.cases, "folds_of_cases": tu.cv.folds if tu.cv else []}
        entry.update({k: v for k, v in row.items() if k not in ("structure", "fold_thresholds")})
        if tu.calibration is not None:
            entry["temperature"] = tu.calibration.temperature
            entry["fold_temperatures"] = tu.calibration.fold_temperatures
            entry["threshold_calibrated"] = tu.calibration.t_opt_calibrated
        structures[s] = entry
    return {"format": FORMAT_TAG, "version": 1, "metric": result.metric, "structures": structures,
            "prominence_source": result.prominence_source, "cases": result.cases,
            "problems": result.problem_lines(), "inputs": result.inputs,
            "conventions": {"threshold": "foreground where p >= t, chosen on all cases",
                            "cross_validation": "cases sorted by name, case i in fold i mod K, K = min(folds, "
                                                "cases); fold threshold = optimum of the other folds (ties "
                                                "toward 0.5)",
                            "aggregate": "Dice pooled over voxels and cases; other metrics: mean of finite "
                                         "per-case values",
                            "cv_gain": "held-out value at the fold thresholds minus at 0.5 (positive = better)",
                            "ci": "95 % bootstrap over cases, fold thresholds fixed",
                            **({"temperature": "calibrated map p' = sigmoid(logit(p) / T), T minimising the NLL "
                                               "over the voxels within the margin of the reference or with p >= "
                                               "0.01; threshold_calibrated = sigmoid(logit(threshold) / T)"}
                               if any(tu.calibration is not None for tu in result.structures.values()) else {})},
            "version_autosegsens": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def calibration_rows(result: TuneResult) -> List[Dict[str, Any]]:
    """One row per calibrated structure (the columns of ``calibration.csv``); empty without calibration."""
    return [{"structure": s, "n_cases": len(tu.cases), **tu.calibration.row()}
            for s, tu in result.structures.items() if tu.calibration is not None]


def write_outputs(result: TuneResult, out: PathLike) -> Path:
    """Write ``thresholds.json``, ``summary.csv``, ``cases.csv`` (:func:`case_rows`),
    ``sweeps/<structure>/sweep.csv`` (as ``autosegsens sweep`` writes it) and ``report.html`` into ``out``;
    with calibration also ``calibration.csv`` and ``sweeps/<structure>/reliability.csv``. Returns ``out``."""
    from .report import write_csv, write_json
    from .tune_report import render_tune_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for s, tu in result.structures.items():
        write_csv(tu.result.to_table(), out / SWEEPS_DIR / map_stem(s) / "sweep.csv")
    rows = summary_rows(result)
    write_csv(rows, out / SUMMARY_CSV)
    write_csv(case_rows(result), out / CASES_CSV)
    cal_rows = calibration_rows(result)
    if cal_rows:
        from .calibration import reliability_rows

        write_csv(cal_rows, out / CALIBRATION_CSV)
        for s, tu in result.structures.items():
            if tu.calibration is not None:
                write_csv(reliability_rows(tu.calibration), out / SWEEPS_DIR / map_stem(s) / "reliability.csv",
                          columns=["which", "bin", "count", "p_low", "p_high", "mean_p", "observed"])
    write_json(thresholds_document(result), out / THRESHOLDS_JSON)
    write_text(out / REPORT_HTML, render_tune_html(result, rows))
    return out


# --------------------------------------------------------------------------------------------------------
# thresholds.json
# --------------------------------------------------------------------------------------------------------


def write_thresholds(path: PathLike, thresholds: Mapping[str, Union[float, Mapping[str, Any]]],
                     metric: str = "dice", source: str = "", inputs: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a ``thresholds.json`` with ``{name: threshold}`` (or ``{name: {"threshold": t, ...}}``),
    atomically; every threshold is checked to lie in [0, 1]."""
    from .report import write_json

    structures: Dict[str, Dict[str, Any]] = {}
    for name, v in thresholds.items():
        entry = dict(v) if isinstance(v, Mapping) else {"threshold": v}
        entry["threshold"] = _check_threshold(entry.get("threshold"), "write_thresholds", f"structures.{name}.threshold")
        structures[str(name)] = entry
    if not structures:
        raise InputError("write_thresholds", "structures", "at least one structure", got="none")
    doc = {"format": FORMAT_TAG, "version": 1, "metric": metric, "structures": structures, "source": source,
           "inputs": dict(inputs or {}), "version_autosegsens": __version__,
           "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_json(doc, path)


def thresholds_model_warning(path: PathLike, model: Any) -> Optional[str]:
    """One warning line when the thresholds.json at ``path`` records the model its maps came from
    (``inputs.model.model_sha256``, written by ``tune`` on a ``predict --data`` folder) and ``model`` (a
    loaded model) is another one (:func:`~AutoSegSensitivity.predict_shards.model_sha256`), naming both;
    ``None`` when they agree or the file records no model. Thresholds may knowingly be reused, so this
    warns and never refuses."""
    from .predict_shards import model_sha256

    recorded = (read_thresholds_file(path).get("inputs") or {}).get("model")
    sha = recorded.get("model_sha256") if isinstance(recorded, dict) else None
    if not sha:
        return None
    mine = model_sha256(model)
    if mine is None or mine == sha:
        return None
    shown = ", ".join(str(x)[:12] for x in sha) if isinstance(sha, list) else str(sha)[:12]
    return (f"warning: {path} was tuned on the maps of {recorded.get('checkpoint') or 'another checkpoint'} "
            f"(epoch {recorded.get('epoch')}, sha256 {shown}), not of {getattr(model, 'path', None) or 'this model'} "
            f"(sha256 {mine[:12]}): its thresholds may not fit this model's maps")


def _check_threshold(v: Any, source: Any, field_name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or not 0 <= float(v) <= 1:
        raise InputError(source, field_name, "a number in [0, 1]", got=repr(v))
    return float(v)


def read_thresholds_file(path: PathLike) -> Dict[str, Any]:
    """The whole ``thresholds.json``, validated: a ``structures`` object whose entries each hold a
    ``threshold`` in [0, 1]. :class:`InputError` names the file and the field otherwise."""
    from .io.jsonfile import read_json

    path = Path(path)
    doc = read_json(path, "a thresholds.json (autosegsens tune)")
    if not isinstance(doc, dict):
        raise InputError(path, "document", "a JSON object", got=type(doc).__name__)
    if doc.get("format", FORMAT_TAG) != FORMAT_TAG:
        raise InputError(path, "format", repr(FORMAT_TAG), got=repr(doc.get("format")))
    structures = doc.get("structures")
    if not isinstance(structures, dict) or not structures:
        raise InputError(path, "structures", "an object {name: {\"threshold\": t}} with at least one structure",
                         got=type(structures).__name__ if not isinstance(structures, dict) else "{}")
    for name, entry in structures.items():
        if not isinstance(entry, dict):
            raise InputError(path, f"structures.{name}", "an object with a threshold", got=type(entry).__name__)
        _check_threshold(entry.get("threshold"), path, f"structures.{name}.threshold")
    return doc


def read_thresholds(path: PathLike) -> Dict[str, float]:
    """``{structure: threshold}`` from a ``thresholds.json`` (validated, see :func:`read_thresholds_file`)."""
    return {n: float(e["threshold"]) for n, e in read_thresholds_file(path)["structures"].items()}


def temperatures_for(path: PathLike, names: Iterable[str]) -> Dict[str, float]:
    """The temperatures (``tune --calibration``) of ``names`` from a ``thresholds.json``, matched as
    :func:`thresholds_for` matches; a structure without a positive finite ``temperature`` is an
    :class:`InputError` naming the file and the field."""
    structures = read_thresholds_file(path)["structures"]
    by_stem = {map_stem(n): n for n in structures}
    out = {}
    for n in names:
        key = n if n in structures else by_stem.get(map_stem(n))
        v = structures.get(key, {}).get("temperature") if key is not None else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or float(v) <= 0:
            raise InputError(path, f"structures.{n}.temperature",
                             "a positive temperature (written by autosegsens tune --calibration)", got=repr(v))
        out[n] = float(v)
    return out


def thresholds_for(path: PathLike, names: Iterable[str]) -> Dict[str, float]:
    """The thresholds of ``names`` from a ``thresholds.json``; a name it lacks is an :class:`InputError`
    (matched exactly, or by the file-name form of :func:`map_stem`)."""
    table = read_thresholds(path)
    by_stem = {map_stem(n): t for n, t in table.items()}
    out, missing = {}, []
    for n in names:
        if n in table:
            out[n] = table[n]
        elif map_stem(n) in by_stem:
            out[n] = by_stem[map_stem(n)]
        else:
            missing.append(n)
    if missing:
        raise InputError(path, "structures", f"a threshold for each of {list(names)}", got=f"none for {missing}")
    return out



# --------------------------------------------------------------------------------------------------------
# apply
# --------------------------------------------------------------------------------------------------------


def threshold_case(maps: Mapping[str, Any], thresholds: Mapping[str, float]):
    """A :class:`~AutoSegSensitivity.segmentation.Segmentation` on the maps' grid with segment ``s`` =
    ``maps[s] >= thresholds[s]`` (compared in the map's type, :func:`~AutoSegSensitivity.sweep.apply_threshold`).
    ``maps`` are Volumes on one grid; a map on another grid, NaN or values outside [0, 1] are an
    :class:`InputError`."""
    from .segmentation import Segmentation
    from .sweep import apply_threshold

    names = list(maps)
    if not names:
        raise InputError("apply", "maps", "at least one probability map", got="none")
    seg = Segmentation.on_grid(maps[names[0]])
    for s in names:
        vol = maps[s]
        if not seg.geometry.same_grid(vol, atol=1e-3):
            raise InputError(f"probability map of {s}", "grid", f"the grid of the map of {names[0]}",
                             got=seg.geometry.grid_difference(vol, atol=1e-3))
        seg.add(s, apply_threshold(vol, float(thresholds[s])).array)
    return seg


def _case_maps_for_apply(case: str, path: Path, fmt: str, table: Mapping[str, float], labels, file_ending: str,
                         refs: Optional[Mapping[str, Any]], problems: List[Tuple[str, str, str]],
                         labels_file: Optional[Path] = None) -> Dict[str, Any]:
    from .io.images import read_volume
    from .volume import Volume

    maps: Dict[str, Any] = {}
    if fmt == "maps":
        files = _maps_in(path)
        for s in table:
            f = files.get(map_stem(s))
            if f is None:
                problems.append((case, s, f"{path}: prob_{map_stem(s)}.nrrd: expected a probability map, got none"))
                continue
            try:
                maps[s] = read_volume(f)
                check_probability(maps[s].array, str(f))
            except InputError as exc:
                maps.pop(s, None)
                problems.append((case, s, str(exc)))
        return maps
    for s in table:
        if s not in labels:
            problems.append((case, s, f"{labels_file}: labels: expected a label named {s!r}, got {list(labels)}"))
    wanted = [s for s in table if s in labels]
    if fmt == "channels":
        from .io.channels import channel_file, channel_header, channel_index, iter_channel_maps

        image = channel_file(path)
        index = channel_index(labels, channel_header(image)[1], image)
        for s, vol in iter_channel_maps(image, labels, wanted):
            try:
                check_probability(vol.array, f"{image} channel {index[s]} ({s})")
            except InputError as exc:
                problems.append((case, s, str(exc)))
                continue
            maps[s] = vol
        return maps
    from .io.images import geometry_of
    from .io.nnunet import iter_probabilities, segmentation_file
    from .io.references import reference_geometry

    if refs is not None:
        geom = reference_geometry(refs[case])
    else:
        seg_path = segmentation_file(path, file_ending)
        if seg_path is None:
            raise InputError(path, "geometry", f"nnU-Net's segmentation {case}{file_ending} beside it "
                             "(or --ref-dir with the reference cases)", got="none")
        geom = geometry_of(seg_path)
    for s, arr in iter_probabilities(path, labels, geom.shape, wanted):
        try:
            check_probability(arr, f"{path} channel {labels[s]} ({s})")
        except InputError as exc:
            problems.append((case, s, str(exc)))
            continue
        maps[s] = Volume(np.array(arr), geom.spacing, geom.origin, geom.direction.copy())
    return maps


def read_case_maps(prob_dir: PathLike, case: str, structures: Sequence[str], fmt: str = "auto",
                   dataset_json: Optional[PathLike] = None, ref_dir: Optional[PathLike] = None,
                   ref_format: str = "auto") -> Tuple[Dict[str, Any], List[Tuple[str, str, str]]]:
    """The probability maps of one case of ``prob_dir`` as Volumes ``{structure: map}``, read as `apply` and
    `tune` read them (this project's maps, nnU-Net's .npz, whose geometry comes from the reference case in
    ``ref_dir``, or one multi-channel image), and the problems ``(case, structure, reason)`` of the
    structures that could not be read."""
    from .io.references import scan_references

    fmt = detect_format(prob_dir, fmt)
    labels, ending, labels_file = _prob_labels(prob_dir, fmt, dataset_json)
    cases = list_prob_cases(prob_dir, fmt)
    if case not in cases:
        raise InputError(prob_dir, "case", f"probability maps of case {case!r}", got="none")
    refs = None
    if fmt == "nnunet" and ref_dir is not None:
        ref_fmt, ref_labels, ref_ending = _reference_labels(ref_dir, prob_dir, ref_format, dataset_json)
        refs, _ = scan_references(ref_dir, ref_fmt, ref_labels, ref_ending)
    problems: List[Tuple[str, str, str]] = []
    maps = _case_maps_for_apply(case, cases[case], fmt, {s: 0.5 for s in structures}, labels, ending, refs,
                                problems, labels_file)
    return maps, problems


def check_apply_folder(prob_dir: PathLike, fmt: str, allow_incomplete: bool,
                       problems: List[Tuple[str, str, str]]) -> List[str]:
    """``apply``'s check of a maps folder written by ``predict --data``, the same as ``tune``'s
    (:func:`~AutoSegSensitivity.predict_shards.check_finished`): unfinished cases or cases made by different
    models raise one :class:`InputError`; with ``allow_incomplete`` the unfinished cases are returned (to be
    left out) and each is added to ``problems`` with its reason. Other layouts: nothing to check."""
    from .predict_shards import check_finished, unfinished_reasons

    if detect_format(prob_dir, fmt) != "maps":
        return []
    left_out = check_finished(prob_dir, None, allow_incomplete)
    why = unfinished_reasons(prob_dir, left_out) if left_out else {}
    for name in left_out:
        problems.append((name, "", f"{Path(prob_dir) / name}: {why.get(name, 'unfinished')} "
                                   "(case left out: --allow-incomplete)"))
    return left_out


def apply_cohort(thresholds_path: PathLike, prob_dir: PathLike, out: PathLike, fmt: str = "auto",
                 dataset_json: Optional[PathLike] = None, ref_dir: Optional[PathLike] = None,
                 on_case: Optional[Callable[[str], None]] = None,
                 ref_format: str = "auto", calibrated: bool = False,
                 allow_incomplete: bool = False) -> Tuple[List[Path], List[Tuple[str, str, str]]]:
    """Write ``out/<case>/segmentation.seg.nrrd`` (``p >= t`` per structure of the thresholds file, on the
    maps' grid) for every case of ``prob_dir`` (read as ``tune`` reads it), one case at a time. nnU-Net
    output takes its geometry from the segmentation nnU-Net wrote beside each ``.npz`` or, with
    ``ref_dir`` (any reference layout of :mod:`AutoSegSensitivity.io.references`), from the reference
    case (its image when it has one, else its label file). With ``calibrated`` also the calibrated maps
    ``out/<case>/prob_<structure>.nrrd`` (``sigmoid(logit(p) / T)``, T of the file's ``temperature``, see
    :mod:`AutoSegSensitivity.calibration`; the segmentation is unchanged: ``p >= t`` is ``p' >= t'``) and
    ``out/thresholds_calibrated.json`` with ``t' = sigmoid(logit(t) / T)`` for them. Returns the files
    written and the problems ``(case, structure, reason)``; bad cases are left out and the rest goes on.
    A maps folder written by ``predict --data`` is checked as ``tune`` checks it (:func:`check_apply_folder`:
    unfinished cases or a mix of models raise an :class:`InputError` before anything is written;
    ``allow_incomplete`` leaves the unfinished cases out, listed in the problems)."""
    from .io.references import missing_reference_reason, scan_references
    from .io.segnrrd import write_segmentation

    table = read_thresholds(thresholds_path)
    temps = temperatures_for(thresholds_path, list(table)) if calibrated else {}
    fmt = detect_format(prob_dir, fmt)
    labels, ending, labels_file = _prob_labels(prob_dir, fmt, dataset_json)
    written: List[Path] = []
    problems: List[Tuple[str, str, str]] = []
    left_out = check_apply_folder(prob_dir, fmt, allow_incomplete, problems)  # before anything is written
    refs, ref_fmt, ref_ending = None, "dataset", ".nii.gz"
    if fmt == "nnunet" and ref_dir is not None:
        ref_fmt, ref_labels, ref_ending = _reference_labels(ref_dir, prob_dir, ref_format, dataset_json)
        refs, ref_problems = scan_references(ref_dir, ref_fmt, ref_labels, ref_ending)
    cases = {c: p for c, p in list_prob_cases(prob_dir, fmt).items() if c not in left_out}
    if refs is not None:
        problems.extend((name, "", reason) for name, reason in ref_problems if name in cases or not name)
    for case, path in cases.items():
        try:
            if refs is not None and case not in refs:
                if not any(p[0] == case for p in problems):  # a bad reference folder is listed already
                    problems.append((case, "", missing_reference_reason(ref_dir, ref_fmt, case, ref_ending)))
                continue
            maps = _case_maps_for_apply(case, path, fmt, table, labels, ending, refs, problems, labels_file)
            if not maps:
                problems.append((case, "", "no structure of the thresholds file could be applied"))
                continue
            seg = threshold_case(maps, table)
            if calibrated:
                from .calibration import write_calibrated_maps

                write_calibrated_maps(maps, temps, Path(out) / case)
            written.append(write_segmentation(seg, Path(out) / case / "segmentation.seg.nrrd"))
        except Exception as exc:  # one bad case never stops the cohort
            problems.append((case, "", _reason(exc)))
        finally:
            if on_case is not None:
                on_case(case)
    if calibrated and written:
        from .calibration import calibrated_thresholds

        write_thresholds(Path(out) / "thresholds_calibrated.json", calibrated_thresholds(table, temps),
                         metric=read_thresholds_file(thresholds_path).get("metric", "dice"),
                         source=f"{thresholds_path} with each threshold moved onto the calibrated maps")
    return written, problems
