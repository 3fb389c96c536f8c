"""The review page's chart: Dice and NSD against the threshold, for the opened case and for the cohort, with
0.5, the tuned threshold and the slider marked. A PNG drawn with matplotlib's object API (no pyplot, no
global state), returned as bytes or as a ``data:`` URI for an ``<img>``."""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Optional

import numpy as np


def chart_png(curves: Mapping[str, Any], structure: str, case: Optional[str], tuned: Optional[float],
              slider: Optional[float], width_px: int = 520, height_px: int = 300) -> bytes:
    """PNG of ``curves`` (:meth:`AutoSegSensitivity.web.cohort.Cohort.curves`): solid lines the cohort
    (pooled Dice, mean NSD), dashed the case; vertical lines at 0.5 (grey), the tuned threshold (red) and
    the slider (blue). Thresholds on x in [0, 1], values on y in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    grid, nsd_grid = np.asarray(curves["grid"]), np.asarray(curves["nsd_grid"])
    drawn = False
    for key, x, color, style, label in (
            ("cohort_dice", grid, "#1f5fbf", "-", "Dice, cohort (pooled)"),
            ("cohort_nsd", nsd_grid, "#7b3fa0", "-", "NSD, cohort (mean)"),
            ("case_dice", grid, "#1f5fbf", "--", f"Dice, {case}"),
            ("case_nsd", nsd_grid, "#7b3fa0", "--", f"NSD, {case}")):
        y = curves.get(key)
        if y is not None:
            ax.plot(x, np.asarray(y, dtype=float), style, color=color, lw=1.6, label=label)
            drawn = True
    ax.axvline(0.5, color="#777777", lw=1, ls=":", label="0.5")
    if tuned is not None:
        ax.axvline(tuned, color="#d62728", lw=1.3, label=f"tuned {tuned:.2f}")
    if slider is not None:
        ax.axvline(slider, color="#17becf", lw=2, alpha=0.8, label=f"slider {slider:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold (foreground where p >= t)")
    ax.set_ylabel("Dice / NSD")
    ax.set_title(f"{structure}: Dice and NSD vs threshold" + ("" if drawn else " (computing...)"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower center", ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` of a PNG."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


__all__ = ["chart_png", "data_uri"]
