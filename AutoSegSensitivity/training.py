"""Training: config, data split, the Adam loop with early stopping, atomic checkpoints, resume, events.

``train(config, data_dir, out_dir)`` reads a dataset folder (``AutoSegSensitivity.io.scan_dataset``),
splits the cases into training and validation by name (seeded), preprocesses them (intensity transform,
optional centre crop and resize as paper 000), and fits the configured network with Adam:

* 2D models (``spatial_dims == 2``) see whole axial slices, 3D models see patches; with
  ``foreground_fraction`` (paper 002: 0.8) that share of samples holds foreground.
* Models with ``final_activation == "sigmoid"`` get one output channel per structure (multi-label, paper
  000); ``"softmax"`` models get a background channel first (exclusive classes, paper 004).
* Early stopping as paper 000 (``rule: running_mean``: the model with the lowest mean of the last ``window``
  validation losses is kept; with ``patience`` set, training stops after that many epochs without a new
  lowest mean) or as paper 002 (``rule: patience``: highest mean validation Dice kept, stop after
  ``patience`` epochs without a new highest).
* After every epoch ``out_dir/last.pt`` is written atomically (and ``best.pt`` when the epoch is the best);
  each holds the config, split, preprocessing, class names, training-set prominence per class, optimiser,
  scheduler, AMP scaler and RNG states, history and library versions. ``resume=True`` continues from
  ``last.pt``: every epoch seeds its own sampling and dropout from ``(seed, epoch)``, so an interrupted and
  resumed run gives exactly the weights of an uninterrupted one (deterministic CPU).
* CUDA with mixed precision (``torch.autocast`` + ``GradScaler``) when available, CPU otherwise.
* Events (``progress`` module) go to ``out_dir/events.jsonl`` and to ``on_event``.
* Cancel (SIGINT/SIGTERM, a file ``out_dir/CANCEL``, or the ``cancel`` flag) stops at the next batch; the
  last complete epoch stays in ``last.pt`` and :class:`~AutoSegSensitivity.errors.CancelledError` is raised.
"""

from __future__ import annotations

import copy
import json
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .atomic import write_text, write_with
from .data import (Preprocessor, PreparedCase, _pair, augment, crop_patch, lr_swap_permutation,
                   pad_to_multiple, prepare_case, prominence, resolve_transforms, sample_patches,
                   sample_slices)
from .errors import AutoSegError, CancelledError, InputError
from .progress import EventCallback, ProgressWriter, eta_seconds

CHECKPOINT_FORMAT = "AutoSegSensitivity-checkpoint"
CHECKPOINT_VERSION = 1
CANCEL_FILE = "CANCEL"

# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------

