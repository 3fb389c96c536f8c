"""`tune --calibration` on files, `apply --calibrated`, the thresholds.json readers, and sharded tune + merge
(including the SLURM array + merge scripts)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from AutoSegSensitivity.calibration import calibrate_array, calibrate_structure, case_calibration
from AutoSegSensitivity.cli import main
from AutoSegSensitivity.io import read_segmentation, read_volume
from AutoSegSensitivity.tune import (fold_assignment, read_thresholds, read_thresholds_file, temperatures_for,
                                     thresholds_for, write_thresholds)
from AutoSegSensitivity.tune_shards import load_counts

from tune_cohort import miscalibrated_arrays, write_cohort, write_miscalibrated_cohort

SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"
SPACING_ZYX = (2.0, 0.9, 1.3)


@pytest.fixture(scope="module")
def miscal(tmp_path_factory):
    root = tmp_path_factory.mktemp("miscal")
    probs, refs = write_miscalibrated_cohort(root, 6)
    out = root / "tuned"
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), "--folds", "3",
                 "--bootstrap", "50", "--calibration"]) == 0
    return root, probs, refs, out


def test_tune_calibration_recovers_known_temperatures(miscal, capsys):
    root, probs, refs, out = miscal
    rows = {r["structure"]: r for r in csv.DictReader(open(out / "calibration.csv"))}
    for s, t0 in (("Under", 0.5), ("Over", 2.0)):
        r = rows[s]
        assert abs(float(r["temperature"]) / t0 - 1) < 0.05
        assert float(r["cv_nll_after"]) < float(r["cv_nll_before"]) and float(r["cv_ece_after"]) < float(r["cv_ece_before"])
        assert r["temperature_at_bound"] == "False" and len(r["fold_temperatures"].split()) == 3
    # the same numbers from the arrays directly (the CLI's single pass == the per-case histograms)
    cases = [miscalibrated_arrays(10 * i, 0.5, (12, 32, 30)) for i in range(6)]
    counts = [case_calibration(p, ref, SPACING_ZYX, 10.0) for p, ref in cases]
    doc = json.loads((out / "thresholds.json").read_text())
    under = doc["structures"]["Under"]
    cal = calibrate_structure(counts, fold_assignment(6, 3), under["threshold"], under["fold_thresholds"])
    assert float(rows["Under"]["temperature"]) == pytest.approx(cal.temperature, rel=1e-12)
    assert float(rows["Under"]["cv_ece_after"]) == pytest.approx(cal.cv_after.ece, rel=1e-9)
    assert under["temperature"] == pytest.approx(cal.temperature, rel=1e-12)
    assert under["threshold_calibrated"] == pytest.approx(float(rows["Under"]["t_opt_calibrated"]))
    rel = list(csv.DictReader(open(out / "sweeps" / "Under" / "reliability.csv")))
    assert {r["which"] for r in rel} == {"before", "after_cv"}
    assert sum(int(r["count"]) for r in rel if r["which"] == "before") == int(rows["Under"]["n_voxels"])
    html = (out / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "aria-label=\"Under: reliability\"" in html and html.count("<svg") == 2
    assert doc["inputs"]["calibration"] == {"margin_mm": 10.0}


def test_old_readers_ignore_the_temperature(miscal):
    """read_thresholds / thresholds_for (apply, predict) and the Slicer module's reader take the new file; a
    file without temperatures still reads and is refused only where a temperature is needed."""
    from AutoSegSensitivity.mrml.threshold_logic import ThresholdTuningLogic

    root, probs, refs, out = miscal
    table = read_thresholds(out / "thresholds.json")
    assert set(table) == {"Under", "Over"} and all(0 <= t <= 1 for t in table.values())
    assert thresholds_for(out / "thresholds.json", ["Over"]) == {"Over": table["Over"]}
    assert ThresholdTuningLogic.load_thresholds(out / "thresholds.json") == table
    old = write_thresholds(root / "old.json", {"Under": 0.3})
    assert read_thresholds_file(old)["structures"]["Under"] == {"threshold": 0.3}
    with pytest.raises(Exception) as err:
        temperatures_for(old, ["Under"])
    assert "structures.Under.temperature" in str(err.value) and str(old) in str(err.value)


def test_apply_calibrated_writes_calibrated_maps_and_the_same_segmentation(miscal, tmp_path, capsys):
    root, probs, refs, out = miscal
    segs = tmp_path / "segs"
    assert main(["apply", "--thresholds", str(out / "thresholds.json"), "--prob-dir", str(probs), "--out", str(segs),
                 "--calibrated"]) == 0
    doc = json.loads((out / "thresholds.json").read_text())["structures"]
    moved = read_thresholds(segs / "thresholds_calibrated.json")
    for case in ("case00", "case03"):
        seg = read_segmentation(segs / case / "segmentation.seg.nrrd")
        for s in ("Under", "Over"):
            p = read_volume(probs / case / f"prob_{s}.nrrd")
            q = read_volume(segs / case / f"prob_{s}.nrrd")
            assert q.same_grid(p)
            np.testing.assert_array_equal(q.array, calibrate_array(p.array, doc[s]["temperature"]))
            np.testing.assert_array_equal(seg.mask(s), p.array >= np.float32(doc[s]["threshold"]))
            differ = (q.array >= np.float32(moved[s])) != seg.mask(s)  # t' on the calibrated maps
            assert np.all(np.abs(q.array[differ] - moved[s]) < 1e-6)
    # a thresholds.json without temperatures: one line naming the file and the field, nothing written
    old = write_thresholds(tmp_path / "old.json", {"Under": 0.3, "Over": 0.6})
    capsys.readouterr()
    assert main(["apply", "--thresholds", str(old), "--prob-dir", str(probs), "--out", str(tmp_path / "x"),
                 "--calibrated"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "temperature" in err[0] and str(old) in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()


def _outputs(folder: Path) -> dict:
    """Every output file's bytes; thresholds.json without its creation time; not events.jsonl (the progress
    stream of a whole run, which the Slicer cohort section reads while it runs; a merge has no cases to read)."""
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "events.jsonl":
            data = p.read_bytes()
            if p.name == "thresholds.json":
                doc = json.loads(data)
                doc.pop("created")
                data = json.dumps(doc, sort_keys=True).encode()
            files[str(p.relative_to(folder))] = data
    return files


@pytest.mark.parametrize("extra", [["--calibration"], ["--metric", "msd", "--structures", "Low"]])
def test_sharded_tune_and_merge_equal_one_run(tmp_path, capsys, extra):
    probs, refs = write_cohort(tmp_path, 7)
    (probs / "case03" / "prob_Low.nrrd").unlink()  # problems found while counting and before it are kept
    (probs / "case99").mkdir()
    common = ["--prob-dir", str(probs), "--ref-dir", str(refs), "--folds", "3", "--bootstrap", "40", *extra]
    assert main(["tune", *common, "--out", str(tmp_path / "one")]) == 0
    for i in range(3):
        jobs = ["--jobs", "2"] if i == 0 else []  # worker processes count the same
        assert main(["tune", *common, *jobs, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"]) == 0
        assert [p.name for p in (tmp_path / f"s{i}").iterdir()] == [f"counts-{i}-of-3.npz"]
    meta, arrays = load_counts(tmp_path / "s1" / "counts-1-of-3.npz")  # allow_pickle=False
    assert meta["cases"] == ["case01", "case04"] and all(a.dtype != object for a in arrays.values())
    assert main(["tune", "--merge", str(tmp_path / "s2"), str(tmp_path / "s0"), str(tmp_path / "s1"),
                 "--out", str(tmp_path / "merged")]) == 0
    one, merged = _outputs(tmp_path / "one"), _outputs(tmp_path / "merged")
    assert sorted(one) == sorted(merged) and ("calibration.csv" in one) == ("--calibration" in extra)
    problems = json.loads(one["thresholds.json"])["problems"]
    assert any("case99" in p for p in problems) and any("case03" in p and "Low" in p for p in problems)
    for name in one:
        assert one[name] == merged[name], name


def test_merge_refuses_shards_that_do_not_belong_together(tmp_path, capsys):
    probs, refs = write_cohort(tmp_path, 5)
    common = ["--prob-dir", str(probs), "--ref-dir", str(refs), "--bootstrap", "20"]
    for i in range(3):
        assert main(["tune", *common, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/3"]) == 0
    assert main(["tune", *common, "--out", str(tmp_path / "two"), "--shard", "0/2"]) == 0
    assert main(["tune", *common, "--out", str(tmp_path / "nsd"), "--shard", "1/3", "--metric", "nsd"]) == 0
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "counts-2-of-3.npz").write_bytes(b"not a zip")
    capsys.readouterr()
    cases = {
        "missing 2/3": [tmp_path / "s0", tmp_path / "s1"],
        "twice": [tmp_path / "s0", tmp_path / "s1", tmp_path / "s1", tmp_path / "s2"],
        "shard of 3": [tmp_path / "s0", tmp_path / "two"],
        "inputs.metric": [tmp_path / "s0", tmp_path / "nsd", tmp_path / "s2"],
        "counts-I-of-N.npz of autosegsens tune --shard": [tmp_path / "s0", tmp_path / "s1", tmp_path / "junk"],
    }
    for i, (expected, sources) in enumerate(cases.items()):
        assert main(["tune", "--merge", *map(str, sources), "--out", str(tmp_path / f"m{i}")]) == 2, expected
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], (expected, err)
        assert not (tmp_path / f"m{i}").exists()
    assert main(["tune", "--merge", str(tmp_path / "s0"), "--prob-dir", str(probs), "--out", str(tmp_path / "z")]) == 2
    assert "--merge" in capsys.readouterr().err
    assert main(["tune", "--out", str(tmp_path / "z")]) == 2
    assert "--prob-dir" in capsys.readouterr().err
    assert main(["tune", *common, "--out", str(tmp_path / "z"), "--shard", "3/3"]) == 2
    assert "I/N" in capsys.readouterr().err


def test_slurm_tune_array_and_merge_scripts(tmp_path):
    """examples/slurm/tune_array.sbatch run as tasks 0 and 1 of 2, then tune_merge.sbatch: the same outputs
    as one tune run; without the array variables the array script refuses to start."""
    probs, refs = write_cohort(tmp_path, 4)
    cmd = f"{sys.executable} -m AutoSegSensitivity"
    env = dict(os.environ, PROBS=str(probs), REFS=str(refs), SHARDS=str(tmp_path / "shards"), OUT=str(tmp_path / "tuned"),
               SLURM_ARRAY_TASK_COUNT="2", AUTOSEGSENS=cmd, EXTRA="--calibration --bootstrap 30 --folds 2")
    for i in ("0", "1"):
        proc = subprocess.run(["bash", str(SLURM / "tune_array.sbatch")], env=dict(env, SLURM_ARRAY_TASK_ID=i),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", str(SLURM / "tune_merge.sbatch")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(tmp_path / "one"),
                 "--calibration", "--bootstrap", "30", "--folds", "2"]) == 0
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "tuned")
    proc = subprocess.run(["bash", str(SLURM / "tune_array.sbatch")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "job array" in proc.stderr
