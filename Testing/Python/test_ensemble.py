"""Rank-weighted ensemble, vote entropy (Lei Eq. 11) and volume variation coefficient (Lei Eq. 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from AutoSegSensitivity import InputError, Volume
from AutoSegSensitivity.ensemble import (
    DEFAULT_RANK_WEIGHTS,
    binary_entropy,
    class_weights,
    fuse,
    mean_probability_entropy,
    rank_weights,
    ranking_from_dice,
    run_ensemble,
    vote_entropy,
    vote_labels,
    volume_variation,
    weighted_average,
)


@pytest.mark.parametrize(
    "split, level",
    [((6,), 0.0), ((5, 1), 0.451), ((4, 2), 0.637), ((3, 3), 0.693), ((4, 1, 1), 0.868), ((3, 2, 1), 1.011)],
)
def test_vote_entropy_of_six_models_gives_the_papers_levels(split, level) -> None:
    # six models vote labels for one voxel; the labels split as given over classes 0, 3, 7
    votes = np.concatenate([np.full(n, label) for n, label in zip(split, (0, 3, 7))]).reshape(6, 1)
    h = vote_entropy(votes)
    assert round(float(h[0]), 3) == level
    assert h[0] == pytest.approx(scipy_entropy(np.array(split) / 6.0), abs=1e-6)  # natural log


def test_vote_entropy_per_voxel_matches_scipy(rng) -> None:
    votes = rng.integers(0, 4, size=(5, 3, 4, 6))
    h = vote_entropy(votes)
    assert h.shape == (3, 4, 6) and h.dtype == np.float32
    for idx in np.ndindex(h.shape):
        counts = np.bincount(votes[(slice(None),) + idx], minlength=4)
        assert h[idx] == pytest.approx(scipy_entropy(counts), abs=1e-6)


def test_rank_weights_rule_for_more_and_fewer_models() -> None:
    assert rank_weights(6) == [5, 4, 3, 1, 1, 1]
    assert rank_weights(3) == [5, 4, 3]
    assert rank_weights(8) == [5, 4, 3, 1, 1, 1, 1, 1]
    assert rank_weights(4, weights=(2, 1)) == [2, 1, 1, 1]
    with pytest.raises(InputError, match="rank weights"):
        rank_weights(2, weights=(-1, 1))
    with pytest.raises(InputError):
        rank_weights(0)


def test_class_weights_and_fusion_follow_a_hand_made_ranking(rng) -> None:
    models = ["a", "b", "c"]
    grid = Volume(np.zeros((2, 3, 4), np.float32), spacing=(1.0, 1.0, 2.0))
    maps = {m: {s: grid.with_array(rng.random(grid.shape).astype(np.float32)) for s in ("Lens", "Brain")} for m in models}
    ranking = {"Lens": ["c", "a", "b"], "Brain": ["a", "b", "c"]}
    w = class_weights(models, ["Lens", "Brain"], ranking)
    assert w == {"Lens": {"c": 5.0, "a": 4.0, "b": 3.0}, "Brain": {"a": 5.0, "b": 4.0, "c": 3.0}}
    fused = fuse(maps, ranking)
    expected_lens = (5 * maps["c"]["Lens"].array + 4 * maps["a"]["Lens"].array + 3 * maps["b"]["Lens"].array) / 12
    expected_brain = (5 * maps["a"]["Brain"].array + 4 * maps["b"]["Brain"].array + 3 * maps["c"]["Brain"].array) / 12
    np.testing.assert_allclose(fused["Lens"].array, expected_lens, rtol=1e-6)
    np.testing.assert_allclose(fused["Brain"].array, expected_brain, rtol=1e-6)
    assert fused["Lens"].same_grid(grid)
    # without a ranking: the plain mean
    np.testing.assert_allclose(fuse(maps)["Lens"].array, np.mean([maps[m]["Lens"].array for m in models], axis=0), rtol=1e-6)


def test_six_model_default_weights_by_brute_force(rng) -> None:
    maps = [rng.random((3, 3, 3)) for _ in range(6)]
    order = [4, 0, 5, 2, 1, 3]  # model indices best to worst
    w = np.zeros(6)
    for rank, m in enumerate(order):
        w[m] = DEFAULT_RANK_WEIGHTS[rank]
    expected = sum(wi * p for wi, p in zip(w, maps)) / 15.0
    names = [f"m{i}" for i in range(6)]
    cw = class_weights(names, ["S"], {"S": [names[i] for i in order]})
    got = weighted_average(maps, [cw["S"][n] for n in names])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bad_rankings_are_input_errors() -> None:
    with pytest.raises(InputError, match="Lens"):
        class_weights(["a", "b"], ["Lens"], {"Brain": ["a", "b"]})
    with pytest.raises(InputError, match="only the models"):
        class_weights(["a", "b"], ["Lens"], {"Lens": ["a", "z"]})
    with pytest.raises(InputError, match="exactly once"):
        class_weights(["a", "b"], ["Lens"], {"Lens": ["a", "a"]})


def test_ranking_from_validation_dice() -> None:
    dice = {"a": {"Lens": 0.5, "Brain": 0.9}, "b": {"Lens": 0.7, "Brain": 0.9}, "c": {"Lens": float("nan")}}
    r = ranking_from_dice(dice)
    assert r["Lens"] == ["b", "a", "c"]
    assert r["Brain"] == ["a", "b", "c"]  # tie keeps input order; missing ranks last


def test_vote_labels_pick_the_most_probable_structure_above_threshold() -> None:
    maps = {"A": np.array([0.9, 0.6, 0.2, 0.5]), "B": np.array([0.1, 0.7, 0.3, 0.5])}
    np.testing.assert_array_equal(vote_labels(maps, ["A", "B"], 0.5), [1, 2, 0, 1])


def test_binary_and_mean_probability_entropy() -> None:
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0])), [0.0, math.log(2), 0.0], atol=1e-7)
    maps = [np.full((2, 2, 2), 0.2), np.full((2, 2, 2), 0.4)]
    p = 0.3
    np.testing.assert_allclose(mean_probability_entropy(maps), -(p * math.log(p) + (1 - p) * math.log(1 - p)), rtol=1e-6)


def test_vvc_on_known_volumes() -> None:
    mean, std, vvc = volume_variation([10.0, 20.0, 30.0])
    assert mean == pytest.approx(20.0)
    assert std == pytest.approx(math.sqrt(200.0 / 3.0))
    assert vvc == pytest.approx(math.sqrt(200.0 / 3.0) / 20.0)
    assert volume_variation([10.0, 20.0, 30.0], ddof=1)[2] == pytest.approx(10.0 / 20.0)
    assert math.isnan(volume_variation([0.0, 0.0])[2])


def test_run_ensemble_vvc_from_thresholded_volumes() -> None:
    # voxel 2 x 2 x 2.5 mm = 0.01 ml; models segment 100, 200, 300 voxels of structure "S"
    grid = Volume(np.zeros((10, 10, 10), np.float32), spacing=(2.0, 2.0, 2.5))
    maps = {}
    for i, n in enumerate((100, 200, 300)):
        arr = np.zeros(1000, np.float32)
        arr[:n] = 0.8
        maps[f"m{i}"] = {"S": grid.with_array(arr.reshape(10, 10, 10))}
    res = run_ensemble(maps, threshold=0.5)
    row = res.vvc[0]
    assert row["structure"] == "S"
    assert row["mean_ml"] == pytest.approx(2.0)
    assert row["std_ml"] == pytest.approx(np.std([1.0, 2.0, 3.0]))
    assert row["vvc"] == pytest.approx(np.std([1.0, 2.0, 3.0]) / 2.0)
    # votes: voxels 0..99 all three agree, 100..199 split (2,1), 200..299 (1,2), rest all background
    h = res.vote_entropy.array.reshape(-1)
    assert h[50] == pytest.approx(0.0) and h[999] == pytest.approx(0.0)
    assert h[150] == pytest.approx(scipy_entropy([2, 1]), abs=1e-6)
    assert h[250] == pytest.approx(scipy_entropy([1, 2]), abs=1e-6)
    assert res.vvc_csv().splitlines()[0] == "structure,mean_ml,std_ml,vvc"


def test_mismatched_grids_or_structures_are_refused() -> None:
    a = Volume(np.zeros((2, 2, 2), np.float32))
    b = Volume(np.zeros((2, 2, 2), np.float32), spacing=(1.0, 1.0, 2.0))
    with pytest.raises(InputError, match="grid"):
        fuse({"m0": {"S": a}, "m1": {"S": b}})
    with pytest.raises(InputError, match="same structures"):
        fuse({"m0": {"S": a}, "m1": {"T": a}})
