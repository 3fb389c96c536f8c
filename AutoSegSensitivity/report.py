"""Tables (CSV, JSON; written atomically) and PNG figures (matplotlib, Agg backend) of sweeps and comparisons.

* :func:`write_csv` / :func:`write_json`: tidy tables; ``inf`` is written as ``inf`` in CSV and as the string
  ``"inf"`` in JSON (JSON has no infinity), NaN as an empty cell / ``null``.
* :func:`plot_sweep`: a metric against the threshold (pooled curve, mean-of-cases curve and per-case curves),
  with the optimum and 0.5 marked (paper 000, Figures 7, 10, 11).
* :func:`plot_perturbation_losses`: distributions across structures of the relative loss at 0.5 and at
  ``t_opt ± delta`` (paper Figures 12-15).
* :func:`plot_prominence`: prominence against optimal threshold across structures with Pearson r and p
  (paper Figure 16).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .atomic import write_text, write_with
from .errors import InputError
from .sweep import DEFAULT_DELTAS, HIGHER_IS_BETTER, SweepResult, correlate_prominence

__all__ = ["write_csv", "write_json", "jsonable", "plot_sweep", "plot_sweep_metrics", "plot_perturbation_losses",
           "plot_prominence", "perturbation_loss_table"]

PathLike = Union[str, Path]

_LABELS = {"dice": "Dice", "nsd": "surface Dice", "msd": "MSD (mm)", "hd": "Hausdorff (mm)", "hd95": "HD95 (mm)"}


def _label(metric: str, result: Optional[SweepResult] = None) -> str:
    """Axis / title label of a metric; the surface Dice names its tolerance (``surface Dice at 2 mm``)."""
    text = _LABELS.get(metric, metric)
    if metric == "nsd" and result is not None:
        text += f" at {result.nsd_tolerance_mm:g} mm"
    return text


# --------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------


def _cell(v: object) -> object:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def write_csv(rows: Sequence[Mapping[str, object]], path: PathLike, columns: Optional[Sequence[str]] = None) -> Path:
    """Write ``rows`` (dicts) as CSV with a header, atomically. ``columns`` defaults to the keys of the
    rows in first-seen order; missing values are empty cells."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            for k in r:
                if k not in columns:
                    columns.append(k)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c, "")) for c in columns])
    return write_text(path, buf.getvalue())


