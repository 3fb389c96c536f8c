"""The lines the CLI prints for runs that have nothing to do, wrong folders, nothing to apply and Ctrl-C
(user trial F7 a, e, f, g) and the help text they rely on (tiny cohorts: a few seconds in all)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.io import write_volume
from AutoSegSensitivity.predict_shards import ShardResult
from AutoSegSensitivity.volume import Volume

from tune_cohort import ORIGIN, SHAPE, SPACING_XYZ, case_arrays, write_cohort

FAST = ["--folds", "2", "--bootstrap", "20"]


def err_lines(text: str) -> list:
    return [line for line in text.splitlines() if line.strip()]


def write_label_refs(root, n: int = 2, crop=None):
    """``root/refs/<case>/labels.nii.gz + labels.json`` (no image) of the cohort's ``Low`` structure, and
    ``root/probs/<case>/prob_Low.nrrd``; with ``crop`` (z, y, x slices) the maps are cropped to it (their
    origin moved by the whole voxels cut off) and ``root/padded/`` holds the same maps zero-padded back."""
    refs, probs, padded = root / "refs", root / "probs", root / "padded"
    for i in range(n):
        case = f"case{i:02d}"
        maps, masks = case_arrays(i)
        write_volume(Volume(masks["Low"].astype(np.uint8), SPACING_XYZ, ORIGIN), refs / case / "labels.nii.gz")
        (refs / case / "labels.json").write_text(json.dumps({"1": "Low"}))
        if crop is None:
            write_volume(Volume(maps["Low"], SPACING_XYZ, ORIGIN), probs / case / "prob_Low.nrrd")
            continue
        cut = maps["Low"][crop]
        off_zyx = [s.start for s in crop]
        origin = tuple(o + k * d for o, k, d in zip(ORIGIN, off_zyx[::-1], SPACING_XYZ))  # identity direction
        write_volume(Volume(np.ascontiguousarray(cut), SPACING_XYZ, origin), probs / case / "prob_Low.nrrd")
        full = np.zeros(SHAPE, np.float32)
        full[crop] = cut
        write_volume(Volume(full, SPACING_XYZ, ORIGIN), padded / case / "prob_Low.nrrd")
    return refs, probs, padded


def test_finished_rerun_says_nothing_to_do():
    """F7 a: a rerun over a finished folder printed '0 of 0 cases done (0.0 s)'."""
    lines = ShardResult(0, 1, ["case000", "case001"], already_complete=["case000", "case001"]).summary()
    assert lines[-1] == "all 2 cases already finished (skipped); nothing to do"
    assert not any("0 of 0" in line for line in lines)
    # a run with work to do still gets the batch counts
    assert ShardResult(0, 1, ["case000"]).summary()[-1].startswith("0 of 0 cases done") is True


def test_reference_folder_as_prob_dir_says_so(tmp_path, capsys):
    """F7 e: --prob-dir pointed at a folder of labels.nii.gz cases was read as channels ('channel names')."""
    refs, _, _ = write_label_refs(tmp_path)
    assert main(["tune", "--prob-dir", str(refs), "--ref-dir", str(refs), "--out", str(tmp_path / "t"), *FAST]) == 2
    err = err_lines(capsys.readouterr().err)
    assert len(err) == 1, err
    assert "looks like a reference folder" in err[0] and "labels.nii.gz" in err[0]
    assert "channel names" not in err[0] and not (tmp_path / "t").exists()
    # the dataset layout (image.nrrd + segmentation.seg.nrrd) too, and apply says the same
    _, seg_refs = write_cohort(tmp_path / "c", 1)
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"format": "autosegsens-thresholds", "version": 1, "metric": "dice",
                               "structures": {"Low": {"threshold": 0.3}}}))
    assert main(["apply", "--thresholds", str(thr), "--prob-dir", str(seg_refs), "--out", str(tmp_path / "s")]) == 2
    err = err_lines(capsys.readouterr().err)
    assert len(err) == 1 and "looks like a reference folder" in err[0] and "segmentation.seg.nrrd" in err[0]


def test_apply_with_other_structures_is_one_line_per_structure(tmp_path, capsys):
    """F7 f: one note per case and structure (46 lines on 16 cases) before the error."""
    probs, _ = write_cohort(tmp_path, 6)
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"format": "autosegsens-thresholds", "version": 1, "metric": "dice",
                               "structures": {"liver": {"threshold": 0.3}, "aorta": {"threshold": 0.2}}}))
    assert main(["apply", "--thresholds", str(thr), "--prob-dir", str(probs), "--out", str(tmp_path / "s")]) == 2
    err = err_lines(capsys.readouterr().err)
    notes = [line for line in err if line.startswith("note: ")]
    assert len(err) == len(notes) + 1 and len(notes) == 3, err  # liver, aorta, the cases with none; the error
    assert sum("liver" in n and "6 case(s)" in n for n in notes) == 1
    assert sum("aorta" in n and "6 case(s)" in n for n in notes) == 1
    assert "['aorta', 'liver']" in err[-1] and "the maps hold High, Low" in err[-1]
    assert not (tmp_path / "s").exists()


def test_ctrl_c_in_tune_says_what_was_kept(tmp_path, capsys, monkeypatch):
    """F7 g: a Ctrl-C while the cases are read prints what was kept (tune's kept(args)), not only 'cancelled.'."""
    import AutoSegSensitivity.tune as tune

    probs, refs = write_cohort(tmp_path, 2)
    out = tmp_path / "tuned"

    def interrupted(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune, "_count_case", interrupted)
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), *FAST]) == 130
    last = err_lines(capsys.readouterr().err)[-1]
    assert last == f"autosegsens tune: cancelled (SIGINT). nothing written: {out} is as it was (run the same command again)"
    assert not out.exists()


def test_cropped_map_counts_as_zero_padded(tmp_path):
    """A map on a grid offset by whole voxels (cropped) from an image-less reference is accepted and gives
    the same numbers as the same map zero-padded to the reference grid (tune --help says so)."""
    crop = (slice(1, 9), slice(0, 14), slice(2, 17))
    refs, probs, padded = write_label_refs(tmp_path, 2, crop)
    for name, folder in (("cropped", probs), ("padded", padded)):
        assert main(["tune", "--prob-dir", str(folder), "--ref-dir", str(refs), "--out", str(tmp_path / name),
                     *FAST]) == 0
    rows = {n: list(csv.DictReader(open(tmp_path / n / "cases.csv"))) for n in ("cropped", "padded")}
    assert rows["cropped"] == rows["padded"] and len(rows["cropped"]) == 2
    summary = {n: list(csv.DictReader(open(tmp_path / n / "summary.csv"))) for n in ("cropped", "padded")}
    for row in summary["cropped"] + summary["padded"]:
        row.pop("prominence")  # voxel fraction of the map's grid (documented in tune --help)
    assert summary["cropped"] == summary["padded"]
    # a crop that cuts reference voxels off is refused, naming the grid
    refs2, probs2, _ = write_label_refs(tmp_path / "tight", 2, (slice(4, 6), slice(1, 19), slice(2, 17)))
    assert main(["tune", "--prob-dir", str(probs2), "--ref-dir", str(refs2), "--out", str(tmp_path / "x"),
                 *FAST]) == 2


@pytest.mark.parametrize("command", ["tune", "apply"])
def test_help_says_where_labels_come_from_and_that_cropped_maps_are_accepted(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "REF_DIR/dataset.json, REF_DIR/../dataset.json, PROB_DIR/dataset.json" in text
    assert "PROB_DIR/labels.json" in text
    assert "offset by whole voxels" in text and "zero-padded" in text
