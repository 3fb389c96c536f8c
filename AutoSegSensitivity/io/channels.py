"""One multi-channel probability image per case (``tune --format channels``): MONAI's ``SaveImage`` of a
softmax or sigmoid output.

What was verified in Project-MONAI/MONAI (``monai/data/image_writer.py``, ``monai/data/folder_layout.py``,
``monai/transforms/io/array.py``; read, not copied) and with SimpleITK here:

* ``SaveImage`` moves the channel axis last (``convert_to_channel_last``) and, for ``.nii`` / ``.nii.gz``,
  prefers ``NibabelWriter``: a **4D NIfTI** ``(x, y, z, c)`` (``dim[4] = c``) with the affine in its
  sform/qform. SimpleITK reads it as a 4D scalar image whose first three axes carry the spatial geometry
  (4x4 direction, upper-left 3x3 the spatial part, converted to LPS as for 3D NIfTI).
* Without nibabel, or for ``.nrrd``, MONAI uses ``ITKWriter``: a **vector image** (``is_vector``): a NIfTI
  with the components in ``dim[5]``, or an NRRD whose first axis has kind ``vector`` (``list`` as other
  tools, e.g. pynrrd users, write it). SimpleITK reads both as a 3D image with one component per channel.
* ``FolderLayout`` writes ``<out>/<subject>/<subject>_<postfix><ext>`` by default (``separate_folder=True``,
  postfix ``trans``), or ``<out>/<subject>_<postfix><ext>``.

Cases (:func:`list_channel_cases`): ``P/<case>.nii.gz`` (``.nii``, ``.nrrd``, ``.nhdr``) files, the case
being the file name without its ending, and ``P/<case>/`` folders holding exactly one such file (MONAI's
default layout: the case is the folder's name). MONAI's flat layout (``separate_folder=False``) names files
``<subject>_<postfix>``: save with ``output_postfix=""`` so that the file name is the case name (names are
matched with the references exactly; a mismatch is listed as a missing reference).

Channel names (:func:`read_channel_labels`): an nnU-Net-style ``dataset.json`` (``"labels": {name:
value}``) or a ``{"value": "name"}`` table (``labels.json``). MONAI's channel index is the label value:
with ``max(value) + 1`` channels the output is a softmax whose channel 0 is background (dropped), with
``max(value)`` channels a sigmoid output without a background channel (channel ``value - 1``); any other
count is refused (:func:`channel_index`).

The whole file of one case is read at once (a compressed NIfTI cannot be read one channel at a time
cheaply): memory is one case's image, all channels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .images import read_header
from .integrity import check_nifti_complete
from .jsonfile import read_json

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["CHANNEL_SUFFIXES", "read_channel_labels", "find_channel_labels", "list_channel_cases",
           "channel_file", "channel_header", "channel_index", "iter_channel_maps", "is_channels_folder"]

CHANNEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
EXPECTED_IMAGE = ("a multi-channel probability image (channels last: a 4D NIfTI (x, y, z, c), or a NIfTI/NRRD "
                  "with a vector or list axis)")


def _suffix(name: str) -> str:
    low = name.lower()
    return next((s for s in CHANNEL_SUFFIXES if low.endswith(s)), "")


def read_channel_labels(path: PathLike) -> Dict[str, int]:
    """``{name: label value}`` (foreground only, by value) from an nnU-Net ``dataset.json`` (an object with
    ``labels``; region-based labels refused) or a ``{"value": "name"}`` table; InputError naming the file."""
    from .labels import _validate_names
    from .nnunet import read_dataset_labels

    path = Path(path)
    data = read_json(path, "a dataset.json or labels JSON naming the channels")
    if isinstance(data, dict) and "labels" in data:
        return read_dataset_labels(path)
    table = _validate_names(data, path)
    return {n: v for v, n in sorted(table.items())}


def find_channel_labels(prob_dir: PathLike, given: Optional[PathLike] = None) -> Path:
    """``given``, else ``prob_dir/dataset.json``, else ``prob_dir/labels.json``; InputError if none."""
    if given is not None:
        return Path(given)
    for name in ("dataset.json", "labels.json"):
        if (Path(prob_dir) / name).is_file():
            return Path(prob_dir) / name
    raise InputError(prob_dir, "channel names", "--dataset-json (a dataset.json or labels JSON), or dataset.json "
                     "or labels.json in the folder", got="none")


def is_channels_folder(prob_dir: PathLike) -> bool:
    """True when ``prob_dir`` holds volume files directly (the flat channels layout)."""
    return any(p.is_file() and _suffix(p.name) and not p.name.startswith(".") for p in Path(prob_dir).iterdir())


def list_channel_cases(prob_dir: PathLike) -> Dict[str, Path]:
    """``{case: file or case folder}`` (sorted by name) of a channels folder; see the module docstring."""
    prob_dir = Path(prob_dir)
    out: Dict[str, Path] = {}
    for p in prob_dir.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_file() and _suffix(p.name):
            out[p.name[: -len(_suffix(p.name))]] = p
        elif p.is_dir():
            out.setdefault(p.name, p)
    return dict(sorted(out.items()))


def channel_file(path: PathLike) -> Path:
    """The image of a case: ``path`` itself, or the one volume file of a case folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    files = sorted(p for p in path.iterdir() if p.is_file() and _suffix(p.name) and not p.name.startswith("."))
    if len(files) != 1:
        raise InputError(path, "files", "one multi-channel probability image in the case folder",
                         got=", ".join(p.name for p in files) or "none")
    return files[0]


