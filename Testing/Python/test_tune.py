"""Cohort tuning (AutoSegSensitivity.tune) against brute-force loops, on maps whose optima lie far from 0.5."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import write_volume
from AutoSegSensitivity.io.images import read_volume
from AutoSegSensitivity.sweep import sweep_thresholds
from AutoSegSensitivity.tune import (aggregate_curve, cross_validate, fold_assignment, read_thresholds,
                                     read_thresholds_file, structure_counts, thresholds_for, tune_cohort,
                                     write_outputs, write_thresholds)
from AutoSegSensitivity.volume import Volume

from tune_cohort import (SHAPE, TH, brute_counts, brute_cv, brute_dice, brute_optimum, case_arrays, close,
                         write_cohort)

N_CASES = 7
N_BOOT = 300


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    probs, refs = write_cohort(root, N_CASES)
    arrays = [case_arrays(i) for i in range(N_CASES)]
    return probs, refs, arrays


def test_counts_match_brute_force_and_sweep():
    maps, masks = case_arrays(3)
    for s in ("Low", "High"):
        c = structure_counts(maps[s], masks[s], (2.0, 0.9, 1.2), TH)
        ref = brute_counts([maps[s]], [masks[s]])[0]
        np.testing.assert_array_equal(c.tp, ref[:, 0])
        np.testing.assert_array_equal(c.npred, ref[:, 1])
        assert c.nref == ref[0, 2] and c.nvox == maps[s].size and c.curve is None
    # a surface metric adds the case's curve, equal to sweep_thresholds on the same case
    c = structure_counts(maps["Low"], masks["Low"], (2.0, 0.9, 1.2), TH, metric="hd95")
    res = sweep_thresholds([maps["Low"]], [masks["Low"]], [(2.0, 0.9, 1.2)], TH, metrics=("hd95",), device="numpy")
    np.testing.assert_array_equal(c.curve, res.per_case["case000"]["hd95"])


def test_fold_assignment_is_i_mod_k():
    assert fold_assignment(7, 5).tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert fold_assignment(3, 5).tolist() == [0, 1, 2]  # K = min(folds, cases)
    with pytest.raises(InputError, match="folds"):
        fold_assignment(5, 1)


@pytest.mark.parametrize("folds", [3, 5, 10])
def test_cross_validation_matches_brute_force(folds):
    cases = [case_arrays(i) for i in range(N_CASES)]
    for s in ("Low", "High"):
        maps = [c[0][s] for c in cases]
        masks = [c[1][s] for c in cases]
        counts = [structure_counts(p, r, (1, 1, 1), TH) for p, r in zip(maps, masks)]
        bc = brute_counts(maps, masks)
        pooled = [brute_dice(bc[:, j].sum(axis=0)) for j in range(len(TH))]
        np.testing.assert_allclose(aggregate_curve(counts), pooled, rtol=0, atol=1e-14)
        cv = cross_validate(counts, TH, "dice", folds, seed=7, n_boot=N_BOOT)
        fold, fold_t, tuned, at05, gain, lo, hi = brute_cv(bc, folds, 7, N_BOOT)
        assert cv.folds == fold and cv.fold_thresholds == fold_t
        assert close(cv.at_tuned, tuned) and close(cv.at_05, at05) and close(cv.gain, gain)
        assert close(cv.ci_low, lo, 1e-9) and close(cv.ci_high, hi, 1e-9)
        assert cv.ci_low <= cv.gain <= cv.ci_high
        # the maps are built so that tuning far from 0.5 helps on held-out cases
        assert all(abs(t - 0.5) > 0.15 for t in cv.fold_thresholds)
        assert cv.gain > 0 and not cv.ci_holds_zero


def test_bootstrap_is_seeded():
    cases = [case_arrays(i) for i in range(4)]
    counts = [structure_counts(c[0]["Low"], c[1]["Low"], (1, 1, 1), TH) for c in cases]
    a = cross_validate(counts, TH, seed=3, n_boot=200)
    b = cross_validate(counts, TH, seed=3, n_boot=200)
    c = cross_validate(counts, TH, seed=4, n_boot=200)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)


def test_distance_metric_uses_the_mean_of_case_curves():
    cases = [case_arrays(i) for i in range(4)]
    counts = [structure_counts(c[0]["High"], c[1]["High"], (2.0, 0.9, 1.2), TH, metric="msd") for c in cases]
    curves = np.array([c.curve for c in counts])
    agg = aggregate_curve(counts, "msd")
    for j in (0, 30, 50, 80, 100):
        vals = [v for v in curves[:, j] if np.isfinite(v)]
        assert close(agg[j], sum(vals) / len(vals) if vals else np.inf)
    cv = cross_validate(counts, TH, "msd", folds=2, seed=0, n_boot=100)
    j05 = 50
    for k, t in enumerate(cv.fold_thresholds):
        train = [i for i in range(4) if i % 2 != k]
        m = _finite_mean_loop(curves[train])
        best = min(m)
        cand = [j for j, v in enumerate(m) if v <= best + 1e-12 * abs(best)]
        assert t == TH[min(cand, key=lambda j: (round(abs(TH[j] - 0.5), 9), TH[j]))]
    held = [curves[i, int(round(cv.fold_thresholds[i % 2] * 100))] for i in range(4)]
    assert close(cv.at_tuned, float(np.mean(held))) and close(cv.at_05, float(np.mean(curves[:, j05])))
    assert close(cv.gain, cv.at_05 - cv.at_tuned)  # lower is better: positive gain = smaller distance


def _finite_mean_loop(stack):
    out = []
    for j in range(stack.shape[1]):
        vals = [v for v in stack[:, j] if np.isfinite(v)]
        out.append(sum(vals) / len(vals) if vals else np.inf)
    return out


def test_tune_cohort_on_files_matches_brute_force(cohort, tmp_path):
    probs, refs, arrays = cohort
    result = tune_cohort(probs, refs, folds=5, seed=11, n_boot=N_BOOT)
    assert result.cases == [f"case{i:02d}" for i in range(N_CASES)] and not result.problems
    assert list(result.structures) == ["High", "Low"]  # the order of the prob_ files
    for s, expect_side in (("Low", -1), ("High", 1)):
        bc = brute_counts([a[0][s] for a in arrays], [a[1][s] for a in arrays])
        pooled = [brute_dice(bc[:, j].sum(axis=0)) for j in range(len(TH))]
        j = brute_optimum(pooled)
        tu = result.structures[s]
        assert tu.t_opt == TH[j] and close(tu.value_at_opt, pooled[j]) and close(tu.value_at_05, pooled[50])
        assert np.sign(tu.t_opt - 0.5) == expect_side and abs(tu.t_opt - 0.5) > 0.2
        fold, fold_t, tuned, at05, gain, lo, hi = brute_cv(bc, 5, 11, N_BOOT)
        assert tu.cv.fold_thresholds == fold_t and close(tu.cv.gain, gain) and close(tu.cv.ci_low, lo, 1e-9)
        vox = sum(a[1][s].sum() for a in arrays) / (N_CASES * np.prod(SHAPE))
        assert close(tu.prominence, vox)
    out = write_outputs(result, tmp_path / "out")
    doc = json.loads((out / "thresholds.json").read_text())
    assert doc["metric"] == "dice" and doc["structures"]["Low"]["threshold"] == result.structures["Low"].t_opt
    assert doc["structures"]["Low"]["fold_thresholds"] == result.structures["Low"].cv.fold_thresholds
    assert doc["inputs"]["prob_dir"] == str(probs) and "training" not in doc["prominence_source"]
    rows = list(csv.DictReader(open(out / "summary.csv")))
    need = ["structure", "n_cases", "prominence", "t_opt", "dice_at_opt", "dice_at_0.5", "loss_at_0.5",
            "cv_dice_at_0.5", "cv_dice_at_tuned", "cv_gain", "cv_gain_ci_low", "cv_gain_ci_high"]
    assert all(c in rows[0] for c in need)
    low = next(r for r in rows if r["structure"] == "Low")
    assert float(low["cv_gain"]) == pytest.approx(result.structures["Low"].cv.gain, rel=1e-12)
    assert "Threshold tuning on a cohort" in (out / "report.html").read_text()


def test_sweep_csv_is_what_autosegsens_sweep_writes(cohort, tmp_path):
    from AutoSegSensitivity.cli import main

    probs, refs, _ = cohort
    write_outputs(tune_cohort(probs, refs, structures=["Low"], n_boot=50), tmp_path / "t")
    args = ["sweep", "--segment", "Low", "--metrics", "dice", "--out", str(tmp_path / "s")]
    for i in range(N_CASES):
        args += ["--prob", str(probs / f"case{i:02d}" / "prob_Low.nrrd"),
                 "--ref", str(refs / f"case{i:02d}" / "segmentation.seg.nrrd")]
    assert main(args) == 0
    assert (tmp_path / "t/sweeps/Low/sweep.csv").read_text() == (tmp_path / "s/sweep.csv").read_text()


def test_jobs_give_the_same_result(cohort):
    probs, refs, _ = cohort
    a = tune_cohort(probs, refs, structures=["High"], n_boot=50)
    b = tune_cohort(probs, refs, structures=["High"], n_boot=50, jobs=2)
    ta, tb = a.structures["High"], b.structures["High"]
    assert ta.t_opt == tb.t_opt and ta.cv.fold_thresholds == tb.cv.fold_thresholds and ta.cv.gain == tb.cv.gain


def test_train_dir_prominence(cohort, tmp_path):
    probs, refs, arrays = cohort
    train = tmp_path / "train"
    write_cohort(train, 2)  # refs of cases 0 and 1 only
    res = tune_cohort(probs, refs, structures=["Low"], train_dir=train / "refs", n_boot=20)
    expect = sum(arrays[i][1]["Low"].sum() for i in range(2)) / (2 * np.prod(SHAPE))
    assert close(res.structures["Low"].prominence, expect)
    assert "training references" in res.prominence_source


def test_bad_cases_are_listed_and_the_rest_goes_on(tmp_path):
    probs, refs = write_cohort(tmp_path, 5)
    p = read_volume(probs / "case01/prob_Low.nrrd")
    arr = p.array.copy()
    arr[0, 0, 0] = np.nan
    write_volume(p.with_array(arr), probs / "case01/prob_Low.nrrd")
    write_volume(p.with_array(p.array * 2 + 0.5), probs / "case02/prob_High.nrrd")  # out of [0, 1]
    write_volume(Volume(p.array[:, :-1], p.spacing, p.origin), probs / "case03/prob_Low.nrrd")  # another grid
    (probs / "case04/prob_High.nrrd").unlink()
    (probs / "extra").mkdir()
    res = tune_cohort(probs, refs, structures=["Low", "High", "Nope"], n_boot=20)
    lines = res.problem_lines()
    assert any(line.startswith("case01: Low:") and "prob_Low.nrrd" in line and "NaN" in line for line in lines)
    assert any(line.startswith("case02: High:") and "[0, 1]" in line for line in lines)
    assert any(line.startswith("case03: Low:") and "grid" in line for line in lines)
    assert any(line.startswith("case04: High:") and "prob_High.nrrd" in line for line in lines)
    assert any(line.startswith("extra:") for line in lines)
    assert any(line.startswith("Nope:") for line in lines)
    assert res.structures["Low"].cases == ["case00", "case02", "case04"]
    assert res.structures["High"].cases == ["case00", "case01", "case03"]
    # without --structures the structures come from the files found: a case lacking one map is listed too
    res = tune_cohort(probs, refs, n_boot=20)
    assert res.structures["High"].cases == ["case00", "case01", "case03"]
    assert any(line.startswith("case04: High:") and "tuned without this case" in line for line in res.problem_lines())


def test_bad_settings_fail_before_reading(cohort):
    probs, refs, _ = cohort
    for kwargs, field in (({"folds": 1}, "folds"), ({"n_boot": 0}, "bootstrap"), ({"jobs": 0}, "jobs"),
                          ({"metric": "volume"}, "metric"), ({"fmt": "png"}, "format")):
        with pytest.raises(InputError, match=field):
            tune_cohort(probs, refs, **kwargs)


def test_thresholds_json_round_trip_and_errors(tmp_path):
    path = write_thresholds(tmp_path / "t.json", {"Parotid L": 0.31, "Cord": {"threshold": 0.7, "n_cases": 4}})
    assert read_thresholds(path) == {"Parotid L": 0.31, "Cord": 0.7}
    assert read_thresholds_file(path)["structures"]["Cord"]["n_cases"] == 4
    assert thresholds_for(path, ["Parotid_L"]) == {"Parotid_L": 0.31}  # the file-name form matches too
    with pytest.raises(InputError, match="structures.*none for \\['Brain'\\]"):
        thresholds_for(path, ["Cord", "Brain"])
    with pytest.raises(InputError, match="threshold"):
        write_thresholds(tmp_path / "x.json", {"A": 1.5})
    bad = {
        "{not json": "JSON",
        "[1, 2]": "document",
        '{"structures": {}}': "structures",
        '{"structures": {"A": 0.3}}': "structures.A",
        '{"structures": {"A": {"threshold": "0.3"}}}': "structures.A.threshold",
        '{"structures": {"A": {"threshold": NaN}}}': "structures.A.threshold",
        '{"format": "other", "structures": {"A": {"threshold": 0.3}}}': "format",
    }
    for text, field in bad.items():
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InputError) as info:
            read_thresholds(tmp_path / "bad.json")
        assert str(info.value).startswith(f"{tmp_path / 'bad.json'}: {field}"), str(info.value)


def test_threshold_logic_saves_and_loads_thresholds_json_on_real_mrml(cohort, tmp_path):
    import slicer  # the slicer-core wheel: real MRML, no application

    from AutoSegSensitivity.mrml import nodes
    from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

    probs, refs, _ = cohort
    write_outputs(tune_cohort(probs, refs, structures=["Low"], n_boot=20), tmp_path / "tuned")
    logic = ThresholdTuningLogic(slicer.vtkMRMLScene())
    loaded = logic.load_thresholds(tmp_path / "tuned" / "thresholds.json")
    assert loaded == read_thresholds(tmp_path / "tuned" / "thresholds.json") and loaded["Low"] < 0.35
    vol = read_volume(probs / "case00" / "prob_Low.nrrd")
    node = nodes.volume_to_node(vol, logic.scene, "case00 Low")
    seg_node = logic.apply_threshold(node, loaded["Low"], segment="Low")
    mask = nodes.segmentation_from_node(seg_node, vol).mask("Low")
    np.testing.assert_array_equal(mask, vol.array >= np.float32(loaded["Low"]))
    saved = logic.save_thresholds(tmp_path / "mine.json", {"Low": 0.23, "High": 0.81})
    assert read_thresholds(saved) == {"Low": 0.23, "High": 0.81}
    assert read_thresholds_file(saved)["source"] == "AutoSegThreshold"
    with pytest.raises(InputError, match="structures.High.threshold"):
        logic.save_thresholds(tmp_path / "bad.json", {"High": -0.1})
    assert not (tmp_path / "bad.json").exists()


def test_nsd_metric_is_the_mean_of_case_surface_dice_and_higher_is_better():
    """`tune --metric nsd`: each case's curve is the surface Dice at the tolerance (checked against
    metrics.surface_dice by brute force at some thresholds), the cohort value is their mean, and the fold
    thresholds maximise it (higher is better)."""
    from AutoSegSensitivity.metrics import surface_dice

    cases = [case_arrays(i) for i in range(4)]
    sp = (2.0, 0.9, 1.2)
    counts = [structure_counts(c[0]["Low"], c[1]["Low"], sp, TH, metric="nsd", nsd_tolerance=1.5) for c in cases]
    for c, k in zip(cases[:2], counts[:2]):
        for j in (20, 50, 80):
            assert abs(k.curve[j] - surface_dice(c[0]["Low"] >= np.float32(TH[j]), c[1]["Low"], sp, 1.5)) < 1e-9
    curves = np.array([k.curve for k in counts])
    cv = cross_validate(counts, TH, "nsd", folds=2, seed=0, n_boot=100)
    for k, t in enumerate(cv.fold_thresholds):
        m = _finite_mean_loop(curves[[i for i in range(4) if i % 2 != k]])
        best = max(m)
        cand = [j for j, v in enumerate(m) if v >= best - 1e-12]
        assert t == TH[min(cand, key=lambda j: (round(abs(TH[j] - 0.5), 9), TH[j]))]
    assert close(cv.gain, cv.at_tuned - cv.at_05)
    with pytest.raises(InputError):
        structure_counts(cases[0][0]["Low"], cases[0][1]["Low"], sp, TH, metric="nsd", nsd_tolerance=-1.0)


def test_threshold_logic_adds_one_structure_keeping_the_others(tmp_path):
    """AutoSegThreshold's 'Save to file': one structure's threshold goes into a thresholds.json, the other
    structures of an existing file are kept, and a file that is not a thresholds.json is left untouched."""
    from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

    path = tmp_path / "thresholds.json"
    ThresholdTuningLogic.add_threshold(path, "Brain", 0.42)
    assert read_thresholds(path) == {"Brain": 0.42}
    ThresholdTuningLogic.add_threshold(path, "Lens_L", 0.11)
    ThresholdTuningLogic.add_threshold(path, "Brain", 0.47)
    assert read_thresholds(path) == {"Brain": 0.47, "Lens_L": 0.11}
    # a file of tune --calibration keeps its temperatures (they do not depend on the threshold)
    write_thresholds(path, {"Brain": {"threshold": 0.4, "temperature": 1.7}, "Lens_L": {"threshold": 0.1, "temperature": 0.6}})
    ThresholdTuningLogic.add_threshold(path, "Brain", 0.45)
    assert read_thresholds(path) == {"Brain": 0.45, "Lens_L": 0.1}
    assert {s: e["temperature"] for s, e in read_thresholds_file(path)["structures"].items()} == {"Brain": 1.7, "Lens_L": 0.6}
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(InputError):
        ThresholdTuningLogic.add_threshold(other, "Brain", 0.5)
    assert other.read_text() == '{"hello": 1}'