_AUGMENT_KEYS = {"flips": [], "intensity_shift": 0.0, "intensity_scale": 0.0}
_STOP_KEYS = {"rule": "running_mean", "window": 10, "patience": None, "min_delta": 0.0}
_SCHED_KEYS = {"name": "none", "step_size": 10, "gamma": 0.9}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved inside every checkpoint).

    Sizes are in voxels/pixels, ``(rows, columns)`` in-plane or ``(slices, rows, columns)`` for patches.

    * ``model`` / ``model_kwargs``: a name of ``models.available_models()`` and its arguments;
      ``loss`` / ``loss_kwargs``: a name of ``losses.build_loss``.
    * ``structures``: the classes (``null``: those present in every case); ``intensity``: a preset name, a
      ``{hu_points, values}`` mapping or a list of them (one input channel each).
    * ``crop`` / ``resize``: in-plane centre crop and resize (paper 000: 300 -> 150); ``patch_size``: 3D
      patch (required for 3D models) or an optional random in-plane crop for 2D models;
      ``foreground_fraction``: share of samples holding foreground (paper 002: 0.8; null: uniform);
      ``augment``: ``flips`` (axes among x, y, z; an x flip swaps _L/_R structures), ``intensity_shift``,
      ``intensity_scale`` (uniform ranges, in transformed units).
    * ``epochs``, ``batch_size``, ``samples_per_epoch`` (null: every training slice once for 2D, 4 patches
      per case for 3D), ``lr``, ``weight_decay`` (Adam), ``scheduler`` (``none`` or ``step`` with
      ``step_size`` epochs and ``gamma``).
    * ``early_stopping``: ``rule`` ``running_mean`` (``window``, optional ``patience``), ``patience`` (on
      mean validation Dice) or ``none`` (lowest validation loss kept); ``min_delta``.
    * ``val_fraction`` or ``val_cases`` (names); ``train_cases`` (names; null: every case not in validation,
      so a caller can hold test cases out of training); ``seed``; ``amp`` (CUDA only); ``device``;
      ``num_threads`` (CPU threads while training, null: torch's default); ``inference_batch_size`` and
      ``sliding_window_overlap`` (validation and inference).
    """

    model: str = "unet2d"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    loss: str = "bce"
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    structures: Optional[List[str]] = None
    intensity: Any = "NLF1"
    crop: Optional[List[int]] = None
    resize: Optional[List[int]] = None
    patch_size: Optional[List[int]] = None
    foreground_fraction: Optional[float] = None
    augment: Dict[str, Any] = field(default_factory=lambda: dict(_AUGMENT_KEYS))
    epochs: int = 100
    batch_size: int = 16
    samples_per_epoch: Optional[int] = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: Dict[str, Any] = field(default_factory=lambda: dict(_SCHED_KEYS))
    early_stopping: Dict[str, Any] = field(default_factory=lambda: dict(_STOP_KEYS))
    val_fraction: float = 0.2
    val_cases: Optional[List[str]] = None
    train_cases: Optional[List[str]] = None
    seed: int = 0
    amp: bool = True
    device: str = "auto"
    num_threads: Optional[int] = None
    inference_batch_size: int = 8
    sliding_window_overlap: float = 0.5
    name: str = ""
    description: str = ""

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Validate and build from a mapping; unknown keys and wrong types raise :class:`InputError`
        naming ``source`` and the key."""
        if not isinstance(data, Mapping):
            raise InputError(source, None, "a mapping of config keys", got=type(data).__name__)
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise InputError(source, str(key), f"a known config key (one of {sorted(known)})", got="unknown key")
        cfg = cls(**{k: copy.deepcopy(v) for k, v in data.items()})
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "TrainConfig":
        """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise InputError(path, None, "an existing config file", got="no such file")
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            raise InputError(path, None, "valid YAML or JSON", got=str(exc).splitlines()[0]) from exc
        return cls.from_dict(data or {}, source=str(path))

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON/YAML-friendly dict (round-trips through :meth:`from_dict`)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}

    def with_overrides(self, assignments: Sequence[str], source: str = "--set") -> "TrainConfig":
        """A copy with ``key=value`` assignments applied (values parsed as YAML; dotted keys reach into
        ``augment``, ``early_stopping``, ``scheduler``, ``model_kwargs``, ``loss_kwargs``)."""
        import yaml

        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise InputError(source, item, "key=value")
            key, _, raw = item.partition("=")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
            parts = key.strip().split(".")
            target = data
            for p in parts[:-1]:
                if p not in target or not isinstance(target[p], dict):
                    raise InputError(source, key, "a config key (dotted only into a mapping key)", got="unknown key")
                target = target[p]
            if len(parts) == 1 and parts[0] not in data:
                raise InputError(source, key, f"a known config key (one of {sorted(data)})", got="unknown key")
            target[parts[-1]] = value
        return TrainConfig.from_dict(data, source=source)

    # ---- validation -----------------------------------------------------------------------------------
    def validate(self, source: str = "config") -> None:
        """Check types and ranges; fill defaults inside the nested mappings."""
        def need(cond: bool, key: str, expected: str, got: Any) -> None:
            if not cond:
                raise InputError(source, key, expected, got=got)

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)

        def num(v: Any) -> Any:  # YAML 1.1 reads 1e-4 (no dot) as a string
            if isinstance(v, str):
                try:
                    return float(v)
                except ValueError:
                    return v
            return v

        for key in ("lr", "weight_decay", "foreground_fraction", "val_fraction", "sliding_window_overlap"):
            setattr(self, key, num(getattr(self, key)))
        need(isinstance(self.model, str) and bool(self.model), "model", "a model name", self.model)
        need(isinstance(self.loss, str) and bool(self.loss), "loss", "a loss name", self.loss)
        need(isinstance(self.model_kwargs, dict), "model_kwargs", "a mapping", self.model_kwargs)
        need(isinstance(self.loss_kwargs, dict), "loss_kwargs", "a mapping", self.loss_kwargs)
        if self.structures is not None:
            need(isinstance(self.structures, list) and all(isinstance(s, str) for s in self.structures)
                 and len(self.structures) > 0 and len(set(self.structures)) == len(self.structures),
                 "structures", "a list of distinct structure names", self.structures)
        self.crop = list(_pair(self.crop, "crop", source)) if self.crop is not None else None
        self.resize = list(_pair(self.resize, "resize", source)) if self.resize is not None else None
        if self.patch_size is not None:
            ok = isinstance(self.patch_size, (list, tuple)) and len(self.patch_size) in (2, 3) and all(
                is_int(v) and v > 0 for v in self.patch_size)
            need(ok, "patch_size", "[rows, columns] (2D) or [slices, rows, columns] (3D) positive integers",
                 self.patch_size)
            self.patch_size = [int(v) for v in self.patch_size]
        if self.foreground_fraction is not None:
            need(is_num(self.foreground_fraction) and 0 <= self.foreground_fraction <= 1,
                 "foreground_fraction", "a number in [0, 1] or null", self.foreground_fraction)
            self.foreground_fraction = float(self.foreground_fraction)
        for key, defaults in (("augment", _AUGMENT_KEYS), ("early_stopping", _STOP_KEYS), ("scheduler", _SCHED_KEYS)):
            value = getattr(self, key)
            need(isinstance(value, dict), key, "a mapping", value)
            for k in value:
                if k not in defaults:
                    raise InputError(source, f"{key}.{k}", f"a known key of {key} (one of {sorted(defaults)})",
                                     got="unknown key")
            merged = copy.deepcopy(defaults)
            merged.update({k: num(v) if k in ("intensity_shift", "intensity_scale", "min_delta", "gamma") else v
                           for k, v in value.items()})
            setattr(self, key, merged)
        aug = self.augment
        need(isinstance(aug["flips"], list) and all(a in ("x", "y", "z") for a in aug["flips"]),
             "augment.flips", "a list of axes among x, y, z", aug["flips"])
        for k in ("intensity_shift", "intensity_scale"):
            need(is_num(aug[k]) and aug[k] >= 0, f"augment.{k}", "a non-negative number", aug[k])
        st = self.early_stopping
        need(st["rule"] in ("running_mean", "patience", "none"), "early_stopping.rule",
             "running_mean, patience or none", st["rule"])
        need(is_int(st["window"]) and st["window"] >= 1, "early_stopping.window", "a positive integer", st["window"])
        need(st["patience"] is None or (is_int(st["patience"]) and st["patience"] >= 1), "early_stopping.patience",
             "a positive integer or null", st["patience"])
        if st["rule"] == "patience" and st["patience"] is None:
            st["patience"] = 20
        need(is_num(st["min_delta"]) and st["min_delta"] >= 0, "early_stopping.min_delta", "a non-negative number",
             st["min_delta"])
        sc = self.scheduler
        need(sc["name"] in ("none", "step"), "scheduler.name", "none or step", sc["name"])
        need(is_int(sc["step_size"]) and sc["step_size"] >= 1, "scheduler.step_size", "a positive integer", sc["step_size"])
        need(is_num(sc["gamma"]) and 0 < sc["gamma"] <= 1, "scheduler.gamma", "a number in (0, 1]", sc["gamma"])
        for key in ("epochs", "batch_size", "inference_batch_size"):
            v = getattr(self, key)
            need(is_int(v) and v >= 1, key, "a positive integer", v)
        need(self.samples_per_epoch is None or (is_int(self.samples_per_epoch) and self.samples_per_epoch >= 1),
             "samples_per_epoch", "a positive integer or null", self.samples_per_epoch)
        need(is_num(self.lr) and self.lr > 0, "lr", "a positive number", self.lr)
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a non-negative number",
             self.weight_decay)
        need(is_num(self.val_fraction) and 0 < self.val_fraction < 1, "val_fraction", "a number in (0, 1)",
             self.val_fraction)
        if self.val_cases is not None:
            need(isinstance(self.val_cases, list) and all(isinstance(s, str) for s in self.val_cases) and self.val_cases,
                 "val_cases", "a non-empty list of case names or null", self.val_cases)
        if self.train_cases is not None:
            need(isinstance(self.train_cases, list) and all(isinstance(s, str) for s in self.train_cases)
                 and self.train_cases, "train_cases", "a non-empty list of case names or null", self.train_cases)
        need(is_int(self.seed), "seed", "an integer", self.seed)
        need(isinstance(self.amp, bool), "amp", "true or false", self.amp)
        need(self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"), "device",
             "auto, cpu or cuda", self.device)
        need(self.num_threads is None or (is_int(self.num_threads) and self.num_threads >= 1), "num_threads",
             "a positive integer or null", self.num_threads)
        need(is_num(self.sliding_window_overlap) and 0 <= self.sliding_window_overlap < 1,
             "sliding_window_overlap", "a number in [0, 1)", self.sliding_window_overlap)
        self.resolve_transforms(source)

    def resolve_transforms(self, source: str = "config") -> list:
        """The intensity transform objects of ``intensity``."""
        return resolve_transforms(self.intensity, source)

    def preprocessor(self) -> Preprocessor:
        """The preprocessing this config trains with."""
        return Preprocessor(self.resolve_transforms(), tuple(self.crop) if self.crop else None,
                            tuple(self.resize) if self.resize else None)


# --------------------------------------------------------------------------------------------------------
# Results, errors, helpers
# --------------------------------------------------------------------------------------------------------


class TrainingOutOfMemory(AutoSegError):
    """The GPU ran out of memory; the message names the batch size tried and what to do."""


@dataclass
class TrainResult:
    """What :func:`train` did. ``best_score`` is the running-mean loss, the mean Dice or the loss, by rule."""

    out_dir: Path
    last_path: Path
    best_path: Path
    epochs_run: int
    best_epoch: int
    best_score: Optional[float]
    stop_reason: str
    history: List[Dict[str, Any]]
    class_names: List[str]
    prominence: Dict[str, float]
    elapsed_s: float


def library_versions() -> Dict[str, str]:
    """Versions of the libraries a checkpoint depends on."""
    import torch

    out = {"AutoSegSensitivity": __version__, "torch": str(torch.__version__), "numpy": np.__version__,
           "python": platform.python_version()}
    try:  # the installed version, without importing monai (slow)
        from importlib.metadata import version

        out["monai"] = version("monai")
    except Exception:  # noqa: BLE001 - optional
        pass
    return out


def resolve_device(device: str) -> "Any":
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an :class:`InputError`."""
    import torch

    device = str(device or "auto")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device", None, "cpu or auto (no CUDA GPU is available here)", got=device)
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise InputError("device", None, "auto, cpu or cuda", got=device)
    return torch.device(device)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1)[0])


