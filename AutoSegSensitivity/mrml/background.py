"""Background processes of the Slicer modules (training, prediction, cohort tuning): one helper that starts
a CLI run, polls its event stream, cancels it and ends it (with its children) when the module goes away.

No Qt here: the GUI's timer (``AutoSegSlicerLib.background.BackgroundRunner``) calls :meth:`BackgroundProcess.poll`;
everything else returns at once. A run is started in its own process group (POSIX) or with a hidden console
(Windows), so that :func:`kill_process_tree` ends the launcher (``PythonSlicer``) and the interpreter it starts
together; :meth:`BackgroundProcess.end` is what module cleanup calls, so no run outlives Slicer and a later
Resume can never start a second writer into the same folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

EVENTS_FILE = "events.jsonl"
"""The event stream every background run writes into its output folder (:mod:`AutoSegSensitivity.progress`)."""


def default_python() -> str:
    """The interpreter for background runs: Slicer's ``PythonSlicer`` launcher when it is on the PATH (inside
    Slicer, whose own executable is the GUI application), else this interpreter."""
    launcher = shutil.which("PythonSlicer")
    if launcher and Path(sys.executable).name.lower().startswith(("slicer", "pythonslicer")):
        return launcher
    return sys.executable


def engine_command(python: str, subcommand: str, *args: str) -> List[str]:
    """``python -m AutoSegSensitivity <subcommand> args...``: the CLI as every background run starts it."""
    return [python, "-m", "AutoSegSensitivity", subcommand, *args]


def engine_env(extra_env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This environment plus ``extra_env``, with the folder holding this engine first on ``PYTHONPATH`` (so the
    run uses the same engine as the module that started it, installed or from a clone)."""
    env = dict(os.environ)
    env.update(extra_env or {})
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


STARTF_USESHOWWINDOW = 0x00000001
"""``STARTUPINFO.dwFlags`` bit: use ``wShowWindow`` (Windows ``winbase.h``; ``subprocess.STARTF_USESHOWWINDOW``)."""
SW_HIDE = 0
"""``STARTUPINFO.wShowWindow`` value: the window is hidden (Windows ``winuser.h``)."""


def popen_options(platform: str = sys.platform,
                  startupinfo_factory: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
    """Extra ``subprocess.Popen`` arguments for a background run on ``platform`` (a ``sys.platform`` value).

    Windows: ``startupinfo`` with a hidden window (``dwFlags |= STARTF_USESHOWWINDOW``, ``wShowWindow =
    SW_HIDE``), as Slicer's ``slicer.util.launchConsoleProcess`` does, so that no console window opens (closing
    it would kill the run). ``startupinfo_factory`` makes that object (default ``subprocess.STARTUPINFO``, which
    exists on Windows only; it is looked up only on the Windows branch). Elsewhere: ``start_new_session``, so
    that the run and its children (``PythonSlicer`` is a launcher that starts the interpreter as a child) form
    one process group that :func:`kill_process_tree` ends together."""
    if platform.startswith("win"):
        info = (startupinfo_factory or getattr(subprocess, "STARTUPINFO"))()
        info.dwFlags |= STARTF_USESHOWWINDOW
        info.wShowWindow = SW_HIDE
        return {"startupinfo": info}
    return {"start_new_session": True}


def kill_command(platform: str, pid: int) -> Optional[List[str]]:
    """The command that ends process ``pid`` and its children on Windows (``taskkill /F /T``); None elsewhere,
    where the process group started by :func:`popen_options` is killed with a signal."""
    if platform.startswith("win"):
        return ["taskkill", "/F", "/T", "/PID", str(pid)]
    return None


def kill_process_tree(process: "subprocess.Popen[Any]", platform: str = sys.platform) -> None:
    """End ``process`` and its children now (SIGKILL: no clean-up in them, SIGTERM handlers do not help):
    its process group when it leads one (POSIX, see :func:`popen_options`), ``taskkill /T`` on Windows; the
    process alone otherwise. Does not wait for the exit (``poll`` reaps it)."""
    if process.poll() is not None:
        return
    command = kill_command(platform, process.pid)
    if command is not None:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                       **popen_options(platform))
    else:
        import signal

        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if process.poll() is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass


