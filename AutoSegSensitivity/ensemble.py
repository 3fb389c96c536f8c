"""Rank-weighted class-wise ensemble of probability maps, with voxel- and structure-wise uncertainty.

After Lei et al. (paper 004, section 3.4):

* **Fusion (Eq. 9).** For each structure ``c`` the N models are ranked by their validation Dice on ``c``
  (rank 1 = best) and the fused map is the weighted average ``P_c = sum_i w_i P_c^i / sum_i w_i`` with
  weight ``w_i`` taken from the rank. The paper's weights for six models are ``5, 4, 3, 1, 1, 1``
  (:data:`DEFAULT_RANK_WEIGHTS`). **Rule for other ensemble sizes** (:func:`rank_weights`): with N models
  the model of rank ``r`` gets the ``r``-th entry of the weight list when ``r`` is within the list, and the
  list's last entry (1 for the default) when the list is shorter than N. So 3 models get ``5, 4, 3``, 8
  models get ``5, 4, 3, 1, 1, 1, 1, 1``. Without a ranking every model weighs 1 (plain mean).
* **Voxel-wise uncertainty (Eq. 11).** Each model votes one label per voxel; the uncertainty is the
  entropy (natural log, nats) of the frequencies of the distinct votes, ``H = -sum_m p_m ln p_m``
  (:func:`vote_entropy`). With six models the possible values are 0, 0.451, 0.637, 0.693, 0.868 and 1.011
  nats for the vote splits (6), (5,1), (4,2), (3,3), (4,1,1), (3,2,1). A second, smoother measure is the
  binary entropy of the (unweighted) mean probability of each structure
  (:func:`mean_probability_entropy`).
* **Structure-wise uncertainty (Eq. 12).** The volume variation coefficient ``VVC = sigma / mu`` of the N
  models' volumes of one structure (:func:`volume_variation`). The paper's Eq. 12 is printed as
  ``mu / sigma``, but its text describes the coefficient of variation (standard deviation over mean, a
  measure that grows with disagreement); we report ``sigma / mu``.

Arrays are in (z, y, x) order; volumes in millilitres; entropies in nats.
"""

from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .volume import Volume

DEFAULT_RANK_WEIGHTS: Tuple[float, ...] = (5.0, 4.0, 3.0, 1.0, 1.0, 1.0)
"""Weights for ranks 1..6 (best first), Lei et al. section 3.4."""

Ranking = Mapping[str, Sequence[str]]
"""``{structure: [model names, best to worst]}``."""


# --------------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------------


def rank_weights(n_models: int, weights: Sequence[float] = DEFAULT_RANK_WEIGHTS) -> List[float]:
    """The weights of ranks 1..``n_models`` (best first).

    Rank ``r`` gets ``weights[r - 1]`` while ``r <= len(weights)``; ranks past the end of the list get the
    list's last entry. ``weights`` must be non-empty, non-negative, and at least one weight among the first
    ``n_models`` must be positive."""
    if int(n_models) < 1:
        raise InputError("ensemble", "number of models", "at least 1", got=n_models)
    w = [float(v) for v in weights]
    if not w or any(not np.isfinite(v) or v < 0 for v in w):
        raise InputError("ensemble", "rank weights", "a non-empty list of non-negative numbers", got=list(weights))
    out = [w[r] if r < len(w) else w[-1] for r in range(int(n_models))]
    if sum(out) <= 0:
        raise InputError("ensemble", "rank weights", "at least one positive weight", got=out)
    return out


def ranking_from_dice(dice: Mapping[str, Mapping[str, float]]) -> Dict[str, List[str]]:
    """Rank models per structure from validation Dice ``{model: {structure: dice}}``.

    Returns ``{structure: [models, best to worst]}``; ties keep the models' order in ``dice``; a model
    without a Dice for a structure ranks last for it (NaN counts as missing)."""
    models = list(dice)
    structures: List[str] = []
    for m in models:
        for s in dice[m]:
            if s not in structures:
                structures.append(s)
    out: Dict[str, List[str]] = {}
    for s in structures:
        def key(item: Tuple[int, str]) -> Tuple[float, int]:
            idx, m = item
            v = dice[m].get(s)
            v = float("-inf") if v is None or not np.isfinite(v) else float(v)
            return (-v, idx)

        out[s] = [m for _, m in sorted(enumerate(models), key=key)]
    return out


