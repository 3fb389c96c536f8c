"""The ``autosegsens`` command line.

Each subcommand lives in its own module ``cli/<name>.py`` that defines::

    NAME = "sweep"                      # the subcommand
    HELP = "one line for the overview"
    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...   # returns the exit code (0 done)

``parser`` is made with ``description`` = the module docstring and ``RawDescriptionHelpFormatter``, so the
docstring (which ends with an example) is what ``--help`` shows.

Exit codes: 0 done, 1 failed, 2 bad usage or bad input (one-line reason on stderr), 130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .. import __version__
from ..errors import CancelledError, InputError

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


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except InputError as exc:
        print(f"autosegsens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        print(f"autosegsens {args.command}: error: {exc} (use --overwrite to replace it)", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"autosegsens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, CancelledError) as exc:
        print(f"autosegsens {args.command}: cancelled. {exc}".rstrip(), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
