"""`autosegsens compare` and `autosegsens sweep` on real files written to tmp_path and read back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.io import read_volume, write_segmentation, write_volume
from AutoSegSensitivity.metrics import compare_masks, surface_dice
from AutoSegSensitivity.segmentation import Segmentation
from AutoSegSensitivity.sweep import SWEEP_METRICS, sweep_thresholds
from AutoSegSensitivity.volume import Volume

SPACING_XYZ = (0.9, 1.1, 2.5)
ORIGIN = (-20.0, 13.0, 40.0)


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def labels_pair():
    ref = np.zeros((12, 20, 18), np.uint8)
    ref[3:9, 4:14, 3:12] = 1
    ref[2:5, 15:19, 13:17] = 2
    pred = ref.copy()
    pred[8, 4:14, 3:12] = 0  # one slice short
    pred[3:9, 4:14, 12] = 1  # one column wider
    pred[pred == 2] = 0
    pred[2:5, 14:18, 13:17] = 2  # shifted
    return ref, pred


def write_sitk(arr, path, spacing=SPACING_XYZ, origin=ORIGIN):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path), True)
    return path


def test_compare_seg_nrrd_pairs_by_name(tmp_path):
    ref, pred = labels_pair()
    geom = Volume(ref, SPACING_XYZ, ORIGIN)
    ref_seg = Segmentation.from_labels(geom, {1: "liver", 2: "spleen"})
    pred_seg = Segmentation.from_labels(geom.with_array(pred), {2: "spleen", 1: "liver"})
    write_segmentation(ref_seg, tmp_path / "ref.seg.nrrd")
    write_segmentation(pred_seg, tmp_path / "pred.seg.nrrd")
    out = tmp_path / "table.csv"
    assert main(["compare", str(tmp_path / "ref.seg.nrrd"), str(tmp_path / "pred.seg.nrrd"), "--out", str(out)]) == 0
    rows = read_csv(out)
    for col in ("segment", "dice", "jaccard", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml", "hd_mm",
                "hd95_mm", "msd_mm"):
        assert col in rows[0]
    assert [r["segment"] for r in rows] == ["liver", "spleen"]
    spacing_zyx = SPACING_XYZ[::-1]
    for r, value in zip(rows, (1, 2)):
        expected = compare_masks(pred == value, ref == value, spacing_zyx)
        for key in ("dice", "jaccard", "volume_ref_ml", "volume_pred_ml", "volume_diff_ml", "hd_mm", "hd95_mm",
                    "msd_mm"):
            assert float(r[key]) == pytest.approx(expected[key], rel=1e-12), key
        assert float(r["nsd_2mm"]) == pytest.approx(surface_dice(pred == value, ref == value, spacing_zyx, 2.0))
    out15 = tmp_path / "table15.csv"
    assert main(["compare", str(tmp_path / "ref.seg.nrrd"), str(tmp_path / "pred.seg.nrrd"), "--out", str(out15),
                 "--nsd-tolerance", "1.5"]) == 0
    rows15 = read_csv(out15)
    assert "nsd_1.5mm" in rows15[0] and "nsd_2mm" not in rows15[0]
    assert float(rows15[0]["nsd_1.5mm"]) == pytest.approx(surface_dice(pred == 1, ref == 1, spacing_zyx, 1.5))
    # an existing output is not replaced silently
    assert main(["compare", str(tmp_path / "ref.seg.nrrd"), str(tmp_path / "pred.seg.nrrd"), "--out", str(out)]) == 2
    assert main(["compare", str(tmp_path / "ref.seg.nrrd"), str(tmp_path / "pred.seg.nrrd"), "--out", str(out),
                 "--overwrite"]) == 0


def test_compare_label_volumes_with_names_pairs_and_stdout(tmp_path, capsys):
    ref, pred = labels_pair()
    write_sitk(ref, tmp_path / "ref.nrrd")
    write_sitk(pred, tmp_path / "pred.nii.gz")
    (tmp_path / "labels.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    code = main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "pred.nii.gz"), "--names",
                 str(tmp_path / "labels.json"), "--pair", "spleen=liver"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = list(csv.DictReader(lines))
    assert len(rows) == 1 and rows[0]["segment"] == "spleen" and rows[0]["pred_segment"] == "liver"
    assert float(rows[0]["dice"]) == 0.0
    # without --names: segments named by label value; an empty pair gives inf distances
    empty = np.zeros_like(ref)
    write_sitk(empty + (ref == 1), tmp_path / "only1.nrrd")
    out = tmp_path / "t.csv"
    assert main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "only1.nrrd"), "--pair", "1=1",
                 "--out", str(out)]) == 0
    assert float(read_csv(out)[0]["dice"]) == 1.0
    assert main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "pred.nii.gz"), "--pair", "liver"]) == 2
    assert main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "nothing.nrrd")]) == 2


def test_compare_different_grids_needs_resample(tmp_path, capsys):
    ref, _ = labels_pair()
    write_sitk(ref, tmp_path / "ref.nrrd")
    write_sitk(ref, tmp_path / "moved.nrrd", origin=(ORIGIN[0] + 0.9, ORIGIN[1], ORIGIN[2]))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "moved.nrrd")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid" in err[0] and "origin" in err[0]
    out = tmp_path / "r.csv"
    assert main(["compare", str(tmp_path / "ref.nrrd"), str(tmp_path / "moved.nrrd"), "--resample",
                 "--out", str(out)]) == 0
    row = read_csv(out)[0]
    assert 0.5 < float(row["dice"]) < 1.0 and float(row["hd_mm"]) == pytest.approx(0.9)


def test_compare_real_abdomen_labels(tmp_path, shared_data):
    folder = shared_data / "abdomen-ct"
    labels = next(p for p in folder.iterdir() if p.name.startswith("example_seg") or p.name.startswith("labels.n"))
    vol = read_volume(labels)
    arr = np.asarray(vol.array).astype(np.int16)
    pred = arr.copy()
    liver_value = int([k for k, v in json.loads((folder / "labels.json").read_text()).items() if v == "liver"][0])
    liver = arr == liver_value
    grown = ndimage.binary_dilation(liver) & (arr == 0)
    pred[grown] = liver_value
    write_volume(vol.with_array(pred), tmp_path / "pred.nrrd")
    out = tmp_path / "abdomen.csv"
    assert main(["compare", str(labels), str(tmp_path / "pred.nrrd"), "--names", str(folder / "labels.json"),
                 "--out", str(out)]) == 0
    rows = {r["segment"]: r for r in read_csv(out)}
    assert len(rows) > 20
    expected = compare_masks(pred == liver_value, liver, vol.spacing_zyx)
    assert float(rows["liver"]["dice"]) == pytest.approx(expected["dice"], rel=1e-12)
    assert float(rows["liver"]["hd_mm"]) == pytest.approx(expected["hd_mm"], rel=1e-12)
    assert float(rows["liver"]["volume_diff_ml"]) > 0
    assert float(rows["spleen"]["dice"]) == 1.0


def make_sweep_inputs(tmp_path, n=2, seed=0):
    rng = np.random.default_rng(seed)
    shape = (12, 22, 20)
    paths_p, paths_r, probs, refs = [], [], [], []
    for i in range(n):
        ref = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
        prob = np.clip(ndimage.gaussian_filter(ref + 0.3 * rng.standard_normal(shape), 1.2), 0, 1).astype(np.float32)
        geom = Volume(prob, SPACING_XYZ, ORIGIN)
        seg = Segmentation.from_labels(geom.with_array(ref.astype(np.uint8)), {1: "Blob"})
        seg.add("Other", ~ref)
        paths_p.append(write_volume(geom, tmp_path / f"case{i}_prob.nrrd"))
        paths_r.append(write_segmentation(seg, tmp_path / f"case{i}.seg.nrrd"))
        probs.append(prob)
        refs.append(ref)
    return paths_p, paths_r, probs, refs


def test_sweep_cli_writes_tables_summary_and_figures(tmp_path):
    paths_p, paths_r, probs, refs = make_sweep_inputs(tmp_path)
    out = tmp_path / "out"
    argv = ["sweep", "--segment", "Blob", "--out", str(out)]
    for p, r in zip(paths_p, paths_r):
        argv += ["--prob", str(p), "--ref", str(r)]
    assert main(argv) == 0
    table = read_csv(out / "sweep.csv")
    assert len(table) == 101
    assert list(table[0])[:6] == ["threshold", "dice", "nsd", "msd_mm", "hd_mm", "hd95_mm"]
    direct = sweep_thresholds(probs, refs, [SPACING_XYZ[::-1]] * 2, metrics=SWEEP_METRICS)
    np.testing.assert_allclose([float(r["nsd"]) for r in table], direct.pooled["nsd"], rtol=1e-12)
    assert json.loads((out / "summary.json").read_text())["metrics"]["nsd"]["tolerance_mm"] == 2.0
    np.testing.assert_allclose([float(r["dice"]) for r in table], direct.pooled["dice"], rtol=1e-12)
    np.testing.assert_allclose([float(r["hd95_mm"]) for r in table], direct.pooled["hd95"], rtol=1e-12)
    per_case = read_csv(out / "sweep_per_case.csv")
    assert len(per_case) == 202 and {r["case"] for r in per_case} == {"case0_prob", "case1_prob"}
    summary = json.loads((out / "summary.json").read_text())
    t_opt, v_opt = direct.optimum("dice")
    assert summary["metrics"]["dice"]["pooled"]["optimum_threshold"] == t_opt
    assert summary["metrics"]["dice"]["pooled"]["optimum_value"] == pytest.approx(v_opt)
    assert summary["metrics"]["msd"]["pooled"]["loss_at_0.5"] == pytest.approx(direct.loss_at(0.5, "msd"))
    assert summary["inputs"]["probability_maps"] == [str(p) for p in paths_p]
    assert summary["inputs"]["segment"] == "Blob"
    for name in ("sweep.png", "sweep_dice.png", "sweep_nsd.png", "sweep_msd.png", "sweep_hd.png", "sweep_hd95.png",
                 "perturbation_losses.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # the output folder is not overwritten silently
    assert main(argv) == 2
    assert main(argv + ["--overwrite", "--thresholds", "0.2,0.4", "--metrics", "dice"]) == 0
    assert len(read_csv(out / "sweep.csv")) == 2
    # another tolerance reaches the sweep
    assert main(argv + ["--overwrite", "--thresholds", "0.5", "--metrics", "nsd", "--nsd-tolerance", "0.5"]) == 0
    tight = sweep_thresholds(probs, refs, [SPACING_XYZ[::-1]] * 2, thresholds=[0.5], metrics=("nsd",),
                             nsd_tolerance=0.5)
    assert float(read_csv(out / "sweep.csv")[0]["nsd"]) == pytest.approx(tight.pooled["nsd"][0], rel=1e-12)
    assert json.loads((out / "summary.json").read_text())["metrics"]["nsd"]["tolerance_mm"] == 0.5


def test_sweep_cli_missing_segment_logits_and_bad_input(tmp_path, capsys):
    paths_p, paths_r, probs, refs = make_sweep_inputs(tmp_path, n=2)
    other = Segmentation.from_labels(Volume(refs[0].astype(np.uint8), SPACING_XYZ, ORIGIN), {1: "Else"})
    write_segmentation(other, tmp_path / "other.seg.nrrd")
    out = tmp_path / "missing"
    code = main(["sweep", "--prob", str(paths_p[0]), "--ref", str(paths_r[0]), "--prob", str(paths_p[1]),
                 "--ref", str(tmp_path / "other.seg.nrrd"), "--segment", "Blob", "--thresholds", "0:1:0.1",
                 "--out", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == ["case0_prob"]
    assert summary["problems"][0]["case"] == "case1_prob" and "missing" in summary["problems"][0]["reason"]
    assert "case1_prob" in capsys.readouterr().err
    # logits: the same result as the probabilities
    logit = np.log(np.clip(probs[0], 1e-6, 1 - 1e-6) / (1 - np.clip(probs[0], 1e-6, 1 - 1e-6))).astype(np.float32)
    write_volume(Volume(logit, SPACING_XYZ, ORIGIN), tmp_path / "logit.nrrd")
    assert main(["sweep", "--prob", str(tmp_path / "logit.nrrd"), "--ref", str(paths_r[0]), "--segment", "Blob",
                 "--thresholds", "0.3,0.5", "--out", str(tmp_path / "lg"), "--logits"]) == 0
    assert main(["sweep", "--prob", str(tmp_path / "logit.nrrd"), "--ref", str(paths_r[0]), "--segment", "Blob",
                 "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "logit.nrrd" in err and "[0, 1]" in err
    common = ["--segment", "Blob", "--prob", str(paths_p[0]), "--ref", str(paths_r[0])]
    assert main(["sweep", *common, "--prob", str(paths_p[1]), "--out", str(tmp_path / "b2")]) == 2
    assert main(["sweep", *common, "--thresholds", "0.5:0.4:0.1", "--out", str(tmp_path / "b3")]) == 2
    assert main(["sweep", "--prob", str(paths_p[0]), "--ref", str(paths_r[0]), "--out", str(tmp_path / "b4")]) == 2
    moved = read_volume(paths_p[0])
    moved.origin = (ORIGIN[0] + 1.0, ORIGIN[1], ORIGIN[2])
    write_volume(moved, tmp_path / "moved.nrrd")
    assert main(["sweep", "--segment", "Blob", "--prob", str(tmp_path / "moved.nrrd"), "--ref", str(paths_r[0]),
                 "--out", str(tmp_path / "b5")]) == 2
    assert main(["sweep", "--segment", "Blob", "--prob", str(tmp_path / "moved.nrrd"), "--ref", str(paths_r[0]),
                 "--resample", "--thresholds", "0.5", "--out", str(tmp_path / "b6")]) == 0