def class_weights(models: Sequence[str], structures: Sequence[str], ranking: Optional[Ranking] = None,
                  weights: Sequence[float] = DEFAULT_RANK_WEIGHTS) -> Dict[str, Dict[str, float]]:
    """Weight of each model for each structure: ``{structure: {model: weight}}``.

    ``ranking`` maps each structure to all of ``models`` from best to worst (each exactly once); without a
    ranking every weight is 1. A ranking that misses a structure, lists an unknown model, or does not list
    every model once raises :class:`InputError`."""
    models = list(models)
    if len(set(models)) != len(models):
        raise InputError("ensemble", "model names", "distinct names", got=models)
    out: Dict[str, Dict[str, float]] = {}
    if ranking is None:
        return {s: {m: 1.0 for m in models} for s in structures}
    w = rank_weights(len(models), weights)
    for s in structures:
        if s not in ranking:
            raise InputError("ranking", s, f"a list of the models {models} from best to worst", got="missing")
        order = [str(m) for m in ranking[s]]
        unknown = [m for m in order if m not in models]
        if unknown:
            raise InputError("ranking", s, f"only the models {models}", got=unknown)
        if sorted(order) != sorted(models):
            raise InputError("ranking", s, f"each of the models {models} exactly once", got=order)
        out[s] = {m: w[order.index(m)] for m in models}
    return out


