"""Intensity transforms (Lei et al., paper 004 section 3.1): preset values against hand-computed values
of the paper's definition, numpy/torch agreement, validation of custom points, parsing, stacking and the
dictionary form stored in checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.intensity import (
    PRESETS,
    SegmentalLinearFunction,
    apply_transform,
    apply_transform_torch,
    get_transform,
    get_transforms,
    parse_transform,
    stack_transforms,
    stack_transforms_torch,
)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# Hand-computed from the definition: 0 below h1, 1 above hK, x_i at h_i, linear between.
# SLF1 [-500,-200,200,1500] -> [0,0.2,0.8,1]: -350 is halfway in the first segment (0.1); 0 halfway in
# the second (0.5); 850 halfway in the third (0.9).
HAND = {
    "SLF1": [(-1024, 0.0), (-501, 0.0), (-500, 0.0), (-350, 0.1), (-200, 0.2), (-100, 0.35), (0, 0.5),
             (200, 0.8), (850, 0.9), (1500, 1.0), (1501, 1.0), (3000, 1.0)],
    "SLF2": [(-1000, 0.0), (-500, 0.0), (-300, 0.1), (-100, 0.2), (0, 0.5), (50, 0.65), (100, 0.8),
             (800, 0.9), (1500, 1.0), (2000, 1.0)],
    "SLF3": [(-1000, 0.0), (-500, 0.0), (-300, 0.1), (-100, 0.2), (150, 0.5), (400, 0.8), (950, 0.9),
             (1500, 1.0), (1600, 1.0)],
    "NLF1": [(-1000, 0.0), (-100, 0.0), (-50, 0.25), (0, 0.5), (50, 0.75), (100, 1.0), (1000, 1.0)],
    "NLF2": [(-1000, 0.0), (-500, 0.0), (-175, 0.25), (150, 0.5), (800, 1.0), (1200, 1.0)],
    # SepNet's released preprocessing (HiLab-git/SepNet data_process/Preprocess.py): 0, 0.1, 0.8, 1 at
    # -500, -100, 400, 1500 HU
    "SLF1-CODE": [(-1000, 0.0), (-500, 0.0), (-300, 0.05), (-100, 0.1), (150, 0.45), (400, 0.8), (950, 0.9),
                  (1500, 1.0), (1600, 1.0)],
}


def _reference(h: float, hu, xs) -> float:
    """Scalar brute-force evaluation of the definition, written independently of the module."""
    if h < hu[0]:
        return 0.0
    if h > hu[-1]:
        return 1.0
    for i in range(len(hu) - 1):
        if hu[i] <= h <= hu[i + 1]:
            return xs[i] + (h - hu[i]) * (xs[i + 1] - xs[i]) / (hu[i + 1] - hu[i])
    raise AssertionError("unreachable")


def test_presets_are_the_papers_points():
    assert PRESETS["SLF1"].hu_points == (-500, -200, 200, 1500)
    assert PRESETS["SLF2"].hu_points == (-500, -100, 100, 1500)
    assert PRESETS["SLF3"].hu_points == (-500, -100, 400, 1500)
    for name in ("SLF1", "SLF2", "SLF3"):
        assert PRESETS[name].values == (0.0, 0.2, 0.8, 1.0)
    assert PRESETS["NLF1"].hu_points == (-100, 100) and PRESETS["NLF1"].values == (0, 1)
    assert PRESETS["NLF2"].hu_points == (-500, 800) and PRESETS["NLF2"].values == (0, 1)
    assert sorted(PRESETS) == ["NLF1", "NLF2", "SLF1", "SLF1-CODE", "SLF2", "SLF3"]
    code = PRESETS["SLF1-CODE"]
    assert code.hu_points == (-500, -100, 400, 1500) and code.values == (0.0, 0.1, 0.8, 1.0)
    assert parse_transform("SLF1-code") is code and get_transforms("SLF1,slf1-code") == [PRESETS["SLF1"], code]


@pytest.mark.parametrize("name", sorted(HAND))
def test_preset_values_at_and_between_knots(name):
    hu = np.array([h for h, _ in HAND[name]], dtype=np.float32)
    want = np.array([x for _, x in HAND[name]], dtype=np.float32)
    got = apply_transform(hu, name)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    got_t = apply_transform_torch(torch.from_numpy(hu), name)
    np.testing.assert_allclose(got_t.numpy(), want, atol=1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_numpy_and_torch_agree_with_brute_force_on_random_hu(name, rng):
    t = PRESETS[name]
    hu = rng.uniform(-1200, 2500, size=4000)
    hu[:len(t.hu_points)] = t.hu_points  # exactly at the knots
    hu[10:20] = np.round(hu[10:20])
    ref = np.array([_reference(float(h), t.hu_points, t.values) for h in hu])
    out_np = apply_transform(hu.reshape(40, 100), t).reshape(-1)
    out_t32 = apply_transform_torch(torch.tensor(hu.reshape(4, 10, 100), dtype=torch.float32), t)
    out_t64 = apply_transform_torch(torch.tensor(hu, dtype=torch.float64), t)
    np.testing.assert_allclose(out_np, ref, atol=1e-6)
    np.testing.assert_allclose(out_t64.numpy(), ref, atol=1e-12)
    assert out_t32.dtype == torch.float32 and out_t32.shape == (4, 10, 100)
    np.testing.assert_allclose(out_t32.numpy().reshape(-1), out_np, atol=2e-6)
    # At a knot the value is exactly the knot's value, in both versions.
    knots = np.asarray(t.hu_points, dtype=np.float32)
    np.testing.assert_array_equal(apply_transform(knots, t), np.asarray(t.values, dtype=np.float32))
    np.testing.assert_array_equal(apply_transform_torch(torch.from_numpy(knots), t).numpy(),
                                  np.asarray(t.values, dtype=np.float32))


def test_integer_input_and_nan():
    ct = np.array([[-1000, -200], [0, 3000]], dtype=np.int16)
    np.testing.assert_allclose(apply_transform(ct, "SLF1"), [[0, 0.2], [0.5, 1.0]], atol=1e-7)
    out_t = apply_transform_torch(torch.from_numpy(ct), "SLF1")
    assert out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), [[0, 0.2], [0.5, 1.0]], atol=1e-7)
    a = apply_transform(np.array([np.nan, 0.0]), "NLF1")
    assert np.isnan(a[0]) and a[1] == pytest.approx(0.5)
    b = apply_transform_torch(torch.tensor([float("nan"), 0.0]), "NLF1")
    assert torch.isnan(b[0]) and float(b[1]) == pytest.approx(0.5)


def test_torch_version_is_differentiable_with_the_segment_slope():
    x = torch.tensor([-350.0, 0.0, 850.0, -900.0, 2000.0], requires_grad=True)
    apply_transform_torch(x, "SLF1").sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.2 / 300, 0.6 / 400, 0.2 / 1300, 0.0, 0.0], rtol=1e-5)


def test_callable_dispatches_on_type():
    t = get_transform("SLF2")
    assert isinstance(t(np.array([0.0])), np.ndarray)
    assert isinstance(t(torch.tensor([0.0])), torch.Tensor)
    assert float(t(torch.tensor([0.0]))[0]) == pytest.approx(0.5)


def test_plain_windows_match_monai_scale_intensity_range(rng):
    from monai.transforms import ScaleIntensityRange

    hu = rng.uniform(-1500, 2000, size=(3, 50, 50)).astype(np.float32)
    for name, (lo, hi) in {"NLF1": (-100, 100), "NLF2": (-500, 800)}.items():
        ref = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(hu)
        np.testing.assert_allclose(apply_transform(hu, name), np.asarray(ref), atol=1e-6)


def test_custom_points_outside_values_are_zero_and_one():
    t = SegmentalLinearFunction((0, 100), (0.3, 0.6))
    np.testing.assert_allclose(apply_transform(np.array([-1, 0, 50, 100, 101]), t), [0, 0.3, 0.45, 0.6, 1.0],
                               atol=1e-7)
    np.testing.assert_allclose(apply_transform_torch(torch.tensor([-1.0, 0, 50, 100, 101]), t).numpy(),
                               [0, 0.3, 0.45, 0.6, 1.0], atol=1e-7)


@pytest.mark.parametrize(
    "hu, xs, field",
    [
        ((-500, -600), (0, 1), "hu_points"),        # decreasing HU
        ((-500, -500, 0), (0, 0.5, 1), "hu_points"),  # repeated HU
        ((-500, 0), (0, 1.5), "values"),             # value above 1
        ((-500, 0), (-0.1, 1), "values"),            # value below 0
        ((-500, 0, 100), (0, 0.8, 0.2), "values"),   # decreasing values
        ((0,), (0.5,), "points"),                    # a single point
        ((0, 1, 2), (0, 1), "points"),               # length mismatch
        ((0, float("nan")), (0, 1), "points"),       # not finite
        (("a", 1), (0, 1), "points"),                # not numbers
    ],
)
def test_custom_points_are_validated(hu, xs, field):
    with pytest.raises(InputError) as err:
        SegmentalLinearFunction(hu, xs)
    assert err.value.field == field
    assert "intensity transform" in str(err.value)


def test_flat_segments_are_allowed():
    t = SegmentalLinearFunction((-100, 0, 100), (0.0, 0.5, 0.5))
    np.testing.assert_allclose(apply_transform(np.array([50.0]), t), [0.5])


def test_parse_names_and_points():
    assert parse_transform("slf1") is PRESETS["SLF1"]
    assert parse_transform(" NLF2 ") is PRESETS["NLF2"]
    t = parse_transform("-500:0,-200:0.2,200:0.8,1500:1")
    assert t == PRESETS["SLF1"] and t.name == "custom"
    assert parse_transform("-500:0; -100:0.2  100:0.8,1500:1.0") == PRESETS["SLF2"]
    assert parse_transform("-1e2:0,+1E2:1") == PRESETS["NLF1"]
    for t in PRESETS.values():
        assert parse_transform(t.to_string()) == t
    odd = SegmentalLinearFunction((-123.25, 7.5), (0.125, 0.875))
    assert parse_transform(odd.to_string()) == odd


@pytest.mark.parametrize("text", ["SLF9", "", "-500:0", "-500:0,abc:1", "-500:0,100", "-500:0:1,100:1",
                                  "100:0,-100:1"])
def test_parse_rejects_bad_text(text):
    with pytest.raises(InputError):
        parse_transform(text)


def test_get_transform_accepts_every_form():
    slf1 = PRESETS["SLF1"]
    assert get_transform(slf1) is slf1
    assert get_transform("SLF1") is slf1
    assert get_transform([(-500, 0), (-200, 0.2), (200, 0.8), (1500, 1)]) == slf1
    assert get_transform({"hu_points": [-500, -200, 200, 1500], "values": [0, 0.2, 0.8, 1]}) == slf1
    with pytest.raises(InputError):
        get_transform(42)
    with pytest.raises(InputError):
        get_transform([(1, 2, 3)])


def test_to_dict_round_trip_through_json():
    for t in list(PRESETS.values()) + [SegmentalLinearFunction((-10, 0, 10), (0, 0.4, 1))]:
        back = SegmentalLinearFunction.from_dict(json.loads(json.dumps(t.to_dict())))
        assert back == t and back.name == t.name
        np.testing.assert_array_equal(apply_transform(np.arange(-1200, 1700, 7), back),
                                      apply_transform(np.arange(-1200, 1700, 7), t))
    for bad in ({"hu_points": [0, 1]}, {"hu_points": [0, 1], "values": [0, 1], "extra": 1},
                {"hu_points": "0,1", "values": [0, 1]}, [1, 2]):
        with pytest.raises(InputError):
            SegmentalLinearFunction.from_dict(bad)


def test_stack_transforms_gives_one_channel_each_in_order(rng):
    hu = rng.uniform(-1100, 1800, size=(4, 6, 7))
    names = ["SLF1", "SLF2", "SLF3", "NLF1", "NLF2"]
    out = stack_transforms(hu, names)
    assert out.shape == (5, 4, 6, 7) and out.dtype == np.float32
    for c, name in enumerate(names):
        np.testing.assert_array_equal(out[c], apply_transform(hu, name))
    np.testing.assert_array_equal(stack_transforms(hu, "SLF1,NLF1"), out[[0, 3]])
    np.testing.assert_array_equal(stack_transforms(hu, "SLF3"), out[[2]])
    out_t = stack_transforms_torch(torch.from_numpy(hu.astype(np.float32)), names, dim=0)
    np.testing.assert_allclose(out_t.numpy(), out, atol=2e-6)
    assert [t.name for t in get_transforms(["SLF1", "-100:0,100:1"])] == ["SLF1", "custom"]
    with pytest.raises(InputError):
        get_transforms([])


def test_blockwise_application_matches_whole(monkeypatch, rng):
    import AutoSegSensitivity.intensity as intensity

    hu = rng.uniform(-1200, 2000, size=(7, 11, 13)).astype(np.float32)
    whole = apply_transform(hu, "SLF3")
    monkeypatch.setattr(intensity, "_BLOCK", 100)  # 1001 voxels -> 11 blocks, the last one short
    np.testing.assert_array_equal(apply_transform(hu, "SLF3"), whole)
    ref = np.array([_reference(float(h), PRESETS["SLF3"].hu_points, PRESETS["SLF3"].values) for h in hu.ravel()])
    np.testing.assert_allclose(whole.ravel(), ref, atol=1e-6)


def test_half_precision_and_bad_inputs():
    h = torch.tensor([-500.0, -350.0, 0.0, 2000.0], dtype=torch.float16)
    out = apply_transform_torch(h, "SLF1")
    assert out.dtype == torch.float16
    np.testing.assert_allclose(out.float().numpy(), [0, 0.1, 0.5, 1.0], atol=1e-3)
    with pytest.raises(InputError):
        apply_transform(np.array(["a", "b"]), "SLF1")
    with pytest.raises(InputError):
        apply_transform_torch(np.zeros(3), "SLF1")
    with pytest.raises(InputError):
        apply_transform(np.zeros(3), "SLF0")
