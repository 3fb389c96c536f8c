"""The dataset predictor: sharded, resumable prediction of every case of a dataset folder.

One function, :func:`predict_shard`, serves ``autosegsens predict --data [--shard I/N]`` (one task of a
cluster job array), the study (:func:`AutoSegSensitivity.study.run_study`, one model or one model per
structure) and any script.

Shard ``I`` of ``N`` (``0 <= I < N``) takes the case folders sorted by name at positions ``I, I + N,
I + 2N, ...`` (round-robin): the shards are disjoint and together hold every case, whatever the machine.
Each case writes ``OUT/<case>/prob_<Structure>.<format>`` (atomically, one file at a time) and, last, a
marker ``OUT/<case>/prediction.json`` naming the files, the model and the input image: the per-case
completion marker. A case whose marker lists exactly the files this run would write, all present, made by
the same model (the sha256 of its weights, :func:`model_sha256`) at the same thresholds from the same input
image (its resolved path, size and mtime_ns, :func:`input_identity`: a stat, no read), is complete and
skipped, so a re-queued array task resumes where it stopped; a case interrupted before its marker is
predicted again, and so is a case made by other weights (a checkpoint retrained into the same path), at
other thresholds, from another image (another dataset with the same case names, a re-converted CT), or
whose marker predates the weights' sha256 or the input's record: each such case is named with every reason
that applies (``notify``) and listed under ``redone`` in the shard json. A redone case first loses the
files its old marker listed that this run does not write (an old segmentation, maps of another format;
never a file the marker did not list).
Failed cases (unreadable, bad input, errors) do not stop the shard; they are listed in the result and in
``OUT/shard-I-of-N.json``. Ctrl-C (KeyboardInterrupt, also what SIGTERM becomes in the command line) or a
:class:`~AutoSegSensitivity.errors.CancelledError` stops the shard: the shard json is written first, listing
the finished cases and those not finished, then the same exception is raised again, its message saying
what was kept and how to resume.

:func:`unfinished_cases` / :func:`check_finished` are the rule ``autosegsens tune`` uses to refuse a
prediction folder this predictor has not finished, or whose cases were made by different models
(:func:`models_by_case`: e.g. a rerun with a retrained checkpoint that was stopped half-way).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .atomic import write_text
from .batch import BatchFailure, BatchResult, run_batch
from .errors import InputError

MARKER = "prediction.json"
SEGMENTATION = "segmentation.seg.nrrd"
SHARD_GLOB = "shard-*-of-*.json"
PathLike = Union[str, Path]


def parse_shard(text: str, source: str = "--shard") -> Tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N`` (e.g. ``$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(source, None, "I/N with 0 <= I < N (e.g. 0/4)", got=text)
    return int(m.group(1)), int(m.group(2))


def shard_names(names: Sequence[str], index: int, count: int) -> List[str]:
    """Shard ``index`` of ``count`` of ``names``: sorted by name, then every ``count``-th from ``index``."""
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise InputError("shard", None, "0 <= index < count", got=f"{index}/{count}")
    return sorted(names)[index::count]


def safe_name(name: str) -> str:
    """A structure name made safe for a file name (characters other than letters, digits, ``._-`` -> ``_``):
    the rule ``tune`` reads ``prob_<name>`` files by (:func:`AutoSegSensitivity.mapnames.map_stem`)."""
    from .mapnames import map_stem

    return map_stem(name)


def output_names(class_names: Sequence[str], fmt: str = "nrrd", segmentation: bool = False) -> List[str]:
    """The files one case's prediction writes (``prob_<Structure>.<fmt>``, then the segmentation if asked)."""
    return [f"prob_{safe_name(n)}.{fmt}" for n in class_names] + ([SEGMENTATION] if segmentation else [])


