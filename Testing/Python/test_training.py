"""Training: config validation, split, early stopping, sampling, the loop on a tiny phantom, checkpoints,
resume exactness, events, cancel and out-of-memory handling."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from AutoSegSensitivity.data import (Preprocessor, augment, centre_box, lr_swap_permutation,
                                     sample_patches, sample_slices)
from AutoSegSensitivity.errors import CancelledError, InputError
from AutoSegSensitivity.io import load_case, scan_dataset
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.progress import read_events
from AutoSegSensitivity import training
from AutoSegSensitivity.training import (EarlyStopping, TrainConfig, TrainingOutOfMemory, read_checkpoint,
                                         save_checkpoint, split_cases, train)

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
PHANTOM_SHAPE = (12, 64, 64)
# Smallest widths of the papers' networks (same architecture, fewer features) so CPU tests stay fast.
TINY_MODEL = {"unet2d": {"base_features": 4}, "unet3d": {"base_features": 4}, "sepnet3d": {"base_features": 4}}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom")
    make_phantom_dataset(root, cases=4, seed=0, shape=PHANTOM_SHAPE)
    return root


def tiny_2d(**over) -> dict:
    cfg = dict(model="unet2d", model_kwargs=TINY_MODEL["unet2d"], loss="bce", structures=["Brain", "SpinalCord"],
               epochs=4, batch_size=6, samples_per_epoch=12, lr=3e-3, foreground_fraction=0.8,
               augment={"flips": ["x"], "intensity_shift": 0.02, "intensity_scale": 0.02}, seed=3)
    cfg.update(over)
    return cfg


# ---- config ---------------------------------------------------------------------------------------------


def test_config_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: unet2d\nlerning_rate: 0.1\n")
    with pytest.raises(InputError) as err:
        TrainConfig.from_file(path)
    assert str(path) in str(err.value) and "lerning_rate" in str(err.value)
    path.write_text("early_stopping: {rule: patience, patiense: 3}\n")
    with pytest.raises(InputError, match="early_stopping.patiense"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("lr", -1.0), ("crop", [0, 30]), ("epochs", 2.5),
                                       ("early_stopping", {"rule": "sometimes"}), ("augment", {"flips": ["w"]}),
                                       ("intensity", "NO_SUCH_PRESET"), ("foreground_fraction", 1.5),
                                       ("patch_size", [16, 16, 16, 16]), ("val_fraction", 1.0)])
def test_config_bad_values_name_the_key(key, value):
    with pytest.raises(InputError) as err:
        TrainConfig.from_dict({key: value}, source="cfg.yaml")
    assert "cfg.yaml" in str(err.value) and key in str(err.value)


def test_config_round_trip_files_and_overrides(tmp_path):
    cfg = TrainConfig.from_dict(tiny_2d())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_file(tmp_path / "c.yaml") == cfg == TrainConfig.from_file(tmp_path / "c.json")
    new = cfg.with_overrides(["epochs=7", "early_stopping.patience=3", "structures=[Brain]", "lr=1e-4"])
    assert (new.epochs, new.early_stopping["patience"], new.structures, new.lr) == (7, 3, ["Brain"], 1e-4)
    assert new.early_stopping["window"] == 10  # untouched nested defaults stay
    with pytest.raises(InputError, match="epochz"):
        cfg.with_overrides(["epochz=3"])
    with pytest.raises(InputError, match="batch_size"):
        cfg.with_overrides(["batch_size=-2"])


def test_shipped_configs_parse_and_follow_the_papers():
    files = sorted(CONFIGS.glob("*.yaml"))
    cfgs = {f.stem: TrainConfig.from_file(f) for f in files}
    assert {"quick-unet2d", "bice-unet2d-bce", "bice-unet2d-bce-dice2d", "smith-unet3d-dice-ce",
            "lei-sepnet3d-explog", "lei-sepnet3d-ath-explog"} <= set(cfgs)
    bice = cfgs["bice-unet2d-bce"]
    assert (bice.lr, bice.batch_size, bice.crop, bice.resize) == (1e-3, 64, [300, 300], [150, 150])
    assert bice.early_stopping["rule"] == "running_mean" and bice.early_stopping["window"] == 10
    smith = cfgs["smith-unet3d-dice-ce"]
    assert (smith.lr, smith.foreground_fraction, smith.early_stopping["patience"]) == (1e-4, 0.8, 20)
    assert smith.early_stopping["rule"] == "patience"
    lei = cfgs["lei-sepnet3d-ath-explog"]
    assert (lei.patch_size, lei.scheduler["name"], lei.scheduler["gamma"]) == ([16, 128, 128], "step", 0.9)


# ---- split, stopping, sampling --------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_complete():
    names = [f"case{i:02d}" for i in range(10)]
    a = split_cases(names, 0.2, seed=1)
    assert a == split_cases(list(reversed(names)), 0.2, seed=1)
    train_, val = a
    assert len(val) == 2 and sorted(train_ + val) == names and not set(train_) & set(val)
    assert split_cases(names, 0.2, seed=1, val_cases=["case03"]) == ([n for n in names if n != "case03"], ["case03"])
    with pytest.raises(InputError, match="val_cases"):
        split_cases(names, 0.2, seed=1, val_cases=["nope"])


def test_early_stopping_rules_match_brute_force():
    rng = np.random.default_rng(5)
    losses = list(1.0 / np.arange(1, 41) + rng.normal(0, 0.05, 40))
    stopper = EarlyStopping("running_mean", window=10, patience=None)
    bests = [stopper.update(e + 1, l, None)[0] for e, l in enumerate(losses)]
    means = [np.mean(losses[max(0, i - 9): i + 1]) for i in range(40)]
    assert stopper.best_epoch == int(np.argmin(means)) + 1
    assert bests == [means[i] < min(means[:i], default=np.inf) for i in range(40)]
    dice = [0.1, 0.3, 0.2, 0.5, 0.4, 0.45, 0.49, 0.3]
    stopper = EarlyStopping("patience", patience=3)
    stops = [stopper.update(e + 1, 0.0, d)[1] for e, d in enumerate(dice)]
    assert stopper.best_epoch == 4 and stops.index(True) == 6  # 3 epochs after epoch 4
    restored = EarlyStopping("patience", patience=3)
    restored.load_state_dict(stopper.state_dict())
    assert restored.state_dict() == stopper.state_dict()


def test_centre_crop_resize_and_inverse():
    from AutoSegSensitivity.intensity import get_transform

    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1000, (3, 37, 50)).astype(np.int16)
    pre = Preprocessor([get_transform("NLF1")], crop=(20, 64))  # larger than the image along x: padded with air
    assert centre_box((37, 50), (20, 64)) == (8, 28, -7, 57)
    x = pre.image(hu)
    assert x.shape == (3, 1, 20, 64)
    from AutoSegSensitivity.intensity import apply_transform

    np.testing.assert_array_equal(x[:, 0, :, 7:57], apply_transform(hu[:, 8:28, :], get_transform("NLF1")))
    assert np.all(x[:, 0, :, :7] == pre.pad_values()[0])
    back = pre.invert(x, (37, 50))  # crop-only preprocessing inverts exactly inside the box, zero outside
    np.testing.assert_array_equal(back[:, 0, 8:28], x[:, 0, :, 7:57])
    assert not back[:, :, :8].any() and not back[:, :, 28:].any()
    # resize down and back up keeps a smooth map (bilinear, corners aligned)
    yy, xx = np.mgrid[:40, :40]
    smooth = np.sin(yy / 9.0) * np.cos(xx / 7.0)
    pre2 = Preprocessor([get_transform("NLF1")], crop=(40, 40), resize=(20, 20))
    from AutoSegSensitivity.data import _resize

    small = _resize(smooth[None, None].astype(np.float32), (20, 20))
    up = pre2.invert(small, (40, 40))[0, 0]
    assert np.abs(up - smooth)[2:-2, 2:-2].max() < 0.03


def test_foreground_biased_sampling_fraction():
    rng = np.random.default_rng(0)
    labels = np.zeros((1, 40, 16, 16), np.uint8)
    labels[0, 10:20, 4:8, 4:8] = 1  # a quarter of the slices hold foreground
    from AutoSegSensitivity.data import PreparedCase

    c = PreparedCase("c", np.zeros((1, 40, 16, 16), np.float32), labels, np.arange(10, 20), np.argwhere(labels[0]))
    items = sample_slices([c], 4000, rng, 0.8)
    fg = np.mean([10 <= z < 20 for _, z in items])
    assert abs(fg - (0.8 + 0.2 * 0.25)) < 0.03
    uniform = sample_slices([c], 80, np.random.default_rng(1), None)
    assert sorted(z for _, z in uniform) == sorted(list(range(40)) * 2)  # every slice once per pass
    patches = sample_patches([c], 2000, np.random.default_rng(2), (8, 8, 8), 0.8)
    hit = [labels[0, s[0]:s[0] + 8, s[1]:s[1] + 8, s[2]:s[2] + 8].any() for _, s in patches]
    assert np.mean(hit) >= 0.8 - 0.03
    assert all(0 <= s[0] <= 32 and 0 <= s[1] <= 8 and 0 <= s[2] <= 8 for _, s in patches)


def test_foreground_sampling_is_class_balanced():
    """A large and a tiny class: the tiny class's slices get about fraction / K of the samples (plus their
    share of the uniform rest), not their share of the foreground slices; a class absent from the
    training set does not count; 3D patches hold the tiny class about as often."""
    from AutoSegSensitivity.data import Preprocessor, prepare_case, resolve_transforms

    masks = np.zeros((3, 40, 16, 16), bool)
    masks[0, 5:35, 2:14, 2:14] = True  # large: 30 of 40 slices
    masks[1, 20:22, 7, 7] = True  # tiny: 2 slices, one voxel each
    # class 2 is empty everywhere
    pre = Preprocessor(resolve_transforms("NLF1"))
    cases = [prepare_case(f"c{i}", np.zeros((40, 16, 16), np.float32), masks, pre, seed=i) for i in range(2)]
    assert [len(s) for s in cases[0].class_fg_slices] == [30, 2, 0]
    assert [len(v) for v in cases[0].class_fg_voxels] == [30 * 144, 2, 0]
    n, frac = 8000, 0.8
    items = sample_slices(cases, n, np.random.default_rng(3), frac)
    tiny = np.mean([z in (20, 21) for _, z in items])
    expected = frac / 2 + (1 - frac) * 2 / 40  # K = 2 classes with foreground
    assert abs(tiny - expected) < 0.03, (tiny, expected)
    large = np.mean([5 <= z < 35 for _, z in items])
    assert abs(large - (frac / 2 + frac / 2 + (1 - frac) * 30 / 40)) < 0.03  # tiny slices lie inside it
    assert {ci for ci, _ in items} == {0, 1}
    patches = sample_patches(cases, 4000, np.random.default_rng(4), (8, 8, 8), frac)
    hit = np.mean([masks[1, s[0]:s[0] + 8, s[1]:s[1] + 8, s[2]:s[2] + 8].any() for _, s in patches])
    assert frac / 2 - 0.03 <= hit <= frac / 2 + 0.15, hit  # plus the random patches that catch it


def test_left_right_flip_swaps_paired_structures():
    names = ["Brain", "Parotid_L", "Parotid_R", "Lens_L"]
    perm = lr_swap_permutation(names)
    assert perm == [0, 2, 1, 3]
    img = np.arange(2 * 4 * 5, dtype=np.float32).reshape(1, 2, 4, 5)
    lab = np.zeros((4, 2, 4, 5), np.uint8)
    lab[1, :, :, 0] = 1  # "left" structure at x = 0
    for seed in range(20):  # find a draw that flips
        i2, l2 = augment(img, lab, np.random.default_rng(seed), ["x"], 0.0, 0.0, perm, 3)
        if not np.array_equal(i2, img):
            break
    np.testing.assert_array_equal(i2, img[..., ::-1])
    assert l2[2, :, :, -1].all() and not l2[1].any()  # now on the right, and called _R


# ---- the loop -------------------------------------------------------------------------------------------


def _shrunk(cfg: TrainConfig) -> dict:
    d = cfg.to_dict()
    d.update(model_kwargs=TINY_MODEL[cfg.model], structures=["Brain", "SpinalCord"], epochs=4, samples_per_epoch=8,
             crop=None, resize=None, batch_size=4, lr=3e-3, val_fraction=0.25, foreground_fraction=0.8)
    if cfg.patch_size is not None:
        d["patch_size"] = [8, 32, 32]
        d["inference_batch_size"] = 4
    d["early_stopping"] = {"rule": "none"}
    return d


@pytest.mark.parametrize("name", ["quick-unet2d", "bice-unet2d-bce", "bice-unet2d-bce-dice2d", "smith-unet3d-dice-ce",
                                  "lei-sepnet3d-explog", "lei-sepnet3d-ath-explog"])
def test_each_shipped_config_lowers_the_loss(name, phantom, tmp_path):
    cfg = TrainConfig.from_file(CONFIGS / f"{name}.yaml")
    result = train(_shrunk(cfg), phantom, tmp_path / name, device="cpu", progress_bar=False)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert np.mean(losses[2:]) < losses[0], losses
    ck = read_checkpoint(tmp_path / name / "last.pt")
    assert ck["model"]["name"] == cfg.model and ck["config"]["loss"] == cfg.loss
    if ck["model"]["final_activation"] == "softmax":
        assert ck["model"]["out_channels"] == 3  # background + 2 structures


def test_tiny_unet2d_reaches_brain_dice_well_above_chance(phantom, tmp_path):
    cfg = tiny_2d(epochs=10, samples_per_epoch=32, structures=["Brain"], batch_size=8,
                  model_kwargs={"base_features": 8}, early_stopping={"rule": "patience", "patience": 10})
    result = train(cfg, phantom, tmp_path / "run", device="cpu", progress_bar=False)
    best = max(h["val_dice"]["Brain"] for h in result.history)
    # Dice of calling every voxel Brain (a random mask with the true fraction of voxels does worse)
    chance = 2 * result.prominence["Brain"] / (1 + result.prominence["Brain"])
    assert best > 0.75 and best > chance + 0.3, (best, chance)
    assert result.best_epoch == 1 + int(np.argmax([h["val_dice_mean"] for h in result.history]))


def _run(phantom, out, cfg, **kw):
    return train(cfg, phantom, out, device="cpu", progress_bar=False, **kw)


def test_resume_and_cancel_continue_exactly(phantom, tmp_path):
    cfg = tiny_2d()
    straight = _run(phantom, tmp_path / "straight", cfg)
    _run(phantom, tmp_path / "split", dict(cfg, epochs=2))
    resumed = _run(phantom, tmp_path / "split", cfg, resume=True)
    flag = threading.Event()

    def stop_after_two(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            flag.set()
    with pytest.raises(CancelledError, match="epoch 2"):
        _run(phantom, tmp_path / "cancel", cfg, on_event=stop_after_two, cancel=flag)
    cancelled = read_checkpoint(tmp_path / "cancel" / "last.pt")
    assert cancelled["epoch"] == 2
    from AutoSegSensitivity.inference import load_checkpoint

    assert load_checkpoint(tmp_path / "cancel" / "last.pt").epoch == 2  # usable as it is
    _run(phantom, tmp_path / "cancel", cfg, resume=True)

    a = read_checkpoint(tmp_path / "straight" / "last.pt")
    for other in ("split", "cancel"):
        b = read_checkpoint(tmp_path / other / "last.pt")
        assert b["epoch"] == 4 and [h["epoch"] for h in b["history"]] == [1, 2, 3, 4]
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), (other, k)
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
        epochs = [e["epoch"] for e in read_events(tmp_path / other / "events.jsonl", "epoch")]
        assert epochs == [1, 2, 3, 4]  # nothing lost, nothing repeated
    assert resumed.epochs_run == straight.epochs_run == 4 and resumed.best_epoch == straight.best_epoch
    # a finished run resumes to nothing
    again = _run(phantom, tmp_path / "split", cfg, resume=True)
    assert again.epochs_run == 4 and len(read_events(tmp_path / "split" / "events.jsonl", "epoch")) == 4


def test_events_and_checkpoint_contents(phantom, tmp_path):
    seen = []
    cfg = tiny_2d(epochs=2)
    result = _run(phantom, tmp_path / "run", cfg, on_event=seen.append)
    events = read_events(tmp_path / "run" / "events.jsonl")
    assert events == seen
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["stop", "done"] and kinds.count("epoch") == 2
    ep = [e for e in events if e["event"] == "epoch"]
    for i, e in enumerate(ep, start=1):
        assert e["epoch"] == i and e["epochs"] == 2
        assert set(e["val_dice"]) == {"Brain", "SpinalCord"} and all(0 <= v <= 1 for v in e["val_dice"].values())
        assert e["train_loss"] > 0 and e["val_loss"] > 0 and e["eta_s"] >= 0 and e["elapsed_s"] > 0
    assert ep[-1]["eta_s"] == 0 and ep[1]["elapsed_s"] >= ep[0]["elapsed_s"]

    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["format_version"] == training.CHECKPOINT_VERSION and ck["epoch"] == 2
    assert TrainConfig.from_dict(ck["config"]) == TrainConfig.from_dict(cfg)
    scan = scan_dataset(phantom)
    names = sorted(c.name for c in scan.cases)
    assert sorted(ck["split"]["train"] + ck["split"]["val"]) == names and len(ck["split"]["val"]) == 1
    assert ck["class_names"] == ["Brain", "SpinalCord"]
    from AutoSegSensitivity.intensity import get_transform
    from AutoSegSensitivity.data import transform_to_dict

    assert ck["preprocess"]["transforms"] == [transform_to_dict(get_transform("NLF1"))]
    # prominence (paper 000 Eq. 4) against a direct count on the training masks as read from disk
    masks = {s: [] for s in ck["class_names"]}
    for case in scan.cases:
        if case.name in ck["split"]["train"]:
            _, seg = load_case(case)
            for s in masks:
                masks[s].append(seg.mask(s))
    for s, m in masks.items():
        expect = sum(int(x.sum()) for x in m) / sum(x.size for x in m)
        assert ck["prominence"][s] == pytest.approx(expect, rel=1e-12)
    assert result.prominence == ck["prominence"]
    assert ck["optimizer"]["state"] and "torch" in ck["rng"] and ck["versions"]["torch"] == str(torch.__version__)
    assert ck["thresholds"] == {"Brain": 0.5, "SpinalCord": 0.5}
    # a new (not resumed) run in the same folder starts a new event stream
    _run(phantom, tmp_path / "run", tiny_2d(epochs=1))
    assert [e["event"] for e in read_events(tmp_path / "run" / "events.jsonl")].count("start") == 1


def test_signal_cancels_and_keeps_checkpoint(phantom, tmp_path):
    def interrupt(event):
        if event["event"] == "epoch":
            os.kill(os.getpid(), signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(CancelledError, match="SIGINT"):
        _run(phantom, tmp_path / "run", tiny_2d(epochs=3), on_event=interrupt)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert read_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert read_events(tmp_path / "run" / "events.jsonl", "stop")[-1]["reason"] == "cancelled"
    # a CANCEL file in the output folder stops a run too
    (tmp_path / "run2").mkdir()

    def drop_file(event):
        if event["event"] == "start":
            (tmp_path / "run2" / training.CANCEL_FILE).write_text("")
    with pytest.raises(CancelledError, match="cancel file"):
        _run(phantom, tmp_path / "run2", tiny_2d(epochs=3), on_event=drop_file)
    assert read_checkpoint(tmp_path / "run2" / "last.pt")["epoch"] == 0


def test_out_of_memory_gives_advice_not_traceback(phantom, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(training, "_train_step", boom)
    with pytest.raises(TrainingOutOfMemory) as err:
        _run(phantom, tmp_path / "run", tiny_2d(batch_size=6))
    text = str(err.value)
    assert "batch size 6" in text and "batch_size=3" in text
    assert read_events(tmp_path / "run" / "events.jsonl", "error")[-1]["message"] == text


def test_bad_checkpoints_and_resume_mismatch(phantom, tmp_path):
    _run(phantom, tmp_path / "run", tiny_2d(epochs=1))
    ck = read_checkpoint(tmp_path / "run" / "last.pt")
    ck["format_version"] = 99
    save_checkpoint(tmp_path / "old.pt", ck)
    with pytest.raises(InputError, match="format_version"):
        read_checkpoint(tmp_path / "old.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="format"):
        read_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="lr"):
        _run(phantom, tmp_path / "run", tiny_2d(epochs=2, lr=0.5), resume=True)
    with pytest.raises(InputError, match="last.pt"):
        _run(phantom, tmp_path / "empty", tiny_2d(), resume=True)
    with pytest.raises(InputError, match="NoSuchOrgan"):
        _run(phantom, tmp_path / "x", tiny_2d(structures=["NoSuchOrgan"]))


# ---- loss on the image, not the padding (issue 14, drift 2) ----------------------------------------------


def test_loss_sees_the_image_not_the_padding(phantom, tmp_path, monkeypatch):
    """30 x 30 slices run through the U-Net padded to 32 x 32; the loss must get 30 x 30 logits, equal to
    the loss of the cropped output, and differ from the loss over the padded output (what it was)."""
    from AutoSegSensitivity import losses
    from AutoSegSensitivity.data import pad_to_multiple

    torch.manual_seed(0)
    net = training.build_network(TrainConfig.from_dict(tiny_2d()), 1, 2)[0].eval()
    bce = losses.build_loss("bce")
    x = torch.randn(2, 1, 30, 30)
    y = (torch.rand(2, 2, 30, 30) > 0.7).float()
    xp, sizes = pad_to_multiple(x, 16, -1.0)
    loss, logits = training._forward_loss(net, bce, xp, y, None, torch.device("cpu"))
    full = net(xp)
    assert logits.shape[-2:] == (30, 30) and sizes == (30, 30)
    loss, full = float(loss.detach()), full.detach()
    assert loss == pytest.approx(float(bce(full[..., :30, :30], y)), abs=1e-7)
    padded_y = torch.nn.functional.pad(y, (0, 2, 0, 2))
    assert abs(loss - float(bce(full, padded_y))) > 1e-4

    seen = []
    real = losses.build_loss

    def spying(*a, **k):
        fn = real(*a, **k)

        def wrapped(lg, tg):
            seen.append((tuple(lg.shape[-2:]), tuple(tg.shape[-2:])))
            return fn(lg, tg)
        return wrapped
    monkeypatch.setattr(losses, "build_loss", spying)
    _run(phantom, tmp_path / "crop", tiny_2d(epochs=1, resize=[30, 30]))
    assert seen and set(seen) == {((30, 30), (30, 30))}  # training and validation alike


# ---- one thresholding rule: p >= t (issue 14, drift 3) ---------------------------------------------------


def test_validation_dice_thresholds_like_the_sweep():
    """Validation counts a voxel as foreground when sigmoid(logit) >= 0.5, the ``p >= t`` rule of
    ``threshold_maps`` and the sweep: logit 0 (p = 0.5 exactly) and -1e-9 (p rounds to 0.5 in float32)
    are foreground, -1e-3 is not."""
    from AutoSegSensitivity.inference import threshold_maps
    from AutoSegSensitivity.volume import Volume

    logits = torch.tensor([0.0, -1e-9, -1e-3, 1e-3, 4.0, -4.0]).reshape(1, 1, 1, 2, 3).repeat(1, 2, 1, 1, 1)
    logits[:, 1] *= -1
    masks = training.predicted_masks(logits, 2, softmax=False)
    prob = torch.sigmoid(logits).numpy()
    for c in range(2):
        seg = threshold_maps({"s": Volume(prob[0, c], (1.0, 1.0, 1.0))}, 0.5)
        assert np.array_equal(masks[c][0].numpy(), seg.mask("s"))
    assert masks[0].reshape(-1).tolist() == [True, True, False, True, True, False]
    ref = torch.zeros_like(logits[:, :, 0], dtype=torch.uint8)
    ref[0, 0, 0, 0] = 1
    counts = np.zeros((2, 3))
    training._accumulate(counts, logits[:, :, 0], ref, softmax=False)
    brute = [[sum(bool(m) and bool(r) for m, r in zip(masks[c].reshape(-1), ref[0, c].reshape(-1))),
              int(masks[c].sum()), int(ref[0, c].sum())] for c in range(2)]
    assert counts.tolist() == brute


# ---- GPU speed knobs (the parts that run on a CPU) -------------------------------------------------------


def test_speed_knobs_are_validated_and_default_safe():
    cfg = TrainConfig()
    assert (cfg.amp_dtype, cfg.channels_last, cfg.cudnn_benchmark, cfg.num_workers) == ("auto", False, False, 0)
    for key, bad in (("amp_dtype", "int8"), ("channels_last", "yes"), ("num_workers", -1), ("pin_memory", 1)):
        with pytest.raises(InputError, match=key):
            TrainConfig.from_dict({key: bad})
    from AutoSegSensitivity.checkpoint import amp_dtype, needs_grad_scaler

    assert amp_dtype("cpu", "auto") is None and amp_dtype("cpu", "float16") is None  # CPU runs float32
    assert needs_grad_scaler(torch.float16) and not needs_grad_scaler(torch.bfloat16)
    assert not needs_grad_scaler(None)
    with pytest.raises(InputError, match="amp_dtype"):
        amp_dtype("cpu", "fp8")


def test_workers_and_channels_last_train_the_same_weights(phantom, tmp_path):
    """Batches built by a persistent DataLoader worker are the batches built in-process (each sample's
    crop and augmentation is seeded by (seed, epoch, index)): identical weights. channels_last changes the
    memory layout only: the first batch's loss is the same to 1e-5 (later steps drift apart by round-off,
    which BatchNorm's backward amplifies; CPU kernels of the two layouts sum in different orders), and its
    checkpoint loads into a plain model."""
    from AutoSegSensitivity.inference import load_checkpoint

    cfg = tiny_2d(epochs=2, samples_per_epoch=6, model_kwargs={"base_features": 4, "dropout": 0.0})
    base = _run(phantom, tmp_path / "base", cfg)
    worker = _run(phantom, tmp_path / "worker", dict(cfg, num_workers=1))
    cl = _run(phantom, tmp_path / "cl", dict(cfg, channels_last=True))
    a, b = read_checkpoint(base.last_path)["state_dict"], read_checkpoint(worker.last_path)["state_dict"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    assert cl.history[0]["train_loss"] == pytest.approx(base.history[0]["train_loss"], rel=1e-5)
    assert cl.history[0]["train_loss"] != base.history[1]["train_loss"]
    assert load_checkpoint(cl.last_path).epoch == 2


# ---- the import graph -------------------------------------------------------------------------------------


def test_no_import_cycle_among_package_modules():
    """Every ``import`` / ``from ... import`` inside AutoSegSensitivity (also those inside functions)
    gives an edge between its modules; the graph has no cycle (checkpoint I/O lives in ``checkpoint``,
    so training and inference no longer import each other)."""
    import ast

    root = Path(training.__file__).resolve().parent

    def name_of(p: Path) -> str:
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    mods = {name_of(p): p for p in root.rglob("*.py")}
    graph = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                deps |= {t for t in [target] + [f"{target}.{a.name}" for a in node.names] if t in mods}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
        graph[mod] = deps - {mod}
    assert "AutoSegSensitivity.checkpoint" in graph["AutoSegSensitivity.inference"]
    assert "AutoSegSensitivity.checkpoint" in graph["AutoSegSensitivity.training"]

    state = {}

    def visit(m, trail):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(d):] + [d]))
            if d not in state:
                visit(d, trail + [d])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
