"""nnU-Net v2 ``--save_probabilities`` output: ``<case>.npz`` probability maps and ``dataset.json`` labels.

What was verified in MIC-DKFZ/nnUNet (``nnunetv2/inference/export_prediction.py``,
``nnunetv2/utilities/label_handling/label_handling.py``, ``nnunetv2/imageio/*_reader_writer.py``,
``nnunetv2/inference/predict_from_raw_data.py``, ``documentation/dataset_format.md``; read, not copied):

* ``export_prediction_from_logits`` writes ``np.savez_compressed(<case>.npz, probabilities=...)`` (a zip with
  one member ``probabilities.npy``) and the case's properties with ``save_pickle(<case>.pkl)``. This module
  reads the ``.npy`` header and raw data of that member itself (nothing is unpickled: an object dtype is
  an error) and never opens the ``.pkl``.
* The array is ``(C, *image_shape)``: probabilities (softmax for label-based training) resampled back to
  the original spacing, put back into the uncropped image (voxels outside nnU-Net's crop get background
  = 1, the other channels 0) and transposed back with ``transpose_backward`` (``[0] + [i + 1 for i in
  transpose_backward]``), so the spatial axes are in the order the image reader returned them.
  ``SimpleITKIO`` reads with ``sitk.GetArrayFromImage``: (z, y, x), the order of
  :attr:`AutoSegSensitivity.volume.Volume.array` for the same file; ``NibabelIO`` transposes nibabel's
  (x, y, z) with ``(2, 1, 0)`` "to be consistent with the way SimpleITK reads images", so (z, y, x) in the
  file's voxel order as well. ``NibabelIOWithReorient`` and ``SimpleITKIOWithReorient`` first reorient
  to RAS: their arrays are *not* in the file's order, so a ``plans.json`` naming them (or any reader not
  known to keep the order) is refused (:func:`check_plans`). Hence channel ``c`` of
  the array lies voxel for voxel on the reference image's (z, y, x) array; only the shape can be checked
  here (the ``.npz`` holds no geometry), the geometry comes from the reference case.
* ``dataset.json`` ``labels`` maps *name -> integer* (v2; v1 had value -> name); ``background`` must be 0;
  label values must be consecutive (0, 1, 2, ...); an ``ignore`` label (the highest value) is not an
  output channel. The softmax has ``len(all_labels)`` channels in sorted label order, so **channel index
  = label value**. Region-based training (a label whose value is a list of several labels) makes the
  channels sigmoid *regions* in ``regions_class_order``, not labels: refused with a clear error.
* The predictor copies ``dataset.json`` and ``plans.json`` into the output folder, so both are found next
  to the ``.npz`` files by default.
* The dtype is float32 in current versions (float16 in early v2 versions); both are accepted.

:func:`iter_probabilities` streams the ``.npz`` one channel at a time (the ``.npy`` member is C-ordered,
so each channel is one contiguous block): memory is one channel, whatever the number of labels.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from .jsonfile import read_json

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["read_dataset_labels", "check_plans", "npz_header", "iter_probabilities", "read_probabilities",
           "segmentation_file", "dataset_file_ending"]

PROBABILITIES = "probabilities"
READERS_IN_IMAGE_ORDER = ("SimpleITKIO", "NibabelIO", "Tiff3DIO", "NaturalImage2DIO")


def read_dataset_labels(path: PathLike) -> Dict[str, int]:
    """The foreground labels of an nnU-Net v2 ``dataset.json`` as ``{name: label value}`` (= channel index),
    in label order. :class:`InputError` naming the file and field for unreadable JSON, a missing or
    malformed ``labels``, a background other than 0, non-consecutive values or region-based labels."""
    path = Path(path)
    data = read_json(path, "an nnU-Net dataset.json")
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, "labels", "an object {name: integer label value}", got=type(labels).__name__)
    out: Dict[str, int] = {}
    for name, value in labels.items():
        if name == "ignore":
            continue
        if isinstance(value, (list, tuple)):
            if len(value) > 1:
                raise InputError(path, f"labels.{name}", "one integer label value (region-based training is "
                                 "not supported: its channels are sigmoid regions, not labels)", got=value)
            value = value[0] if value else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise InputError(path, f"labels.{name}", "an integer label value", got=repr(value))
        out[str(name)] = int(value)
    if out.get("background") != 0:
        raise InputError(path, "labels.background", "0 (nnU-Net's background label)", got=out.get("background"))
    values = sorted(out.values())
    if values != list(range(len(values))):
        raise InputError(path, "labels", "consecutive label values 0, 1, 2, ... (nnU-Net's rule)", got=values)
    return {n: v for n, v in sorted(out.items(), key=lambda kv: kv[1]) if n != "background"}


def check_plans(path: PathLike) -> None:
    """Refuse a ``plans.json`` whose ``image_reader_writer`` returns arrays not in the image file's order
    (``NibabelIOWithReorient``). A missing file or key is accepted (nothing to check)."""
    path = Path(path)
    if not path.is_file():
        return
    data = read_json(path, "an nnU-Net plans.json")
    rw = data.get("image_reader_writer") if isinstance(data, dict) else None
    if rw is not None and rw not in READERS_IN_IMAGE_ORDER:
        raise InputError(path, "image_reader_writer", f"a reader that keeps the image's voxel order "
                         f"({', '.join(READERS_IN_IMAGE_ORDER)})", got=rw)


def _open_member(zf: zipfile.ZipFile, path: Path):
    names = zf.namelist()
    member = PROBABILITIES + ".npy"
    if member not in names:
        raise InputError(path, PROBABILITIES, "an array 'probabilities' (nnU-Net --save_probabilities)",
                         got=f"members {[n[:-4] if n.endswith('.npy') else n for n in names]}")
    fh = zf.open(member)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        return fh, tuple(int(n) for n in shape), bool(fortran), np.dtype(dtype)
    except Exception as exc:  # numpy parses the header text with ast/tokenize: any of their errors
        fh.close()
        raise InputError(path, PROBABILITIES, "a readable .npy header", got=f"{type(exc).__name__}: {exc}"[:120]) from None


def npz_header(path: PathLike) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype of the ``probabilities`` array of an nnU-Net ``.npz`` (reads the header only)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            fh, shape, _, dtype = _open_member(zf, path)
            fh.close()
    except InputError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, zlib.error) as exc:
        raise InputError(path, "file", "a readable .npz (numpy zip) file", got=str(exc)[:120]) from None
    return shape, dtype


def iter_probabilities(path: PathLike, labels: Dict[str, int], shape_zyx: Optional[Sequence[int]] = None,
                       wanted: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """Yield ``(structure, probabilities (z, y, x))`` for the structures ``wanted`` (default all of
    ``labels``, from :func:`read_dataset_labels`) in channel order, reading one channel at a time.

    The array must be floating, 4D ``(C, z, y, x)`` with ``C = len(labels) + 1`` (background included) and,
    when ``shape_zyx`` is given (the reference image's array shape), ``(z, y, x) == shape_zyx``;
    otherwise an :class:`InputError` names the file, the field and the expected value."""
    path = Path(path)
    wanted = list(labels) if wanted is None else list(wanted)
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise InputError(path, "structures", f"names among the dataset.json labels {list(labels)}", got=unknown)
    by_channel = {labels[w]: w for w in wanted}
    if not path.is_file():
        raise InputError(path, "file", "an nnU-Net .npz probability file", got="no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            fh, shape, fortran, dtype = _open_member(zf, path)
            with fh:
                if dtype.hasobject or not np.issubdtype(dtype, np.floating):
                    raise InputError(path, f"{PROBABILITIES} dtype", "floating-point probabilities", got=dtype)
                if len(shape) != 4:
                    raise InputError(path, f"{PROBABILITIES} shape", "(C, z, y, x)", got=shape)
                if shape[0] != len(labels) + 1:
                    raise InputError(path, f"{PROBABILITIES} channels", f"{len(labels) + 1} (background and "
                                     f"the dataset.json labels {list(labels)})", got=shape[0])
                if shape_zyx is not None and tuple(shape[1:]) != tuple(int(n) for n in shape_zyx):
                    raise InputError(path, f"{PROBABILITIES} shape", f"(C, {', '.join(map(str, shape_zyx))}): "
                                     "the reference image's (z, y, x) array", got=shape)
                if fortran:
                    raise InputError(path, PROBABILITIES, "a C-ordered array", got="Fortran order")
                n = int(np.prod(shape[1:]))
                nbytes = n * dtype.itemsize
                last = max(by_channel) if by_channel else -1
                for c in range(last + 1):
                    if c not in by_channel:
                        _skip(fh, nbytes)
                        continue
                    buf = _read_exactly(fh, nbytes, path)
                    yield by_channel[c], np.frombuffer(buf, dtype=dtype).reshape(shape[1:])
    except InputError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise InputError(path, "file", "a readable .npz (numpy zip) file", got=str(exc)[:120]) from None
    except ValueError as exc:  # numpy's reader on a damaged array
        raise InputError(path, PROBABILITIES, "a readable .npy array in the .npz", got=str(exc)[:120]) from None


def _skip(fh, nbytes: int, block: int = 1 << 24) -> None:
    while nbytes > 0:
        got = fh.read(min(block, nbytes))
        if not got:
            raise EOFError("truncated probabilities array")
        nbytes -= len(got)


def _read_exactly(fh, nbytes: int, path: Path) -> bytearray:
    buf = bytearray(nbytes)
    view = memoryview(buf)
    pos = 0
    while pos < nbytes:
        k = fh.readinto(view[pos:])
        if not k:
            raise InputError(path, PROBABILITIES, f"{nbytes} bytes of data per channel", got=f"{pos} (truncated)")
        pos += k
    return buf


def read_probabilities(path: PathLike, labels: Dict[str, int], shape_zyx: Optional[Sequence[int]] = None,
                       wanted: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """All channels :func:`iter_probabilities` yields, as ``{structure: (z, y, x) array}``."""
    return dict(iter_probabilities(path, labels, shape_zyx, wanted))


def dataset_file_ending(path: PathLike) -> str:
    """The ``file_ending`` of a ``dataset.json`` (default ``.nii.gz``)."""
    data = read_json(path, "an nnU-Net dataset.json")
    ending = data.get("file_ending") if isinstance(data, dict) else None
    return ending if isinstance(ending, str) and ending.startswith(".") else ".nii.gz"


def segmentation_file(npz_path: PathLike, file_ending: str = ".nii.gz") -> Optional[Path]:
    """The segmentation nnU-Net wrote beside ``<case>.npz`` (``<case><file_ending>``), which carries the
    case's geometry, or None if it is not there."""
    p = Path(npz_path)
    seg = p.with_name(p.name[: -len(".npz")] + file_ending)
    return seg if seg.is_file() else None
