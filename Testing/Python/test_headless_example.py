"""examples/headless_slicer_study.py runs with plain Python on the slicer-core wheel (real MRML) in a tiny
configuration: the study on MRML nodes (thresholds chosen on validation, measured on test), its tables, the
report, and the tuned segmentations it saved."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from AutoSegSensitivity.io import read_segmentation

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "headless_slicer_study.py"


@pytest.fixture(scope="module")
def run_example(tmp_path_factory):
    out = tmp_path_factory.mktemp("headless") / "study"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run([sys.executable, str(SCRIPT), "--", "--out", str(out), "--cases", "4", "--shape", "8", "48",
                          "48", "--epochs", "1", "--samples-per-epoch", "8", "--width", "2", "--structures",
                          "Brain", "SpinalCord", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600, env=env)
    return res, out


def test_example_runs_on_mrml_nodes(run_example):
    res, out = run_example
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report:" in res.stdout
    made = json.loads((out / "scene_nodes.json").read_text())
    meta = json.loads((out / "study.json").read_text())
    val, test = meta["data"]["validation cases"], meta["data"]["test cases"]
    assert sorted(val + test + meta["data"]["training cases"]) == [f"case{i:03d}" for i in range(4)]
    # CT + reference for 4 cases, one probability map node per validation and test case, structure and loss
    assert len(made["volumes"]) == 4 + (len(val) + len(test)) * 2 * 2
    assert f"{val[0]} Brain bce" in made["volumes"] and f"{test[0]} Brain bce" in made["volumes"]
    assert f"{test[0]} bce tuned" in made["segmentations"] and f"{val[0]} bce tuned" not in made["segmentations"]
    # a table and a summary per loss, structure and role; a chart per loss, structure and role
    assert len(made["tables"]) == 2 * 2 * 2 * 2 and len(made["charts"]) == 2 * 2 * 2
    assert made["scene_node_count"][0] > len(made["volumes"]) + len(made["segmentations"])


def test_tuned_segmentation_is_the_test_map_at_the_validation_threshold(run_example):
    _, out = run_example
    meta = json.loads((out / "study.json").read_text())
    case = meta["data"]["test cases"][0]
    for key in ("bce", "bce_dice2d"):
        seg = read_segmentation(out / "tuned" / key / f"{case}.seg.nrrd")
        assert sorted(seg.names) == ["Brain", "SpinalCord"]
        summary = {r["structure"]: r for r in csv.DictReader((out / "summary.csv").open()) if r["loss"] == key}
        for s in ("Brain", "SpinalCord"):
            t = float(summary[s]["dice_threshold_chosen_on_validation"])
            val_rows = list(csv.DictReader((out / "sweeps" / key / s / "validation" / "sweep.csv").open()))
            best = max(float(r["dice"]) for r in val_rows)
            assert min((float(r["threshold"]) for r in val_rows if float(r["dice"]) >= best - 1e-12),
                       key=lambda x: (abs(x - 0.5), x)) == pytest.approx(t)
            # the probability the example put in the scene equals a fresh prediction's map only through the
            # sweep table: check the saved mask against the sweep's pooled Dice at t instead
            rows = list(csv.DictReader((out / "sweeps" / key / s / "test" / "sweep_per_case.csv").open()))
            dice_t = next(float(r["dice"]) for r in rows if r["case"] == f"{case} {s} {key}"
                          and abs(float(r["threshold"]) - t) < 1e-9)
            ref = read_segmentation(out / "data" / case / "segmentation.seg.nrrd")
            m, r_ = seg.mask(s), ref.mask(s)
            d = 2 * np.logical_and(m, r_).sum() / max(1, m.sum() + r_.sum()) if (m.sum() + r_.sum()) else 1.0
            assert d == pytest.approx(dice_t, abs=1e-12)


def test_example_report_and_bad_arguments(run_example, tmp_path):
    _, out = run_example
    page = (out / "report.html").read_text()
    assert "headless Slicer" in page and 'src="http' not in page and "Cases and their roles" in page
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not empty" in res.stderr
