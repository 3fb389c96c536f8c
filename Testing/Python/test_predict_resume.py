"""Resume of ``predict --data`` never keeps maps made by other weights: the per-case marker records the
sha256 of the model's weights (``model_sha256``), so a checkpoint retrained into the same path with the
same epoch count redoes every case (and says so), the same weights skip them (files untouched), a marker
written before the sha256 was recorded is redone (said once), and ``tune`` refuses a folder whose cases were
made by different models (a rerun stopped half-way)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from AutoSegSensitivity.checkpoint import read_checkpoint
from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.inference import load_checkpoint, store_thresholds
from AutoSegSensitivity.io import read_volume
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.predict_shards import (MARKER, REDO_REASONS, check_finished, model_sha256, models_by_case,
                                               predict_shard, run_settings)
from AutoSegSensitivity.training import train

CASES = ["case000", "case001", "case002"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two runs of one config that differ only in the seed: two checkpoints with different weights and the
    same epoch, and the dataset they were trained on."""
    root = tmp_path_factory.mktemp("resume")
    make_phantom_dataset(root / "data", cases=3, seed=4, shape=(5, 24, 24))
    cfg = dict(model="unet2d", model_kwargs={"base_features": 4}, structures=["Brain", "SpinalCord"], epochs=1,
               batch_size=4, samples_per_epoch=4, val_cases=["case002"])
    for name, seed in (("a", 0), ("b", 1)):
        train(dict(cfg, seed=seed), root / "data", root / name, device="cpu", progress_bar=False)
    return root


def _maps(out, case):
    return {s: read_volume(out / case / f"prob_{s}.nrrd").array for s in ("Brain", "SpinalCord")}


def _stamps(out):
    return {str(p.relative_to(out)): os.stat(p).st_mtime_ns for c in CASES for p in sorted((out / c).iterdir())}


def test_retrained_checkpoint_at_the_same_path_and_epoch_redoes_every_case(models, tmp_path, capsys):
    """The defect: training again into the same checkpoint path with the same epoch count, then the same
    `predict --data` command, kept the old weights' maps. Now every case is redone (the terminal names them
    and says "model changed"), the maps equal a fresh prediction with the new weights, and a third run with
    the same weights skips every case without rewriting anything."""
    a, b = models / "a" / "last.pt", models / "b" / "last.pt"
    assert read_checkpoint(a)["epoch"] == read_checkpoint(b)["epoch"] == 1
    ckpt = tmp_path / "model" / "last.pt"
    ckpt.parent.mkdir()
    shutil.copy(a, ckpt)
    out = tmp_path / "pred"
    cmd = ["predict", "--model", str(ckpt), "--data", str(models / "data"), "--out", str(out)]
    assert main(cmd) == 0
    old = {c: _maps(out, c) for c in CASES}
    capsys.readouterr()

    shutil.copy(b, ckpt)  # "retrained": same path, same epoch, other weights
    assert main(cmd) == 0
    io = capsys.readouterr()
    assert "0 already complete" in io.out and "3 redone" in io.out
    assert f"3 cases ({', '.join(CASES)}): {REDO_REASONS['model']}" in io.err and "model changed" in io.err
    fresh = tmp_path / "fresh"
    assert main(["predict", "--model", str(b), "--data", str(models / "data"), "--out", str(fresh)]) == 0
    for c in CASES:
        got, want = _maps(out, c), _maps(fresh, c)
        assert any(not np.array_equal(got[s], old[c][s]) for s in got)  # the old weights' maps are gone
        for s in got:
            np.testing.assert_array_equal(got[s], want[s])
        marker = json.loads((out / c / MARKER).read_text())
        assert marker["model_sha256"] == model_sha256(load_checkpoint(b)) != model_sha256(load_checkpoint(a))
        assert marker["model"] == str(ckpt) and marker["epoch"] == 1
        assert marker["checkpoint_created"] == read_checkpoint(b)["created"]
    shard = json.loads((out / "shard-0-of-1.json").read_text())
    assert sorted(shard["redone"]) == CASES and shard["done"] == CASES

    stamps = _stamps(out)
    capsys.readouterr()
    assert main(cmd) == 0
    io = capsys.readouterr()
    assert "3 already complete" in io.out and "redone" not in io.out + io.err
    assert _stamps(out) == stamps  # skipped: neither maps nor markers rewritten


