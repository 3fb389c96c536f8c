"""Sharded cohort tuning: ``tune --shard I/N`` writes the counts of its cases, ``tune --merge`` aggregates.

A shard counts cases I, I+N, I+2N, ... of the cohort's matched names sorted (the rule of ``predict
--shard``, :func:`AutoSegSensitivity.predict_shards.shard_names`) and writes only
``counts-I-of-N.npz``; ``tune --merge`` reads every shard's file, checks that they belong together and
makes the same outputs as one run over all cases (:func:`AutoSegSensitivity.tune.tune_from_counts`).

**File** (``numpy.savez_compressed``; read with ``allow_pickle=False``, never unpickled): plain arrays, one
row per (case, structure) entry in case-name order --

* ``thresholds`` (T,) float64, the grid; ``tp``, ``npred`` (M, T) int64; ``nref``, ``nvox`` (M,) int64;
* ``curve`` (M, T) float64 when the metric is not Dice;
* ``cal_n`` (M, 2, B) int64 and ``cal_s`` (M, 2, B) float64 with ``--calibration``
  (:class:`~AutoSegSensitivity.calibration.CalibrationCounts`);
* ``meta``: a JSON string: format tag and version, ``shard`` [I, N], ``names`` (all matched cases),
  ``cases`` (this shard's), ``entries`` [[case, structure], ...], per case the structures seen and its
  problems, the problems found before counting, the structures asked for, the probability paths and the
  ``inputs`` (settings) of ``thresholds.json``.

**Merge checks** (one :class:`~AutoSegSensitivity.errors.InputError` line otherwise): every file has the
format tag; all have the same N; each shard 0..N-1 is given exactly once; the settings (every input but
the folder paths, which may be mounted differently on the nodes), the threshold grid, the cohort's names
and the problems found before counting are the same in all.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from .atomic import write_with
from .errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["COUNTS_FORMAT", "counts_name", "save_counts", "load_counts", "find_count_files", "merge_counts"]

COUNTS_FORMAT = "autosegsens-tune-counts"
COUNTS_VERSION = 1
_NAME = re.compile(r"counts-(\d+)-of-(\d+)\.npz")
#: inputs that name folders: they may differ between the nodes of an array job
PATH_INPUTS = ("prob_dir", "ref_dir", "train_dir", "dataset_json")


def counts_name(index: int, count: int) -> str:
    """``counts-I-of-N.npz``."""
    return f"counts-{int(index)}-of-{int(count)}.npz"


def save_counts(cc: Any, shard: Tuple[int, int], out_dir: PathLike) -> Path:
    """Write the :class:`~AutoSegSensitivity.tune.CohortCounts` of shard ``(I, N)`` as
    ``out_dir/counts-I-of-N.npz`` (atomically). Returns the file."""
    th = np.asarray(cc.thresholds, dtype=np.float64)
    entries, tp, npred, nref, nvox, curve, cal_n, cal_s = [], [], [], [], [], [], [], []
    for res in cc.outs:
        for s, c in res.counts.items():
            entries.append([res.name, s])
            tp.append(c.tp)
            npred.append(c.npred)
            nref.append(c.nref)
            nvox.append(c.nvox)
            if c.curve is not None:
                curve.append(c.curve)
            if c.calibration is not None:
                cal_n.append(c.calibration.n)
                cal_s.append(c.calibration.s)
    m = len(entries)
    arrays: Dict[str, np.ndarray] = {
        "thresholds": th,
        "tp": np.asarray(tp, np.int64).reshape(m, th.size), "npred": np.asarray(npred, np.int64).reshape(m, th.size),
        "nref": np.asarray(nref, np.int64).reshape(m), "nvox": np.asarray(nvox, np.int64).reshape(m)}
    if cc.inputs["metric"] != "dice":
        arrays["curve"] = np.asarray(curve, np.float64).reshape(m, th.size)
    if "calibration" in cc.inputs:
        from .calibration import N_FINE

        arrays["cal_n"] = np.asarray(cal_n, np.int64).reshape(m, 2, N_FINE)
        arrays["cal_s"] = np.asarray(cal_s, np.float64).reshape(m, 2, N_FINE)
    meta = {"format": COUNTS_FORMAT, "version": COUNTS_VERSION, "shard": [int(shard[0]), int(shard[1])],
            "names": list(cc.names), "cases": list(cc.cases), "entries": entries,
            "seen": {r.name: list(r.seen) for r in cc.outs},
            "case_problems": {r.name: [list(p) for p in r.problems] for r in cc.outs},
            "problems": [list(p) for p in cc.problems], "wanted": cc.wanted, "prob_paths": cc.prob_paths,
            "inputs": cc.inputs}
    arrays["meta"] = np.array(json.dumps(meta))
    target = Path(out_dir) / counts_name(*shard)

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: savez would append .npz to a path
            np.savez_compressed(fh, **arrays)

    return write_with(target, writer)


def load_counts(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a ``counts-I-of-N.npz`` (never unpickled); a file that is not one is an
    :class:`InputError` naming it."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as exc:
        raise InputError(path, "file", "a counts-I-of-N.npz of autosegsens tune --shard",
                         got=f"{type(exc).__name__}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != COUNTS_FORMAT:
        raise InputError(path, "meta.format", repr(COUNTS_FORMAT), got=repr(meta.get("format") if isinstance(meta, dict) else meta))
    if meta.get("version") != COUNTS_VERSION:
        raise InputError(path, "meta.version", str(COUNTS_VERSION), got=repr(meta.get("version")))
    return meta, arrays


def find_count_files(sources: Sequence[PathLike]) -> List[Path]:
    """The ``counts-I-of-N.npz`` files of ``sources`` (shard output folders, or the files themselves)."""
    files: List[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            found = sorted(p for p in src.iterdir() if _NAME.fullmatch(p.name))
            if not found:
                raise InputError(src, "counts", "a counts-I-of-N.npz (autosegsens tune --shard I/N --out here)",
                                 got="none")
            files.extend(found)
        elif src.is_file():
            files.append(src)
        else:
            raise InputError(src, None, "a shard output folder or its counts-I-of-N.npz", got="no such file or folder")
    return files


def _settings(inputs: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in inputs.items() if k not in PATH_INPUTS}


def merge_counts(sources: Sequence[PathLike]) -> Any:
    """The :class:`~AutoSegSensitivity.tune.CohortCounts` of the whole cohort from its shards' files (see
    the module docstring for the checks)."""
    from .calibration import CalibrationCounts
    from .tune import CohortCounts, StructureCounts, _CaseOut

    files = find_count_files(sources)
    loaded = [(f, *load_counts(f)) for f in files]
    first_f, first, first_a = loaded[0]
    n = int(first["shard"][1])
    by_index: Dict[int, Path] = {}
    for f, meta, arrays in loaded:
        i, count = (int(v) for v in meta["shard"])
        if count != n:
            raise InputError(f, "shard", f"shard of {n} (as {first_f.name})", got=f"{i}/{count}")
        if i in by_index:
            raise InputError(f, "shard", f"each shard once; shard {i}/{n} is also {by_index[i]}", got=f"{i}/{n} twice")
        by_index[i] = f
        for key, label in (("names", "cohort cases"), ("problems", "problems found before counting")):
            if meta[key] != first[key]:
                raise InputError(f, key, f"the {label} of {first_f}", got="different ones (shards of another run?)")
        a, b = _settings(meta["inputs"]), _settings(first["inputs"])
        if a != b:
            key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
            raise InputError(f, f"inputs.{key}", f"{b.get(key)!r} as in {first_f}", got=repr(a.get(key)))
        if not np.array_equal(arrays["thresholds"], first_a["thresholds"]):
            raise InputError(f, "thresholds", f"the threshold grid of {first_f}", got="another grid")
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise InputError("tune --merge", "shards", f"all {n} shards 0..{n - 1}",
                         got=f"missing {', '.join(f'{i}/{n}' for i in missing)}")
    outs: Dict[str, Any] = {}
    has_cal = "calibration" in first["inputs"]
    for f, meta, arrays in loaded:
        for case in meta["cases"]:
            if case in outs:
                raise InputError(f, "cases", "each case in one shard", got=f"{case!r} twice")
            res = _CaseOut(case)
            res.seen = list(meta["seen"].get(case, []))
            res.problems = [tuple(p) for p in meta["case_problems"].get(case, [])]
            outs[case] = res
        for row, (case, s) in enumerate(meta["entries"]):
            cal = (CalibrationCounts(arrays["cal_n"][row].copy(), arrays["cal_s"][row].copy()) if has_cal else None)
            outs[case].counts[s] = StructureCounts(
                arrays["tp"][row].copy(), arrays["npred"][row].copy(), int(arrays["nref"][row]), int(arrays["nvox"][row]),
                arrays["curve"][row].copy() if "curve" in arrays else None, cal)
    names = list(first["names"])
    if sorted(outs) != sorted(names):
        raise InputError("tune --merge", "cases", "the shards' cases to cover the cohort",
                         got=f"missing {sorted(set(names) - set(outs))[:5]}")
    return CohortCounts(names, names, dict(first["prob_paths"]), [tuple(p) for p in first["problems"]],
                        [outs[c] for c in names], first["wanted"], first_a["thresholds"].copy(), dict(first["inputs"]))
