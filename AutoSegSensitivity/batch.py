"""Batch mode: run one job per case over many cases, carry on past bad cases, end with a summary.

:func:`run_batch` calls ``job(item)`` for every ``(name, item)``; an exception in one case
(:class:`~AutoSegSensitivity.errors.InputError` for bad input, any other ``Exception`` for a failure) is
recorded with its reason and the batch goes on. Ctrl-C (``KeyboardInterrupt``) or
:class:`~AutoSegSensitivity.errors.CancelledError` stops the batch at once (the case in progress counts as
not started); what was done is kept and the result says the batch was cancelled (the exception itself is kept in
:attr:`BatchResult.interrupt`, for a caller that records what was kept and then re-raises it).
:meth:`BatchResult.summary` gives the lines a command prints at the end ("3 of 4 cases done; 1 failed:
case002: image.nrrd: spacing: expected ...").

The dataset predictor built on it (sharded, resumable; used by ``autosegsens predict --data`` and the
study) is :func:`AutoSegSensitivity.predict_shards.predict_shard`.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import CancelledError, InputError

__all__ = ["BatchFailure", "BatchResult", "run_batch"]


@dataclass
class BatchFailure:
    """One case that failed: ``kind`` is ``"input"`` (bad input, the reason names file and field) or
    ``"error"`` (an unexpected failure; ``detail`` holds the traceback)."""

    name: str
    reason: str
    kind: str = "error"
    detail: str = ""


@dataclass
class BatchResult:
    """What :func:`run_batch` did: ``done`` maps case name to the job's return value, in order;
    ``interrupt`` is the KeyboardInterrupt / CancelledError that stopped a cancelled batch."""

    done: Dict[str, Any] = field(default_factory=dict)
    failed: List[BatchFailure] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    cancelled: bool = False
    elapsed_s: float = 0.0
    interrupt: Optional[BaseException] = field(default=None, repr=False, compare=False)

    @property
    def total(self) -> int:
        return len(self.done) + len(self.failed) + len(self.skipped)

    @property
    def ok(self) -> bool:
        """True when every case was done."""
        return not self.failed and not self.skipped and not self.cancelled

    def exit_code(self) -> int:
        """0 every case done; 2 nothing done and every failure was bad input; 130 cancelled; 1 otherwise."""
        if self.cancelled:
            return 130
        if not self.failed and not self.skipped:
            return 0
        if not self.done and self.failed and all(f.kind == "input" for f in self.failed):
            return 2
        return 1

    def summary(self) -> List[str]:
        """Lines for the end of a command: counts, then one line per failed case with its reason."""
        lines = [f"{len(self.done)} of {self.total} case{'s' if self.total != 1 else ''} done"
                 + (f"; {len(self.failed)} failed" if self.failed else "")
                 + (f"; {len(self.skipped)} not started (cancelled)" if self.skipped else "")
                 + f" ({self.elapsed_s:.1f} s)"]
        for f in self.failed:
            lines.append(f"  failed {f.name}: {f.reason}")
        return lines

    def to_rows(self) -> List[Dict[str, str]]:
        """One row per case (``case, status, reason``) for a CSV of the batch."""
        rows = [{"case": n, "status": "done", "reason": ""} for n in self.done]
        rows += [{"case": f.name, "status": f"failed ({f.kind})", "reason": f.reason} for f in self.failed]
        rows += [{"case": n, "status": "not started", "reason": "cancelled"} for n in self.skipped]
        return rows


def run_batch(items: Iterable[Tuple[str, Any]], job: Callable[[Any], Any], desc: str = "cases",
              progress: Optional[bool] = None, failures: Sequence[Tuple[str, str]] = (),
              on_failure: Optional[Callable[[BatchFailure], None]] = None) -> BatchResult:
    """Run ``job(item)`` for each ``(name, item)``, continuing past cases that raise.

    ``failures`` are cases already known to be bad (e.g. ``scan_dataset(...).problems``): they are listed
    as failed (bad input) without running. ``progress``: a tqdm bar on stderr (default: when stderr is a
    terminal). ``on_failure`` is called for each failure as it happens (e.g. to print a warning).
    KeyboardInterrupt / CancelledError stop the batch: the result has ``cancelled`` set, the exception in
    ``interrupt`` and the case in progress and those not started in ``skipped``."""
    items = list(items)
    result = BatchResult()
    t0 = time.monotonic()
    for name, reason in failures:
        f = BatchFailure(str(name), str(reason), "input")
        result.failed.append(f)
        if on_failure:
            on_failure(f)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and items:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="case", file=sys.stderr)
    try:
        for i, (name, item) in enumerate(items):
            try:
                result.done[str(name)] = job(item)
            except (KeyboardInterrupt, CancelledError) as exc:
                result.cancelled = True
                result.interrupt = exc
                result.skipped = [str(n) for n, _ in items[i:]]
                break
            except InputError as exc:
                f = BatchFailure(str(name), str(exc), "input")
                result.failed.append(f)
                if on_failure:
                    on_failure(f)
            except Exception as exc:  # noqa: BLE001 - the batch goes on; the reason is recorded
                f = BatchFailure(str(name), f"{type(exc).__name__}: {exc}", "error", traceback.format_exc())
                result.failed.append(f)
                if on_failure:
                    on_failure(f)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    result.elapsed_s = time.monotonic() - t0
    return result
