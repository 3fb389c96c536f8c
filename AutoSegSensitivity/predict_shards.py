"""Sharded, resumable batch prediction over a dataset folder (one job of a cluster job array).

Shard ``I`` of ``N`` (``0 <= I < N``) takes the case folders sorted by name at positions ``I, I + N,
I + 2N, ...`` (round-robin): the shards are disjoint and together hold every case, whatever the machine.
Each case writes ``OUT/<case>/prob_<Structure>.<format>`` (atomically, one file at a time) and, last, a
marker ``OUT/<case>/prediction.json`` naming the files and the model. A case whose marker lists exactly
the files this run would write, all present, is complete and skipped, so a re-queued array task resumes
where it stopped; a case interrupted before its marker is predicted again. Failed cases (unreadable, bad
input, errors) do not stop the shard; they are listed in the result and in ``OUT/shard-I-of-N.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .atomic import write_text
from .batch import BatchFailure, BatchResult, run_batch
from .errors import InputError

MARKER = "prediction.json"
SEGMENTATION = "segmentation.seg.nrrd"
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
    """What a case's outputs depend on besides its image: the checkpoint (path and epoch) and the thresholds
    of the segmentation (``None``, one number, or ``{structure: t}``), in the form the marker stores."""
    if isinstance(thresholds, Mapping):
        thresholds = {str(k): float(v) for k, v in sorted(thresholds.items())}
    elif thresholds is not None:
        thresholds = float(thresholds)
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


def predict_shard(model: Any, data_dir: PathLike, out_dir: PathLike, index: int = 0, count: int = 1,
                  fmt: str = "nrrd", thresholds: Any = None, batch_size: Optional[int] = None,
                  channels_last: Optional[bool] = None, progress: Optional[bool] = None,
                  on_failure: Optional[Callable[[BatchFailure], None]] = None, redo: bool = False,
                  temperatures: Optional[Mapping[str, float]] = None) -> ShardResult:
    """Predict shard ``index`` of ``count`` of the dataset folder ``data_dir`` into ``out_dir`` (see the
    module docstring). ``model``: a :class:`~AutoSegSensitivity.inference.LoadedModel`; ``thresholds``: a
    number or ``{structure: t}`` to also write ``segmentation.seg.nrrd`` (``None``: maps only);
    ``batch_size`` / ``channels_last`` go to :func:`~AutoSegSensitivity.inference.predict_volume`. A case is
    skipped when its marker lists the same files, model and thresholds, unless ``redo``. ``temperatures``
    (``{structure: T}``): the maps are written calibrated (:func:`~AutoSegSensitivity.calibration.
    calibrated_volumes`; the segmentation still thresholds the uncalibrated maps). Writes the
    shard summary ``out_dir/shard-<index>-of-<count>.json``."""
    from .inference import predict_volume, threshold_maps
    from .io import load_case, scan_dataset, write_segmentation, write_volume

    scan = scan_dataset(data_dir)
    by_name = {c.name: c for c in scan.cases}
    problems = dict(scan.problems)
    assigned = shard_names(list(by_name) + list(problems), index, count)
    out_dir = Path(out_dir)
    files = output_names(model.class_names, fmt, thresholds is not None)
    settings = run_settings(model, thresholds)
    # None when uncalibrated: markers written before calibration existed (no such key) stay valid
    settings["temperatures"] = ({str(k): float(v) for k, v in sorted(temperatures.items())}
                                if temperatures is not None else None)
    result = ShardResult(index, count, assigned)
    todo = []
    for name in assigned:
        if name in problems:
            continue
        if not redo and case_complete(out_dir / name, files, settings):
            result.already_complete.append(name)
        else:
            todo.append((name, by_name[name]))

    def job(case: Any) -> List[str]:
        image, _ = load_case(case)
        probs = predict_volume(model, image, batch_size=batch_size, channels_last=channels_last)
        case_dir = out_dir / case.name
        (case_dir / MARKER).unlink(missing_ok=True)
        shown = probs
        if temperatures is not None:
            from .calibration import calibrated_volumes

            shown = calibrated_volumes(probs, temperatures)
        for vol, fname in zip(shown.values(), files):
            write_volume(vol, case_dir / fname)
        if thresholds is not None:
            write_segmentation(threshold_maps(probs, thresholds), case_dir / SEGMENTATION)
        write_text(case_dir / MARKER, json.dumps({"case": case.name, "files": files, **settings}, indent=2))
        return files

    result.batch = run_batch(todo, job, desc=f"shard {index}/{count}", progress=progress,
                             failures=[(n, problems[n]) for n in assigned if n in problems], on_failure=on_failure)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / f"shard-{index}-of-{count}.json", json.dumps(result.to_dict(), indent=2))
    return result