def weighted_average(maps: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """``sum_i w_i P_i / sum_i w_i`` over maps of the same shape (float32)."""
    if len(maps) == 0 or len(maps) != len(weights):
        raise InputError("ensemble", "maps/weights", "one weight per map and at least one map",
                         got=(len(maps), len(weights)))
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise InputError("ensemble", "weights", "non-negative with a positive sum", got=w.tolist())
    shape = np.shape(maps[0])
    acc = np.zeros(shape, dtype=np.float64)
    for p, wi in zip(maps, w):
        p = np.asarray(p)
        if p.shape != shape:
            raise InputError("ensemble", "probability map shape", f"{shape} for every model", got=p.shape)
        if wi:
            acc += wi * p
    return (acc / w.sum()).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# fusion of Volumes
# --------------------------------------------------------------------------------------------------------

ModelMaps = Mapping[str, Mapping[str, Volume]]
"""``{model: {structure: probability Volume}}``."""


def _check_maps(probs: ModelMaps) -> Tuple[List[str], List[str], Volume]:
    models = list(probs)
    if not models:
        raise InputError("ensemble", "models", "at least one model's probability maps", got=0)
    structures = list(probs[models[0]])
    if not structures:
        raise InputError(f"ensemble model {models[0]}", "structures", "at least one probability map", got=0)
    for m in models[1:]:
        if sorted(probs[m]) != sorted(structures):
            raise InputError(f"ensemble model {m}", "structures", f"the same structures as {models[0]}: {sorted(structures)}",
                             got=sorted(probs[m]))
    ref = probs[models[0]][structures[0]]
    for m in models:
        for s in structures:
            diff = ref.grid_difference(probs[m][s])
            if diff:
                raise InputError(f"ensemble model {m}", f"{s} grid", f"the grid of {models[0]}/{structures[0]}", got=diff)
    return models, structures, ref


def fuse(probs: ModelMaps, ranking: Optional[Ranking] = None,
         weights: Sequence[float] = DEFAULT_RANK_WEIGHTS) -> Dict[str, Volume]:
    """Class-wise rank-weighted average (Eq. 9) of N models' probability maps.

    ``probs`` is ``{model: {structure: Volume}}`` (all on one grid); ``ranking`` ``{structure: [models best
    to worst]}`` or ``None`` for equal weights. Returns ``{structure: fused float32 Volume}``."""
    models, structures, ref = _check_maps(probs)
    cw = class_weights(models, structures, ranking, weights)
    out: Dict[str, Volume] = {}
    for s in structures:
        fused = weighted_average([probs[m][s].array for m in models], [cw[s][m] for m in models])
        out[s] = ref.with_array(fused)
    return out


# --------------------------------------------------------------------------------------------------------
# uncertainty
# --------------------------------------------------------------------------------------------------------


def vote_labels(maps: Mapping[str, np.ndarray], structures: Sequence[str], threshold: float = 0.5) -> np.ndarray:
    """One model's label vote per voxel: 0 for background (no structure at or above ``threshold``), else
    ``1 + index`` in ``structures`` of the structure with the highest probability (first one on ties).
    Returns uint16 (z, y, x)."""
    stack = np.stack([np.asarray(maps[s], dtype=np.float32) for s in structures])
    best = np.argmax(stack, axis=0)
    top = np.take_along_axis(stack, best[None], axis=0)[0]
    labels = (best + 1).astype(np.uint16)
    labels[top < threshold] = 0
    return labels


def vote_entropy(labels: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the label votes of N models per voxel, Eq. 11: ``-sum_m p_m ln p_m`` where
    ``p_m`` is the fraction of the N models that voted the m-th distinct label.

    ``labels`` is an integer (or bool) array (N, ...) with the model axis first. Returns float32 (...)."""
    labels = np.asarray(labels)
    if labels.ndim < 1 or labels.shape[0] < 1:
        raise InputError("vote_entropy", "labels", "an array (N models, ...) with N >= 1", got=labels.shape)
    n = labels.shape[0]
    h = np.zeros(labels.shape[1:], dtype=np.float64)
    for value in np.unique(labels):
        p = np.count_nonzero(labels == value, axis=0) / n
        nz = p > 0
        h[nz] -= p[nz] * np.log(p[nz])
    return h.astype(np.float32)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """``-p ln p - (1-p) ln(1-p)`` in nats (0 at p = 0 or 1), float32."""
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0.0))
    return h.astype(np.float32)


def mean_probability_entropy(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Binary entropy (nats) of the unweighted mean of N models' probability maps of one structure."""
    return binary_entropy(weighted_average(maps, [1.0] * len(maps)))


def volume_variation(volumes_ml: Sequence[float], ddof: int = 0) -> Tuple[float, float, float]:
    """``(mean, std, vvc)`` of one structure's volumes over N models; ``vvc = std / mean`` (coefficient of
    variation; the paper's Eq. 12 prints the inverse ``mu / sigma`` but describes this). ``std`` is the
    population standard deviation (``ddof=0``) unless told otherwise. ``vvc`` is NaN when the mean is 0."""
    v = np.asarray(volumes_ml, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or v.size <= ddof:
        raise InputError("volume_variation", "volumes", f"more than {ddof} volumes", got=v.size)
    mean = float(v.mean())
    std = float(v.std(ddof=ddof))
    vvc = std / mean if mean > 0 else float("nan")
    return mean, std, vvc


@dataclass
class EnsembleResult:
    """What :func:`run_ensemble` computes.

    ``fused``: ``{structure: float32 Volume}``; ``vote_entropy``: Volume (nats, Eq. 11) of the N models'
    multi-class label votes; ``mean_entropy``: ``{structure: Volume}`` binary entropy of the mean
    probability; ``vvc``: rows ``{structure, mean_ml, std_ml, vvc}``; ``weights``: ``{structure: {model:
    weight}}``; ``models``: names in input order."""

    fused: Dict[str, Volume]
    vote_entropy: Volume
    mean_entropy: Dict[str, Volume]
    vvc: List[Dict[str, float]]
    weights: Dict[str, Dict[str, float]]
    models: List[str]

    def vvc_csv(self) -> str:
        """The VVC table as CSV text with columns ``structure, mean_ml, std_ml, vvc``."""
        buf = _io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["structure", "mean_ml", "std_ml", "vvc"])
        for row in self.vvc:
            writer.writerow([row["structure"], f"{row['mean_ml']:.6g}", f"{row['std_ml']:.6g}", f"{row['vvc']:.6g}"])
        return buf.getvalue()


def run_ensemble(probs: ModelMaps, ranking: Optional[Ranking] = None, threshold: float = 0.5,
                 weights: Sequence[float] = DEFAULT_RANK_WEIGHTS) -> EnsembleResult:
    """Fuse N models' maps (Eq. 9) and compute the uncertainty: vote entropy (Eq. 11) over the models'
    label votes at ``threshold``, entropy of the mean probability per structure, and the VVC per structure
    from each model's thresholded volume (``prob >= threshold``) in millilitres."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError("ensemble", "threshold", "a number in [0, 1]", got=threshold)
    models, structures, ref = _check_maps(probs)
    cw = class_weights(models, structures, ranking, weights)
    fused = fuse(probs, ranking, weights)
    votes = np.stack([vote_labels({s: probs[m][s].array for s in structures}, structures, threshold) for m in models])
    h_votes = ref.with_array(vote_entropy(votes))
    mean_h = {s: ref.with_array(mean_probability_entropy([probs[m][s].array for m in models])) for s in structures}
    rows = []
    for s in structures:
        vols = [float(np.count_nonzero(probs[m][s].array >= threshold)) * ref.voxel_volume_ml for m in models]
        mean, std, vvc = volume_variation(vols)
        rows.append({"structure": s, "mean_ml": mean, "std_ml": std, "vvc": vvc})
    return EnsembleResult(fused, h_votes, mean_h, rows, cw, models)
