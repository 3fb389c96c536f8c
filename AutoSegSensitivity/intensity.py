"""CT intensity transforms: Segmental Linear Functions (SLF) and plain windows (NLF).

Lei et al. (paper 004, section 3.1) map Hounsfield units ``h`` to network input ``x`` in [0, 1] with a
piecewise-linear function through K points ``(h_i, x_i)`` (``h_1 < ... < h_K``, ``x_1 <= ... <= x_K`` in
[0, 1])::

    x = 0                                                   h <  h_1
    x = x_i + (h - h_i) / (h_{i+1} - h_i) * (x_{i+1} - x_i)  h_i <= h <= h_{i+1}
    x = 1                                                   h >  h_K

(The equation printed in the paper is garbled; this is the intended map, drawn in its Fig. 3.) At the
knots the value is exactly ``x_i``. The presets have ``x_1 = 0`` and ``x_K = 1``, so they are continuous:

======  ==============================  ======================
name    HU points                       values
======  ==============================  ======================
SLF1    -500, -200, 200, 1500           0, 0.2, 0.8, 1.0
SLF2    -500, -100, 100, 1500           0, 0.2, 0.8, 1.0
SLF3    -500, -100, 400, 1500           0, 0.2, 0.8, 1.0
NLF1    -100, 100                       0, 1   (soft-tissue window)
NLF2    -500, 800                       0, 1   (wide window)
======  ==============================  ======================

``SLF1-CODE`` (name case-insensitive, e.g. ``SLF1-code``) is the variant of SepNet's released
preprocessing: HU points -500, -100, 400, 1500 with values 0, 0.1, 0.8, 1 (``thresh_lis`` / ``norm_lis``
in ``data_process/Preprocess.py`` of github.com/HiLab-git/SepNet, commit fb9fbbc, applied by
``img_multi_thresh_normalized`` in ``data_process/data_process_func.py``: the same piecewise-linear map,
0 below the first point, 1 above the last). It differs from every printed SLF (SLF3's points with 0.1
instead of 0.2 at -100 HU); use it to reproduce the code, the printed presets to reproduce the paper.

A transform is written as a preset name (``"SLF1"``) or as points ``"-500:0,-200:0.2,200:0.8,1500:1"``
(HU:value pairs, comma or space separated); :func:`get_transform` parses both. Several transforms applied
to one image give one input channel each (:func:`stack_transforms`). :func:`apply_transform` (numpy) and
:func:`apply_transform_torch` give the same values (float32).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np

from .errors import InputError

_SLF_VALUES = (0.0, 0.2, 0.8, 1.0)
_BLOCK = 1 << 22  # apply_transform works on blocks of 4 M voxels to bound its float64 working memory


@dataclass(frozen=True)
class SegmentalLinearFunction:
    """A piecewise-linear map from HU to [0, 1] through ``(hu_points[i], values[i])``.

    Below the first HU point the result is 0, above the last it is 1, between neighbouring points it is
    linear, and at a point it is that point's value. ``hu_points`` must be strictly increasing (at least
    two), ``values`` non-decreasing within [0, 1]; otherwise :class:`InputError`. ``name`` is a label
    only (the preset name, or ``"custom"``)."""

    hu_points: Tuple[float, ...]
    values: Tuple[float, ...]
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        src = f"intensity transform {self.name}"
        try:
            hu = tuple(float(v) for v in self.hu_points)
            xs = tuple(float(v) for v in self.values)
        except (TypeError, ValueError):
            raise InputError(src, "points", "numbers for hu_points and values",
                             got=(self.hu_points, self.values)) from None
        if len(hu) != len(xs):
            raise InputError(src, "points", "as many values as HU points", got=f"{len(hu)} HU, {len(xs)} values")
        if len(hu) < 2:
            raise InputError(src, "points", "at least 2 (HU, value) points", got=len(hu))
        if not all(np.isfinite(hu)) or not all(np.isfinite(xs)):
            raise InputError(src, "points", "finite numbers", got=(hu, xs))
        if any(b <= a for a, b in zip(hu, hu[1:])):
            raise InputError(src, "hu_points", "strictly increasing HU values", got=list(hu))
        if any(v < 0.0 or v > 1.0 for v in xs):
            raise InputError(src, "values", "values within [0, 1]", got=list(xs))
        if any(b < a for a, b in zip(xs, xs[1:])):
            raise InputError(src, "values", "non-decreasing values", got=list(xs))
        object.__setattr__(self, "hu_points", hu)
        object.__setattr__(self, "values", xs)
        object.__setattr__(self, "name", str(self.name))

    # ---- application ----------------------------------------------------------------------------------
    def __call__(self, array_hu: Any) -> Any:
        """Apply to a numpy array (-> float32 ndarray) or a torch tensor (-> floating tensor)."""
        if _is_tensor(array_hu):
            return apply_transform_torch(array_hu, self)
        return apply_transform(array_hu, self)

    @property
    def hu_range(self) -> Tuple[float, float]:
        """``(h_1, h_K)``: below and above these the output is constant (0 and 1)."""
        return self.hu_points[0], self.hu_points[-1]

    # ---- text and JSON --------------------------------------------------------------------------------
    def to_string(self) -> str:
        """Points as ``"h1:x1,h2:x2,..."`` (what :func:`parse_transform` reads back exactly)."""
        return ",".join(f"{_fmt(h)}:{_fmt(x)}" for h, x in zip(self.hu_points, self.values))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly ``{"name", "hu_points", "values"}`` (what checkpoints store)."""
        return {"name": self.name, "hu_points": list(self.hu_points), "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegmentalLinearFunction":
        """Inverse of :meth:`to_dict`; ``name`` is optional. :class:`InputError` for a malformed mapping."""
        if not isinstance(data, Mapping) or "hu_points" not in data or "values" not in data:
            raise InputError("intensity transform", "mapping", "a mapping with 'hu_points' and 'values'",
                             got=data)
        unknown = set(data) - {"name", "hu_points", "values"}
        if unknown:
            raise InputError("intensity transform", "mapping", "only the keys name, hu_points, values",
                             got=sorted(unknown))
        hu, xs = data["hu_points"], data["values"]
        if isinstance(hu, (str, bytes)) or isinstance(xs, (str, bytes)):
            raise InputError("intensity transform", "points", "lists of numbers", got=(hu, xs))
        try:
            hu, xs = list(hu), list(xs)
        except TypeError:
            raise InputError("intensity transform", "points", "lists of numbers", got=(hu, xs)) from None
        return cls(tuple(hu), tuple(xs), str(data.get("name", "custom")))


def _fmt(v: float) -> str:
    return repr(float(v)).rstrip("0").rstrip(".") if float(v) != int(v) else str(int(v))


PRESETS: Dict[str, SegmentalLinearFunction] = {
    "SLF1": SegmentalLinearFunction((-500.0, -200.0, 200.0, 1500.0), _SLF_VALUES, "SLF1"),
    "SLF2": SegmentalLinearFunction((-500.0, -100.0, 100.0, 1500.0), _SLF_VALUES, "SLF2"),
    "SLF3": SegmentalLinearFunction((-500.0, -100.0, 400.0, 1500.0), _SLF_VALUES, "SLF3"),
    "NLF1": SegmentalLinearFunction((-100.0, 100.0), (0.0, 1.0), "NLF1"),
    "NLF2": SegmentalLinearFunction((-500.0, 800.0), (0.0, 1.0), "NLF2"),
}
PRESETS["SLF1-CODE"] = SegmentalLinearFunction((-500.0, -100.0, 400.0, 1500.0), (0.0, 0.1, 0.8, 1.0), "SLF1-CODE")
"""The transforms of Lei et al. (paper 004): three SLFs and two plain windows (NLF) as printed, and the
variant of SepNet's released code (``SLF1-CODE``, see the module docstring)."""

TransformSpec = Union[str, SegmentalLinearFunction, Mapping[str, Any], Sequence[Sequence[float]]]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PAIR = re.compile(rf"^\s*({_NUMBER})\s*:\s*({_NUMBER})\s*$")


def parse_transform(text: str) -> SegmentalLinearFunction:
    """Parse a preset name (``"SLF1"``, case-insensitive) or points ``"-500:0,-200:0.2,200:0.8,1500:1"``
    (``HU:value`` pairs separated by commas, semicolons or spaces). :class:`InputError` otherwise."""
    if not isinstance(text, str):
        raise InputError("intensity transform", "text", "a preset name or 'HU:value,...' points", got=repr(text))
    key = text.strip()
    if key.upper() in PRESETS:
        return PRESETS[key.upper()]
    pieces = [p for p in re.split(r"[,;\s]+", key) if p]
    if not pieces or not all(":" in p for p in pieces):
        raise InputError("intensity transform", "name or points",
                         f"one of {', '.join(PRESETS)} or 'HU:value' pairs like '-500:0,-200:0.2,200:0.8,1500:1'",
                         got=repr(text))
    hu, xs = [], []
    for p in pieces:
        m = _PAIR.match(p)
        if not m:
            raise InputError("intensity transform", "point", "'HU:value' with two numbers", got=repr(p))
        hu.append(float(m.group(1)))
        xs.append(float(m.group(2)))
    return SegmentalLinearFunction(tuple(hu), tuple(xs), "custom")


def get_transform(name_or_points: TransformSpec) -> SegmentalLinearFunction:
    """The transform for a preset name or points string (see :func:`parse_transform`), a
    :meth:`SegmentalLinearFunction.to_dict` mapping, a sequence of ``(HU, value)`` pairs, or a
    :class:`SegmentalLinearFunction` (returned as is)."""
    spec = name_or_points
    if isinstance(spec, SegmentalLinearFunction):
        return spec
    if isinstance(spec, str):
        return parse_transform(spec)
    if isinstance(spec, Mapping):
        return SegmentalLinearFunction.from_dict(spec)
    try:
        pairs = [tuple(p) for p in spec]  # type: ignore[union-attr]
    except TypeError:
        raise InputError("intensity transform", "spec", "a preset name, 'HU:value,...' points, a mapping or "
                         "(HU, value) pairs", got=repr(spec)) from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise InputError("intensity transform", "points", "(HU, value) pairs", got=repr(spec))
    return SegmentalLinearFunction(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs), "custom")


