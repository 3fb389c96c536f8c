"""Losses: each checked against a direct computation written here with plain numpy loops (and MONAI where
it implements the same formula), the Eq. 6 gradient of paper 004 against torch.autograd, the lambda limits of
paper 000's Eq. 5, and the validation errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.losses import available_losses, build_loss, class_weights, explog_from_probabilities


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _binary_case(rng, shape):
    logits = rng.normal(0, 2, size=shape)
    target = (rng.random(shape) < 0.4).astype(np.float64)
    return logits, target


def _one_hot_case(rng, n, c, spatial, missing_class=None):
    labels = rng.integers(0, c, size=(n,) + spatial)
    if missing_class is not None:
        labels[labels == missing_class] = 0
    target = np.zeros((n, c) + spatial)
    for idx in np.ndindex(labels.shape):
        target[(idx[0], labels[idx]) + idx[1:]] = 1.0
    logits = rng.normal(0, 1.5, size=(n, c) + spatial)
    return logits, target, labels


def _t(a) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64)


# ------------------------------------------------------------------------------ references (numpy loops)

def ref_bce(logits, target) -> float:
    total, count = 0.0, 0
    for idx in np.ndindex(logits.shape):
        p = _sig(logits[idx])
        g = target[idx]
        total += -(g * math.log(p) + (1 - g) * math.log(1 - p))
        count += 1
    return total / count


def ref_dice_2d_mean(logits, target, smooth=1.0) -> float:
    """Mean soft Dice over every 2D slice: (n, c) for 2D input, (n, c, z) for 3D input."""
    lead = logits.shape[:-2]
    dices = []
    for idx in np.ndindex(lead):
        inter = psum = gsum = 0.0
        for i in range(logits.shape[-2]):
            for j in range(logits.shape[-1]):
                p = _sig(logits[idx + (i, j)])
                g = target[idx + (i, j)]
                inter += p * g
                psum += p
                gsum += g
        dices.append((2 * inter + smooth) / (psum + gsum + smooth))
    return sum(dices) / len(dices)


def ref_softmax(logits):
    out = np.zeros_like(logits)
    n, c = logits.shape[:2]
    for b in range(n):
        for idx in np.ndindex(logits.shape[2:]):
            vals = [logits[(b, k) + idx] for k in range(c)]
            m = max(vals)
            e = [math.exp(v - m) for v in vals]
            s = sum(e)
            for k in range(c):
                out[(b, k) + idx] = e[k] / s
    return out


def ref_explog(prob, target, alpha=None, w_dsc=1.0, w_cross=1.0, g_dsc=1.0, g_cross=1.0, eps=1.0,
               include_background=True, freq=None) -> float:
    """Paper 004 Eqs. 2-5 (and Eqs. 7-8 with alpha), one voxel at a time."""
    n, c = prob.shape[:2]
    spatial = prob.shape[2:]
    # Eq. 3-4: DSC per sample and class, on the ATH-weighted prediction when alpha is given
    terms = []
    for b in range(n):
        for k in range(c if include_background else c - 1):
            k = k if include_background else k + 1
            inter = total = 0.0
            for idx in np.ndindex(spatial):
                p = prob[(b, k) + idx]
                g = target[(b, k) + idx]
                if alpha is not None:
                    p = p * math.exp((p - g) / alpha)  # Eqs. 7-8
                inter += g * p
                total += g + p
            dsc = (2 * inter + eps) / (total + eps)
            terms.append((-math.log(dsc)) ** g_dsc)
    l_dsc = sum(terms) / len(terms)
    # class frequencies and weights w_c = ((sum_k f_k) / f_c)^0.5
    if freq is None:
        freq = [0.0] * c
        for b in range(n):
            for idx in np.ndindex(spatial):
                for k in range(c):
                    freq[k] += target[(b, k) + idx]
    total_f = sum(freq)
    # Eq. 5: mean over voxels of w_c(x) (-ln p_c(x))^gamma for the true class c(x)
    acc, count = 0.0, 0
    for b in range(n):
        for idx in np.ndindex(spatial):
            k = [kk for kk in range(c) if target[(b, kk) + idx] == 1][0]
            w = (total_f / freq[k]) ** 0.5
            acc += w * (-math.log(prob[(b, k) + idx])) ** g_cross
            count += 1
    l_cross = acc / count
    return w_dsc * l_dsc + w_cross * l_cross


# ------------------------------------------------------------------------------ bce and bce_dice2d

def test_registry_names() -> None:
    assert available_losses() == ["ath_explog", "bce", "bce_dice2d", "dice_ce", "explog"]


def test_bce_matches_direct_computation(rng) -> None:
    logits, target = _binary_case(rng, (2, 2, 5, 4))
    got = float(build_loss("bce")(_t(logits), _t(target)))
    assert got == pytest.approx(ref_bce(logits, target), rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("shape", [(2, 2, 5, 4), (2, 1, 3, 4, 5)])
def test_bce_dice2d_matches_equation_5(rng, lam: float, shape) -> None:
    logits, target = _binary_case(rng, shape)
    target[0, 0, ..., :, :] = 0.0  # one empty slice (or slab): the smoothing keeps its Dice finite
    expected = (1 - lam) * ref_bce(logits, target) + lam * (1 - ref_dice_2d_mean(logits, target))
    got = float(build_loss("bce_dice2d", lam=lam)(_t(logits), _t(target)))
    assert got == pytest.approx(expected, rel=1e-6)


def test_bce_dice2d_lambda_limits(rng) -> None:
    logits, target = _binary_case(rng, (3, 2, 6, 6))
    x, y = _t(logits), _t(target)
    assert float(build_loss("bce_dice2d", **{"lambda": 0.0})(x, y)) == pytest.approx(float(build_loss("bce")(x, y)))
    pure_dice = 1 - ref_dice_2d_mean(logits, target)
    assert float(build_loss("bce_dice2d", **{"lambda": 1.0})(x, y)) == pytest.approx(pure_dice, rel=1e-6)
    # and the pure Dice loss equals MONAI's DiceLoss per 2D slice (each slice as its own "image")
    from monai.losses import DiceLoss

    slices = x.permute(0, 1, 2, 3).reshape(-1, 1, 6, 6)
    targets = y.reshape(-1, 1, 6, 6)
    monai_value = float(DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(slices, targets))
    assert float(build_loss("bce_dice2d", lam=1.0)(x, y)) == pytest.approx(monai_value, rel=1e-6)


def test_bce_dice2d_3d_input_uses_per_z_slice_dice(rng) -> None:
    # 3D volume: the 2D Dice is per z slice, which differs from one 3D Dice over the whole volume
    logits, target = _binary_case(rng, (1, 1, 4, 5, 5))
    target[0, 0, 0] = 0.0
    per_slice = 1 - ref_dice_2d_mean(logits, target)
    got = float(build_loss("bce_dice2d", lam=1.0)(_t(logits), _t(target)))
    assert got == pytest.approx(per_slice, rel=1e-6)
    p = 1 / (1 + np.exp(-logits))
    whole = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert abs(got - whole) > 1e-3


def test_bce_dice2d_gradients_flow_and_lambda_one_has_no_bce(rng) -> None:
    logits, target = _binary_case(rng, (1, 1, 4, 4))
    x = _t(logits).requires_grad_(True)
    build_loss("bce_dice2d", lam=1.0)(x, _t(target)).backward()
    g_dice = x.grad.clone()
    x.grad = None
    build_loss("bce_dice2d", lam=0.5)(x, _t(target)).backward()
    x2 = _t(logits).requires_grad_(True)
    F.binary_cross_entropy_with_logits(x2, _t(target)).backward()
    assert torch.allclose(x.grad, 0.5 * x2.grad + 0.5 * g_dice)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", float("nan"), True])
def test_bce_dice2d_validates_lambda(bad) -> None:
    with pytest.raises(InputError, match="lambda"):
        build_loss("bce_dice2d", lam=bad)


def test_bce_dice2d_refuses_two_lambdas_and_unknown_arguments() -> None:
    with pytest.raises(InputError, match="not both"):
        build_loss("bce_dice2d", lam=0.2, **{"lambda": 0.3})
    with pytest.raises(InputError, match="arguments"):
        build_loss("bce_dice2d", gamma=2)
    with pytest.raises(InputError, match="arguments"):
        build_loss("bce", lam=0.5)


# ------------------------------------------------------------------------------ dice_ce

def test_dice_ce_sigmoid_matches_direct_computation_and_monai(rng) -> None:
    logits, target = _binary_case(rng, (2, 2, 3, 4, 3))
    p = 1 / (1 + np.exp(-logits))
    dices = []
    for b in range(2):
        for k in range(2):
            inter = psum = gsum = 0.0
            for idx in np.ndindex(logits.shape[2:]):
                inter += p[(b, k) + idx] * target[(b, k) + idx]
                psum += p[(b, k) + idx]
                gsum += target[(b, k) + idx]
            dices.append((2 * inter + 1) / (psum + gsum + 1))
    expected = (1 - np.mean(dices)) + ref_bce(logits, target)
    got = float(build_loss("dice_ce")(_t(logits), _t(target)))
    assert got == pytest.approx(expected, rel=1e-6)
    from monai.losses import DiceLoss

    x, y = _t(logits), _t(target)
    monai_value = float(DiceLoss(sigmoid=True, smooth_nr=1.0, smooth_dr=1.0)(x, y)
                        + F.binary_cross_entropy_with_logits(x, y))
    assert got == pytest.approx(monai_value, rel=1e-6)


@pytest.mark.parametrize("include_background", [True, False])
def test_dice_ce_softmax_matches_direct_computation_and_monai(rng, include_background: bool) -> None:
    logits, target, labels = _one_hot_case(rng, 2, 3, (4, 5))
    prob = ref_softmax(logits)
    ce = np.mean([-math.log(prob[(b, labels[(b,) + idx]) + idx]) for b in range(2) for idx in np.ndindex(4, 5)])
    dices = []
    for b in range(2):
        for k in range(0 if include_background else 1, 3):
            inter = (prob[b, k] * target[b, k]).sum()
            dices.append((2 * inter + 1) / (prob[b, k].sum() + target[b, k].sum() + 1))
    expected = 1 - np.mean(dices) + ce
    loss = build_loss("dice_ce", activation="softmax", include_background=include_background)
    got = float(loss(_t(logits), _t(target)))
    assert got == pytest.approx(expected, rel=1e-6)
    from monai.losses import DiceCELoss

    ref = DiceCELoss(softmax=True, include_background=include_background, smooth_nr=1.0, smooth_dr=1.0)
    assert got == pytest.approx(float(ref(_t(logits), _t(target))), rel=1e-6)


def test_dice_ce_weights_and_validation(rng) -> None:
    logits, target = _binary_case(rng, (1, 1, 4, 4))
    x, y = _t(logits), _t(target)
    only_ce = float(build_loss("dice_ce", dice_weight=0.0)(x, y))
    assert only_ce == pytest.approx(ref_bce(logits, target), rel=1e-6)
    with pytest.raises(InputError, match="activation"):
        build_loss("dice_ce", activation="tanh")
    with pytest.raises(InputError, match="dice_weight"):
        build_loss("dice_ce", dice_weight=-1)
    with pytest.raises(InputError, match="one-hot"):
        build_loss("dice_ce", activation="softmax")(torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3))


# ------------------------------------------------------------------------------ explog and ath_explog

@pytest.mark.parametrize("name, kw", [
    ("explog", {}),
    ("ath_explog", {"alpha": 0.5}),
    ("ath_explog", {"alpha": 1.0}),
    ("explog", {"gamma_dsc": 0.3, "gamma_cross": 0.3, "w_dsc": 0.8, "w_cross": 0.2}),
    ("explog", {"include_background": False}),
])
def test_explog_matches_equations_2_to_8(rng, name: str, kw) -> None:
    logits, target, _ = _one_hot_case(rng, 2, 3, (3, 4, 4))
    prob = ref_softmax(logits)
    expected = ref_explog(prob, target, alpha=kw.get("alpha"), w_dsc=kw.get("w_dsc", 1.0),
                          w_cross=kw.get("w_cross", 1.0), g_dsc=kw.get("gamma_dsc", 1.0),
                          g_cross=kw.get("gamma_cross", 1.0), include_background=kw.get("include_background", True))
    got = float(build_loss(name, **kw)(_t(logits), _t(target)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_ath_explog_default_alpha_is_the_papers_half(rng) -> None:
    logits, target, _ = _one_hot_case(rng, 1, 3, (4, 4))
    prob = ref_softmax(logits)
    got = float(build_loss("ath_explog")(_t(logits), _t(target)))
    assert got == pytest.approx(ref_explog(prob, target, alpha=0.5), rel=1e-5)


def test_explog_class_weights_from_given_frequencies_and_missing_classes(rng) -> None:
    logits, target, _ = _one_hot_case(rng, 1, 3, (5, 5), missing_class=2)  # class 2 absent from this batch
    prob = ref_softmax(logits)
    freq = [900.0, 90.0, 10.0]
    got = float(build_loss("explog", class_frequencies=freq)(_t(logits), _t(target)))
    assert got == pytest.approx(ref_explog(prob, target, freq=freq), rel=1e-5)
    # batch frequencies: the absent class gets no (infinite) weight and the loss stays finite
    got = float(build_loss("explog")(_t(logits), _t(target)))
    assert math.isfinite(got) and got == pytest.approx(ref_explog(prob, target), rel=1e-5)
    w = class_weights(torch.tensor([900.0, 90.0, 10.0, 0.0]))
    assert np.allclose(w.numpy(), [(1000 / 900) ** 0.5, (1000 / 90) ** 0.5, (1000 / 10) ** 0.5, 0.0])


def eq6_gradient(p, g, eps=0.0):
    """Paper 004 Eq. 6 for one class (gamma = 1): dL_DSC/dp(x) = -(1/DSC) * 2{g(x) S - I} / S^2 with
    S = sum(g + p), I = sum(p g); with the pseudocount eps: DSC = (2I + eps)/(S + eps) and
    dDSC/dp(x) = (2 g(x) (S + eps) - (2I + eps)) / (S + eps)^2."""
    inter = float((p * g).sum())
    s = float((g + p).sum())
    dsc = (2 * inter + eps) / (s + eps)
    if eps == 0.0:
        ddsc = 2 * (g * s - inter) / s ** 2
    else:
        ddsc = (2 * g * (s + eps) - (2 * inter + eps)) / (s + eps) ** 2
    return -ddsc / dsc


@pytest.mark.parametrize("eps", [0.0, 1.0])
def test_explog_dsc_gradient_matches_equation_6(rng, eps: float) -> None:
    _, target, _ = _one_hot_case(rng, 1, 3, (4, 5))
    prob = ref_softmax(rng.normal(0, 1, size=target.shape))
    p = _t(prob).requires_grad_(True)
    loss = explog_from_probabilities(p, _t(target), w_cross=0.0, epsilon=eps)  # the L_DSC term alone
    loss.backward()
    n_classes = target.shape[1]
    for k in range(n_classes):
        # E over classes divides each class's term by the number of classes
        expected = eq6_gradient(prob[0, k], target[0, k], eps) / n_classes
        np.testing.assert_allclose(p.grad[0, k].numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_ath_gradient_is_equation_6_through_the_weighting(rng, alpha: float) -> None:
    # ATH feeds p^w = p exp((p - g)/alpha) into L_DSC; by the chain rule
    # dL/dp = dL/dp^w (Eq. 6 at p^w) * exp((p - g)/alpha) * (1 + p/alpha)
    _, target, _ = _one_hot_case(rng, 1, 2, (6, 6))
    prob = ref_softmax(rng.normal(0, 1, size=target.shape))
    p = _t(prob).requires_grad_(True)
    explog_from_probabilities(p, _t(target), alpha=alpha, w_cross=0.0).backward()
    for k in range(2):
        pk, gk = prob[0, k], target[0, k]
        pw = pk * np.exp((pk - gk) / alpha)
        expected = eq6_gradient(pw, gk, eps=1.0) * np.exp((pk - gk) / alpha) * (1 + pk / alpha) / 2
        np.testing.assert_allclose(p.grad[0, k].numpy(), expected, rtol=1e-9, atol=1e-12)


def test_ath_weighting_moves_predictions_away_from_the_truth() -> None:
    # Fig. 6: p^w < p where g = 1 and p^w > p where g = 0; smaller alpha moves further
    p = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    for alpha in (0.5, 1.0):
        assert bool((p * torch.exp((p - 1) / alpha) < p).all())
        assert bool((p * torch.exp(p / alpha) > p).all())
    # hence on a target whose class is partly mispredicted ATH exp-log exceeds exp-log
    rng = np.random.default_rng(0)
    logits, target, _ = _one_hot_case(rng, 1, 3, (4, 4))
    x, y = _t(logits), _t(target)
    assert float(build_loss("ath_explog", alpha=0.5)(x, y)) > float(build_loss("explog")(x, y))


def test_explog_gradient_flows_to_logits_and_is_finite_for_confident_predictions() -> None:
    target = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    target[:, 0] = 1.0
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    logits[:, 1] = -80.0  # p(background) ~ 1 - 1e-35
    logits.requires_grad_(True)
    for name in ("explog", "ath_explog"):
        value = build_loss(name)(logits, target)
        value.backward()
        assert math.isfinite(float(value.detach())) and bool(torch.isfinite(logits.grad).all())
        logits.grad = None


def test_losses_compute_in_float32_for_half_precision_logits(rng) -> None:
    logits, target = _binary_case(rng, (1, 1, 8, 8))
    for name in ("bce", "bce_dice2d", "dice_ce"):
        value = build_loss(name)(torch.tensor(logits, dtype=torch.float16), torch.tensor(target))
        assert value.dtype == torch.float32
        assert float(value) == pytest.approx(float(build_loss(name)(_t(logits), _t(target))), rel=2e-3)


def test_explog_validation() -> None:
    with pytest.raises(InputError, match="alpha"):
        build_loss("ath_explog", alpha=0.0)
    with pytest.raises(InputError, match="ath_explog"):
        build_loss("explog", alpha=0.5)
    with pytest.raises(InputError, match="arguments"):
        build_loss("ath_explog", lam=0.5)
    with pytest.raises(InputError, match="one-hot"):
        # a multi-label (sigmoid-model) target: background voxels have no channel set
        build_loss("explog")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(InputError, match="two channels"):
        build_loss("explog")(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))
    with pytest.raises(InputError, match="class_frequencies"):
        build_loss("explog", class_frequencies=[1.0, 2.0])(torch.zeros(1, 3, 2, 2),
                                                           F.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), 3)
                                                           .permute(0, 3, 1, 2).float())
    with pytest.raises(InputError, match="class_frequencies"):
        build_loss("explog", class_frequencies=[0.0, 0.0])


def test_shape_and_name_validation() -> None:
    with pytest.raises(InputError) as err:
        build_loss("focal")
    assert "bce_dice2d" in str(err.value) and "ath_explog" in str(err.value)
    for name in available_losses():
        with pytest.raises(InputError, match="shape"):
            build_loss(name)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
        with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
            build_loss(name)(torch.zeros(2, 4), torch.zeros(2, 4))
