"""One self-contained HTML page for a threshold-sensitivity study, built from the CSV/JSON of a study folder.

The page is written for a clinician or physicist: per structure the metric-vs-threshold curves with the
optimum and 0.5 marked, the loss at 0.5 and at ``t_opt ± 0.02 / 0.05 / 0.1`` (paper 000, Eq. 3), the two
training losses (BCE and BCE + lambda * 2D Dice) side by side, the volume bias, and one plain-language
sentence ("for SpinalCord, thresholding at 0.5 instead of 0.23 loses 14.0 % Dice"); across structures the
prominence (paper 000, Eq. 4) against the optimal threshold with Pearson r and p; and at the end the model,
data, settings, seeds, library versions and date the study came from.

Every number on the page is recomputed from the files of the study folder, so ``autosegsens report`` can
rebuild the page at any time and the page always agrees with the tables:

* ``study.json``: settings, data, models, versions, dates, training-set prominence per structure
  (written by :mod:`AutoSegSensitivity.study`; see :data:`STUDY_JSON`).
* ``sweeps/<loss>/<structure>/sweep.csv`` and ``sweep_per_case.csv``: the sweep tables of
  :meth:`AutoSegSensitivity.sweep.SweepResult.to_table` / ``per_case_table`` (the same files
  ``autosegsens sweep`` writes). They are read back into a :class:`~AutoSegSensitivity.sweep.SweepResult`,
  whose ``optimum`` / ``loss_at`` / ``perturbation_losses`` give the numbers.
* ``volume_bias.csv``: one row per loss, structure and threshold kind (``optimum`` or ``0.5``).

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
from .sweep import DEFAULT_DELTAS, HIGHER_IS_BETTER, METRICS, SweepResult, correlate_prominence

__all__ = [
    "STUDY_JSON", "SWEEPS_DIR", "VOLUME_BIAS_CSV", "StudyData", "read_sweep_folder", "load_study",
    "summary_rows", "plain_summary", "render_html", "write_report", "fmt_num", "fmt_pct",
]

PathLike = Union[str, Path]

STUDY_JSON = "study.json"
SWEEPS_DIR = "sweeps"
VOLUME_BIAS_CSV = "volume_bias.csv"
_COLS = {"dice": "dice", "msd": "msd_mm", "hd": "hd_mm", "hd95": "hd95_mm"}
_LABELS = {"dice": "Dice", "msd": "MSD (mm)", "hd": "HD (mm)", "hd95": "HD95 (mm)"}
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
    return f"{100.0 * v:.{digits}f} %"


# --------------------------------------------------------------------------------------------------------
# reading a study folder
# --------------------------------------------------------------------------------------------------------


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
    Metrics are the ones present among ``dice, msd_mm, hd_mm, hd95_mm``."""
    folder = Path(folder)
    rows = _read_csv(folder / "sweep.csv")
    if not rows:
        raise InputError(folder / "sweep.csv", "rows", "one row per threshold", got="no rows")
    metrics = tuple(m for m in METRICS if _COLS[m] in rows[0])
    if not metrics or "threshold" not in rows[0]:
        raise InputError(folder / "sweep.csv", "columns", "threshold and at least one of dice, msd_mm, hd_mm, hd95_mm",
                         got=list(rows[0]))
    th = np.array([_float(r["threshold"]) for r in rows])
    pooled = {m: np.array([_float(r[_COLS[m]]) for r in rows]) for m in metrics}
    mean = {m: np.array([_float(r.get(_COLS[m] + "_mean", r[_COLS[m]])) for r in rows]) for m in metrics}
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
            per_case[case] = {m: np.array([_float(r[_COLS[m]]) for r in rs]) for m in metrics}
            case_names.append(case)
    problems: List[Tuple[str, str]] = []
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text(encoding="utf-8"))
            problems = [(p["case"], p["reason"]) for p in data.get("problems", [])]
            structure = structure or data.get("structure")
        except (ValueError, KeyError, TypeError):
            pass
    return SweepResult(th, metrics, pooled, mean, n_undef, per_case, case_names, problems, structure)