def model_sha256(model: Any) -> Optional[str]:
    """The identity of what a model's maps depend on, as a sha256 hex digest: every weight and buffer of its
    network (name, dtype, shape, bytes, in name order) plus the architecture, the preprocessing, the class
    names and the configuration stored with it (patch size, sliding-window overlap, ...). Two checkpoints
    with other weights (e.g. a run retrained into the same path) differ; a checkpoint rewritten with only
    new tuned thresholds does not. ``None`` for an object that is not a loaded model. Computed from the
    weights in memory (what prediction will use), once per run: about 2 s per GB of weights on one CPU core."""
    import torch

    net = getattr(model, "model", None)
    if net is None or not hasattr(net, "state_dict"):
        return None
    h = hashlib.sha256()
    pre = getattr(model, "preprocessor", None)
    cfg = getattr(model, "config", None)
    meta = {"spec": getattr(model, "spec", None), "class_names": list(getattr(model, "class_names", [])),
            "preprocess": pre.to_dict() if hasattr(pre, "to_dict") else None,
            "config": cfg.to_dict() if hasattr(cfg, "to_dict") else None}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode("utf-8"))
    state = getattr(net, "module", net).state_dict()
    for key in sorted(state):
        t = state[key].detach()
        h.update(f"\n{key}|{t.dtype}|{tuple(t.shape)}|".encode("utf-8"))
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def run_settings(model: Any, thresholds: Any) -> Dict[str, Any]:
    """What a case's outputs depend on besides its image, in the form the marker stores: the model's
    identity ``model_sha256`` (:func:`model_sha256`; a list for several models) and the thresholds of the
    segmentation (``None``, one number, or ``{structure: t}``). A case is redone when these differ."""
    if isinstance(thresholds, Mapping):
        thresholds = {str(k): float(v) for k, v in sorted(thresholds.items())}
    elif thresholds is not None:
        thresholds = float(thresholds)
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    digests = [model_sha256(m) for m in models]
    return {"model_sha256": digests if len(digests) != 1 else digests[0], "thresholds": thresholds}


def provenance(model: Any) -> Dict[str, Any]:
    """What the marker records about the model besides its identity (not compared on resume): the checkpoint
    path, its epoch and its creation time (the checkpoint's ``created``, UTC); lists for several models."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    rows = [(str(getattr(m, "path", "") or ""), getattr(m, "epoch", None),
             (getattr(m, "info", None) or {}).get("created")) for m in models]
    if len(rows) == 1:
        return {"model": rows[0][0], "epoch": rows[0][1], "checkpoint_created": rows[0][2]}
    return {"model": [r[0] for r in rows], "epoch": [r[1] for r in rows], "checkpoint_created": [r[2] for r in rows]}


def input_identity(case: Any) -> Dict[str, Any]:
    """What the marker records about a case's input image, cheaply and without reading it: the resolved
    path, size (bytes) and modification time (ns) of its image file; for a DICOM case the resolved series
    folder, its number of files, their total size and the sha256 of the listing (name, size, mtime_ns of
    every file under it). A case whose identity differs from its marker's (another dataset with the same
    case names, a re-converted CT) is redone (``"input"``). A file that cannot be stat'ed gives
    ``{"path": ..., "error": reason}`` (never equal to a marker's, so the case is redone and its read fails
    with one clear line)."""
    if getattr(case, "kind", None) == "dicom" and getattr(case, "dicom_path", None) is not None:
        folder = Path(case.dicom_path)
        try:
            rows = []
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    st = f.stat()
                    rows.append((str(f.relative_to(folder)), st.st_size, st.st_mtime_ns))
            digest = hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()
            return {"path": str(folder.resolve()), "files": len(rows), "size": sum(r[1] for r in rows),
                    "listing_sha256": digest}
        except OSError as exc:
            return {"path": str(folder), "error": exc.strerror or str(exc)}
    path = Path(getattr(case, "image_path", None) or getattr(case, "path", ""))
    try:
        st = path.stat()
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError as exc:
        return {"path": str(path), "error": exc.strerror or str(exc)}


# Why a case that has a marker is predicted again (:func:`case_reasons`), as the terminal says it; several
# reasons of one case are said together (:func:`redo_text`), in this order.
REDO_REASONS = {
    "model": "redone, model changed (other weights than those that made its maps)",
    "input": "redone, input image changed (other path, size or modification time than the one its maps came from)",
    "thresholds": "redone, thresholds changed",
    "temperatures": "redone, calibration temperatures changed",
    "files": "redone, other outputs asked (format, structures or segmentation)",
    "missing": "redone, files its prediction.json lists are missing",
    "old": (f"redone, its {MARKER} does not record the model's weights (written by an older version), so "
            "the model that made it is unknown"),
    "input_old": (f"redone, its {MARKER} does not record the input image (written by an older version), so "
                  "the image its maps came from is unknown"),
}


def redo_text(reasons: Union[str, Sequence[str]]) -> str:
    """The terminal's words for one or several reason keys of :data:`REDO_REASONS` (``"redone, a; b"``)."""
    keys = [reasons] if isinstance(reasons, str) else [k for k in REDO_REASONS if k in reasons]
    if len(keys) == 1:
        return REDO_REASONS[keys[0]]
    return "redone, " + "; ".join(REDO_REASONS[k][len("redone, "):] for k in keys)


