"""The training config: everything that defines a run, validated, saved inside every checkpoint.

:class:`TrainConfig` reads YAML/JSON, applies ``--set key=value`` overrides and checks every key; both
training and inference use it (inference rebuilds the preprocessing of a checkpoint from it).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .checkpoint import AMP_DTYPES
from .data import Preprocessor, _pair, resolve_transforms
from .errors import InputError

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
      so a caller can hold test cases out of training); ``seed``; ``device``; ``num_threads`` (CPU threads while
      training, null: torch's default); ``inference_batch_size`` and ``sliding_window_overlap``
      (validation and inference).
    * GPU speed (safe defaults; none changes what is learnt beyond floating-point rounding): ``amp`` (mixed
      precision, CUDA only) with ``amp_dtype`` ``auto`` (bfloat16 where the GPU supports it, else float16
      with a gradient scaler), ``bfloat16`` or ``float16``; ``channels_last`` (2D models, NHWC memory
      layout; default false); ``cudnn_benchmark`` (cuDNN picks the fastest kernels for the input size, not
      bit-reproducible; default false); ``pin_memory`` (page-locked host batches, non-blocking copies; CUDA
      only; default true); ``num_workers`` (DataLoader processes building batches, persistent across
      epochs; default 0: in the training process); ``sync_batchnorm`` (under torchrun on CUDA, BatchNorm
      statistics over the global batch; default true).
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
    amp_dtype: str = "auto"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    pin_memory: bool = True
    num_workers: int = 0
    sync_batchnorm: bool = True
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
        for key in ("amp", "channels_last", "cudnn_benchmark", "pin_memory", "sync_batchnorm"):
            need(isinstance(getattr(self, key), bool), key, "true or false", getattr(self, key))
        need(self.amp_dtype in AMP_DTYPES, "amp_dtype", f"one of {', '.join(AMP_DTYPES)}", self.amp_dtype)
        need(is_int(self.num_workers) and self.num_workers >= 0, "num_workers", "a non-negative integer",
             self.num_workers)
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
