"""One self-contained HTML page for a threshold-sensitivity study, built from the CSV/JSON of a study folder.

The study is held out as paper 000 did it: each threshold ``t`` is chosen on the validation cases, and every
number reported is measured on the test cases at ``t`` (validation values appear only as "chosen on
validation", in-sample). The page is written for a clinician or physicist: which cases served which role;
per structure the test metric-vs-threshold curves with ``t`` and 0.5 marked, the test loss at 0.5 (with a
seeded 95 % bootstrap interval over test cases) and at ``t ± 0.02 / 0.05 / 0.1`` (Eq. 3), the two training
losses (BCE and BCE + lambda * 2D Dice) side by side, the test volume bias, and one plain-language sentence
("for SpinalCord, the threshold chosen on the validation cases is 0.23; on the test cases, thresholding at 0.5
instead loses 14.0 % Dice"); across structures the prominence (Eq. 4) against the chosen threshold (and the
test optimum, in hindsight) with Pearson r and p; and at the end the model, data, settings, seeds, library
versions and date the study came from. Metrics are those present in the sweep tables.

Every number on the page is recomputed from the files of the study folder, so ``autosegsens report`` can
rebuild the page at any time and the page always agrees with the tables:

* ``study.json``: settings, data, models, versions, dates, training-set prominence per structure
  (written by :mod:`AutoSegSensitivity.study`; see :data:`STUDY_JSON`).
* ``sweeps/<loss>/<structure>/<role>/sweep.csv`` and ``sweep_per_case.csv`` (``role``: validation, test):
  the sweep tables of
  :meth:`AutoSegSensitivity.sweep.SweepResult.to_table` / ``per_case_table`` (the same files
  ``autosegsens sweep`` writes). They are read back into a :class:`~AutoSegSensitivity.sweep.SweepResult`,
  whose ``optimum`` (validation) and ``value_at`` (test) give the numbers.
* ``sweeps/<loss>/<structure>/test/counts_per_case.csv``: per test case and threshold the voxel counts
  behind pooled Dice (:mod:`AutoSegSensitivity.held_out`), for the bootstrap intervals (seeded with the
  study seed, so a rebuilt page is byte-identical).
* ``volume_bias.csv``: one row per loss, structure and threshold kind (:data:`CHOSEN` or ``0.5``), on the
  test cases.

Images are PNGs inlined as base64 ``data:`` URIs; the page references no external file or URL.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import write_text
from .errors import InputError
from .held_out import N_BOOTSTRAP, ROLES, bootstrap_ci, pooled_dice, read_counts, relative_dice_loss
from .sweep import DEFAULT_DELTAS, HIGHER_IS_BETTER, SWEEP_METRICS, UNITS, SweepResult, correlate_prominence, relative_loss
from .sweep import _col as metric_column
from .metrics import DEFAULT_NSD_TOLERANCE_MM

__all__ = [
    "STUDY_JSON", "SWEEPS_DIR", "VOLUME_BIAS_CSV", "COUNTS_CSV", "CHOSEN", "CORRELATION_KINDS",
    "StudyData", "read_sweep_folder", "load_study", "summary_rows", "median_loss_ci", "correlations",
    "plain_summary", "metric_label", "render_html", "write_report", "fmt_num", "fmt_pct",
]

PathLike = Union[str, Path]

STUDY_JSON = "study.json"
SWEEPS_DIR = "sweeps"
VOLUME_BIAS_CSV = "volume_bias.csv"
COUNTS_CSV = "counts_per_case.csv"
CHOSEN = "chosen on validation"
"""``volume_bias.csv``'s ``at`` for the threshold chosen on the validation cases (the other is ``0.5``)."""
CORRELATION_KINDS = {"validation": "Dice threshold chosen on validation", "test": "test optimum (hindsight)"}
"""``correlation.csv``'s ``thresholds`` column, keyed by the role whose sweep gave the thresholds."""
_LOSS_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:purple")


# --------------------------------------------------------------------------------------------------------
# number formatting (the tests read the page with the same functions)
# --------------------------------------------------------------------------------------------------------


def fmt_num(v: Optional[float], digits: int = 4) -> str:
    """A metric value as the page shows it: ``digits`` decimals, ``inf`` / ``n/a`` spelled out."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    v = float(v)
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def fmt_pct(v: Optional[float], digits: int = 1) -> str:
    """A relative value (0.123) as the page shows it (``12.3 %``)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    v = float(v)
    if math.isinf(v):
        return "inf"
    text = f"{100.0 * v:.{digits}f}"
    return (text.lstrip("-") if float(text) == 0 else text) + " %"  # no "-0.0 %"


# --------------------------------------------------------------------------------------------------------
# reading a study folder
# --------------------------------------------------------------------------------------------------------


def metric_label(metric: str) -> str:
    """A metric's name on the page: ``Dice``, ``MSD (mm)``, ``HD95 (mm)``, ``NSD``."""
    name = "Dice" if metric == "dice" else metric.upper()
    return f"{name} ({UNITS[metric]})" if UNITS.get(metric) else name


def _float(text: str) -> float:
    text = (text or "").strip()
    if text == "":
        return math.nan
    return float(text)  # "inf" parses