class BackgroundProcess:
    """One CLI run in the background (training, prediction or cohort tuning).

    ``command`` is started with its output in ``out_dir/<log_name>``; its events are read from
    ``out_dir/events.jsonl``. Nothing here blocks:

    * :meth:`poll` (the GUI's timer) returns the new events and carries out a pending cancel;
    * :meth:`cancel` asks and returns at once: with a ``cancel_file`` (training's ``CANCEL``) the run is asked to
      stop cleanly and is killed by :meth:`poll` when still alive ``grace_s`` seconds later; without one (or with
      ``grace_s`` 0) the run and its children are killed there and then;
    * :meth:`end` kills the run now, whatever it is doing (module cleanup, Slicer closing).
    """

    def __init__(self, command: Sequence[str], out_dir: Union[str, Path], env: Optional[Dict[str, str]] = None,
                 log_name: str = "run.log", cancel_file: Optional[str] = None, grace_s: float = 30.0) -> None:
        from ..progress import EventReader

        self.command = [str(c) for c in command]
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cancel_file = self.out_dir / cancel_file if cancel_file else None
        if self.cancel_file is not None:
            self.cancel_file.unlink(missing_ok=True)
        self.log_path = self.out_dir / log_name
        self._log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                            **popen_options())
        except OSError:
            self._log.close()
            raise
        self.reader = EventReader(self.out_dir / EVENTS_FILE)
        self.events: List[Dict[str, Any]] = []
        self.grace_s = float(grace_s)
        self.cancel_deadline: Optional[float] = None
        """``time.monotonic()`` after which :meth:`poll` kills a cancelled run that is still alive."""
        self.killed = False
        """True when the run was killed (cancel without a stop file, grace period over, or :meth:`end`)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> List[Dict[str, Any]]:
        """Events written since the previous call (also kept in ``self.events``). After :meth:`cancel`: renews
        the stop request (training clears ``CANCEL`` when it starts), kills the run once the grace period is
        over, and removes the stop file once the run has exited."""
        new = self.reader.poll()
        self.events.extend(new)
        if self.cancel_deadline is not None:
            if self.returncode is not None:
                if self.cancel_file is not None:
                    self.cancel_file.unlink(missing_ok=True)
            elif time.monotonic() >= self.cancel_deadline:
                self._kill()
            elif self.cancel_file is not None and not self.cancel_file.exists():
                self._request_stop()
        return new

    def _request_stop(self) -> None:
        try:
            self.cancel_file.write_text("cancelled from Slicer\n", encoding="utf-8")
        except OSError:  # the folder went away: the grace-period kill still ends the run
            pass

    def _kill(self) -> None:
        if self.process.poll() is None:
            kill_process_tree(self.process)
            self.killed = True

    @property
    def returncode(self) -> Optional[int]:
        """The exit code once finished (0 done, 1 failed, 2 bad input, 130 cancelled; negative or 1 on Windows
        after a kill), else None."""
        code = self.process.poll()
        if code is not None and not self._log.closed:
            self._log.close()
        return code

    @property
    def running(self) -> bool:
        return self.returncode is None

    @property
    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` (or :meth:`end`) was called: the GUI then reports a cancel, not a failure."""
        return self.cancel_deadline is not None

    def cancel(self, grace_s: Optional[float] = None) -> Optional[int]:
        """Stop the run and return at once, without waiting for it. With a stop file and a grace period above
        0, the run is asked to stop (it keeps what it finished) and :meth:`poll` kills it when it is still alive
        ``grace_s`` seconds later (default: the process's ``grace_s``); otherwise it is killed now. Returns the
        exit code when the run has already exited, else None."""
        if self.returncode is not None:
            return self.returncode
        grace = self.grace_s if grace_s is None else float(grace_s)
        if self.cancel_deadline is None:
            self.cancel_deadline = time.monotonic() + grace
        if self.cancel_file is None or grace <= 0:
            self._kill()
            return None
        self._request_stop()
        return None

    def end(self, timeout_s: float = 2.0) -> Optional[int]:
        """Kill the run and its children now (module cleanup: nothing may outlive the module) and reap it,
        waiting at most ``timeout_s`` seconds. Returns the exit code (None if it could not be reaped)."""
        if self.returncode is None:
            if self.cancel_deadline is None:
                self.cancel_deadline = time.monotonic()
            self._kill()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return None
        if self.cancel_file is not None:
            self.cancel_file.unlink(missing_ok=True)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self.process.wait(timeout=timeout)
        return self.returncode

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the process's output (for error messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def last_event(self, kind: str) -> Optional[Dict[str, Any]]:
        """The latest event of ``kind`` read so far, or None."""
        for e in reversed(self.events):
            if e.get("event") == kind:
                return e
        return None