def build_network(cfg: TrainConfig, in_channels: int, n_classes: int) -> Tuple["Any", Dict[str, Any]]:
    """Build the configured network (seeded) with one output channel per class, plus a background channel
    first for softmax models. Returns the model and its spec (what a checkpoint stores to rebuild it)."""
    import torch

    from .models import build_model

    torch.manual_seed(cfg.seed)
    try:
        model = build_model(cfg.model, in_channels, n_classes, **cfg.model_kwargs)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("config", "model/model_kwargs", f"a known model with valid arguments ({exc})",
                         got=cfg.model) from exc
    out_channels = n_classes
    if getattr(model, "final_activation", "sigmoid") == "softmax":
        out_channels = n_classes + 1
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, in_channels, out_channels, **cfg.model_kwargs)
    spec = {"name": cfg.model, "in_channels": in_channels, "out_channels": out_channels,
            "kwargs": copy.deepcopy(cfg.model_kwargs), "spatial_dims": int(getattr(model, "spatial_dims", 2)),
            "final_activation": str(getattr(model, "final_activation", "sigmoid"))}
    return model, spec


def size_divisor(model: Any, spatial_dims: int) -> int:
    """The factor input sizes are padded to (the model's ``size_divisor`` attribute, else 16)."""
    return int(getattr(model, "size_divisor", 16))


