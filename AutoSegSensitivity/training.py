"""Training: data split, the Adam loop with early stopping, atomic checkpoints, resume, events, DDP.

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
* 2D inputs are padded to the network's size divisor and the logits cropped back before the loss, so
  padding pixels never enter it; validation Dice counts ``sigmoid(logit) >= 0.5`` (the sweep's ``p >= t``).
* Batches are built by :class:`EpochBatches` (in the process or in persistent DataLoader workers); each
  sample's crop and augmentation is seeded by ``(seed, epoch, index)``, so the batches do not depend on
  the number of workers or processes.
* CUDA with mixed precision (``torch.autocast`` in bfloat16 where supported, else float16 with a
  ``GradScaler``), optional channels_last, cuDNN benchmark mode and pinned memory (config keys, see
  :class:`~AutoSegSensitivity.train_config.TrainConfig`); CPU otherwise.
* Under ``torchrun`` the run is DistributedDataParallel (:mod:`AutoSegSensitivity.distributed`).
* Events (``progress`` module) go to ``out_dir/events.jsonl`` and to ``on_event``.
* Cancel (SIGINT/SIGTERM, a file ``out_dir/CANCEL``, or the ``cancel`` flag) stops at the next batch; the
  last complete epoch stays in ``last.pt`` and :class:`~AutoSegSensitivity.errors.CancelledError` is raised.
"""

from __future__ import annotations

import copy
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .atomic import fault_point, write_text
# Checkpoint helpers and TrainConfig live in their own modules; their names stay importable from here.
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, amp_dtype, library_versions,  # noqa: F401
                         needs_grad_scaler, plain_state_dict, read_checkpoint, resolve_device,
                         save_checkpoint)
from .distributed import DistContext
from .data import (PreparedCase, augment, crop_patch, lr_swap_permutation, pad_to_multiple, prepare_case,
                   prominence, sample_patches, sample_slices)
from .errors import AutoSegError, CancelledError, InputError
from .progress import EventCallback, ProgressWriter, eta_seconds
from .train_config import TrainConfig

CANCEL_FILE = "CANCEL"

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


def _autocast(device: Any, dtype: Any) -> Any:
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _forward_loss(model: Any, loss_fn: Any, x: Any, y: Any, dtype: Any, device: Any) -> Tuple[Any, Any]:
    """Loss of ``model(x)`` against ``y``. ``x`` may be padded at the end of its spatial axes (to the
    network's size divisor); the logits are cropped back to ``y``'s spatial size before the loss, so padding
    pixels never enter it (paper 000's loss is over the image, not over the padding)."""
    with _autocast(device, dtype):
        logits = model(x)
    logits = logits[(slice(None), slice(None)) + tuple(slice(0, int(s)) for s in y.shape[2:])]
    loss = loss_fn(logits.float(), y)
    return loss, logits


