"""Nothing stale may look finished in a ``predict --data`` folder, nor in what ``tune`` / ``apply`` make of it
(issue 20's rule, from a user trial):

* the per-case marker records the input image (path, size, mtime_ns; a DICOM series by its listing): another
  dataset with the same case names, or a re-converted CT, is redone, never skipped; deciding costs a stat,
  not a read;
* a redone case loses the files its old marker listed that the new run does not write (an old
  segmentation, maps of another format), never other files, and the redo line gives every reason;
* ``apply`` refuses the folders ``tune`` refuses (unfinished cases, a mix of models), with the same
  ``--allow-incomplete``;
* ``thresholds.json`` records the model its maps came from; ``predict --thresholds`` with another model warns;
* the messages say what is the case: Ctrl-C during a redo, a mix of models (each named), a failed case.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from AutoSegSensitivity import inference
from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.inference import load_checkpoint
from AutoSegSensitivity.io import read_volume
from AutoSegSensitivity.io.dataset import Case
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.predict_shards import (MARKER, REDO_REASONS, check_finished, input_identity, model_sha256,
                                               predict_shard)
from AutoSegSensitivity.training import train

CASES = ["case000", "case001", "case002"]
STRUCTURES = ("Brain", "SpinalCord")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Two datasets with the same case names (other patients: other seeds) and two checkpoints of one
    config that differ only in the seed."""
    root = tmp_path_factory.mktemp("integrity")
    make_phantom_dataset(root / "siteA", cases=3, seed=4, shape=(5, 24, 24))
    make_phantom_dataset(root / "siteB", cases=3, seed=9, shape=(5, 24, 24))
    cfg = dict(model="unet2d", model_kwargs={"base_features": 4}, structures=list(STRUCTURES), epochs=1,
               batch_size=4, samples_per_epoch=4, val_cases=["case002"])
    for name, seed in (("a", 0), ("b", 1)):
        train(dict(cfg, seed=seed), root / "siteA", root / name, device="cpu", progress_bar=False)
    return root


def _maps(out, case, ext="nrrd"):
    return {s: read_volume(out / case / f"prob_{s}.{ext}").array for s in STRUCTURES}


def _stamps(out):
    return {str(p.relative_to(out)): os.stat(p).st_mtime_ns for c in CASES for p in sorted((out / c).iterdir())}


# ---- F6: the input image is part of a case's identity --------------------------------------------------


