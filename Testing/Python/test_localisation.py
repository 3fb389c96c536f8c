"""Localise then segment: box arithmetic, low-resolution copies, crops, ROIs and two-stage inference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from AutoSegSensitivity import Box, InputError, Segmentation, Volume
from AutoSegSensitivity.localisation import (
    AIR_HU,
    LocalisationWarning,
    anti_alias_sigma,
    area_resize,
    box_from_roi,
    crop_case,
    largest_component,
    largest_component_box,
    lowres_shape,
    make_lowres_case,
    make_lowres_image,
    padded_box,
    scale_box,
    segment_in_box,
    two_stage_predict,
    two_stage_predict_many,
)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def image(rng) -> Volume:
    arr = rng.normal(0, 100, size=(12, 20, 18)).astype(np.float32)
    return Volume(arr, spacing=(0.9, 1.1, 3.0), origin=(-10.0, 25.0, 5.0), direction=_rotation(0.2))


# ---- box arithmetic ------------------------------------------------------------------------------------


def test_padded_box_at_image_edges_extends_past_and_crop_fills_air(image: Volume) -> None:
    box = Box((0, 3, 15), (4, 8, 18))  # touches z = 0 and the last x column
    crop_box = padded_box(box, 5)
    assert crop_box == Box((-5, -2, 10), (9, 13, 23))
    sub = image.crop(crop_box, fill=AIR_HU)
    assert sub.shape == (14, 15, 13)
    assert np.all(sub.array[:5] == AIR_HU) and np.all(sub.array[:, :2] == AIR_HU) and np.all(sub.array[:, :, 8:] == AIR_HU)
    np.testing.assert_array_equal(sub.array[5:, 2:, :8], image.array[0:9, 0:13, 10:18])
    # the crop's voxels keep their physical position
    np.testing.assert_allclose(sub.index_to_lps(np.array([5.0, 2.0, 0.0])), image.index_to_lps(np.array([0.0, 0.0, 10.0])))
    clipped = crop_box.clip(image.shape)
    assert clipped == Box((0, 0, 10), (9, 13, 18))
    # per-side padding
    assert padded_box(box, [(1, 2), (0, 0), (3, 4)]) == Box((-1, 3, 12), (6, 8, 22))
    with pytest.raises(InputError):
        padded_box(box, -1)


def test_crop_then_paste_is_exact_inverse_including_edges(image: Volume) -> None:
    for box in (Box((2, 3, 4), (9, 15, 10)), Box((-3, -4, 12), (5, 9, 25))):
        sub = image.crop(box, fill=AIR_HU)
        pasted = image.paste(sub, box, background=0.0)
        inner = box.clip(image.shape)
        np.testing.assert_array_equal(pasted.array[inner.slices], image.array[inner.slices])
        outside = np.ones(image.shape, bool)
        outside[inner.slices] = False
        assert np.all(pasted.array[outside] == 0)
        assert pasted.same_grid(image)
        # and crop(paste(sub)) gives back sub where sub came from the image
        again = pasted.crop(box, fill=AIR_HU)
        np.testing.assert_array_equal(again.array, sub.array)


def test_lowres_shape_and_scaling_between_resolutions() -> None:
    assert lowres_shape((12, 20, 18)) == (4, 10, 9)
    assert lowres_shape((13, 21, 17)) == (4, 11, 9)  # rounded half up
    assert lowres_shape((2, 1, 1)) == (1, 1, 1)
    assert lowres_shape((12, 20, 18), (2, 4, 3)) == (6, 5, 6)
    # exact integer ratio: a low-res box maps to whole blocks
    assert scale_box(Box((1, 2, 3), (3, 5, 6)), (4, 10, 9), (12, 20, 18)) == Box((3, 4, 6), (9, 10, 12))
    # non-integer ratio 13/4: every full-res voxel overlapping the low-res box is covered
    full = scale_box(Box((1, 0, 0), (2, 1, 1)), (4, 1, 1), (13, 1, 1))
    assert full == Box((3, 0, 0), (7, 1, 1))  # low voxel 1 covers [3.25, 6.5)
    # down and back up never loses a voxel
    box = Box((5, 7, 3), (8, 12, 10))
    down = scale_box(box, (13, 21, 17), (4, 11, 9))
    up = scale_box(down, (4, 11, 9), (13, 21, 17))
    assert up.intersect(box) == box


def test_lowres_image_covers_same_extent(image: Volume) -> None:
    seg = Segmentation.on_grid(image)
    mask = np.zeros(image.shape, bool)
    mask[3:9, 4:12, 6:14] = True
    seg.add("Organ", mask)
    low, low_seg = make_lowres_case(image, seg)
    assert low.shape == (4, 10, 9)
    np.testing.assert_allclose(np.asarray(low.spacing) * low.shape[::-1], np.asarray(image.spacing) * image.shape[::-1])
    # the low-res voxel centre (0, 0, 0) sits at full-res continuous index (1, 0.5, 0.5)
    np.testing.assert_allclose(low.index_to_lps(np.zeros(3)), image.index_to_lps(np.array([1.0, 0.5, 0.5])), atol=1e-9)
    # area-then-threshold: blocks at least half inside the organ
    expected = area_resize(mask, low.shape) >= 0.5
    np.testing.assert_array_equal(low_seg.mask("Organ"), expected)
    assert low_seg.mask("Organ")[1:3, 2:6, 3:7].all() and low_seg.mask("Organ").sum() == 2 * 4 * 4
    # nearest keeps a mask too
    _, near = make_lowres_case(image, seg, mask_method="nearest")
    assert near.mask("Organ").any()
    with pytest.raises(InputError, match="method"):
        make_lowres_case(image, seg, mask_method="cubic")


def test_area_resize_matches_brute_force_block_means(rng) -> None:
    arr = rng.random((6, 8, 9))
    got = area_resize(arr, (3, 4, 3))
    expected = arr.reshape(3, 2, 4, 2, 3, 3).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # non-integer ratio keeps the total (mean over the extent)
    odd = area_resize(arr, (4, 5, 7))
    assert odd.mean() == pytest.approx(arr.mean(), rel=1e-12)


def test_largest_component_box() -> None:
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1:3, 1:3, 1:3] = 0.9  # 8 voxels
    prob[5:9, 4:7, 2:8] = 0.6  # 72 voxels
    prob[9, 9, 9] = 0.95
    assert largest_component_box(prob, 0.5) == Box((5, 4, 2), (9, 7, 8))
    assert largest_component_box(prob, 0.7) == Box((1, 1, 1), (3, 3, 3))
    assert largest_component_box(prob, 0.99) is None
    # diagonal neighbours belong to one component (26-connectivity)
    diag = np.zeros((4, 4, 4), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = diag[2, 2, 2] = True
    diag[3, 0, 3] = True
    assert largest_component(diag).sum() == 3


# ---- organ crops ---------------------------------------------------------------------------------------


def test_crop_case_pads_with_air_past_the_edge_and_jitters(image: Volume) -> None:
    seg = Segmentation.on_grid(image)
    mask = np.zeros(image.shape, bool)
    mask[0:3, 5:9, 14:18] = True  # at the first slice and the last column
    seg.add("Lens", mask)
    seg.add("Other", ~mask)
    sub, sub_seg, box = crop_case(image, seg, "Lens", padding=4)
    assert box == Box((-4, 1, 10), (7, 13, 22))
    assert sub.shape == (11, 12, 12) and sub_seg.names == ["Lens"]
    assert np.all(sub.array[:4] == AIR_HU)
    assert sub_seg.mask("Lens").sum() == mask.sum()
    assert Box.from_mask(sub_seg.mask("Lens")) == Box((4, 4, 4), (7, 8, 8))
    sizes = set()
    for seed in range(5):
        _, _, jb = crop_case(image, seg, "Lens", padding=4, jitter=2, rng=np.random.default_rng(seed))
        lo = np.subtract((0, 5, 14), jb.start)
        hi = np.subtract(jb.stop, (3, 9, 18))
        assert np.all(lo >= 2) and np.all(lo <= 6) and np.all(hi >= 2) and np.all(hi <= 6)
        sizes.add(jb.size)
    assert len(sizes) > 1
    empty = Segmentation.on_grid(image)
    empty.add("Lens", np.zeros(image.shape, bool))
    assert crop_case(image, empty, "Lens") is None


# ---- two-stage inference with rule-based models (geometry of the pipeline) -------------------------------


def _blob_image() -> tuple:
    """A 24 x 30 x 28 image of soft tissue (40 HU) with a bright small organ (600 HU) near an edge."""
    arr = np.full((24, 30, 28), 40.0, np.float32)
    organ = np.zeros(arr.shape, bool)
    organ[1:5, 20:25, 22:27] = True
    arr[organ] = 600.0
    img = Volume(arr, spacing=(0.8, 0.8, 2.5), origin=(3.0, -4.0, 10.0), direction=_rotation(-0.3))
    return img, organ


def _rule(name: str, level: float):
    """A 'model' that calls voxels above ``level`` HU the organ (probability 0.9) and records its inputs."""
    seen = []

    def model(volume: Volume) -> dict:
        seen.append(volume)
        return {name: volume.with_array(np.where(volume.array > level, 0.9, 0.0).astype(np.float32))}

    model.seen = seen  # type: ignore[attr-defined]
    return model


def test_two_stage_finds_the_organ_and_pastes_the_map_where_it_is() -> None:
    img, organ = _blob_image()
    localiser, organ_model = _rule("Lens", 300.0), _rule("Lens", 300.0)
    # the mechanics on the plain low-res copy (a fixed-level rule sees a smoothed organ a little smaller;
    # with smoothing the padded crop still holds the whole organ)
    smooth = two_stage_predict(img, _rule("Lens", 300.0), None, structure="Lens", padding=3)
    assert padded_box(smooth.box, 3).intersect(Box.from_mask(organ)) == Box.from_mask(organ)
    res = two_stage_predict(img, localiser, organ_model, structure="Lens", padding=3, anti_alias=False)
    assert res.found and "Lens" in res.message
    low = localiser.seen[0]
    assert low.shape == (8, 15, 14)
    # the low-res box scaled back covers the organ, within one low-res voxel
    assert res.box.intersect(Box.from_mask(organ)) == Box.from_mask(organ)
    assert np.all(np.subtract(Box.from_mask(organ).start, res.box.start) <= (3, 2, 2))
    assert res.crop_box == padded_box(res.box, 3)
    # the organ model saw the padded crop, air past the image edge (z < 0)
    crop = organ_model.seen[0]
    assert crop.shape == res.crop_box.size
    assert res.crop_box.start[0] < 0 and np.all(crop.array[: -res.crop_box.start[0]] == AIR_HU)
    # pasted map: on the full grid, the organ exactly, zeros outside the crop
    assert res.probability.same_grid(img) and res.probability.array.dtype == np.float32
    np.testing.assert_array_equal(res.probability.array > 0.5, organ)
    outside = np.ones(img.shape, bool)
    outside[res.crop_box.clip(img.shape).slices] = False
    assert np.all(res.probability.array[outside] == 0)


def test_organ_not_found_is_a_result_and_the_batch_goes_on() -> None:
    img, organ = _blob_image()
    empty = img.with_array(np.full(img.shape, 40.0, np.float32))
    results = two_stage_predict_many({"a": empty, "b": img}, _rule("Lens", 300.0), _rule("Lens", 300.0),
                                     structure="Lens", padding=2)
    assert not results["a"].found and "organ not found" in results["a"].message
    assert results["a"].box is None and not results["a"].probability.array.any()
    assert results["b"].found and np.array_equal(results["b"].probability.array > 0.5, organ)
    # a bad case (asking for a class the model lacks) is reported, and the next case still runs
    two = lambda v: {"A": v.with_array(np.zeros(v.shape, np.float32)), "B": v.with_array(np.zeros(v.shape, np.float32))}  # noqa: E731
    results = two_stage_predict_many({"bad": img, "good": img}, {"bad": Box((0, 0, 0), (2, 2, 2)), "good": Box.from_mask(organ)},
                                     lambda v: two(v) if v.shape[0] < 9 else {}, structure="Lens")
    assert not results["bad"].found and "structure" in results["bad"].message
    with pytest.raises(InputError, match="overlaps"):
        two_stage_predict(img, Box((30, 0, 0), (32, 5, 5)), None)


def test_segment_in_box_with_a_box_inside() -> None:
    img, organ = _blob_image()
    full, crop_box = segment_in_box(img, _rule("X", 300.0), Box((0, 15, 15), (10, 30, 28)), padding=0)
    assert crop_box == Box((0, 15, 15), (10, 30, 28))
    np.testing.assert_array_equal(full.array > 0.5, organ)


# ---- user ROI ------------------------------------------------------------------------------------------


def test_box_from_roi_inside_partly_outside_and_wholly_outside(image: Volume, tmp_path) -> None:
    from AutoSegSensitivity.io import box_to_roi, read_roi, write_roi

    inside = Box((2, 3, 4), (7, 11, 9))
    roi = read_roi(write_roi(box_to_roi(inside, image, name="Lens"), tmp_path / "lens.mrk.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for an ROI inside the image
        assert box_from_roi(roi, image) == inside
    partly = box_to_roi(Box((-4, 15, 10), (5, 26, 16)), image, name="edge")
    with pytest.warns(LocalisationWarning, match="partly outside"):
        assert box_from_roi(partly, image) == Box((0, 15, 10), (5, 20, 16))
    wholly = box_to_roi(Box((13, 0, 0), (16, 4, 4)), image, name="away")
    with pytest.raises(InputError, match="'away'.*overlaps the image"):
        box_from_roi(wholly, image)


def test_two_stage_with_an_roi_is_ground_truth_localised() -> None:
    from AutoSegSensitivity.io import box_to_roi, roi_to_box

    img, organ = _blob_image()
    gt = Box.from_mask(organ)
    organ_model = _rule("Lens", 300.0)
    res = two_stage_predict(img, box_to_roi(gt, img, name="drawn"), organ_model, padding=4)
    assert res.found and res.box == gt and "drawn" in res.message
    assert organ_model.seen[0].shape == gt.pad(4).size
    np.testing.assert_array_equal(res.probability.array > 0.5, organ)
    # the box written back as an ROI reads back as the same voxels
    assert roi_to_box(res.roi, img) == gt
    # a Box works the same way
    assert np.array_equal(two_stage_predict(img, gt, _rule("Lens", 300.0), padding=4).probability.array, res.probability.array)


def test_write_box_roi_reads_back_as_the_same_voxels(image: Volume, tmp_path) -> None:
    import json

    from AutoSegSensitivity.io import read_roi, roi_to_box
    from AutoSegSensitivity.localisation import write_box_roi

    box = Box((1, 2, 3), (5, 9, 17))
    path = write_box_roi(box, image, tmp_path / "box.mrk.json", name="Lens box")
    doc = json.loads(path.read_text())
    assert doc["markups"][0]["type"] == "ROI"
    roi = read_roi(path)
    assert roi.name == "Lens box" and roi_to_box(roi, image) == box
    np.testing.assert_allclose(roi.size_mm, np.asarray(box.size[::-1]) * image.spacing)


def test_area_lowres_mask_keeps_a_tiny_organ() -> None:
    from AutoSegSensitivity.localisation import make_lowres_mask

    full = Volume(np.zeros((12, 8, 8), np.float32))
    low = full.resample_to_shape((4, 4, 4))
    mask = np.zeros(full.shape, bool)
    mask[4, 2, 3] = True  # 1/12 of low-res voxel (1, 1, 1)
    out = make_lowres_mask(mask, low, "area")
    assert out.sum() == 1 and out[1, 1, 1]
    assert not make_lowres_mask(np.zeros(full.shape, bool), low, "area").any()


# ---- two-stage inference with networks trained by the training engine on the phantom --------------------

PHANTOM_SHAPE = (24, 64, 64)
STRUCTURE = "Parotid_L"  # ~175 of 98,304 voxels (0.2 %) on this grid


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    import torch

    from AutoSegSensitivity.inference import load_checkpoint
    from AutoSegSensitivity.localisation import make_crop_dataset, make_lowres_dataset
    from AutoSegSensitivity.phantom import make_phantom, make_phantom_dataset
    from AutoSegSensitivity.training import train

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("two_stage")
    make_phantom_dataset(root / "data", cases=3, seed=0, shape=PHANTOM_SHAPE)
    low_cases = make_lowres_dataset(root / "data", root / "low")
    crop_cases = make_crop_dataset(root / "data", root / "crop", STRUCTURE, padding=6, jitter=2, seed=1)
    base = dict(model="unet2d", model_kwargs={"base_features": 4}, loss="bce_dice2d", structures=[STRUCTURE],
                batch_size=8, lr=1e-2, foreground_fraction=0.8, seed=0, val_fraction=0.34, epochs=30,
                samples_per_epoch=32, early_stopping={"rule": "patience", "patience": 30})
    train(base, root / "low", root / "loc", device="cpu", progress_bar=False)
    train(dict(base, patch_size=[32, 32]), root / "crop", root / "organ", device="cpu", progress_bar=False)
    torch.set_num_threads(old)
    image, seg = make_phantom(seed=77, shape=PHANTOM_SHAPE)
    return {"root": root, "low_cases": low_cases, "crop_cases": crop_cases, "image": image, "seg": seg,
            "localiser": load_checkpoint(root / "loc" / "best.pt"), "organ": load_checkpoint(root / "organ" / "best.pt")}


def test_lowres_and_crop_datasets_have_the_standard_layout(trained) -> None:
    from AutoSegSensitivity.io import load_case, scan_dataset

    low = scan_dataset(trained["root"] / "low")
    assert [c.name for c in low.cases] == [p.name for p in trained["low_cases"]] and len(low.cases) == 3
    img, seg = load_case(low.cases[0])
    assert img.shape == (8, 32, 32) and STRUCTURE in seg and seg.mask(STRUCTURE).any()
    crop = scan_dataset(trained["root"] / "crop")
    img, seg = load_case(crop.cases[0])
    assert seg.names == [STRUCTURE]
    box = Box.from_mask(seg.mask(STRUCTURE))
    lo, hi = np.asarray(box.start), np.asarray(img.shape) - np.asarray(box.stop)
    assert np.all(lo >= 4) and np.all(lo <= 8) and np.all(hi >= 4) and np.all(hi <= 8)  # 6 +- 2 voxels


def test_two_stage_on_the_phantom_finds_the_small_structure_and_pastes_it_in_place(trained) -> None:
    from AutoSegSensitivity.metrics import dice

    image, ref = trained["image"], trained["seg"].mask(STRUCTURE)
    res = two_stage_predict(image, trained["localiser"], trained["organ"], STRUCTURE, padding=6)
    assert res.found, res.message
    gt = Box.from_mask(ref)
    overlap = res.box.intersect(gt)
    assert not overlap.is_empty and np.prod(overlap.size) >= 0.5 * np.prod(gt.size), (res.box, gt)
    prob = res.probability
    assert prob.same_grid(image)
    outside = np.ones(image.shape, bool)
    outside[res.crop_box.clip(image.shape).slices] = False
    assert not prob.array[outside].any()
    pred = prob.array >= 0.5
    com_pred = np.array(np.nonzero(pred)).mean(axis=1)
    com_ref = np.array(np.nonzero(ref)).mean(axis=1)
    assert np.all(np.abs(com_pred - com_ref) <= (1.5, 2.5, 2.5)), (com_pred, com_ref)
    assert dice(pred, ref) > 0.5


def test_anti_alias_sigma_is_skimage_resize_rule() -> None:
    # skimage.transform.resize(anti_aliasing=True): sigma = max(0, (factor - 1) / 2), factor = in / out
    np.testing.assert_allclose(anti_alias_sigma((12, 20, 18), (4, 10, 9)), [1.0, 0.5, 0.5])
    np.testing.assert_allclose(anti_alias_sigma((10, 7, 5), (4, 7, 10)), [0.75, 0.0, 0.0])


def test_lowres_image_smoothing_keeps_thin_structures_visible_wherever_they_lie() -> None:
    # a one-voxel plate across z; depth divided by 3. Without smoothing, linear interpolation samples the
    # coarse voxel centres only (full-res z = 1, 4, 7, 10), so the plate shows at full strength or vanishes
    # depending on its position: aliasing. With the Gaussian first it shows at every position.
    peak_plain, peak_smooth = [], []
    for z in range(12):
        arr = np.zeros((12, 6, 6), np.float32)
        arr[z] = 1000.0
        img = Volume(arr, spacing=(1.0, 1.0, 3.0))
        peak_plain.append(make_lowres_image(img, (3, 1, 1), anti_alias=False).array.max())
        peak_smooth.append(make_lowres_image(img, (3, 1, 1)).array.max())
    assert min(peak_plain) < 1.0 and max(peak_plain) > 999.0  # vanishes at some positions
    assert min(peak_smooth) > 200.0 and max(peak_smooth) / min(peak_smooth) < 2.0
    # a constant image stays constant (mirrored edges), the unsmoothed path is the plain resampling
    flat = Volume(np.full((12, 6, 6), -300.0, np.float32), spacing=(1.0, 1.0, 3.0))
    np.testing.assert_allclose(make_lowres_image(flat).array, -300.0, rtol=1e-6)
    img = Volume(np.random.default_rng(0).normal(size=(12, 8, 8)).astype(np.float32), spacing=(1.0, 1.0, 3.0))
    np.testing.assert_array_equal(make_lowres_image(img, anti_alias=False).array,
                                  img.resample_to_shape(lowres_shape(img.shape), "linear").array)