def to_target(labels: "Any", softmax: bool) -> "Any":
    """Float target of the loss: ``labels`` (N, K, ...) for sigmoid models; for softmax models a one-hot
    (N, K+1, ...) with background first (a later class wins where masks overlap)."""
    import torch

    labels = labels.float()
    if not softmax:
        return labels
    k = labels.shape[1]
    index = torch.zeros((labels.shape[0],) + tuple(labels.shape[2:]), dtype=torch.long, device=labels.device)
    for c in range(k):
        index[labels[:, c] > 0.5] = c + 1
    onehot = torch.nn.functional.one_hot(index, k + 1)
    return onehot.movedim(-1, 1).float()


def _dice_counts(pred: np.ndarray, ref: np.ndarray) -> Tuple[int, int, int]:
    return int(np.logical_and(pred, ref).sum()), int(pred.sum()), int(ref.sum())


class EarlyStopping:
    """Best-model selection and stopping (see the module docstring); state round-trips via dicts."""

    def __init__(self, rule: str = "running_mean", window: int = 10, patience: Optional[int] = None,
                 min_delta: float = 0.0) -> None:
        self.rule, self.window, self.patience, self.min_delta = rule, int(window), patience, float(min_delta)
        self.val_losses: List[float] = []
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.bad_epochs = 0

    @property
    def metric(self) -> str:
        return {"running_mean": "val_loss_mean", "patience": "val_dice_mean", "none": "val_loss"}[self.rule]

    def update(self, epoch: int, val_loss: float, val_dice_mean: Optional[float]) -> Tuple[bool, bool, float]:
        """Record an epoch; returns ``(is_best, should_stop, running_mean_loss)``."""
        self.val_losses.append(float(val_loss))
        running = float(np.mean(self.val_losses[-self.window:]))
        if self.rule == "running_mean":
            score, higher = running, False
        elif self.rule == "patience":
            score, higher = (float(val_dice_mean) if val_dice_mean is not None else 0.0), True
        else:
            score, higher = float(val_loss), False
        if self.best_score is None or (score > self.best_score + self.min_delta if higher
                                       else score < self.best_score - self.min_delta):
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            is_best = True
        else:
            self.bad_epochs += 1
            is_best = False
        stop = self.patience is not None and self.rule != "none" and self.bad_epochs >= self.patience
        return is_best, stop, running

    def state_dict(self) -> Dict[str, Any]:
        return {"rule": self.rule, "window": self.window, "patience": self.patience, "min_delta": self.min_delta,
                "val_losses": list(self.val_losses), "best_score": self.best_score, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.val_losses = [float(v) for v in state["val_losses"]]
        self.best_score = state["best_score"]
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])


class _CancelWatch:
    """Cancel requests from signals (main thread only), a file in the output folder, or a flag."""

    def __init__(self, out_dir: Path, flag: Any) -> None:
        self.file = out_dir / CANCEL_FILE
        self.flag = flag
        self.signalled: Optional[str] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "_CancelWatch":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # pragma: no cover - unusual platforms
                    pass
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signalled is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signalled = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self) -> Optional[str]:
        """The reason for a cancel request, or ``None``."""
        if self.signalled:
            return self.signalled
        if self.flag is not None:
            is_set = self.flag.is_set() if hasattr(self.flag, "is_set") else bool(self.flag())
            if is_set:
                return "cancel flag"
        if self.file.exists():
            return f"cancel file {self.file}"
        return None


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    return isinstance(exc, oom_types) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


# --------------------------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------------------------


