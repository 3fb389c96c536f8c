"""Surface Dice at tolerance (NSD) against DeepMind's reference package ``surface-distance`` (test extra),
and the sweep's fast NSD against the plain per-threshold metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from surface_distance import lookup_tables as sd_tables
from surface_distance import metrics as sd_metrics

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.metrics import compare_masks, nsd_column, surface_dice, surfel_area_table
from AutoSegSensitivity.sweep import METRICS, SWEEP_METRICS, sweep_thresholds

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _numpy2_shim(monkeypatch):
    """surface-distance 0.1 writes ``np.Inf`` for an empty mask, which numpy 2 removed: give it back to the
    package for the duration of a test (the package itself is unchanged)."""
    monkeypatch.setattr(np, "Inf", np.inf, raising=False)


def reference_nsd(pred, ref, spacing, tau):
    dist = sd_metrics.compute_surface_distances(np.asarray(ref, bool), np.asarray(pred, bool), spacing)
    return float(sd_metrics.compute_surface_dice_at_tolerance(dist, tau))


def blob(rng, shape, q, sigma=2.0):
    x = ndimage.gaussian_filter(rng.random(shape), sigma)
    return x > np.quantile(x, q)


def _reverse_bits(code, width):
    return int(format(code, f"0{width}b")[::-1], 2)


def test_surfel_areas_equal_the_reference_tables_for_every_code():
    # the package numbers corners the other way round (bit 7 - (4i + 2j + k)); same areas per configuration
    rng = np.random.default_rng(0)
    for spacing in [(1.0, 1.0, 1.0), (2.5, 0.7, 1.3)] + [tuple(rng.uniform(0.2, 5.0, 3)) for _ in range(6)]:
        ours = surfel_area_table(spacing)
        theirs = sd_tables.create_table_neighbour_code_to_surface_area(spacing)
        perm = [_reverse_bits(c, 8) for c in range(256)]
        np.testing.assert_allclose(ours[perm], theirs, rtol=1e-12, atol=1e-12)
    for spacing in [(1.0, 1.0), (0.6, 2.2)]:
        ours = surfel_area_table(spacing)
        theirs = sd_tables.create_table_neighbour_code_to_contour_length(spacing)
        np.testing.assert_allclose(ours[[_reverse_bits(c, 4) for c in range(16)]], theirs, rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_nsd_matches_surface_distance_on_random_anisotropic_shapes(seed):
    rng = np.random.default_rng(seed)
    shape = (16, 21, 19)
    spacing = tuple(rng.uniform(0.4, 3.0, 3))
    ref = blob(rng, shape, 0.7)
    pred = ndimage.binary_dilation(ref, iterations=int(rng.integers(1, 3))) ^ (rng.random(shape) > 0.96)
    pred[:, :, : int(rng.integers(0, 6))] = False  # a cut: parts far from the reference
    for tau in (0.5, 1.7, 3.3):
        assert surface_dice(pred, ref, spacing, tau) == pytest.approx(reference_nsd(pred, ref, spacing, tau),
                                                                      abs=1e-4)


def test_nsd_matches_surface_distance_in_2d_and_at_the_array_border():
    rng = np.random.default_rng(7)
    ref2 = blob(rng, (30, 27), 0.6, 1.5)
    pred2 = np.roll(ref2, 2, axis=1)
    assert surface_dice(pred2, ref2, (0.8, 1.9), 2.0) == pytest.approx(reference_nsd(pred2, ref2, (0.8, 1.9), 2.0),
                                                                        abs=1e-4)
    ref3 = np.zeros((8, 9, 10), bool)
    ref3[:, 2:9, 3:] = True  # touches the array's faces
    pred3 = np.ones_like(ref3)
    sp = (3.0, 0.9, 1.1)
    assert surface_dice(pred3, ref3, sp, 2.5) == pytest.approx(reference_nsd(pred3, ref3, sp, 2.5), abs=1e-4)


def test_nsd_is_not_a_voxel_count():
    # a 4x4x4 cube against itself shifted by one voxel along z (spacing 3 mm) with tolerance 1 mm: only the
    # side walls are within tolerance; the result is the area fraction, not the fraction of surface voxels
    a = np.zeros((10, 10, 10), bool)
    a[3:7, 3:7, 3:7] = True
    b = np.roll(a, 1, axis=0)
    sp = (3.0, 1.0, 1.0)
    ours = surface_dice(b, a, sp, 1.0)
    assert ours == pytest.approx(reference_nsd(b, a, sp, 1.0), abs=1e-12)
    surf = a ^ ndimage.binary_erosion(a)
    voxel_fraction = 1.0 - np.count_nonzero(surf[[3, 6]]) / np.count_nonzero(surf)
    assert abs(ours - voxel_fraction) > 0.05


def test_empty_mask_rules():
    e = np.zeros((6, 7, 8), bool)
    a = e.copy()
    a[2:4, 2:5, 3:6] = True
    assert surface_dice(e, e, (1, 1, 1)) == 1.0  # the package gives NaN; we follow Dice
    assert surface_dice(a, e, (1, 2, 3)) == 0.0 == reference_nsd(a, e, (1, 2, 3), 2.0)
    assert surface_dice(e, a, (1, 2, 3)) == 0.0 == reference_nsd(e, a, (1, 2, 3), 2.0)
    assert math.isnan(reference_nsd(e, e, (1, 1, 1), 2.0))
    assert compare_masks(e, e, (1, 1, 1))["nsd_2mm"] == 1.0
    assert compare_masks(a, e, (1, 1, 1))["nsd_2mm"] == 0.0


def test_compare_masks_column_and_tolerance_validation():
    assert nsd_column(2.0) == "nsd_2mm" and nsd_column(1.5) == "nsd_1.5mm" and nsd_column(0.25) == "nsd_0.25mm"
    rng = np.random.default_rng(3)
    ref = blob(rng, (12, 14, 13), 0.7)
    pred = np.roll(ref, 1, axis=2)
    m = compare_masks(pred, ref, (2.0, 0.8, 0.8), nsd_tolerance_mm=1.5)
    assert m["nsd_1.5mm"] == pytest.approx(reference_nsd(pred, ref, (2.0, 0.8, 0.8), 1.5), abs=1e-4)
    for bad in (-1.0, float("nan"), "x"):
        with pytest.raises(InputError, match="tolerance"):
            surface_dice(pred, ref, (1, 1, 1), bad)


def test_sweep_nsd_equals_the_metric_at_every_threshold_pooled_by_area():
    rng = np.random.default_rng(5)
    probs, refs, spacings = [], [], []
    for i in range(3):
        x = ndimage.gaussian_filter(rng.random((14, 18, 16)), 2.0)
        x = (x - x.min()) / (x.max() - x.min())
        if i == 2:
            x = 0.1 + 0.8 * x  # thresholds 0 and 0.05 select the whole image
        probs.append(x.astype(np.float32))
        refs.append(x > 0.55)
        spacings.append(tuple(rng.uniform(0.5, 2.5, 3)))
    refs[1] = np.zeros_like(refs[1])  # an empty reference: NSD 0 wherever something is predicted
    th = np.round(np.arange(0, 1.0001, 0.05), 2)
    res = sweep_thresholds(probs, refs, spacings, thresholds=th, metrics=("dice", "nsd"), device="numpy",
                           nsd_tolerance=1.7)
    for c, (p, r, s) in enumerate(zip(probs, refs, spacings)):
        expected = [surface_dice(p >= np.float32(t), r, s, 1.7) for t in th]
        np.testing.assert_allclose(res.per_case[f"case{c:03d}"]["nsd"], expected, rtol=0, atol=1e-12)
    # pooled: all cases' areas within tolerance over all areas, checked with the package's surfel areas
    i = int(np.flatnonzero(th == 0.5)[0])
    num = den = 0.0
    for p, r, s in zip(probs, refs, spacings):
        d = sd_metrics.compute_surface_distances(r, p >= np.float32(0.5), s)
        num += d["surfel_areas_gt"][d["distances_gt_to_pred"] <= 1.7].sum()
        num += d["surfel_areas_pred"][d["distances_pred_to_gt"] <= 1.7].sum()
        den += d["surfel_areas_gt"].sum() + d["surfel_areas_pred"].sum()
    assert res.pooled["nsd"][i] == pytest.approx(num / den, abs=1e-4)
    assert res.mean["nsd"][i] == pytest.approx(np.mean([res.per_case[c]["nsd"][i] for c in res.case_names]))
    t_opt, v_opt = res.optimum("nsd")
    assert v_opt == pytest.approx(res.pooled["nsd"].max())
    loss = res.loss_at(0.5, "nsd")
    assert loss == pytest.approx((v_opt - res.pooled["nsd"][i]) / v_opt)
    row = res.to_table()[i]
    assert row["nsd"] == res.pooled["nsd"][i] and "nsd_mean" in row and "n_undefined_nsd" not in row
    summary = res.summary()
    assert summary["metrics"]["nsd"]["tolerance_mm"] == 1.7
    assert summary["metrics"]["nsd"]["higher_is_better"] is True and summary["metrics"]["nsd"]["unit"] == ""


def test_sweep_nsd_with_distance_metrics_and_a_bad_tolerance():
    rng = np.random.default_rng(9)
    x = ndimage.gaussian_filter(rng.random((12, 15, 14)), 2.0)
    p = ((x - x.min()) / (x.max() - x.min())).astype(np.float32)
    r = p > 0.5
    res = sweep_thresholds([p], [r], [(1.5, 1.0, 0.7)], thresholds="0.3,0.5,0.7", device="numpy",
                           metrics=SWEEP_METRICS)
    assert res.metrics == SWEEP_METRICS == ("dice", "nsd", "msd", "hd", "hd95")
    # the library's default stays the four metrics of paper 000 (readers that name columns themselves)
    assert sweep_thresholds([p], [r], [(1, 1, 1)], thresholds=[0.5]).metrics == METRICS == ("dice", "msd", "hd", "hd95")
    np.testing.assert_allclose(res.pooled["nsd"], [surface_dice(p >= np.float32(t), r, (1.5, 1.0, 0.7)) for t in
                                                   (0.3, 0.5, 0.7)], atol=1e-12)
    with pytest.raises(InputError, match="tolerance"):
        sweep_thresholds([p], [r], [(1, 1, 1)], metrics=("nsd",), nsd_tolerance=-2)


def test_sweep_nsd_at_the_image_border_with_tied_probabilities_and_a_wide_tolerance():
    rng = np.random.default_rng(11)
    x = ndimage.gaussian_filter(rng.random((10, 16, 15)), 1.5)
    p = np.round((x - x.min()) / (x.max() - x.min()), 1).astype(np.float32)  # many ties, p = 0 and 1 present
    r = np.zeros(p.shape, bool)
    r[:4, :7, 9:] = True  # touches three faces of the image
    th = np.round(np.arange(0, 1.0001, 0.1), 2)
    for tau, spacing in ((5.0, (2.0, 0.7, 0.9)), (0.0, (1.0, 1.0, 1.0))):
        res = sweep_thresholds([p], [r], [spacing], thresholds=th, metrics=("nsd",), nsd_tolerance=tau)
        expected = [surface_dice(p >= np.float32(t), r, spacing, tau) for t in th]
        np.testing.assert_allclose(res.pooled["nsd"], expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(expected, [reference_nsd(p >= np.float32(t), r, spacing, tau) for t in th],
                                   atol=1e-4)


def test_sweep_figures_name_the_tolerance(tmp_path):
    from AutoSegSensitivity.report import _label, plot_sweep, plot_sweep_metrics

    rng = np.random.default_rng(2)
    x = ndimage.gaussian_filter(rng.random((8, 12, 12)), 1.5)
    p = ((x - x.min()) / (x.max() - x.min())).astype(np.float32)
    res = sweep_thresholds([p], [p > 0.5], [(2.0, 1.0, 1.0)], thresholds="0:1:0.1", metrics=("dice", "nsd"),
                           nsd_tolerance=1.5)
    assert _label("nsd", res) == "surface Dice at 1.5 mm" and _label("dice", res) == "Dice"
    for path in (plot_sweep(res, tmp_path / "nsd.png", metric="nsd"), plot_sweep_metrics(res, tmp_path / "all.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_nsd_is_exact_where_nothing_is_predicted_and_where_every_surfel_is_within_tolerance():
    """Review finding: the sweep's surfel areas are running sums of float differences, so an empty
    prediction came out as ~1e-12 of area (NSD 0 instead of the documented 1 for two empty masks) and a
    perfect plateau as 1 + 3e-10 (above 1, and larger than the optimum's tie tolerance). Both are exact now."""
    from AutoSegSensitivity.metrics import surface_dice
    from AutoSegSensitivity.sweep import sweep_thresholds

    rng = np.random.default_rng(0)
    p = rng.random((5, 6, 7)).astype(np.float32)
    empty = np.zeros(p.shape, bool)
    res = sweep_thresholds([p], [empty], [(2.5, 0.8, 0.8)], thresholds="0:1:0.25", metrics=("dice", "nsd"),
                           device="numpy")
    expected = [surface_dice(p >= np.float32(t), empty, (2.5, 0.8, 0.8)) for t in (0, 0.25, 0.5, 0.75, 1.0)]
    np.testing.assert_array_equal(res.per_case["case000"]["nsd"], expected)  # ... 0, 0, 1 (both empty)
    z, y, x = np.meshgrid(*[np.arange(n) for n in (24, 48, 48)], indexing="ij")
    d = np.sqrt(((z - 12) * 2.5) ** 2 + ((y - 24) * 0.8) ** 2 + ((x - 24) * 0.8) ** 2)
    prob = (1.0 / (1.0 + np.exp((d - 12.0) / 1.0))).astype(np.float32)
    res = sweep_thresholds([prob], [d <= 12.0], [(2.5, 0.8, 0.8)], metrics=("nsd",), device="numpy")
    nsd = res.pooled["nsd"]
    assert nsd.max() == 1.0 and (nsd == 1.0).sum() >= 3  # a plateau of exact ones, nothing above 1
    t_opt, _ = res.optimum("nsd")
    plateau = res.thresholds[nsd == 1.0]
    assert t_opt == plateau[np.argmin(np.abs(plateau - 0.5))]  # ties toward 0.5, not decided by round-off
