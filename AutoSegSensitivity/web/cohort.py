"""The cohort behind the review page, without Slicer or trame: which cases there are, their per-case counts
(the same pass as ``autosegsens tune``), the tuned thresholds, one case's volumes, and the hand-set
threshold written back to ``thresholds.json``.

Two sources:

* a study folder written by ``autosegsens demo`` (:func:`open_study`): ``study.json``, the dataset folder it
  names (``data/`` for the phantom), ``predictions/<loss>/<case>/prob_<Structure>.nrrd`` and ``summary.csv``
  (the thresholds chosen on the validation cases); the thresholds file is ``<study>/thresholds-<loss>.json``;
* the folders ``autosegsens tune`` reads (:func:`open_folders`): probability maps (``<case>/prob_<S>.nrrd``
  or nnU-Net's ``.npz`` with ``dataset.json``) and a dataset folder of references; the thresholds file is
  ``--thresholds`` (default ``<prob-dir>/thresholds.json``); without one, the tuned threshold of a structure is
  the optimum of its pooled Dice over the cohort (``tune``'s rule), known once the table is computed.

Per case and structure (:meth:`Cohort.case_stats`): ``tune.structure_counts`` over the threshold grid
(Dice of any threshold of the grid, per case and pooled), and the surface Dice (NSD, tolerance in mm) at 0.5,
at the tuned threshold and on a coarse grid for the chart. A case whose map is missing or lies on another
grid is a one-line problem of that case; the others go on.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .. import tune
from ..errors import InputError
from ..metrics import DEFAULT_NSD_TOLERANCE_MM, surface_dice
from ..sweep import DEFAULT_THRESHOLDS, SweepResult, parse_thresholds
from ..volume import Volume

PathLike = Union[str, Path]

NSD_GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)
"""Thresholds at which the NSD curve of a case is computed for the chart (the Dice curve uses the full
0.01 grid of ``tune``, which costs nothing more once the counts are known)."""

SET_BY_HAND = "hand"


@dataclass
class CaseStats:
    """One structure of one case: ``counts`` over :attr:`Cohort.grid` (``tune.StructureCounts``), the NSD at
    0.5 and at the tuned threshold used when it was computed (``t_tuned``), and ``nsd_curve`` over
    :data:`NSD_GRID` (``metrics.surface_dice``: both masks empty 1, one empty 0); NSD is a fraction in [0, 1]."""

    counts: tune.StructureCounts
    nsd_05: float
    nsd_tuned: float
    t_tuned: float
    nsd_curve: np.ndarray


@dataclass
class CaseImages:
    """What the page shows of an opened case: the CT, the reference mask and the probability map of one
    structure, all on the CT's grid (LPS geometry on each Volume)."""

    name: str
    structure: str
    image: Volume
    reference: np.ndarray
    probability: Volume


