"""References of tune/apply in every layout (AutoSegSensitivity.io.references): nnU-Net's own label folder
(flat <case>.nii.gz + dataset.json labels), dataset folders without images, and the error that lists why
no case can be used. Every route is checked against the dataset route with images on the same data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_segmentation, read_volume, write_segmentation, write_volume
from AutoSegSensitivity.io.labels import write_label_names
from AutoSegSensitivity.io.references import detect_ref_format, find_dataset_json, scan_references
from AutoSegSensitivity.segmentation import Segmentation
from AutoSegSensitivity.tune import tune_cohort
from AutoSegSensitivity.volume import Volume

from tune_cohort import ORIGIN, SPACING_XYZ, case_arrays, write_cohort

LABELS = {"background": 0, "Low": 1, "High": 2}


def label_map(masks):
    """One label volume from the cohort's masks (High drawn over Low where they overlap)."""
    lab = np.zeros(masks["Low"].shape, np.uint8)
    lab[masks["Low"]] = 1
    lab[masks["High"]] = 2
    return lab


def write_label_layouts(root, n):
    """The same label maps as (a) nnU-Net's label folder Dataset/labelsTs/<case>.nii.gz with
    Dataset/dataset.json, (b) case folders with labels.nii.gz + labels.json and an image, (c) the same
    without the image."""
    ds = root / "Dataset001_X"
    (ds / "labelsTs").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nii.gz", "numTraining": 0}))
    for i in range(n):
        case = f"case{i:02d}"
        vol = Volume(label_map(case_arrays(i)[1]), SPACING_XYZ, ORIGIN)
        write_volume(vol, ds / "labelsTs" / f"{case}.nii.gz")
        for layout, image in (("with_image", True), ("no_image", False)):
            folder = root / layout / case
            write_volume(vol, folder / "labels.nii.gz")
            write_label_names({1: "Low", 2: "High"}, folder / "labels.json")
            if image:
                write_volume(vol.with_array(np.zeros(vol.shape, np.int16)), folder / "image.nrrd")
    return ds / "labelsTs", root / "with_image", root / "no_image"


def crop(seg, shape, low, grow=0):
    """The segments on a sub-grid starting at voxel ``low`` (z, y, x) that holds every segment (``grow`` > 0:
    a grid ``grow`` voxels larger on every side, with one voxel set outside the original grid)."""
    if grow:
        lo = np.full(3, -grow)
        hi = np.asarray(shape) + grow
    else:
        nz = np.argwhere(np.any([seg.mask(n) for n in seg.names], axis=0))
        lo, hi = np.minimum(nz.min(0), low), nz.max(0) + 1
    g = seg.geometry
    origin = np.asarray(g.origin) + g.direction @ (lo[::-1] * np.asarray(g.spacing))
    out = Segmentation.on_grid(Volume(np.zeros(tuple(hi - lo), np.uint8), g.spacing, origin, g.direction))
    for n in seg.names:
        m = np.zeros(tuple(hi - lo), bool)
        src = tuple(slice(max(a, 0), min(b, N)) for a, b, N in zip(lo, hi, shape))
        dst = tuple(slice(s_.start - a, s_.stop - a) for s_, a in zip(src, lo))
        m[dst] = seg.mask(n)[src]
        if grow and n == "High":
            m[0, 0, 0] = True
        out.add(n, m)
    return out


def write_cropped_references(refs, dest):
    """``dest/<case>/segmentation.seg.nrrd`` for every case of the dataset folder ``refs``: its segments
    cropped to the voxels they hold (as Slicer may save a segmentation), with no image; returns ``dest``."""
    for case in sorted(p.name for p in refs.iterdir()):
        seg = read_segmentation(refs / case / "segmentation.seg.nrrd")
        cropped = crop(seg, seg.geometry.shape, (1, 2, 3))
        assert cropped.geometry.shape != seg.geometry.shape
        write_segmentation(cropped, dest / case / "segmentation.seg.nrrd")
    return dest


def same_tuning(a, b):
    assert list(a.structures) == list(b.structures)
    for s in a.structures:
        ta, tb = a.structures[s], b.structures[s]
        assert (ta.cases, ta.t_opt, ta.value_at_opt, ta.cv.fold_thresholds, ta.cv.gain, ta.cv.ci_low) == \
            (tb.cases, tb.t_opt, tb.value_at_opt, tb.cv.fold_thresholds, tb.cv.gain, tb.cv.ci_low)
        np.testing.assert_array_equal(ta.result.pooled["dice"], tb.result.pooled["dice"])


