"""Inference: checkpoint round trip, probability maps on the input grid (non-identity direction, odd
sizes, crop + resize inverted), agreement with a direct forward pass, streaming, sliding windows, tuned
thresholds stored in checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from AutoSegSensitivity.data import Preprocessor
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.inference import (LoadedModel, load_checkpoint, predict_volume,
                                          store_thresholds, threshold_maps)
from AutoSegSensitivity.intensity import apply_transform, get_transform
from AutoSegSensitivity.models import build_model
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.training import TrainConfig, read_checkpoint, train
from AutoSegSensitivity.volume import Box, Volume

TINY = {"base_features": 4}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two short runs on a tiny phantom: one plain, one with centre crop 48 and resize 32."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("inf")
    make_phantom_dataset(root / "data", cases=3, seed=1, shape=(10, 64, 64))
    out = {}
    for name, extra in (("plain", {}), ("cropped", {"crop": [48, 48], "resize": [32, 32]})):
        cfg = dict(model="unet2d", model_kwargs=TINY, structures=["Brain", "SpinalCord"], epochs=2,
                   batch_size=5, samples_per_epoch=10, lr=3e-3, seed=0, **extra)
        train(cfg, root / "data", root / name, device="cpu", progress_bar=False)
        out[name] = root / name / "last.pt"
    return out


def oblique_volume(shape=(7, 45, 51), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    d, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    hu = rng.normal(0, 300, shape).astype(np.float32)
    hu[:, 10:30, 12:35] = 40.0
    return Volume(hu, (0.9, 1.1, 2.5), (10.0, -20.0, 33.0), d)


def test_checkpoint_round_trip(trained):
    m = load_checkpoint(trained["plain"])
    ck = read_checkpoint(trained["plain"])
    assert m.class_names == ck["class_names"] == ["Brain", "SpinalCord"]
    assert m.config == TrainConfig.from_dict(ck["config"]) and m.epoch == 2
    assert m.prominence == ck["prominence"] and m.thresholds == {"Brain": 0.5, "SpinalCord": 0.5}
    assert not m.thresholds_tuned and not m.model.training
    for k, v in m.model.state_dict().items():
        assert torch.equal(v, ck["state_dict"][k])
    assert m.spatial_dims == 2 and m.final_activation == "sigmoid"


@pytest.mark.parametrize("which", ["plain", "cropped"])
def test_maps_lie_on_the_input_grid_and_match_a_direct_forward(trained, which):
    m = load_checkpoint(trained[which])
    vol = oblique_volume()
    probs = predict_volume(m, vol, batch_size=3)
    assert list(probs) == ["Brain", "SpinalCord"]
    for p in probs.values():
        assert p.same_grid(vol) and p.array.dtype == np.float32
        assert 0.0 <= p.array.min() and p.array.max() <= 1.0
    # independent computation, one slice at a time, with Volume.crop / Volume.paste for the crop box
    net, t = m.model, get_transform("NLF1")
    for z in (0, 4):
        sl = Volume(vol.array[z:z + 1], vol.spacing, vol.origin, vol.direction)
        if which == "cropped":
            box = Box((0, (45 - 48) // 2, (51 - 48) // 2), (1, (45 - 48) // 2 + 48, (51 - 48) // 2 + 48))
            sub = sl.crop(box, fill=-1000.0)
        else:
            sub = sl
        x = torch.from_numpy(apply_transform(sub.array, t)[:, None].astype(np.float32))
        if which == "cropped":
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        h, w = x.shape[-2:]
        xp = F.pad(x, (0, -w % 16, 0, -h % 16), value=float(apply_transform(np.array([-1000.0]), t)[0]))
        with torch.no_grad():
            p = torch.sigmoid(net(xp))[..., :h, :w]
        if which == "cropped":
            p = F.interpolate(p, size=(48, 48), mode="bilinear", align_corners=False)
            expect = sl.paste(Volume(p[:, 0].numpy(), sl.spacing), box).array
            assert np.all(probs["Brain"].array[z][:, :1] == 0)  # outside the crop box
        else:
            expect = p[:, 0].numpy()
        np.testing.assert_allclose(probs["Brain"].array[z], expect[0], atol=1e-5)


def test_streaming_batches_give_identical_maps(trained):
    m = load_checkpoint(trained["cropped"])
    vol = oblique_volume((5, 33, 29), seed=3)
    seen = []
    a = predict_volume(m, vol, batch_size=1, progress=lambda d, n: seen.append((d, n)))
    b = predict_volume(m, vol, batch_size=4)
    assert seen == [(i, 5) for i in range(1, 6)]
    for k in a:
        np.testing.assert_allclose(a[k].array, b[k].array, atol=1e-6)


def test_sliding_window_3d_softmax_on_input_grid():
    torch.manual_seed(0)
    net = build_model("sepnet3d", 1, 3, **TINY).eval()
    pre = Preprocessor([get_transform("NLF1")])
    cfg = TrainConfig(model="sepnet3d", patch_size=[8, 32, 32], inference_batch_size=2)
    m = LoadedModel(net, ["A", "B"], cfg, pre, {"name": "sepnet3d", "spatial_dims": 3, "final_activation": "softmax"},
                    thresholds={"A": 0.5, "B": 0.5})
    vol = oblique_volume((8, 32, 32), seed=4)
    probs = predict_volume(m, vol)
    assert all(p.same_grid(vol) for p in probs.values())
    x = torch.from_numpy(pre.image(vol.array)).movedim(1, 0)[None]
    with torch.no_grad():
        direct = torch.softmax(net(x), 1)[0, 1:].numpy()  # a single window covers the volume
    np.testing.assert_allclose(probs["A"].array, direct[0], atol=1e-5)
    np.testing.assert_allclose(probs["B"].array, direct[1], atol=1e-5)
    assert np.all(probs["A"].array + probs["B"].array <= 1 + 1e-6)
    # smaller than a window along z and odd in-plane: padded, then cropped back to the input grid
    small = oblique_volume((5, 37, 41), seed=5)
    out = predict_volume(m, small)
    assert all(p.same_grid(small) for p in out.values())
    # bigger than a window: Gaussian-blended windows, still on the grid
    big = oblique_volume((13, 50, 45), seed=6)
    assert all(p.same_grid(big) for p in predict_volume(m, big).values())


def test_store_thresholds_round_trip_and_errors(trained, tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(Path(trained["plain"]).read_bytes())
    store_thresholds(path, {"Brain": 0.31}, source="sweep dice")
    m = load_checkpoint(path)
    assert m.thresholds == {"Brain": 0.31, "SpinalCord": 0.5} and m.thresholds_tuned
    assert m.thresholds_source == "sweep dice"
    with pytest.raises(InputError, match="Liver"):
        store_thresholds(path, {"Liver": 0.2})
    with pytest.raises(InputError, match="Brain"):
        store_thresholds(path, {"Brain": 1.5})
    assert load_checkpoint(path).thresholds["Brain"] == 0.31  # failed updates leave the file as it was
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_threshold_maps_and_bad_inputs(trained, tmp_path):
    m = load_checkpoint(trained["plain"])
    vol = oblique_volume((3, 20, 24))
    probs = predict_volume(m, vol)
    seg = threshold_maps(probs, {"Brain": 0.2, "SpinalCord": 0.7})
    np.testing.assert_array_equal(seg.mask("Brain"), probs["Brain"].array >= 0.2)
    np.testing.assert_array_equal(seg.mask("SpinalCord"), probs["SpinalCord"].array >= 0.7)
    assert seg.geometry.same_grid(vol)
    with pytest.raises(InputError):
        threshold_maps(probs, 1.2)
    with pytest.raises(InputError):
        predict_volume(m, vol.array)
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "missing.pt")


def test_channels_last_and_batching_give_the_same_maps(trained):
    """channels_last (NHWC) and the slices-per-pass batch change speed, not the maps (1e-5: the two
    layouts' CPU kernels sum in different orders)."""
    m = load_checkpoint(trained["cropped"])
    vol = oblique_volume()
    ref = predict_volume(m, vol, batch_size=1, channels_last=False)
    fast = predict_volume(m, vol, batch_size=7)  # channels_last by default
    for name in ref:
        np.testing.assert_allclose(fast[name].array, ref[name].array, rtol=0, atol=1e-5)
    assert m.inference_network(True).encoders[0][0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert m.model.encoders[0][0][0].weight.is_contiguous()  # the checkpoint's network is left alone


def test_batchnorm_folding_keeps_outputs_and_follows_weight_changes(trained):
    """The inference copy has no BatchNorm left after convolutions and gives the eval outputs of the
    checkpoint's network (1e-5); changing the weights (in place, as an optimiser does) rebuilds it."""
    from AutoSegSensitivity.inference import fold_batchnorm

    m = load_checkpoint(trained["plain"])
    with torch.no_grad():  # give BatchNorm non-trivial statistics, so folding has work to do
        for mod in m.model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    fast = m.inference_network()
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in fast.modules())
    assert sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.model.modules()) > 10
    x = torch.randn(3, 1, 32, 48)
    with torch.no_grad():
        ref = m.model.eval()(x)
        np.testing.assert_allclose(fast(x).numpy(), ref.numpy(), rtol=0, atol=1e-5)
        np.testing.assert_allclose(fold_batchnorm(m.model)(x).numpy(), ref.numpy(), rtol=0, atol=1e-5)
        assert m.inference_network() is fast
        m.model.output.bias.add_(1.0)
        again = m.inference_network()
        assert again is not fast
        np.testing.assert_allclose(again(x).numpy(), ref.numpy() + 1.0, rtol=0, atol=1e-5)


