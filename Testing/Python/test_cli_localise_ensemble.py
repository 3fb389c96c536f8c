"""`autosegsens localise` and `autosegsens ensemble` on real files written and read back."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from AutoSegSensitivity import Box, Volume
from AutoSegSensitivity.cli import main
from AutoSegSensitivity.io import read_roi, read_volume, roi_to_box, write_roi, write_volume, box_to_roi


# ---- ensemble ------------------------------------------------------------------------------------------


@pytest.fixture
def prob_dirs(tmp_path: Path, rng) -> tuple:
    grid = Volume(np.zeros((4, 5, 6), np.float32), spacing=(2.0, 2.0, 2.5), origin=(1.0, 2.0, 3.0))
    maps = {}
    dirs = []
    for m in ("slf1", "slf2", "slf3"):
        d = tmp_path / "preds" / m
        maps[m] = {}
        for s in ("Lens", "Brain"):
            p = grid.with_array(rng.random(grid.shape).astype(np.float32))
            write_volume(p, d / f"prob_{s}.nrrd")
            maps[m][s] = p.array
        dirs.append(d)
    return grid, maps, dirs


def _args(dirs) -> list:
    out = []
    for d in dirs:
        out += ["--prob-dir", str(d)]
    return out


def test_ensemble_cli_writes_fused_maps_entropy_and_vvc(tmp_path: Path, prob_dirs, capsys) -> None:
    grid, maps, dirs = prob_dirs
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"Lens": ["slf3", "slf1", "slf2"], "Brain": ["slf1", "slf2", "slf3"]}))
    out = tmp_path / "ens"
    assert main(["ensemble", *_args(dirs), "--ranking", str(ranking), "--out", str(out)]) == 0
    lens = read_volume(out / "prob_Lens.nrrd")
    assert lens.same_grid(grid)
    np.testing.assert_allclose(lens.array, (5 * maps["slf3"]["Lens"] + 4 * maps["slf1"]["Lens"] + 3 * maps["slf2"]["Lens"]) / 12, rtol=1e-5)
    brain = read_volume(out / "prob_Brain.nrrd")
    np.testing.assert_allclose(brain.array, (5 * maps["slf1"]["Brain"] + 4 * maps["slf2"]["Brain"] + 3 * maps["slf3"]["Brain"]) / 12, rtol=1e-5)
    # entropy of votes, checked voxel by voxel with scipy
    h = read_volume(out / "entropy.nrrd").array
    order = ["Brain", "Lens"]  # structures in file order (sorted names)
    for idx in [(0, 0, 0), (1, 2, 3), (3, 4, 5), (2, 1, 0)]:
        votes = []
        for m in maps:
            p = np.array([maps[m][s][idx] for s in order])
            votes.append(0 if p.max() < 0.5 else 1 + int(np.argmax(p)))
        assert h[idx] == pytest.approx(scipy_entropy(np.bincount(votes)), abs=1e-5)
    # vvc.csv: volumes at 0.5 in ml (voxel 0.01 ml)
    rows = list(csv.DictReader((out / "vvc.csv").open()))
    assert [r["structure"] for r in rows] == order and list(rows[0]) == ["structure", "mean_ml", "std_ml", "vvc"]
    vols = [np.count_nonzero(maps[m]["Lens"] >= 0.5) * 0.01 for m in maps]
    lens_row = rows[1]
    assert float(lens_row["mean_ml"]) == pytest.approx(np.mean(vols), rel=1e-5)
    assert float(lens_row["std_ml"]) == pytest.approx(np.std(vols), rel=1e-5)
    assert float(lens_row["vvc"]) == pytest.approx(np.std(vols) / np.mean(vols), rel=1e-5)
    assert read_volume(out / "entropy_mean_Lens.nrrd").array.max() <= math.log(2) + 1e-6
    assert json.loads((out / "weights.json").read_text())["weights"]["Lens"] == {"slf1": 4.0, "slf2": 3.0, "slf3": 5.0}
    # a second run into the same folder refuses to overwrite
    assert main(["ensemble", *_args(dirs), "--out", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err
    # without a ranking: the plain mean
    assert main(["ensemble", *_args(dirs), "--out", str(tmp_path / "eq")]) == 0
    np.testing.assert_allclose(read_volume(tmp_path / "eq" / "prob_Lens.nrrd").array,
                               np.mean([maps[m]["Lens"] for m in maps], axis=0), rtol=1e-5)


def test_ensemble_cli_bad_ranking_is_a_one_line_error(tmp_path: Path, prob_dirs, capsys) -> None:
    _, _, dirs = prob_dirs
    ranking = tmp_path / "ranking.json"
    ranking.write_text(json.dumps({"Lens": ["slf3", "slf1", "nosuch"], "Brain": ["slf1", "slf2", "slf3"]}))
    assert main(["ensemble", *_args(dirs), "--ranking", str(ranking), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ranking" in err and "Lens" in err
    assert main(["ensemble", "--prob-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2


# ---- localise with an ROI -------------------------------------------------------------------------------


@pytest.fixture
def image_file(tmp_path: Path) -> tuple:
    arr = np.full((10, 16, 14), 40.0, np.float32)
    img = Volume(arr, spacing=(1.0, 1.0, 2.0), origin=(-5.0, 7.0, 11.0))
    path = write_volume(img, tmp_path / "image.nrrd")
    return img, path


def test_localise_cli_with_roi_writes_the_box_back(tmp_path: Path, image_file) -> None:
    img, path = image_file
    box = Box((2, 3, 4), (6, 9, 10))
    roi_path = write_roi(box_to_roi(box, img, name="Lens box"), tmp_path / "in.mrk.json")
    out = tmp_path / "loc"
    assert main(["localise", "--image", str(path), "--roi", str(roi_path), "--out", str(out)]) == 0
    back = roi_to_box(read_roi(out / "roi.mrk.json"), img)
    assert back == box
    info = json.loads((out / "localisation.json").read_text())
    assert info["found"] and info["box"] == box.to_dict()


def test_localise_cli_roi_partly_outside_warns_and_wholly_outside_fails(tmp_path: Path, image_file, capsys) -> None:
    img, path = image_file
    partly = write_roi(box_to_roi(Box((-3, 10, 4), (4, 20, 10)), img), tmp_path / "partly.mrk.json")
    assert main(["localise", "--image", str(path), "--roi", str(partly), "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "partly outside" in err
    assert roi_to_box(read_roi(tmp_path / "a" / "roi.mrk.json"), img) == Box((0, 10, 4), (4, 16, 10))
    outside = write_roi(box_to_roi(Box((20, 0, 0), (25, 5, 5)), img), tmp_path / "out.mrk.json")
    assert main(["localise", "--image", str(path), "--roi", str(outside), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outside" in err


# ---- localise with checkpoints from the training engine --------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple:
    """A tiny model trained for one epoch (the CLI's plumbing, not its accuracy, is under test here)."""
    import torch

    from AutoSegSensitivity.phantom import make_phantom_dataset
    from AutoSegSensitivity.training import train

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli_loc")
    cases = make_phantom_dataset(root / "data", cases=2, seed=0, shape=(12, 32, 32))
    cfg = dict(model="unet2d", model_kwargs={"base_features": 4}, loss="bce", structures=["Parotid_L"], epochs=1,
               samples_per_epoch=4, batch_size=4, seed=0, val_fraction=0.5)
    train(cfg, root / "data", root / "run", device="cpu", progress_bar=False)
    torch.set_num_threads(old)
    return root / "run" / "best.pt", cases[0] / "image.nrrd"


def test_localise_cli_with_models_writes_roi_and_pasted_map(tmp_path: Path, checkpoint) -> None:
    ckpt, image_path = checkpoint
    img = read_volume(image_path)
    out = tmp_path / "two"
    # threshold 0: every low-res voxel is "organ", so the box is the whole image and the crop runs past it
    assert main(["localise", "--image", str(image_path), "--model", str(ckpt), "--organ-model", str(ckpt),
                 "--threshold", "0", "--padding", "3", "--out", str(out)]) == 0
    info = json.loads((out / "localisation.json").read_text())
    assert info["found"] and info["structure"] == "Parotid_L"
    assert info["box"] == {"start": [0, 0, 0], "stop": list(img.shape)}
    assert info["crop_box"] == {"start": [-3, -3, -3], "stop": [n + 3 for n in img.shape]}
    prob = read_volume(out / "prob_Parotid_L.nrrd")
    assert prob.same_grid(img) and prob.array.dtype == np.float32
    assert 0.0 <= prob.array.min() and prob.array.max() <= 1.0 and prob.array.std() > 0
    assert roi_to_box(read_roi(out / "roi.mrk.json"), img) == Box((0, 0, 0), img.shape)


def test_localise_cli_organ_not_found_exits_1_with_the_reason(tmp_path: Path, checkpoint, capsys) -> None:
    ckpt, image_path = checkpoint
    out = tmp_path / "none"
    assert main(["localise", "--image", str(image_path), "--model", str(ckpt), "--organ-model", str(ckpt),
                 "--threshold", "1", "--out", str(out)]) == 1
    assert "organ not found" in capsys.readouterr().err
    info = json.loads((out / "localisation.json").read_text())
    assert info["found"] is False and info["box"] is None
    assert not (out / "prob_Parotid_L.nrrd").exists() and not (out / "roi.mrk.json").exists()


def test_localise_cli_roi_with_organ_model_pastes_inside_the_crop(tmp_path: Path, checkpoint) -> None:
    ckpt, image_path = checkpoint
    img = read_volume(image_path)
    box = Box((2, 5, 6), (8, 20, 24))
    roi = write_roi(box_to_roi(box, img), tmp_path / "r.mrk.json")
    out = tmp_path / "roi"
    assert main(["localise", "--image", str(image_path), "--roi", str(roi), "--organ-model", str(ckpt),
                 "--padding", "2", "--out", str(out)]) == 0
    prob = read_volume(out / "prob_Parotid_L.nrrd").array
    crop = box.pad(2).clip(img.shape)
    outside = np.ones(img.shape, bool)
    outside[crop.slices] = False
    assert not prob[outside].any() and prob[crop.slices].any()