def jsonable(obj: object) -> object:
    """A copy of ``obj`` that strict JSON can hold: numpy scalars and arrays become Python numbers and lists,
    ``inf`` becomes ``"inf"``, NaN ``None``, tuples lists, Paths strings, dict keys strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(data: object, path: PathLike) -> Path:
    """Write ``data`` as indented strict JSON (see :func:`jsonable`), atomically."""
    return write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def perturbation_loss_table(results: Mapping[str, SweepResult], metric: str = "dice",
                            deltas: Sequence[float] = DEFAULT_DELTAS, aggregate: str = "pooled") -> List[Dict[str, object]]:
    """One row per structure: optimum threshold and value, ``loss_at_0.5`` and ``loss_minus_<d>`` /
    ``loss_plus_<d>`` for each delta (relative losses, ``None`` outside the grid)."""
    rows = []
    for name, res in results.items():
        t_opt, v_opt = res.optimum(metric, aggregate)
        row: Dict[str, object] = {"structure": name, "metric": metric, "optimum_threshold": t_opt,
                                  "optimum_value": v_opt, "loss_at_0.5": res.loss_at(0.5, metric, aggregate)}
        for d, sides in res.perturbation_losses(metric, deltas, aggregate).items():
            row[f"loss_minus_{d:g}"] = sides["minus"]
            row[f"loss_plus_{d:g}"] = sides["plus"]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: PathLike, dpi: int) -> Path:
    plt = _pyplot()
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)


def _finite(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=float).copy()
    y[~np.isfinite(y)] = np.nan
    return y


def _draw_sweep(ax, result: SweepResult, metric: str, show_cases: bool) -> None:
    th = result.thresholds
    if show_cases and len(result.case_names) > 1:
        for i, c in enumerate(result.case_names):
            ax.plot(th, _finite(result.per_case[c][metric]), color="0.75", lw=0.8,
                    label="cases" if i == 0 else None)
        ax.plot(th, _finite(result.mean[metric]), color="tab:green", lw=1.2, ls="--", label="mean of cases")
    ax.plot(th, _finite(result.pooled[metric]), color="tab:blue", lw=2, label="pooled")
    t_opt, v_opt = result.optimum(metric)
    v05 = result.value_at(0.5, metric)
    ax.axvline(t_opt, color="tab:red", ls="--", lw=1)
    if v_opt is not None and math.isfinite(v_opt):
        ax.plot([t_opt], [v_opt], "o", color="tab:red", label=f"optimum t={t_opt:.2f}: {v_opt:.4g}")
    else:
        ax.plot([], [], "o", color="tab:red", label=f"optimum t={t_opt:.2f}: {v_opt}")
    if v05 is not None:
        ax.axvline(0.5, color="0.3", ls=":", lw=1)
        loss = result.loss_at(0.5, metric)
        loss_txt = f", loss {100 * loss:.1f} %" if loss is not None and math.isfinite(loss) else ""
        if math.isfinite(v05):
            ax.plot([0.5], [v05], "s", color="0.3", label=f"t=0.50: {v05:.4g}{loss_txt}")
    ax.set_xlabel("threshold")
    ax.set_ylabel(_label(metric, result))
    ax.set_xlim(min(0.0, th[0]), max(1.0, th[-1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_sweep(result: SweepResult, path: PathLike, metric: str = "dice", title: Optional[str] = None,
               show_cases: bool = True, dpi: int = 100) -> Path:
    """PNG of ``metric`` against threshold: pooled curve (and mean-of-cases and per-case curves when there
    are several cases), the optimum (red) and 0.5 (grey) marked with their values and the loss at 0.5."""
    if metric not in result.metrics:
        raise InputError("plot_sweep", "metric", f"one of {list(result.metrics)}", got=repr(metric))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    _draw_sweep(ax, result, metric, show_cases)
    ax.set_title(title or f"{result.structure or 'structure'}: {_label(metric, result)} vs threshold")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_sweep_metrics(result: SweepResult, path: PathLike, title: Optional[str] = None, dpi: int = 100) -> Path:
    """One PNG with a panel per metric of the sweep (as :func:`plot_sweep`)."""
    plt = _pyplot()
    n = len(result.metrics)
    cols = 2 if n > 1 else 1
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax, m in zip(axes.ravel(), result.metrics):
        _draw_sweep(ax, result, m, show_cases=True)
        ax.set_title(_label(m, result))
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title or f"{result.structure or 'structure'}: threshold sweep")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_perturbation_losses(results: Union[Mapping[str, SweepResult], Sequence[SweepResult]], path: PathLike,
                             metric: str = "dice", deltas: Sequence[float] = DEFAULT_DELTAS,
                             aggregate: str = "pooled", dpi: int = 100) -> Path:
    """PNG of the distribution across structures of the relative loss (%) at 0.5 and at ``t_opt ± delta``
    (both sides of each delta pooled, as the paper's Figures 12-15): a box per group (from three
    structures on) and every structure as a point."""
    if not isinstance(results, Mapping):
        results = {(r.structure or f"structure {i}"): r for i, r in enumerate(results)}
    if not results:
        raise InputError("plot_perturbation_losses", "results", "at least one sweep result", got="none")
    groups: Dict[str, List[float]] = {"t = 0.5": []}
    for d in deltas:
        groups[f"±{d:g}"] = []
    for res in results.values():
        loss05 = res.loss_at(0.5, metric, aggregate)
        if loss05 is not None and math.isfinite(loss05):
            groups["t = 0.5"].append(100 * loss05)
        for d, sides in res.perturbation_losses(metric, deltas, aggregate).items():
            for v in (sides["minus"], sides["plus"]):
                if v is not None and math.isfinite(v):
                    groups[f"±{d:g}"].append(100 * v)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = list(groups)
    data = [groups[k] for k in labels]
    pos = np.arange(1, len(labels) + 1)
    if any(len(v) >= 3 for v in data):
        ax.boxplot([v if v else [np.nan] for v in data], positions=pos, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for p_, v in zip(pos, data):
        if v:
            ax.scatter(p_ + rng.uniform(-0.12, 0.12, len(v)), v, s=14, alpha=0.7, color="tab:blue")
            ax.text(p_, max(v), f"median {np.median(v):.1f} %", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(pos)
    ax.set_xticklabels(labels)
    word = "decrease" if HIGHER_IS_BETTER.get(metric, True) else "increase"
    ax.set_ylabel(f"relative {word} of {_LABELS.get(metric, metric)} (%)")
    ax.set_title(f"{_LABELS.get(metric, metric)} loss vs optimum threshold ({len(results)} structure"
                 f"{'s' if len(results) != 1 else ''})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_prominence(prominences: Sequence[float], optima: Sequence[float], path: PathLike,
                    labels: Optional[Sequence[str]] = None, dpi: int = 100) -> Path:
    """PNG scatter of optimal threshold against prominence (log x axis when all are positive) with a
    least-squares line and Pearson r and p (:func:`~AutoSegSensitivity.sweep.correlate_prominence`) in the
    title."""
    x = np.asarray(prominences, dtype=float)
    y = np.asarray(optima, dtype=float)
    r, p = correlate_prominence(x, y)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(x, y, color="tab:blue")
    if labels is not None:
        if len(labels) != x.size:
            raise InputError("plot_prominence", "labels", f"{x.size} labels", got=len(labels))
        for xi, yi, name in zip(x, y, labels):
            ax.annotate(str(name), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if math.isfinite(r):
        coef = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, np.polyval(coef, xs), color="tab:red", lw=1)
    if np.all(x > 0) and x.max() / x.min() > 20:
        ax.set_xscale("log")
    r_txt = "undefined (constant input)" if not math.isfinite(r) else f"{r:.3f}, p = {p:.3g}"
    ax.set_title(f"optimal threshold vs prominence\nPearson r = {r_txt} (n = {x.size})", fontsize=10)
    ax.set_xlabel("prominence (fraction of true voxels in the training set)")
    ax.set_ylabel("optimal threshold")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi)
