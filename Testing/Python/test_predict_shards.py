"""Sharded batch prediction: the partition (disjoint, complete, round-robin over sorted names), resume
by skipping complete cases, a summary of failed cases, and the command line (``predict --data --shard``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.inference import load_checkpoint, predict_volume
from AutoSegSensitivity.io import load_case, read_volume, scan_dataset
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.predict_shards import (MARKER, case_complete, output_names, parse_shard, predict_shard,
                                               shard_names)
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
