"""The threshold-sensitivity study of paper 000 (Bice et al. 2021), end to end, on the engine.

:func:`run_study` does, into one output folder:

1. **data**: a phantom dataset (``data/``, :func:`AutoSegSensitivity.phantom.make_phantom_dataset` layout)
   unless ``StudyConfig.data_dir`` names an existing dataset folder;
2. **split**: the cases into training, validation and test (:func:`AutoSegSensitivity.held_out.split_roles`:
   sorted names permuted with the study seed; ``test_fraction`` of them test, ``val_fraction`` validation,
   the rest training; ``study.json`` and the report name the cases of each role). As paper 000 ("Optimal
   thresholds were found ... using the validation data, and the errors were evaluated using the test
   dataset"): models learn from the training cases, early stopping and the threshold choice use the
   validation cases, and every reported loss is measured on the test cases;
3. **training**: per training loss (default BCE, and BCE + lambda * 2D Dice with lambda 0.5, paper Eq. 5),
   either one binary 2D U-Net per structure (``per_structure``, the default, as the paper: "10 individual
   models were trained"; ``models/<loss>/<structure>/``) or one *multi-label* model with one sigmoid output
   per structure (``models/<loss>/``); same seed and same case split for all; ``study.json`` and the report
   say which mode ran;
4. **prediction**: probability maps of the validation and test cases
   (``predictions/<loss>/<case>/prob_<structure>.nrrd`` with ``prediction.json`` per case and
   ``shard-0-of-1.json``, the layout ``autosegsens predict --data`` writes and ``autosegsens tune --prob-dir``
   reads), through the dataset predictor (:func:`AutoSegSensitivity.predict_shards.predict_shard`, every
   model of the loss in one pass; a bad case is reported and skipped);
5. **sweep**: per loss, structure and role (validation, test), thresholds 0..1 by 0.01 with pooled and
   per-case Dice, MSD, HD, HD95 (``sweeps/<loss>/<structure>/<role>/sweep.csv``, ``sweep_per_case.csv``,
   ``summary.json``, ``sweep.png``; the test folder also holds ``counts_per_case.csv``, the voxel counts
   behind pooled Dice, for the bootstrap confidence intervals of the report);
6. **prominence** of the training set per structure (paper Eq. 4, from the checkpoint) and the Pearson
   correlation across structures with the Dice threshold chosen on validation and with the test optimum
   (``correlation.csv``, ``prominence.png``);
7. **volume bias** on the test cases at the threshold chosen on validation and at 0.5 (``volume_bias.csv``);
8. ``summary.csv`` (one row per loss and structure), ``study.json`` (settings, data, models, versions, dates)
   and ``report.html`` (:mod:`AutoSegSensitivity.html_report`).

Ctrl-C (or SIGTERM during training) stops cleanly: what is complete stays on disk, ``study.json`` says
``status: cancelled`` with what was kept, a partial report is written when at least one sweep finished, and
:class:`~AutoSegSensitivity.errors.CancelledError` is raised with that description.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import __version__
from .atomic import write_text
from .errors import CancelledError, InputError
from .held_out import ROLES, counts_table, split_roles

__all__ = ["PROB_PREFIX", "write_role_sweep", "held_out_volume_bias", "LossSpec", "StudyConfig", "StudyResult",
           "DEFAULT_STRUCTURES", "run_study", "volume_bias"]

PathLike = Union[str, Path]

VOLUME_BIAS_COLUMNS = ["loss", "structure", "at", "cases", "threshold", "volume_ref_ml", "volume_pred_ml",
                       "volume_diff_ml", "relative_volume_diff"]
CORRELATION_COLUMNS = ["loss", "thresholds_from", "n_structures", "pearson_r", "p_value"]
PROB_PREFIX = "prob_"
"""Probability maps are ``<case>/prob_<Structure>.nrrd``, as ``autosegsens predict`` writes them."""

DEFAULT_STRUCTURES = ("Brain", "Parotid_L", "SpinalCord", "Lens_L")
"""Large, medium, thin and tiny: prominences over more than two orders of magnitude."""


@dataclass
class LossSpec:
    """A training loss of the study: ``key`` (folder name), ``loss`` (``losses.build_loss`` name),
    ``loss_kwargs`` and a display ``label``."""

    key: str
    loss: str
    loss_kwargs: Dict[str, Any] = field(default_factory=dict)
    label: str = ""


def default_losses(lam: float = 0.5) -> List[LossSpec]:
    """BCE, and BCE + lambda * 2D Dice (paper Eq. 5: ``(1 - lambda) BCE + lambda (1 - 2D Dice)``)."""
    return [LossSpec("bce", "bce", {}, "BCE"),
            LossSpec("bce_dice2d", "bce_dice2d", {"lam": float(lam)}, f"BCE + 2D Dice (lambda {lam:g})")]


@dataclass
class StudyConfig:
    """Settings of a study. Sizes in voxels; the phantom grid ``phantom_shape`` is (z, y, x).

    The defaults are the CPU demo: 12 phantom cases (6 training, 2 validation, 4 test: ``val_fraction``
    0.2 and ``test_fraction`` 0.3 of them, see :func:`~AutoSegSensitivity.held_out.split_roles`), 4
    structures, one binary model per structure and loss
    (``per_structure``; ``False``: one multi-label model per loss), a narrow 2D U-Net (paper 000's Table A1
    at ``base_features`` 8) on the full 128 x 128 slices (no resize: the lenses are 2 x 5 pixels there and
    vanish at 64 x 64), Adam at ``lr`` 3e-3 halved every 10 epochs (at 1e-2 the BCE + Dice SpinalCord model
    stayed all background), 20 epochs of 64 slices (80 % foreground-biased), about 5 minutes on 2
    otherwise idle CPU cores with ``num_threads`` 2. Early stopping keeps the model with the lowest running
    mean of the last ``early_stopping_window`` = 10 validation losses, as the paper.
    ``dropout`` is 0 (Table A1: 0.2): at width 8, dropout before BatchNorm shifts the statistics between
    training and evaluation so much that the validation Dice of the Brain jumped between 0.9 and 0 from
    one epoch to the next."""

    structures: List[str] = field(default_factory=lambda: list(DEFAULT_STRUCTURES))
    cases: int = 12
    seed: int = 0
    data_dir: Optional[str] = None
    phantom_shape: Optional[List[int]] = None
    lam: float = 0.5
    losses: Optional[List[Dict[str, Any]]] = None
    per_structure: bool = True
    model: str = "unet2d"
    base_features: int = 8
    dropout: float = 0.0
    resize: Optional[List[int]] = None
    epochs: int = 20
    batch_size: int = 8
    samples_per_epoch: Optional[int] = 64
    foreground_fraction: Optional[float] = 0.8
    lr: float = 3e-3
    scheduler: Dict[str, Any] = field(default_factory=lambda: {"name": "step", "step_size": 10, "gamma": 0.5})
    intensity: Any = "NLF1"
    val_fraction: float = 0.2
    test_fraction: float = 0.3
    early_stopping_window: int = 10
    thresholds: str = "0:1:0.01"
    deltas: List[float] = field(default_factory=lambda: [0.02, 0.05, 0.1])
    device: str = "auto"
    num_threads: Optional[int] = 2
    sweep_device: str = "auto"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "study config") -> "StudyConfig":
        known = {f.name for f in fields(cls)}
        for k in data:
            if k not in known:
                raise InputError(source, str(k), f"a known study setting (one of {sorted(known)})", got="unknown key")
        cfg = cls(**copy.deepcopy(dict(data)))
        cfg.validate(source)
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        return copy.deepcopy(asdict(self))

    def model_kwargs(self) -> Dict[str, Any]:
        """Arguments of ``models.build_model`` for the study's networks."""
        return {"base_features": self.base_features, "dropout": float(self.dropout)}

    def loss_specs(self) -> List[LossSpec]:
        if self.losses is None:
            return default_losses(self.lam)
        return [LossSpec(**d) for d in self.losses]

    def validate(self, source: str = "study config") -> None:
        """Check ranges; an :class:`InputError` names the setting."""
        from .sweep import parse_thresholds

        if not isinstance(self.structures, list) or not self.structures or len(set(self.structures)) != len(
                self.structures):
            raise InputError(source, "structures", "a non-empty list of distinct structure names", got=self.structures)
        if not isinstance(self.cases, int) or self.cases < 3:
            raise InputError(source, "cases", "an integer >= 3 (training, validation and test cases)", got=self.cases)
        for key in ("val_fraction", "test_fraction"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 < float(v) < 1.0):
                raise InputError(source, key, "a fraction of the cases in (0, 1)", got=v)
        if self.data_dir is None:  # the phantom: the split must leave a training case
            split_roles([str(i) for i in range(self.cases)], self.val_fraction, self.test_fraction, 0, source)
        for key in ("epochs", "batch_size", "base_features", "early_stopping_window"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InputError(source, key, "a positive integer", got=v)
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or isinstance(
                self.num_threads, bool) or self.num_threads < 1):
            raise InputError(source, "num_threads", "a positive integer or null", got=self.num_threads)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= float(self.dropout) < 1.0):
            raise InputError(source, "dropout", "a dropout probability in [0, 1)", got=self.dropout)
        if not isinstance(self.per_structure, bool):
            raise InputError(source, "per_structure", "true or false", got=self.per_structure)
        if not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(source, "seed", "a non-negative integer", got=self.seed)
        if not (isinstance(self.lam, (int, float)) and 0.0 <= float(self.lam) <= 1.0):
            raise InputError(source, "lam", "lambda in [0, 1]", got=self.lam)
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise InputError(source, "data_dir", "an existing dataset folder", got=self.data_dir)
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise InputError(source, "device", "auto, cpu or cuda", got=self.device)
        parse_thresholds(self.thresholds)
        specs = self.loss_specs()
        if not specs or len({s.key for s in specs}) != len(specs):
            raise InputError(source, "losses", "at least one loss, with distinct keys", got=self.losses)


