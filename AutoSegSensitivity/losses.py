"""Training objectives of the three papers, by name: ``build_loss(name, **kwargs) -> loss(logits, target)``.

Every loss takes the network's **logits** (N, C, H, W) or (N, C, D, H, W) and a float target of the same
shape (0/1, one channel per class) and returns a scalar tensor. Names:

``bce``
    Binary cross entropy with logits, mean over every element (paper 000's default objective).
``bce_dice2d``
    Paper 000 Eq. 5: ``L = (1 - lambda) * BCE + lambda * (1 - D2)`` where ``D2`` is the soft Dice
    ``(2 sum p g + s) / (sum p + sum g + s)`` of each 2D slice (each sample, channel and, for 3D input, each
    z slice), averaged over slices. The paper describes lambda as "a hyperparameter between 0 and 1
    determining which term if any should be favoured", with the Dice term growing in importance with
    lambda: lambda = 0 is pure BCE, lambda = 1 pure 2D Dice loss. ``lam`` (alias ``lambda``) in [0, 1],
    default 0.5 (the paper's chosen value is not legible in our copy of the text); ``smooth`` s = 1.
``dice_ce``
    Paper 002 (Smith et al.): Dice loss plus cross entropy, ``dice_weight * (1 - mean soft Dice) +
    ce_weight * CE``. Soft Dice per sample and channel over all voxels (smooth 1). ``activation``
    "sigmoid" (default; BCE and Dice per channel) or "softmax" (categorical CE over exclusive one-hot
    classes; ``include_background`` chooses whether channel 0 enters the Dice mean).
``explog``
    Paper 004 Eqs. 2-5 (exponential-logarithmic loss of Wong et al.) for softmax outputs over exclusive
    classes: ``L = w_dsc * E_c[(-ln DSC_c)^g_dsc] + w_cross * E_x[w_c(x) (-ln p_c(x)(x))^g_cross]`` with
    ``DSC_c = (2 sum_x g_c p_c + eps) / (sum_x (g_c + p_c) + eps)``, eps = 1, the class weights
    ``w_c = ((sum_k f_k) / f_c)^0.5`` from class frequencies ``f_k`` (voxel counts in the batch, or
    ``class_frequencies`` given), and c(x) the true class of voxel x. The paper sets
    ``w_dsc = w_cross = g_dsc = g_cross = 1`` (the defaults). DSC_c is computed per sample and class and
    averaged (E over c and samples); ``include_background`` (True) says whether class 0 enters that mean.
``ath_explog``
    Paper 004 Eqs. 7-8: "attention to hard voxels": the probabilities entering the DSC term are weighted,
    ``p^w_c(x) = p_c(x) * exp((p_c(x) - g_c(x)) / alpha)``, before Eq. 3; the cross-entropy term is
    unchanged. ``alpha`` > 0 (default 0.5, the paper's main setting; the ensemble also uses 1). The weight
    is part of the graph (gradients flow through it), as the paper's multiplication implies.

Softmax losses check that the target is one-hot over the channels (one background channel first, as the
training engine builds it for ``final_activation == "softmax"`` models); a multi-label target raises an
``InputError`` naming the loss. Bad keyword arguments raise ``InputError`` too.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError

__all__ = ["available_losses", "build_loss", "BCELoss", "BCEDice2dLoss", "DiceCELoss", "ExpLogLoss",
           "soft_dice_2d", "explog_from_probabilities"]


# ---------------------------------------------------------------------------------------------- checks

def _number(loss: str, field: str, value: Any, lo: float = -math.inf, hi: float = math.inf,
            lo_open: bool = False) -> float:
    if isinstance(value, bool):
        raise InputError(loss, field, "a number", got=repr(value))
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(loss, field, "a number", got=repr(value)) from None
    ok = (v > lo if lo_open else v >= lo) and v <= hi and math.isfinite(v)
    if not ok:
        lo_s = f"> {lo:g}" if lo_open else f">= {lo:g}"
        expected = f"a number {lo_s}" + (f" and <= {hi:g}" if math.isfinite(hi) else "")
        if lo == 0 and hi == 1 and not lo_open:
            expected = "a number in [0, 1]"
        raise InputError(loss, field, expected, got=repr(value))
    return v


def _check_pair(loss: str, logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Check shapes; return logits and target as float32 (sums over 512 x 512 slices overflow float16 under
    mixed precision, so losses always compute in float32)."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise InputError(loss, "inputs", "torch tensors (logits, target)",
                         got=f"{type(logits).__name__}, {type(target).__name__}")
    if logits.dim() not in (4, 5):
        raise InputError(loss, "logits", "a tensor (N, C, H, W) or (N, C, D, H, W)", got=f"shape {tuple(logits.shape)}")
    if tuple(target.shape) != tuple(logits.shape):
        raise InputError(loss, "target", f"the logits' shape {tuple(logits.shape)}", got=f"shape {tuple(target.shape)}")
    return logits.float(), target.float()


def _check_one_hot(loss: str, target: torch.Tensor) -> None:
    if target.shape[1] < 2:
        raise InputError(loss, "target", "at least two channels (background first, then the classes) for a "
                         "softmax loss", got=f"{target.shape[1]} channel")
    binary = ((target == 0) | (target == 1)).all()
    if not bool(binary) or not bool((target.sum(dim=1) == 1).all()):
        raise InputError(loss, "target", "one-hot exclusive classes (exactly one channel is 1 at every voxel; "
                         "use a softmax model such as sepnet3d, whose target has a background channel)",
                         got="a multi-label or non-binary target")


def _activation(loss: str, value: Any) -> str:
    if value not in ("sigmoid", "softmax"):
        raise InputError(loss, "activation", "'sigmoid' or 'softmax'", got=repr(value))
    return str(value)


# ---------------------------------------------------------------------------------------------- helpers

def soft_dice_2d(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice ``(2 sum p g + s) / (sum p + sum g + s)`` of every 2D slice: sums over the last two axes
    (H, W); the result has the leading shape (N, C) or (N, C, D)."""
    dims = (-2, -1)
    inter = (prob * target).sum(dim=dims)
    denom = prob.sum(dim=dims) + target.sum(dim=dims)
    return (2.0 * inter + smooth) / (denom + smooth)


