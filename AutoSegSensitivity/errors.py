"""Exceptions that carry what the user needs to fix bad input.

Every reader and every engine entry point raises :class:`InputError` for bad input. Its message names the
file (or object), the field, and what was expected, so that the CLI can print it as a one-line reason
(exit code 2) and the Slicer GUI can show it in a message box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


class AutoSegError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(AutoSegError, ValueError):
    """Bad input: names the source (file or object), the field, and what was expected.

    Example: ``InputError("case01/image.nrrd", "spacing", "three positive numbers", got="(1, 0, 3)")``
    prints as ``case01/image.nrrd: spacing: expected three positive numbers, got (1, 0, 3)``.
    """

    def __init__(
        self,
        source: Union[str, Path, None],
        field: Optional[str],
        expected: str,
        got: Optional[object] = None,
    ) -> None:
        self.source = str(source) if source is not None else None
        self.field = field
        self.expected = expected
        self.got = got
        parts = []
        if self.source:
            parts.append(self.source)
        if field:
            parts.append(field)
        text = f"expected {expected}" if not expected.startswith(("expected", "no ", "not ")) else expected
        if got is not None:
            text += f", got {got}"
        parts.append(text)
        super().__init__(": ".join(parts))


class CancelledError(AutoSegError):
    """Long work was cancelled by the user (signal or GUI); what was kept is described in the message."""