@dataclass
class StudyResult:
    """Where a finished study is: the folder, the report, and the headline numbers per loss and structure
    (``rows`` as in ``summary.csv``: thresholds chosen on validation, values on test) and the correlation
    rows of ``correlation.csv`` as ``correlation[loss][thresholds_from]`` (``validation``: prominence against
    the Dice threshold chosen on validation; ``test``: against the test optimum, in hindsight)."""

    out_dir: Path
    report: Path
    rows: List[Dict[str, Any]]
    correlation: Dict[str, Dict[str, Any]]
    elapsed_s: float


def volume_bias(probs: Sequence[np.ndarray], refs: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                threshold: float) -> Dict[str, float]:
    """Predicted (``prob >= threshold``) minus reference volume summed over cases, in ml, and relative to the
    reference volume (signed: positive is over-segmentation). ``spacings`` in mm, any axis order."""
    from .sweep import apply_threshold

    ref_ml = pred_ml = 0.0
    for p, r, s in zip(probs, refs, spacings):
        voxel_ml = float(np.prod(np.asarray(s, dtype=float))) / 1000.0
        pred_ml += int(np.count_nonzero(apply_threshold(p, threshold))) * voxel_ml
        ref_ml += int(np.count_nonzero(r)) * voxel_ml
    diff = pred_ml - ref_ml
    rel = diff / ref_ml if ref_ml > 0 else (0.0 if diff == 0 else math.inf)
    return {"threshold": float(threshold), "volume_ref_ml": ref_ml, "volume_pred_ml": pred_ml,
            "volume_diff_ml": diff, "relative_volume_diff": rel}