def _soft_dice_per_channel(prob: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """Soft Dice per sample and channel over all spatial voxels: shape (N, C)."""
    p = prob.flatten(2)
    g = target.flatten(2)
    return (2.0 * (p * g).sum(-1) + smooth) / (p.sum(-1) + g.sum(-1) + smooth)


# ---------------------------------------------------------------------------------------------- losses

class BCELoss(nn.Module):
    """Binary cross entropy on logits, mean over every element (``bce``)."""

    name = "bce"
    activation = "sigmoid"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _check_pair(self.name, logits, target)
        return F.binary_cross_entropy_with_logits(logits, target)


class BCEDice2dLoss(nn.Module):
    """Paper 000 Eq. 5: ``(1 - lam) * BCE + lam * (1 - mean 2D soft Dice)`` (``bce_dice2d``)."""

    name = "bce_dice2d"
    activation = "sigmoid"

    def __init__(self, lam: float = 0.5, smooth: float = 1.0) -> None:
        super().__init__()
        self.lam = _number(self.name, "lambda", lam, 0.0, 1.0)
        self.smooth = _number(self.name, "smooth", smooth, 0.0, lo_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _check_pair(self.name, logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        if self.lam == 0.0:
            return bce
        dice = soft_dice_2d(torch.sigmoid(logits), target, self.smooth).mean()
        if self.lam == 1.0:
            return 1.0 - dice
        return (1.0 - self.lam) * bce + self.lam * (1.0 - dice)


class DiceCELoss(nn.Module):
    """Paper 002: ``dice_weight * (1 - mean soft Dice) + ce_weight * cross entropy`` (``dice_ce``)."""

    name = "dice_ce"

    def __init__(self, activation: str = "sigmoid", dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1.0, include_background: bool = True) -> None:
        super().__init__()
        self.activation = _activation(self.name, activation)
        self.dice_weight = _number(self.name, "dice_weight", dice_weight, 0.0)
        self.ce_weight = _number(self.name, "ce_weight", ce_weight, 0.0)
        self.smooth = _number(self.name, "smooth", smooth, 0.0, lo_open=True)
        if not isinstance(include_background, bool):
            raise InputError(self.name, "include_background", "true or false", got=repr(include_background))
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _check_pair(self.name, logits, target)
        if self.activation == "sigmoid":
            prob = torch.sigmoid(logits)
            ce = F.binary_cross_entropy_with_logits(logits, target)
            dice = _soft_dice_per_channel(prob, target, self.smooth)
        else:
            _check_one_hot(self.name, target)
            ce = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            dice = _soft_dice_per_channel(torch.softmax(logits, dim=1), target, self.smooth)
            if not self.include_background:
                dice = dice[:, 1:]
        return self.dice_weight * (1.0 - dice.mean()) + self.ce_weight * ce


def class_weights(frequencies: torch.Tensor) -> torch.Tensor:
    """Paper 004: ``w_c = ((sum_k f_k) / f_c) ** 0.5``; classes with frequency 0 get weight 0 (no voxel of
    theirs enters the cross-entropy term, so the weight is never used)."""
    f = frequencies.to(torch.float64)
    total = f.sum()
    w = torch.where(f > 0, (total / f.clamp_min(1e-300)) ** 0.5, torch.zeros_like(f))
    return w


def explog_from_probabilities(prob: torch.Tensor, target: torch.Tensor, alpha: Optional[float] = None,
                              w_dsc: float = 1.0, w_cross: float = 1.0, gamma_dsc: float = 1.0,
                              gamma_cross: float = 1.0, epsilon: float = 1.0, include_background: bool = True,
                              frequencies: Optional[torch.Tensor] = None,
                              log_prob: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Paper 004 exp-log loss (Eqs. 2-5) from probabilities ``prob`` (N, C, ...) and a one-hot ``target``; with
    ``alpha`` the ATH weighting (Eqs. 7-8) is applied to the probabilities of the DSC term.

    ``frequencies``: class frequencies f_k (C,) for the class weights; default the voxel counts of
    ``target``. ``log_prob``: log of ``prob`` when known more precisely (``log_softmax``), for the
    cross-entropy term. Exposed so that tests can differentiate with respect to the probabilities (Eq. 6)."""
    n, c = prob.shape[:2]
    p = prob.reshape(n, c, -1)
    g = target.reshape(n, c, -1).to(p.dtype)
    p_dsc = p * torch.exp((p - g) / alpha) if alpha is not None else p
    inter = (g * p_dsc).sum(-1)
    dsc = (2.0 * inter + epsilon) / ((g + p_dsc).sum(-1) + epsilon)  # (N, C)
    if not include_background:
        dsc = dsc[:, 1:]
    neg_log = -torch.log(dsc)
    if gamma_dsc != 1.0:
        neg_log = neg_log.clamp_min(1e-12) ** gamma_dsc
    l_dsc = neg_log.mean()
    # cross term: every voxel x contributes w_c(x) * (-ln p_c(x)(x))^gamma for its true class c(x)
    freq = g.sum(dim=(0, 2)) if frequencies is None else frequencies.to(p.device)
    w = class_weights(freq).to(p.dtype)  # (C,)
    if log_prob is None:
        log_p = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
    else:
        log_p = log_prob.reshape(n, c, -1)
    ce = -(log_p * g).sum(1)  # (N, V): -ln p_c(x)(x) for the true class c(x)
    w_x = (w[None, :, None] * g).sum(1)  # (N, V)
    if gamma_cross != 1.0:
        ce = ce.clamp_min(1e-12) ** gamma_cross
    l_cross = (w_x * ce).mean()
    return w_dsc * l_dsc + w_cross * l_cross


class ExpLogLoss(nn.Module):
    """Paper 004 exponential-logarithmic loss (``explog``) and, with ``alpha``, ATH exp-log (``ath_explog``),
    on logits through a softmax over the class channels."""

    def __init__(self, alpha: Optional[float] = None, w_dsc: float = 1.0, w_cross: float = 1.0,
                 gamma_dsc: float = 1.0, gamma_cross: float = 1.0, epsilon: float = 1.0,
                 include_background: bool = True, class_frequencies: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.name = "explog" if alpha is None else "ath_explog"
        self.activation = "softmax"
        self.alpha = None if alpha is None else _number(self.name, "alpha", alpha, 0.0, lo_open=True)
        self.w_dsc = _number(self.name, "w_dsc", w_dsc, 0.0)
        self.w_cross = _number(self.name, "w_cross", w_cross, 0.0)
        self.gamma_dsc = _number(self.name, "gamma_dsc", gamma_dsc, 0.0, lo_open=True)
        self.gamma_cross = _number(self.name, "gamma_cross", gamma_cross, 0.0, lo_open=True)
        self.epsilon = _number(self.name, "epsilon", epsilon, 0.0)
        if not isinstance(include_background, bool):
            raise InputError(self.name, "include_background", "true or false", got=repr(include_background))
        self.include_background = include_background
        self.class_frequencies: Optional[torch.Tensor] = None
        if class_frequencies is not None:
            if isinstance(class_frequencies, (str, bytes)) or not isinstance(class_frequencies, Sequence) \
                    or len(class_frequencies) < 2:
                raise InputError(self.name, "class_frequencies", "a list of non-negative numbers, one per channel",
                                 got=repr(class_frequencies))
            vals = [_number(self.name, "class_frequencies", v, 0.0) for v in class_frequencies]
            if sum(vals) <= 0:
                raise InputError(self.name, "class_frequencies", "at least one positive number", got=repr(vals))
            self.class_frequencies = torch.tensor(vals, dtype=torch.float64)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _check_pair(self.name, logits, target)
        _check_one_hot(self.name, target)
        if self.class_frequencies is not None and len(self.class_frequencies) != logits.shape[1]:
            raise InputError(self.name, "class_frequencies", f"{logits.shape[1]} values (one per channel)",
                             got=len(self.class_frequencies))
        log_prob = torch.log_softmax(logits, dim=1)
        return explog_from_probabilities(log_prob.exp(), target, self.alpha, self.w_dsc, self.w_cross,
                                         self.gamma_dsc, self.gamma_cross, self.epsilon,
                                         self.include_background, self.class_frequencies, log_prob)


# ---------------------------------------------------------------------------------------------- registry

def _bce(**kw: Any) -> nn.Module:
    _no_kwargs("bce", kw)
    return BCELoss()


def _bce_dice2d(**kw: Any) -> nn.Module:
    names = [k for k in ("lam", "lambda", "lambda_") if k in kw]
    if len(names) > 1:
        raise InputError("bce_dice2d", "lambda", "one of lam / lambda, not both", got=", ".join(names))
    lam = kw.pop(names[0]) if names else 0.5
    smooth = kw.pop("smooth", 1.0)
    _no_kwargs("bce_dice2d", kw, "lam (or lambda), smooth")
    return BCEDice2dLoss(lam=lam, smooth=smooth)


def _dice_ce(**kw: Any) -> nn.Module:
    return _construct("dice_ce", DiceCELoss, kw,
                      ("activation", "dice_weight", "ce_weight", "smooth", "include_background"))


_EXPLOG_ARGS = ("w_dsc", "w_cross", "gamma_dsc", "gamma_cross", "epsilon", "include_background", "class_frequencies")


def _explog(**kw: Any) -> nn.Module:
    if "alpha" in kw:
        raise InputError("explog", "alpha", "no alpha (use ath_explog for the ATH weighting)", got=kw["alpha"])
    return _construct("explog", ExpLogLoss, kw, _EXPLOG_ARGS)


def _ath_explog(**kw: Any) -> nn.Module:
    kw.setdefault("alpha", 0.5)
    return _construct("ath_explog", ExpLogLoss, kw, ("alpha",) + _EXPLOG_ARGS)


def _no_kwargs(name: str, kw: Dict[str, Any], allowed: str = "none") -> None:
    if kw:
        raise InputError(name, "arguments", f"only {allowed}" if allowed != "none" else "no arguments",
                         got=", ".join(sorted(kw)))


def _construct(name: str, cls: Callable[..., nn.Module], kw: Dict[str, Any], allowed: Sequence[str]) -> nn.Module:
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise InputError(name, "arguments", f"only {', '.join(allowed)}", got=", ".join(unknown))
    return cls(**kw)


_LOSSES: Dict[str, Callable[..., nn.Module]] = {
    "bce": _bce,
    "bce_dice2d": _bce_dice2d,
    "dice_ce": _dice_ce,
    "explog": _explog,
    "ath_explog": _ath_explog,
}


def available_losses() -> list:
    """Names accepted by :func:`build_loss`, sorted."""
    return sorted(_LOSSES)


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the loss ``name`` (see the module docstring); the result is called as ``loss(logits, target)``
    and has an ``activation`` attribute ("sigmoid" or "softmax": which output activation it assumes).

    Unknown names and bad keyword arguments raise :class:`~AutoSegSensitivity.errors.InputError`."""
    if name not in _LOSSES:
        raise InputError("losses", "name", f"one of {', '.join(sorted(_LOSSES))}", got=repr(name))
    return _LOSSES[name](**dict(kwargs))
