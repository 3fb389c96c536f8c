"""The dataset predictor (sharded batch prediction): the partition (disjoint, complete, round-robin over
sorted names), resume by skipping complete cases, a summary of failed cases, a case list and a checkpoint
path, several models in one pass, Ctrl-C writing the shard json, the command line (``predict --data
--shard``), and tune's refusal of a prediction folder that is not finished (``--allow-incomplete``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import CancelledError, InputError
from AutoSegSensitivity.inference import load_checkpoint, predict_volume
from AutoSegSensitivity.io import load_case, read_volume, scan_dataset
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity import inference, predict_shards
from AutoSegSensitivity.predict_shards import (MARKER, case_complete, check_finished, marker_complete, output_names,
                                               parse_shard, predict_shard, shard_names, unfinished_cases,
                                               written_by_predictor)
from AutoSegSensitivity.training import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_phantom_dataset(root / "data", cases=5, seed=2, shape=(6, 32, 32))
    shutil.copytree(root / "data" / "case001", root / "data" / "case005")
    (root / "data" / "case005" / "image.nrrd").write_bytes(b"not an image")  # a broken case
    cfg = dict(model="unet2d", model_kwargs={"base_features": 4}, structures=["Brain", "SpinalCord"], epochs=1,
               batch_size=4, samples_per_epoch=4, seed=0, val_cases=["case004"])
    train(cfg, root / "data", root / "run", device="cpu", progress_bar=False)
    for s in ("Brain", "SpinalCord"):  # one binary model per structure, as the study's default
        train(dict(cfg, structures=[s], seed=1), root / "data", root / f"run-{s}", device="cpu", progress_bar=False)
    return root


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_shards_are_disjoint_complete_and_round_robin(n):
    names = [f"case{i:03d}" for i in np.random.default_rng(n).permutation(23)]
    parts = [shard_names(names, i, n) for i in range(n)]
    flat = [x for p in parts for x in p]
    assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
    ordered = sorted(names)
    for i, part in enumerate(parts):
        assert part == [ordered[j] for j in range(len(ordered)) if j % n == i]


@pytest.mark.parametrize("bad", ["1/1", "3/2", "-1/2", "a/b", "2", "0/0"])
def test_bad_shard_specs_name_the_option(bad):
    with pytest.raises(InputError, match="--shard"):
        parse_shard(bad)
    assert parse_shard(" 2 / 5 ") == (2, 5)


def test_shards_predict_resume_and_summarise_failures(setup, tmp_path):
    model = load_checkpoint(setup / "run" / "last.pt")
    out = tmp_path / "pred"
    results = [predict_shard(model, setup / "data", out, i, 2) for i in range(2)]
    assert sorted(results[0].assigned + results[1].assigned) == [f"case{i:03d}" for i in range(6)]
    assert results[1].assigned == ["case001", "case003", "case005"]
    failed = [f.name for r in results for f in r.batch.failed]
    assert failed == ["case005"] and "image.nrrd" in results[1].batch.failed[0].reason
    assert results[1].batch.exit_code() == 1 and results[0].batch.exit_code() == 0
    summary = json.loads((out / "shard-1-of-2.json").read_text())
    assert summary["failed"][0]["case"] == "case005" and summary["done"] == ["case001", "case003"]
    files = output_names(model.class_names)
    assert files == ["prob_Brain.nrrd", "prob_SpinalCord.nrrd"]
    # the maps are predict_volume's maps for that case
    case = [c for c in scan_dataset(setup / "data").cases if c.name == "case002"][0]
    direct = predict_volume(model, load_case(case)[0])
    got = read_volume(out / "case002" / "prob_Brain.nrrd")
    np.testing.assert_array_equal(got.array, direct["Brain"].array)

    # resume: complete cases are skipped; a case without its marker (interrupted) is predicted again
    (out / "case000" / MARKER).unlink()
    stamp = os.stat(out / "case002" / "prob_Brain.nrrd").st_mtime_ns
    again = predict_shard(model, setup / "data", out, 0, 2)
    assert again.already_complete == ["case002", "case004"] and list(again.batch.done) == ["case000"]
    assert os.stat(out / "case002" / "prob_Brain.nrrd").st_mtime_ns == stamp
    assert case_complete(out / "case000", files)
    (out / "case004" / "prob_SpinalCord.nrrd").unlink()  # a marker whose files are gone is not complete
    assert not case_complete(out / "case004", files)
    assert not case_complete(out / "case000", files + ["segmentation.seg.nrrd"])


def test_predict_command_with_data_and_shard(setup, tmp_path, capsys):
    out = tmp_path / "cli"
    model = str(setup / "run" / "last.pt")
    rc = main(["predict", "--model", model, "--data", str(setup / "data"), "--out", str(out), "--shard", "0/3",
               "--threshold", "0.5"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case000", "case003"]
    assert (out / "case003" / "segmentation.seg.nrrd").is_file()
    rc = main(["predict", "--model", model, "--data", str(setup / "data"), "--out", str(out), "--shard", "2/3"])
    err = capsys.readouterr().err
    assert rc == 1 and "failed case005" in err and "image.nrrd" in err
    rc = main(["predict", "--model", model, "--data", str(setup / "data"), "--out", str(out), "--shard", "0/3",
               "--threshold", "0.5"])
    assert rc == 0 and "2 already complete" in capsys.readouterr().out
    # other thresholds (or --overwrite) redo the finished cases: a segmentation never lags its settings
    from AutoSegSensitivity.io import read_segmentation

    rc = main(["predict", "--model", model, "--data", str(setup / "data"), "--out", str(out), "--shard", "0/3",
               "--threshold", "0.9"])
    assert rc == 0 and "0 already complete" in capsys.readouterr().out
    seg = read_segmentation(out / "case003" / "segmentation.seg.nrrd")
    for s in seg.names:
        prob = read_volume(out / "case003" / f"prob_{s}.nrrd").array
        np.testing.assert_array_equal(seg.mask(s), prob >= np.float32(0.9))
    rc = main(["predict", "--model", model, "--data", str(setup / "data"), "--out", str(out), "--shard", "0/3",
               "--threshold", "0.9", "--overwrite"])
    assert rc == 0 and "0 already complete" in capsys.readouterr().out
    assert main(["predict", "--model", model, "--image", str(setup / "data" / "case000" / "image.nrrd"),
                 "--out", str(tmp_path / "one"), "--shard", "0/2"]) == 2
    assert "--data" in capsys.readouterr().err


SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"


def test_slurm_array_script_predicts_its_shard(setup, tmp_path):
    """examples/slurm/predict_array.sbatch run as array task 1 of 2 (the variables SLURM sets): it predicts
    shard 1/2, reports the broken case and exits 1; without the array variables it refuses to start."""
    import subprocess
    import sys

    env = dict(os.environ, MODEL=str(setup / "run" / "last.pt"), DATA=str(setup / "data"), OUT=str(tmp_path / "p"),
               SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2", AUTOSEGSENS=f"{sys.executable} -m AutoSegSensitivity")
    proc = subprocess.run(["bash", str(SLURM / "predict_array.sbatch")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "failed case005" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if p.is_dir()) == ["case001", "case003"]
    assert json.loads((tmp_path / "p" / "shard-1-of-2.json").read_text())["done"] == ["case001", "case003"]
    env.pop("SLURM_ARRAY_TASK_ID")
    proc = subprocess.run(["bash", str(SLURM / "predict_array.sbatch")], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "job array" in proc.stderr
    train_script = (SLURM / "train_torchrun.sbatch").read_text()
    assert "-m AutoSegSensitivity" in train_script and "--rdzv_endpoint" in train_script
    assert subprocess.run(["bash", "-n", str(SLURM / "train_torchrun.sbatch")]).returncode == 0


# ---- the one dataset predictor: case list, checkpoint path, several models, Ctrl-C ------------------------


def test_case_list_checkpoint_path_and_a_broken_case(setup, tmp_path):
    """``cases`` restricts (a name not in the dataset is a failed case); a checkpoint path is loaded; the maps
    lie on the case's grid, float32 in [0, 1]; a case that cannot be read leaves no folder."""
    out = tmp_path / "pred"
    res = predict_shard(setup / "run" / "last.pt", setup / "data", out,
                        cases=["case002", "case005", "case000", "case999"], progress=False)
    assert res.assigned == ["case000", "case002", "case005", "case999"]
    assert list(res.batch.done) == ["case000", "case002"]
    failed = {f.name: f.reason for f in res.batch.failed}
    assert set(failed) == {"case005", "case999"}
    assert "image.nrrd" in failed["case005"] and "case999" in failed["case999"]
    assert not (out / "case005").exists() and not (out / "case001").exists()
    for case in ("case000", "case002"):
        assert res.batch.done[case] == {s: out / case / f"prob_{s}.nrrd" for s in ("Brain", "SpinalCord")}
        prob = read_volume(out / case / "prob_Brain.nrrd")
        image, _ = load_case(setup / "data" / case)
        assert prob.same_grid(image) and prob.array.dtype == np.float32
        assert 0.0 <= prob.array.min() and prob.array.max() <= 1.0
    assert res.batch.exit_code() == 1
    assert json.loads((out / "shard-0-of-1.json").read_text())["done"] == ["case000", "case002"]