def _read_csv(path: Path) -> List[Dict[str, str]]:
    if not path.is_file():
        raise InputError(path, None, "an existing CSV table", got="no such file")
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_sweep_folder(folder: PathLike, structure: Optional[str] = None) -> SweepResult:
    """Rebuild a :class:`SweepResult` from ``folder/sweep.csv`` (pooled and mean curves) and
    ``folder/sweep_per_case.csv`` (per-case curves), as written by the study and by ``autosegsens sweep``.
    Metrics are the ones present among ``dice, nsd, msd_mm, hd_mm, hd95_mm`` (the NSD tolerance from
    ``summary.json``)."""
    folder = Path(folder)
    rows = _read_csv(folder / "sweep.csv")
    if not rows:
        raise InputError(folder / "sweep.csv", "rows", "one row per threshold", got="no rows")
    metrics = tuple(m for m in SWEEP_METRICS if metric_column(m) in rows[0])
    if not metrics or "threshold" not in rows[0]:
        raise InputError(folder / "sweep.csv", "columns", "threshold and at least one of dice, nsd, msd_mm, hd_mm, hd95_mm",
                         got=list(rows[0]))
    th = np.array([_float(r["threshold"]) for r in rows])
    pooled = {m: np.array([_float(r[metric_column(m)]) for r in rows]) for m in metrics}
    mean = {m: np.array([_float(r.get(metric_column(m) + "_mean", r[metric_column(m)])) for r in rows]) for m in metrics}
    n_undef = {m: np.array([int(float(r.get(f"n_undefined_{m}") or 0)) for r in rows]) for m in metrics}
    per_case: Dict[str, Dict[str, np.ndarray]] = {}
    case_names: List[str] = []
    pc_path = folder / "sweep_per_case.csv"
    if pc_path.is_file():
        by_case: Dict[str, List[Dict[str, str]]] = {}
        for r in _read_csv(pc_path):
            by_case.setdefault(r["case"], []).append(r)
        for case, rs in by_case.items():
            rs.sort(key=lambda r: _float(r["threshold"]))
            per_case[case] = {m: np.array([_float(r[metric_column(m)]) for r in rs]) for m in metrics}
            case_names.append(case)
    problems: List[Tuple[str, str]] = []
    tolerance = DEFAULT_NSD_TOLERANCE_MM
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            problems = [(p["case"], p["reason"]) for p in data.get("problems", [])]
            structure = structure or data.get("structure")
            tolerance = data.get("metrics", {}).get("nsd", {}).get("tolerance_mm", tolerance)
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    return SweepResult(th, metrics, pooled, mean, n_undef, per_case, case_names, problems, structure,
                       nsd_tolerance_mm=float(tolerance))


@dataclass
class StudyData:
    """What a study folder holds, read back: ``meta`` (study.json), ``sweeps[role][loss_key][structure]``
    (``role`` "validation" or "test"), ``counts[loss_key][structure]`` (the test cases' voxel counts behind
    pooled Dice: ``(thresholds, {case: {intersection, predicted, reference}})``), ``volume_bias`` rows, and
    ``losses`` (``[{key, label, ...}]`` in display order)."""

    folder: Path
    meta: Dict[str, Any]
    sweeps: Dict[str, Dict[str, Dict[str, SweepResult]]]
    counts: Dict[str, Dict[str, Tuple[np.ndarray, Dict[str, Dict[str, np.ndarray]]]]] = field(default_factory=dict)
    volume_bias: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def losses(self) -> List[Dict[str, Any]]:
        return list(self.meta.get("losses", []))

    @property
    def structures(self) -> List[str]:
        return list(self.meta.get("structures", []))

    def label(self, loss_key: str) -> str:
        for entry in self.losses:
            if entry.get("key") == loss_key:
                return str(entry.get("label", loss_key))
        return loss_key

    def sweep(self, role: str, loss_key: str, structure: str) -> Optional[SweepResult]:
        return self.sweeps.get(role, {}).get(loss_key, {}).get(structure)

    def prominence(self, structure: str) -> Optional[float]:
        v = self.meta.get("prominence", {}).get(structure)
        return None if v is None else float(v)

    def bias(self, loss_key: str, structure: str, kind: str) -> Optional[Dict[str, Any]]:
        for row in self.volume_bias:
            if row.get("loss") == loss_key and row.get("structure") == structure and row.get("at") == kind:
                return row
        return None

    @property
    def seed(self) -> int:
        return int(self.meta.get("settings", {}).get("seed", 0) or 0)