def _read_marker(case_dir: PathLike) -> Optional[Dict[str, Any]]:
    """The case's marker as a dict, ``None`` when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads((Path(case_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def case_reasons(case_dir: PathLike, files: Sequence[str], settings: Optional[Mapping[str, Any]] = None,
                 source: Optional[Mapping[str, Any]] = None) -> List[str]:
    """``[]`` when ``case_dir`` is complete for this run, else every reason why not, in the order of
    :data:`REDO_REASONS`: ``["unfinished"]`` (no readable marker), else among ``"model"`` (another model
    made it), ``"input"`` (another input image, ``source`` being :func:`input_identity`), ``"thresholds"``,
    ``"temperatures"``, ``"files"`` (the marker lists other files), ``"missing"`` (a listed file is gone),
    ``"old"`` (the marker has no ``model_sha256``) and ``"input_old"`` (no ``input``); those about the model,
    thresholds and calibration only when ``settings`` is given, those about the input only with ``source``."""
    data = _read_marker(case_dir)
    if data is None:
        return ["unfinished"]
    found = set()
    same_files = list(data.get("files", [])) == list(files)
    if not same_files:
        found.add("files")
    if settings is not None:
        wanted = json.loads(json.dumps(dict(settings)))
        if "model_sha256" in wanted and "model_sha256" not in data:
            found.add("old")
        for key in ("thresholds", "temperatures"):
            if key in wanted and data.get(key) != wanted[key]:
                found.add(key)
        if "old" not in found and any(data.get(k) != v for k, v in wanted.items()
                                      if k not in ("thresholds", "temperatures")):
            found.add("model")
    if source is not None:
        if "input" not in data:
            found.add("input_old")
        elif data.get("input") != json.loads(json.dumps(dict(source))):
            found.add("input")
    if same_files and not all((Path(case_dir) / f).is_file() for f in files):
        found.add("missing")
    return [k for k in REDO_REASONS if k in found]


def case_state(case_dir: PathLike, files: Sequence[str], settings: Optional[Mapping[str, Any]] = None,
               source: Optional[Mapping[str, Any]] = None) -> Optional[str]:
    """``None`` when ``case_dir`` is complete for this run (see :func:`case_complete`), else the first
    reason of :func:`case_reasons` (``"unfinished"`` when it has no readable marker)."""
    reasons = case_reasons(case_dir, files, settings, source)
    return reasons[0] if reasons else None


def case_complete(case_dir: PathLike, files: Sequence[str], settings: Optional[Mapping[str, Any]] = None,
                  source: Optional[Mapping[str, Any]] = None) -> bool:
    """True when ``case_dir`` holds a marker listing exactly ``files``, every one of them exists and, when
    ``settings`` is given (:func:`run_settings`), the marker records the same model (the sha256 of its
    weights) and thresholds: a rerun with other thresholds or other weights (even at the same checkpoint
    path and epoch) redoes the case, and so does a marker without the weights' sha256; with ``source``
    (:func:`input_identity`) also the same input image."""
    return not case_reasons(case_dir, files, settings, source)


def redo_lines(redone: Mapping[str, Union[str, Sequence[str]]], shown: int = 10) -> List[str]:
    """One line per set of reasons for the cases predicted again (``{case: reason key or [keys]}``), naming
    the cases (the first ``shown``): e.g. ``case000, case003: redone, model changed (...)``; a case with
    several reasons is named once, with all of them."""
    groups: Dict[Tuple[str, ...], List[str]] = {}
    for name, reasons in redone.items():
        keys = tuple(k for k in REDO_REASONS if k in ([reasons] if isinstance(reasons, str) else reasons))
        groups.setdefault(keys, []).append(name)
    order = list(REDO_REASONS)
    lines = []
    for keys in sorted(groups, key=lambda ks: [order.index(k) for k in ks]):
        names = sorted(groups[keys])
        more = f" ... ({len(names) - shown} more)" if len(names) > shown else ""
        text = redo_text(list(keys))
        lines.append(f"case {', '.join(names[:shown])}{more}: {text}" if len(names) == 1 else
                     f"{len(names)} cases ({', '.join(names[:shown])}{more}): {text}")
    return lines


@dataclass
class ShardResult:
    """What :func:`predict_shard` did: the shard's cases, those already complete, those whose marker did not
    match this run (``redone``: ``{case: first reason key of REDO_REASONS}``; ``reasons``: ``{case: every
    reason key}``) and the batch result of the cases predicted (``batch.done`` / ``batch.failed``).
    ``out_dir``: where the cases lie (to tell, after a Ctrl-C, which cases still hold finished maps)."""

    index: int
    count: int
    assigned: List[str]
    already_complete: List[str] = field(default_factory=list)
    redone: Dict[str, str] = field(default_factory=dict)
    batch: BatchResult = field(default_factory=BatchResult)
    reasons: Dict[str, List[str]] = field(default_factory=dict)
    out_dir: Optional[Path] = None

    def _reasons(self, name: str) -> List[str]:
        return self.reasons.get(name) or [self.redone[name]]

    def previous_kept(self) -> List[str]:
        """The cases to be redone that were not reached (cancelled) and still hold the previous run's
        finished maps (their marker intact, naming the model that made them)."""
        if self.out_dir is None:
            return []
        return [n for n in self.batch.skipped if n in self.redone and marker_complete(self.out_dir / n)]

    @property
    def json_name(self) -> str:
        """The shard json's file name, ``shard-<index>-of-<count>.json``."""
        return f"shard-{self.index}-of-{self.count}.json"

    def summary(self) -> List[str]:
        head = (f"shard {self.index}/{self.count}: {len(self.assigned)} case(s), "
                f"{len(self.already_complete)} already complete"
                + (f", {len(self.redone)} redone (their maps were made by another model, from another image, "
                   "at other thresholds or are incomplete)" if self.redone else ""))
        if self.assigned and not self.batch.total and len(self.already_complete) == len(self.assigned):
            n = len(self.assigned)
            return [head, f"all {n} case{'s' if n != 1 else ''} already finished (skipped); nothing to do"]
        return [head] + self.batch.summary()

    def to_dict(self) -> Dict[str, Any]:
        kept = set(self.previous_kept())
        return {"shard": [self.index, self.count], "assigned": self.assigned,
                "already_complete": self.already_complete,
                "redone": {n: redo_text(self._reasons(n)) for n in sorted(self.redone) if n not in kept},
                "done": list(self.batch.done),
                "failed": [{"case": f.name, "kind": f.kind, "reason": f.reason} for f in self.batch.failed],
                "not_started": [n for n in self.batch.skipped if n not in kept],
                "not_redone_yet": {n: redo_text(self._reasons(n)) for n in sorted(kept)},
                "cancelled": self.batch.cancelled, "elapsed_s": round(self.batch.elapsed_s, 3)}


