"""Label volumes with a name table (``labels.nii.gz`` / ``labels.nrrd`` + ``labels.json``).

The name table is a JSON object mapping label values (as strings) to structure names, as in
``../shared/data/abdomen-ct/labels.json``::

    {"1": "spleen", "2": "kidney_right", "5": "liver"}

Value 0 is background. Every named value becomes one segment (empty if absent from the volume); values
in the volume that the table does not name are ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np

from ..atomic import write_text
from ..errors import InputError
from ..segmentation import Segmentation
from .images import read_volume
from .jsonfile import read_json

PathLike = Union[str, "os.PathLike[str]"]


def read_label_names(path: PathLike) -> Dict[int, str]:
    """Read a ``{"value": "name"}`` JSON table into ``{int value: name}``; InputError naming the file and
    the offending key otherwise."""
    path = Path(path)
    data = read_json(path, "an existing label-name JSON file", "a JSON object {\"label value\": \"name\"}")
    return _validate_names(data, path)


def _validate_names(data: object, source: object) -> Dict[int, str]:
    if not isinstance(data, Mapping) or not data:
        raise InputError(source, "names", "a non-empty mapping {label value: name}", got=type(data).__name__)
    out: Dict[int, str] = {}
    for key, name in data.items():
        try:
            value = int(str(key).strip())
        except ValueError:
            raise InputError(source, f"key {key!r}", "an integer label value", got=key) from None
        if value <= 0:
            raise InputError(source, f"key {key!r}", "a positive label value (0 is background)", got=value)
        if not isinstance(name, str) or not name.strip():
            raise InputError(source, f"name of label {value}", "a non-empty string", got=repr(name))
        if name in out.values():
            raise InputError(source, f"name of label {value}", "a name used by one label only", got=repr(name))
        out[value] = name
    return out


def write_label_names(names: Mapping[int, str], path: PathLike) -> Path:
    """Write a ``{value: name}`` table as JSON (atomically), in the format :func:`read_label_names` reads."""
    table = _validate_names(dict(names), "label names")
    text = json.dumps({str(k): v for k, v in sorted(table.items())}, indent=1, ensure_ascii=False) + "\n"
    return write_text(path, text)


def read_label_segmentation(labels_path: PathLike, names: Union[Mapping[int, str], PathLike]) -> Segmentation:
    """A :class:`Segmentation` from a label volume (NRRD/NIfTI) and its names: a ``{value: name}`` dict or
    the path of a JSON table. Raises InputError naming the file for non-integer label values."""
    labels_path = Path(labels_path)
    table = _validate_names(names, "names") if isinstance(names, Mapping) else read_label_names(names)
    volume = read_volume(labels_path)
    arr = volume.array
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputError(labels_path, "voxel values", "integer label values", got="non-integer values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise InputError(labels_path, "pixel type", "an integer label volume", got=str(arr.dtype))
    return Segmentation.from_labels(volume.with_array(arr), table)