def load_dataset(data_dir: Union[str, Path], structures: Optional[Sequence[str]],
                 emit: Callable[..., Any] = lambda *a, **k: None) -> Tuple[List[Tuple[str, Any, Any]], List[str]]:
    """Read every usable case of a dataset folder: ``[(name, hu Volume, masks (K, z, y, x) bool)]`` and the
    class names. Cases lacking a structure are skipped (with a ``warning`` event)."""
    from .io import load_case, scan_dataset

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, None, "a dataset folder (one sub-folder per case)", got="no such folder")
    scan = scan_dataset(data_dir)
    for name, reason in scan.problems:
        emit("warning", message=f"case {name} skipped: {reason}")
    cases = sorted(scan.cases, key=lambda c: c.name)
    if not cases:
        raise InputError(data_dir, "cases", "at least two readable cases", got=0)
    if structures is None:
        common = [s for s in cases[0].structures if all(s in c.structures for c in cases)]
        if not common:
            raise InputError(data_dir, "structures", "structures present in every case", got="none in common")
        structures = common
    structures = list(structures)
    out = []
    for case in cases:
        missing = [s for s in structures if s not in case.structures]
        if missing:
            emit("warning", message=f"case {case.name} skipped: lacks {', '.join(missing)}")
            continue
        image, seg = load_case(case)
        if not seg.geometry.same_grid(image):
            seg = seg.resample_like(image)
        masks = np.stack([seg.mask(s) for s in structures])
        out.append((case.name, image, masks))
    if len(out) < 2:
        raise InputError(data_dir, "cases", f"at least two cases holding {structures}", got=len(out))
    return out, structures


def split_cases(names: Sequence[str], val_fraction: float, seed: int,
                val_cases: Optional[Sequence[str]] = None, source: str = "config",
                train_cases: Optional[Sequence[str]] = None) -> Tuple[List[str], List[str]]:
    """Seeded split of case names into (train, val); ``val_cases`` fixes the validation cases and
    ``train_cases`` the training cases (default: every other case; cases in neither are not used)."""
    names = sorted(names)
    if train_cases is not None:
        unknown = [n for n in train_cases if n not in names]
        if unknown:
            raise InputError(source, "train_cases", f"case names of the dataset ({names})", got=unknown)
        if val_cases is None:
            val_cases = [n for n in names if n not in set(train_cases)]
    if val_cases is not None:
        unknown = [n for n in val_cases if n not in names]
        if unknown:
            raise InputError(source, "val_cases", f"case names of the dataset ({names})", got=unknown)
        val = [n for n in names if n in set(val_cases)]
    else:
        n_val = min(len(names) - 1, max(1, int(round(val_fraction * len(names)))))
        perm = np.random.default_rng(seed).permutation(len(names))
        val = sorted(names[i] for i in perm[:n_val])
    train = [n for n in names if n not in set(val)]
    if train_cases is not None:
        both = sorted(set(train_cases) & set(val))
        if both:
            raise InputError(source, "train_cases", "cases not in validation", got=both)
        train = [n for n in names if n in set(train_cases)]
    if not train or not val:
        raise InputError(source, "val_fraction/val_cases", "at least one training and one validation case",
                         got={"train": train, "val": val})
    return train, val


# --------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------


