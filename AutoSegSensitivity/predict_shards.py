"""The dataset predictor: sharded, resumable prediction of every case of a dataset folder.

One function, :func:`predict_shard`, serves ``autosegsens predict --data [--shard I/N]`` (one task of a
cluster job array), the study (:func:`AutoSegSensitivity.study.run_study`, one model or one model per
structure) and any script.

Shard ``I`` of ``N`` (``0 <= I < N``) takes the case folders sorted by name at positions ``I, I + N,
I + 2N, ...`` (round-robin): the shards are disjoint and together hold every case, whatever the machine.
Each case writes ``OUT/<case>/prob_<Structure>.<format>`` (atomically, one file at a time) and, last, a
marker ``OUT/<case>/prediction.json`` naming the files and the model: the per-case completion marker. A
case whose marker lists exactly the files this run would write, all present, is complete and skipped, so a
re-queued array task resumes where it stopped; a case interrupted before its marker is predicted again.
Failed cases (unreadable, bad input, errors) do not stop the shard; they are listed in the result and in
``OUT/shard-I-of-N.json``. Ctrl-C (KeyboardInterrupt, also what SIGTERM becomes in the command line) or a
:class:`~AutoSegSensitivity.errors.CancelledError` stops the shard: the shard json is written first, listing
the finished cases and those not finished, then the same exception is raised again, its message saying
what was kept and how to resume.

:func:`unfinished_cases` / :func:`check_finished` are the rule ``autosegsens tune`` uses to refuse a
prediction folder this predictor has not finished.
"""

from __future__ import annotations

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
    the rule ``tune`` reads ``prob_<name>`` files by (:func:`AutoSegSensitivity.tune.map_stem`)."""
    from .tune import map_stem

    return map_stem(name)


def output_names(class_names: Sequence[str], fmt: str = "nrrd", segmentation: bool = False) -> List[str]:
    """The files one case's prediction writes (``prob_<Structure>.<fmt>``, then the segmentation if asked)."""
    return [f"prob_{safe_name(n)}.{fmt}" for n in class_names] + ([SEGMENTATION] if segmentation else [])


def run_settings(model: Any, thresholds: Any) -> Dict[str, Any]:
    """What a case's outputs depend on besides its image: the checkpoint (path and epoch; lists of them for
    several models) and the thresholds of the segmentation (``None``, one number, or ``{structure: t}``),
    in the form the marker stores."""
    if isinstance(thresholds, Mapping):
        thresholds = {str(k): float(v) for k, v in sorted(thresholds.items())}
    elif thresholds is not None:
        thresholds = float(thresholds)
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            return {"model": [str(getattr(m, "path", "")) for m in model],
                    "epoch": [getattr(m, "epoch", None) for m in model], "thresholds": thresholds}
        model = model[0]
    return {"model": str(getattr(model, "path", "")), "epoch": getattr(model, "epoch", None), "thresholds": thresholds}


def case_complete(case_dir: PathLike, files: Sequence[str], settings: Optional[Mapping[str, Any]] = None) -> bool:
    """True when ``case_dir`` holds a marker listing exactly ``files``, every one of them exists and, when
    ``settings`` is given (:func:`run_settings`), the marker records the same model and thresholds: a rerun
    with other thresholds or another checkpoint redoes the case."""
    marker = Path(case_dir) / MARKER
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or list(data.get("files", [])) != list(files):
        return False
    if settings is not None and any(data.get(k) != json.loads(json.dumps(v)) for k, v in settings.items()):
        return False
    return all((Path(case_dir) / f).is_file() for f in files)


@dataclass
class ShardResult:
    """What :func:`predict_shard` did: the shard's cases, those already complete, and the batch result of
    the rest (``batch.done`` / ``batch.failed``)."""

    index: int
    count: int
    assigned: List[str]
    already_complete: List[str] = field(default_factory=list)
    batch: BatchResult = field(default_factory=BatchResult)

    @property
    def json_name(self) -> str:
        """The shard json's file name, ``shard-<index>-of-<count>.json``."""
        return f"shard-{self.index}-of-{self.count}.json"

    def summary(self) -> List[str]:
        head = (f"shard {self.index}/{self.count}: {len(self.assigned)} case(s), "
                f"{len(self.already_complete)} already complete")
        return [head] + self.batch.summary()

    def to_dict(self) -> Dict[str, Any]:
        return {"shard": [self.index, self.count], "assigned": self.assigned,
                "already_complete": self.already_complete, "done": list(self.batch.done),
                "failed": [{"case": f.name, "kind": f.kind, "reason": f.reason} for f in self.batch.failed],
                "not_started": list(self.batch.skipped), "cancelled": self.batch.cancelled,
                "elapsed_s": round(self.batch.elapsed_s, 3)}


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
    return (f"shard {result.index}/{result.count}: kept {finished} finished case(s) of {len(result.assigned)} in "
            f"{out_dir} (each with its {MARKER}); {len(result.batch.skipped)} not finished, "
            f"{len(result.batch.failed)} failed; listed in {Path(out_dir) / result.json_name}; run the same "
            "command again to finish the rest (finished cases are skipped)")


