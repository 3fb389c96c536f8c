"""Calibration (AutoSegSensitivity/calibration.py) against brute force over the full voxels, and on maps made
miscalibrated on purpose with a known temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from AutoSegSensitivity import calibration as C
from AutoSegSensitivity.tune import fold_assignment

SPACING = (2.0, 0.9, 1.3)


def _phantom(shape=(16, 40, 36), seed=0, T0=1.0, clip=1e-3):
    """Calibrated maps q (a soft sphere) with labels ~ Bernoulli(q), made miscalibrated:
    p = sigmoid(logit(q) * T0), so that sigmoid(logit(p) / T0) = q."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    c = np.array(shape) / 2 + rng.normal(0, 0.5, 3)
    r = np.sqrt(((z - c[0]) * SPACING[0]) ** 2 + ((y - c[1]) * SPACING[1]) ** 2 + ((x - c[2]) * SPACING[2]) ** 2)
    q = np.clip(1.0 / (1.0 + np.exp((r - 9.0) / 2.0)), clip, 1 - clip)
    lab = rng.random(shape) < q
    p = 1.0 / (1.0 + np.exp(-np.log(q / (1 - q)) * T0))
    return p.astype(np.float32), lab


def _brute_region(p, ref, spacing, margin):
    """p >= 0.01, or within margin mm of a reference voxel: every voxel against every reference voxel."""
    idx = np.argwhere(np.ones(p.shape, bool)) * np.asarray(spacing)
    refs = np.argwhere(ref) * np.asarray(spacing)
    near = np.zeros(p.size, bool)
    if refs.size:
        for chunk in np.array_split(np.arange(p.size), 20):
            d2 = ((idx[chunk, None, :] - refs[None, :, :]) ** 2).sum(-1).min(axis=1)
            near[chunk] = d2 <= margin ** 2 + 1e-9
    return (p.ravel() >= np.float32(0.01)) | near


def _brute(p, y, T, n_bins=C.RELIABILITY_BINS):
    """NLL, Brier and ECE over voxels (p already in the region), each voxel at its own logit; the reliability
    bins grouped as calibration.py defines them (whole fine bins, a fine bin to the bin of its middle voxel)."""
    pc = np.clip(p.astype(np.float64), C.EPS, 1 - C.EPS)
    z = np.log(pc) - np.log1p(-pc)
    q = 1 / (1 + np.exp(-z / T))
    yy = y.astype(float)
    nll = np.mean(np.where(y, np.log1p(np.exp(-z / T)), np.log1p(np.exp(z / T))))
    brier = np.mean((q - yy) ** 2)
    fine = np.clip(((z + C.LOGIT_MAX) / C.BIN_WIDTH).astype(int), 0, C.N_FINE - 1)
    counts = np.bincount(fine, minlength=C.N_FINE)
    mid = np.cumsum(counts) - counts / 2
    rel = np.minimum((n_bins * mid / p.size).astype(int), n_bins - 1)[fine]
    ece, bins = 0.0, []
    for b in np.unique(rel):
        sel = rel == b
        ece += sel.sum() / p.size * abs(q[sel].mean() - yy[sel].mean())
        bins.append((int(sel.sum()), q[sel].mean(), yy[sel].mean()))
    return nll, brier, ece, bins


def test_region_is_dilated_reference_or_p_at_least_001():
    rng = np.random.default_rng(1)
    p = (rng.random((8, 12, 10)) * 0.02).astype(np.float32)
    ref = np.zeros(p.shape, bool)
    ref[3:5, 5:7, 4:6] = True
    for margin in (0.0, 2.5, 4.0):
        got = C.calibration_region(p, ref, SPACING, margin)
        np.testing.assert_array_equal(got.ravel(), _brute_region(p, ref, SPACING, margin))
    # anisotropic spacing honoured: 4 mm reaches 2 slices along z (2 mm) but 4 rows along y (0.9 mm)
    only = C.calibration_region(np.zeros_like(p), ref, SPACING, 4.0)
    assert only[1, 5, 4] and not only[0, 5, 4] and only[3, 1, 4] and not only[3, 0, 4]
    empty = C.calibration_region(p, np.zeros_like(ref), SPACING, 10.0)
    np.testing.assert_array_equal(empty, p >= np.float32(0.01))


@pytest.mark.parametrize("T", [1.0, 0.6, 2.5])
def test_histogram_statistics_within_the_stated_bound_of_brute_force(T):
    p, lab = _phantom(seed=3, T0=1.7)
    p[0, 0, :3] = (0.0, 1.0, 0.5)  # exact 0 and 1 are clipped
    counts = C.case_calibration(p, lab, SPACING, 6.0)
    region = C.calibration_region(p, lab, SPACING, 6.0)
    assert counts.total == region.sum() and counts.n[1].sum() == (lab & region).sum()
    got = C.metrics_at(counts, T)
    nll, brier, ece, bins = _brute(p[region], lab[region], T)
    b = {k: v / T ** 2 for k, v in C.ERROR_BOUNDS.items()}
    assert abs(got.nll - nll) <= b["nll"] + 1e-12
    assert abs(got.brier - brier) <= b["brier"] + 1e-12
    assert abs(got.ece - ece) <= b["ece"] + 1e-12
    assert got.nll != nll  # the approximation is real (the bound is what is tested)
    assert [x.count for x in got.bins] == [x[0] for x in bins] and sum(x.count for x in got.bins) == region.sum()
    for g, (_, mp, ob) in zip(got.bins, bins):
        assert abs(g.mean_p - mp) <= b["ece"] + 1e-12 and abs(g.observed - ob) <= 1e-12
        assert g.p_low <= g.mean_p <= g.p_high