def save_checkpoint(path: Union[str, Path], payload: Dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (torch.save to a temporary file, then rename)."""
    import torch

    payload = _plain(dict(payload))
    payload.setdefault("format", CHECKPOINT_FORMAT)
    payload.setdefault("format_version", CHECKPOINT_VERSION)
    return write_with(path, lambda tmp: torch.save(payload, tmp))


def _plain(obj: Any) -> Any:
    """Numpy scalars/arrays inside a checkpoint become Python numbers/lists (so ``weights_only`` loading,
    which refuses arbitrary classes, reads every checkpoint we write)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, str) and type(obj) is not str:  # e.g. torch.__version__ (TorchVersion)
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def read_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> Dict[str, Any]:
    """Load and check a checkpoint dict; a file that is not one of ours, or of another format version,
    raises :class:`InputError` naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "an existing checkpoint file", got="no such file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InputError(path, None, "a checkpoint written by AutoSegSensitivity (torch.save)",
                         got=f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputError(path, "format", f"an {CHECKPOINT_FORMAT} file", got="another kind of file")
    version = data.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise InputError(path, "format_version",
                         f"{CHECKPOINT_VERSION} (this is AutoSegSensitivity {__version__}; retrain or use the "
                         f"version named in the file: {data.get('versions', {}).get('AutoSegSensitivity', '?')})",
                         got=version)
    return data


def _rng_states() -> Dict[str, Any]:
    import torch

    # Sampling and augmentation use a numpy Generator seeded from (seed, epoch) at each epoch start, so
    # only torch's generator (dropout) carries state between batches.
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


def _forward_loss(model: Any, loss_fn: Any, x: Any, y: Any, use_amp: bool, device: Any) -> Tuple[Any, Any]:
    import torch

    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        logits = model(x)
    loss = loss_fn(logits.float(), y)
    return loss, logits


def _train_step(model: Any, loss_fn: Any, optimizer: Any, scaler: Any, x: Any, y: Any, use_amp: bool,
                device: Any) -> float:
    """One optimiser step; returns the batch loss."""
    optimizer.zero_grad(set_to_none=True)
    loss, _ = _forward_loss(model, loss_fn, x, y, use_amp, device)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _validate(model: Any, loss_fn: Any, cases: Sequence[PreparedCase], spec: Dict[str, Any], cfg: TrainConfig,
              pad_values: np.ndarray, device: Any, use_amp: bool) -> Tuple[float, List[Optional[float]]]:
    """Validation loss (mean over slices / cases) and pooled Dice per class at 0.5 (argmax for softmax)."""
    import torch

    softmax = spec["final_activation"] == "softmax"
    n_classes = cases[0].labels.shape[0]
    counts = np.zeros((n_classes, 3), dtype=np.int64)
    loss_sum, loss_n = 0.0, 0
    model.eval()
    divisor = size_divisor(model, spec["spatial_dims"])
    with torch.no_grad():
        for case in cases:
            if spec["spatial_dims"] == 2:
                n = case.n_slices
                for s in range(0, n, cfg.inference_batch_size):
                    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.image[:, s:s + cfg.inference_batch_size], 1, 0))).to(device)
                    lab = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.labels[:, s:s + cfg.inference_batch_size], 1, 0))).to(device)
                    xp, sizes = pad_to_multiple(x, divisor, pad_values, dims=2)
                    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                        logits = model(xp)
                    logits = logits[..., : sizes[0], : sizes[1]].float()
                    target = to_target(lab, softmax)
                    loss_sum += float(loss_fn(logits, target)) * x.shape[0]
                    loss_n += x.shape[0]
                    _accumulate(counts, logits, lab, softmax)
            else:
                from .inference import sliding_window_logits

                x = torch.from_numpy(case.image[None]).to(device)
                logits = sliding_window_logits(model, x, tuple(cfg.patch_size), cfg.sliding_window_overlap,
                                               cfg.inference_batch_size, pad_values, divisor, use_amp)
                lab = torch.from_numpy(case.labels[None]).to(device)
                loss_sum += float(loss_fn(logits, to_target(lab, softmax)))
                loss_n += 1
                _accumulate(counts, logits, lab, softmax)
    model.train()
    dice: List[Optional[float]] = []
    for inter, p, r in counts:
        dice.append(1.0 if p + r == 0 else 2.0 * inter / (p + r))
    return loss_sum / max(loss_n, 1), dice


def _accumulate(counts: np.ndarray, logits: Any, lab: Any, softmax: bool) -> None:
    if softmax:
        idx = logits.argmax(1)
        pred = [(idx == c + 1) for c in range(lab.shape[1])]
    else:
        pred = [(logits[:, c] > 0) for c in range(lab.shape[1])]
    for c in range(lab.shape[1]):
        ref = lab[:, c] > 0
        counts[c, 0] += int((pred[c] & ref).sum())
        counts[c, 1] += int(pred[c].sum())
        counts[c, 2] += int(ref.sum())


def _make_batch(cases: Sequence[PreparedCase], items: Sequence[Any], cfg: TrainConfig, spatial_dims: int,
                rng: np.random.Generator, lr_perm: Sequence[int], pad_values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    aug = cfg.augment
    for item in items:
        if spatial_dims == 2:
            ci, z = item
            img, lab = cases[ci].image[:, z], cases[ci].labels[:, z]
            if cfg.patch_size is not None:
                size = cfg.patch_size[-2:]
                hi = [max(0, n - s) for n, s in zip(img.shape[-2:], size)]
                start = [0, int(rng.integers(0, hi[0] + 1)), int(rng.integers(0, hi[1] + 1))]
                img = crop_patch(img[:, None], start, [1] + list(size), pad_values)[:, 0]
                lab = crop_patch(lab[:, None], start, [1] + list(size), 0)[:, 0]
        else:
            ci, start = item
            img = crop_patch(cases[ci].image, start, cfg.patch_size, pad_values)
            lab = crop_patch(cases[ci].labels, start, cfg.patch_size, 0)
        img, lab = augment(img, lab, rng, aug["flips"], float(aug["intensity_shift"]), float(aug["intensity_scale"]),
                           lr_perm, spatial_dims)
        xs.append(img)
        ys.append(lab)
    return np.stack(xs), np.stack(ys)


def train(config: Union[TrainConfig, Mapping[str, Any], str, Path], data_dir: Union[str, Path],
          out_dir: Union[str, Path], device: str = "auto", resume: bool = False,
          on_event: Optional[EventCallback] = None, cancel: Any = None, progress_bar: Optional[bool] = None
          ) -> TrainResult:
    """Train a model on a dataset folder (see the module docstring). ``config`` is a :class:`TrainConfig`,
    a mapping or a path to a YAML/JSON file. ``device``: ``auto``, ``cpu`` or ``cuda``; ``cancel``: an
    object with ``is_set()`` (``threading.Event``) or a callable returning True to stop; ``progress_bar``:
    a tqdm bar (default: when stderr is a terminal)."""
    import torch

    if isinstance(config, (str, Path)):
        cfg = TrainConfig.from_file(config)
    elif isinstance(config, TrainConfig):
        cfg = TrainConfig.from_dict(config.to_dict())
    else:
        cfg = TrainConfig.from_dict(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path = out_dir / "last.pt"
    dev = resolve_device(device if device != "auto" else cfg.device)

    state: Optional[Dict[str, Any]] = None
    if resume:
        if not last_path.is_file():
            raise InputError(out_dir, "last.pt", "a checkpoint to resume from (train without --resume first)",
                             got="missing")
        state = read_checkpoint(last_path)
        saved = TrainConfig.from_dict(state["config"], source=str(last_path))
        diff = [k for k, v in cfg.to_dict().items() if k not in ("epochs", "device", "num_threads")
                and v != saved.to_dict()[k]]
        if diff:
            raise InputError(last_path, "config", f"the same config as the run being resumed (differs in {diff})",
                             got="a different config")
        cfg.early_stopping = saved.early_stopping
    (out_dir / CANCEL_FILE).unlink(missing_ok=True)
    if not resume:  # a new run starts a new event stream (a resumed one appends)
        (out_dir / "events.jsonl").unlink(missing_ok=True)

    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    writer = ProgressWriter(out_dir / "events.jsonl", on_event,
                            elapsed_offset_s=float(state.get("elapsed_s", 0.0)) if state else 0.0)
    try:
        with _CancelWatch(out_dir, cancel) as watch:
            return _run(cfg, Path(data_dir), out_dir, dev, state, writer, watch, progress_bar)
    except TrainingOutOfMemory as exc:
        writer.emit("error", message=str(exc))
        raise
    finally:
        writer.close()
        if cfg.num_threads:
            torch.set_num_threads(old_threads)


def _run(cfg: TrainConfig, data_dir: Path, out_dir: Path, dev: Any, state: Optional[Dict[str, Any]],
         writer: ProgressWriter, watch: _CancelWatch, progress_bar: Optional[bool]) -> TrainResult:
    import torch

    from .losses import build_loss

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    pre = cfg.preprocessor()
    raw, class_names = load_dataset(data_dir, state["class_names"] if state else cfg.structures, writer.emit)
    names = [r[0] for r in raw]
    if state:
        train_names, val_names = state["split"]["train"], state["split"]["val"]
        missing = [n for n in train_names + val_names if n not in names]
        if missing:
            raise InputError(data_dir, "cases", "the cases the run being resumed used", got=f"missing {missing}")
    else:
        train_names, val_names = split_cases(names, cfg.val_fraction, cfg.seed, cfg.val_cases,
                                             train_cases=cfg.train_cases)
    by_name = {r[0]: r for r in raw}
    prepared = {n: prepare_case(n, by_name[n][1].array, by_name[n][2], pre, cfg.seed)
                for n in train_names + val_names}
    del raw, by_name
    train_cases = [prepared[n] for n in train_names]
    val_cases = [prepared[n] for n in val_names]
    prom = prominence(train_cases, class_names)

    model, spec = build_network(cfg, pre.channels, len(class_names))
    spatial_dims = spec["spatial_dims"]
    if spatial_dims == 3 and (cfg.patch_size is None or len(cfg.patch_size) != 3):
        raise InputError("config", "patch_size", f"[slices, rows, columns] for the 3D model {cfg.model}",
                         got=cfg.patch_size)
    softmax = spec["final_activation"] == "softmax"
    model.to(dev)
    try:
        loss_fn = build_loss(cfg.loss, **cfg.loss_kwargs)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError("config", "loss/loss_kwargs", f"a known loss with valid arguments ({exc})", got=cfg.loss) from exc
    loss_act = getattr(loss_fn, "activation", None)
    if loss_act is not None and loss_act != spec["final_activation"]:
        if "activation" not in cfg.loss_kwargs:
            try:
                loss_fn = build_loss(cfg.loss, activation=spec["final_activation"], **cfg.loss_kwargs)
            except (InputError, TypeError, ValueError):
                loss_fn = None
        if loss_fn is None or getattr(loss_fn, "activation", None) != spec["final_activation"]:
            raise InputError("config", "loss", f"a loss for {spec['final_activation']} outputs (the model "
                             f"{cfg.model} ends in a {spec['final_activation']})", got=f"{cfg.loss} ({loss_act})")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler["step_size"], cfg.scheduler["gamma"])
                 if cfg.scheduler["name"] == "step" else None)
    use_amp = bool(cfg.amp and dev.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=True) if use_amp else None
    stopper = EarlyStopping(**cfg.early_stopping)
    history: List[Dict[str, Any]] = []
    first_epoch = 1
    if state:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        stopper.load_state_dict(state["stopper"])
        history = list(state.get("history", []))
        first_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["rng"]["torch"])
    pad_values = pre.pad_values()
    lr_perm = lr_swap_permutation(class_names)
    divisor = size_divisor(model, spatial_dims)
    n_samples = cfg.samples_per_epoch or (sum(c.n_slices for c in train_cases) if spatial_dims == 2
                                          else max(cfg.batch_size, 4 * len(train_cases)))

    def payload(epoch: int, kind: str) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "kind": kind,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.to_dict(), "model": spec, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler else None, "rng": _rng_states(), "epoch": epoch,
            "class_names": list(class_names), "preprocess": pre.to_dict(),
            "split": {"train": list(train_names), "val": list(val_names)}, "prominence": dict(prom),
            "thresholds": {n: 0.5 for n in class_names}, "thresholds_source": "default 0.5",
            "history": list(history), "stopper": stopper.state_dict(),
            "best": {"epoch": stopper.best_epoch, "score": stopper.best_score, "metric": stopper.metric},
            "stop_reason": None, "elapsed_s": writer.elapsed_s, "versions": library_versions(),
            "device": str(dev),
        }

    stop_reason = state.get("stop_reason") if state else None
    writer.emit("start", epochs=cfg.epochs, first_epoch=first_epoch, device=str(dev), amp=use_amp, model=cfg.model,
                loss=cfg.loss, train_cases=train_names, val_cases=val_names, class_names=class_names,
                prominence=prom, samples_per_epoch=n_samples, resumed=bool(state))
    if state is None:
        save_checkpoint(last_path, payload(0, "last"))
        write_text(out_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    if state is not None and (stop_reason == "early_stopping" or first_epoch > cfg.epochs):
        stop_reason = stop_reason or "epochs"
        writer.emit("done", best_epoch=stopper.best_epoch, best_score=stopper.best_score, epochs_run=first_epoch - 1,
                    reason=stop_reason)
        return TrainResult(out_dir, last_path, best_path, first_epoch - 1, stopper.best_epoch, stopper.best_score,
                           stop_reason, history, class_names, prom, writer.elapsed_s)

    bar = None
    show_bar = sys.stderr.isatty() if progress_bar is None else progress_bar
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, initial=first_epoch - 1, desc="training", unit="epoch", file=sys.stderr)
    run_t0 = time.monotonic()
    epoch = first_epoch - 1
    stop_reason = "epochs"
    try:
        for epoch in range(first_epoch, cfg.epochs + 1):
            t0 = time.monotonic()
            seed = _epoch_seed(cfg.seed, epoch)
            torch.manual_seed(seed)
            rng = np.random.default_rng(seed)
            if spatial_dims == 2:
                items = sample_slices(train_cases, n_samples, rng, cfg.foreground_fraction)
            else:
                items = sample_patches(train_cases, n_samples, rng, cfg.patch_size, cfg.foreground_fraction)
            model.train()
            losses = []
            for b in range(0, len(items), cfg.batch_size):
                why = watch.requested()
                if why:
                    raise CancelledError(why)
                xb, yb = _make_batch(train_cases, items[b:b + cfg.batch_size], cfg, spatial_dims, rng, lr_perm, pad_values)
                x = torch.from_numpy(xb).to(dev)
                y = to_target(torch.from_numpy(yb).to(dev), softmax)
                if spatial_dims == 2:
                    x, sizes = pad_to_multiple(x, divisor, pad_values, dims=2)
                    y, _ = pad_to_multiple(y, divisor, 0.0, dims=2)
                    if softmax:
                        y[:, 0][..., sizes[0]:, :] = 1.0
                        y[:, 0][..., :, sizes[1]:] = 1.0
                try:
                    losses.append(_train_step(model, loss_fn, optimizer, scaler, x, y, use_amp, dev))
                except Exception as exc:  # noqa: BLE001
                    if _is_oom(exc):
                        raise TrainingOutOfMemory(
                            f"{dev} ran out of memory with batch size {cfg.batch_size} (input {tuple(x.shape[1:])}); "
                            f"lower batch_size (e.g. --set batch_size={max(1, cfg.batch_size // 2)}), the patch or "
                            f"resize size, or the model width, or train with --device cpu") from None
                    raise
            val_loss, dice = _validate(model, loss_fn, val_cases, spec, cfg, pad_values, dev, use_amp)
            if scheduler is not None:
                scheduler.step()
            dice_mean = float(np.mean([d for d in dice if d is not None])) if dice else None
            is_best, stop, running = stopper.update(epoch, val_loss, dice_mean)
            epoch_s = time.monotonic() - t0
            done_here = epoch - first_epoch + 1
            record = {"epoch": epoch, "epochs": cfg.epochs, "train_loss": float(np.mean(losses)) if losses else None,
                      "val_loss": val_loss, "val_loss_mean": running,
                      "val_dice": {n: d for n, d in zip(class_names, dice)}, "val_dice_mean": dice_mean,
                      "lr": optimizer.param_groups[0]["lr"], "is_best": is_best, "best_epoch": stopper.best_epoch,
                      "epoch_s": epoch_s,
                      "eta_s": eta_seconds(done_here, cfg.epochs - first_epoch + 1, time.monotonic() - run_t0)}
            history.append({k: v for k, v in record.items() if k not in ("eta_s",)})
            if stop:
                stop_reason = "early_stopping"
            if is_best:
                save_checkpoint(best_path, payload(epoch, "best"))
            save_checkpoint(last_path, payload(epoch, "last"))
            writer.emit("epoch", **record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}", dice=f"{dice_mean:.3f}")
            if stop:
                break
    except CancelledError as exc:
        done = int(read_checkpoint(last_path)["epoch"])
        writer.emit("stop", reason="cancelled", epoch=done, message=str(exc))
        raise CancelledError(f"{exc}: training stopped; {last_path} holds epoch {done} "
                             f"(continue with --resume)") from None
    finally:
        if bar is not None:
            bar.close()
    writer.emit("stop", reason=stop_reason, epoch=epoch)
    writer.emit("done", best_epoch=stopper.best_epoch, best_score=stopper.best_score, epochs_run=epoch,
                reason=stop_reason)
    # Record the final stop reason in last.pt so that --resume knows the run is finished.
    final = read_checkpoint(last_path)
    final["stop_reason"] = stop_reason
    save_checkpoint(last_path, final)
    return TrainResult(out_dir, last_path, best_path, epoch, stopper.best_epoch, stopper.best_score, stop_reason,
                       history, class_names, prom, writer.elapsed_s)