@dataclass
class Cohort:
    """Cases (name -> reference case and probability path), structures, the tuned thresholds and where the
    hand-set thresholds are saved. Build with :func:`open_study` or :func:`open_folders`."""

    label: str
    prob_dir: Path
    ref_dir: Path
    fmt: str
    refs: Dict[str, Any]
    probs: Dict[str, Path]
    structures: List[str]
    thresholds_path: Path
    tuned: Dict[str, float] = field(default_factory=dict)
    tuned_source: Dict[str, str] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    labels: Optional[Dict[str, int]] = None
    grid: np.ndarray = field(default_factory=lambda: np.asarray(DEFAULT_THRESHOLDS, dtype=float))
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE_MM
    stats: Dict[str, Dict[str, CaseStats]] = field(default_factory=dict)
    case_problems: Dict[str, str] = field(default_factory=dict)
    splits: Dict[str, str] = field(default_factory=dict)
    """``{case: "validation" | "test" | ...}`` of a study (study.json's ``data``); empty for plain folders."""

    @property
    def cases(self) -> List[str]:
        return sorted(self.probs)

    # ---------------------------------------------------------------------------------------------- counts

    def threshold_of(self, structure: str) -> float:
        """The tuned threshold of ``structure`` (0.5 while none is known)."""
        return float(self.tuned.get(structure, 0.5))

    def case_stats(self, name: str) -> Tuple[Dict[str, CaseStats], List[str]]:
        """Counts and NSD of every structure of case ``name`` (one reading of its reference and maps) and
        the problems of this case as one-line messages. Stored in :attr:`stats` / :attr:`case_problems`."""
        problems: List[str] = []
        out: Dict[str, CaseStats] = {}
        try:
            seg = tune._read_reference(self.refs[name])
        except Exception as exc:  # one bad case never stops the cohort
            problems.append(f"{name}: {tune._reason(exc)}")
            self._store(name, out, problems)
            return out, problems
        spacing = seg.geometry.spacing_zyx
        for s, prob, source in self._iter_maps(name, seg.geometry, problems):
            if s not in seg.names:
                problems.append(f"{name}: {s}: {self.refs[name].path}: segments: expected {s!r}, got {seg.names}")
                continue
            try:
                ref = seg.mask(s)
                counts = tune.structure_counts(prob, ref, spacing, self.grid, "dice", source)
                t = self.threshold_of(s)
                nsd = np.array([surface_dice(prob >= np.float32(g), ref, spacing, self.nsd_tolerance)
                                for g in NSD_GRID])
                out[s] = CaseStats(counts, _nsd_at(prob, ref, spacing, 0.5, self.nsd_tolerance),
                                   _nsd_at(prob, ref, spacing, t, self.nsd_tolerance), t, nsd)
            except Exception as exc:
                problems.append(f"{name}: {s}: {tune._reason(exc)}")
        self._store(name, out, problems)
        return out, problems

    def _store(self, name: str, out: Dict[str, CaseStats], problems: List[str]) -> None:
        self.stats[name] = out
        if problems:
            self.case_problems[name] = "; ".join(problems)
        else:
            self.case_problems.pop(name, None)

    def _iter_maps(self, name: str, geometry: Any, problems: List[str]):
        """``(structure, probability array on the reference grid, source)`` for each structure of a case."""
        from ..io.images import read_volume
        from ..sweep import check_probability

        if self.fmt == "nnunet":
            from ..io.nnunet import iter_probabilities

            wanted = [s for s in self.structures if s in (self.labels or {})]
            try:
                for s, arr in iter_probabilities(self.probs[name], self.labels, geometry.shape, wanted):
                    yield s, check_probability(arr, f"{self.probs[name]} ({s})"), f"{self.probs[name]} ({s})"
            except Exception as exc:
                problems.append(f"{name}: {tune._reason(exc)}")
            return
        for s in self.structures:
            path = tune.find_map(self.probs[name], s)
            if path is None:
                problems.append(f"{name}: {s}: {self.probs[name]}: prob_{tune.map_stem(s)}.nrrd: expected a "
                                "probability map, got none")
                continue
            try:
                vol = read_volume(path)
                if not geometry.same_grid(vol, atol=1e-3):
                    raise InputError(path, "grid", f"the grid of the reference {self.refs[name].path.name}",
                                     got=geometry.grid_difference(vol, atol=1e-3))
                yield s, check_probability(vol.array, str(path)), str(path)
            except InputError as exc:
                problems.append(f"{name}: {s}: {exc}")

    def tune_missing(self) -> None:
        """Structures without a tuned threshold get the optimum of their pooled Dice over the cases computed
        so far (``tune``'s rule: best value, ties toward 0.5, then the lower threshold)."""
        for s in self.structures:
            if s in self.tuned:
                continue
            counts = [st[s].counts for st in self.stats.values() if s in st]
            if counts:
                self.tuned[s] = cohort_optimum(counts, self.grid)
                self.tuned_source[s] = "pooled Dice optimum over the cohort (computed by review)"

    # ----------------------------------------------------------------------------------------------- table

    def table_rows(self, structure: str) -> List[Dict[str, Any]]:
        """One row per case with ``structure``: Dice and NSD at 0.5 and at the tuned threshold (the NSD at
        the tuned threshold is the one computed for the threshold tuned when the case was read), worst Dice
        at the tuned threshold first; cases with a problem come last with the problem as ``problem``."""
        t = self.threshold_of(structure)
        rows = []
        for name in self.cases:
            st = self.stats.get(name, {}).get(structure)
            if st is None:
                if name in self.stats or name in self.case_problems:
                    rows.append({"case": name, "split": self.splits.get(name, ""), "dice_05": None, "dice_tuned": None,
                             "nsd_05": None, "nsd_tuned": None,
                             "problem": self.case_problems.get(name, "not computed")})
                continue
            rows.append({"case": name, "split": self.splits.get(name, ""),
                         "dice_05": _r(dice_at(st.counts, self.grid, 0.5)),
                         "dice_tuned": _r(dice_at(st.counts, self.grid, t)), "nsd_05": _r(st.nsd_05),
                         "nsd_tuned": _r(st.nsd_tuned) if abs(st.t_tuned - t) < 1e-9 else None, "problem": ""})
        rows.sort(key=lambda r: (r["dice_tuned"] is None, r["dice_tuned"] if r["dice_tuned"] is not None else 0.0,
                                 r["case"]))
        return rows

    def curves(self, structure: str, case: Optional[str]) -> Dict[str, Any]:
        """Dice over :attr:`grid` and NSD over :data:`NSD_GRID`, for the cohort (pooled Dice; mean NSD of the
        cases with a finite value) and for ``case`` (None when not computed)."""
        counts = [st[structure].counts for st in self.stats.values() if structure in st]
        nsds = [st[structure].nsd_curve for st in self.stats.values() if structure in st]
        out: Dict[str, Any] = {"grid": self.grid, "nsd_grid": NSD_GRID,
                               "cohort_dice": tune.aggregate_curve(counts) if counts else None,
                               "cohort_nsd": tune._finite_mean(np.array(nsds), 0) if nsds else None,
                               "case_dice": None, "case_nsd": None}
        st = self.stats.get(case or "", {}).get(structure)
        if st is not None:
            out["case_dice"] = tune._dice(st.counts.tp, st.counts.npred, st.counts.nref)
            out["case_nsd"] = st.nsd_curve
        return out

    # ------------------------------------------------------------------------------------------- one case

    def load_case(self, name: str, structure: str) -> CaseImages:
        """Read the CT, the reference mask of ``structure`` and its probability map of case ``name``; a
        missing case, segment or map, or a map on another grid than the CT, is an :class:`InputError`."""
        from ..io.dataset import load_case
        from ..io.images import read_volume
        from ..sweep import check_probability

        if name not in self.probs:
            raise InputError(self.prob_dir, "case", f"one of {self.cases}", got=repr(name))
        image, seg = load_case(self.refs[name])
        if structure not in seg.names:
            raise InputError(self.refs[name].path, "segments", f"a segment named {structure!r}", got=seg.names)
        if self.fmt == "nnunet":
            from ..io.nnunet import iter_probabilities

            arrs = dict(iter_probabilities(self.probs[name], self.labels, image.shape, [structure]))
            prob = image.with_array(check_probability(arrs[structure], f"{self.probs[name]} ({structure})"))
        else:
            path = tune.find_map(self.probs[name], structure)
            if path is None:
                raise InputError(self.probs[name], f"prob_{tune.map_stem(structure)}.nrrd", "a probability map",
                                 got="none")
            prob = read_volume(path)
            if not image.same_grid(prob, atol=1e-3):
                raise InputError(path, "grid", f"the grid of the CT {self.refs[name].image_path}",
                                 got=image.grid_difference(prob, atol=1e-3))
            check_probability(prob.array, str(path))
        return CaseImages(name, structure, image, seg.mask(structure), prob)

    # ------------------------------------------------------------------------------------------- saving

    def save_threshold(self, structure: str, threshold: float) -> Path:
        """Write ``threshold`` for ``structure`` into :attr:`thresholds_path` (``tune``'s format, atomic): the
        other structures of an existing file are kept with their fields, structures with a tuned threshold
        and no entry yet are added with it; the entry records that it was set by hand, when, and the
        threshold it replaced. Returns the path."""
        return save_hand_threshold(self.thresholds_path, structure, threshold, self.tuned, self.tuned_source,
                                   self.label)