def test_other_thresholds_and_old_markers_are_redone_and_said(models, tmp_path):
    """Thresholds changed: redone with that reason. A marker without model_sha256 (written before it was
    recorded) cannot show which weights made the maps: redone, said in one line for all such cases."""
    model = load_checkpoint(models / "a" / "last.pt")
    out = tmp_path / "pred"
    predict_shard(model, models / "data", out, thresholds=0.5, progress=False)
    lines = []
    res = predict_shard(model, models / "data", out, thresholds=0.7, progress=False, notify=lines.append)
    assert res.redone == {c: "thresholds" for c in CASES} and list(res.batch.done) == CASES
    assert lines == [f"3 cases ({', '.join(CASES)}): {REDO_REASONS['thresholds']}"]

    for c in CASES[:2]:  # markers as the previous version wrote them
        marker = json.loads((out / c / MARKER).read_text())
        for key in ("model_sha256", "checkpoint_created", "options"):
            marker.pop(key)
        (out / c / MARKER).write_text(json.dumps(marker))
    lines.clear()
    res = predict_shard(model, models / "data", out, thresholds=0.7, progress=False, notify=lines.append)
    assert res.already_complete == ["case002"] and list(res.batch.done) == CASES[:2]
    assert res.redone == {"case000": "old", "case001": "old"}
    assert len(lines) == 1 and "case000, case001" in lines[0] and "does not record the model's weights" in lines[0]
    assert all("model_sha256" in json.loads((out / c / MARKER).read_text()) for c in CASES)


def test_model_sha256_identifies_the_weights(models):
    """Equal for the same checkpoint loaded twice and after tuned thresholds were stored in it (the maps do
    not change); different for other weights, for an in-place change of one weight, and per model in a list."""
    a1, a2 = load_checkpoint(models / "a" / "last.pt"), load_checkpoint(models / "a" / "last.pt")
    b = load_checkpoint(models / "b" / "last.pt")
    da = model_sha256(a1)
    assert len(da) == 64 and da == model_sha256(a2) and da != model_sha256(b)
    tuned = models / "a-tuned.pt"
    shutil.copy(models / "a" / "last.pt", tuned)
    store_thresholds(tuned, {"Brain": 0.3, "SpinalCord": 0.6})
    assert model_sha256(load_checkpoint(tuned)) == da
    import torch

    with torch.no_grad():
        next(a2.model.parameters()).view(-1)[0] += 1e-3
    assert model_sha256(a2) != da
    assert run_settings([a1, b], None)["model_sha256"] == [da, model_sha256(b)]
    assert model_sha256("not a model") is None


def test_tune_refuses_a_folder_predicted_by_two_models(models, tmp_path, capsys):
    """A rerun with a retrained checkpoint stopped after one case leaves finished cases by two models: tune
    exits 2 naming the mix and the fix (also with --allow-incomplete); one model again: accepted."""
    a, b = load_checkpoint(models / "a" / "last.pt"), load_checkpoint(models / "b" / "last.pt")
    out = tmp_path / "pred"
    predict_shard(a, models / "data", out, progress=False)
    predict_shard(b, models / "data", out, cases=["case001"], progress=False)
    groups = models_by_case(out)
    assert sorted(map(sorted, groups.values())) == [["case000", "case002"], ["case001"]]
    with pytest.raises(InputError, match="same model"):
        check_finished(out, CASES, allow_incomplete=True)
    args = ["tune", "--prob-dir", str(out), "--ref-dir", str(models / "data"), "--bootstrap", "10"]
    assert main(args + ["--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "2 models" in err and "case001" in err and "predict --data" in err and "Traceback" not in err
    assert not (tmp_path / "t" / "thresholds.json").exists()
    predict_shard(b, models / "data", out, progress=False)  # finishes the rerun: cases by a are redone
    assert list(models_by_case(out)) == [json.dumps(model_sha256(b))]
    assert check_finished(out, CASES) == []