@dataclass
class StudyData:
    """What a study folder holds, read back: ``meta`` (study.json), ``sweeps[loss_key][structure]``,
    ``volume_bias`` rows, and ``losses`` (``[{key, label, ...}]`` in display order)."""

    folder: Path
    meta: Dict[str, Any]
    sweeps: Dict[str, Dict[str, SweepResult]]
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

    def prominence(self, structure: str) -> Optional[float]:
        v = self.meta.get("prominence", {}).get(structure)
        return None if v is None else float(v)

    def bias(self, loss_key: str, structure: str, kind: str) -> Optional[Dict[str, Any]]:
        for row in self.volume_bias:
            if row.get("loss") == loss_key and row.get("structure") == structure and row.get("at") == kind:
                return row
        return None


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
    sweeps: Dict[str, Dict[str, SweepResult]] = {}
    for entry in meta["losses"]:
        key = entry["key"]
        for s in meta["structures"]:
            sub = folder / SWEEPS_DIR / key / s
            if (sub / "sweep.csv").is_file():
                sweeps.setdefault(key, {})[s] = read_sweep_folder(sub, s)
    bias: List[Dict[str, Any]] = []
    if (folder / VOLUME_BIAS_CSV).is_file():
        for r in _read_csv(folder / VOLUME_BIAS_CSV):
            row: Dict[str, Any] = dict(r)
            for k in ("threshold", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml", "relative_volume_diff"):
                if k in row:
                    row[k] = _float(row[k])
            bias.append(row)
    return StudyData(folder, meta, sweeps, bias)


# --------------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------------


def summary_rows(study: StudyData, deltas: Sequence[float] = DEFAULT_DELTAS) -> List[Dict[str, Any]]:
    """One row per loss and structure: prominence, per metric the optimum threshold and value, the value
    and relative loss at 0.5, the relative losses at ``t_opt - d`` / ``t_opt + d`` for Dice, and the volume
    bias at the optimum and at 0.5 (what ``summary.csv`` of a study holds)."""
    rows = []
    for entry in study.losses:
        key = entry["key"]
        for s in study.structures:
            res = study.sweeps.get(key, {}).get(s)
            if res is None:
                continue
            row: Dict[str, Any] = {"loss": key, "loss_label": study.label(key), "structure": s,
                                   "prominence": study.prominence(s)}
            for m in res.metrics:
                t_opt, v_opt = res.optimum(m)
                row[f"{m}_optimum_threshold"] = t_opt
                row[f"{m}_at_optimum"] = v_opt
                row[f"{m}_at_0.5"] = res.value_at(0.5, m)
                row[f"{m}_loss_at_0.5"] = res.loss_at(0.5, m)
            if "dice" in res.metrics:
                for d, sides in res.perturbation_losses("dice", deltas).items():
                    row[f"dice_loss_minus_{d:g}"] = sides["minus"]
                    row[f"dice_loss_plus_{d:g}"] = sides["plus"]
            for kind in ("optimum", "0.5"):
                b = study.bias(key, s, kind)
                row[f"volume_bias_ml_at_{kind}"] = None if b is None else b.get("volume_diff_ml")
                row[f"relative_volume_bias_at_{kind}"] = None if b is None else b.get("relative_volume_diff")
            rows.append(row)
    return rows


def correlations(study: StudyData, metric: str = "dice") -> Dict[str, Dict[str, Any]]:
    """Per loss: Pearson r and p between training-set prominence and optimal threshold across structures
    (``None`` when fewer than two structures have both)."""
    out = {}
    for entry in study.losses:
        key = entry["key"]
        xs, ys, names = [], [], []
        for s in study.structures:
            res = study.sweeps.get(key, {}).get(s)
            p = study.prominence(s)
            if res is None or p is None or metric not in res.metrics:
                continue
            xs.append(p)
            ys.append(res.optimum(metric)[0])
            names.append(s)
        r = pv = None
        if len(xs) >= 2:
            r, pv = correlate_prominence(xs, ys)
        out[key] = {"r": r, "p": pv, "n": len(xs), "prominence": xs, "optimum": ys, "structures": names}
    return out


def plain_summary(study: StudyData, structure: str) -> List[str]:
    """Plain-language sentences for one structure, one per loss, from the sweep tables."""
    out = []
    for entry in study.losses:
        key = entry["key"]
        res = study.sweeps.get(key, {}).get(structure)
        if res is None or "dice" not in res.metrics:
            continue
        t_opt, d_opt = res.optimum("dice")
        d05 = res.value_at(0.5, "dice")
        loss05 = res.loss_at(0.5, "dice")
        pert = res.perturbation_losses("dice", (0.05,))[0.05]
        worst05 = max([v for v in (pert["minus"], pert["plus"]) if v is not None], default=None)
        label = study.label(key)
        if d_opt <= 0.0 or t_opt <= 0.0:
            out.append(f"For {structure} ({study.label(key)}), the best Dice ({fmt_num(d_opt)}) comes from "
                       f"thresholding at {t_opt:.2f}, i.e. calling every voxel {structure}: the model has not "
                       f"learnt this structure.")
            continue
        if abs(t_opt - 0.5) < 1e-9:
            text = (f"For {structure} ({label}), 0.5 is already the best threshold (Dice {fmt_num(d_opt)}).")
        else:
            text = (f"For {structure} ({label}), thresholding at 0.5 instead of {t_opt:.2f} loses "
                    f"{fmt_pct(loss05)} Dice ({fmt_num(d05)} instead of {fmt_num(d_opt)}).")
        if worst05 is not None:
            text += f" Moving 0.05 away from the optimum costs up to {fmt_pct(worst05)}."
        b05 = study.bias(key, structure, "0.5")
        bopt = study.bias(key, structure, "optimum")
        if b05 is not None and bopt is not None:
            rv05, rvo = b05.get("relative_volume_diff"), bopt.get("relative_volume_diff")
            if rv05 is not None and rvo is not None and math.isfinite(rv05) and math.isfinite(rvo):
                text += (f" The volume is {'over' if rv05 > 0 else 'under'}estimated by {fmt_pct(abs(rv05))} at 0.5"
                         f" and {'over' if rvo > 0 else 'under'}estimated by {fmt_pct(abs(rvo))} at the optimum.")
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


def _mark(ax, res: SweepResult, metric: str, color: str, label_prefix: str = "") -> None:
    t_opt, v_opt = res.optimum(metric)
    v05 = res.value_at(0.5, metric)
    ax.axvline(t_opt, color=color, ls="--", lw=0.9)
    if math.isfinite(v_opt):
        ax.plot([t_opt], [v_opt], "o", color=color, label=f"{label_prefix}optimum {t_opt:.2f}: {v_opt:.3g}")
    if v05 is not None and math.isfinite(v05):
        ax.plot([0.5], [v05], "s", color=color, mfc="white", label=f"{label_prefix}at 0.5: {v05:.3g}")


def figure_dice_side_by_side(study: StudyData, structure: str) -> Optional[str]:
    """Dice vs threshold, one panel per loss (side by side): pooled, mean-of-cases and per-case curves,
    optimum and 0.5 marked."""
    keys = [e["key"] for e in study.losses if structure in study.sweeps.get(e["key"], {})]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.6), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        res = study.sweeps[key][structure]
        if "dice" not in res.metrics:
            ax.axis("off")
            continue
        for i, c in enumerate(res.case_names):
            ax.plot(res.thresholds, _finite(res.per_case[c]["dice"]), color="0.8", lw=0.7,
                    label="validation cases" if i == 0 else None)
        ax.plot(res.thresholds, _finite(res.pooled["dice"]), color="tab:blue", lw=2, label="pooled (Eq. 1)")
        ax.axvline(0.5, color="0.3", ls=":", lw=1)
        _mark(ax, res, "dice", "tab:red")
        ax.set_title(f"{structure}: {study.label(key)}", fontsize=10)
        ax.set_xlabel("threshold")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower center")
    axes[0][0].set_ylabel("Dice")
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_distances(study: StudyData, structure: str) -> Optional[str]:
    """MSD, HD and HD95 vs threshold, the losses overlaid (pooled curves), optima marked."""
    keys = [e["key"] for e in study.losses if structure in study.sweeps.get(e["key"], {})]
    metrics = [m for m in ("msd", "hd", "hd95") if keys and all(m in study.sweeps[k][structure].metrics for k in keys)]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        ymax = 0.0
        for i, key in enumerate(keys):
            res = study.sweeps[key][structure]
            color = _LOSS_COLORS[i % len(_LOSS_COLORS)]
            y = _finite(res.pooled[m])
            ax.plot(res.thresholds, y, color=color, lw=1.6, label=study.label(key))
            _mark(ax, res, m, color)
            mid = y[(res.thresholds >= 0.02) & (res.thresholds <= 0.98)]
            if np.any(np.isfinite(mid)):
                ymax = max(ymax, float(np.nanpercentile(mid, 90)))
        ax.axvline(0.5, color="0.3", ls=":", lw=1)
        if ymax > 0:
            ax.set_ylim(0, 1.3 * ymax)
        ax.set_xlim(0, 1)
        ax.set_xlabel("threshold")
        ax.set_ylabel(_LABELS[m])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center")
    fig.suptitle(f"{structure}: surface distances (lower is better)", fontsize=10)
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_prominence(study: StudyData, corr: Mapping[str, Mapping[str, Any]]) -> Optional[str]:
    """Optimal Dice threshold against training-set prominence, one colour per loss, with Pearson r, p."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    any_point = False
    for i, entry in enumerate(study.losses):
        c = corr.get(entry["key"])
        if not c or not c["n"]:
            continue
        any_point = True
        color = _LOSS_COLORS[i % len(_LOSS_COLORS)]
        r, p = c["r"], c["p"]
        rtxt = "n/a" if r is None or not math.isfinite(r) else f"r = {r:.3f}, p = {p:.3g}"
        ax.scatter(c["prominence"], c["optimum"], color=color, label=f"{study.label(entry['key'])} ({rtxt})")
        for x, y, name in zip(c["prominence"], c["optimum"], c["structures"]):
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if not any_point:
        plt.close(fig)
        return None
    xs = [x for c in corr.values() for x in c["prominence"]]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.axhline(0.5, color="0.3", ls=":", lw=1)
    ax.set_xlabel("prominence (fraction of true voxels in the training set)")
    ax.set_ylabel("optimal Dice threshold")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_perturbation(study: StudyData, deltas: Sequence[float] = DEFAULT_DELTAS) -> Optional[str]:
    """Relative Dice loss at 0.5 and at t_opt ± delta: one group of bars per structure, one panel per loss."""
    keys = [e["key"] for e in study.losses if study.sweeps.get(e["key"])]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.4), squeeze=False, sharey=True)
    groups = ["0.5"] + [f"±{d:g}" for d in deltas]
    for ax, key in zip(axes[0], keys):
        structs = [s for s in study.structures if s in study.sweeps[key]]
        width = 0.8 / len(groups)
        for gi, g in enumerate(groups):
            vals = []
            for s in structs:
                res = study.sweeps[key][s]
                if gi == 0:
                    v = res.loss_at(0.5, "dice")
                else:
                    sides = res.perturbation_losses("dice", (deltas[gi - 1],))[float(deltas[gi - 1])]
                    v = max([x for x in (sides["minus"], sides["plus"]) if x is not None], default=None)
                vals.append(100 * v if v is not None and math.isfinite(v) else np.nan)
            ax.bar(np.arange(len(structs)) + (gi - (len(groups) - 1) / 2) * width, vals, width,
                   label=("t = 0.5" if gi == 0 else f"t_opt {g} (worse side)"))
        ax.set_xticks(np.arange(len(structs)))
        ax.set_xticklabels(structs, fontsize=8)
        ax.set_title(study.label(key), fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("relative Dice loss (%)")
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


def _structure_section(study: StudyData, s: str, deltas: Sequence[float]) -> str:
    parts = [f'<h3 id="s-{_e(s)}">{_e(s)}</h3>']
    p = study.prominence(s)
    if p is not None:
        parts.append(f'<p class="small">Training-set prominence (Eq. 4): {p:.3g} '
                     f"({fmt_pct(p, 3)} of all training voxels are {_e(s)}).</p>")
    for sentence in plain_summary(study, s):
        parts.append(f'<div class="summary">{_e(sentence)}</div>')
    parts.append(_img(figure_dice_side_by_side(study, s), f"{s}: Dice vs threshold"))
    header = ["loss", "optimum t", "Dice at optimum", "Dice at 0.5", "loss at 0.5"]
    for d in deltas:
        header += [f"loss at t-{d:g}", f"loss at t+{d:g}"]
    rows = []
    dist_rows = []
    bias_rows = []
    for entry in study.losses:
        key = entry["key"]
        res = study.sweeps.get(key, {}).get(s)
        if res is None:
            continue
        if "dice" in res.metrics:
            t_opt, v_opt = res.optimum("dice")
            row = [study.label(key), f"{t_opt:.2f}", fmt_num(v_opt), fmt_num(res.value_at(0.5, "dice")),
                   fmt_pct(res.loss_at(0.5, "dice"))]
            for d, sides in res.perturbation_losses("dice", deltas).items():
                row += [fmt_pct(sides["minus"]), fmt_pct(sides["plus"])]
            rows.append(row)
        for m in ("msd", "hd", "hd95"):
            if m in res.metrics:
                t_opt, v_opt = res.optimum(m)
                dist_rows.append([study.label(key), _LABELS[m], f"{t_opt:.2f}", fmt_num(v_opt, 2),
                                  fmt_num(res.value_at(0.5, m), 2), fmt_pct(res.loss_at(0.5, m))])
        for kind in ("optimum", "0.5"):
            b = study.bias(key, s, kind)
            if b is not None:
                bias_rows.append([study.label(key), kind, f"{float(b['threshold']):.2f}",
                                  fmt_num(b.get("volume_ref_ml"), 2), fmt_num(b.get("volume_pred_ml"), 2),
                                  fmt_num(b.get("volume_diff_ml"), 2), fmt_pct(b.get("relative_volume_diff"))])
    if rows:
        parts.append("<p>Dice (pooled over the validation cases) and its relative loss away from the optimum:</p>")
        parts.append(_table(header, rows))
    img = figure_distances(study, s)
    if img:
        parts.append(_img(img, f"{s}: surface distances vs threshold"))
    if dist_rows:
        parts.append(_table(["loss", "metric", "optimum t", "at optimum", "at 0.5", "increase at 0.5"], dist_rows, 2))
    if bias_rows:
        parts.append("<p>Volume bias (predicted minus reference volume, summed over the validation cases):</p>")
        parts.append(_table(["loss", "threshold", "t", "reference (ml)", "predicted (ml)", "difference (ml)",
                             "relative"], bias_rows, 2))
    return "\n".join(parts)


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
    data = meta.get("data", {})
    if data:
        drows = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in data.items()]
        parts.append(_table(["data", ""], drows, 2))
    facts = [["created", meta.get("created", "")], ["finished", meta.get("finished", "")],
             ["wall time (s)", fmt_num(meta.get("duration_s"), 1) if meta.get("duration_s") is not None else ""],
             ["status", meta.get("status", "")], ["device", meta.get("device", "")],
             ["seed", meta.get("settings", {}).get("seed", "")]]
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

    # headline
    rows = summary_rows(study, deltas)
    parts.append("<h2>Headline</h2>")
    head = []
    for entry in study.losses:
        key = entry["key"]
        losses05 = [r["dice_loss_at_0.5"] for r in rows if r["loss"] == key and r.get("dice_loss_at_0.5") is not None]
        pert = []
        for r in rows:
            if r["loss"] == key:
                pert += [v for v in (r.get("dice_loss_minus_0.05"), r.get("dice_loss_plus_0.05")) if v is not None]
        if losses05:
            head.append(f"<li><b>{_e(study.label(key))}</b>: median Dice loss at 0.5 instead of the optimum "
                        f"{fmt_pct(float(np.median(losses05)))}; median loss at t_opt ± 0.05 "
                        f"{fmt_pct(float(np.median(pert))) if pert else 'n/a'} "
                        f"(over {len(losses05)} structure{'s' if len(losses05) != 1 else ''}).</li>")
    corr = correlations(study)
    for entry in study.losses:
        c = corr.get(entry["key"])
        if c and c["r"] is not None:
            rtxt = "undefined (constant values)" if not math.isfinite(c["r"]) else f"{c['r']:.3f} (p = {c['p']:.3g})"
            head.append(f"<li><b>{_e(study.label(entry['key']))}</b>: Pearson r between prominence and optimal "
                        f"threshold = {rtxt}, n = {c['n']}.</li>")
    unlearnt = [f"{r['structure']} ({r['loss_label']})" for r in rows
                if r.get("dice_optimum_threshold") is not None and r["dice_optimum_threshold"] <= 0.0]
    if unlearnt:
        head.append(f"<li><b>Not learnt</b> (best Dice at threshold 0.00, i.e. every voxel): {_e(', '.join(unlearnt))}. "
                    "Their optimum and losses say nothing about thresholding, and they dominate the correlation "
                    "above; train longer or wider (--epochs, --width).</li>")
    parts.append("<ul>" + "".join(head) + "</ul>")
    parts.append('<p class="small">Paper 000 (Bice et al. 2021) reports a median Dice loss of 13.5 % at 0.5 and '
                 "11.8 % at ±0.05 on real head-and-neck CT; the numbers here come from this run only.</p>")
    hrow = []
    for r in rows:
        hrow.append([r["structure"], r["loss_label"], fmt_num(r["prominence"], 5) if r["prominence"] is not None
                     else "n/a", f"{r['dice_optimum_threshold']:.2f}", fmt_num(r["dice_at_optimum"]),
                     fmt_num(r["dice_at_0.5"]), fmt_pct(r["dice_loss_at_0.5"]),
                     fmt_pct(r.get("relative_volume_bias_at_0.5")), fmt_pct(r.get("relative_volume_bias_at_optimum"))])
    if hrow:
        parts.append(_table(["structure", "loss", "prominence", "optimum t", "Dice at optimum", "Dice at 0.5",
                             "loss at 0.5", "volume bias at 0.5", "volume bias at optimum"], hrow, 2))

    # across structures
    parts.append("<h2>Across structures</h2>")
    parts.append(_img(figure_prominence(study, corr), "prominence vs optimal threshold"))
    parts.append(_img(figure_perturbation(study, deltas), "perturbation losses"))

    parts.append("<h2>Per structure</h2>")
    parts.append('<p class="small">Threshold grid: a voxel is foreground when p &gt;= t. Dice is pooled over '
                 "voxels and validation cases (Eq. 1); MSD/HD/HD95 in mm. Losses are relative: Dice "
                 "(D<sub>opt</sub> - D)/D<sub>opt</sub>, distances (d - d<sub>opt</sub>)/d<sub>opt</sub>. "
                 "Optimum: best value, ties toward 0.5.</p>")
    for s in study.structures:
        if any(s in study.sweeps.get(e["key"], {}) for e in study.losses):
            parts.append(_structure_section(study, s, deltas))
    parts.append(_settings_section(study))
    parts.append(f'<p class="small">Tables behind this page: summary.csv, {VOLUME_BIAS_CSV}, correlation.csv, '
                 f"{SWEEPS_DIR}/&lt;loss&gt;/&lt;structure&gt;/sweep.csv, sweep_per_case.csv, summary.json; "
                 f"{STUDY_JSON}. Regenerate with: autosegsens report --study DIR --out report.html</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(study_dir: PathLike, out: Optional[PathLike] = None) -> Path:
    """Read the study folder and write its HTML page atomically (default ``study_dir/report.html``)."""
    study = load_study(study_dir)
    target = Path(out) if out is not None else Path(study_dir) / "report.html"
    return write_text(target, render_html(study))