def test_another_dataset_with_the_same_case_names_is_redone(root, tmp_path, capsys):
    """The defect: predicting siteB into a folder holding siteA's maps skipped every case ("already
    complete") and kept siteA's maps. Now every case is redone with the reason, the maps equal a fresh
    prediction of siteB, and a rerun skips them without reading an image."""
    ckpt = str(root / "a" / "last.pt")
    out = tmp_path / "pred"
    assert main(["predict", "--model", ckpt, "--data", str(root / "siteA"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", "--model", ckpt, "--data", str(root / "siteB"), "--out", str(out)]) == 0
    io = capsys.readouterr()
    assert "0 already complete" in io.out and "3 redone" in io.out
    assert f"3 cases ({', '.join(CASES)}): {REDO_REASONS['input']}" in io.err
    fresh = tmp_path / "fresh"
    predict_shard(load_checkpoint(ckpt), root / "siteB", fresh, progress=False)
    for c in CASES:
        for s, arr in _maps(out, c).items():
            np.testing.assert_array_equal(arr, _maps(fresh, c)[s])
        marker = json.loads((out / c / MARKER).read_text())
        image = root / "siteB" / c / "image.nrrd"
        assert marker["input"] == {"path": str(image.resolve()), "size": image.stat().st_size,
                                   "mtime_ns": image.stat().st_mtime_ns}
    assert json.loads((out / "shard-0-of-1.json").read_text())["redone"] == {c: REDO_REASONS["input"] for c in CASES}


def test_a_reconverted_image_is_redone_and_deciding_reads_no_image(root, tmp_path, monkeypatch):
    """A case whose image file was rewritten (same path, new mtime / size) is redone, alone; when nothing
    changed, the rerun decides from the markers and a stat of each image: no image is read, no file rewritten."""
    data = tmp_path / "data"
    shutil.copytree(root / "siteA", data)
    model = load_checkpoint(root / "a" / "last.pt")
    out = tmp_path / "pred"
    predict_shard(model, data, out, progress=False)
    stamps = _stamps(out)
    from AutoSegSensitivity import io as asio

    def no_read(*a, **k):
        raise AssertionError("an image was read to decide a skip")

    monkeypatch.setattr(asio, "load_case", no_read)
    again = predict_shard(model, data, out, progress=False)
    assert again.already_complete == CASES and not again.batch.done and _stamps(out) == stamps
    monkeypatch.undo()

    image = data / "case001" / "image.nrrd"
    image.write_bytes(image.read_bytes())  # "re-converted": same content, new modification time
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    lines = []
    res = predict_shard(model, data, out, progress=False, notify=lines.append)
    assert res.already_complete == ["case000", "case002"] and list(res.batch.done) == ["case001"]
    assert lines == [f"case case001: {REDO_REASONS['input']}"]


def test_markers_without_the_input_are_redone_once_said_once(root, tmp_path):
    """A marker written before the input was recorded: redone, one line for all such cases; then skipped."""
    model = load_checkpoint(root / "a" / "last.pt")
    out = tmp_path / "pred"
    predict_shard(model, root / "siteA", out, progress=False)
    for c in CASES[:2]:
        marker = json.loads((out / c / MARKER).read_text())
        marker.pop("input")
        (out / c / MARKER).write_text(json.dumps(marker))
    lines = []
    res = predict_shard(model, root / "siteA", out, progress=False, notify=lines.append)
    assert res.redone == {"case000": "input_old", "case001": "input_old"} and res.already_complete == ["case002"]
    assert lines == [f"2 cases (case000, case001): {REDO_REASONS['input_old']}"]
    assert predict_shard(model, root / "siteA", out, progress=False).already_complete == CASES


def test_input_identity_of_a_dicom_series_folder(tmp_path):
    """A DICOM case is identified by its series folder's listing: the same files give the same identity,
    a file rewritten (size or mtime) or added gives another; a missing folder gives an error entry."""
    folder = tmp_path / "case" / "dicom"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"ct{i}.dcm").write_bytes(b"x" * (10 + i))
    case = Case("case", tmp_path / "case", kind="dicom", dicom_path=folder)
    first = input_identity(case)
    assert first["path"] == str(folder.resolve()) and first["files"] == 3 and first["size"] == 33
    assert input_identity(case) == first
    (folder / "ct1.dcm").write_bytes(b"y" * 11)
    os.utime(folder / "ct1.dcm", ns=(0, 10**9))
    assert input_identity(case) != first
    (folder / "ct3.dcm").write_bytes(b"z")
    assert input_identity(case)["files"] == 4
    gone = Case("gone", tmp_path / "gone", kind="image", image_path=tmp_path / "gone" / "image.nrrd")
    assert "error" in input_identity(gone)


# ---- F2: a redo leaves nothing of the previous run -----------------------------------------------------


def test_a_redo_removes_the_old_markers_files_and_names_every_reason(root, tmp_path, capsys):
    """Model A with --threshold (maps .nrrd + segmentation), then model B as .nii.gz without: the case holds
    only B's files and its marker (the old segmentation and .nrrd maps are gone), a file the marker never
    listed is kept, a listed name outside the case folder is never touched; the redo line gives the three
    reasons."""
    data = root / "siteA"
    out = tmp_path / "pred"
    predict_shard(load_checkpoint(root / "a" / "last.pt"), data, out, thresholds=0.5, progress=False)
    (out / "case000" / "notes.txt").write_text("mine")
    (tmp_path / "outside.txt").write_text("mine too")
    marker = json.loads((out / "case001" / MARKER).read_text())
    marker["files"] = marker["files"] + ["../../outside.txt"]  # never followed out of the case folder
    (out / "case001" / MARKER).write_text(json.dumps(marker))
    rc = main(["predict", "--model", str(root / "b" / "last.pt"), "--data", str(data), "--out", str(out),
               "--format", "nii.gz"])
    err = capsys.readouterr().err
    assert rc == 0
    said = [line for line in err.splitlines() if "redone" in line]
    assert len(said) == 1, err
    assert said[0].startswith("3 cases (case000, case001, case002): redone, model changed") and \
        "thresholds changed" in said[0] and "other outputs asked" in said[0]
    new = sorted([MARKER] + [f"prob_{s}.nii.gz" for s in STRUCTURES])
    assert sorted(p.name for p in (out / "case001").iterdir()) == new
    assert sorted(p.name for p in (out / "case000").iterdir()) == sorted(new + ["notes.txt"])
    assert (tmp_path / "outside.txt").read_text() == "mine too"
    shard = json.loads((out / "shard-0-of-1.json").read_text())
    assert "model changed" in shard["redone"]["case002"] and "thresholds changed" in shard["redone"]["case002"]


# ---- F5: apply checks a predict --data folder as tune does ---------------------------------------------


@pytest.fixture(scope="module")
def tuned(root, tmp_path_factory):
    """siteA predicted by model a and tuned on it."""
    base = tmp_path_factory.mktemp("tuned")
    predict_shard(load_checkpoint(root / "a" / "last.pt"), root / "siteA", base / "pred", progress=False)
    assert main(["tune", "--prob-dir", str(base / "pred"), "--ref-dir", str(root / "siteA"), "--out",
                 str(base / "t"), "--folds", "2", "--bootstrap", "10"]) == 0
    return base


def test_apply_refuses_unfinished_and_mixed_folders_as_tune_does(root, tuned, tmp_path, capsys):
    """An unfinished case: apply exits 2 with tune's one line and makes no --out; with --allow-incomplete
    it thresholds the others and notes the one left out. Cases by two models: refused in any case."""
    pred = tmp_path / "pred"
    shutil.copytree(tuned / "pred", pred)
    (pred / "case002" / MARKER).unlink()
    thr = str(tuned / "t" / "thresholds.json")
    capsys.readouterr()
    assert main(["apply", "--thresholds", thr, "--prob-dir", str(pred), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "1 unfinished case(s): case002" in err and "Traceback" not in err
    assert "--allow-incomplete" in err and not (tmp_path / "s").exists()
    assert main(["apply", "--thresholds", thr, "--prob-dir", str(pred), "--out", str(tmp_path / "s"),
                 "--allow-incomplete"]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["case000", "case001"]
    assert "note: case002: " in err and "--allow-incomplete" in err

    predict_shard(load_checkpoint(root / "b" / "last.pt"), root / "siteA", pred, cases=["case002"], progress=False)
    assert main(["apply", "--thresholds", thr, "--prob-dir", str(pred), "--out", str(tmp_path / "s2"),
                 "--allow-incomplete"]) == 2
    err = capsys.readouterr().err
    assert "2 models" in err and not (tmp_path / "s2").exists()


# ---- F8: thresholds.json knows the model its maps came from --------------------------------------------


def test_thresholds_record_the_model_and_predict_warns_for_another(root, tuned, tmp_path, capsys):
    a, b = root / "a" / "last.pt", root / "b" / "last.pt"
    doc = json.loads((tuned / "t" / "thresholds.json").read_text())
    sha_a, sha_b = model_sha256(load_checkpoint(a)), model_sha256(load_checkpoint(b))
    assert doc["inputs"]["model"] == {"model_sha256": sha_a, "checkpoint": str(a), "epoch": 1}
    image = str(root / "siteA" / "case000" / "image.nrrd")
    thr = str(tuned / "t" / "thresholds.json")
    capsys.readouterr()
    assert main(["predict", "--model", str(b), "--image", image, "--out", str(tmp_path / "b"),
                 "--thresholds", thr]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and sha_a[:12] in err[0] and sha_b[:12] in err[0]
    assert str(a) in err[0] and str(b) in err[0]
    assert (tmp_path / "b" / "segmentation.seg.nrrd").is_file()  # a warning, not a refusal
    assert main(["predict", "--model", str(a), "--image", image, "--out", str(tmp_path / "a"),
                 "--thresholds", thr]) == 0
    assert "warning" not in capsys.readouterr().err


# ---- F7: messages that say what is the case ------------------------------------------------------------


def test_ctrl_c_during_a_redo_tells_the_cases_still_holding_old_maps(root, tmp_path, monkeypatch):
    """Ctrl-C while the second case is redone with another model: the message and the shard json keep the
    cases that still hold the previous run's finished maps apart from those not finished."""
    out = tmp_path / "pred"
    predict_shard(load_checkpoint(root / "a" / "last.pt"), root / "siteA", out, progress=False)
    real, calls = inference.predict_volume, []

    def fake(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(inference, "predict_volume", fake)
    with pytest.raises(KeyboardInterrupt) as err:
        predict_shard(load_checkpoint(root / "b" / "last.pt"), root / "siteA", out, progress=False)
    msg = str(err.value)
    assert "kept 1 finished case(s) of 3" in msg and "2 not redone yet" in msg and "0 not finished" in msg
    shard = json.loads((out / "shard-0-of-1.json").read_text())
    assert shard["done"] == ["case000"] and list(shard["redone"]) == ["case000"] and shard["not_started"] == []
    assert sorted(shard["not_redone_yet"]) == ["case001", "case002"]


def test_mixed_models_error_names_each_model(root, tmp_path):
    out = tmp_path / "pred"
    predict_shard(load_checkpoint(root / "a" / "last.pt"), root / "siteA", out, progress=False)
    predict_shard(load_checkpoint(root / "b" / "last.pt"), root / "siteA", out, cases=["case001"], progress=False)
    with pytest.raises(InputError) as err:
        check_finished(out, CASES)
    msg = str(err.value)
    sha_a, sha_b = (model_sha256(load_checkpoint(root / n / "last.pt")) for n in "ab")
    assert f"2 case(s) by {root / 'a' / 'last.pt'} epoch 1, sha256 {sha_a[:12]} (case000, case002)" in msg
    assert f"1 case(s) by {root / 'b' / 'last.pt'} epoch 1, sha256 {sha_b[:12]} (wrote the latest" in msg


def test_a_failed_case_is_said_failed_not_to_be_run_again(root, tmp_path, capsys):
    """A case whose CT cannot be read fails in predict; tune names it failed, with the reason, instead of
    asking to run the same predict again (it would fail again)."""
    data = tmp_path / "data"
    shutil.copytree(root / "siteA", data)
    (data / "case001" / "image.nrrd").write_bytes(b"not an image")
    out = tmp_path / "pred"
    res = predict_shard(load_checkpoint(root / "a" / "last.pt"), data, out, progress=False)
    assert [f.name for f in res.batch.failed] == ["case001"]
    with pytest.raises(InputError) as err:
        check_finished(out, CASES)
    msg = str(err.value)
    assert "1 case(s) whose prediction failed: case001 (prediction failed: " in msg and "image.nrrd" in msg
    assert "unfinished case(s)" not in msg and "--allow-incomplete" in msg