def get_transforms(specs: Union[TransformSpec, Iterable[TransformSpec]]) -> List[SegmentalLinearFunction]:
    """A list of transforms from one spec or several: ``"SLF1"``, ``"SLF1,SLF2"`` (names only),
    ``["SLF1", "-100:0,100:1"]``..."""
    if isinstance(specs, (SegmentalLinearFunction, Mapping)):
        return [get_transform(specs)]
    if isinstance(specs, str):
        parts = [p.strip() for p in specs.split(",") if p.strip()]
        if parts and all(p.upper() in PRESETS for p in parts):
            return [PRESETS[p.upper()] for p in parts]
        return [get_transform(specs)]
    items = list(specs)
    if items and all(isinstance(v, (int, float, np.number)) for v in np.ravel(np.asarray(items, dtype=object))) \
            and np.asarray(items, dtype=object).ndim == 2:
        return [get_transform(items)]  # one list of (HU, value) pairs
    out = [get_transform(s) for s in items]
    if not out:
        raise InputError("intensity transform", "list", "at least one transform", got=specs)
    return out


def apply_transform(array_hu: Any, transform: TransformSpec) -> np.ndarray:
    """Map an HU array (any shape, any numeric dtype) through ``transform``; returns float32 in [0, 1]
    of the same shape. NaN stays NaN."""
    t = get_transform(transform)
    a = np.asarray(array_hu)
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
        raise InputError("apply_transform", "array", "a real numeric array of HU", got=a.dtype)
    hu = np.asarray(t.hu_points)
    xs = np.asarray(t.values)
    flat = a.reshape(-1)
    out = np.empty(flat.shape, dtype=np.float32)
    step = _BLOCK
    for start in range(0, flat.size, step):
        block = flat[start:start + step].astype(np.float64)
        val = np.interp(block, hu, xs)
        val[block < hu[0]] = 0.0
        val[block > hu[-1]] = 1.0
        val[np.isnan(block)] = np.nan
        out[start:start + step] = val
    return out.reshape(a.shape)


