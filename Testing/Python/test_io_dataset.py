"""Dataset folders: write_case / scan_dataset / load_case with every case form, and bad cases reported
with reasons instead of stopping the scan."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from AutoSegSensitivity import Segmentation, Volume
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import Roi, load_case, read_roi, scan_dataset, write_case, write_volume
from AutoSegSensitivity.io.labels import write_label_names
from test_io_dicom import make_series
from test_io_rtstruct import square, write_rtstruct


def small_case(rng, shift=0.0):
    vol = Volume(rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16), (1.0, 1.5, 3.0), (shift, 2.0, -4.0))
    seg = Segmentation.on_grid(vol)
    m = np.zeros(vol.shape, bool)
    m[1:3, 2:5, 1:6] = True
    seg.add("Brain", m, (0.9, 0.8, 0.7))
    seg.add("Lens L", np.roll(m, 1, axis=0) & ~m, (0.1, 0.2, 0.3))
    return vol, seg


def test_write_scan_load_round_trip(tmp_path, rng):
    vol, seg = small_case(rng)
    roi = Roi([3.0, 5.75, 2.0], [7.0, 9.0, 15.0])
    folder = write_case(tmp_path / "data" / "case01", vol, seg, roi)
    assert sorted(p.name for p in folder.iterdir()) == ["image.nrrd", "roi.mrk.json", "segmentation.seg.nrrd"]
    scan = scan_dataset(tmp_path / "data")
    assert scan.problems == []
    [case] = scan.cases
    assert case.name == "case01" and case.structures == ["Brain", "Lens L"] and case.kind == "segmentation"
    assert case.roi_path == folder / "roi.mrk.json"
    image, back = load_case(case)
    np.testing.assert_array_equal(image.array, vol.array)
    assert image.same_grid(vol, atol=1e-12) and back.geometry.same_grid(vol, atol=1e-12)
    for a, b in zip(seg, back):
        assert a.name == b.name
        np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_allclose(read_roi(case.roi_path).center_lps, roi.center_lps)


def test_scan_reports_bad_cases_and_keeps_going(tmp_path, rng, shared_data):
    root = tmp_path / "data"
    vol, seg = small_case(rng)
    write_case(root / "a_good", vol, seg)
    # labels + names form (real data)
    (root / "b_labels").mkdir(parents=True)
    shutil.copy(shared_data / "abdomen-ct" / "image.nii.gz", root / "b_labels" / "image.nii.gz")
    shutil.copy(shared_data / "abdomen-ct" / "labels.nii.gz", root / "b_labels" / "labels.nii.gz")
    shutil.copy(shared_data / "abdomen-ct" / "labels.json", root / "b_labels" / "labels.json")
    # DICOM + RTSTRUCT form (synthetic)
    make_series(root / "c_dicom" / "dicom", n=4, shape=(10, 12), dz=2.0, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0))
    write_rtstruct(root / "c_dicom" / "dicom" / "rs.dcm", [("CTV", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 2.0)])])
    # image only
    write_volume(vol, (root / "d_image_only").joinpath("image.nrrd"))
    # bad cases
    (root / "e_empty").mkdir()
    (root / "f_labels_without_names").mkdir()
    write_volume(vol, root / "f_labels_without_names" / "image.nrrd")
    write_volume(vol.with_array(np.zeros(vol.shape, np.uint8)), root / "f_labels_without_names" / "labels.nrrd")
    (root / "g_broken_image").mkdir()
    (root / "g_broken_image" / "image.nrrd").write_text("garbage")
    (root / "h_two_images").mkdir()
    write_volume(vol, root / "h_two_images" / "image.nrrd")
    write_volume(vol, root / "h_two_images" / "image.nii.gz")
    (root / "i_wrong_grid").mkdir()
    write_volume(vol, root / "i_wrong_grid" / "image.nrrd")
    write_volume(Volume(np.zeros((2, 2, 2), np.uint8)), root / "i_wrong_grid" / "labels.nrrd")
    write_label_names({1: "x"}, root / "i_wrong_grid" / "labels.json")
    (root / "j_dicom_empty" / "dicom").mkdir(parents=True)
    (root / "not_a_case.txt").write_text("ignored: only folders are cases")

    scan = scan_dataset(root)
    assert [c.name for c in scan.cases] == ["a_good", "b_labels", "c_dicom", "d_image_only"]
    assert [c.kind for c in scan.cases] == ["segmentation", "labels", "dicom", "image"]
    problems = dict(scan.problems)
    assert sorted(problems) == ["e_empty", "f_labels_without_names", "g_broken_image", "h_two_images",
                                "i_wrong_grid", "j_dicom_empty"]
    assert "image.nrrd" in problems["e_empty"] and "dicom/ folder" in problems["e_empty"]
    assert "labels.json" in problems["f_labels_without_names"]
    assert "image.nrrd" in problems["g_broken_image"] and "header" in problems["g_broken_image"]
    assert "one image file" in problems["h_two_images"]
    assert "labels.nrrd: geometry" in problems["i_wrong_grid"]
    assert "exactly one CT series" in problems["j_dicom_empty"]

    labels_case = scan.cases[1]
    names = json.loads((shared_data / "abdomen-ct" / "labels.json").read_text())
    assert labels_case.structures == [names[k] for k in names]
    image, seg = load_case(labels_case)
    assert seg.geometry.same_grid(image) and seg.mask("liver").sum() > 1000

    dicom_case = scan.cases[2]
    assert dicom_case.structures == ["CTV"]
    image, seg = load_case(dicom_case)
    assert image.shape == (4, 10, 12) and seg.mask("CTV").sum() == 16 and seg.mask("CTV")[1].sum() == 16

    image, seg = load_case(scan.cases[3])
    assert len(seg) == 0 and seg.geometry.same_grid(image)


def test_cropped_seg_is_placed_on_image_grid(tmp_path, rng):
    vol, seg = small_case(rng)
    folder = write_case(tmp_path / "c", vol, seg)
    from AutoSegSensitivity import Box
    from AutoSegSensitivity.io import write_segmentation

    box = Box((1, 1, 1), (4, 6, 7))
    sub = Segmentation.on_grid(vol.crop(box))
    for s in seg:
        sub.add(s.name, s.mask[box.slices], s.color)
    write_segmentation(sub, folder / "segmentation.seg.nrrd")
    image, back = load_case(folder)
    np.testing.assert_array_equal(back.mask("Brain"), seg.mask("Brain"))


def test_bad_roots_and_write_case_checks(tmp_path, rng):
    with pytest.raises(InputError, match="nope: dataset folder"):
        scan_dataset(tmp_path / "nope")
    vol, seg = small_case(rng)
    other, _ = small_case(rng, shift=5.0)
    with pytest.raises(InputError, match="segmentation geometry"):
        write_case(tmp_path / "x", other, seg)
    assert not (tmp_path / "x").exists()