def write_role_sweep(folder: PathLike, res: Any, role: str, cases: Sequence[Tuple[str, np.ndarray, np.ndarray]],
                     thresholds: np.ndarray, deltas: Sequence[float] = (0.02, 0.05, 0.1),
                     extra: Optional[Mapping[str, Any]] = None, title: str = "", figure: bool = True) -> Path:
    """Write one sweep of one role into ``folder`` (``sweeps/<loss>/<structure>/<role>/``): ``sweep.csv``,
    ``sweep_per_case.csv``, ``summary.json`` (with ``role`` and ``extra``), ``sweep.png`` (when ``figure``),
    and for the test role ``counts_per_case.csv`` from ``cases`` (``(name, probability map, reference mask)``, the cases of
    ``res`` that have a reference), the voxel counts the report bootstraps. Returns ``folder``."""
    from . import report as figs
    from .html_report import COUNTS_CSV

    folder = Path(folder)
    figs.write_csv(res.to_table(), folder / "sweep.csv")
    figs.write_csv(res.per_case_table(), folder / "sweep_per_case.csv")
    summ = res.summary([float(d) for d in deltas])
    summ.update({"role": role, **dict(extra or {})})
    figs.write_json(summ, folder / "summary.json")
    if figure:
        figs.plot_sweep_metrics(res, folder / "sweep.png", title=title or f"{res.structure} ({role} cases)")
    if role == "test":
        figs.write_csv(counts_table(list(cases), thresholds), folder / COUNTS_CSV)
    return folder


