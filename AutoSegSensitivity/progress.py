"""Progress events: a JSON-lines stream that training writes and the CLI, the Slicer GUI and tests read.

Each line of ``events.jsonl`` is one JSON object with at least ``event`` (its kind) and ``time`` (UTC, ISO
8601) and ``elapsed_s`` (seconds since the writer started). Kinds written by training:

* ``start``: ``epochs``, ``first_epoch``, ``device``, ``model``, ``loss``, ``train_cases``, ``val_cases``,
  ``class_names``, ``resumed`` (bool).
* ``epoch``: ``epoch`` (1-based), ``epochs``, ``train_loss``, ``val_loss``, ``val_loss_mean`` (running mean),
  ``val_dice`` (``{structure: Dice}``), ``val_dice_mean``, ``lr``, ``best_epoch``, ``is_best``,
  ``epoch_s``, ``eta_s`` (seconds left if every remaining epoch runs), ``elapsed_s``.
* ``checkpoint``: ``path``, ``epoch``, ``kind`` (``last`` or ``best``).
* ``stop``: ``reason`` (``epochs``, ``early_stopping``, ``cancelled``), ``epoch``.
* ``done``: ``best_epoch``, ``best_score``, ``epochs_run``.
* ``error``: ``message``.

Kinds written by ``autosegsens tune`` (into ``OUT/events.jsonl``):

* ``start``: ``cases`` (matched cases), ``metric``, ``folds``.
* ``case``: ``case`` (its name), ``done``, ``total`` (cases read so far / in all).
* ``done``: ``structures`` (tuned), ``out``.
* ``error``: ``message`` (the run then exits non-zero).

A line is written and flushed in one ``write`` call, so a reader that tails the file while training runs
only ever sees whole lines (a trailing partial line is ignored until it is complete).
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

Event = Dict[str, Any]
EventCallback = Callable[[Event], None]


def _jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts as JSON accepts them (NaN/inf become None, numpy scalars floats)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, float) or hasattr(value, "dtype"):
        if hasattr(value, "dtype") and getattr(value.dtype, "kind", "f") in "iu":
            return int(value)
        return f if math.isfinite(f) else None
    return f


class ProgressWriter:
    """Append events to a JSON-lines file and pass each to an optional callback.

    ``path`` may be ``None`` (callback only). ``clock`` gives seconds (monotonic) and is injectable for
    tests. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Union[str, Path, None], on_event: Optional[EventCallback] = None,
                 clock: Callable[[], float] = time.monotonic, elapsed_offset_s: float = 0.0) -> None:
        self.path = Path(path) if path is not None else None
        self.on_event = on_event
        self._clock = clock
        self._t0 = clock() - float(elapsed_offset_s)
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")

    @property
    def elapsed_s(self) -> float:
        """Seconds since the writer started (plus the offset given, e.g. time spent before a resume)."""
        return self._clock() - self._t0

    def emit(self, event: str, **fields: Any) -> Event:
        """Write one event of kind ``event`` with ``fields``; returns the event dict that was written."""
        record: Event = {"event": event, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "elapsed_s": round(self.elapsed_s, 3)}
        record.update(_jsonable(fields))
        if self._fh is not None:
            self._fh.write(json.dumps(record, allow_nan=False) + "\n")
            self._fh.flush()
        if self.on_event is not None:
            self.on_event(record)
        return record

    def close(self) -> None:
        """Close the file (events already written stay)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ProgressWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_events(path: Union[str, Path], kind: Optional[str] = None) -> List[Event]:
    """All complete events in ``path`` (optionally only those of ``kind``); a partial last line is skipped."""
    reader = EventReader(path)
    events = reader.poll()
    return [e for e in events if kind is None or e.get("event") == kind]


class EventReader:
    """Incremental reader for a growing events file (what a GUI polls with a timer).

    Each :meth:`poll` returns the events completed since the previous call. A missing file gives ``[]``.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self._offset = 0

    def poll(self) -> List[Event]:
        """New complete events since the last poll."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._offset += end + 1
        out: List[Event] = []
        for line in data[: end + 1].splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def __iter__(self) -> Iterator[Event]:
        return iter(self.poll())


def eta_seconds(done: int, total: int, elapsed_s: float) -> Optional[float]:
    """Seconds left when ``done`` of ``total`` equal units took ``elapsed_s``; ``None`` before the first."""
    if done <= 0:
        return None
    return max(0.0, elapsed_s / done * (total - done))


def format_duration(seconds: Optional[float]) -> str:
    """``1h02m03s`` / ``4m05s`` / ``12s`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def describe_epoch(event: Event) -> str:
    """One human line for an ``epoch`` event (what the CLI prints when stderr is not a terminal)."""
    dice = event.get("val_dice") or {}
    dice_txt = " ".join(f"{k}={v:.3f}" for k, v in dice.items() if v is not None)
    def num(key: str) -> str:
        v = event.get(key)
        return f"{v:.4f}" if isinstance(v, (int, float)) else "-"
    return (f"epoch {event.get('epoch')}/{event.get('epochs')} train_loss={num('train_loss')} "
            f"val_loss={num('val_loss')} dice[{dice_txt}] eta={format_duration(event.get('eta_s'))}"
            + (" *best*" if event.get("is_best") else ""))