def test_checkpoint_with_ddp_prefixes_loads_without_them(trained, tmp_path):
    """A state dict saved from a DistributedDataParallel wrapper (keys ``module.*``) reads back plain."""
    from AutoSegSensitivity.checkpoint import plain_state_dict, save_checkpoint

    ck = read_checkpoint(trained["plain"])
    ck["state_dict"] = {f"module.{k}": v for k, v in ck["state_dict"].items()}
    save_checkpoint(tmp_path / "ddp.pt", ck)
    m = load_checkpoint(tmp_path / "ddp.pt")
    plain = read_checkpoint(trained["plain"])["state_dict"]
    assert set(read_checkpoint(tmp_path / "ddp.pt")["state_dict"]) == set(plain)
    assert all(torch.equal(v, plain[k]) for k, v in m.model.state_dict().items())

    class Wrapper(torch.nn.Module):  # what DDP looks like to plain_state_dict: the network in .module
        def __init__(self, net):
            super().__init__()
            self.module = net
    assert set(plain_state_dict(Wrapper(m.model))) == set(plain)


def test_prediction_runs_in_float32_unless_mixed_precision_is_asked_for():
    """Maps feed threshold tuning on a 0.01 grid: prediction does not inherit the training config's `amp`
    (bfloat16 logits carry ~3 significant digits); mixed precision is an explicit opt-in (review finding)."""
    import inspect

    from AutoSegSensitivity.inference import predict_volume

    assert inspect.signature(predict_volume).parameters["amp"].default is False