def test_several_models_in_one_pass_with_one_marker(setup, tmp_path):
    """One binary model per structure (the study's default): every case gets the maps of every model (each
    equal to that model's own prediction) and one marker naming both checkpoints; a rerun skips them."""
    models = [load_checkpoint(setup / f"run-{s}" / "last.pt") for s in ("Brain", "SpinalCord")]
    out = tmp_path / "pred"
    res = predict_shard(models, setup / "data", out, cases=["case001", "case003"], progress=False)
    assert list(res.batch.done) == ["case001", "case003"]
    image, _ = load_case(setup / "data" / "case003")
    for m, s in zip(models, ("Brain", "SpinalCord")):
        np.testing.assert_array_equal(read_volume(out / "case003" / f"prob_{s}.nrrd").array,
                                      predict_volume(m, image)[s].array)
    marker = json.loads((out / "case003" / MARKER).read_text())
    assert marker["files"] == ["prob_Brain.nrrd", "prob_SpinalCord.nrrd"]
    assert marker["model"] == [str(m.path) for m in models]
    again = predict_shard(models, setup / "data", out, cases=["case001", "case003"], progress=False)
    assert again.already_complete == ["case001", "case003"] and not again.batch.done
    assert unfinished_cases(out) == []
    with pytest.raises(InputError, match="Brain"):  # two models for one structure: which map would win?
        predict_shard([models[0], models[0]], setup / "data", tmp_path / "twice")


