"""The Qt side of the modules' background processes (training, prediction, cohort tuning): a timer that
polls one ``AutoSegSensitivity.mrml.background.BackgroundProcess``, hands its new events and its exit to the
widget, cancels it without blocking, and ends it when the module is cleaned up.

Slicer calls a scripted module widget's ``cleanup()`` when the module is about to be unloaded, which
happens for every module when the application quits (``qSlicerCoreApplication::onAboutToQuit`` ->
``unloadModules`` -> ``moduleAboutToBeUnloaded`` -> ``ScriptedLoadableModuleWidget._onModuleAboutToBeUnloaded``),
so a widget that calls :meth:`BackgroundRunner.cleanup` there leaves no run behind it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional

POLL_MS = 1000
"""How often a running process is polled (ms)."""


class BackgroundRunner:
    """One background process at a time, polled by a ``qt.QTimer``.

    ``onEvents(process, events)`` gets the events read at each poll; ``onFinished(process)`` is called once,
    after the process has exited (whatever its exit code; ``process.cancel_requested`` tells a cancel).
    An exception in ``onEvents`` is logged and shown by ``onError(message)`` when given; it never stops
    the timer, so the exit is still seen."""

    def __init__(self, name: str, onEvents: Optional[Callable[[Any, List[dict]], None]] = None,
                 onFinished: Optional[Callable[[Any], None]] = None, onError: Optional[Callable[[str], None]] = None,
                 intervalMs: int = POLL_MS) -> None:
        self.name = name
        self.onEvents = onEvents
        self.onFinished = onFinished
        self.onError = onError
        import qt  # here, not at import time: the module files import the Lib before Slicer's Qt is needed

        self.process = None
        self._reported = False  # the exit of self.process was handed to onFinished
        self.timer = qt.QTimer()
        self.timer.setInterval(int(intervalMs))
        self.timer.timeout.connect(self.poll)

    @property
    def running(self) -> bool:
        """True while a started process has not exited."""
        return self.process is not None and self.process.running

    @property
    def active(self) -> bool:
        """True while the timer still polls (until the exit has been handed to ``onFinished``)."""
        return bool(self.timer.active)

    def start(self, process: Any) -> Any:
        """Poll ``process`` (already started, e.g. by a logic's ``start``); any earlier run is ended first."""
        if self.process is not None and self.process is not process:
            self.process.end()
        self.process = process
        self._reported = False
        self.timer.start()
        return process

    def poll(self) -> None:
        """One timer tick: new events to ``onEvents``; the exit, once, to ``onFinished``."""
        process = self.process
        if process is None or self._reported:  # nothing to poll, or a tick queued after the exit
            self.timer.stop()
            return
        try:
            events = process.poll()
            if events and self.onEvents is not None:
                self.onEvents(process, events)
        except Exception as exc:  # a broken event line or a scene change must not kill the timer silently
            logging.exception(f"{self.name}: poll")
            if self.onError is not None:
                self.onError(f"Progress could not be read: {exc}")
        if process.returncode is not None:
            self.timer.stop()
            self._reported = True
            if self.onFinished is not None:
                self.onFinished(process)

    def cancel(self) -> None:
        """Stop the run and return at once (no wait cursor, no waiting): the timer sees the exit."""
        if self.running:
            self.process.cancel()

    def cleanup(self) -> None:
        """Module cleanup: stop polling and end the run with its children now."""
        self.timer.stop()
        if self.process is not None:
            try:
                self.process.end()
            except Exception:  # cleanup must go on (Slicer is closing)
                logging.exception(f"{self.name}: could not end the background process")
