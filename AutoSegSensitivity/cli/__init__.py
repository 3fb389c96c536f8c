"""The ``autosegsens`` command line.

Each subcommand lives in its own module ``cli/<name>.py`` that defines::

    NAME = "sweep"                      # the subcommand
    HELP = "one line for the overview"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...   # returns the exit code (0 done)

``parser`` is made with ``description`` = the module docstring and ``RawDescriptionHelpFormatter``, so the
docstring (which ends with an example) is what ``--help`` shows.

Optional in a subcommand module: ``def kept(args) -> str`` describes what an interrupted or failed run left
behind and how to continue (``runs/x/last.pt holds epoch 3; continue with --resume``); it is printed
after the one-line reason of a cancel or an operating-system error.

Exit codes: 0 done, 1 failed (an operating-system error such as a full disk: one line naming the path and
the reason), 2 bad usage or bad input (one-line reason on stderr), 130 cancelled (Ctrl-C, SIGINT), 143
stopped by SIGTERM (what clusters send at the time limit; handled like Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
from typing import Any, Iterator, List, Optional

from .. import __version__
from ..errors import CancelledError, InputError

EXIT_SIGNALLED = {"SIGINT": 130, "SIGTERM": 143}

# Subcommand modules, in the order --help lists them.
SUBCOMMANDS = (
    "demo",
    "phantom",
    "convert",
    "transform",
    "train",
    "predict",
    "sweep",
    "tune",
    "apply",
    "compare",
    "localise",
    "ensemble",
    "report",
    "review",
)


def _load(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per available subcommand."""
    parser = argparse.ArgumentParser(
        prog="autosegsens",
        description="Threshold sensitivity, localisation and intensity transforms for deep-learning "
        "organ-at-risk segmentation on CT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = _load(name)
        if module is None:
            continue
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class _Signals:
    """While a command runs: SIGTERM is raised as ``KeyboardInterrupt`` (so every Ctrl-C path handles it),
    as SIGINT is, and the last signal received is remembered for the exit code and the message."""

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._old: dict = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator["_Signals"]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig == signal.SIGINT and signal.getsignal(sig) is not signal.default_int_handler:
                continue  # ignored (a background job of a shell) or handled by the caller: left as it is
            with contextlib.suppress(ValueError, OSError):
                self._old[sig] = signal.signal(sig, self._handler)
        try:
            yield self
        finally:
            for sig, old in self._old.items():
                signal.signal(sig, old)

    @staticmethod
    @contextlib.contextmanager
    def ignored() -> Iterator[None]:
        """Ignore SIGINT/SIGTERM while the final message is written (a third Ctrl-C must not cut the line
        that says what was kept); the handlers are restored afterwards."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    old[sig] = signal.signal(sig, signal.SIG_IGN)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _kept(module: Any, args: argparse.Namespace) -> str:
    """The subcommand's description of what an interrupted run kept, or ``""``."""
    describe = getattr(module, "kept", None)
    if describe is None:
        return ""
    try:
        return str(describe(args) or "")
    except Exception:  # noqa: BLE001 - the description must never hide the real reason
        return ""


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code. SIGTERM is handled from the first line on (a signal
    while the modules load ends with exit code 143 and one line, not a traceback); run as a program
    (``argv`` None), a signal after the command finished is ignored (it must not turn a finished run into
    a killed one while the interpreter shuts down)."""
    signals = _Signals()
    prog, args, module = "autosegsens", None, None
    try:
        with signals.installed():
            from ..atomic import fault_point

            fault_point("cli.start")  # test hook: a signal while the modules load
            parser = build_parser()
            args = parser.parse_args(argv)
            if not getattr(args, "_run", None):
                parser.print_help(sys.stderr)
                return 2
            module = sys.modules.get(getattr(args._run, "__module__", ""), None)
            prog = f"autosegsens {args.command}"
            return int(args._run(args) or 0)
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"{prog}: error: {exc} (use --overwrite to replace it)", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        from ..atomic import describe_os_error

        print(f"{prog}: error: {describe_os_error(exc) if exc.errno else exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        from ..atomic import describe_os_error

        where = "" if exc.filename is not None else f" (writing under {getattr(args, 'out', None) or '.'})"
        kept = _kept(module, args) if args is not None else ""
        print(f"{prog}: error: {describe_os_error(exc)}{where}" + (f"; {kept}" if kept else ""), file=sys.stderr)
        return 1
    except (KeyboardInterrupt, CancelledError, Exception) as exc:
        if not isinstance(exc, (KeyboardInterrupt, CancelledError)) and signals.received is None:
            raise
        # a signal, or what it became where it struck (an extension module that was loading reports an
        # interrupted initialisation as ImportError)
        with signals.ignored():
            name = getattr(exc, "signal", None) or signals.received or "SIGINT"
            text = (str(exc) if isinstance(exc, (KeyboardInterrupt, CancelledError)) else "") or (
                _kept(module, args) if args is not None else "nothing started")
            print(f"{prog}: cancelled ({name}). {text}".rstrip(), file=sys.stderr)
        return EXIT_SIGNALLED.get(name, 130)
    finally:
        if argv is None and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, signal.SIG_IGN)
            _forget_handled_interrupt()


def _forget_handled_interrupt() -> None:
    """CPython remembers a KeyboardInterrupt that passed through code run by ``PyRun_*`` (some extension
    modules do so while they load) and then ends the process by SIGINT at exit, whatever exit code was
    asked for. Running an empty statement the same way clears that record, so the exit code stays ours
    (130 / 143). A no-op on other interpreters."""
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    except Exception:  # noqa: BLE001 - not CPython, or no C API
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
