"""Path fields of the modules' parameter nodes: ``Optional[Path] = None``, shown as an empty line edit.

Slicer's own binding of a ``Path`` field to a ctkPathLineEdit shows an unset path as "." (Slicer/Slicer
``Base/Python/slicer/parameterNodeWrapper/serializers.py`` PathSerializer: the default is ``Path()``, which
is ``Path('.')``; ``guiConnectors.py`` ctkPathLineEditToPathConnector.write: ``currentPath = str(value)``;
CTK ``ctkPathLineEdit::setCurrentPath`` shows the text as given). So the modules declare path fields
``Optional[Path] = None`` (stored by Slicer's UnionSerializer with its NoneSerializer, whose default for
``Optional[X]`` is None) and bind them with the connector of ``AutoSegSlicerLib.widgets``, which shows None
as an empty field and reads an empty field as None, through the two functions here (pure Python).
"""

from __future__ import annotations

import pathlib
import typing
from typing import Any, Optional

from .actions import path_or_none

PATH_CLASSES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
                pathlib.PureWindowsPath)
"""The pathlib classes Slicer's PathSerializer stores (serializers.py, PathSerializer.canSerialize)."""


def optional_path_class(datatype: Any) -> Optional[type]:
    """The pathlib class ``X`` when ``datatype`` is ``Optional[X]`` (``Union[X, None]``, in either order)
    of a class in :data:`PATH_CLASSES`, else None."""
    if typing.get_origin(datatype) is not typing.Union:
        return None
    args = typing.get_args(datatype)
    others = [a for a in args if a is not type(None)]
    if len(args) != 2 or len(others) != 1 or others[0] not in PATH_CLASSES:
        return None
    return others[0]


def path_text(value: Any) -> str:
    """What the line edit shows for a field value: '' for None (and for an unset ``Path()``), else the path."""
    path = path_or_none(value)
    return "" if path is None else str(path)


def path_from_text(text: str, path_class: type = pathlib.Path) -> Optional[pathlib.PurePath]:
    """The field value of what the line edit holds: None for '', blanks or '.', else ``path_class(text)``."""
    path = path_or_none(text)
    return None if path is None else path_class(str(path))