# -------------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------------


def _r(v: Optional[float], nd: int = 4) -> Optional[float]:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def _nsd_at(prob: np.ndarray, ref: np.ndarray, spacing: Sequence[float], t: float, tol: float) -> float:
    return float(surface_dice(prob >= np.float32(t), ref, spacing, tol))


def dice_at(counts: tune.StructureCounts, grid: np.ndarray, t: float) -> float:
    """Dice of one case at threshold ``t`` (a point of ``grid``, within 1e-6; NaN for a threshold off the
    grid, whose counts were not taken)."""
    j = int(np.argmin(np.abs(grid - t)))
    if abs(grid[j] - t) > 1e-6:
        return float("nan")  # a threshold set off the grid (by hand in a file): not in the counts
    return float(tune._dice(counts.tp[j], counts.npred[j], counts.nref))


def cohort_optimum(counts: Sequence[tune.StructureCounts], grid: np.ndarray) -> float:
    """``tune``'s optimum of the pooled Dice over ``counts``."""
    curve = tune.aggregate_curve(counts)
    res = SweepResult(grid, ("dice",), {"dice": curve}, {"dice": curve}, {"dice": np.zeros(grid.size, int)}, {}, [],
                      [], None)
    return float(res.optimum("dice")[0])


def save_hand_threshold(path: PathLike, structure: str, threshold: float, tuned: Mapping[str, float],
                        tuned_source: Mapping[str, str], label: str = "") -> Path:
    """See :meth:`Cohort.save_threshold`."""
    path = Path(path)
    doc = tune.read_thresholds_file(path) if path.exists() else {}
    entries: Dict[str, Dict[str, Any]] = {n: dict(e) for n, e in doc.get("structures", {}).items()}
    for s, t in tuned.items():
        if s not in entries:
            entries[s] = {"threshold": float(t), "set_by": tuned_source.get(s, "tuned")}
    old = entries.get(structure, {})
    entry = dict(old)
    entry.update({"threshold": float(threshold), "set_by": SET_BY_HAND, "set_with": "autosegsens review",
                  "set_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "previous_threshold": old.get("threshold")})
    entries[structure] = entry
    inputs = dict(doc.get("inputs") or {})
    if label:
        inputs.setdefault("review", label)
    return tune.write_thresholds(path, entries, metric=str(doc.get("metric", "dice")),
                                 source=f"autosegsens review: {structure} set by hand to {float(threshold):g}",
                                 inputs=inputs)


def _read_json(path: Path) -> Dict[str, Any]:
    from ..io.jsonfile import read_json

    doc = read_json(path, "a study description (study.json of autosegsens demo)")
    if not isinstance(doc, dict) or not isinstance(doc.get("losses"), list) or not doc.get("structures"):
        raise InputError(path, "losses/structures", "a study description with losses and structures",
                         got=sorted(doc) if isinstance(doc, dict) else type(doc).__name__)
    return doc


def _study_thresholds(folder: Path, loss: str) -> Dict[str, float]:
    """``{structure: threshold chosen on validation}`` of ``loss`` from the study's ``summary.csv``."""
    path = folder / "summary.csv"
    out: Dict[str, float] = {}
    if not path.is_file():
        return out
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("loss") != loss:
                continue
            try:
                t = float(row.get("dice_threshold_chosen_on_validation") or "nan")
            except ValueError:
                continue
            if math.isfinite(t) and 0.0 <= t <= 1.0:
                out[row["structure"]] = t
    return out


def open_study(folder: PathLike, loss: Optional[str] = None, thresholds: Optional[PathLike] = None) -> Cohort:
    """The cohort of a study folder written by ``autosegsens demo`` (see the module docstring): the
    predicted cases of ``loss`` (default the study's first loss). A folder that is not a study is an
    :class:`InputError` naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "study folder", "a folder written by 'autosegsens demo'", got="no such folder")
    meta_path = folder / "study.json"
    if not meta_path.is_file():
        raise InputError(folder, "study.json", "a study folder written by 'autosegsens demo' (or use --prob-dir "
                         "and --ref-dir)", got="no study.json: not a cohort")
    meta = _read_json(meta_path)
    keys = [str(e.get("key")) for e in meta["losses"] if isinstance(e, dict)]
    loss = loss or (keys[0] if keys else None)
    if loss not in keys:
        raise InputError(meta_path, "losses", f"a loss among {keys}", got=repr(loss))
    settings = meta.get("settings") or {}
    data_dir = Path(settings["data_dir"]) if settings.get("data_dir") else folder / "data"
    prob_dir = folder / "predictions" / loss
    if not prob_dir.is_dir():
        raise InputError(folder, f"predictions/{loss}", "the probability maps of the study's cases",
                         got="no such folder (the study stopped before prediction?)")
    th_path = Path(thresholds) if thresholds else folder / f"thresholds-{loss}.json"
    cohort = _build(f"study {folder} ({loss})", prob_dir, data_dir, "maps", None, th_path,
                    [str(s) for s in meta["structures"]])
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    for role in ("training", "validation", "test"):  # study.py records meta["data"][f"{role} cases"]
        for name in data.get(f"{role} cases") or []:
            if str(name) in cohort.probs:
                cohort.splits[str(name)] = role
    if not th_path.exists():
        for s, t in _study_thresholds(folder, loss).items():
            cohort.tuned[s] = t
            cohort.tuned_source[s] = "study: chosen on the validation cases"
    return cohort


def open_folders(prob_dir: PathLike, ref_dir: PathLike, thresholds: Optional[PathLike] = None, fmt: str = "auto",
                 dataset_json: Optional[PathLike] = None, structures: Optional[Sequence[str]] = None) -> Cohort:
    """The cohort of the folders ``autosegsens tune`` reads (maps or nnU-Net output, and a dataset folder of
    references matched by case name)."""
    prob_dir, ref_dir = Path(prob_dir), Path(ref_dir)
    fmt = tune.detect_format(prob_dir, fmt) if prob_dir.is_dir() else fmt
    labels = None
    if fmt == "nnunet":
        from ..io.nnunet import read_dataset_labels

        labels = read_dataset_labels(Path(dataset_json) if dataset_json else prob_dir / "dataset.json")
    th_path = Path(thresholds) if thresholds else prob_dir / tune.THRESHOLDS_JSON
    return _build(f"{prob_dir} against {ref_dir}", prob_dir, ref_dir, "nnunet" if fmt == "nnunet" else "maps",
                  labels, th_path, list(structures) if structures else None)


def _build(label: str, prob_dir: Path, ref_dir: Path, fmt: str, labels: Optional[Dict[str, int]], th_path: Path,
           structures: Optional[List[str]]) -> Cohort:
    from ..io.dataset import scan_dataset

    probs = tune.list_prob_cases(prob_dir, fmt)
    scan = scan_dataset(ref_dir)
    refs = {c.name: c for c in scan.cases}
    problems = [f"{name}: {reason}" for name, reason in scan.problems]
    common = sorted(set(probs) & set(refs))
    if not common:
        raise InputError(prob_dir, "cases", f"case folders (or .npz files) whose names match the reference cases "
                         f"in {ref_dir}", got=f"none in common ({len(probs)} here, {len(refs)} there): not a cohort")
    for name in sorted(set(probs) - set(refs)):
        problems.append(f"{name}: {ref_dir}: case: expected a reference case {name!r}, got none")
    if structures is None:
        if fmt == "nnunet":
            structures = list(labels or {})
        else:
            stems: List[str] = []
            for name in common:
                for st in tune._maps_in(probs[name]):
                    if st not in stems:
                        stems.append(st)
            by_stem = {tune.map_stem(s): s for c in common for s in refs[c].structures}
            structures = [by_stem.get(st, st) for st in stems]
    if not structures:
        raise InputError(prob_dir, "structures", "probability maps prob_<structure>.nrrd in the case folders",
                         got="none")
    cohort = Cohort(label, prob_dir, ref_dir, fmt, {n: refs[n] for n in common}, {n: probs[n] for n in common},
                    list(structures), th_path, problems=problems, labels=labels)
    if th_path.exists():
        doc = tune.read_thresholds_file(th_path)
        for s, e in doc["structures"].items():
            cohort.tuned[s] = float(e["threshold"])
            cohort.tuned_source[s] = f"{th_path}" + (" (set by hand)" if e.get("set_by") == SET_BY_HAND else "")
    return cohort


__all__ = ["Cohort", "CaseStats", "CaseImages", "NSD_GRID", "open_study", "open_folders", "save_hand_threshold",
           "dice_at", "cohort_optimum"]
