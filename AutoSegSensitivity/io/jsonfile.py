"""Reading a JSON document with errors that name the file (shared by the readers of small JSON files)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]


def read_json(path: PathLike, what: str, json_what: str = "valid JSON") -> Any:
    """The parsed JSON of ``path``; :class:`InputError` naming the file for a missing file (expected
    ``what``) or text that is not valid UTF-8 JSON (expected ``json_what``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file", what, got="no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, "JSON", json_what, got=str(exc)[:120]) from None
