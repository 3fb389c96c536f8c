"""`autosegsens tune`, `autosegsens apply` and `predict --thresholds` on real files written and read back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.io import read_segmentation, read_volume
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.tune import write_thresholds

from tune_cohort import write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_tune")
    probs, refs = write_cohort(root, 6)
    return root, probs, refs


def test_tune_then_apply_equals_p_ge_t(cohort, tmp_path, capsys):
    root, probs, refs = cohort
    out = tmp_path / "tuned"
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), "--folds", "3",
                 "--bootstrap", "200", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "Low: t=" in text and "held-out gain" in text
    doc = json.loads((out / "thresholds.json").read_text())
    t = {s: e["threshold"] for s, e in doc["structures"].items()}
    assert t["Low"] < 0.35 and t["High"] > 0.65
    assert len(doc["structures"]["Low"]["fold_thresholds"]) == 3
    rows = {r["structure"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert float(rows["High"]["t_opt"]) == t["High"]
    assert (out / "sweeps" / "High" / "sweep.csv").is_file() and (out / "report.html").is_file()
    # refuses to overwrite without --overwrite
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err

    segs = tmp_path / "segs"
    assert main(["apply", "--thresholds", str(out / "thresholds.json"), "--prob-dir", str(probs), "--out", str(segs)]) == 0
    for case in ("case00", "case05"):
        seg = read_segmentation(segs / case / "segmentation.seg.nrrd")
        assert sorted(seg.names) == ["High", "Low"]
        for s in ("Low", "High"):
            p = read_volume(probs / case / f"prob_{s}.nrrd")
            assert seg.geometry.same_grid(p)
            np.testing.assert_array_equal(seg.mask(s), p.array >= np.float32(t[s]))


def test_tune_metric_is_generic_and_bad_metric_is_one_line(cohort, tmp_path, capsys):
    root, probs, refs = cohort
    out = tmp_path / "hd95"
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), "--metric", "msd",
                 "--structures", "Low", "--bootstrap", "50"]) == 0
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert rows[0]["structure"] == "Low" and "cv_msd_at_tuned" in rows[0]
    header = (out / "sweeps" / "Low" / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["threshold", "dice"] and "msd_mm_mean" in header
    # surface Dice at a tolerance (issue 14): a fraction, higher is better, tolerance recorded
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(tmp_path / "nsd"),
                 "--metric", "nsd", "--nsd-tolerance", "1.5", "--structures", "Low", "--bootstrap", "50"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "nsd" / "summary.csv")))
    assert "cv_nsd_at_tuned" in rows[0] and 0.0 <= float(rows[0]["cv_nsd_at_tuned"]) <= 1.0
    doc = json.loads((tmp_path / "nsd" / "thresholds.json").read_text())
    assert doc["metric"] == "nsd" and doc["inputs"]["nsd_tolerance_mm"] == 1.5
    capsys.readouterr()
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(tmp_path / "z"),
                 "--metric", "nsd", "--nsd-tolerance", "-1"]) == 2
    assert "tolerance" in capsys.readouterr().err
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(tmp_path / "x"),
                 "--metric", "volume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metric" in err[0] and "dice" in err[0]
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(tmp_path / "y"),
                 "--structures", "Spleen"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "note: case00: Spleen:" in err[0] and "prob_Spleen.nrrd" in err[0]
    assert err[-1].startswith("autosegsens tune: error:") and "no usable case: case00: Spleen:" in err[-1]


def test_apply_bad_thresholds_file_and_missing_maps(cohort, tmp_path, capsys):
    root, probs, refs = cohort
    bad = tmp_path / "bad.json"
    bad.write_text('{"structures": {"Low": {"threshold": 3}}}')
    assert main(["apply", "--thresholds", str(bad), "--prob-dir", str(probs), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "structures.Low.threshold" in err[0]
    assert not (tmp_path / "a").exists()
    good = write_thresholds(tmp_path / "t.json", {"Low": 0.2, "Spleen": 0.4})
    assert main(["apply", "--thresholds", str(good), "--prob-dir", str(probs), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "case00: Spleen:" in err and "prob_Spleen.nrrd" in err
    assert read_segmentation(tmp_path / "b" / "case03" / "segmentation.seg.nrrd").names == ["Low"]


CONFIG = {"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain", "SpinalCord"],
          "epochs": 1, "batch_size": 5, "samples_per_epoch": 5, "lr": 0.003, "crop": [48, 48], "resize": [32, 32]}


def test_predict_layout_feeds_tune_and_predict_thresholds(tmp_path, capsys):
    """`predict` writes the maps layout `tune` reads; `predict --thresholds` thresholds at the file's values."""
    make_phantom_dataset(tmp_path / "data", cases=3, seed=2, shape=(10, 64, 64))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "run"), "--device", "cpu", "--quiet"]) == 0
    model = str(tmp_path / "run" / "best.pt")
    cases = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    for case in cases:
        assert main(["predict", "--model", model, "--image", str(tmp_path / "data" / case / "image.nrrd"),
                     "--out", str(tmp_path / "pred" / case), "--device", "cpu"]) == 0
    assert main(["tune", "--prob-dir", str(tmp_path / "pred"), "--ref-dir", str(tmp_path / "data"), "--out",
                 str(tmp_path / "tuned"), "--bootstrap", "20"]) == 0
    doc = json.loads((tmp_path / "tuned" / "thresholds.json").read_text())
    assert sorted(doc["structures"]) == ["Brain", "SpinalCord"] and doc["cases"] == cases
    table = write_thresholds(tmp_path / "t.json", {"Brain": 0.05, "SpinalCord": 0.9})
    out = tmp_path / "p"
    assert main(["predict", "--model", model, "--image", str(tmp_path / "data" / cases[0] / "image.nrrd"),
                 "--out", str(out), "--device", "cpu", "--thresholds", str(table)]) == 0
    seg = read_segmentation(out / "segmentation.seg.nrrd")
    for s, t in (("Brain", 0.05), ("SpinalCord", 0.9)):
        np.testing.assert_array_equal(seg.mask(s), read_volume(out / f"prob_{s}.nrrd").array >= np.float32(t))
    # the same file thresholds every case of a dataset folder (predict --data)
    assert main(["predict", "--model", model, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "all"),
                 "--device", "cpu", "--thresholds", str(table)]) == 0
    for case in cases:
        seg = read_segmentation(tmp_path / "all" / case / "segmentation.seg.nrrd")
        for s, t in (("Brain", 0.05), ("SpinalCord", 0.9)):
            prob = read_volume(tmp_path / "all" / case / f"prob_{s}.nrrd").array
            np.testing.assert_array_equal(seg.mask(s), prob >= np.float32(t))
    # --calibrated: the maps written are sigmoid(logit(p) / T) of the raw maps, the segmentation is p >= t
    from AutoSegSensitivity.calibration import calibrate_array

    temps = {"Brain": 0.5, "SpinalCord": 2.0}
    tuned = write_thresholds(tmp_path / "tc.json", {s: {"threshold": t, "temperature": temps[s]}
                                                    for s, t in (("Brain", 0.05), ("SpinalCord", 0.9))})
    assert main(["predict", "--model", model, "--image", str(tmp_path / "data" / cases[0] / "image.nrrd"),
                 "--out", str(tmp_path / "pc"), "--device", "cpu", "--thresholds", str(tuned), "--calibrated"]) == 0
    assert main(["predict", "--model", model, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "all"),
                 "--device", "cpu", "--thresholds", str(tuned), "--calibrated"]) == 0  # other settings: redone
    for got in (tmp_path / "pc", tmp_path / "all" / cases[0]):
        seg = read_segmentation(got / "segmentation.seg.nrrd")
        for s, t in (("Brain", 0.05), ("SpinalCord", 0.9)):
            raw = read_volume(tmp_path / "pred" / cases[0] / f"prob_{s}.nrrd").array
            np.testing.assert_array_equal(read_volume(got / f"prob_{s}.nrrd").array, calibrate_array(raw, temps[s]))
            np.testing.assert_array_equal(seg.mask(s), raw >= np.float32(t))
    assert main(["predict", "--model", model, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "all"),
                 "--device", "cpu", "--thresholds", str(tuned)]) == 0  # back to raw maps: redone, not skipped
    np.testing.assert_array_equal(read_volume(tmp_path / "all" / cases[0] / "prob_Brain.nrrd").array,
                                  read_volume(tmp_path / "pred" / cases[0] / "prob_Brain.nrrd").array)
    capsys.readouterr()
    assert main(["predict", "--model", model, "--image", str(tmp_path / "data" / cases[0] / "image.nrrd"),
                 "--out", str(tmp_path / "pd"), "--device", "cpu", "--thresholds", str(table), "--calibrated"]) == 2
    assert "temperature" in capsys.readouterr().err
    partial = write_thresholds(tmp_path / "u.json", {"Brain": 0.3})
    assert main(["predict", "--model", model, "--image", str(tmp_path / "data" / cases[0] / "image.nrrd"),
                 "--out", str(tmp_path / "q"), "--device", "cpu", "--thresholds", str(partial)]) == 2
    err = capsys.readouterr().err
    assert str(partial) in err and "SpinalCord" in err
