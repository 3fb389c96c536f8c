"""The study orchestration: volume bias arithmetic, settings validation, a tiny run on the phantom whose
tables agree with each other and with the probability maps on disk, and a clean stop on Ctrl-C."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegSensitivity.errors import CancelledError, InputError
from AutoSegSensitivity.io import load_case, read_volume
from AutoSegSensitivity.metrics import compare_masks
from AutoSegSensitivity.predict_shards import unfinished_cases
from AutoSegSensitivity.held_out import N_BOOTSTRAP, ROLES, bootstrap_ci, dice_counts, split_roles
from AutoSegSensitivity.html_report import fmt_num, fmt_pct, load_study, render_html, summary_rows
from AutoSegSensitivity.study import (StudyConfig, held_out_volume_bias, run_study, volume_bias,
                                      write_role_sweep)
from AutoSegSensitivity.sweep import apply_threshold, parse_thresholds, sweep_thresholds
from AutoSegSensitivity.training import split_cases

TINY = {"cases": 4, "phantom_shape": [8, 48, 48], "epochs": 1, "samples_per_epoch": 8, "base_features": 2,
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
    roles = {r: meta["data"][f"{r} cases"] for r in ROLES}
    assert roles == split_roles([f"case{i:03d}" for i in range(4)], 0.2, 0.3, TINY["seed"])
    assert all(roles.values())
    for e in meta["losses"]:  # one binary model per structure, each with its own checkpoint and one output
        assert set(e["models"]) == set(TINY["structures"])
        for s, m in e["models"].items():
            assert m["checkpoint"] == f"models/{e['key']}/{s}/best.pt" and (out / m["checkpoint"]).is_file()
            assert m["train_config"]["structures"] == [s]
            # the model learnt from the training cases only; early stopping on validation, the paper's window
            assert m["train_config"]["train_cases"] == roles["training"]
            assert m["train_config"]["val_cases"] == roles["validation"]
            assert m["train_config"]["early_stopping"]["window"] == 10
            split = torch.load(out / m["checkpoint"], map_location="cpu", weights_only=False)["split"]
            assert split == {"train": roles["training"], "val": roles["validation"]}
    page = (out / "report.html").read_text()
    assert "one model per structure" in page
    assert "NSD" in page  # the surface Dice column reaches the page
    for r in ROLES:  # the page names the cases of each role
        assert f"<td class=\"l\">{r}</td><td>{len(roles[r])}</td>" in page and ", ".join(roles[r]) in page
    # prominence: the fraction of true training voxels, between the two structures in the phantom's order
    assert 0 < meta["prominence"]["SpinalCord"] < meta["prominence"]["Brain"] < 1
    summary = {(r["loss"], r["structure"]): r for r in _csv(out / "summary.csv")}
    assert len(summary) == 4 and len(result.rows) == 4
    for key in ("bce", "bce_dice2d"):
        assert not list((out / "predictions" / key).glob("*/Brain.nrrd"))
        assert sorted(p.name for p in (out / "predictions" / key).iterdir()) == sorted(
            roles["validation"] + roles["test"] + ["shard-0-of-1.json"])
        # written by the one dataset predictor: a finished marker per case naming both binary models, so
        # `tune --prob-dir` accepts the folder
        assert unfinished_cases(out / "predictions" / key) == []
        for c in roles["validation"] + roles["test"]:
            marker = json.loads((out / "predictions" / key / c / "prediction.json").read_text())
            assert marker["files"] == [f"prob_{s}.nrrd" for s in TINY["structures"]]
            assert marker["model"] == [str(out / "models" / key / s / "best.pt") for s in TINY["structures"]]
        for s in TINY["structures"]:
            res = {}
            for role in ("validation", "test"):
                # the sweep recomputed from the probability maps written to disk gives the same table
                probs, refs, sps = [], [], []
                for c in roles[role]:
                    probs.append(read_volume(out / "predictions" / key / c / f"prob_{s}.nrrd").array)
                    image, seg = load_case(out / "data" / c)
                    refs.append(seg.mask(s))
                    sps.append(image.spacing_zyx)
                res[role] = sweep_thresholds(probs, refs, sps, case_names=roles[role], device="numpy",
                                             metrics=("dice", "nsd"))
                rows = _csv(out / "sweeps" / key / s / role / "sweep.csv")
                np.testing.assert_allclose([float(r["dice"]) for r in rows], res[role].pooled["dice"], rtol=0, atol=0)
                # the study sweeps surface Dice at 2 mm too (issue 14)
                np.testing.assert_allclose([float(r["nsd"]) for r in rows], res[role].pooled["nsd"], rtol=0, atol=1e-12)
                assert (out / "sweeps" / key / s / role / "sweep.png").is_file()
            t_val = res["validation"].optimum("dice")[0]
            row = summary[(key, s)]
            assert float(row["dice_threshold_chosen_on_validation"]) == t_val
            assert float(row["dice_test_at_threshold"]) == res["test"].value_at(t_val, "dice")
            assert float(row["dice_test_at_0.5"]) == res["test"].value_at(0.5, "dice")
            bias = volume_bias(probs, refs, [tuple(x) for x in sps], 0.5)  # probs/refs: the test cases
            assert float(row["test_relative_volume_bias_at_0.5"]) == pytest.approx(bias["relative_volume_diff"])
        corr = {(r["loss"], r["thresholds_from"]): r for r in _csv(out / "correlation.csv")}
        assert corr[key, "validation"]["n_structures"] == "2" and corr[key, "test"]["n_structures"] == "2"
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
    """Ctrl-C while the study predicts its first case: the study goes through the one dataset predictor,
    which writes its shard json (nothing finished, every case not started) before the study stops."""
    from AutoSegSensitivity import inference

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "predict_volume", interrupted)
    out = tmp_path / "s"
    with pytest.raises(CancelledError) as err:
        run_study(TINY, out, progress=False, log=lambda m: None)
    msg = str(err.value)
    assert "kept:" in msg and "the bce Brain model" in msg and "the bce_dice2d SpinalCord model" in msg
    assert "the bce probability maps finished so far" in msg
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == "cancelled" and "kept: the phantom dataset" in meta["status_detail"]
    assert (out / "models" / "bce" / "Brain" / "last.pt").is_file() and not (out / "report.html").exists()
    shard = json.loads((out / "predictions" / "bce" / "shard-0-of-1.json").read_text())
    assert shard["cancelled"] is True and shard["done"] == []
    assert shard["not_started"] == sorted(meta["data"]["validation cases"] + meta["data"]["test cases"])


# ---- the held-out split and its numbers ---------------------------------------------------------------


def test_split_is_disjoint_deterministic_and_covers_every_case():
    names = [f"case{i:03d}" for i in range(12)]
    a = split_roles(names, 0.2, 0.3, seed=0)
    assert split_roles(list(reversed(names)), 0.2, 0.3, seed=0) == a  # order of the input does not matter
    assert [len(a[r]) for r in ROLES] == [6, 2, 4]
    assert sorted(a["training"] + a["validation"] + a["test"]) == names
    assert not (set(a["training"]) & set(a["validation"]) or set(a["training"]) & set(a["test"])
                or set(a["validation"]) & set(a["test"]))
    assert all(a[r] == sorted(a[r]) for r in ROLES)
    # the documented rule: the seeded permutation of the sorted names, test first, then validation
    perm = [names[i] for i in np.random.default_rng(0).permutation(12)]
    assert a["test"] == sorted(perm[:4]) and a["validation"] == sorted(perm[4:6])
    assert split_roles(names, 0.2, 0.3, seed=1) != a
    with pytest.raises(InputError, match="cases"):
        split_roles(names[:2], 0.2, 0.3, seed=0)
    with pytest.raises(InputError, match="test_fraction"):
        StudyConfig.from_dict({"test_fraction": 0})
    with pytest.raises(InputError, match="cases"):  # 3 phantom cases leave no training case at 0.6 + 0.3
        StudyConfig.from_dict({"cases": 3, "val_fraction": 0.6})


def test_dice_counts_equal_brute_force_thresholding():
    rng = np.random.default_rng(3)
    prob = rng.random((5, 6, 7)).astype(np.float32)
    prob[0, 0, :3] = [0.29, 0.3, 0.31]  # values on the grid: compared in float32, as apply_threshold
    ref = rng.random((5, 6, 7)) > 0.6
    th = np.round(np.arange(0, 101) * 0.01, 2)
    inter, pred, nref = dice_counts(prob, ref, th)
    assert nref == int(ref.sum())
    for i, t in enumerate(th):
        m = apply_threshold(prob, float(t))
        assert inter[i] == np.logical_and(m, ref).sum() and pred[i] == m.sum()


def test_bootstrap_ci_matches_a_loop():
    vals = np.array([0.1, 0.4, 0.35, 0.9, 0.2])
    lo, hi = bootstrap_ci(lambda idx: vals[idx].mean(axis=1), len(vals), seed=5, n_boot=500)
    rng = np.random.default_rng(5)
    draws = rng.integers(0, 5, size=(500, 5))
    means = sorted(float(np.mean([vals[j] for j in row])) for row in draws)
    assert lo == pytest.approx(np.quantile(means, 0.025)) and hi == pytest.approx(np.quantile(means, 0.975))
    assert lo < vals.mean() < hi and bootstrap_ci(lambda idx: vals[idx].mean(axis=1), 0, seed=5) == (None, None)


def _ball(shape, centre, radius):
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def test_threshold_comes_from_validation_and_losses_from_test(tmp_path):
    """Validation maps peak at 0.35, test maps at 0.45: the reported threshold is the validation one and
    every reported number is the test cases' pooled Dice at it (checked by thresholding the maps here)."""
    shape, sp = (12, 16, 16), (2.0, 1.0, 1.0)
    ref_a, ref_b = _ball(shape, (6, 8, 8), 4), _ball(shape, (6, 7, 9), 3)
    val = [("v1", np.where(ref_a, 0.35, 0.0).astype(np.float32), ref_a)]
    shell = _ball(shape, (6, 8, 8), 5) & ~ref_a
    test = [("t1", np.where(ref_a, 0.45, np.where(shell, 0.4, 0.0)).astype(np.float32), ref_a),
            ("t2", np.where(ref_b, 0.8, 0.0).astype(np.float32), ref_b)]
    th = parse_thresholds("0:1:0.01")
    out = tmp_path / "study"
    sweeps = {}
    for role, cases in (("validation", val), ("test", test)):
        res = sweep_thresholds([c[1] for c in cases], [c[2] for c in cases], [sp] * len(cases), thresholds=th,
                               case_names=[c[0] for c in cases], structure="Organ", metrics=("dice",),
                               device="numpy")
        sweeps[role] = res
        write_role_sweep(out / "sweeps" / "bce" / "Organ" / role, res, role, cases, th, figure=False)
    t_val = sweeps["validation"].optimum("dice")[0]
    assert t_val == pytest.approx(0.35) and sweeps["test"].optimum("dice")[0] == pytest.approx(0.45)
    bias = held_out_volume_bias("bce", "Organ", t_val, [c[1] for c in test], [c[2] for c in test], [sp, sp])
    with (out / "volume_bias.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(bias[0]))
        w.writeheader()
        w.writerows(bias)
    meta = {"losses": [{"key": "bce", "label": "BCE"}], "structures": ["Organ"], "settings": {"seed": 4},
            "data": {"training cases": ["a"], "validation cases": ["v1"], "test cases": ["t1", "t2"]}}
    (out / "study.json").write_text(json.dumps(meta))
    study = load_study(out)
    (row,) = summary_rows(study)

    def pooled(cases, t):
        i = sum(int(np.logical_and(p >= np.float32(t), r).sum()) for _, p, r in cases)
        d = sum(int((p >= np.float32(t)).sum()) + int(r.sum()) for _, p, r in cases)
        return 2 * i / d

    d_t, d_05 = pooled(test, 0.35), pooled(test, 0.5)
    assert row["dice_threshold_chosen_on_validation"] == pytest.approx(0.35)
    assert row["dice_validation_at_threshold"] == pytest.approx(1.0)  # in-sample: perfect
    assert row["dice_test_at_threshold"] == pytest.approx(d_t) and row["dice_test_at_0.5"] == pytest.approx(d_05)
    assert d_t < 1.0 and row["dice_test_loss_at_0.5"] == pytest.approx((d_t - d_05) / d_t)
    assert row["dice_test_loss_plus_0.05"] == pytest.approx((d_t - pooled(test, 0.40)) / d_t)
    assert row["dice_test_optimum_threshold"] == pytest.approx(0.45)
    assert row["test_relative_volume_bias_at_threshold"] == pytest.approx(
        sum(int((p >= np.float32(0.35)).sum()) - int(r.sum()) for _, p, r in test) / sum(int(r.sum()) for *_, r in test))
    # the CI: the same resamples of the two test cases, pooled Dice recomputed from the maps
    draws = np.random.default_rng(4).integers(0, 2, size=(N_BOOTSTRAP, 2))
    losses = [(pooled([test[j] for j in row_], 0.35) - pooled([test[j] for j in row_], 0.5))
              / pooled([test[j] for j in row_], 0.35) for row_ in draws]
    assert row["dice_test_loss_at_0.5_ci_low"] == pytest.approx(np.quantile(losses, 0.025))
    assert row["dice_test_loss_at_0.5_ci_high"] == pytest.approx(np.quantile(losses, 0.975))
    page = render_html(study)
    assert "t chosen on validation" in page and "Cases and their roles" in page and "t1, t2" in page
    assert "0.35" in page and f"{fmt_num(d_t)}</td><td>{fmt_num(d_05)}</td><td>{fmt_pct((d_t - d_05) / d_t)}" in page


def test_training_split_holds_test_cases_out():
    """``train_cases`` (what the study passes): the listed training cases only; the rest of the dataset (the
    test cases) is in neither list; unknown or overlapping names are errors naming the setting."""
    names = [f"case{i:03d}" for i in range(6)]
    train, val = split_cases(names, 0.2, 0, val_cases=["case001"], train_cases=["case000", "case003"])
    assert train == ["case000", "case003"] and val == ["case001"]
    with pytest.raises(InputError, match="train_cases"):
        split_cases(names, 0.2, 0, val_cases=["case001"], train_cases=["case001", "case002"])
    with pytest.raises(InputError, match="train_cases"):
        split_cases(names, 0.2, 0, val_cases=["case001"], train_cases=["case999"])
