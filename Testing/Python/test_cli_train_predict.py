"""`autosegsens train` and `autosegsens predict` end to end on a tiny phantom: real files written and read
back, exit codes, resume, tuned thresholds."""

from __future__ import annotations


import numpy as np
import pytest
import torch
import yaml

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.inference import store_thresholds
from AutoSegSensitivity.io import read_segmentation, read_volume
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.progress import read_events

CONFIG = {"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain", "SpinalCord"],
          "epochs": 2, "batch_size": 5, "samples_per_epoch": 10, "lr": 0.003, "crop": [48, 48], "resize": [32, 32]}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    make_phantom_dataset(root / "data", cases=3, seed=2, shape=(10, 64, 64))
    (root / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    code = main(["train", "--config", str(root / "cfg.yaml"), "--data", str(root / "data"), "--out", str(root / "run"),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    return root


def test_train_writes_checkpoints_and_events(run):
    for name in ("last.pt", "best.pt", "events.jsonl", "config.json"):
        assert (run / "run" / name).is_file()
    assert [e["epoch"] for e in read_events(run / "run" / "events.jsonl", "epoch")] == [1, 2]


def test_train_refuses_to_overwrite_and_resumes(run, capsys):
    args = ["train", "--config", str(run / "cfg.yaml"), "--data", str(run / "data"), "--out", str(run / "run"),
            "--device", "cpu", "--quiet"]
    assert main(args) == 2
    assert "would overwrite" in capsys.readouterr().err
    import shutil

    shutil.copytree(run / "run", run / "run2")
    args[args.index(str(run / "run"))] = str(run / "run2")
    assert main(args + ["--resume", "--set", "epochs=3"]) == 0
    assert [e["epoch"] for e in read_events(run / "run2" / "events.jsonl", "epoch")] == [1, 2, 3]
    assert "trained 3 epochs" in capsys.readouterr().out


def test_train_bad_config_exit_2_naming_key_and_file(run, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(CONFIG, batchsize=4)))
    code = main(["train", "--config", str(bad), "--data", str(run / "data"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "batchsize" in err and str(bad) in err and len(err.strip().splitlines()) == 1
    code = main(["train", "--config", str(run / "cfg.yaml"), "--data", str(run / "data"), "--out", str(tmp_path / "o"),
                 "--set", "early_stopping.rule=sometimes"])
    assert code == 2 and "early_stopping.rule" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["nrrd", "nii.gz"])
def test_predict_writes_maps_on_the_input_grid_and_a_segmentation(run, tmp_path, fmt):
    image = run / "data" / sorted(p.name for p in (run / "data").iterdir() if p.is_dir())[0] / "image.nrrd"
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(run / "run" / "best.pt"), "--image", str(image), "--out", str(out),
                 "--threshold", "0.4", "--format", fmt, "--device", "cpu"])
    assert code == 0
    ct = read_volume(image)
    maps = {}
    for name in ("Brain", "SpinalCord"):
        vol = read_volume(out / f"prob_{name}.{fmt}")
        assert vol.same_grid(ct) and vol.array.dtype == np.float32
        assert 0 <= vol.array.min() and vol.array.max() <= 1
        maps[name] = vol.array
    seg = read_segmentation(out / "segmentation.seg.nrrd")
    assert seg.names == ["Brain", "SpinalCord"] and seg.geometry.same_grid(ct)
    for name, arr in maps.items():
        np.testing.assert_array_equal(seg.mask(name), arr >= np.float32(0.4))


def test_predict_tuned_thresholds_and_errors(run, tmp_path, capsys):
    image = next((run / "data").glob("*/image.nrrd"))
    model = tmp_path / "m.pt"
    model.write_bytes((run / "run" / "best.pt").read_bytes())
    args = ["predict", "--model", str(model), "--image", str(image), "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a"), "--tuned"]) == 2
    assert "tuned thresholds" in capsys.readouterr().err
    store_thresholds(model, {"Brain": 0.05, "SpinalCord": 0.95})
    assert main(args + ["--out", str(tmp_path / "b"), "--tuned"]) == 0
    seg = read_segmentation(tmp_path / "b" / "segmentation.seg.nrrd")
    brain = read_volume(tmp_path / "b" / "prob_Brain.nrrd").array
    np.testing.assert_array_equal(seg.mask("Brain"), brain >= np.float32(0.05))
    assert main(args + ["--out", str(tmp_path / "c")]) == 0  # maps only
    assert not (tmp_path / "c" / "segmentation.seg.nrrd").exists() and (tmp_path / "c" / "prob_Brain.nrrd").exists()
    assert main(["predict", "--model", str(tmp_path / "nope.pt"), "--image", str(image), "--out",
                 str(tmp_path / "d")]) == 2
    assert main(args + ["--out", str(tmp_path / "e"), "--threshold", "2"]) == 2


def test_help_shows_torchrun_and_shards(capsys):
    """`train --help` shows the single-node and multi-node torchrun commands; `predict --help` the
    dataset mode with --shard."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "torchrun --standalone --nproc_per_node=4 -m AutoSegSensitivity train" in text
    assert "--nnodes=2" in text and "--rdzv_endpoint" in text
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    assert "--shard I/N" in text and "--data" in text and "SLURM_ARRAY_TASK_ID" in text


def test_train_under_a_torchrun_rank_other_than_zero_writes_nothing_new(run, tmp_path, monkeypatch, capsys):
    """A rank > 0 neither prepares the output folder nor prints the result (rank 0 does); with WORLD_SIZE
    > 1 but no torchrun rendezvous variables the command names what is missing (exit 2)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for k in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    code = main(["train", "--config", str(run / "cfg.yaml"), "--data", str(run / "data"), "--out",
                 str(tmp_path / "r1"), "--device", "cpu", "--quiet"])
    assert code == 2 and "LOCAL_RANK" in capsys.readouterr().err
    assert not (tmp_path / "r1").exists()