def predict_shard(model: Any, data_dir: PathLike, out_dir: PathLike, index: int = 0, count: int = 1,
                  fmt: str = "nrrd", thresholds: Any = None, batch_size: Optional[int] = None,
                  channels_last: Optional[bool] = None, progress: Optional[bool] = None,
                  on_failure: Optional[Callable[[BatchFailure], None]] = None, redo: bool = False,
                  cases: Optional[Sequence[str]] = None, device: Any = None) -> ShardResult:
    """Predict shard ``index`` of ``count`` of the dataset folder ``data_dir`` into ``out_dir`` (see the
    module docstring): ``out_dir/<case>/prob_<Structure>.<fmt>`` (float32 probabilities in [0, 1] on the
    case's CT grid), then ``out_dir/<case>/prediction.json``; last ``out_dir/shard-<index>-of-<count>.json``.

    ``model``: a :class:`~AutoSegSensitivity.inference.LoadedModel` or a checkpoint path, or a list of them
    (e.g. one binary model per structure: each case is read once and gets the maps of every model, one
    marker for all). ``cases``: only these case names (then sharded; a name not in the dataset is a failed
    case). ``thresholds``: a number or ``{structure: t}`` to also write ``segmentation.seg.nrrd``
    (``None``: maps only). ``batch_size`` / ``channels_last`` / ``device`` go to
    :func:`~AutoSegSensitivity.inference.predict_volume`. A case is skipped when its marker lists the same
    files, model and thresholds, unless ``redo``. ``result.batch.done[case]`` is ``{structure: map path}``.
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
    result = ShardResult(index, count, assigned)
    todo = []
    for name in assigned:
        if name in problems:
            continue
        if not redo and case_complete(out_dir / name, files, settings):
            result.already_complete.append(name)
        else:
            todo.append((name, by_name[name]))

    def job(case: Any) -> Dict[str, Path]:
        image, _ = load_case(case)
        probs: Dict[str, Any] = {}
        for m in models:
            probs.update(predict_volume(m, image, device=device, batch_size=batch_size, channels_last=channels_last))
        case_dir = out_dir / case.name
        (case_dir / MARKER).unlink(missing_ok=True)
        written = {s: write_volume(probs[s], case_dir / fname) for s, fname in zip(class_names, files)}
        if thresholds is not None:
            write_segmentation(threshold_maps(probs, thresholds), case_dir / SEGMENTATION)
        write_text(case_dir / MARKER, json.dumps({"case": case.name, "files": files, **settings}, indent=2))
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


def unfinished_cases(prob_dir: PathLike, names: Optional[Iterable[str]] = None) -> List[str]:
    """The cases of a prediction folder that this predictor did not finish, sorted; ``[]`` for a folder it
    did not write (:func:`written_by_predictor`). Unfinished: a case folder without a complete marker
    (:func:`marker_complete`), and a case a shard json assigns (done, failed, not started) whose folder has
    none. ``names``: only these cases matter (e.g. the reference cases ``tune`` would use)."""
    prob_dir = Path(prob_dir)
    if not written_by_predictor(prob_dir):
        return []
    candidates = {p.name for p in prob_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for shard in prob_dir.glob(SHARD_GLOB):
        try:
            assigned = json.loads(shard.read_text(encoding="utf-8")).get("assigned", [])
        except (OSError, ValueError, AttributeError):
            continue
        candidates.update(str(n) for n in assigned if isinstance(n, str))
    if names is not None:
        candidates &= {str(n) for n in names}
    return sorted(n for n in candidates if not marker_complete(prob_dir / n))


def check_finished(prob_dir: PathLike, names: Optional[Iterable[str]] = None, allow_incomplete: bool = False) -> List[str]:
    """``tune``'s rule for a prediction folder: :func:`unfinished_cases` of ``prob_dir`` (among ``names``).
    Returns them when ``allow_incomplete`` (the caller leaves them out and says so); otherwise, when there
    are any, raises one :class:`InputError` naming the cases and the fix."""
    unfinished = unfinished_cases(prob_dir, names)
    if unfinished and not allow_incomplete:
        shown = ", ".join(unfinished[:10]) + (f" ... ({len(unfinished) - 10} more)" if len(unfinished) > 10 else "")
        raise InputError(prob_dir, MARKER, "every case's prediction finished (its prediction.json listing its maps)",
                         got=f"{len(unfinished)} unfinished case(s): {shown}; finish them by running the same "
                             "'autosegsens predict --data' command again (finished cases are skipped), or pass "
                             "--allow-incomplete to go on without them")
    return unfinished