def held_out_volume_bias(loss: str, structure: str, t_chosen: float, probs: Sequence[np.ndarray],
                     refs: Sequence[np.ndarray], spacings: Sequence[Sequence[float]]) -> List[Dict[str, Any]]:
    """The two ``volume_bias.csv`` rows of one loss and structure: :func:`volume_bias` of the test cases at the
    threshold chosen on validation and at 0.5 (``spacings`` in mm)."""
    from .html_report import CHOSEN

    return [{"loss": loss, "structure": structure, "at": kind, "cases": "test",
             **volume_bias(probs, refs, spacings, t)} for kind, t in ((CHOSEN, t_chosen), ("0.5", 0.5))]


def _versions() -> Dict[str, str]:
    out = {"AutoSegSensitivity": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "scipy", "SimpleITK", "monai", "matplotlib"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", getattr(m, "Version", lambda: "?")()
                                   if mod == "SimpleITK" else "?"))
        except Exception:  # noqa: BLE001 - optional libraries
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _bar(total: int, desc: str, show: bool, unit: str = "it"):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


def make_phantom_data(root: Path, cases: int, seed: int, shape: Optional[Sequence[int]] = None,
                      progress: bool = False) -> List[Path]:
    """The phantom dataset of the study, one case at a time (same cases as
    :func:`~AutoSegSensitivity.phantom.make_phantom_dataset` with the same seed), with a progress bar."""
    from .io import box_to_roi, write_case
    from .phantom import case_name, head_box, make_phantom

    bar = _bar(cases, "phantom cases", progress, "case")
    folders = []
    try:
        for n in range(cases):
            kw = {"shape": tuple(shape)} if shape else {}
            image, seg = make_phantom(seed=(int(seed), n), **kw)
            roi = box_to_roi(head_box(image), image, name="Head")
            folders.append(write_case(root / case_name(n), image, seg, roi))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return folders