def _models(model: Any, device: Any) -> List[Any]:
    """``model`` as a list of :class:`~AutoSegSensitivity.inference.LoadedModel` (checkpoint paths loaded on
    ``device``); the structures of the models must not repeat."""
    from .inference import LoadedModel, load_checkpoint

    given = list(model) if isinstance(model, (list, tuple)) else [model]
    if not given:
        raise InputError("predict", "model", "at least one model", got="none")
    models = [m if isinstance(m, LoadedModel) else load_checkpoint(m, device=str(device or "cpu")) for m in given]
    names = [n for m in models for n in m.class_names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError("predict", "model", "models with different structures", got=f"{repeated} more than once")
    return models


def _write_summary(path: Path, result: ShardResult, retries: int = 0) -> None:
    """Write the shard json; with ``retries`` (a shard being cancelled), a second Ctrl-C while it is written
    does not stop it: the write is retried up to that many times."""
    text = json.dumps(result.to_dict(), indent=2)
    for attempt in range(retries + 1):
        try:
            write_text(path, text)
            return
        except KeyboardInterrupt:
            if attempt == retries:
                raise


def kept_message(result: ShardResult, out_dir: PathLike) -> str:
    """One line for a stopped shard: what was kept (finished cases, each with its marker), what was not,
    where the shard json lies and how to resume."""
    finished = len(result.already_complete) + len(result.batch.done)
    kept = result.previous_kept()
    old = (f"{len(kept)} not redone yet (they still hold the previous run's finished maps, which this command "
           "replaces), " if kept else "")
    return (f"shard {result.index}/{result.count}: kept {finished} finished case(s) of {len(result.assigned)} in "
            f"{out_dir} (each with its {MARKER}); {old}{len(result.batch.skipped) - len(kept)} not finished, "
            f"{len(result.batch.failed)} failed; listed in {Path(out_dir) / result.json_name}; run the same "
            "command again to finish the rest (finished cases are skipped)")


def predict_shard(model: Any, data_dir: PathLike, out_dir: PathLike, index: int = 0, count: int = 1,
                  fmt: str = "nrrd", thresholds: Any = None, batch_size: Optional[int] = None,
                  channels_last: Optional[bool] = None, progress: Optional[bool] = None,
                  on_failure: Optional[Callable[[BatchFailure], None]] = None, redo: bool = False,
                  cases: Optional[Sequence[str]] = None, device: Any = None,
                  notify: Optional[Callable[[str], None]] = None,
                  temperatures: Optional[Mapping[str, float]] = None) -> ShardResult:
    """Predict shard ``index`` of ``count`` of the dataset folder ``data_dir`` into ``out_dir`` (see the
    module docstring): ``out_dir/<case>/prob_<Structure>.<fmt>`` (float32 probabilities in [0, 1] on the
    case's CT grid), then ``out_dir/<case>/prediction.json``; last ``out_dir/shard-<index>-of-<count>.json``.

    ``model``: a :class:`~AutoSegSensitivity.inference.LoadedModel` or a checkpoint path, or a list of them
    (e.g. one binary model per structure: each case is read once and gets the maps of every model, one
    marker for all). ``cases``: only these case names (then sharded; a name not in the dataset is a failed
    case). ``thresholds``: a number or ``{structure: t}`` to also write ``segmentation.seg.nrrd``
    (``None``: maps only). ``batch_size`` / ``channels_last`` / ``device`` go to
    :func:`~AutoSegSensitivity.inference.predict_volume`. A case is skipped when its marker lists the same
    files, model weights (:func:`model_sha256`, computed once per call) and thresholds, unless ``redo``; a
    case with a marker that does not match is predicted again and ``notify`` (e.g. ``print``) gets one line
    per reason naming those cases (:func:`redo_lines`) before prediction starts. ``temperatures``
    (``{structure: T}``): the maps are written calibrated (:func:`~AutoSegSensitivity.calibration.
    calibrated_volumes`; the segmentation still thresholds the uncalibrated maps, and a case made with other
    temperatures is redone).
    ``result.batch.done[case]`` is ``{structure: map path}``.
    Ctrl-C / :class:`~AutoSegSensitivity.errors.CancelledError`: the shard json is written (the finished
    cases, the others as not started), then the same exception is raised again with :func:`kept_message`."""
    from .inference import predict_volume, threshold_maps
    from .io import load_case, scan_dataset, write_segmentation, write_volume

    models = _models(model, device)
    scan = scan_dataset(data_dir)
    by_name = {c.name: c for c in scan.cases}
    problems = dict(scan.problems)
    names = list(by_name) + [n for n in problems if n not in by_name]
    if cases is not None:
        names = list(dict.fromkeys(str(c) for c in cases))
        for n in names:
            if n not in by_name and n not in problems:
                problems[n] = f"{data_dir}: case: expected a case folder {n!r}, got none"
    assigned = shard_names(names, index, count)
    out_dir = Path(out_dir)
    class_names = [n for m in models for n in m.class_names]
    files = output_names(class_names, fmt, thresholds is not None)
    settings = run_settings(models, thresholds)
    # None when uncalibrated: markers written before calibration existed (no such key) stay valid
    settings["temperatures"] = ({str(k): float(v) for k, v in sorted(temperatures.items())}
                                if temperatures is not None else None)
    options = {"batch_size": batch_size, "channels_last": channels_last, "device": str(device) if device else None}
    marker_extra = {**provenance(models), "options": options}
    result = ShardResult(index, count, assigned, out_dir=out_dir)
    todo = []
    sources: Dict[str, Dict[str, Any]] = {}
    for name in assigned:
        if name in problems:
            continue
        sources[name] = input_identity(by_name[name])  # stat only: measured before the image is read
        reasons = ["redo"] if redo else case_reasons(out_dir / name, files, settings, sources[name])
        if not reasons:
            result.already_complete.append(name)
            continue
        reasons = [r for r in reasons if r in REDO_REASONS]
        if reasons:
            result.redone[name], result.reasons[name] = reasons[0], reasons
        todo.append((name, by_name[name]))
    if notify is not None:
        for line in redo_lines(result.reasons):
            notify(line)

    def job(case: Any) -> Dict[str, Path]:
        image, _ = load_case(case)
        probs: Dict[str, Any] = {}
        for m in models:
            probs.update(predict_volume(m, image, device=device, batch_size=batch_size, channels_last=channels_last))
        case_dir = out_dir / case.name
        _remove_stale(case_dir, files)  # first, while the old marker still lists them (a kill here: redone)
        (case_dir / MARKER).unlink(missing_ok=True)
        shown = probs
        if temperatures is not None:
            from .calibration import calibrated_volumes

            shown = calibrated_volumes(probs, temperatures)
        written = {s: write_volume(shown[s], case_dir / fname) for s, fname in zip(class_names, files)}
        if thresholds is not None:
            write_segmentation(threshold_maps(probs, thresholds), case_dir / SEGMENTATION)
        write_text(case_dir / MARKER, json.dumps({"case": case.name, "files": files, **settings,
                                                  "input": sources[case.name], **marker_extra}, indent=2))
        return written

    result.batch = run_batch(todo, job, desc=f"shard {index}/{count}", progress=progress,
                             failures=[(n, problems[n]) for n in assigned if n in problems], on_failure=on_failure)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_summary(out_dir / result.json_name, result, retries=2 if result.batch.cancelled else 0)
    if result.batch.cancelled and result.batch.interrupt is not None:
        exc = result.batch.interrupt
        said = str(exc)
        exc.args = ((f"{said}; " if said else "") + kept_message(result, out_dir),)
        raise exc
    return result


def _remove_stale(case_dir: Path, files: Sequence[str]) -> List[str]:
    """Delete the files the case's old marker lists that this run will not write (e.g. ``prob_*.nrrd`` when
    it writes ``.nii.gz``, the segmentation of a run with thresholds): only plain names the marker lists,
    inside ``case_dir``, never any other file. Returns the names removed."""
    data = _read_marker(case_dir)
    listed = data.get("files") if data is not None else None
    removed = []
    for f in listed if isinstance(listed, list) else []:
        if (isinstance(f, str) and f and f not in files and Path(f).name == f and f not in (".", "..", MARKER)
                and (case_dir / f).is_file()):
            (case_dir / f).unlink()
            removed.append(f)
    return removed


def marker_complete(case_dir: PathLike) -> bool:
    """True when ``case_dir/prediction.json`` is a marker (a JSON object whose ``files`` is a non-empty list of
    names) and every file it lists exists: the case's prediction finished, whatever model wrote it."""
    try:
        data = json.loads((Path(case_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
        return False
    return all((Path(case_dir) / f).is_file() for f in files)


def written_by_predictor(prob_dir: PathLike) -> bool:
    """True when ``prob_dir`` was written by :func:`predict_shard`: a shard json (``shard-I-of-N.json``) lies
    in it or one of its case folders holds a ``prediction.json``. Folders of maps made by other tools (no
    marker anywhere) and nnU-Net output (``<case>.npz``) are not."""
    prob_dir = Path(prob_dir)
    if not prob_dir.is_dir():
        return False
    if any(p.is_file() for p in prob_dir.glob(SHARD_GLOB)):
        return True
    return any((p / MARKER).exists() for p in prob_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _shard_failures(prob_dir: Path) -> Tuple[set, Dict[str, str]]:
    """The cases the shard jsons of ``prob_dir`` assign, and the reason of each they list as failed."""
    assigned, failed = set(), {}
    for shard in sorted(prob_dir.glob(SHARD_GLOB)):
        try:
            data = json.loads(shard.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        assigned.update(str(n) for n in data.get("assigned", []) if isinstance(n, str))
        for f in data.get("failed", []) if isinstance(data.get("failed"), list) else []:
            if isinstance(f, dict) and isinstance(f.get("case"), str):
                failed[f["case"]] = str(f.get("reason", "")) or "unknown reason"
    return assigned, failed


def unfinished_reasons(prob_dir: PathLike, names: Optional[Iterable[str]] = None) -> Dict[str, str]:
    """``{case: why}`` for the cases of :func:`unfinished_cases`, as one phrase each: ``"prediction failed:
    <reason of the shard json>"`` (a rerun fails again until the input is fixed), ``"not predicted (no case
    folder)"``, ``"prediction.json: expected a finished prediction, got none (interrupted, or stopped while
    being redone)"`` or ``"prediction.json: lists files that are missing"``."""
    prob_dir = Path(prob_dir)
    if not written_by_predictor(prob_dir):
        return {}
    candidates = {p.name for p in prob_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assigned, failed = _shard_failures(prob_dir)
    candidates.update(assigned)
    if names is not None:
        candidates &= {str(n) for n in names}
    out = {}
    for n in sorted(candidates):
        case_dir = prob_dir / n
        if marker_complete(case_dir):
            continue
        if n in failed:
            out[n] = f"prediction failed: {failed[n]}"
        elif not case_dir.is_dir():
            out[n] = "not predicted (no case folder)"
        elif _read_marker(case_dir) is None:
            out[n] = f"{MARKER}: expected a finished prediction, got none (interrupted, or stopped while being redone)"
        else:
            out[n] = f"{MARKER}: lists files that are missing"
    return out


def unfinished_cases(prob_dir: PathLike, names: Optional[Iterable[str]] = None) -> List[str]:
    """The cases of a prediction folder that this predictor did not finish, sorted; ``[]`` for a folder it
    did not write (:func:`written_by_predictor`). Unfinished: a case folder without a complete marker
    (:func:`marker_complete`), and a case a shard json assigns (done, failed, not started) whose folder has
    none. ``names``: only these cases matter (e.g. the reference cases ``tune`` would use). Why each is
    unfinished: :func:`unfinished_reasons`."""
    return sorted(unfinished_reasons(prob_dir, names))


def _model_key(data: Mapping[str, Any]) -> str:
    key = data.get("model_sha256")
    return json.dumps(key) if key is not None else f"{data.get('model')} epoch {data.get('epoch')}"


def _finished_markers(prob_dir: Path, names: Optional[Iterable[str]]) -> List[Tuple[Path, Dict[str, Any]]]:
    """``(case folder, marker)`` of the finished cases of ``prob_dir`` (among ``names``), sorted by name."""
    rows = []
    if not prob_dir.is_dir():
        return rows
    wanted = None if names is None else {str(n) for n in names}
    for case in sorted(p for p in prob_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (wanted is not None and case.name not in wanted) or not marker_complete(case):
            continue
        data = _read_marker(case)
        if data is not None:
            rows.append((case, data))
    return rows


def models_by_case(prob_dir: PathLike, names: Optional[Iterable[str]] = None) -> Dict[str, List[str]]:
    """The finished cases of a prediction folder (:func:`marker_complete`; among ``names``) grouped by the
    model their marker records: ``{model: [cases]}``, the model being its ``model_sha256`` (and, for a
    marker written before the sha256 was recorded, ``"<checkpoint path> epoch <E>"``). One key: one model
    made every finished case."""
    groups: Dict[str, List[str]] = {}
    for case, data in _finished_markers(Path(prob_dir), names):
        groups.setdefault(_model_key(data), []).append(case.name)
    return groups


def describe_model(data: Mapping[str, Any]) -> str:
    """A marker's model in a few words: checkpoint path, epoch and the first 12 hex digits of its sha256
    (lists joined with ' + ' for several models)."""
    def one(path: Any, epoch: Any, sha: Any) -> str:
        return (f"{path or '(unknown checkpoint)'} epoch {epoch if epoch is not None else '?'}, sha256 "
                f"{str(sha)[:12] if sha else '(not recorded)'}")

    model, epoch, sha = data.get("model"), data.get("epoch"), data.get("model_sha256")
    if isinstance(model, list):
        n = len(model)
        epochs = epoch if isinstance(epoch, list) and len(epoch) == n else [None] * n
        shas = sha if isinstance(sha, list) and len(sha) == n else [None] * n
        return " + ".join(one(m, e, h) for m, e, h in zip(model, epochs, shas))
    return one(model, epoch, sha)


def model_identity(prob_dir: PathLike, names: Optional[Iterable[str]] = None) -> Optional[Dict[str, Any]]:
    """The model that made the finished cases of a prediction folder this predictor wrote (among ``names``):
    ``{"model_sha256": ..., "checkpoint": path, "epoch": E}`` as its markers record it (what ``tune`` stores
    in thresholds.json's ``inputs.model``); ``None`` for a folder it did not write or whose cases were made
    by more than one model."""
    if not written_by_predictor(prob_dir):
        return None
    rows = _finished_markers(Path(prob_dir), names)
    if not rows or len({_model_key(d) for _, d in rows}) != 1:
        return None
    data = rows[0][1]
    return {"model_sha256": data.get("model_sha256"), "checkpoint": data.get("model"), "epoch": data.get("epoch")}


def check_finished(prob_dir: PathLike, names: Optional[Iterable[str]] = None,
                   allow_incomplete: bool = False) -> List[str]:
    """The rule of ``tune`` and ``apply`` for a prediction folder: :func:`unfinished_cases` of ``prob_dir``
    (among ``names``). Returns them when ``allow_incomplete`` (the caller leaves them out and says so, with
    :func:`unfinished_reasons`); otherwise, when there are any, raises one :class:`InputError` naming the
    cases and the fix (a case whose prediction failed is named with its reason: running the same command
    again fails again). Finished cases made by different models (:func:`models_by_case`: a rerun with a
    retrained checkpoint stopped half-way, or shards run with different checkpoints) are refused in any
    case, each model named (checkpoint, epoch, sha256 prefix; the one that wrote the latest marker said):
    thresholds tuned on a mix fit no model."""
    why = unfinished_reasons(prob_dir, names)
    unfinished = sorted(why)
    if unfinished and not allow_incomplete:
        failed = [n for n in unfinished if why[n].startswith("prediction failed")]
        other = [n for n in unfinished if n not in failed]
        parts = []
        if other:
            shown = ", ".join(other[:10]) + (f" ... ({len(other) - 10} more)" if len(other) > 10 else "")
            parts.append(f"{len(other)} unfinished case(s): {shown}; finish them by running the same "
                         "'autosegsens predict --data' command again (finished cases are skipped)")
        if failed:
            shown = "; ".join(f"{n} ({why[n]})" for n in failed[:3]) + (
                f" ... ({len(failed) - 3} more)" if len(failed) > 3 else "")
            parts.append(f"{len(failed)} case(s) whose prediction failed: {shown}; fix their input (the same "
                         "command fails again until then)")
        raise InputError(prob_dir, MARKER, "every case's prediction finished (its prediction.json listing its maps)",
                         got="; ".join(parts) + "; or pass --allow-incomplete to go on without them")
    rows = _finished_markers(Path(prob_dir), names) if written_by_predictor(prob_dir) else []
    groups: Dict[str, List[Tuple[Path, Dict[str, Any]]]] = {}
    for case, data in rows:
        groups.setdefault(_model_key(data), []).append((case, data))
    if len(groups) > 1:
        def newest(g: List[Tuple[Path, Dict[str, Any]]]) -> int:
            return max((c / MARKER).stat().st_mtime_ns for c, _ in g)

        latest = max(groups, key=lambda k: newest(groups[k]))
        parts = sorted(groups.items(), key=lambda kv: len(kv[1]), reverse=True)
        said = "; ".join(
            f"{len(g)} case(s) by {describe_model(g[0][1])}"
            f"{' (wrote the latest prediction.json)' if k == latest else ''}"
            f" ({', '.join(c.name for c, _ in g[:5])}{' ...' if len(g) > 5 else ''})" for k, g in parts)
        raise InputError(prob_dir, MARKER, "every case predicted by the same model",
                         got=f"{len(groups)} models: {said}; run 'autosegsens predict --data' again with the model "
                             "to tune (cases made by another model are redone)")
    return unfinished
