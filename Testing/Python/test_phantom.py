"""The synthetic head-and-neck CT phantom: determinism, geometry, HU per tissue, masks inside the body,
contrast that makes each structure learnable, prominences spanning orders of magnitude, and the dataset
written through io.write_case read back with SimpleITK, slicerio and plain JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.phantom import (
    DEFAULT_SHAPE,
    DEFAULT_SPACING,
    FIELD_OF_VIEW_MM,
    STRUCTURES,
    head_box,
    make_phantom,
    make_phantom_dataset,
    phantom_grid,
    prominences,
)

TINY = (10, 64, 64)


@pytest.fixture(scope="module")
def default_case():
    return make_phantom(seed=5)


def _body(array: np.ndarray) -> np.ndarray:
    """Independent body mask: above -500 HU, holes filled in each slice."""
    return np.stack([ndimage.binary_fill_holes(s) for s in array > -500])


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_seg = make_phantom(seed=1, shape=TINY)
    b_img, b_seg = make_phantom(seed=1, shape=TINY)
    c_img, c_seg = make_phantom(seed=2, shape=TINY)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    assert a_img.same_grid(b_img, atol=0)
    for name in STRUCTURES:
        np.testing.assert_array_equal(a_seg.mask(name), b_seg.mask(name))
    assert not np.array_equal(a_img.array, c_img.array)
    assert any(not np.array_equal(a_seg.mask(n), c_seg.mask(n)) for n in STRUCTURES)
    # Sequence seeds (what the dataset uses) are deterministic too and differ from each other.
    d1, _ = make_phantom(seed=(0, 1), shape=TINY)
    d2, _ = make_phantom(seed=(0, 1), shape=TINY)
    d3, _ = make_phantom(seed=(0, 2), shape=TINY)
    np.testing.assert_array_equal(d1.array, d2.array)
    assert not np.array_equal(d1.array, d3.array)


def test_cases_vary_in_position_and_size():
    centroids, volumes = [], []
    for seed in range(4):
        img, seg = make_phantom(seed=seed, shape=(16, 64, 64))
        brain = seg.mask("Brain")
        centroids.append(img.index_to_lps(np.argwhere(brain).mean(axis=0)))
        volumes.append(int(brain.sum()))
    spread = np.ptp(np.asarray(centroids), axis=0)
    assert spread[0] > 1.0 and spread[1] > 1.0  # mm, in-plane shifts
    assert len(set(volumes)) == 4


def test_default_geometry(default_case):
    img, seg = default_case
    assert img.shape == DEFAULT_SHAPE == (32, 128, 128)
    assert img.spacing == DEFAULT_SPACING == (1.6, 1.6, 3.0)
    assert img.array.dtype == np.int16
    assert np.linalg.norm(img.origin) > 100  # a scanner-like origin, not (0, 0, 0)
    np.testing.assert_array_equal(img.direction, np.eye(3))
    assert seg.geometry.same_grid(img, atol=0)
    assert seg.names == list(STRUCTURES)
    assert len({s.color for s in seg}) == len(STRUCTURES)
    # The same image through SimpleITK keeps the geometry (round trip through the Volume conversion).
    sitk_img = img.to_sitk()
    assert sitk_img.GetSpacing() == pytest.approx(img.spacing)
    assert sitk_img.GetOrigin() == pytest.approx(img.origin)


def test_grid_choices():
    assert phantom_grid() == (DEFAULT_SHAPE, DEFAULT_SPACING)
    shape, spacing = phantom_grid(shape=(16, 64, 64))
    assert shape == (16, 64, 64)
    np.testing.assert_allclose(np.asarray(spacing) * np.asarray(shape[::-1]), FIELD_OF_VIEW_MM)
    shape, spacing = phantom_grid(spacing=(0.8, 0.8, 2.0))
    assert spacing == (0.8, 0.8, 2.0) and shape == (48, 256, 256)
    img, _ = make_phantom(seed=0, shape=(6, 40, 50), spacing=(4.0, 4.5, 16.0))
    assert img.shape == (6, 40, 50) and img.spacing == (4.0, 4.5, 16.0)


@pytest.mark.parametrize("kw", [dict(shape=(0, 64, 64)), dict(shape=(10, 64)), dict(shape=(10, 4, 64)),
                                dict(shape=(10.5, 64, 64)), dict(spacing=(1, -1, 3)), dict(spacing=(1, 1)),
                                dict(spacing=(1, float("nan"), 3)), dict(noise_hu=-1), dict(seed=-3),
                                dict(seed="abc")])
def test_bad_arguments_raise_input_error(kw):
    with pytest.raises(InputError) as err:
        make_phantom(**kw)
    assert "phantom" in str(err.value)


def test_hu_values_per_tissue():
    img, seg = make_phantom(seed=3, noise_hu=0.0, smoothing=0.0)
    a = img.array.astype(float)
    body = _body(img.array)
    assert np.all(a[~body] <= -980)  # air outside (a 4 HU texture only)
    assert np.median(a[seg.mask("Brain")]) == pytest.approx(30, abs=8)
    assert np.median(a[seg.mask("Parotid_L")]) == pytest.approx(-20, abs=16)
    assert np.median(a[seg.mask("SpinalCord")]) == pytest.approx(35, abs=10)
    assert np.median(a[seg.mask("Lens_R")]) == pytest.approx(100, abs=20)
    assert np.median(a[seg.mask("OpticNerve_L")]) == pytest.approx(35, abs=10)
    assert 700 <= np.median(a[seg.mask("Mandible")]) <= 1100
    labelled = np.any([seg.mask(n) for n in STRUCTURES], axis=0)
    rest = a[body & ~labelled]
    # Fat, soft tissue and bone (skull, vertebrae) are all present outside the structures.
    assert np.count_nonzero((rest > -130) & (rest < -70)) > 1000
    assert np.count_nonzero((rest > 25) & (rest < 55)) > 10000
    assert np.count_nonzero(rest > 600) > 5000
    # With noise: values stay CT-like.
    noisy, _ = make_phantom(seed=3)
    assert noisy.array.min() >= -1024 and noisy.array.max() <= 3071
    far_outside = ~ndimage.binary_dilation(_body(noisy.array), iterations=3)
    assert 5 < np.std(noisy.array[far_outside]) < 15  # noise_hu defaults to 10


def test_masks_are_inside_the_body_exclusive_and_never_empty(default_case):
    for img, seg in (default_case, make_phantom(seed=7, shape=TINY), make_phantom(seed=8, shape=(6, 32, 32))):
        body = _body(img.array)
        total = np.zeros(img.shape, dtype=int)
        for name in STRUCTURES:
            m = seg.mask(name)
            assert m.any(), name
            if m.sum() > 3:
                assert np.all(body[m]), name
            total += m
        assert total.max() == 1


def test_left_and_right_are_patient_left_and_right(default_case):
    img, seg = default_case

    def x_lps(name):
        return img.index_to_lps(np.argwhere(seg.mask(name)).mean(axis=0))[0]

    for base in ("Lens", "Parotid", "OpticNerve"):
        assert x_lps(f"{base}_L") > x_lps(f"{base}_R") + 20  # LPS: +x is the patient's left
    lens = img.index_to_lps(np.argwhere(seg.mask("Lens_L")).mean(axis=0))
    brain = img.index_to_lps(np.argwhere(seg.mask("Brain")).mean(axis=0))
    cord = img.index_to_lps(np.argwhere(seg.mask("SpinalCord")).mean(axis=0))
    assert lens[1] < brain[1] < cord[1] + 30  # anterior is -y
    assert cord[2] < brain[2]  # the cord runs below the brain


def _shell_mean(a: np.ndarray, mask: np.ndarray, others: np.ndarray) -> float:
    ring = ndimage.binary_dilation(mask, np.ones((1, 5, 5), bool)) & ~mask & ~others
    return float(a[ring].mean())


def test_structures_stand_out_from_their_surroundings():
    """Learnable: each small structure differs in HU from the tissue right around it."""
    img, seg = make_phantom(seed=4)
    a = img.array.astype(float)
    allm = np.any([seg.mask(n) for n in STRUCTURES], axis=0)
    for name in ("Lens_L", "Lens_R"):
        m = seg.mask(name)
        assert a[m].mean() - _shell_mean(a, m, allm) > 20, name
    for name in ("OpticNerve_L", "OpticNerve_R"):
        m = seg.mask(name)
        others = allm & ~m
        ring = ndimage.binary_dilation(m, np.ones((1, 5, 5), bool)) & ~m & ~others & (a < 300)
        assert a[m & (a < 300)].mean() - a[ring].mean() > 40, name
    for name in ("Parotid_L", "Parotid_R"):
        m = seg.mask(name)
        assert abs(a[m].mean() - 40) > 30  # not muscle
        assert abs(a[m].mean() + 100) > 40  # not fat
    cord = seg.mask("SpinalCord")
    bone_near = ndimage.binary_dilation(cord, np.ones((1, 15, 15), bool)) & (a > 500)
    assert bone_near.sum() > 20 * cord.shape[0] // 4  # a bony canal around the cord


def test_prominences_span_two_orders_of_magnitude():
    segs = [make_phantom(seed=(0, n))[1] for n in range(3)]
    p = prominences(segs)
    assert set(p) == set(STRUCTURES)
    # Brute force over the stacked masks.
    for name in STRUCTURES:
        stacked = np.stack([s.mask(name) for s in segs])
        assert p[name] == pytest.approx(stacked.mean())
    assert max(p.values()) / min(p.values()) > 100
    assert max(p, key=p.get) == "Brain"
    assert p["Parotid_L"] > p["SpinalCord"] > p["OpticNerve_L"] > 0
    assert min(p, key=p.get).startswith(("Lens", "OpticNerve"))


def test_dataset_written_and_read_back_independently(tmp_path):
    import SimpleITK as sitk
    import slicerio

    folders = make_phantom_dataset(tmp_path / "data", cases=2, seed=4, shape=TINY)
    assert [f.name for f in folders] == ["case000", "case001"]
    for n, folder in enumerate(folders):
        assert sorted(p.name for p in folder.iterdir()) == ["image.nrrd", "roi.mrk.json", "segmentation.seg.nrrd"]
        img, seg = make_phantom(seed=(4, n), shape=TINY)
        itk = sitk.ReadImage(str(folder / "image.nrrd"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), img.array)
        assert itk.GetSpacing() == pytest.approx(img.spacing)
        assert itk.GetOrigin() == pytest.approx(img.origin)

        sio = slicerio.read_segmentation(str(folder / "segmentation.seg.nrrd"))
        assert [s["name"] for s in sio["segments"]] == list(STRUCTURES)
        np.testing.assert_allclose(np.asarray(sio["ijkToLPS"])[:3, 3], img.origin, atol=1e-4)
        vox = np.asarray(sio["voxels"])
        for s in sio["segments"]:
            layer = vox if vox.ndim == 3 else vox[..., s.get("layer", 0)]
            mask = np.transpose(layer == s["labelValue"], (2, 1, 0))  # (i, j, k) -> (z, y, x)
            np.testing.assert_array_equal(mask, seg.mask(s["name"]))

        roi = json.loads((folder / "roi.mrk.json").read_text())["markups"][0]
        assert roi["type"] == "ROI"
        centre = np.asarray(roi["center"], float)
        half = np.asarray(roi["size"], float) / 2
        if roi["coordinateSystem"] == "RAS":
            centre = centre * [-1, -1, 1]
        pts = img.index_to_lps(np.argwhere(_body(img.array)).astype(float))
        assert np.all(np.abs(pts - centre) <= half + 1e-6)  # the ROI holds the whole head
        grid_half = np.asarray(img.spacing) * np.asarray(img.shape[::-1]) / 2
        assert np.all(half <= grid_half + 1e-6)  # and stays inside the grid
        box = head_box(img)
        assert box.inside(img.shape)


def test_dataset_bad_arguments(tmp_path):
    with pytest.raises(InputError):
        make_phantom_dataset(tmp_path, cases=0)
    with pytest.raises(InputError):
        make_phantom_dataset(tmp_path, cases=1, seed=-1)
    with pytest.raises(InputError):
        make_phantom_dataset(tmp_path, cases=1, shape=(1, 2, 3))
    assert not any(tmp_path.iterdir())