def run_study(config: Union[StudyConfig, Mapping[str, Any]], out_dir: PathLike, progress: Optional[bool] = None,
              log: Optional[Callable[[str], None]] = None) -> StudyResult:
    """Run the whole study into ``out_dir`` (created; the caller decides about overwriting). ``progress``:
    tqdm bars on stderr (default: when stderr is a terminal). ``log(message)`` receives one line per step."""
    import torch

    from . import report as figs
    from .html_report import STUDY_JSON, VOLUME_BIAS_CSV, load_study, summary_rows, write_report
    from .inference import load_checkpoint
    from .io import load_case, read_volume, scan_dataset
    from .predict_shards import predict_shard
    from .sweep import SWEEP_METRICS, correlate_prominence, parse_thresholds, sweep_thresholds
    from .training import TrainConfig, read_checkpoint, resolve_device, train

    cfg = config if isinstance(config, StudyConfig) else StudyConfig.from_dict(config)
    cfg.validate()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    dev = resolve_device(cfg.device)
    specs = cfg.loss_specs()
    old_threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    meta: Dict[str, Any] = {
        "title": "Threshold sensitivity study (Bice et al. 2021, in miniature)",
        "description": (("One binary 2D U-Net per structure" if cfg.per_structure else
                         "One multi-label 2D U-Net (one sigmoid output per structure)")
                        + " trained with each loss on the same training cases; thresholds chosen on the validation "
                        "cases; every loss, Dice and volume measured on held-out test cases at that threshold "
                        "and at 0.5; prominence of the training set against the chosen threshold."),
        "mode": "per_structure" if cfg.per_structure else "multi_label",
        "created": _now(), "status": "running", "status_detail": "", "device": str(dev),
        "settings": cfg.to_dict(), "versions": _versions(), "structures": list(cfg.structures),
        "losses": [{"key": s.key, "label": s.label or s.key, "loss": s.loss, "loss_kwargs": s.loss_kwargs,
                    "model": cfg.model, "model_kwargs": cfg.model_kwargs(),
                    "multi_label": not cfg.per_structure, "per_structure": cfg.per_structure} for s in specs],
        "prominence": {}, "data": {}, "problems": [],
    }
    kept: List[str] = []

    def save_meta() -> None:
        write_text(out / STUDY_JSON, json.dumps(meta, indent=2, default=str) + "\n")

    try:
        # 1. data
        if cfg.data_dir:
            data_dir = Path(cfg.data_dir)
            meta["data"] = {"source": "dataset folder", "folder": str(data_dir)}
        else:
            data_dir = out / "data"
            say(f"[1/5] phantom dataset: {cfg.cases} cases -> {data_dir}")
            make_phantom_data(data_dir, cfg.cases, cfg.seed, cfg.phantom_shape, show)
            meta["data"] = {"source": "synthetic head-and-neck phantom (AutoSegSensitivity.phantom)",
                            "folder": "data", "cases": cfg.cases, "phantom seed": cfg.seed,
                            "phantom shape (z, y, x)": list(cfg.phantom_shape) if cfg.phantom_shape else "default"}
            kept.append(f"the phantom dataset in {data_dir}")
        scan = scan_dataset(data_dir)
        for name, reason in scan.problems:
            meta["problems"].append({"case": name, "reason": reason})
        roles = split_roles([c.name for c in scan.cases], cfg.val_fraction, cfg.test_fraction, cfg.seed,
                            source=str(data_dir))
        meta["data"].update({f"{r} cases": roles[r] for r in ROLES})
        meta["data"]["split"] = (f"case names sorted and permuted with seed {cfg.seed}; {len(roles['test'])} "
                                 f"test (test_fraction {cfg.test_fraction:g}), {len(roles['validation'])} "
                                 f"validation (val_fraction {cfg.val_fraction:g}), the rest training")
        save_meta()
        by_name = {c.name: c for c in scan.cases}

        def holding(role: str, struct: Optional[str]) -> List[str]:
            wanted = [struct] if struct else list(cfg.structures)
            return [c for c in roles[role] if all(s in by_name[c].structures for s in wanted)]

        # 2. training on the training cases, early stopping on the validation cases
        jobs: List[Tuple[LossSpec, Optional[str]]] = [
            (spec, s) for spec in specs for s in (cfg.structures if cfg.per_structure else [None])]
        checkpoints: Dict[Tuple[str, Optional[str]], Path] = {}
        for i, (spec, struct) in enumerate(jobs):
            what = f" for {struct}" if struct else ""
            say(f"[2/5] training {i + 1}/{len(jobs)}: {cfg.model} with {spec.label or spec.key}{what}")
            tcfg = TrainConfig.from_dict({
                "name": f"study-{spec.key}" + (f"-{struct}" if struct else ""),
                "description": f"study model, loss {spec.label or spec.key}" + (f", {struct} only" if struct else ""),
                "model": cfg.model, "model_kwargs": cfg.model_kwargs(),
                "loss": spec.loss, "loss_kwargs": dict(spec.loss_kwargs),
                "structures": [struct] if struct else list(cfg.structures),
                "intensity": cfg.intensity, "resize": cfg.resize, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
                "samples_per_epoch": cfg.samples_per_epoch, "foreground_fraction": cfg.foreground_fraction,
                "lr": cfg.lr, "scheduler": dict(cfg.scheduler), "seed": cfg.seed,
                "train_cases": holding("training", struct), "val_cases": holding("validation", struct),
                "device": str(dev.type),
                "early_stopping": {"rule": "running_mean", "window": cfg.early_stopping_window},
            }, source="study")
            mdir = out / "models" / spec.key / (struct or "")
            label = f"{spec.key} {struct}" if struct else spec.key
            try:
                res = train(tcfg, data_dir, mdir, device=str(dev), progress_bar=show)
            except CancelledError:
                if (mdir / "last.pt").is_file():
                    epoch = int(read_checkpoint(mdir / "last.pt")["epoch"])
                    kept.append(f"the partly trained {label} model in {mdir} (last.pt, epoch {epoch} of "
                                f"{cfg.epochs}; 'autosegsens train --resume' continues it)")
                raise
            ckpt = res.best_path if res.best_path.is_file() else res.last_path
            checkpoints[(spec.key, struct)] = ckpt
            entry = next(e for e in meta["losses"] if e["key"] == spec.key)
            info = {"checkpoint": str(ckpt.relative_to(out)) if ckpt.is_relative_to(out) else str(ckpt),
                    "epochs_run": res.epochs_run, "best_epoch": res.best_epoch,
                    "stop_reason": res.stop_reason, "train_seconds": round(res.elapsed_s, 1),
                    "train_config": tcfg.to_dict()}
            if struct is None:
                entry.update(info)
            else:
                models = entry.setdefault("models", {})
                models[struct] = info
                # one line per field for the report's model table
                entry["checkpoint"] = str(Path(info["checkpoint"]).parent.parent / "<structure>" / ckpt.name)
                entry["epochs_run"] = "; ".join(f"{k} {v['epochs_run']}" for k, v in models.items())
                entry["best_epoch"] = "; ".join(f"{k} {v['best_epoch']}" for k, v in models.items())
                entry["train_seconds"] = round(sum(v["train_seconds"] for v in models.values()), 1)
            kept.append(f"the {label} model in {mdir}")
            save_meta()

        # 3. prediction of the validation and test cases
        loaded = {k: load_checkpoint(p, device=str(dev)) for k, p in checkpoints.items()}
        for (key, struct), lm in loaded.items():
            used = lm.info.get("split") or {}
            if not set(used.get("train", [])) <= set(roles["training"]) or \
                    not set(used.get("val", [])) <= set(roles["validation"]):
                meta["problems"].append({"case": "-", "reason": f"model {key} {struct or ''} used {used} instead "
                                         "of the study's training and validation cases"})
        prom: Dict[str, float] = {}
        for (key, struct), lm in loaded.items():  # per structure: from its own model (same training cases)
            if key == specs[0].key:
                prom.update({s: float(lm.prominence[s]) for s in lm.prominence if s in cfg.structures})
        meta["prominence"] = {s: prom[s] for s in cfg.structures if s in prom}
        meta["prominence_definition"] = ("paper 000 Eq. 4: true voxels / all voxels over the training masks, "
                                         "in the network's input space")
        save_meta()
        eval_cases = roles["validation"] + roles["test"]
        refs: Dict[str, Dict[str, np.ndarray]] = {}
        spacings: Dict[str, Tuple[float, float, float]] = {}
        for c in eval_cases:
            image, seg = load_case(by_name[c])
            if not seg.geometry.same_grid(image):
                seg = seg.resample_like(image)
            refs[c] = {s: seg.mask(s) for s in cfg.structures if s in seg.names}
            spacings[c] = tuple(float(v) for v in image.spacing_zyx)
        probs: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {}
        for spec in specs:
            n_models = len(cfg.structures) if cfg.per_structure else 1
            say(f"[3/5] predicting {len(roles['validation'])} validation and {len(roles['test'])} test cases with "
                f"the {spec.key} model" + ("s (one per structure)" if n_models > 1 else ""))
            pdir = out / "predictions" / spec.key
            probs[spec.key] = {}
            models = [lm for (key, _), lm in loaded.items() if key == spec.key]
            try:  # one pass over the cases with every model of this loss (one marker per case)
                batch = predict_shard(models, data_dir, pdir, cases=eval_cases, device=str(dev), progress=show,
                                      redo=True).batch
            except (KeyboardInterrupt, CancelledError):
                kept.append(f"the {spec.key} probability maps finished so far in {pdir} (listed in "
                            f"{pdir / 'shard-0-of-1.json'})")
                raise
            for f in batch.failed:
                meta["problems"].append({"case": f.name, "reason": f"prediction ({spec.key}): {f.reason}"})
            for c, paths in batch.done.items():
                probs[spec.key][c] = {s: read_volume(p).array for s, p in paths.items()}
            kept.append(f"the {spec.key} probability maps in {pdir}")
        save_meta()

        # 4. sweeps (validation: the threshold choice; test: the reported numbers), volume bias, correlation
        th = parse_thresholds(cfg.thresholds)
        bias_rows: List[Dict[str, Any]] = []
        corr_rows: List[Dict[str, Any]] = []
        bar = _bar(len(specs) * len(cfg.structures) * 2, "threshold sweeps", show, "sweep")
        say(f"[4/5] threshold sweeps ({th.size} thresholds, Dice/NSD/MSD/HD/HD95) per loss and structure, on the "
            "validation and on the test cases")
        try:
            for spec in specs:
                points: Dict[str, Tuple[List[float], List[float], List[str]]] = {r: ([], [], []) for r in ROLES[1:]}
                for s in cfg.structures:
                    sweeps: Dict[str, Any] = {}
                    for role in ROLES[1:]:
                        cases = [c for c in roles[role] if c in probs[spec.key] and s in probs[spec.key][c]]
                        if not cases:
                            meta["problems"].append({"case": "-", "reason": f"{s} ({spec.key}): no predicted "
                                                     f"{role} case"})
                            continue
                        p_list = [probs[spec.key][c][s] for c in cases]
                        r_list = [refs[c].get(s) for c in cases]
                        sp_list = [spacings[c] for c in cases]
                        res = sweep_thresholds(p_list, r_list, sp_list, thresholds=th, case_names=cases,
                                               structure=s, device=cfg.sweep_device, metrics=SWEEP_METRICS)
                        sweeps[role] = res
                        used = [i for i, r in enumerate(r_list) if r is not None]
                        model = checkpoints.get((spec.key, s), checkpoints.get((spec.key, None)))
                        write_role_sweep(out / "sweeps" / spec.key / s / role, res, role,
                                         [(cases[i], p_list[i], r_list[i]) for i in used], th, cfg.deltas,
                                         {"loss": spec.key, "model": str(model)},
                                         f"{s}: {spec.label or spec.key} ({role} cases)")
                        if role == "test" and "validation" in sweeps:
                            bias_rows += held_out_volume_bias(
                                spec.key, s, sweeps["validation"].optimum("dice")[0], [p_list[i] for i in used],
                                [r_list[i] for i in used], [sp_list[i] for i in used])
                        if s in meta["prominence"]:
                            xs, ys, names = points[role]
                            xs.append(meta["prominence"][s])
                            ys.append(res.optimum("dice")[0])
                            names.append(s)
                        if bar is not None:
                            bar.update(1)
                for role, (xs, ys, names) in points.items():
                    r = p = None
                    if len(xs) >= 2:
                        r, p = correlate_prominence(xs, ys)
                        if math.isfinite(r) and role == "validation":
                            figs.plot_prominence(xs, ys, out / "sweeps" / spec.key / "prominence.png", labels=names)
                    corr_rows.append({"loss": spec.key, "thresholds_from": role, "n_structures": len(xs),
                                      "pearson_r": r, "p_value": p})
                kept.append(f"the {spec.key} sweeps in {out / 'sweeps' / spec.key}")
        finally:
            if bar is not None:
                bar.close()
        figs.write_csv(bias_rows, out / VOLUME_BIAS_CSV, columns=VOLUME_BIAS_COLUMNS)
        figs.write_csv(corr_rows, out / "correlation.csv", columns=CORRELATION_COLUMNS)

        # 5. summary and report
        say("[5/5] summary tables and report")
        meta["status"] = "complete"
        meta["finished"] = _now()
        meta["duration_s"] = round(time.monotonic() - t0, 1)
        save_meta()
        study = load_study(out)
        rows = summary_rows(study, [float(d) for d in cfg.deltas])
        figs.write_csv(rows, out / "summary.csv")
        report = write_report(out, out / "report.html")
        corr: Dict[str, Dict[str, Any]] = {}
        for r in corr_rows:
            corr.setdefault(r["loss"], {})[r["thresholds_from"]] = r
        return StudyResult(out, report, rows, corr, time.monotonic() - t0)
    except (KeyboardInterrupt, CancelledError) as exc:
        meta["status"] = "cancelled"
        meta["finished"] = _now()
        meta["duration_s"] = round(time.monotonic() - t0, 1)
        what = "; ".join(kept) if kept else "nothing complete"
        meta["status_detail"] = f"stopped by the user ({exc or 'Ctrl-C'}); kept: {what}"
        save_meta()
        extra = ""
        try:
            study = load_study(out)
            if any(study.sweeps.values()):
                write_report(out, out / "report.html")
                extra = f"; partial report {out / 'report.html'}"
        except Exception:  # noqa: BLE001 - the cancel message matters more than a partial page
            pass
        raise CancelledError(f"study stopped; kept: {what}{extra} (study.json says what ran)") from None
    finally:
        if cfg.num_threads:
            torch.set_num_threads(old_threads)