def test_nnunet_label_folder_equals_dataset_route_with_and_without_images(tmp_path):
    probs, _ = write_cohort(tmp_path, 5)
    labels_ts, with_image, no_image = write_label_layouts(tmp_path, 5)
    assert detect_ref_format(labels_ts) == "nnunet" and detect_ref_format(with_image) == "dataset"
    assert find_dataset_json(labels_ts) == labels_ts.parent / "dataset.json"  # nnU-Net's raw layout
    base = tune_cohort(probs, with_image, n_boot=100, seed=3)
    nn = tune_cohort(probs, labels_ts, n_boot=100, seed=3)
    bare = tune_cohort(probs, no_image, n_boot=100, seed=3)
    assert nn.inputs["ref_format"] == "nnunet" and not nn.problems and not bare.problems
    same_tuning(base, nn)
    same_tuning(base, bare)
    # the label maps really are what was tuned against: the Dice at 0.5 of High from the masks by hand
    maps = [case_arrays(i)[0]["High"] for i in range(5)]
    refs = [label_map(case_arrays(i)[1]) == 2 for i in range(5)]
    tp = sum(np.count_nonzero((p >= 0.5) & r) for p, r in zip(maps, refs))
    den = sum(np.count_nonzero(p >= 0.5) + np.count_nonzero(r) for p, r in zip(maps, refs))
    assert nn.structures["High"].value_at_05 == pytest.approx(2 * tp / den, abs=1e-12)


def test_segmentation_references_without_images(tmp_path):
    probs, refs = write_cohort(tmp_path, 4)
    bare = tmp_path / "bare"
    shutil.copytree(refs, bare)
    for f in bare.glob("*/image.nrrd"):
        f.unlink()
    same_tuning(tune_cohort(probs, refs, n_boot=50), tune_cohort(probs, bare, n_boot=50))
    # a .seg.nrrd cropped to its segments (as Slicer may save it), no image: placed back onto the maps' grid
    cropped = write_cropped_references(refs, tmp_path / "cropped")
    same_tuning(tune_cohort(probs, refs, n_boot=50), tune_cohort(probs, cropped, n_boot=50))
    # half a voxel off, or reaching outside the map's grid: one line naming the map and the grid
    seg = read_segmentation(refs / "case00" / "segmentation.seg.nrrd")
    g = seg.geometry
    half = Segmentation.on_grid(Volume(g.array, g.spacing, np.add(g.origin, (0.5 * g.spacing[0], 0, 0)), g.direction))
    half.segments = seg.segments
    write_segmentation(half, cropped / "case00" / "segmentation.seg.nrrd")
    big = crop(seg, seg.geometry.shape, (0, 0, 0), grow=2)
    write_segmentation(big, cropped / "case01" / "segmentation.seg.nrrd")
    lines = tune_cohort(probs, cropped, n_boot=20).problem_lines()
    assert any(ln.startswith(f"case00: High: {probs / 'case00' / 'prob_High.nrrd'}: grid: expected the grid of the "
                             "reference case00 or one offset from it by whole voxels, got origin") for ln in lines)
    assert any(ln.startswith("case01: High:") and "segment 'High' inside the map's grid, got voxels outside it" in ln
               for ln in lines)
    # an image alone (no contours) is a case-level problem naming what is expected
    (tmp_path / "only_image" / "case00").mkdir(parents=True)
    shutil.copy(refs / "case00" / "image.nrrd", tmp_path / "only_image" / "case00" / "image.nrrd")
    found, problems = scan_references(tmp_path / "only_image")
    assert not found and problems[0][0] == "case00" and "segmentation.seg.nrrd" in problems[0][1]