def _interrupt_on_call(monkeypatch, n_call, exc=KeyboardInterrupt):
    """predict_volume raises ``exc`` on its ``n_call``-th call (1-based): Ctrl-C in the middle of a case."""
    real = inference.predict_volume
    calls = []

    def fake(*a, **k):
        calls.append(1)
        if len(calls) == n_call:
            raise exc()
        return real(*a, **k)

    monkeypatch.setattr(inference, "predict_volume", fake)


def test_ctrl_c_writes_the_shard_json_then_re_raises(setup, tmp_path, monkeypatch):
    """Ctrl-C during the third case: the shard json lists the two finished cases and the rest as not started,
    the same KeyboardInterrupt is raised again saying what was kept and how to resume; the same call then
    resumes from the finished cases."""
    model = load_checkpoint(setup / "run" / "last.pt")
    out = tmp_path / "pred"
    _interrupt_on_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt) as err:
        predict_shard(model, setup / "data", out, progress=False)
    msg = str(err.value)
    assert "kept 2 finished case(s) of 6" in msg and "shard-0-of-1.json" in msg and "run the same command" in msg
    summary = json.loads((out / "shard-0-of-1.json").read_text())
    assert summary["cancelled"] is True and summary["done"] == ["case000", "case001"]
    assert summary["not_started"] == ["case002", "case003", "case004"]
    assert summary["failed"] == [{"case": "case005", "kind": "input", "reason": summary["failed"][0]["reason"]}]
    assert marker_complete(out / "case001") and not (out / "case002").exists()
    assert unfinished_cases(out) == ["case002", "case003", "case004", "case005"]
    monkeypatch.undo()
    again = predict_shard(model, setup / "data", out, progress=False)
    assert again.already_complete == ["case000", "case001"] and list(again.batch.done) == ["case002", "case003",
                                                                                          "case004"]


def test_cancel_and_a_second_ctrl_c_while_the_json_is_written(setup, tmp_path, monkeypatch):
    """A CancelledError (the GUI's cancel) is re-raised with its own reason kept; a second Ctrl-C arriving
    while the shard json is written does not lose the json."""
    model = load_checkpoint(setup / "run" / "last.pt")
    out = tmp_path / "pred"
    _interrupt_on_call(monkeypatch, 2, lambda: CancelledError("cancel requested"))
    real_write = predict_shards.write_text
    hits = []

    def write_text(path, text):
        if Path(path).name.startswith("shard-") and not hits:
            hits.append(1)
            raise KeyboardInterrupt  # the second Ctrl-C
        return real_write(path, text)

    monkeypatch.setattr(predict_shards, "write_text", write_text)
    with pytest.raises(CancelledError) as err:
        predict_shard(model, setup / "data", out, progress=False, cases=["case000", "case001", "case002"])
    assert str(err.value).startswith("cancel requested; shard 0/1: kept 1 finished case(s) of 3")
    assert hits and json.loads((out / "shard-0-of-1.json").read_text())["done"] == ["case000"]