def channel_header(path: PathLike) -> Tuple[Volume, int, str]:
    """``(spatial grid, number of channels, layout)`` of a multi-channel image from its header; layout is
    ``vector`` (one component per channel) or ``4d`` (channels along a fourth axis)."""
    path = channel_file(path)
    if not path.is_file():
        raise InputError(path, "file", EXPECTED_IMAGE, got="no such file")
    reader = read_header(path, "a readable NIfTI/NRRD header")
    return _grid(path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize(),
                 reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def _grid(path: Path, dim: int, comps: int, size, spacing, origin, direction) -> Tuple[Volume, int, str]:
    if dim == 3 and comps > 1:
        layout, n = "vector", int(comps)
        d3 = np.asarray(direction, dtype=float).reshape(3, 3)
    elif dim == 4 and comps == 1:
        layout, n = "4d", int(size[3])
        d4 = np.asarray(direction, dtype=float).reshape(4, 4)
        if np.abs(d4[:3, 3]).max() > 1e-6 or np.abs(d4[3, :3]).max() > 1e-6:
            raise InputError(path, "direction", "a channel axis apart from the three spatial axes",
                             got=np.round(d4, 4).tolist())
        d3 = d4[:3, :3]
    else:
        got = (f"a {dim}D image with {comps} component(s)" if dim != 3 or comps != 1
               else "a 3D image with one channel (for one file per structure use --format maps)")
        raise InputError(path, "channels", EXPECTED_IMAGE, got=got)
    shape = tuple(int(v) for v in reversed(tuple(size)[:3]))
    placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), shape)
    try:
        return Volume(placeholder, tuple(spacing)[:3], tuple(origin)[:3], d3), n, layout
    except InputError as exc:
        raise InputError(path, exc.field, exc.expected, got=exc.got) from None


def channel_index(labels: Dict[str, int], n_channels: int, source: object) -> Dict[str, int]:
    """``{name: channel}``: softmax (``max + 1`` channels, channel = value) or sigmoid (``max`` channels,
    channel = value - 1); any other count is an InputError naming ``source``."""
    top = max(labels.values())
    if n_channels == top + 1:
        return dict(labels)
    if n_channels == top:
        return {n: v - 1 for n, v in labels.items()}
    raise InputError(source, "channels", f"{top + 1} (softmax: background and the labels {labels}) or {top} "
                     "(sigmoid: one per label, no background)", got=n_channels)


def iter_channel_maps(path: PathLike, labels: Dict[str, int],
                      wanted: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, Volume]]:
    """Yield ``(structure, Volume)`` (array (z, y, x), LPS geometry of the file) for the structures
    ``wanted`` (default all of ``labels``) of one case's multi-channel image, in label order."""
    import SimpleITK as sitk

    path = channel_file(path)
    geom, n, layout = channel_header(path)
    index = channel_index(labels, n, path)
    wanted = list(labels) if wanted is None else list(wanted)
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise InputError(path, "structures", f"names among the channel labels {list(labels)}", got=unknown)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(path, "file", "a readable NIfTI/NRRD image", got=reason[:200]) from None
    if _suffix(path.name) in (".nii", ".nii.gz"):
        check_nifti_complete(path)  # SimpleITK reads a cut-short NIfTI as zeros (NRRD: it raises)
    # A view into the image's buffer: every channel handed out is copied (np.array(copy=True)), never a view,
    # since a view (arr[c] of the 4D layout is already contiguous, so ascontiguousarray would not copy) would
    # outlive ``image`` once the caller drops this generator: freed memory, a crash or silently wrong values.
    arr = sitk.GetArrayViewFromImage(image)  # vector: (z, y, x, c); 4d: (c, z, y, x)
    for s in sorted(wanted, key=lambda w: index[w]):
        c = index[s]
        chan = arr[..., c] if layout == "vector" else arr[c]
        yield s, Volume(np.array(chan, order="C", copy=True), geom.spacing, geom.origin, geom.direction.copy())