def _train_step(model: Any, loss_fn: Any, optimizer: Any, scaler: Any, x: Any, y: Any, dtype: Any,
                device: Any) -> float:
    """One optimiser step; returns the batch loss."""
    optimizer.zero_grad(set_to_none=True)
    loss, _ = _forward_loss(model, loss_fn, x, y, dtype, device)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def _validate(model: Any, loss_fn: Any, cases: Sequence[PreparedCase], n_classes: int, spec: Dict[str, Any],
              cfg: TrainConfig, pad_values: np.ndarray, device: Any, dtype: Any,
              ctx: Optional[DistContext] = None) -> Tuple[float, List[Optional[float]]]:
    """Validation loss (mean over slices / cases) and pooled Dice per class at probability >= 0.5 (argmax
    for softmax). Under DDP each rank validates its round-robin share of ``cases`` and the sums are added
    across ranks, so every rank returns the same numbers."""
    import torch

    ctx = ctx or DistContext()
    softmax = spec["final_activation"] == "softmax"
    counts = np.zeros((n_classes, 3), dtype=np.float64)
    loss_sum, loss_n = 0.0, 0.0
    was_training = model.training
    model.eval()
    divisor = size_divisor(model, spec["spatial_dims"])
    channels_last = bool(cfg.channels_last and spec["spatial_dims"] == 2)
    step = cfg.inference_batch_size
    with torch.no_grad():
        for case in ctx.round_robin(cases):
            if spec["spatial_dims"] == 2:
                for s in range(0, case.n_slices, step):
                    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.image[:, s:s + step], 1, 0))).to(device)
                    lab = torch.from_numpy(np.ascontiguousarray(np.moveaxis(case.labels[:, s:s + step], 1, 0))).to(device)
                    xp, _ = pad_to_multiple(x, divisor, pad_values, dims=2)
                    if channels_last:
                        xp = xp.contiguous(memory_format=torch.channels_last)
                    loss, logits = _forward_loss(model, loss_fn, xp, to_target(lab, softmax), dtype, device)
                    loss_sum += float(loss) * x.shape[0]
                    loss_n += x.shape[0]
                    _accumulate(counts, logits.float(), lab, softmax)
            else:
                from .inference import sliding_window_logits

                x = torch.from_numpy(case.image[None]).to(device)
                logits = sliding_window_logits(model, x, tuple(cfg.patch_size), cfg.sliding_window_overlap,
                                               cfg.inference_batch_size, pad_values, divisor, dtype)
                lab = torch.from_numpy(case.labels[None]).to(device)
                loss_sum += float(loss_fn(logits, to_target(lab, softmax)))
                loss_n += 1
                _accumulate(counts, logits, lab, softmax)
    model.train(was_training)
    totals = ctx.all_sum(np.concatenate([[loss_sum, loss_n], counts.ravel()]))
    loss_sum, loss_n, counts = totals[0], totals[1], totals[2:].reshape(n_classes, 3)
    dice: List[Optional[float]] = []
    for inter, p, r in counts:
        dice.append(1.0 if p + r == 0 else float(2.0 * inter / (p + r)))
    return float(loss_sum / max(loss_n, 1)), dice


def predicted_masks(logits: Any, n_classes: int, softmax: bool) -> List[Any]:
    """Boolean masks per class from logits (N, C, ...): argmax for softmax models, else
    ``sigmoid(logit) >= 0.5`` -- the same ``p >= t`` rule as the sweep and ``threshold_maps`` at t = 0.5."""
    import torch

    if softmax:
        idx = logits.argmax(1)
        return [(idx == c + 1) for c in range(n_classes)]
    prob = torch.sigmoid(logits.float())
    return [(prob[:, c] >= 0.5) for c in range(n_classes)]


def _accumulate(counts: np.ndarray, logits: Any, lab: Any, softmax: bool) -> None:
    pred = predicted_masks(logits, lab.shape[1], softmax)
    for c in range(lab.shape[1]):
        ref = lab[:, c] > 0
        counts[c, 0] += int((pred[c] & ref).sum())
        counts[c, 1] += int(pred[c].sum())
        counts[c, 2] += int(ref.sum())


