"""The cohort-tuning page (``report.html`` of ``autosegsens tune``), in the style of the study page.

Per structure: the cohort curve of the tuned metric with the optimum, 0.5 and the fold thresholds marked,
and the held-out (cross-validated) gain with its bootstrap CI; gains whose CI holds 0 are flagged. With
calibration (``tune --calibration``): a table of temperatures and NLL / ECE / Brier before and after, and
per structure the reliability diagram before and after temperature scaling (held out). The
page reuses :mod:`AutoSegSensitivity.html_report`'s CSS, tables, number formats and figure encoding.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Sequence

from .html_report import _CSS, _e, _img, _png_data_uri, _pyplot, _table, fmt_num, fmt_pct
from .sweep import UNITS

__all__ = ["render_tune_html", "figure_structure", "figure_reliability"]


def figure_structure(tu: Any, metric: str) -> str:
    """The cohort curve (pooled Dice, or mean of a distance) with the optimum, 0.5 and the fold
    thresholds marked, as a PNG data URI."""
    plt = _pyplot()
    res = tu.result
    agg = "pooled" if metric == "dice" else "mean"
    y = res.curve(metric, agg)
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    ax.plot(res.thresholds, [v if math.isfinite(v) else float("nan") for v in y], color="tab:blue",
            label=f"{agg} {metric} ({len(tu.cases)} cases)")
    ax.axvline(tu.t_opt, color="tab:red", ls="--", lw=0.9, label=f"optimum {tu.t_opt:.2f}")
    ax.axvline(0.5, color="0.3", ls=":", lw=0.9, label="0.5")
    if tu.cv is not None:
        for i, t in enumerate(sorted(set(tu.cv.fold_thresholds))):
            ax.axvline(t, color="tab:green", lw=0.6, alpha=0.7, label="fold thresholds" if i == 0 else None)
    ax.set_xlabel("threshold t (foreground where p >= t)")
    unit = UNITS.get(metric, "")
    ax.set_ylabel(f"{metric} ({unit})" if unit else metric)
    ax.set_title(tu.structure)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png_data_uri(fig)


def figure_reliability(cal: Any, structure: str) -> str:
    """Reliability diagram of one structure's ``calibration.StructureCalibration`` as inline SVG (cheap: no
    figure rendering): observed frequency against mean predicted probability per equal-mass bin, before
    (T = 1) and after temperature scaling (held out when cross-validated), with the diagonal. The bins'
    counts are in the table beside it and in reliability.csv."""
    after, label = (cal.cv_after, "after, held out") if cal.cv_after is not None else (cal.after, "after")
    w, h, left, right, top, bottom = 380, 330, 48, 12, 56, 40
    pw, ph = w - left - right, h - top - bottom

    def xy(px: float, py: float) -> str:
        return f"{left + px * pw:.1f},{top + (1 - py) * ph:.1f}"

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'font-family="sans-serif" font-size="10" role="img" aria-label="{_e(structure)}: reliability">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>',
           f'<polyline points="{xy(0, 0)} {xy(1, 1)}" fill="none" stroke="#999" stroke-dasharray="4 3"/>']
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        x, y = left + v * pw, top + (1 - v) * ph
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="#444"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 15}" text-anchor="middle">{v:g}</text>'
                   f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#444"/>'
                   f'<text x="{left - 6}" y="{y + 3:.1f}" text-anchor="end">{v:g}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{h - 6}" text-anchor="middle">mean predicted probability '
               "(equal-mass bins)</text>")
    out.append(f'<text x="12" y="{top + ph / 2:.1f}" text-anchor="middle" transform="rotate(-90 12 '
               f'{top + ph / 2:.1f})">observed frequency</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="12" text-anchor="middle" font-weight="bold">{_e(structure)}</text>')
    series = ((f"before (T = 1): ECE {cal.before.ece:.4f}", cal.before, "#d62728"),
              (f"{label} (T = {cal.temperature:.3g}): ECE {after.ece:.4f}", after, "#1f77b4"))
    legend: List[str] = []  # between the title and the plot: it never hides a point
    for i, (name, m, colour) in enumerate(series):
        pts = [(b.mean_p, b.observed) for b in m.bins]
        if pts:
            out.append(f'<polyline points="{" ".join(xy(px, py) for px, py in pts)}" fill="none" stroke="{colour}"/>')
            out.extend(f'<circle cx="{xy(px, py).split(",")[0]}" cy="{xy(px, py).split(",")[1]}" r="2.5" '
                       f'fill="{colour}"/>' for px, py in pts)
        legend.append(f'<rect x="{left + 4}" y="{21 + 14 * i}" width="10" height="3" fill="{colour}"/>'
                      f'<text x="{left + 18}" y="{25 + 14 * i}">{_e(name)}</text>')
    out.extend(legend)
    out.append("</svg>")
    return "".join(out)


def _bins_table(cal: Any) -> str:
    after = cal.cv_after if cal.cv_after is not None else cal.after
    n = max(len(cal.before.bins), len(after.bins))
    rows = []
    for i in range(n):
        row: List[Any] = [i]
        for m in (cal.before, after):
            b = m.bins[i] if i < len(m.bins) else None
            row += ([b.count, f"{b.mean_p:.4f}", f"{b.observed:.4f}"] if b is not None else ["", "", ""])
        rows.append(row)
    return ("<details><summary>reliability bins (counts)</summary>" + _table(
        ["bin", "voxels before", "mean p before", "observed before", "voxels after", "mean p after",
         "observed after"], rows, 1) + "</details>")


def _calibration_section(result: Any) -> List[str]:
    cals = [(s, tu.calibration) for s, tu in result.structures.items() if getattr(tu, "calibration", None) is not None]
    if not cals:
        return []
    margin = cals[0][1].margin_mm
    parts = ["<h2>Calibration</h2>",
             f'<p class="small">Voxels within {margin:g} mm of the reference or with p &ge; 0.01 (probabilities '
             "clipped to [1e-6, 1 - 1e-6]). Temperature scaling p' = sigmoid(logit(p) / T), T minimising the "
             "NLL; the held-out numbers pool every case at the temperature fitted on the other folds (the "
             "folds of the thresholds). Reliability: equal-mass bins, counts beside the points. The optimum "
             "threshold t of the maps is t' = sigmoid(logit(t) / T) on the calibrated maps; as 0.5 stays 0.5, it moves "
             "toward 0.5 only when T &gt; 1 and never across it (a map biased low needs a shift of the logit, "
             "which a temperature is not).</p>"]
    table = []
    for s, c in cals:
        r = c.row()
        table.append([s, r["n_voxels"], f"{c.temperature:.3g}" + (" (bound)" if r["temperature_at_bound"] else ""),
                      r["fold_temperatures"], fmt_num(r["cv_nll_before"]), fmt_num(r["cv_nll_after"]),
                      fmt_num(r["cv_ece_before"]), fmt_num(r["cv_ece_after"]), fmt_num(r["cv_brier_before"]),
                      fmt_num(r["cv_brier_after"]), f"{c.t_opt:.2f}", f"{c.t_opt_calibrated:.3f}"])
    parts.append(_table(["structure", "voxels", "T", "fold T", "NLL before", "NLL after (held out)", "ECE before",
                         "ECE after (held out)", "Brier before", "Brier after (held out)", "t_opt",
                         "t_opt on calibrated maps"], table))
    for s, c in cals:
        parts.append(f'<div>{figure_reliability(c, s)}</div>')
        parts.append(_bins_table(c))
    return parts


def render_tune_html(result: Any, rows: Sequence[Dict[str, Any]]) -> str:
    """The whole page as a string (self-contained). ``result``: a ``tune.TuneResult``; ``rows``: its
    ``tune.summary_rows`` (passed in, so that this module does not import ``tune``, which imports it)."""
    m = result.metric
    title = "Threshold tuning on a cohort"
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>",
             f'<p class="small">{len(result.cases)} cases, metric {_e(m)}, '
             f"{len(result.structures)} structure(s). Thresholds are chosen on all cases; the held-out "
             "estimate is a cross-validation: cases sorted by name, case i in fold i mod K, each fold's "
             "threshold tuned on the other folds.</p>"]
    if result.problems:
        parts.append('<div class="warn"><b>Problems</b> (left out, the rest went on):<ul>' + "".join(
            f"<li>{_e(line)}</li>" for line in result.problem_lines()) + "</ul></div>")
    flagged = [r["structure"] for r in rows if r["ci_holds_zero"]]
    parts.append("<h2>Headline</h2><ul>")
    for r in rows:
        if r["cv_gain"] is None:
            parts.append(f"<li><b>{_e(r['structure'])}</b>: t = {r['t_opt']:.2f}; too few cases to cross-validate.</li>")
            continue
        verdict = ("the 95 % CI holds 0: no evidence that it beats 0.5 on unseen cases" if r["ci_holds_zero"]
                   else "better than 0.5 on held-out cases" if r["cv_gain"] > 0 else "worse than 0.5 on held-out cases")
        parts.append(f"<li><b>{_e(r['structure'])}</b>: t = {r['t_opt']:.2f}; held-out {_e(m)} "
                     f"{fmt_num(r[f'cv_{m}_at_tuned'])} vs {fmt_num(r[f'cv_{m}_at_0.5'])} at 0.5, gain "
                     f"{fmt_num(r['cv_gain'])} (95 % CI {fmt_num(r['cv_gain_ci_low'])} to "
                     f"{fmt_num(r['cv_gain_ci_high'])}): {_e(verdict)}.</li>")
    parts.append("</ul>")
    if flagged:
        parts.append(f'<p class="warn">Gain CI holds 0 for: {_e(", ".join(flagged))}.</p>')
    header = ["structure", "cases", "prominence", "t_opt", f"{m} at t_opt", f"{m} at 0.5", "loss at 0.5",
              "fold thresholds", f"CV {m} at 0.5", f"CV {m} tuned", "CV gain", "95 % CI"]
    table: List[list] = []
    for r in rows:
        table.append([r["structure"], r["n_cases"], fmt_num(r["prominence"], 5), f"{r['t_opt']:.2f}",
                      fmt_num(r[f"{m}_at_opt"]), fmt_num(r[f"{m}_at_0.5"]), fmt_pct(r["loss_at_0.5"]),
                      r["fold_thresholds"], fmt_num(r[f"cv_{m}_at_0.5"]), fmt_num(r[f"cv_{m}_at_tuned"]),
                      fmt_num(r["cv_gain"]),
                      "n/a" if r["cv_gain_ci_low"] is None else
                      f"{fmt_num(r['cv_gain_ci_low'])} to {fmt_num(r['cv_gain_ci_high'])}"
                      + (" (holds 0)" if r["ci_holds_zero"] else "")])
    parts.append(_table(header, table))
    parts.append(f'<p class="small">Prominence (Eq. 4) from {_e(result.prominence_source)}. Dice is pooled over '
                 "voxels and cases (Eq. 1); other metrics are means of the per-case values. Loss at 0.5 is "
                 "relative to the optimum on all cases (in-sample); the CV columns are held out.</p>")
    parts.append("<h2>Per structure</h2>")
    for s, tu in result.structures.items():
        parts.append(f'<h3 id="s-{_e(s)}">{_e(s)}</h3>')
        parts.append(_img(figure_structure(tu, m), f"{s}: {m} vs threshold"))
        if tu.cv is not None:
            folds = {}
            for c, f in zip(tu.cases, tu.cv.folds):
                folds.setdefault(f, []).append(c)
            parts.append(_table(["fold", "threshold (tuned on the other folds)", "cases"],
                                [[k, f"{tu.cv.fold_thresholds[k]:.2f}", ", ".join(v)] for k, v in sorted(folds.items())], 1))
    parts.extend(_calibration_section(result))
    parts.append("<h2>Inputs</h2>")
    parts.append(f"<pre>{_e(json.dumps(result.inputs, indent=2, sort_keys=True))}</pre>")
    parts.append('<p class="small">Tables behind this page: summary.csv, thresholds.json, '
                 "sweeps/&lt;structure&gt;/sweep.csv" + (", calibration.csv, sweeps/&lt;structure&gt;/reliability.csv"
                                                         if any(getattr(tu, "calibration", None) is not None
                                                                for tu in result.structures.values()) else "")
                 + ".</p></body></html>")
    return "\n".join(parts) + "\n"