def load_study(folder: PathLike) -> StudyData:
    """Read a study folder (see the module docstring). Missing sweeps of a structure are skipped (a partial
    study, e.g. after Ctrl-C, still gives a page); a missing ``study.json`` is an :class:`InputError`."""
    folder = Path(folder)
    meta_path = folder / STUDY_JSON
    if not meta_path.is_file():
        raise InputError(folder, STUDY_JSON, "a study folder written by 'autosegsens demo' (with study.json)",
                         got="no study.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(meta_path, None, "valid JSON", got=str(exc)) from exc
    if not isinstance(meta, dict) or "losses" not in meta or "structures" not in meta:
        raise InputError(meta_path, "losses/structures", "a study description with losses and structures",
                         got=sorted(meta) if isinstance(meta, dict) else type(meta).__name__)
    sweeps: Dict[str, Dict[str, Dict[str, SweepResult]]] = {}
    counts: Dict[str, Dict[str, Any]] = {}
    for entry in meta["losses"]:
        key = entry["key"]
        for s in meta["structures"]:
            for role in ROLES[1:]:
                sub = folder / SWEEPS_DIR / key / s / role
                if (sub / "sweep.csv").is_file():
                    sweeps.setdefault(role, {}).setdefault(key, {})[s] = read_sweep_folder(sub, s)
                if role == "test" and (sub / COUNTS_CSV).is_file():
                    counts.setdefault(key, {})[s] = read_counts(_read_csv(sub / COUNTS_CSV), str(sub / COUNTS_CSV))
    bias: List[Dict[str, Any]] = []
    if (folder / VOLUME_BIAS_CSV).is_file():
        for r in _read_csv(folder / VOLUME_BIAS_CSV):
            row: Dict[str, Any] = dict(r)
            for k in ("threshold", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml", "relative_volume_diff"):
                if k in row:
                    row[k] = _float(row[k])
            bias.append(row)
    return StudyData(folder, meta, sweeps, counts, bias)


# --------------------------------------------------------------------------------------------------------
# numbers: thresholds chosen on validation, values measured on test
# --------------------------------------------------------------------------------------------------------


def _counts_at(study: StudyData, key: str, s: str, t: float, cases: Optional[Sequence[str]] = None
               ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per test case (``cases`` order; a case without counts gives zeros, i.e. adds nothing to pooled sums)
    ``(intersection, predicted, reference)`` at threshold ``t`` of the grid; ``None`` without counts."""
    entry = study.counts.get(key, {}).get(s)
    if entry is None:
        return None
    th, by_case = entry
    hit = np.flatnonzero(np.abs(th - t) <= 1e-9)
    if not hit.size:
        return None
    j = int(hit[0])
    names = list(by_case) if cases is None else list(cases)
    arr = [by_case.get(c) for c in names]
    i, p, r = (np.array([a[k][j] if a is not None else 0 for a in arr], dtype=float)
               for k in ("intersection", "predicted", "reference"))
    return i, p, r


def _loss_samples(study: StudyData, key: str, s: str, t: float, cases: Sequence[str], idx: np.ndarray
                  ) -> Optional[np.ndarray]:
    """Relative test Dice loss at 0.5 against ``t`` for each resample row of ``idx`` (indices into ``cases``)."""
    at_t, at_05 = _counts_at(study, key, s, t, cases), _counts_at(study, key, s, 0.5, cases)
    if at_t is None or at_05 is None:
        return None
    d_t = pooled_dice(*(np.moveaxis(a[idx], 1, 0) for a in at_t))
    d_05 = pooled_dice(*(np.moveaxis(a[idx], 1, 0) for a in at_05))
    return relative_dice_loss(d_t, d_05)


def summary_rows(study: StudyData, deltas: Sequence[float] = DEFAULT_DELTAS) -> List[Dict[str, Any]]:
    """One row per loss and structure (what ``summary.csv`` of a study holds). Per metric ``m``:
    ``{m}_threshold_chosen_on_validation`` (the validation optimum), ``{m}_validation_at_threshold`` (in-sample,
    for reference), and on the test cases ``{m}_test_at_threshold``, ``{m}_test_at_0.5`` and
    ``{m}_test_loss_at_0.5`` (relative, for the worse, against the value at the chosen threshold); for Dice
    also the 95 % bootstrap interval of that loss over test cases (``dice_test_loss_at_0.5_ci_low/high``),
    the test losses at ``t - d`` / ``t + d`` and the test optimum in hindsight; the test volume bias at the
    chosen threshold and at 0.5."""
    rows = []
    for entry in study.losses:
        key = entry["key"]
        for s in study.structures:
            val, test = study.sweep("validation", key, s), study.sweep("test", key, s)
            if val is None:
                continue
            row: Dict[str, Any] = {"loss": key, "loss_label": study.label(key), "structure": s,
                                   "prominence": study.prominence(s), "n_validation_cases": len(val.case_names),
                                   "n_test_cases": len(test.case_names) if test is not None else 0}
            for m in val.metrics:
                t, v = val.optimum(m)
                row[f"{m}_threshold_chosen_on_validation"] = t
                row[f"{m}_validation_at_threshold"] = v
                has = test is not None and m in test.metrics
                v_t = test.value_at(t, m) if has else None
                v_05 = test.value_at(0.5, m) if has else None
                row[f"{m}_test_at_threshold"] = v_t
                row[f"{m}_test_at_0.5"] = v_05
                row[f"{m}_test_loss_at_0.5"] = (relative_loss(v_05, v_t, HIGHER_IS_BETTER[m])
                                                if v_t is not None and v_05 is not None else None)
            if "dice" in val.metrics:
                t = row["dice_threshold_chosen_on_validation"]
                lo = hi = None
                cases = list(study.counts.get(key, {}).get(s, (None, {}))[1])
                if cases:
                    lo, hi = bootstrap_ci(lambda idx: _loss_samples(study, key, s, t, cases, idx), len(cases),
                                          study.seed)
                row["dice_test_loss_at_0.5_ci_low"], row["dice_test_loss_at_0.5_ci_high"] = lo, hi
                v_t = row.get("dice_test_at_threshold")
                for d in deltas:
                    for side, tt in (("minus", round(t - float(d), 10)), ("plus", round(t + float(d), 10))):
                        v = test.value_at(tt, "dice") if test is not None and "dice" in test.metrics else None
                        row[f"dice_test_loss_{side}_{d:g}"] = (None if v is None or v_t is None
                                                               else relative_loss(v, v_t, True))
                row["dice_test_optimum_threshold"] = (test.optimum("dice")[0] if test is not None
                                                      and "dice" in test.metrics else None)
            for kind, name in ((CHOSEN, "threshold"), ("0.5", "0.5")):
                b = study.bias(key, s, kind)
                row[f"test_volume_bias_ml_at_{name}"] = None if b is None else b.get("volume_diff_ml")
                row[f"test_relative_volume_bias_at_{name}"] = None if b is None else b.get("relative_volume_diff")
            rows.append(row)
    return rows


def median_loss_ci(study: StudyData, key: str, rows: Sequence[Mapping[str, Any]]) -> Tuple[Optional[float], Optional[float]]:
    """95 % bootstrap interval of the median, across structures, of the test Dice loss at 0.5 for one loss:
    the test cases are resampled jointly for all structures (seeded with the study seed)."""
    mine = [r for r in rows if r["loss"] == key and r.get("dice_threshold_chosen_on_validation") is not None
            and r["structure"] in study.counts.get(key, {})]
    cases = sorted({c for r in mine for c in study.counts[key][r["structure"]][1]})
    if not mine or not cases:
        return None, None

    def stat(idx: np.ndarray) -> np.ndarray:
        per = [_loss_samples(study, key, r["structure"], r["dice_threshold_chosen_on_validation"], cases, idx)
               for r in mine]
        per = [p for p in per if p is not None]
        if not per:
            return np.full(idx.shape[0], np.nan)
        return np.median(np.vstack(per), axis=0)

    return bootstrap_ci(stat, len(cases), study.seed)


def correlations(study: StudyData, metric: str = "dice") -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Per loss and kind (``validation``: the threshold chosen on validation; ``test``: the test optimum, in
    hindsight): Pearson r and p between training-set prominence and threshold across structures (``None``
    when fewer than two structures have both)."""
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for entry in study.losses:
        key = entry["key"]
        for role in ROLES[1:]:
            xs, ys, names = [], [], []
            for s in study.structures:
                res = study.sweep(role, key, s)
                p = study.prominence(s)
                if res is None or p is None or metric not in res.metrics:
                    continue
                xs.append(p)
                ys.append(res.optimum(metric)[0])
                names.append(s)
            r = pv = None
            if len(xs) >= 2:
                r, pv = correlate_prominence(xs, ys)
            out.setdefault(key, {})[role] = {"r": r, "p": pv, "n": len(xs), "prominence": xs, "optimum": ys,
                                             "structures": names}
    return out


def _ci_text(lo: Optional[float], hi: Optional[float]) -> str:
    """``lo % to hi %``; with more digits when the two ends would print alike but differ, or a non-zero end
    would print as 0 (a narrow interval around 0 must not read as "0.0 % to 0.0 %")."""
    if lo is None or hi is None:
        return "n/a"
    def unclear(d: int) -> bool:
        same = lo != hi and fmt_pct(lo, d) == fmt_pct(hi, d)
        vanish = any(v != 0 and math.isfinite(v) and float(f"{100.0 * v:.{d}f}") == 0 for v in (lo, hi))
        return same or vanish

    digits = 1
    while digits < 4 and unclear(digits):
        digits += 1
    return f"{fmt_pct(lo, digits)} to {fmt_pct(hi, digits)}"


def plain_summary(study: StudyData, structure: str, rows: Optional[Sequence[Mapping[str, Any]]] = None) -> List[str]:
    """Plain-language sentences for one structure, one per loss: the threshold chosen on validation and what
    it does on the test cases (``rows``: :func:`summary_rows`, computed when not given)."""
    out = []
    for r in (rows if rows is not None else summary_rows(study)):
        if r["structure"] != structure or r.get("dice_threshold_chosen_on_validation") is None:
            continue
        label, t = r["loss_label"], r["dice_threshold_chosen_on_validation"]
        d_t, d05, loss05 = r.get("dice_test_at_threshold"), r.get("dice_test_at_0.5"), r.get("dice_test_loss_at_0.5")
        if t <= 0.0:
            out.append(f"For {structure} ({label}), the best validation Dice comes from thresholding at {t:.2f}, "
                       f"i.e. calling every voxel {structure}: the model has not learnt this structure.")
            continue
        text = f"For {structure} ({label}), the threshold chosen on the validation cases is {t:.2f}."
        if d_t is None:
            out.append(text + " No test case was evaluated.")
            continue
        ci = _ci_text(r.get("dice_test_loss_at_0.5_ci_low"), r.get("dice_test_loss_at_0.5_ci_high"))
        if abs(t - 0.5) < 1e-9:
            text += f" It is 0.5 itself (test Dice {fmt_num(d_t)})."
        elif loss05 is not None and loss05 < 0:
            text += (f" On the test cases 0.5 does better: Dice {fmt_num(d05)} instead of {fmt_num(d_t)} "
                     f"({fmt_pct(-loss05)} more; 95 % CI of the loss {ci}).")
        else:
            text += (f" On the test cases, thresholding at 0.5 instead loses {fmt_pct(loss05)} Dice ({fmt_num(d05)} "
                     f"instead of {fmt_num(d_t)}; 95 % CI {ci}).")
        worst = [v for v in (r.get("dice_test_loss_minus_0.05"), r.get("dice_test_loss_plus_0.05")) if v is not None]
        if worst:
            text += f" Moving 0.05 away from it costs up to {fmt_pct(max(worst))} on test."
        rv05, rvt = r.get("test_relative_volume_bias_at_0.5"), r.get("test_relative_volume_bias_at_threshold")
        if rv05 is not None and rvt is not None and math.isfinite(rv05) and math.isfinite(rvt):
            text += (f" The test volume is {'over' if rv05 > 0 else 'under'}estimated by {fmt_pct(abs(rv05))} at 0.5"
                     f" and {'over' if rvt > 0 else 'under'}estimated by {fmt_pct(abs(rvt))} at {t:.2f}.")
        out.append(text)
    return out


# --------------------------------------------------------------------------------------------------------
# figures (in memory, PNG, base64)
# --------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png_data_uri(fig, dpi: int = 90) -> str:
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=float).copy()
    y[~np.isfinite(y)] = np.nan
    return y


def _mark(ax, res: SweepResult, metric: str, t: float, color: str, label_prefix: str = "") -> None:
    """Mark ``res`` (test curves) at the threshold ``t`` chosen on validation and at 0.5."""
    v_t, v05 = res.value_at(t, metric), res.value_at(0.5, metric)
    ax.axvline(t, color=color, ls="--", lw=0.9)
    if v_t is not None and math.isfinite(v_t):
        ax.plot([t], [v_t], "o", color=color, label=f"{label_prefix}test at {t:.2f} (chosen on validation): {v_t:.3g}")
    if v05 is not None and math.isfinite(v05):
        ax.plot([0.5], [v05], "s", color=color, mfc="white", label=f"{label_prefix}test at 0.5: {v05:.3g}")


def _pairs(study: StudyData, structure: str) -> List[Tuple[str, SweepResult, SweepResult]]:
    """``(loss key, validation sweep, test sweep)`` of the losses holding both for ``structure``."""
    out = []
    for e in study.losses:
        val, test = study.sweep("validation", e["key"], structure), study.sweep("test", e["key"], structure)
        if val is not None and test is not None:
            out.append((e["key"], val, test))
    return out


def figure_dice_side_by_side(study: StudyData, structure: str) -> Optional[str]:
    """Dice vs threshold, one panel per loss (side by side): the test cases' pooled and per-case curves, the
    validation pooled curve (where the threshold is chosen), the chosen threshold and 0.5 marked on test."""
    pairs = [p for p in _pairs(study, structure) if "dice" in p[1].metrics and "dice" in p[2].metrics]
    if not pairs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 3.6), squeeze=False, sharey=True)
    for ax, (key, val, test) in zip(axes[0], pairs):
        for i, c in enumerate(test.case_names):
            ax.plot(test.thresholds, _finite(test.per_case[c]["dice"]), color="0.8", lw=0.7,
                    label="test cases" if i == 0 else None)
        ax.plot(val.thresholds, _finite(val.pooled["dice"]), color="tab:orange", lw=1.2, ls="--",
                label="validation, pooled (threshold chosen here)")
        ax.plot(test.thresholds, _finite(test.pooled["dice"]), color="tab:blue", lw=2, label="test, pooled (Eq. 1)")
        ax.axvline(0.5, color="0.3", ls=":", lw=1)
        _mark(ax, test, "dice", val.optimum("dice")[0], "tab:red")
        ax.set_title(f"{structure}: {study.label(key)}", fontsize=10)
        ax.set_xlabel("threshold")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower center")
    axes[0][0].set_ylabel("Dice")
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_distances(study: StudyData, structure: str) -> Optional[str]:
    """The metrics in mm (MSD, HD, HD95, ...) vs threshold on the test cases, the losses overlaid (pooled
    curves), each marked at its threshold chosen on validation and at 0.5."""
    pairs = _pairs(study, structure)
    metrics = [m for m in (pairs[0][2].metrics if pairs else ()) if UNITS.get(m) == "mm"
               and all(m in v.metrics and m in t.metrics for _, v, t in pairs)]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ymax = 0.0
        for i, (key, val, test) in enumerate(pairs):
            color = _LOSS_COLORS[i % len(_LOSS_COLORS)]
            y = _finite(test.pooled[m])
            ax.plot(test.thresholds, y, color=color, lw=1.6, label=study.label(key))
            _mark(ax, test, m, val.optimum(m)[0], color)
            mid = y[(test.thresholds >= 0.02) & (test.thresholds <= 0.98)]
            if np.any(np.isfinite(mid)):
                ymax = max(ymax, float(np.nanpercentile(mid, 90)))
        ax.axvline(0.5, color="0.3", ls=":", lw=1)
        if ymax > 0:
            ax.set_ylim(0, 1.3 * ymax)
        ax.set_xlim(0, 1)
        ax.set_xlabel("threshold")
        ax.set_ylabel(metric_label(m))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center")
    fig.suptitle(f"{structure}: surface distances on the test cases (lower is better)", fontsize=10)
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_prominence(study: StudyData, corr: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Optional[str]:
    """Dice threshold chosen on validation (filled) and test optimum in hindsight (open) against
    training-set prominence, one colour per loss, with Pearson r, p."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    any_point = False
    xs: List[float] = []
    for i, entry in enumerate(study.losses):
        color = _LOSS_COLORS[i % len(_LOSS_COLORS)]
        for role, marker in (("validation", "o"), ("test", "^")):
            c = corr.get(entry["key"], {}).get(role)
            if not c or not c["n"]:
                continue
            any_point = True
            xs += c["prominence"]
            r, p = c["r"], c["p"]
            rtxt = "n/a" if r is None or not math.isfinite(r) else f"r = {r:.3f}, p = {p:.3g}"
            ax.scatter(c["prominence"], c["optimum"], color=color, marker=marker,
                       facecolors=color if role == "validation" else "none",
                       label=f"{study.label(entry['key'])}, {CORRELATION_KINDS[role]} ({rtxt})")
            if role == "validation":
                for x, y, name in zip(c["prominence"], c["optimum"], c["structures"]):
                    ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if not any_point:
        plt.close(fig)
        return None
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.axhline(0.5, color="0.3", ls=":", lw=1)
    ax.set_xlabel("prominence (fraction of true voxels in the training set)")
    ax.set_ylabel("Dice threshold")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_perturbation(rows: Sequence[Mapping[str, Any]], study: StudyData,
                        deltas: Sequence[float] = DEFAULT_DELTAS) -> Optional[str]:
    """Relative test Dice loss at 0.5 and at t ± delta (t chosen on validation): one group of bars per
    structure, one panel per loss (``rows``: :func:`summary_rows`)."""
    keys = [e["key"] for e in study.losses if any(r["loss"] == e["key"] and r.get("dice_test_at_threshold")
                                                 is not None for r in rows)]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.4), squeeze=False, sharey=True)
    groups = ["0.5"] + [f"±{d:g}" for d in deltas]
    for ax, key in zip(axes[0], keys):
        mine = [r for r in rows if r["loss"] == key and r.get("dice_test_at_threshold") is not None]
        width = 0.8 / len(groups)
        for gi, g in enumerate(groups):
            vals = []
            for r in mine:
                if gi == 0:
                    v = r.get("dice_test_loss_at_0.5")
                else:
                    d = deltas[gi - 1]
                    v = max([x for x in (r.get(f"dice_test_loss_minus_{d:g}"), r.get(f"dice_test_loss_plus_{d:g}"))
                             if x is not None], default=None)
                vals.append(100 * v if v is not None and math.isfinite(v) else np.nan)
            ax.bar(np.arange(len(mine)) + (gi - (len(groups) - 1) / 2) * width, vals, width,
                   label=("t = 0.5" if gi == 0 else f"t {g} (worse side)"))
        ax.set_xticks(np.arange(len(mine)))
        ax.set_xticklabels([r["structure"] for r in mine], fontsize=8)
        ax.set_title(f"{study.label(key)}: test cases", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("relative test Dice loss (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _png_data_uri(fig)


# --------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0.2em} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:1.6em}
h3{margin-bottom:0.3em} table{border-collapse:collapse;margin:8px 0 14px 0;font-size:0.88em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right} th{background:#f2f2f2}
td.l,th.l{text-align:left} .summary{background:#f6f9ff;border-left:4px solid #4a78c2;padding:8px 12px;margin:8px 0}
.warn{background:#fff6e6;border-left:4px solid #e0a030;padding:8px 12px} img{max-width:100%;height:auto}
.small{font-size:0.85em;color:#555} pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:0.8em}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _img(uri: Optional[str], alt: str) -> str:
    if not uri:
        return ""
    return f'<img alt="{_e(alt)}" src="{uri}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    out = ["<table><tr>"]
    out += [f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>" for i, h in enumerate(header)]
    out.append("</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
                                    for i, c in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _structure_section(study: StudyData, s: str, rows: Sequence[Mapping[str, Any]], deltas: Sequence[float]) -> str:
    parts = [f'<h3 id="s-{_e(s)}">{_e(s)}</h3>']
    p = study.prominence(s)
    if p is not None:
        parts.append(f'<p class="small">Training-set prominence (Eq. 4): {p:.3g} '
                     f"({fmt_pct(p, 3)} of all training voxels are {_e(s)}).</p>")
    mine = [r for r in rows if r["structure"] == s]
    for sentence in plain_summary(study, s, mine):
        parts.append(f'<div class="summary">{_e(sentence)}</div>')
    parts.append(_img(figure_dice_side_by_side(study, s), f"{s}: Dice vs threshold"))
    header = ["loss", "t chosen on validation", "validation Dice at t (in-sample)", "test Dice at t",
              "test Dice at 0.5", "test loss at 0.5", "95 % CI"]
    for d in deltas:
        header += [f"test loss at t-{d:g}", f"test loss at t+{d:g}"]
    dice_rows, other_rows, bias_rows = [], [], []
    for r in mine:
        label, key = r["loss_label"], r["loss"]
        if r.get("dice_threshold_chosen_on_validation") is not None:
            row = [label, f"{r['dice_threshold_chosen_on_validation']:.2f}", fmt_num(r["dice_validation_at_threshold"]),
                   fmt_num(r.get("dice_test_at_threshold")), fmt_num(r.get("dice_test_at_0.5")),
                   fmt_pct(r.get("dice_test_loss_at_0.5")),
                   _ci_text(r.get("dice_test_loss_at_0.5_ci_low"), r.get("dice_test_loss_at_0.5_ci_high"))]
            for d in deltas:
                row += [fmt_pct(r.get(f"dice_test_loss_minus_{d:g}")), fmt_pct(r.get(f"dice_test_loss_plus_{d:g}"))]
            dice_rows.append(row)
        for m in [m for m in _row_metrics(r) if m != "dice"]:
            other_rows.append([label, metric_label(m), f"{r[f'{m}_threshold_chosen_on_validation']:.2f}",
                               fmt_num(r.get(f"{m}_test_at_threshold"), 2), fmt_num(r.get(f"{m}_test_at_0.5"), 2),
                               fmt_pct(r.get(f"{m}_test_loss_at_0.5"))])
        for kind in (CHOSEN, "0.5"):
            b = study.bias(key, s, kind)
            if b is not None:
                bias_rows.append([label, kind, f"{float(b['threshold']):.2f}", fmt_num(b.get("volume_ref_ml"), 2),
                                  fmt_num(b.get("volume_pred_ml"), 2), fmt_num(b.get("volume_diff_ml"), 2),
                                  fmt_pct(b.get("relative_volume_diff"))])
    if dice_rows:
        parts.append("<p>Dice pooled over the test cases at the threshold t chosen on the validation cases, and its "
                     "relative loss at 0.5 and at t ± d (95 % CI: bootstrap over test cases):</p>")
        parts.append(_table(header, dice_rows))
    img = figure_distances(study, s)
    if img:
        parts.append(_img(img, f"{s}: surface distances vs threshold"))
    if other_rows:
        parts.append(_table(["loss", "metric", "t chosen on validation", "test at t", "test at 0.5",
                             "test loss at 0.5"], other_rows, 2))
    if bias_rows:
        parts.append("<p>Volume bias on the test cases (predicted minus reference volume, summed over them):</p>")
        parts.append(_table(["loss", "threshold", "t", "reference (ml)", "predicted (ml)", "difference (ml)",
                             "relative"], bias_rows, 2))
    return "\n".join(parts)


def _row_metrics(row: Mapping[str, Any]) -> List[str]:
    """The metrics of a :func:`summary_rows` row, in table order."""
    suffix = "_threshold_chosen_on_validation"
    return [k[:-len(suffix)] for k in row if k.endswith(suffix) and row[k] is not None]


_ROLE_USE = {"training": "model weights; training-set prominence (Eq. 4)",
             "validation": "early stopping; the threshold choice",
             "test": "every loss, Dice, distance and volume on this page"}


def _roles_section(study: StudyData) -> str:
    data = study.meta.get("data", {})
    rows = [[role, len(data.get(f"{role} cases", [])), _ROLE_USE[role], ", ".join(map(str, data.get(f"{role} cases", [])))]
            for role in ROLES if f"{role} cases" in data]
    if not rows:
        return ""
    rule = f" Split: {_e(data['split'])}." if data.get("split") else ""
    text = ('<p>Which cases served which role (as paper 000: thresholds found on the validation data, errors '
            "evaluated on the test data; no test case was used for training, early stopping or choosing a "
            f"threshold).{rule}</p>")
    return "<h2>Cases and their roles</h2>\n" + text + _table(["role", "cases", "used for", "case names"], rows, 1)


def _settings_section(study: StudyData) -> str:
    meta = study.meta
    parts = ["<h2>Model, data and settings</h2>"]
    rows = []
    for entry in study.losses:
        rows.append([entry.get("label", entry["key"]), entry.get("model", ""), entry.get("loss", ""),
                     json.dumps(entry.get("loss_kwargs", {})), "multi-label (one sigmoid channel per structure)"
                     if entry.get("multi_label", True) else "one model per structure",
                     entry.get("epochs_run", ""), entry.get("best_epoch", ""), entry.get("checkpoint", "")])
    if rows:
        parts.append(_table(["training loss", "model", "loss name", "loss arguments", "outputs", "epochs run",
                             "best epoch", "checkpoint"], rows, 8))
    data = {k: v for k, v in meta.get("data", {}).items() if not k.endswith(" cases") and k != "split"}
    if data:
        drows = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in data.items()]
        parts.append(_table(["data", ""], drows, 2))
    facts = [["created", meta.get("created", "")], ["finished", meta.get("finished", "")],
             ["wall time (s)", fmt_num(meta.get("duration_s"), 1) if meta.get("duration_s") is not None else ""],
             ["status", meta.get("status", "")], ["device", meta.get("device", "")],
             ["seed", meta.get("settings", {}).get("seed", "")],
             ["bootstrap", f"{N_BOOTSTRAP} resamples of the test cases, seed {study.seed}, percentile 95 % CI"]]
    parts.append(_table(["run", ""], facts, 2))
    versions = meta.get("versions", {})
    if versions:
        parts.append(_table(["library", "version"], sorted(versions.items()), 2))
    parts.append("<p>Settings (the study configuration; each training configuration is in the models folder):</p>")
    parts.append(f"<pre>{_e(json.dumps(meta.get('settings', {}), indent=2, sort_keys=True))}</pre>")
    return "\n".join(parts)


def render_html(study: StudyData, deltas: Sequence[float] = DEFAULT_DELTAS) -> str:
    """The whole page as a string (self-contained: CSS inline, images as base64 data URIs)."""
    meta = study.meta
    title = meta.get("title") or "Threshold sensitivity study"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>"]
    parts.append(f'<p class="small">{_e(meta.get("description", ""))}</p>')
    if meta.get("status") and meta.get("status") != "complete":
        parts.append(f'<p class="warn">This study is incomplete ({_e(meta.get("status"))}): '
                     f'{_e(meta.get("status_detail", ""))}</p>')
    problems = meta.get("problems", [])
    if problems:
        parts.append('<div class="warn"><b>Problems:</b><ul>' + "".join(
            f"<li>{_e(p.get('case', ''))}: {_e(p.get('reason', ''))}</li>" for p in problems) + "</ul></div>")
    parts.append(_roles_section(study))

    # headline: held-out numbers
    rows = summary_rows(study, deltas)
    parts.append("<h2>Headline (held-out test cases)</h2>")
    head = []
    for entry in study.losses:
        key = entry["key"]
        mine = [r for r in rows if r["loss"] == key and r.get("dice_test_loss_at_0.5") is not None]
        pert = [v for r in mine for v in (r.get("dice_test_loss_minus_0.05"), r.get("dice_test_loss_plus_0.05"))
                if v is not None]
        if mine:
            lo, hi = median_loss_ci(study, key, rows)
            n_test = max(r["n_test_cases"] for r in mine)
            head.append(f"<li><b>{_e(study.label(key))}</b>: median test Dice loss at 0.5 instead of the threshold "
                        f"chosen on validation {fmt_pct(float(np.median([r['dice_test_loss_at_0.5'] for r in mine])))} "
                        f"(95 % CI {_ci_text(lo, hi)}, bootstrap over {n_test} test cases); median test loss at "
                        f"t ± 0.05 {fmt_pct(float(np.median(pert))) if pert else 'n/a'} "
                        f"(over {len(mine)} structure{'s' if len(mine) != 1 else ''}).</li>")
    corr = correlations(study)
    for entry in study.losses:
        for role in ROLES[1:]:
            c = corr.get(entry["key"], {}).get(role)
            if c and c["r"] is not None:
                rtxt = ("undefined (constant values)" if not math.isfinite(c["r"])
                        else f"{c['r']:.3f} (p = {c['p']:.3g})")
                head.append(f"<li><b>{_e(study.label(entry['key']))}</b>: Pearson r between prominence and the "
                            f"{_e(CORRELATION_KINDS[role])} = {rtxt}, n = {c['n']}.</li>")
    unlearnt = [f"{r['structure']} ({r['loss_label']})" for r in rows
                if r.get("dice_threshold_chosen_on_validation") is not None
                and r["dice_threshold_chosen_on_validation"] <= 0.0]
    if unlearnt:
        head.append(f"<li><b>Not learnt</b> (best validation Dice at threshold 0.00, i.e. every voxel): "
                    f"{_e(', '.join(unlearnt))}. Their losses say nothing about thresholding, and they dominate the "
                    "correlation above; train longer or wider (--epochs, --width).</li>")
    parts.append("<ul>" + "".join(head) + "</ul>")
    parts.append('<p class="small">Paper 000 (Bice et al. 2021) chose thresholds on validation data and reports, on '
                 "its held-out test cases (real head-and-neck CT), a median Dice loss of 13.5 % at 0.5 and 11.8 % at "
                 "±0.05 from the optimum. The numbers above are measured the same way, on this run's test cases "
                 "only; the validation values are in-sample and shown only as where the threshold was chosen.</p>")
    hrow = []
    for r in rows:
        if r.get("dice_threshold_chosen_on_validation") is None:
            continue
        hrow.append([r["structure"], r["loss_label"], fmt_num(r["prominence"], 5) if r["prominence"] is not None
                     else "n/a", f"{r['dice_threshold_chosen_on_validation']:.2f}", fmt_num(r.get("dice_test_at_threshold")),
                     fmt_num(r.get("dice_test_at_0.5")), fmt_pct(r.get("dice_test_loss_at_0.5")),
                     _ci_text(r.get("dice_test_loss_at_0.5_ci_low"), r.get("dice_test_loss_at_0.5_ci_high")),
                     fmt_pct(r.get("test_relative_volume_bias_at_0.5")),
                     fmt_pct(r.get("test_relative_volume_bias_at_threshold"))])
    if hrow:
        parts.append(_table(["structure", "loss", "prominence", "t chosen on validation", "test Dice at t",
                             "test Dice at 0.5", "test loss at 0.5", "95 % CI", "test volume bias at 0.5",
                             "test volume bias at t"], hrow, 2))

    # across structures
    parts.append("<h2>Across structures</h2>")
    parts.append(_img(figure_prominence(study, corr), "prominence vs Dice threshold"))
    parts.append(_img(figure_perturbation(rows, study, deltas), "perturbation losses on the test cases"))

    parts.append("<h2>Per structure</h2>")
    parts.append('<p class="small">Threshold grid: a voxel is foreground when p &gt;= t. t is the validation optimum '
                 "(best pooled value on the validation cases, ties toward 0.5); every other value is measured on the "
                 "test cases. Dice is pooled over voxels and cases (Eq. 1); MSD/HD/HD95 in mm. Losses are relative to "
                 "the test value at t, for the worse: Dice (D<sub>t</sub> - D)/D<sub>t</sub>, distances "
                 "(d - d<sub>t</sub>)/d<sub>t</sub>; a negative loss means the test cases did better at the other "
                 "threshold.</p>")
    for s in study.structures:
        if any(r["structure"] == s for r in rows):
            parts.append(_structure_section(study, s, rows, deltas))
    parts.append(_settings_section(study))
    parts.append(f'<p class="small">Tables behind this page: summary.csv, {VOLUME_BIAS_CSV}, correlation.csv, '
                 f"{SWEEPS_DIR}/&lt;loss&gt;/&lt;structure&gt;/&lt;validation|test&gt;/sweep.csv, sweep_per_case.csv, "
                 f"summary.json, test/{COUNTS_CSV}; {STUDY_JSON}. Regenerate with: autosegsens report --study DIR "
                 "--out report.html</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(study_dir: PathLike, out: Optional[PathLike] = None) -> Path:
    """Read the study folder and write its HTML page atomically (default ``study_dir/report.html``)."""
    study = load_study(study_dir)
    target = Path(out) if out is not None else Path(study_dir) / "report.html"
    return write_text(target, render_html(study))
