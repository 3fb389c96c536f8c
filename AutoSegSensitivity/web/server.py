"""Starting and stopping the review server: the port checked before anything is built, the URL printed,
Ctrl-C a clean stop."""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any, Callable, Optional

from ..errors import InputError


def check_port(host: str, port: int) -> None:
    """:class:`InputError` when ``port`` on ``host`` cannot be bound (in use, or not allowed)."""
    if not 0 <= int(port) <= 65535:
        raise InputError("--port", None, "a port number in 0..65535", got=port)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            why = "in use by another program" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise InputError(f"{host}:{port}", "port", "a free port (choose another with --port)", got=why) from None


def missing_review_extra() -> Optional[str]:
    """None when trame-slicer and its MRML wheels import; otherwise the one line saying what to install."""
    try:
        import trame_slicer  # noqa: F401
        import slicer  # noqa: F401
        from trame.app import TrameApp  # noqa: F401
    except ImportError as exc:
        return (f"the review page needs the optional extra: pip install \"AutoSegSensitivity[review]\" "
                f"(missing: {exc.name or exc})")
    return None


def serve(app: Any, host: str, port: int, say: Callable[[str], None] = print) -> None:
    """Serve ``app`` (a :class:`~.app.ReviewApp`) on ``host:port`` until Ctrl-C; prints the URL. trame's own
    command-line parsing is kept away from ours (it would read ``sys.argv``)."""
    def ready(**_: Any) -> None:
        say(f"review page: http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{port}/ "
            + ("(bound to this machine only; --host 0.0.0.0 to share it on the network)"
               if host in ("127.0.0.1", "localhost", "::1") else f"(bound to {host}: reachable from the network)"))
        say("Ctrl-C stops it.")
        sys.stdout.flush()

    app.ctrl.on_server_ready.add(ready)
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        app.server.start(host=host, port=int(port), open_browser=False, show_connection_info=False,
                         disable_logging=True)
    finally:
        sys.argv = argv
