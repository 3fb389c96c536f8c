"""The study orchestration: volume bias arithmetic, settings validation, a tiny run on the phantom whose
tables agree with each other and with the probability maps on disk, and a clean stop on Ctrl-C."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegSensitivity import batch as batch_module
from AutoSegSensitivity.errors import CancelledError, InputError
from AutoSegSensitivity.io import load_case, read_volume
from AutoSegSensitivity.metrics import compare_masks
from AutoSegSensitivity.study import StudyConfig, run_study, volume_bias
from AutoSegSensitivity.sweep import sweep_thresholds

TINY = {"cases": 3, "phantom_shape": [8, 48, 48], "epochs": 1, "samples_per_epoch": 8, "base_features": 2,
        "resize": [32, 32], "structures": ["Brain", "SpinalCord"], "seed": 1, "device": "cpu",
        "num_threads": 1}


def _csv(path: Path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_volume_bias_by_hand():
    ref = np.zeros((4, 5, 6), bool)
    ref[1:3, 1:4, 1:5] = True  # 24 voxels
    prob = np.where(ref, 0.7, 0.0).astype(np.float32)
    prob[0, 0, :3] = 0.4  # 3 extra voxels above 0.3 but below 0.5
    spacing = (2.0, 0.5, 1.0)  # 1 mm^3 per voxel
    at03 = volume_bias([prob], [ref], [spacing], 0.3)
    assert at03["volume_ref_ml"] == pytest.approx(0.024) and at03["volume_pred_ml"] == pytest.approx(0.027)
    assert at03["volume_diff_ml"] == pytest.approx(0.003) and at03["relative_volume_diff"] == pytest.approx(0.125)
    at08 = volume_bias([prob, prob], [ref, ref], [spacing, spacing], 0.8)
    assert at08["volume_pred_ml"] == 0.0 and at08["relative_volume_diff"] == -1.0
    # agrees with the metrics module's volumes
    m = compare_masks(prob >= 0.3, ref, spacing)
    assert at03["volume_diff_ml"] == pytest.approx(m["volume_diff_ml"])


@pytest.mark.parametrize("key,value", [("structures", []), ("cases", 2), ("epochs", 0), ("lam", 1.5),
                                       ("thresholds", "1:0:0.1"), ("device", "tpu"), ("data_dir", "/no/such")])
def test_bad_settings_name_the_setting(key, value):
    with pytest.raises(InputError) as err:
        StudyConfig.from_dict({key: value})
    assert key in str(err.value) or "thresholds" in str(err.value)


def test_unknown_setting():
    with pytest.raises(InputError, match="epoch"):
        StudyConfig.from_dict({"epoch": 3})


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("study") / "s"
    result = run_study(TINY, out, progress=False, log=lambda m: None)
    return out, result


def test_tiny_study_tables_agree(tiny_study):
    out, result = tiny_study
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == "complete" and [e["key"] for e in meta["losses"]] == ["bce", "bce_dice2d"]
    assert meta["losses"][1]["loss_kwargs"] == {"lam": 0.5} and meta["losses"][0]["multi_label"] is False
    assert meta["mode"] == "per_structure" and "binary 2D U-Net per structure" in meta["description"]
    for e in meta["losses"]:  # one binary model per structure, each with its own checkpoint and one output
        assert set(e["models"]) == set(TINY["structures"])
        for s, m in e["models"].items():
            assert m["checkpoint"] == f"models/{e['key']}/{s}/best.pt" and (out / m["checkpoint"]).is_file()
            assert m["train_config"]["structures"] == [s]
    assert "one model per structure" in (out / "report.html").read_text()
    val = meta["data"]["validation cases"]
    assert val and not set(val) & set(meta["data"]["training cases"])
    # prominence: the fraction of true training voxels, between the two structures in the phantom's order
    assert 0 < meta["prominence"]["SpinalCord"] < meta["prominence"]["Brain"] < 1
    summary = {(r["loss"], r["structure"]): r for r in _csv(out / "summary.csv")}
    assert len(summary) == 4 and len(result.rows) == 4
    for key in ("bce", "bce_dice2d"):
        for s in TINY["structures"]:
            # the sweep recomputed from the probability maps written to disk gives the same table
            probs, refs, sps = [], [], []
            for c in val:
                probs.append(read_volume(out / "predictions" / key / c / f"{s}.nrrd").array)
                image, seg = load_case(out / "data" / c)
                refs.append(seg.mask(s))
                sps.append(image.spacing_zyx)
            res = sweep_thresholds(probs, refs, sps, case_names=val, device="numpy")
            rows = _csv(out / "sweeps" / key / s / "sweep.csv")
            np.testing.assert_allclose([float(r["dice"]) for r in rows], res.pooled["dice"], rtol=0, atol=0)
            t_opt, d_opt = res.optimum("dice")
            row = summary[(key, s)]
            assert float(row["dice_optimum_threshold"]) == t_opt and float(row["dice_at_optimum"]) == d_opt
            assert float(row["dice_at_0.5"]) == res.value_at(0.5, "dice")
            bias = volume_bias(probs, refs, [tuple(x) for x in sps], 0.5)
            assert float(row["relative_volume_bias_at_0.5"]) == pytest.approx(bias["relative_volume_diff"])
            assert (out / "sweeps" / key / s / "sweep.png").is_file()
        corr = {r["loss"]: r for r in _csv(out / "correlation.csv")}
        assert corr[key]["n_structures"] == "2"
    assert (out / "report.html").stat().st_size > 10_000


def test_multi_label_mode(tmp_path):
    """``per_structure: false``: one model per loss with one output per structure; study.json and the
    report say so."""
    out = tmp_path / "s"
    result = run_study(dict(TINY, per_structure=False), out, progress=False, log=lambda m: None)
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == "complete" and meta["mode"] == "multi_label"
    assert "multi-label" in meta["description"]
    for e in meta["losses"]:
        assert e["multi_label"] is True and "models" not in e
        assert e["checkpoint"] == f"models/{e['key']}/best.pt" and (out / e["checkpoint"]).is_file()
        assert e["train_config"]["structures"] == TINY["structures"]
    assert len(result.rows) == 4 and set(meta["prominence"]) == set(TINY["structures"])
    page = (out / "report.html").read_text()
    assert "multi-label (one sigmoid channel per structure)" in page and "one model per structure" not in page


def test_ctrl_c_keeps_what_was_done(tmp_path, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_module, "predict_dataset", interrupted)
    out = tmp_path / "s"
    with pytest.raises(CancelledError) as err:
        run_study(TINY, out, progress=False, log=lambda m: None)
    msg = str(err.value)
    assert "kept:" in msg and "the bce Brain model" in msg and "the bce_dice2d SpinalCord model" in msg
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == "cancelled" and "kept: the phantom dataset" in meta["status_detail"]
    assert (out / "models" / "bce" / "Brain" / "last.pt").is_file() and not (out / "report.html").exists()
