"""nnU-Net v2 --save_probabilities output (AutoSegSensitivity.io.nnunet) and the nnunet route of tune/apply.

Fake nnU-Net output folders are written as nnU-Net writes them (np.savez_compressed(..., probabilities=
(C, z, y, x)), dataset.json with name -> label labels, plans.json, the segmentation beside each .npz); the
real abdomen CT labels of ../shared/data serve as references."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_segmentation, read_volume, write_volume
from AutoSegSensitivity.io.nnunet import (check_plans, iter_probabilities, npz_header, read_dataset_labels,
                                          read_probabilities)
from AutoSegSensitivity.tune import tune_cohort, write_thresholds

from tune_cohort import case_arrays, write_cohort

LABELS = {"background": 0, "Low": 1, "High": 2}


def write_dataset_json(folder, labels=LABELS, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", **extra}))
    (folder / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    return folder / "dataset.json"


def softmax_like(maps, names):
    fg = np.stack([maps[n] for n in names]).astype(np.float32)
    bg = np.clip(1.0 - fg.max(axis=0), 0.0, 1.0)[None]
    return np.concatenate([bg, fg])


def test_dataset_json_labels_and_errors(tmp_path):
    dj = write_dataset_json(tmp_path, {"background": 0, "b": 2, "a": 1, "ignore": 3})
    assert read_dataset_labels(dj) == {"a": 1, "b": 2}  # channel = label value; ignore is no channel
    assert list(read_dataset_labels(write_dataset_json(tmp_path, {"background": 0, "x": [1]}))) == ["x"]
    bad = {
        "not json": "JSON",
        json.dumps({"name": "x"}): "labels",
        json.dumps({"labels": {"background": 0, "liver": "one"}}): "labels.liver",
        json.dumps({"labels": {"background": 1, "liver": 0}}): "labels.background",
        json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 3}}): "labels",
        json.dumps({"labels": {"background": 0, "kidney": 1, "tumour": 2, "kidney_and_tumour": [1, 2]},
                    "regions_class_order": [1, 2]}): "labels.kidney_and_tumour",
    }
    for text, field in bad.items():
        (tmp_path / "dataset.json").write_text(text)
        with pytest.raises(InputError) as info:
            read_dataset_labels(tmp_path / "dataset.json")
        assert str(info.value).startswith(f"{tmp_path / 'dataset.json'}: {field}"), str(info.value)
    assert "region-based" in _message(read_dataset_labels, tmp_path / "dataset.json")
    for reorienting in ("NibabelIOWithReorient", "SimpleITKIOWithReorient"):
        (tmp_path / "plans.json").write_text(json.dumps({"image_reader_writer": reorienting}))
        with pytest.raises(InputError, match="image_reader_writer"):
            check_plans(tmp_path / "plans.json")
    (tmp_path / "plans.json").write_text(json.dumps({"image_reader_writer": "SimpleITKIO"}))
    check_plans(tmp_path / "plans.json")


def _message(fn, *args):
    with pytest.raises(InputError) as info:
        fn(*args)
    return str(info.value)


def test_streamed_channels_equal_numpy_load_and_errors(tmp_path, rng):
    probs = rng.random((4, 5, 6, 7)).astype(np.float16)  # early nnU-Net v2 wrote float16
    np.savez_compressed(tmp_path / "c.npz", probabilities=probs)
    labels = {"a": 1, "b": 2, "c": 3}
    assert npz_header(tmp_path / "c.npz") == ((4, 5, 6, 7), np.dtype(np.float16))
    got = read_probabilities(tmp_path / "c.npz", labels, (5, 6, 7))
    for name, c in labels.items():
        np.testing.assert_array_equal(got[name], np.load(tmp_path / "c.npz")["probabilities"][c])
    assert list(iter_probabilities(tmp_path / "c.npz", labels, wanted=["b"]))[0][0] == "b"
    cases = {
        "shape": lambda: read_probabilities(tmp_path / "c.npz", labels, (5, 7, 6)),
        "channels": lambda: read_probabilities(tmp_path / "c.npz", {"a": 1}),
        "structures": lambda: read_probabilities(tmp_path / "c.npz", labels, wanted=["liver"]),
    }
    for field, fn in cases.items():
        assert field in _message(fn)
    np.savez_compressed(tmp_path / "s.npz", softmax=probs)
    msg = _message(read_probabilities, tmp_path / "s.npz", labels)
    assert msg.startswith(f"{tmp_path / 's.npz'}: probabilities") and "softmax" in msg
    np.savez_compressed(tmp_path / "o.npz", probabilities=np.array([{"a": 1}], dtype=object))
    assert "dtype" in _message(read_probabilities, tmp_path / "o.npz", labels)  # never unpickled
    (tmp_path / "t.npz").write_bytes((tmp_path / "c.npz").read_bytes()[:200])
    assert _message(read_probabilities, tmp_path / "t.npz", labels).startswith(str(tmp_path / "t.npz"))


def write_nnunet_output(nn, n, edit=lambda i, arr: ("probabilities", arr)):
    """nnU-Net output of the cohort's maps: ``<case>.npz`` (``edit(i, array)`` gives the key and array
    written), a ``.pkl`` that must never be opened, dataset.json and plans.json."""
    write_dataset_json(nn)
    for i in range(n):
        key, arr = edit(i, softmax_like(case_arrays(i)[0], ["Low", "High"]))
        np.savez_compressed(nn / f"case{i:02d}.npz", **{key: arr})
        (nn / f"case{i:02d}.pkl").write_bytes(b"not a pickle: must never be opened")


def test_nnunet_route_equals_maps_route(tmp_path):
    probs, refs = write_cohort(tmp_path, 5)
    nn = tmp_path / "nnunet"
    write_nnunet_output(nn, 5)
    a = tune_cohort(probs, refs, n_boot=100, seed=2)
    b = tune_cohort(nn, refs, n_boot=100, seed=2)
    assert b.inputs["format"] == "nnunet" and not b.problems
    assert list(b.structures) == ["Low", "High"]
    for s in ("Low", "High"):
        ta, tb = a.structures[s], b.structures[s]
        assert (ta.t_opt, ta.value_at_opt, ta.cv.fold_thresholds, ta.cv.gain, ta.cv.ci_low, ta.cv.ci_high) == \
            (tb.t_opt, tb.value_at_opt, tb.cv.fold_thresholds, tb.cv.gain, tb.cv.ci_low, tb.cv.ci_high)
        np.testing.assert_array_equal(ta.result.pooled["dice"], tb.result.pooled["dice"])


def test_nnunet_bad_cases_are_listed_and_the_rest_goes_on(tmp_path):
    probs, refs = write_cohort(tmp_path, 4)
    nn = tmp_path / "nnunet"

    def spoil(i, arr):
        if i == 1:
            arr[2, 0, 0, 0] = 1.5
        if i == 2:
            arr = arr[:, :, :-1]
        return ("softmax" if i == 3 else "probabilities"), arr

    write_nnunet_output(nn, 4, spoil)
    res = tune_cohort(nn, refs, structures=["Low", "High", "Liver"], n_boot=20)
    lines = res.problem_lines()
    assert any(line.startswith("Liver:") and "dataset.json: labels" in line for line in lines)
    assert any(line.startswith("case01: High:") and "channel 2" in line and "[0, 1]" in line for line in lines)
    assert any(line.startswith("case02:") and "probabilities shape" in line for line in lines)
    assert any(line.startswith("case03:") and "softmax" in line for line in lines)
    assert res.structures["Low"].cases == ["case00", "case01"] and res.structures["High"].cases == ["case00"]


def _abdomen_cohort(root, shared, names, n=3):
    """Reference cases sharing the real abdomen CT labels; synthetic maps (blurred masks scaled by 0.5, so
    the best threshold lies well below 0.5), as maps and as a fake nnU-Net output on the same values."""
    src = shared / "abdomen-ct"
    labels_img = sitk.ReadImage(str(src / "labels.nii.gz"))
    lab = sitk.GetArrayFromImage(labels_img)  # what nnU-Net's SimpleITKIO reads: (z, y, x)
    table = {v: k for k, v in json.loads((src / "labels.json").read_text()).items()}
    geom = read_volume(src / "labels.nii.gz")
    nn = root / "nnunet"
    write_dataset_json(nn, {"background": 0, **{s: i + 1 for i, s in enumerate(names)}})
    arrays = []
    for c in range(n):
        case = f"abd{c}"
        (root / "refs" / case).mkdir(parents=True)
        for f in ("image.nii.gz", "labels.nii.gz", "labels.json"):
            (root / "refs" / case / f).symlink_to(src / f)
        maps = {s: (0.5 * np.clip(ndimage.gaussian_filter((lab == int(table[s])).astype(np.float32), 0.8 + 0.4 * c),
                                  0, 1)).astype(np.float32) for s in names}
        for s, p in maps.items():
            write_volume(geom.with_array(p), root / "maps" / case / f"prob_{s}.nii.gz")
        np.savez_compressed(nn / f"{case}.npz", probabilities=softmax_like(maps, names))
        shutil.copy(src / "labels.nii.gz", nn / f"{case}.nii.gz")  # the segmentation nnU-Net writes beside it
        arrays.append(maps)
    return nn, arrays, geom


def test_real_abdomen_labels_nnunet_and_maps_agree_and_apply(tmp_path, shared_data):
    names = ["spleen", "kidney_left", "liver"]
    nn, arrays, geom = _abdomen_cohort(tmp_path, shared_data, names)
    a = tune_cohort(tmp_path / "maps", tmp_path / "refs", n_boot=100)
    b = tune_cohort(nn, tmp_path / "refs", n_boot=100)
    assert not a.problems and not b.problems
    for s in names:
        ta, tb = a.structures[s], b.structures[s]
        assert ta.t_opt == tb.t_opt and ta.cv.gain == tb.cv.gain
        # channel c lies voxel for voxel on the reference: the blurred mask scaled by 0.5 is best near 0.25
        assert 0.1 <= ta.t_opt <= 0.35 and ta.value_at_opt > 0.9 and ta.value_at_05 < 0.5 * ta.value_at_opt
    table = tmp_path / "t.json"
    write_thresholds(table, {s: a.structures[s].t_opt for s in names})
    assert main(["apply", "--thresholds", str(table), "--prob-dir", str(nn), "--out", str(tmp_path / "segs")]) == 0
    seg = read_segmentation(tmp_path / "segs" / "abd1" / "segmentation.seg.nrrd")
    assert seg.geometry.same_grid(geom, atol=1e-4)
    for s in names:
        np.testing.assert_array_equal(seg.mask(s), arrays[1][s] >= np.float32(a.structures[s].t_opt))


def test_a_damaged_npz_is_one_error_naming_the_file_and_field(tmp_path):
    """Review finding: a garbage .npy member or a corrupt deflate stream gave a bare ValueError / zlib
    error; both are InputErrors naming the file now (and the case is listed, the cohort goes on)."""
    import zipfile

    labels = {"a": 1}
    garbage = tmp_path / "garbage.npz"
    with zipfile.ZipFile(garbage, "w") as zf:
        zf.writestr("probabilities.npy", b"this is not an npy header" * 10)
    with pytest.raises(InputError) as info:
        read_probabilities(garbage, labels)
    assert str(garbage) in str(info.value) and "probabilities" in str(info.value)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, probabilities=np.random.default_rng(0).random((2, 8, 9, 10)).astype(np.float32))
    raw = bytearray(good.read_bytes())
    for i in range(200, 400):  # flip bytes inside the compressed stream
        raw[i] ^= 0xFF
    broken = tmp_path / "broken.npz"
    broken.write_bytes(bytes(raw))
    with pytest.raises(InputError) as info:
        read_probabilities(broken, labels)
    assert str(broken) in str(info.value)
