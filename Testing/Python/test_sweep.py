"""The threshold sweep against a brute-force loop (and MONAI), and the optimum / loss arithmetic by hand."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage, special, stats

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.metrics import dice, directed_surface_distances, summarise_distances, surface_distances
from AutoSegSensitivity.sweep import (
    DEFAULT_THRESHOLDS,
    SweepResult,
    apply_threshold,
    correlate_prominence,
    parse_thresholds,
    prominence,
    relative_loss,
    sweep_thresholds,
)
from AutoSegSensitivity.volume import Volume

SPACING = (2.5, 0.9, 1.3)
TH = np.round(np.arange(0, 1.0001, 0.05), 2)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def make_cases(n=3, shape=(14, 22, 20), seed=0):
    rng = np.random.default_rng(seed)
    probs, refs = [], []
    for c in range(n):
        ref = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
        noise = 0.3 * rng.standard_normal(shape)
        p = np.clip(ndimage.gaussian_filter(ref + noise, 1.2), 0, 1).astype(np.float32)
        if c == 1:
            p[p < 0.05] = 0.0  # exact zeros: t = 0 selects the whole image, others a small box
        if c == 2:
            p = np.minimum(p, np.float32(0.8))  # nothing reaches t > 0.8: empty predictions
        probs.append(p)
        refs.append(ref)
    return probs, refs, [SPACING] * n


def brute_force(probs, refs, spacings, thresholds):
    """Loop over thresholds, recomputing every metric from scratch."""
    per_case = []
    for p, r, s in zip(probs, refs, spacings):
        rows = []
        for t in thresholds:
            m = p >= p.dtype.type(t)
            sd = surface_distances(m, r, s)
            rows.append((dice(m, r), sd.msd, sd.hd, sd.hd95))
        per_case.append(np.array(rows))
    pooled = []
    for t in thresholds:
        masks = [p >= p.dtype.type(t) for p in probs]
        tp = sum(int((m & r).sum()) for m, r in zip(masks, refs))
        den = sum(int(m.sum()) + int(r.sum()) for m, r in zip(masks, refs))
        a, b = [], []
        for m, r, s in zip(masks, refs, spacings):
            ab, ba = directed_surface_distances(m, r, s)
            if ab.size and ba.size and np.isfinite(ab).all() and np.isfinite(ba).all():
                a.append(ab)
                b.append(ba)
        sd = summarise_distances(np.concatenate(a), np.concatenate(b)) if a else (math.inf,) * 3
        pooled.append((2 * tp / den if den else 1.0, sd[2], sd[0], sd[1]))
    return per_case, np.array(pooled)


def test_sweep_matches_brute_force_loop():
    probs, refs, spacings = make_cases()
    res = sweep_thresholds(probs, refs, spacings, thresholds=TH)
    per_case, pooled = brute_force(probs, refs, spacings, TH)
    for c, expected in zip(res.case_names, per_case):
        got = np.stack([res.per_case[c][m] for m in ("dice", "msd", "hd", "hd95")], axis=1)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    got = np.stack([res.pooled[m] for m in ("dice", "msd", "hd", "hd95")], axis=1)
    np.testing.assert_allclose(got, pooled, rtol=1e-12, atol=1e-12)
    # mean of cases: Dice over all cases; distances over the cases where they are finite, with a count
    np.testing.assert_allclose(res.mean["dice"], np.mean([pc[:, 0] for pc in per_case], axis=0))
    hd = np.array([pc[:, 2] for pc in per_case])
    assert res.n_undefined["hd"].tolist() == (~np.isfinite(hd)).sum(axis=0).tolist()
    assert res.n_undefined["hd"][-1] == 1  # case 2 never reaches t = 1
    finite = np.where(np.isfinite(hd), hd, 0).sum(0) / np.maximum(np.isfinite(hd).sum(0), 1)
    np.testing.assert_allclose(res.mean["hd"], finite)


def test_sweep_matches_monai_including_whole_image_and_empty_thresholds():
    from monai.metrics import DiceMetric, compute_average_surface_distance, compute_hausdorff_distance

    probs, refs, spacings = make_cases(n=3)
    p, r = probs[1], refs[1]
    thresholds = [0.0, 0.3, 0.85]  # whole image, typical, above the maximum of case 2
    res = sweep_thresholds([p, probs[2]], [r, refs[2]], [SPACING, SPACING], thresholds=thresholds,
                           case_names=["a", "b"])
    for i, t in enumerate(thresholds):
        pred = torch.from_numpy((p >= np.float32(t))[None, None]).float()
        ref = torch.from_numpy(r[None, None]).float()
        d = DiceMetric(include_background=True, ignore_empty=False)(pred, ref).item()
        hd = compute_hausdorff_distance(pred, ref, include_background=True, spacing=SPACING).item()
        hd95 = compute_hausdorff_distance(pred, ref, include_background=True, spacing=SPACING, percentile=95).item()
        msd = compute_average_surface_distance(pred, ref, include_background=True, symmetric=True,
                                               spacing=SPACING).item()
        assert res.per_case["a"]["dice"][i] == pytest.approx(d, abs=1e-6)
        assert res.per_case["a"]["hd"][i] == pytest.approx(hd, abs=1e-6)
        assert res.per_case["a"]["hd95"][i] == pytest.approx(hd95, abs=1e-6)
        assert res.per_case["a"]["msd"][i] == pytest.approx(msd, abs=1e-6)
    assert res.per_case["b"]["dice"][2] == 0.0 and math.isinf(res.per_case["b"]["hd"][2])
    # the pooled value leaves the undefined case out and counts it
    assert res.pooled["hd"][2] == pytest.approx(res.per_case["a"]["hd"][2])
    assert res.n_undefined["msd"].tolist() == [0, 0, 1]


def test_dice_only_sweep_and_large_sparse_volume():
    probs, refs, spacings = make_cases(n=2)
    res = sweep_thresholds(probs, refs, spacings, metrics=("dice",))
    assert res.metrics == ("dice",) and res.thresholds.size == 101
    for c, p, r in zip(res.case_names, probs, refs):
        expected = [dice(p >= np.float32(t), r) for t in DEFAULT_THRESHOLDS]
        np.testing.assert_allclose(res.per_case[c]["dice"], expected, rtol=1e-12)
    # a small object in a big mostly-zero volume (the crop path), float64 map
    big = np.zeros((20, 60, 50))
    ref = np.zeros(big.shape, bool)
    ref[8:12, 20:30, 15:25] = True
    big[7:13, 18:32, 13:27] = 0.3
    big[ref] = 0.9
    res = sweep_thresholds([big], [ref], [SPACING], thresholds=[0.0, 0.2, 0.5, 0.95])
    assert res.pooled["dice"].tolist()[1:] == [2 * 400 / (6 * 14 * 14 + 400), 1.0, 0.0]
    assert res.pooled["hd"][2] == 0.0 and math.isinf(res.pooled["hd"][3])
    full = surface_distances(np.ones(big.shape, bool), ref, SPACING)
    assert res.pooled["hd"][0] == pytest.approx(full.hd) and res.pooled["msd"][0] == pytest.approx(full.msd)


def synthetic(thresholds, curves: dict, case="c") -> SweepResult:
    th = np.asarray(thresholds, dtype=float)
    curves = {m: np.asarray(v, dtype=float) for m, v in curves.items()}
    metrics = tuple(curves)
    return SweepResult(th, metrics, dict(curves), dict(curves), {m: np.zeros(th.size, int) for m in metrics},
                       {case: dict(curves)}, [case])


def test_optimum_loss_and_perturbation_arithmetic_on_synthetic_curves():
    th = DEFAULT_THRESHOLDS
    res = synthetic(th, {"dice": 0.9 - (th - 0.3) ** 2, "msd": 2.0 + 10 * np.abs(th - 0.6)})
    assert res.optimum("dice") == (pytest.approx(0.3), pytest.approx(0.9))
    assert res.loss_at(0.5, "dice") == pytest.approx(0.04 / 0.9)
    losses = res.perturbation_losses("dice")
    assert losses[0.05]["minus"] == pytest.approx(0.0025 / 0.9)
    assert losses[0.05]["plus"] == pytest.approx(0.0025 / 0.9)
    assert losses[0.1]["mean"] == pytest.approx(0.01 / 0.9)
    assert res.optimum("msd") == (pytest.approx(0.6), pytest.approx(2.0))
    assert res.loss_at(0.5, "msd") == pytest.approx(0.5)  # (3 - 2) / 2: relative increase
    assert res.perturbation_losses("msd", deltas=(0.02,))[0.02]["plus"] == pytest.approx(0.1)
    # near the edge: t_opt + delta outside the grid is None, the mean uses the other side
    edge = synthetic(th, {"dice": 1.0 - np.abs(th - 0.97)})
    p = edge.perturbation_losses("dice", deltas=(0.05,))[0.05]
    assert p["plus"] is None and p["minus"] == pytest.approx(0.05) and p["mean"] == pytest.approx(0.05)
    # off-grid thresholds are interpolated
    coarse = synthetic([0.0, 0.5, 1.0], {"dice": [0.2, 0.8, 0.4]})
    assert coarse.value_at(0.25, "dice") == pytest.approx(0.5)
    assert coarse.perturbation_losses("dice", deltas=(0.25,))[0.25]["plus"] == pytest.approx(0.2 / 0.8)


def test_ties_break_toward_one_half():
    th = DEFAULT_THRESHOLDS
    plateau = np.where((th >= 0.2) & (th <= 0.45), 0.8, 0.5)
    assert synthetic(th, {"dice": plateau}).optimum("dice")[0] == pytest.approx(0.45)
    two = np.where(np.isin(np.round(th, 2), [0.3, 0.7]), 0.9, 0.1)
    assert synthetic(th, {"dice": two}).optimum("dice")[0] == pytest.approx(0.3)  # equal distance: lower
    hd = np.where(th > 0.55, 4.0, 7.0)
    assert synthetic(th, {"hd": hd}).optimum("hd")[0] == pytest.approx(0.56)
    assert synthetic(th, {"dice": np.full(th.size, 0.7)}).optimum("dice")[0] == pytest.approx(0.5)


def test_relative_loss_edge_cases():
    assert relative_loss(0.5, 1.0, True) == 0.5
    assert relative_loss(3.0, 2.0, False) == 0.5
    assert relative_loss(0.0, 0.0, False) == 0.0
    assert math.isinf(relative_loss(1.0, 0.0, False))
    assert relative_loss(math.inf, math.inf, False) == 0.0
    assert math.isinf(relative_loss(math.inf, 2.0, False))


def test_prominence_on_known_masks():
    a = np.zeros((4, 5, 5), bool)
    a[0, 0, :3] = True  # 3 of 100
    b = np.zeros((2, 5, 5), bool)
    b[1] = True  # 25 of 50
    assert prominence([a, b]) == pytest.approx(28 / 150)
    assert prominence([Volume(a)]) == pytest.approx(0.03)
    with pytest.raises(InputError):
        prominence([])


def test_correlation_is_scipy_pearson():
    rng = np.random.default_rng(4)
    x = rng.uniform(1e-4, 1e-1, 10)
    y = 0.1 + 2 * x + rng.normal(0, 0.02, 10)
    r, p = correlate_prominence(x, y)
    ref = stats.pearsonr(x, y)
    assert r == pytest.approx(ref[0]) and p == pytest.approx(ref[1])
    r, p = correlate_prominence([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])
    assert math.isnan(r) and math.isnan(p)
    with pytest.raises(InputError):
        correlate_prominence([0.1, 0.2], [0.3])
    with pytest.raises(InputError):
        correlate_prominence([0.1], [0.3])


def test_apply_threshold_keeps_geometry_and_uses_ge():
    arr = np.array([0.1, 0.29, 0.3, 0.7, 1.0], dtype=np.float32).reshape(1, 1, 5)
    vol = Volume(arr, spacing=(0.7, 0.8, 3.0), origin=(1.0, -2.0, 5.0), direction=np.diag([1.0, -1.0, 1.0]))
    out = apply_threshold(vol, 0.3)
    assert out.array.dtype == bool and out.array.ravel().tolist() == [False, False, True, True, True]
    assert out.same_grid(vol)
    assert apply_threshold(arr, 0.29).ravel().tolist() == [False, True, True, True, True]
    logits = special.logit(arr.astype(float).clip(1e-6, 1 - 1e-6))
    assert apply_threshold(logits * 1.0, 0.5, logits=True).ravel().tolist() == [False, False, False, True, True]


def test_bad_input_errors():
    probs, refs, spacings = make_cases(n=1)
    p = probs[0].copy()
    p[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        sweep_thresholds([p], refs, spacings)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        sweep_thresholds([probs[0] * 2 - 0.5], refs, spacings)
    with pytest.raises(InputError, match="shape"):
        sweep_thresholds(probs, [refs[0][:, :, 1:]], spacings)
    with pytest.raises(InputError, match="spacing"):
        sweep_thresholds(probs, refs, [(1.0, -1.0, 1.0)])
    with pytest.raises(InputError, match="threshold"):
        sweep_thresholds(probs, refs, spacings, thresholds=[])
    with pytest.raises(InputError, match="threshold"):
        sweep_thresholds(probs, refs, spacings, thresholds=[0.5, 1.5])
    with pytest.raises(InputError, match="metrics"):
        sweep_thresholds(probs, refs, spacings, metrics=("dice", "volume"))
    with pytest.raises(InputError, match="cases"):
        sweep_thresholds(probs, refs + refs, spacings)
    with pytest.raises(InputError, match="NaN"):
        apply_threshold(p, 0.5)
    with pytest.raises(InputError):
        parse_thresholds("1:0:0.1")
    with pytest.raises(InputError):
        parse_thresholds("a,b")


def test_logits_opt_in_applies_sigmoid():
    probs, refs, spacings = make_cases(n=1)
    logits = special.logit(np.clip(probs[0].astype(np.float64), 1e-7, 1 - 1e-7))
    a = sweep_thresholds([logits], refs, spacings, thresholds=[0.2, 0.5], logits=True)
    b = sweep_thresholds([special.expit(logits)], refs, spacings, thresholds=[0.2, 0.5])
    np.testing.assert_allclose(a.pooled["dice"], b.pooled["dice"])
    np.testing.assert_allclose(a.pooled["hd95"], b.pooled["hd95"])


def test_missing_structure_is_reported_and_the_sweep_continues():
    probs, refs, spacings = make_cases(n=3)
    empty = np.zeros_like(refs[2])
    res = sweep_thresholds(probs, [refs[0], None, empty], spacings, thresholds=[0.3, 0.5],
                           case_names=["p1", "p2", "p3"])
    assert res.case_names == ["p1", "p3"]
    reasons = dict(res.problems)
    assert "missing" in reasons["p2"] and "empty" in reasons["p3"]
    assert res.per_case["p3"]["dice"].tolist() == [0.0, 0.0]  # prediction where the reference is empty
    assert math.isinf(res.per_case["p3"]["hd"][0])
    assert res.pooled["hd"][0] == pytest.approx(res.per_case["p1"]["hd"][0])
    with pytest.raises(InputError, match="cases"):
        sweep_thresholds(probs[:1], [None], spacings[:1])


def test_parse_thresholds_and_tables():
    assert parse_thresholds("0:1:0.01").tolist() == DEFAULT_THRESHOLDS.tolist()
    assert parse_thresholds("0.5,0.1,0.5").tolist() == [0.1, 0.5]
    assert parse_thresholds("0.2:0.3:0.05").tolist() == [0.2, 0.25, 0.3]
    probs, refs, spacings = make_cases(n=2)
    res = sweep_thresholds(probs, refs, spacings, thresholds="0:1:0.25", structure="Blob")
    table = res.to_table()
    assert [r["threshold"] for r in table] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert set(["threshold", "dice", "msd_mm", "hd_mm", "hd95_mm", "dice_mean", "n_undefined_hd"]) <= set(table[0])
    assert len(res.per_case_table()) == 10
    summary = res.summary()
    text = json.dumps(summary, allow_nan=False)
    back = json.loads(text)
    t_opt, v_opt = res.optimum("dice")
    assert back["metrics"]["dice"]["pooled"]["optimum_threshold"] == t_opt
    assert back["metrics"]["dice"]["pooled"]["loss_at_0.5"] == pytest.approx(res.loss_at(0.5, "dice"))
    assert back["structure"] == "Blob" and back["cases"] == res.case_names
    assert set(back["metrics"]["hd"]["pooled"]["perturbation_losses"]) == {"0.02", "0.05", "0.1"}


def test_torch_path_gives_the_same_values():
    probs, refs, spacings = make_cases(n=3)
    a = sweep_thresholds(probs, refs, spacings, thresholds=TH, device="numpy")
    b = sweep_thresholds(probs, refs, spacings, thresholds=TH, device="cpu")  # the GPU code path, on CPU torch
    for m in ("dice", "msd", "hd", "hd95"):
        np.testing.assert_allclose(b.pooled[m], a.pooled[m], rtol=1e-12, atol=1e-12)
        for c in a.case_names:
            np.testing.assert_allclose(b.per_case[c][m], a.per_case[c][m], rtol=1e-12, atol=1e-12)
    with pytest.raises(InputError, match="device"):
        sweep_thresholds(probs, refs, spacings, thresholds=TH, device="nonsense")
    if torch.cuda.is_available():
        g = sweep_thresholds(probs, refs, spacings, thresholds=TH, device="cuda")
        np.testing.assert_allclose(g.pooled["hd95"], a.pooled["hd95"], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(g.pooled["msd"], a.pooled["msd"], rtol=1e-12, atol=1e-12)
    else:
        with pytest.raises(InputError, match="CUDA"):
            sweep_thresholds(probs, refs, spacings, thresholds=TH, device="cuda")


@pytest.mark.parametrize("shape", [(5, 7, 9), (1, 6, 5), (2, 3, 4), (3, 1, 4), (12, 15, 11)])
def test_whole_image_border_distances_are_exact(shape):
    """The separable face-distance computation used for thresholds that select the whole image equals a
    k-d tree query from every border voxel."""
    from scipy.spatial import cKDTree

    from AutoSegSensitivity.sweep import _border_distances, _border_points

    rng = np.random.default_rng(sum(shape))
    idx = np.stack([rng.integers(0, n, 30) for n in shape], axis=1)
    spacing = np.array([2.5, 0.7, 1.3])
    border = _border_points(shape)
    mask = np.zeros(shape, bool)
    mask[tuple(border.T)] = True
    assert len(border) == mask.sum() == surface_mask_count(shape)
    expected = cKDTree(idx * spacing).query(border * spacing)[0]
    np.testing.assert_allclose(_border_distances(idx, shape, spacing), expected, rtol=1e-12, atol=1e-12)


def surface_mask_count(shape):
    from AutoSegSensitivity.metrics import surface_mask

    return int(surface_mask(np.ones(shape, bool)).sum())


def test_sweep_volumes_checks_grids_and_takes_spacing_from_the_reference():
    from AutoSegSensitivity.sweep import sweep_volumes

    probs, refs, _ = make_cases(n=2)
    spacing_xyz = SPACING[::-1]
    pv = [Volume(p, spacing_xyz, (1.0, 2.0, 3.0)) for p in probs]
    rv = [Volume(r.astype(np.uint8), spacing_xyz, (1.0, 2.0, 3.0)) for r in refs]
    a = sweep_volumes(pv, rv, thresholds=TH)
    b = sweep_thresholds(probs, refs, [SPACING] * 2, thresholds=TH)
    np.testing.assert_allclose(a.pooled["msd"], b.pooled["msd"], rtol=1e-12)
    moved = Volume(probs[0], spacing_xyz, (1.5, 2.0, 3.0))
    with pytest.raises(InputError, match="grid"):
        sweep_volumes([moved, pv[1]], rv, thresholds=TH)
    c = sweep_volumes([moved, pv[1]], [rv[0], None], thresholds=TH, resample=True)
    assert c.case_names == ["case000"] and dict(c.problems)["case001"].startswith("structure missing")
