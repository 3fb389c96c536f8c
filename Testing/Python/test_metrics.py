"""Metrics against independent implementations: MONAI 1.6 (surface conventions), SimpleITK, brute force."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.metrics import (
    COMPARE_KEYS,
    compare_masks,
    compare_segmentations,
    compare_volumes,
    dice,
    directed_surface_distances,
    jaccard,
    mean_finite,
    percentile,
    surface_distances,
    surface_mask,
)
from AutoSegSensitivity.segmentation import Segmentation
from AutoSegSensitivity.volume import Volume

SPACING = (2.5, 0.8, 1.1)  # (z, y, x) mm, anisotropic


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def blob(seed: int, shape=(14, 22, 20), level=0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 2.0) > level


def ellipsoid(shape, centre, radii) -> np.ndarray:
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((gi - c) / r) ** 2 for gi, c, r in zip(g, centre, radii)) <= 1.0


def monai_surface(a: np.ndarray, b: np.ndarray, spacing):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    A = torch.from_numpy(a[None, None].astype(np.float32))
    B = torch.from_numpy(b[None, None].astype(np.float32))
    hd = compute_hausdorff_distance(A, B, include_background=True, spacing=spacing).item()
    hd95 = compute_hausdorff_distance(A, B, include_background=True, spacing=spacing, percentile=95).item()
    msd = compute_average_surface_distance(A, B, include_background=True, symmetric=True, spacing=spacing).item()
    return hd, hd95, msd


def sitk_image(a: np.ndarray, spacing_zyx) -> sitk.Image:
    img = sitk.GetImageFromArray(a.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    return img


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_surface_metrics_match_monai(seed):
    a, b = blob(seed), blob(seed + 100, level=0.52)
    assert a.any() and b.any()
    ours = surface_distances(a, b, SPACING)
    hd, hd95, msd = monai_surface(a, b, SPACING)
    assert ours.hd == pytest.approx(hd, abs=1e-6)
    assert ours.hd95 == pytest.approx(hd95, abs=1e-6)
    assert ours.msd == pytest.approx(msd, abs=1e-6)
    # the symmetric metrics do not depend on the order of the arguments
    rev = surface_distances(b, a, SPACING)
    assert rev.hd == pytest.approx(ours.hd, abs=1e-12) and rev.msd == pytest.approx(ours.msd, abs=1e-12)


def test_surface_metrics_match_monai_touching_border_and_2d():
    a = np.zeros((8, 12, 10), bool)
    a[:, :6, :] = True  # touches five faces of the array: those voxels are surface voxels
    b = np.zeros_like(a)
    b[2:8, 3:12, 4:10] = True
    ours = surface_distances(a, b, SPACING)
    for o, m in zip(ours, monai_surface(a, b, SPACING)):
        assert o == pytest.approx(m, abs=1e-6)
    a2, b2 = blob(5, (30, 28))[None][0], blob(6, (30, 28))[None][0]
    ours2 = surface_distances(a2, b2, (0.7, 1.3))
    for o, m in zip(ours2, monai_surface(a2, b2, (0.7, 1.3))):
        assert o == pytest.approx(m, abs=1e-6)


def test_surface_mask_is_monai_edges():
    from monai.metrics.utils import get_mask_edges

    a, b = blob(7), blob(8)
    a[0, :, :5] = True  # on the array border
    ea, eb = get_mask_edges(a, b, crop=False)
    np.testing.assert_array_equal(surface_mask(a), np.asarray(ea))
    np.testing.assert_array_equal(surface_mask(b), np.asarray(eb))


def test_msd_is_equation_7_by_brute_force():
    a, b = blob(11), blob(12)
    sa, sb = surface_mask(a), surface_mask(b)
    pa = np.argwhere(sa) * np.asarray(SPACING)
    pb = np.argwhere(sb) * np.asarray(SPACING)
    dist = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = dist.min(axis=1), dist.min(axis=0)
    msd = (d_ab.sum() + d_ba.sum()) / (len(d_ab) + len(d_ba))
    hd = max(d_ab.max(), d_ba.max())
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    ours = surface_distances(a, b, SPACING)
    assert ours.msd == pytest.approx(msd, rel=1e-12)
    assert ours.hd == pytest.approx(hd, rel=1e-12)
    assert ours.hd95 == pytest.approx(hd95, rel=1e-5)  # rank computed as torch does: see test_percentile
    got_ab, got_ba = directed_surface_distances(a, b, SPACING)
    np.testing.assert_allclose(np.sort(got_ab), np.sort(d_ab), rtol=1e-12)
    np.testing.assert_allclose(np.sort(got_ba), np.sort(d_ba), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlap_and_hausdorff_match_simpleitk(seed):
    rng = np.random.default_rng(seed)
    shape = (16, 24, 22)
    a = ellipsoid(shape, rng.uniform(5, 10, 3) * (1, 1.3, 1.2), rng.uniform(2, 5, 3))
    b = ellipsoid(shape, rng.uniform(5, 10, 3) * (1, 1.3, 1.2), rng.uniform(2, 5, 3))
    m = compare_masks(a, b, SPACING)
    lom = sitk.LabelOverlapMeasuresImageFilter()
    lom.Execute(sitk_image(a, SPACING), sitk_image(b, SPACING))  # source = pred, target = ref
    assert m["dice"] == pytest.approx(lom.GetDiceCoefficient(), abs=1e-12)
    assert m["jaccard"] == pytest.approx(lom.GetJaccardCoefficient(), abs=1e-12)
    assert 1 - m["sensitivity"] == pytest.approx(lom.GetFalseNegativeError(), abs=1e-12)
    assert dice(a, b) == m["dice"] and jaccard(a, b) == m["jaccard"]
    # convex, non-nested shapes: voxel-set Hausdorff (SimpleITK) and surface Hausdorff coincide
    hdf = sitk.HausdorffDistanceImageFilter()
    hdf.Execute(sitk_image(b, SPACING), sitk_image(a, SPACING))
    assert m["hd_mm"] == pytest.approx(hdf.GetHausdorffDistance(), abs=1e-9)


def test_dice_matches_monai():
    from monai.metrics import compute_dice

    a, b = blob(21), blob(22)
    A = torch.from_numpy(a[None, None].astype(np.float32))
    B = torch.from_numpy(b[None, None].astype(np.float32))
    assert dice(a, b) == pytest.approx(compute_dice(A, B, include_background=True).item(), abs=1e-6)


def test_volumes_precision_sensitivity_and_centre_of_mass_by_hand():
    ref = np.zeros((10, 12, 14), bool)
    ref[2:6, 3:8, 4:10] = True  # 4*5*6 = 120 voxels
    pred = np.zeros_like(ref)
    pred[3:7, 3:8, 4:10] = True  # shifted by one slice: 90 overlap
    m = compare_masks(pred, ref, SPACING)
    vox = 2.5 * 0.8 * 1.1 / 1000
    assert m["volume_ref_ml"] == pytest.approx(120 * vox)
    assert m["volume_pred_ml"] == pytest.approx(120 * vox)
    assert m["volume_diff_ml"] == pytest.approx(0.0)
    assert m["sensitivity"] == pytest.approx(90 / 120) and m["precision"] == pytest.approx(90 / 120)
    assert m["com_distance_mm"] == pytest.approx(2.5)
    assert m["dice"] == pytest.approx(180 / 240) and m["jaccard"] == pytest.approx(90 / 150)
    big = np.zeros_like(ref)
    big[2:6, 3:8, 4:12] = True  # 160 voxels: over-segmentation
    m2 = compare_masks(big, ref, SPACING)
    assert m2["volume_diff_ml"] == pytest.approx(40 * vox)
    assert m2["relative_volume_diff"] == pytest.approx(40 / 120)
    assert m2["precision"] == pytest.approx(120 / 160) and m2["sensitivity"] == 1.0
    assert list(m) == list(COMPARE_KEYS) + ["nsd_2mm"]


def test_empty_mask_rules():
    empty = np.zeros((6, 7, 8), bool)
    full = np.zeros_like(empty)
    full[2:4, 2:5, 3:6] = True
    both = compare_masks(empty, empty, SPACING)
    assert both["dice"] == 1.0 and both["jaccard"] == 1.0
    assert both["hd_mm"] == 0.0 and both["hd95_mm"] == 0.0 and both["msd_mm"] == 0.0
    assert both["volume_diff_ml"] == 0.0 and both["relative_volume_diff"] == 0.0
    assert surface_distances(empty, empty, SPACING) == (0.0, 0.0, 0.0)
    for pred, ref in ((empty, full), (full, empty)):
        m = compare_masks(pred, ref, SPACING)
        assert m["dice"] == 0.0 and m["jaccard"] == 0.0
        assert math.isinf(m["hd_mm"]) and math.isinf(m["hd95_mm"]) and math.isinf(m["msd_mm"])
        assert math.isinf(m["com_distance_mm"])
        assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())
        assert all(math.isinf(v) for v in surface_distances(pred, ref, SPACING))
    assert math.isinf(compare_masks(full, empty, SPACING)["relative_volume_diff"])
    assert compare_masks(empty, full, SPACING)["relative_volume_diff"] == -1.0
    assert dice(empty, empty) == 1.0 and dice(empty, full) == 0.0 and jaccard(empty, empty) == 1.0


def test_mean_finite_keeps_inf_out_and_counts_it():
    assert mean_finite([1.0, 3.0, math.inf]) == (2.0, 2, 1)
    mean, n, n_inf = mean_finite([math.inf, math.inf])
    assert math.isinf(mean) and (n, n_inf) == (0, 2)
    assert mean_finite([]) == (0.0, 0, 0)
    with pytest.raises(InputError):
        mean_finite([1.0, float("nan")])


def test_bad_input_errors():
    a = blob(1)
    with pytest.raises(InputError, match="shape"):
        dice(a, a[:, :, :-1])
    with pytest.raises(InputError, match="shape"):
        surface_distances(a, a[:-1], SPACING)
    with pytest.raises(InputError, match="spacing"):
        surface_distances(a, a, (1.0, 2.0))
    with pytest.raises(InputError, match="spacing"):
        compare_masks(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="ndim"):
        dice(np.zeros(5, bool), np.zeros(5, bool))


def _two_grids():
    ref_arr = np.zeros((8, 10, 12), bool)
    ref_arr[2:6, 3:7, 3:9] = True
    ref = Volume(ref_arr, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    # the same object on a grid with half the in-plane spacing
    fine = np.repeat(np.repeat(ref_arr, 2, axis=1), 2, axis=2)
    pred = Volume(fine, spacing=(0.5, 0.5, 2.0), origin=(-0.25, -0.25, 0.0))
    return ref, pred


def test_different_grids_error_unless_resampled():
    ref, pred = _two_grids()
    with pytest.raises(InputError, match="grid"):
        compare_volumes(pred, ref)
    m = compare_volumes(pred, ref, resample=True)
    assert m["dice"] == 1.0 and m["hd_mm"] == 0.0
    assert compare_volumes(ref, ref)["dice"] == 1.0


def test_compare_segmentations_pairs_by_name_and_checks_grids():
    ref_arr = np.zeros((8, 10, 12), np.uint8)
    ref_arr[2:6, 3:7, 3:9] = 1
    ref_arr[1:3, 1:3, 1:3] = 2
    pred_arr = ref_arr.copy()
    pred_arr[5, 3:7, 3:9] = 0
    vol = Volume(ref_arr, spacing=(1.1, 0.8, 2.5))
    ref = Segmentation.from_labels(vol, {1: "liver", 2: "spleen"})
    pred = Segmentation.from_labels(vol.with_array(pred_arr), {1: "liver", 2: "spleen", 3: "extra"})
    rows = compare_segmentations(ref, pred)
    assert [r["segment"] for r in rows] == ["liver", "spleen"]
    assert rows[1]["dice"] == 1.0
    expected = compare_masks(pred_arr == 1, ref_arr == 1, vol.spacing_zyx)
    assert rows[0]["dice"] == expected["dice"] and rows[0]["hd_mm"] == expected["hd_mm"]
    rows = compare_segmentations(ref, pred, pairs=[("liver", "spleen")])
    assert rows[0]["segment"] == "liver" and rows[0]["pred_segment"] == "spleen" and rows[0]["dice"] == 0.0
    with pytest.raises(InputError, match="segment"):
        compare_segmentations(ref, pred, pairs={"kidney": "liver"})
    other = Segmentation.from_labels(vol, {1: "a"})
    with pytest.raises(InputError, match="names"):
        compare_segmentations(ref, other)
    ref_v, pred_v = _two_grids()
    ref_s = Segmentation.from_labels(ref_v.with_array(ref_v.array.astype(np.uint8)), {1: "x"})
    pred_s = Segmentation.from_labels(pred_v.with_array(pred_v.array.astype(np.uint8)), {1: "x"})
    with pytest.raises(InputError, match="grid"):
        compare_segmentations(ref_s, pred_s)
    assert compare_segmentations(ref_s, pred_s, resample=True)[0]["dice"] == 1.0


def test_percentile_is_torch_quantile_linear():
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 704, 1825, 4097):
        d = rng.uniform(0, 20, n).astype(np.float32)
        expected = torch.quantile(torch.from_numpy(d), 0.95).item()
        assert percentile(d, 95) == pytest.approx(expected, abs=2e-6)
        assert percentile(d, 95) == pytest.approx(np.percentile(d.astype(float), 95), abs=1e-3)
    with pytest.raises(InputError):
        percentile(np.zeros(0), 95)