def apply_transform_torch(tensor: Any, transform: TransformSpec) -> Any:
    """The same map for a torch tensor, on its device (integer tensors become float32, floating tensors
    keep their dtype; half precision is computed in float32). Differentiable inside the segments."""
    import torch

    t = get_transform(transform)
    if not isinstance(tensor, torch.Tensor):
        raise InputError("apply_transform_torch", "tensor", "a torch.Tensor of HU", got=type(tensor).__name__)
    if tensor.is_complex():
        raise InputError("apply_transform_torch", "tensor", "a real tensor of HU", got=tensor.dtype)
    x = tensor if torch.is_floating_point(tensor) else tensor.to(torch.float32)
    work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    out = torch.zeros_like(work)
    hu, xs = t.hu_points, t.values
    for i in range(len(hu) - 1):
        slope = (xs[i + 1] - xs[i]) / (hu[i + 1] - hu[i])
        inside = (work >= hu[i]) & (work <= hu[i + 1])
        out = torch.where(inside, xs[i] + (work - hu[i]) * slope, out)
    out = torch.where(work > hu[-1], torch.ones_like(work), out)
    out = torch.where(torch.isnan(work), work, out)
    return out.to(x.dtype)


def stack_transforms(array_hu: Any, transforms: Union[TransformSpec, Iterable[TransformSpec]]) -> np.ndarray:
    """Apply several transforms to one HU array; returns ``(C, *array.shape)`` float32, one channel per
    transform in the given order."""
    ts = get_transforms(transforms)
    return np.stack([apply_transform(array_hu, t) for t in ts], axis=0).astype(np.float32, copy=False)


def stack_transforms_torch(tensor: Any, transforms: Union[TransformSpec, Iterable[TransformSpec]],
                           dim: int = 0) -> Any:
    """Torch counterpart of :func:`stack_transforms`: the channels are stacked along ``dim``."""
    import torch

    ts = get_transforms(transforms)
    return torch.stack([apply_transform_torch(tensor, t) for t in ts], dim=dim)


def _is_tensor(obj: Any) -> bool:
    mod = type(obj).__module__
    if not mod.startswith("torch"):
        return False
    import torch

    return isinstance(obj, torch.Tensor)


__all__ = [
    "SegmentalLinearFunction", "PRESETS", "parse_transform", "get_transform", "get_transforms",
    "apply_transform", "apply_transform_torch", "stack_transforms", "stack_transforms_torch",
]
