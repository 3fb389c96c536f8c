"""The HTML report on a hand-made study folder: self-contained (images inline, no external references),
thresholds from the validation tables and every number from the test tables (checked by brute force against
the CSV), case roles, plain-language summary, provenance."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.html_report import (CHOSEN, fmt_num, fmt_pct, load_study, plain_summary,
                                            read_sweep_folder, render_html, write_report)
from AutoSegSensitivity.report import write_csv
from AutoSegSensitivity.study import write_role_sweep
from AutoSegSensitivity.sweep import parse_thresholds, sweep_thresholds

SPACING = (2.0, 1.0, 1.0)
# per structure: (probability inside the reference, probability outside, prominence written in study.json)
# Dice is 1 for outside < t <= inside, so the optimum (ties toward 0.5) is known by hand.
DESIGN = {
    "Brain": (0.80, 0.20, 0.30),    # optimum 0.50 (0.5 inside the plateau)
    "SpinalCord": (0.30, 0.10, 0.01),  # optimum 0.30; at 0.5 nothing is predicted: Dice 0, loss 100 %
    "Lens_L": (0.90, 0.60, 0.001),  # optimum 0.61 (plateau 0.61..0.90, closest to 0.5)
}


ROLE_SEEDS = {"validation": (0, 1), "test": (2, 3)}


def _maps(inside: float, outside: float, seed: int):
    rng = np.random.default_rng(seed)
    ref = np.zeros((6, 16, 16), bool)
    z0, y0, x0 = rng.integers(0, 3), rng.integers(0, 6), rng.integers(0, 6)
    ref[z0:z0 + 3, y0:y0 + 8, x0:x0 + 7] = True
    prob = np.where(ref, inside, outside).astype(np.float32)
    return prob, ref


def make_study(folder: Path) -> Path:
    """A study folder by hand: two losses (the second shifts every probability by -0.05); validation cases
    case000, case001 and test cases case002, case003 (same design, other positions)."""
    losses = [{"key": "bce", "label": "BCE", "loss": "bce", "loss_kwargs": {}, "model": "unet2d",
               "multi_label": True, "epochs_run": 3, "best_epoch": 2, "checkpoint": "models/bce/best.pt"},
              {"key": "bce_dice2d", "label": "BCE + 2D Dice (lambda 0.5)", "loss": "bce_dice2d",
               "loss_kwargs": {"lam": 0.5}, "model": "unet2d", "multi_label": True, "epochs_run": 3,
               "best_epoch": 3, "checkpoint": "models/bce_dice2d/best.pt"}]
    bias = []
    for li, entry in enumerate(losses):
        for s, (inside, outside, _) in DESIGN.items():
            for role, seeds in ROLE_SEEDS.items():
                probs, refs = [], []
                for c in seeds:
                    p, r = _maps(inside - 0.05 * li, outside - 0.05 * li, seed=c)
                    probs.append(p)
                    refs.append(r)
                names = [f"case{c:03d}" for c in seeds]
                res = sweep_thresholds(probs, refs, [SPACING] * 2, case_names=names, structure=s, device="numpy")
                write_role_sweep(folder / "sweeps" / entry["key"] / s / role, res, role,
                                 list(zip(names, probs, refs)), parse_thresholds("0:1:0.01"), figure=False)
                if role == "validation":
                    t_val = res.optimum("dice")[0]
            for kind, t in ((CHOSEN, t_val), ("0.5", 0.5)):
                vol_ref = sum(int(r.sum()) for r in refs) * 2.0 / 1000
                vol_pred = sum(int((p >= np.float32(t)).sum()) for p in probs) * 2.0 / 1000
                bias.append({"loss": entry["key"], "structure": s, "at": kind, "threshold": t,
                             "volume_ref_ml": vol_ref, "volume_pred_ml": vol_pred,
                             "volume_diff_ml": vol_pred - vol_ref, "relative_volume_diff": (vol_pred - vol_ref) / vol_ref})
    write_csv(bias, folder / "volume_bias.csv")
    meta = {"title": "Hand-made study", "created": "2026-11-23T06:00:00+00:00", "status": "complete",
            "device": "cpu", "settings": {"seed": 7, "epochs": 3}, "versions": {"torch": "9.9.9-handmade"},
            "structures": list(DESIGN), "losses": losses,
            "prominence": {s: v[2] for s, v in DESIGN.items()},
            "data": {"source": "hand-made arrays", "training cases": ["case004"],
                     "validation cases": ["case000", "case001"], "test cases": ["case002", "case003"]}}
    (folder / "study.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("html") / "study")


@pytest.fixture(scope="module")
def page(study_dir) -> str:
    return render_html(load_study(study_dir))


def _csv(path: Path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def brute_optimum(path: Path):
    """Max Dice in sweep.csv, ties toward 0.5 then the lower threshold (independent of the engine)."""
    rows = [(float(r["threshold"]), float(r["dice"])) for r in _csv(path)]
    best = max(d for _, d in rows)
    cands = [t for t, d in rows if d >= best - 1e-12]
    t = min(cands, key=lambda t: (abs(t - 0.5), t))
    at05 = next(d for t_, d in rows if abs(t_ - 0.5) < 1e-9)
    return t, best, at05


def test_page_is_self_contained(study_dir, page):
    assert page.startswith("<!DOCTYPE html>")
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) >= 2 * len(DESIGN) + 2  # Dice + distance figure per structure, prominence, perturbation
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="http' not in page and "href=" not in page and "<link" not in page and "<script" not in page
    assert str(study_dir) not in page and "file:" not in page and "url(" not in page


def test_numbers_equal_the_sweep_csvs(study_dir, page):
    expected_opt = {"Brain": 0.5, "SpinalCord": 0.3, "Lens_L": 0.61}
    for key in ("bce", "bce_dice2d"):
        for s in DESIGN:
            t, best, _ = brute_optimum(study_dir / "sweeps" / key / s / "validation" / "sweep.csv")
            if key == "bce":
                assert t == pytest.approx(expected_opt[s])
            test = {round(float(r["threshold"]), 2): float(r["dice"])
                    for r in _csv(study_dir / "sweeps" / key / s / "test" / "sweep.csv")}
            at_t, at05 = test[round(t, 2)], test[0.5]
            loss = (at_t - at05) / at_t
            assert (f"<td>{t:.2f}</td><td>{fmt_num(best)}</td><td>{fmt_num(at_t)}</td><td>{fmt_num(at05)}</td>"
                    f"<td>{fmt_pct(loss)}</td>") in page
    # hand arithmetic: SpinalCord with BCE loses all of its test Dice at 0.5, in every resample of the test cases
    assert ("For SpinalCord (BCE), the threshold chosen on the validation cases is 0.30. On the test cases, "
            "thresholding at 0.5 instead loses 100.0 % Dice (0.0000 instead of 1.0000; 95 % CI 100.0 % to 100.0 %).") in page
    assert "For Brain (BCE), the threshold chosen on the validation cases is 0.50. It is 0.5 itself (test Dice 1.0000)." in page


def test_page_names_the_roles_and_says_where_thresholds_come_from(page):
    assert "<h2>Cases and their roles</h2>" in page
    for role, names in (("training", "case004"), ("validation", "case000, case001"), ("test", "case002, case003")):
        assert f'<td class="l">{role}</td>' in page and names in page
    assert "Headline (held-out test cases)" in page and "t chosen on validation" in page
    assert "median test Dice loss at 0.5" in page and "13.5 %" in page and "held-out test cases" in page


def test_correlation_and_volume_bias_shown(study_dir, page):
    prom = [DESIGN[s][2] for s in DESIGN]
    opt = [brute_optimum(study_dir / "sweeps" / "bce" / s / "validation" / "sweep.csv")[0] for s in DESIGN]
    r, p = stats.pearsonr(prom, opt)
    assert f"prominence and the Dice threshold chosen on validation = {r:.3f} (p = {p:.3g}), n = 3" in page
    for row in _csv(study_dir / "volume_bias.csv"):
        if row["loss"] == "bce" and row["structure"] == "SpinalCord" and row["at"] == "0.5":
            assert float(row["relative_volume_diff"]) == -1.0
            assert f"<td>{fmt_num(float(row['volume_ref_ml']), 2)}</td><td>0.00</td>" in page
    assert "underestimated by 100.0 % at 0.5" in page


def test_provenance_on_the_page(study_dir, page):
    for text in ("9.9.9-handmade", "2026-11-23T06:00:00+00:00", "models/bce/best.pt", "&quot;lam&quot;: 0.5",
                 "multi-label", "hand-made arrays"):
        assert text in page


def test_read_sweep_folder_round_trips(study_dir, tmp_path):
    probs, refs = zip(*[_maps(0.7, 0.2, seed=c) for c in range(2)])
    probs = [p + np.random.default_rng(3).uniform(-0.1, 0.1, p.shape).astype(np.float32) for p in probs]
    res = sweep_thresholds(probs, refs, [SPACING] * 2, case_names=["a", "b"], structure="X", device="numpy")
    write_csv(res.to_table(), tmp_path / "x" / "sweep.csv")
    write_csv(res.per_case_table(), tmp_path / "x" / "sweep_per_case.csv")
    back = read_sweep_folder(tmp_path / "x", "X")
    np.testing.assert_array_equal(back.thresholds, res.thresholds)
    for m in res.metrics:
        np.testing.assert_array_equal(back.pooled[m], res.pooled[m])
        np.testing.assert_array_equal(back.mean[m], res.mean[m])
        for c in ("a", "b"):
            np.testing.assert_array_equal(back.per_case[c][m], res.per_case[c][m])
    assert back.optimum("hd95") == res.optimum("hd95")
    assert back.perturbation_losses("dice") == res.perturbation_losses("dice")


def test_write_report_and_partial_study(study_dir, tmp_path):
    study_dir = Path(shutil.copytree(study_dir, tmp_path / "copy"))
    path = write_report(study_dir)
    assert path == study_dir / "report.html" and path.read_text().count("<h3") == len(DESIGN)
    # a partial study (one sweep missing, status cancelled) still gives a page that says so
    meta = json.loads((study_dir / "study.json").read_text())
    meta.update(status="cancelled", status_detail="stopped by the user; kept: the bce sweeps")
    (study_dir / "study.json").write_text(json.dumps(meta))
    shutil.rmtree(study_dir / "sweeps" / "bce_dice2d" / "Lens_L")
    study = load_study(study_dir)
    assert "Lens_L" not in study.sweeps["validation"]["bce_dice2d"] and "Lens_L" not in study.sweeps["test"]["bce_dice2d"]
    page = render_html(study)
    assert "This study is incomplete (cancelled)" in page and "kept: the bce sweeps" in page
    assert len(plain_summary(study, "Lens_L")) == 1


def test_not_a_study_folder(tmp_path):
    with pytest.raises(InputError, match="study.json"):
        load_study(tmp_path)
    (tmp_path / "study.json").write_text("{not json")
    with pytest.raises(InputError, match="valid JSON"):
        load_study(tmp_path)


def test_structure_never_found_is_said_plainly(study_dir, tmp_path):
    folder = Path(shutil.copytree(study_dir, tmp_path / "s"))
    p, r = _maps(0.9, 0.6, seed=0)
    res = sweep_thresholds([np.zeros_like(p)], [r], [SPACING], case_names=["case000"], structure="Lens_L",
                           metrics=("dice",), device="numpy")
    shutil.rmtree(folder / "sweeps" / "bce" / "Lens_L" / "validation")
    write_role_sweep(folder / "sweeps" / "bce" / "Lens_L" / "validation", res, "validation", [], res.thresholds,
                     figure=False)
    sentences = plain_summary(load_study(folder), "Lens_L")
    assert sentences[0] == ("For Lens_L (BCE), the best validation Dice comes from thresholding at 0.00, "
                            "i.e. calling every voxel Lens_L: the model has not learnt this structure.")
    assert sentences[1].startswith("For Lens_L (BCE + 2D Dice (lambda 0.5)), the threshold chosen on the validation "
                                   "cases is 0.56.")
    page = render_html(load_study(folder))
    assert "<b>Not learnt</b> (best validation Dice at threshold 0.00, i.e. every voxel): Lens_L (BCE)." in page


def test_narrow_interval_around_zero_is_printed_with_enough_digits():
    """A 95 % CI of -0.05 % to +0.03 % must not read as "0.0 % to 0.0 %" (review finding)."""
    from AutoSegSensitivity.html_report import _ci_text

    assert _ci_text(-0.0005, 0.0003) == "-0.05 % to 0.03 %"
    assert _ci_text(0.039, 0.052) == "3.9 % to 5.2 %"
    assert _ci_text(1.0, 1.0) == "100.0 % to 100.0 %"
    assert _ci_text(None, 0.1) == "n/a"