def test_fitted_temperature_matches_brute_force_minimum():
    p, lab = _phantom(seed=4, T0=0.7)
    counts = C.case_calibration(p, lab, SPACING, 10.0)
    region = C.calibration_region(p, lab, SPACING, 10.0)
    pc = np.clip(p[region].astype(np.float64), C.EPS, 1 - C.EPS)
    z, y = np.log(pc) - np.log1p(-pc), lab[region]

    def nll(log_t):
        t = math.exp(log_t)
        return np.mean(np.where(y, np.logaddexp(0, -z / t), np.logaddexp(0, z / t)))

    brute = math.exp(minimize_scalar(nll, bounds=(-4, 4), method="bounded", options={"xatol": 1e-9}).x)
    assert C.fit_temperature(counts) == pytest.approx(brute, rel=1e-3)


@pytest.mark.parametrize("T0", [0.5, 2.0])
def test_known_temperature_is_recovered_within_5_percent(T0):
    """Maps under-confident (T0 = 0.5) or over-confident (T0 = 2) on purpose, over 6 cases with the default
    10 mm region: tune's cross-validated calibration recovers T0 and improves NLL and ECE held out."""
    cases = [_phantom(seed=10 + i, T0=T0) for i in range(6)]
    counts = [C.case_calibration(p, lab, SPACING) for p, lab in cases]
    folds = fold_assignment(len(counts), 3)
    cal = C.calibrate_structure(counts, folds, t_opt=0.3, fold_thresholds=[0.3, 0.35, 0.25])
    assert abs(cal.temperature / T0 - 1) < 0.05
    assert all(abs(t / T0 - 1) < 0.05 for t in cal.fold_temperatures)
    assert cal.cv_after.nll < cal.before.nll and cal.cv_after.ece < cal.before.ece
    assert cal.after.ece < 0.02
    # the optimum threshold moves to sigmoid(logit(t) / T)
    assert cal.t_opt_calibrated == pytest.approx(1 / (1 + ((1 - 0.3) / 0.3) ** (1 / cal.temperature)))


def test_cross_validation_fits_each_fold_on_the_other_folds_and_pools_held_out():
    cases = [_phantom(seed=20 + i, T0=0.5 + 0.3 * i) for i in range(5)]
    counts = [C.case_calibration(p, lab, SPACING, 5.0) for p, lab in cases]
    folds = list(fold_assignment(5, 3))
    cal = C.calibrate_structure(counts, folds, t_opt=0.5, fold_thresholds=[0.5, 0.5, 0.5])
    for k in range(3):
        train = C.sum_counts([c for c, f in zip(counts, folds) if f != k])
        assert cal.fold_temperatures[k] == C.fit_temperature(train)
    # held-out NLL by brute force: every voxel of a case at its fold's temperature
    terms = []
    for (p, lab), f in zip(cases, folds):
        region = C.calibration_region(p, lab, SPACING, 5.0)
        pc = np.clip(p[region].astype(np.float64), C.EPS, 1 - C.EPS)
        z, y = (np.log(pc) - np.log1p(-pc)) / cal.fold_temperatures[f], lab[region]
        terms.append(np.where(y, np.logaddexp(0, -z), np.logaddexp(0, z)))
    brute = np.concatenate(terms).mean()
    bound = C.ERROR_BOUNDS["nll"] / min(cal.fold_temperatures) ** 2
    assert abs(cal.cv_after.nll - brute) <= bound + 1e-12
    assert cal.cv_after.n_voxels == sum(c.total for c in counts)
    # one case: no cross-validation, the in-sample numbers still there
    single = C.calibrate_structure(counts[:1], None, t_opt=0.5)
    assert single.cv_after is None and single.fold_temperatures == [] and math.isfinite(single.after.nll)


def test_calibrated_maps_keep_the_segmentation():
    p, _ = _phantom(seed=5, T0=0.6)
    p[0, 0, :2] = (0.0, 1.0)
    for T, t in ((0.6, 0.2), (2.3, 0.75)):
        q = C.calibrate_array(p, T)
        assert q.dtype == np.float32 and q[0, 0, 0] == 0.0 and q[0, 0, 1] == 1.0
        tc = C.calibrate_threshold(t, T)
        differ = (q >= np.float32(tc)) != (p >= np.float32(t))
        assert np.all(np.abs(q[differ].astype(float) - tc) < 1e-6)  # only float32 rounding at the threshold
        assert np.all(np.diff(q.ravel()[np.argsort(p.ravel(), kind="stable")]) >= 0)  # monotone
    assert C.calibrate_threshold(0.0, 2.0) == 0.0 and C.calibrate_threshold(1.0, 0.5) == 1.0


def test_degenerate_inputs():
    empty = C.CalibrationCounts.empty()
    assert math.isnan(C.fit_temperature(empty)) and math.isnan(C.metrics_at(empty).nll)
    p = np.full((4, 5, 6), 0.3, np.float32)
    only_neg = C.case_calibration(p, np.zeros(p.shape, bool), SPACING)
    assert math.isnan(C.fit_temperature(only_neg))  # no positive voxel: no temperature
    lab = np.zeros(p.shape, bool)
    lab[:2] = True
    sep = C.case_calibration(np.where(lab, 0.9, 0.1).astype(np.float32), lab, SPACING)
    assert C.fit_temperature(sep) == C.T_BOUNDS[0]  # separable: as sharp as allowed