def test_predict_command_ctrl_c_says_what_was_kept(setup, tmp_path, monkeypatch, capsys):
    _interrupt_on_call(monkeypatch, 2)
    out = tmp_path / "cli"
    rc = main(["predict", "--model", str(setup / "run" / "last.pt"), "--data", str(setup / "data"), "--out", str(out),
               "--shard", "0/2"])
    err = capsys.readouterr().err
    assert rc == 130 and "kept 1 finished case(s) of 3" in err and str(out / "shard-0-of-2.json") in err
    assert json.loads((out / "shard-0-of-2.json").read_text())["not_started"] == ["case002", "case004"]


# ---- tune on a prediction folder that is not finished -------------------------------------------------


@pytest.fixture(scope="module")
def predicted(setup, tmp_path_factory):
    """The whole dataset predicted (case005 is broken: failed, and not a reference case either)."""
    out = tmp_path_factory.mktemp("predicted") / "pred"
    predict_shard(load_checkpoint(setup / "run" / "last.pt"), setup / "data", out, progress=False)
    return out


def test_tune_refuses_unfinished_predictions_unless_allowed(setup, predicted, tmp_path, capsys):
    """case003 lost its marker (killed while writing its maps), case004 was never started (the shard json
    assigns it, no folder): tune exits 2 with one line naming both and the fix; with --allow-incomplete it
    tunes the other cases and records the two in thresholds.json and on the terminal."""
    pred = tmp_path / "pred"
    shutil.copytree(predicted, pred)
    (pred / "case003" / MARKER).unlink()
    shutil.rmtree(pred / "case004")
    args = ["tune", "--prob-dir", str(pred), "--ref-dir", str(setup / "data"), "--bootstrap", "20"]
    rc = main(args + ["--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert "2 unfinished case(s): case003, case004" in lines[0] and "--allow-incomplete" in lines[0]
    assert "autosegsens predict --data" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "t" / "thresholds.json").exists()

    rc = main(args + ["--out", str(tmp_path / "t2"), "--allow-incomplete"])
    err = capsys.readouterr().err
    assert rc == 0
    doc = json.loads((tmp_path / "t2" / "thresholds.json").read_text())
    assert doc["cases"] == ["case000", "case001", "case002"]
    assert doc["inputs"]["incomplete_cases_left_out"] == ["case003", "case004"]
    for case, why in (("case003", "prediction.json: expected a finished prediction"),
                      ("case004", "not predicted (no case folder)")):  # each said as it is
        assert any(p.startswith(f"{case}: ") and why in p and "--allow-incomplete" in p
                   for p in doc["problems"]), doc["problems"]
        assert f"note: {case}: " in err
        assert all(case not in entry["cases"] for entry in doc["structures"].values())


def test_tune_reads_folders_not_written_by_the_predictor(setup, predicted, tmp_path):
    """The rule applies to our folders only: maps without any prediction.json or shard json (another tool's)
    are tuned as they are; one shard json, or one marker, makes the folder ours."""
    from AutoSegSensitivity.tune import tune_cohort

    other = tmp_path / "other"
    for case in ("case000", "case001", "case002"):
        shutil.copytree(predicted / case, other / case, ignore=shutil.ignore_patterns(MARKER))
    assert not written_by_predictor(other) and unfinished_cases(other) == [] and check_finished(other) == []
    res = tune_cohort(other, setup / "data", n_boot=10, structures=["Brain"])
    assert res.cases == ["case000", "case001", "case002"]
    shutil.copy(predicted / "shard-0-of-1.json", other / "shard-0-of-1.json")
    assert written_by_predictor(other)
    assert unfinished_cases(other, ["case000", "case001", "case003"]) == ["case000", "case001", "case003"]
    with pytest.raises(InputError, match="case003"):
        tune_cohort(other, setup / "data", n_boot=10, structures=["Brain"])
    (other / "shard-0-of-1.json").unlink()
    shutil.copy(predicted / "case000" / MARKER, other / "case000" / MARKER)
    assert written_by_predictor(other) and unfinished_cases(other) == ["case001", "case002"]
    (other / "case000" / MARKER).write_text("{not json")  # a damaged marker is not a finished case
    assert unfinished_cases(other) == ["case000", "case001", "case002"]