def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one training sample (crop and augmentation): a function of ``(seed, epoch, index in
    the epoch)`` only, so a sample is the same whichever process or DataLoader worker builds it."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def _make_batch(cases: Sequence[PreparedCase], items: Sequence[Any], cfg: TrainConfig, spatial_dims: int,
                rngs: Sequence[np.random.Generator], lr_perm: Sequence[int],
                pad_values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, C, ...) float32 and labels (N, K, ...) uint8 of ``items``, sample ``i`` cropped and
    augmented with ``rngs[i]``."""
    xs, ys = [], []
    aug = cfg.augment
    for item, rng in zip(items, rngs):
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


class EpochBatches:
    """This rank's training batches, built in the main process or in DataLoader workers.

    The sample list of an epoch is drawn from ``(seed, epoch)`` (identical on every rank and worker); the
    global batch ``b`` holds samples ``[b * batch_size, (b + 1) * batch_size)`` and this rank takes its
    contiguous share (:meth:`DistContext.share`). A key is ``(epoch, batch index)``; :meth:`keys` lists
    an epoch's keys (a trailing global batch with fewer samples than ranks is dropped under DDP, so that
    every rank steps together)."""

    def __init__(self, cases: Sequence[PreparedCase], cfg: TrainConfig, spatial_dims: int, n_samples: int,
                 lr_perm: Sequence[int], pad_values: np.ndarray, ctx: DistContext) -> None:
        self.cases, self.cfg, self.spatial_dims, self.n_samples = cases, cfg, spatial_dims, int(n_samples)
        self.lr_perm, self.pad_values, self.ctx = list(lr_perm), pad_values, ctx
        self._cache: Tuple[int, List[Any]] = (-1, [])

    def items(self, epoch: int) -> List[Any]:
        """The global sample list of ``epoch`` (cached for the latest epoch)."""
        if self._cache[0] != epoch:
            rng = np.random.default_rng(_epoch_seed(self.cfg.seed, epoch))
            if self.spatial_dims == 2:
                items = sample_slices(self.cases, self.n_samples, rng, self.cfg.foreground_fraction)
            else:
                items = sample_patches(self.cases, self.n_samples, rng, self.cfg.patch_size,
                                       self.cfg.foreground_fraction)
            self._cache = (epoch, items)
        return self._cache[1]

    def keys(self, epoch: int) -> List[Tuple[int, int]]:
        bs = self.cfg.batch_size
        out = []
        for b in range(-(-self.n_samples // bs)):
            if min(bs, self.n_samples - b * bs) >= self.ctx.world_size:
                out.append((epoch, b))
        return out

    def __len__(self) -> int:
        return -(-self.n_samples // self.cfg.batch_size)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[Any, Any]:
        import torch

        epoch, b = key
        bs = self.cfg.batch_size
        index = self.ctx.share(range(b * bs, min(self.n_samples, (b + 1) * bs)))
        items = self.items(epoch)
        xb, yb = _make_batch(self.cases, [items[i] for i in index], self.cfg, self.spatial_dims,
                             [_item_rng(self.cfg.seed, epoch, i) for i in index], self.lr_perm, self.pad_values)
        return torch.from_numpy(xb), torch.from_numpy(yb)


class _EpochKeys:
    """A DataLoader sampler yielding the keys of the current epoch (set in the main process, so persistent
    workers need no restart between epochs)."""

    def __init__(self, batches: EpochBatches) -> None:
        self.batches, self.epoch = batches, 0

    def __iter__(self) -> Any:
        return iter(self.batches.keys(self.epoch))

    def __len__(self) -> int:
        return len(self.batches.keys(self.epoch))


def batch_loader(batches: EpochBatches, num_workers: int, pin_memory: bool) -> Tuple[Any, _EpochKeys]:
    """A DataLoader over :class:`EpochBatches` (one item = one built batch) with ``num_workers`` processes
    (persistent across epochs when > 0) and pinned host memory when asked; returns it and its sampler
    (set ``sampler.epoch`` before iterating)."""
    from torch.utils.data import DataLoader

    sampler = _EpochKeys(batches)
    loader = DataLoader(batches, batch_size=None, sampler=sampler, num_workers=int(num_workers),
                        pin_memory=bool(pin_memory), persistent_workers=num_workers > 0)
    return loader, sampler


def train(config: Union[TrainConfig, Mapping[str, Any], str, Path], data_dir: Union[str, Path],
          out_dir: Union[str, Path], device: str = "auto", resume: bool = False,
          on_event: Optional[EventCallback] = None, cancel: Any = None, progress_bar: Optional[bool] = None
          ) -> TrainResult:
    """Train a model on a dataset folder (see the module docstring). ``config`` is a :class:`TrainConfig`,
    a mapping or a path to a YAML/JSON file. ``device``: ``auto``, ``cpu`` or ``cuda``; ``cancel``: an
    object with ``is_set()`` (``threading.Event``) or a callable returning True to stop; ``progress_bar``:
    a tqdm bar (default: when stderr is a terminal). Under ``torchrun`` (``WORLD_SIZE`` > 1) this is one
    rank of a DDP run (:mod:`AutoSegSensitivity.distributed`): only rank 0 writes files and events and
    calls ``on_event``; every rank returns the same result."""
    import torch

    from .distributed import setup

    if isinstance(config, (str, Path)):
        cfg = TrainConfig.from_file(config)
    elif isinstance(config, TrainConfig):
        cfg = TrainConfig.from_dict(config.to_dict())
    else:
        cfg = TrainConfig.from_dict(config)
    out_dir = Path(out_dir)
    last_path = out_dir / "last.pt"
    ctx, dev = setup(device if device != "auto" else cfg.device)
    together = False  # True when every rank leaves train() at the same point (done, or a shared cancel)
    try:
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
        ctx.barrier()
        state: Optional[Dict[str, Any]] = None
        if resume:
            if not last_path.is_file():
                raise InputError(out_dir, "last.pt", "a checkpoint to resume from (train without --resume first)",
                                 got="missing")
            state = read_checkpoint(last_path)
            saved = TrainConfig.from_dict(state["config"], source=str(last_path))
            diff = [k for k, v in cfg.to_dict().items() if k not in RUNTIME_KEYS and v != saved.to_dict()[k]]
            if diff:
                raise InputError(last_path, "config", f"the same config as the run being resumed (differs in {diff})",
                                 got="a different config")
            cfg.early_stopping = saved.early_stopping
        ctx.barrier()  # every rank has read last.pt before rank 0 rewrites it
        if ctx.is_main:
            (out_dir / CANCEL_FILE).unlink(missing_ok=True)
            if not resume:  # a new run starts a new event stream (a resumed one appends)
                (out_dir / "events.jsonl").unlink(missing_ok=True)

        old_threads = torch.get_num_threads()
        old_bench = torch.backends.cudnn.benchmark
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
        offset = float(state.get("elapsed_s", 0.0)) if state else 0.0
        writer = (ProgressWriter(out_dir / "events.jsonl", on_event, elapsed_offset_s=offset) if ctx.is_main
                  else ProgressWriter(None, None, elapsed_offset_s=offset))
        try:
            with _CancelWatch(out_dir, cancel) as watch:
                result = _run(cfg, Path(data_dir), out_dir, dev, state, writer, watch,
                              progress_bar if ctx.is_main else False, ctx)
                together = True
                return result
        except TrainingOutOfMemory as exc:
            writer.emit("error", message=str(exc))
            raise
        finally:
            writer.close()
            torch.backends.cudnn.benchmark = old_bench
            if cfg.num_threads:
                torch.set_num_threads(old_threads)
    except CancelledError:
        together = True  # decided on every rank (ctx.any)
        raise
    finally:
        # An error on one rank leaves the others inside a collective: a barrier here would hang the job
        # instead of letting this process exit (torchrun then stops the others and reports the error).
        ctx.close(sync=together)


# Config keys that may change between a run and its --resume (where and how fast, not what is learnt).
RUNTIME_KEYS = ("epochs", "device", "num_threads", "num_workers", "pin_memory", "cudnn_benchmark")


def _run(cfg: TrainConfig, data_dir: Path, out_dir: Path, dev: Any, state: Optional[Dict[str, Any]],
         writer: ProgressWriter, watch: _CancelWatch, progress_bar: Optional[bool], ctx: DistContext) -> TrainResult:
    import torch

    from .distributed import wrap_model
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

    net, spec = build_network(cfg, pre.channels, len(class_names))
    spatial_dims = spec["spatial_dims"]
    if spatial_dims == 3 and (cfg.patch_size is None or len(cfg.patch_size) != 3):
        raise InputError("config", "patch_size", f"[slices, rows, columns] for the 3D model {cfg.model}",
                         got=cfg.patch_size)
    if ctx.enabled and cfg.batch_size < ctx.world_size:
        raise InputError("config", "batch_size", f"at least the number of processes ({ctx.world_size}): it is the "
                         "global batch, split across processes", got=cfg.batch_size)
    softmax = spec["final_activation"] == "softmax"
    loss_fn = _build_loss(cfg, spec, build_loss)
    channels_last = bool(cfg.channels_last and spatial_dims == 2)
    if state:
        net.load_state_dict(state["state_dict"])
    net.to(dev)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    model, synced = wrap_model(net, dev, ctx, cfg.sync_batchnorm)
    if ctx.enabled and not synced and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        writer.emit("warning", message="BatchNorm statistics are per process (SyncBatchNorm needs CUDA): the "
                    "run is not equivalent to one process with the same global batch")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, cfg.scheduler["step_size"], cfg.scheduler["gamma"])
                 if cfg.scheduler["name"] == "step" else None)
    dtype = amp_dtype(dev, cfg.amp_dtype) if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=True) if needs_grad_scaler(dtype) else None
    stopper = EarlyStopping(**cfg.early_stopping)
    history: List[Dict[str, Any]] = []
    first_epoch = 1
    if state:
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
    divisor = size_divisor(net, spatial_dims)
    n_samples = cfg.samples_per_epoch or (sum(c.n_slices for c in train_cases) if spatial_dims == 2
                                          else max(cfg.batch_size, 4 * len(train_cases)))
    batches = EpochBatches(train_cases, cfg, spatial_dims, n_samples, lr_swap_permutation(class_names), pad_values, ctx)
    loader, keys = batch_loader(batches, cfg.num_workers, cfg.pin_memory and dev.type == "cuda")
    non_blocking = dev.type == "cuda"

    def payload(epoch: int, kind: str) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "kind": kind,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": cfg.to_dict(), "model": spec, "state_dict": plain_state_dict(model),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
            "scaler": scaler.state_dict() if scaler else None, "rng": _rng_states(), "epoch": epoch,
            "class_names": list(class_names), "preprocess": pre.to_dict(),
            "split": {"train": list(train_names), "val": list(val_names)}, "prominence": dict(prom),
            "thresholds": {n: 0.5 for n in class_names}, "thresholds_source": "default 0.5",
            "history": list(history), "stopper": stopper.state_dict(),
            "best": {"epoch": stopper.best_epoch, "score": stopper.best_score, "metric": stopper.metric},
            "stop_reason": None, "elapsed_s": writer.elapsed_s, "versions": library_versions(),
            "device": str(dev), "world_size": ctx.world_size,
        }

    def save(path: Path, data: Dict[str, Any]) -> None:
        if ctx.is_main:
            save_checkpoint(path, data)

    stop_reason = state.get("stop_reason") if state else None
    writer.emit("start", epochs=cfg.epochs, first_epoch=first_epoch, device=str(dev), amp=dtype is not None,
                amp_dtype=str(dtype).replace("torch.", "") if dtype is not None else None, model=cfg.model,
                loss=cfg.loss, train_cases=train_names, val_cases=val_names, class_names=class_names,
                prominence=prom, samples_per_epoch=n_samples, resumed=bool(state), world_size=ctx.world_size)
    if state is None:
        save(last_path, payload(0, "last"))
        if ctx.is_main:
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
            fault_point("train.epoch")  # test hook (AutoSegSensitivity.atomic.fault_point)
            t0 = time.monotonic()
            torch.manual_seed(_epoch_seed(cfg.seed, epoch) + ctx.rank)  # dropout: own masks per rank
            keys.epoch = epoch
            model.train()
            losses = []
            for xb, yb in loader:
                why = watch.requested()
                if ctx.any(why is not None):
                    raise CancelledError(why or "cancel requested in another process")
                x = xb.to(dev, non_blocking=non_blocking)
                y = to_target(yb.to(dev, non_blocking=non_blocking), softmax)
                if spatial_dims == 2:
                    x, _ = pad_to_multiple(x, divisor, pad_values, dims=2)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                try:
                    losses.append(_train_step(model, loss_fn, optimizer, scaler, x, y, dtype, dev))
                except Exception as exc:  # noqa: BLE001
                    if _is_oom(exc):
                        raise TrainingOutOfMemory(
                            f"{dev} ran out of memory with batch size {cfg.batch_size} (input {tuple(x.shape[1:])}); "
                            f"lower batch_size (e.g. --set batch_size={max(1, cfg.batch_size // 2)}), the patch or "
                            f"resize size, or the model width, or train with --device cpu") from None
                    raise
            val_loss, dice = _validate(net, loss_fn, val_cases, len(class_names), spec, cfg, pad_values, dev, dtype,
                                       ctx)
            if scheduler is not None:
                scheduler.step()
            loss_total = ctx.all_sum([sum(losses), len(losses)])
            train_loss = float(loss_total[0] / loss_total[1]) if loss_total[1] else None
            dice_mean = float(np.mean([d for d in dice if d is not None])) if dice else None
            is_best, stop, running = stopper.update(epoch, val_loss, dice_mean)
            is_best, stop = ctx.broadcast((is_best, stop))  # rank 0 decides
            epoch_s = time.monotonic() - t0
            done_here = epoch - first_epoch + 1
            record = {"epoch": epoch, "epochs": cfg.epochs, "train_loss": train_loss,
                      "val_loss": val_loss, "val_loss_mean": running,
                      "val_dice": {n: d for n, d in zip(class_names, dice)}, "val_dice_mean": dice_mean,
                      "lr": optimizer.param_groups[0]["lr"], "is_best": is_best, "best_epoch": stopper.best_epoch,
                      "epoch_s": epoch_s,
                      "eta_s": eta_seconds(done_here, cfg.epochs - first_epoch + 1, time.monotonic() - run_t0)}
            history.append({k: v for k, v in record.items() if k not in ("eta_s",)})
            if stop:
                stop_reason = "early_stopping"
            if is_best:
                save(best_path, payload(epoch, "best"))
            save(last_path, payload(epoch, "last"))
            writer.emit("epoch", **record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['train_loss']:.4f}", val=f"{val_loss:.4f}", dice=f"{dice_mean:.3f}")
            if stop:
                break
    except CancelledError as exc:
        fault_point("train.cancel")  # test hook: e.g. a second Ctrl-C while cancelling
        ctx.barrier()
        done = int(read_checkpoint(last_path)["epoch"])
        writer.emit("stop", reason="cancelled", epoch=done, message=str(exc))
        err = CancelledError(f"{exc}: training stopped; {last_path} holds epoch {done} "
                             f"(continue with --resume)")
        err.signal = watch.signalled  # type: ignore[attr-defined] - SIGTERM -> exit code 143 in the CLI
        raise err from None
    finally:
        if bar is not None:
            bar.close()
    writer.emit("stop", reason=stop_reason, epoch=epoch)
    writer.emit("done", best_epoch=stopper.best_epoch, best_score=stopper.best_score, epochs_run=epoch,
                reason=stop_reason)
    # Record the final stop reason in last.pt so that --resume knows the run is finished.
    if ctx.is_main:
        final = read_checkpoint(last_path)
        final["stop_reason"] = stop_reason
        save_checkpoint(last_path, final)
    ctx.barrier()
    return TrainResult(out_dir, last_path, best_path, epoch, stopper.best_epoch, stopper.best_score, stop_reason,
                       history, class_names, prom, writer.elapsed_s)


def _build_loss(cfg: TrainConfig, spec: Dict[str, Any], build_loss: Callable[..., Any]) -> Any:
    """The configured loss, for the model's output activation (an InputError names a mismatch)."""
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
    return loss_fn