def test_cli_tune_and_apply_on_nnunet_output_with_a_label_folder_and_no_images(tmp_path, capsys):
    from test_io_nnunet import write_nnunet_output

    labels_ts, with_image, _ = write_label_layouts(tmp_path, 4)
    nn = tmp_path / "nnunet_out"
    write_nnunet_output(nn, 4)
    out = tmp_path / "tuned"
    assert main(["tune", "--prob-dir", str(nn), "--ref-dir", str(labels_ts), "--ref-format", "nnunet", "--out",
                 str(out), "--bootstrap", "50"]) == 0
    doc = json.loads((out / "thresholds.json").read_text())
    assert doc["inputs"]["ref_format"] == "nnunet" and sorted(doc["structures"]) == ["High", "Low"]
    ref = tune_cohort(nn, with_image, n_boot=50)
    assert {s: e["threshold"] for s, e in doc["structures"].items()} == {s: t.t_opt for s, t in ref.structures.items()}
    # apply: no segmentation beside the .npz, the grid comes from the label files (no image anywhere)
    segs = tmp_path / "segs"
    assert main(["apply", "--thresholds", str(out / "thresholds.json"), "--prob-dir", str(nn), "--out", str(segs),
                 "--ref-dir", str(labels_ts)]) == 0
    seg = read_segmentation(segs / "case02" / "segmentation.seg.nrrd")
    assert seg.geometry.same_grid(read_volume(labels_ts / "case02.nii.gz"), atol=1e-4)
    for s in ("Low", "High"):
        np.testing.assert_array_equal(seg.mask(s), case_arrays(2)[0][s] >= np.float32(doc["structures"][s]["threshold"]))
    # the wrong layout named explicitly: every case unusable, each reason on one line
    capsys.readouterr()
    assert main(["tune", "--prob-dir", str(nn), "--ref-dir", str(labels_ts), "--ref-format", "dataset",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("autosegsens tune: error:") and "no usable case: case00:" in err[-1]
    assert str(labels_ts / "case00") in err[-1]


def test_label_folder_dataset_json_errors_are_one_line(tmp_path, capsys):
    probs, _ = write_cohort(tmp_path, 3)
    labels_ts, _, _ = write_label_layouts(tmp_path, 3)
    (labels_ts.parent / "dataset.json").unlink()
    with pytest.raises(InputError, match="dataset.json"):
        tune_cohort(probs, labels_ts)
    region = {"labels": {"background": 0, "Low": 1, "High": 2, "Both": [1, 2]}, "regions_class_order": [1, 2, 3]}
    (tmp_path / "regions.json").write_text(json.dumps(region))
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(labels_ts), "--dataset-json",
                 str(tmp_path / "regions.json"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "labels.Both" in err[0] and "region-based" in err[0]
    # the file ending of dataset.json decides which files are cases
    (labels_ts.parent / "dataset.json").write_text(json.dumps({"labels": LABELS, "file_ending": ".nrrd"}))
    with pytest.raises(InputError) as info:
        tune_cohort(probs, labels_ts)
    assert f"no usable case: {labels_ts}: files: expected label files <case>.nrrd" in str(info.value)


def test_no_usable_case_lists_the_first_reasons(tmp_path):
    probs, _ = write_cohort(tmp_path, 7)
    labels_ts, _, _ = write_label_layouts(tmp_path, 7)
    for i in (0, 3, 4, 5, 6):
        (labels_ts / f"case{i:02d}.nii.gz").unlink()
    # case01: both maps on another grid; case02: no maps at all
    for s in ("Low", "High"):
        p = read_volume(probs / "case01" / f"prob_{s}.nrrd")
        write_volume(Volume(p.array, p.spacing, (0.0, 0.0, 0.0), p.direction), probs / "case01" / f"prob_{s}.nrrd")
        (probs / "case02" / f"prob_{s}.nrrd").unlink()
    with pytest.raises(InputError) as info:
        tune_cohort(probs, labels_ts)
    msg = str(info.value)
    assert msg.startswith(f"{probs}: cases: no usable case: case00: {labels_ts / 'case00.nii.gz'}: file: ")
    assert f"case01: High: {probs / 'case01' / 'prob_High.nrrd'}: grid: expected the grid of the reference" in msg
    assert "got origin [-10.0, 5.0, 30.0] vs [0.0, 0.0, 0.0]" in msg
    assert f"case02: {probs / 'case02'}: files: expected probability maps prob_<structure>.nrrd" in msg
    assert msg.count(";") == 5 and msg.endswith("; and 2 more")  # 7 cases: the first 5, then the count
    assert "\n" not in msg and len(info.value.problems) >= 7
    # nothing in common: the reasons of both sides, sorted by case
    empty = tmp_path / "empty_refs"
    empty.mkdir()
    (empty / "other").mkdir()
    with pytest.raises(InputError) as info:
        tune_cohort(probs, empty)
    msg = str(info.value)
    assert "no usable case: case00: " in msg and str(empty / "case00") in msg and "and 3 more" in msg


def test_real_abdomen_labels_as_an_nnunet_label_folder(tmp_path, shared_data):
    """The real abdomen CT labels (non-consecutive values) relabelled 1..3 into nnU-Net's label folder
    equal the dataset route on the original labels.nii.gz + labels.json; no image is given to either."""
    src = shared_data / "abdomen-ct"
    img = sitk.ReadImage(str(src / "labels.nii.gz"))
    lab = sitk.GetArrayFromImage(img)
    table = {v: int(k) for k, v in json.loads((src / "labels.json").read_text()).items()}
    names = ["spleen", "kidney_left", "liver"]
    ds = tmp_path / "Dataset002_Abd"
    (ds / "labelsTs").mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({"labels": {"background": 0, **{s: i + 1 for i, s in enumerate(names)}},
                                                 "file_ending": ".nii.gz"}))
    relabelled = np.zeros(lab.shape, np.uint8)
    for i, s in enumerate(names):
        relabelled[lab == table[s]] = i + 1
    geom = read_volume(src / "labels.nii.gz")
    for c in range(3):
        case = f"abd{c}"
        out = sitk.GetImageFromArray(relabelled)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(ds / "labelsTs" / f"{case}.nii.gz"))
        (tmp_path / "refs" / case).mkdir(parents=True)
        for f in ("labels.nii.gz", "labels.json"):
            (tmp_path / "refs" / case / f).symlink_to(src / f)
        for s in names:
            p = 0.5 * np.clip(ndimage.gaussian_filter((lab == table[s]).astype(np.float32), 0.8 + 0.4 * c), 0, 1)
            write_volume(geom.with_array(p.astype(np.float32)), tmp_path / "maps" / case / f"prob_{s}.nii.gz")
    a = tune_cohort(tmp_path / "maps", tmp_path / "refs", structures=names, n_boot=100)
    b = tune_cohort(tmp_path / "maps", ds / "labelsTs", structures=names, n_boot=100)
    assert not a.problems and not b.problems and b.inputs["ref_format"] == "nnunet"
    same_tuning(a, b)
    assert 0.1 <= b.structures["liver"].t_opt <= 0.35


def test_dataset_json_is_looked_for_beside_the_labels_then_above_then_with_the_predictions(tmp_path):
    ref, prob = tmp_path / "D" / "labelsTs", tmp_path / "pred"
    ref.mkdir(parents=True)
    prob.mkdir()
    with pytest.raises(InputError) as info:
        find_dataset_json(ref, prob)
    assert str(info.value).startswith(f"{ref}: dataset.json: expected nnU-Net's dataset.json") and str(prob) in str(info.value)
    for folder in (prob, tmp_path / "D", ref):  # each newly written one takes precedence over the last
        (folder / "dataset.json").write_text("{}")
        assert find_dataset_json(ref, prob) == folder / "dataset.json"
    assert find_dataset_json(ref, prob, tmp_path / "given.json") == tmp_path / "given.json"


def test_one_case_reference_is_found_as_the_scan_finds_it(tmp_path):
    """case_reference (the Cohort section's case loader) looks at one case only and finds what
    scan_references finds for it, in every layout; a missing case is one line naming the file or folder."""
    from AutoSegSensitivity.io.references import case_reference

    labels_ts, with_image, no_image = write_label_layouts(tmp_path, 2)
    labels = {"Low": 1, "High": 2}
    for folder, fmt in ((labels_ts, "nnunet"), (with_image, "dataset"), (no_image, "dataset")):
        found = scan_references(folder, fmt, labels)[0]
        for case, ref in found.items():
            one = case_reference(folder, case, "auto", labels)
            assert (one.name, one.path, one.kind, one.image_path, one.labels_path, one.names) == \
                (ref.name, ref.path, ref.kind, ref.image_path, ref.labels_path, ref.names)
    for folder, where in ((labels_ts, labels_ts / "case09.nii.gz"), (no_image, no_image / "case09")):
        with pytest.raises(InputError) as info:
            case_reference(folder, "case09", "auto", labels)
        assert str(info.value).startswith(f"{where}: ") and "\n" not in str(info.value)
    with pytest.raises(InputError, match="labels"):
        case_reference(labels_ts, "case00", "nnunet")
