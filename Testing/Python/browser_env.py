"""What the review page's tests need around them: an X display for VTK's render windows (Xvfb started on a
free display number when ``DISPLAY`` is unset) and Debian's Chromium for playwright.

Where they are missing the tests are skipped with a message saying how to get them; under CI (``CI=true``)
a missing display or browser is a failure (``.ci/run`` installs ``xvfb`` and ``chromium`` when root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

import pytest

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
HOW = ("install them with `apt-get install -y xvfb chromium` (as root; `.ci/run` does it) and "
       "`pip install -e \".[test]\"` (playwright), then run `python -m pytest Testing/Python/test_web_review.py`")


def missing(what: str) -> None:
    """Skip (fail under CI=true) because ``what`` is missing."""
    msg = f"{what} is not available: {HOW}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {msg}", pytrace=False)
    pytest.skip(msg, allow_module_level=True)  # also called at import time of a test module


def chromium_path() -> str:
    """Debian's Chromium (``/usr/bin/chromium``) and the playwright package, or skip / fail."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing("the playwright package")
    for path in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if path and os.access(path, os.X_OK):
            return path
    missing("a Chromium browser (/usr/bin/chromium)")
    return ""


_WATCHDOG = """
import os, subprocess, sys, time
parent, fd = int(sys.argv[1]), int(sys.argv[2])
x = subprocess.Popen(sys.argv[3:] + ["-displayfd", str(fd)], pass_fds=(fd,), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
os.close(fd)
while x.poll() is None and os.getppid() == parent:
    time.sleep(0.5)
x.terminate()
x.wait(10)
"""


@contextmanager
def x_display() -> Iterator[str]:
    """``DISPLAY`` as it is, or an Xvfb started on a free display number (read from ``-displayfd``, so no
    guessing). The Xvfb lives until this process ends (a watchdog ends it then): VTK's render windows keep
    their X connection until they are destroyed at exit, and Xlib ends a process whose server went away."""
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    display = _started_xvfb()
    os.environ["DISPLAY"] = display
    try:
        yield display
    finally:
        os.environ.pop("DISPLAY", None)


_XVFB: Optional[str] = None


def _started_xvfb() -> str:
    global _XVFB
    if _XVFB is not None:
        return _XVFB
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        missing("an X display (Xvfb)")
    r, w = os.pipe()
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(w), xvfb, "-screen", "0", "1600x1000x24",
                      "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    os.close(w)
    with os.fdopen(r) as fh:
        number = fh.readline().strip()
    if not number:
        missing("a working Xvfb (it exited without a display number)")
    _XVFB = f":{number}"
    return _XVFB


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
