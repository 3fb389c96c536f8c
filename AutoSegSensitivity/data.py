"""Training data: the preprocessing a checkpoint carries, prepared cases, and the samplers.

Everything here works on arrays in (z, y, x) order. Preprocessing is in-plane only (axial slices keep their
number and order), so it has an exact geometric inverse back to the input grid:

1. optional **centre crop** to ``crop = (cy, cx)`` voxels (paper 000: 300 x 300); parts of the crop box
   outside the image are filled with air (``air_hu``, -1000 HU);
2. the **intensity transform(s)** (``AutoSegSensitivity.intensity``), one channel per transform, so HU
   become (about) [0, 1];
3. optional **resize** to ``resize = (ry, rx)`` pixels (paper 000: 150 x 150), bilinear with the voxel
   corners of the old and new grids coinciding (``align_corners=False``, like
   :meth:`Volume.resample_to_shape`).

:meth:`Preprocessor.invert` maps per-slice network outputs back: resize to the crop size with the same
corner convention, then paste the crop box into the input-sized slice (zero outside the box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError

AIR_HU = -1000.0


# --------------------------------------------------------------------------------------------------------
# Intensity transforms (thin layer over AutoSegSensitivity.intensity)
# --------------------------------------------------------------------------------------------------------


def resolve_transforms(spec: Any, source: str = "config") -> list:
    """Intensity transforms for a config value: a preset name (``"NLF1"``), a list of names (one input
    channel each), a ``{"hu_points": [...], "values": [...]}`` mapping, or a list of such mappings."""
    from . import intensity

    items = spec if isinstance(spec, (list, tuple)) and (not spec or not isinstance(spec[0], (int, float))) else [spec]
    out = []
    for item in items:
        try:
            if isinstance(item, dict):
                out.append(transform_from_dict(item))
            else:
                out.append(intensity.get_transform(item))
        except InputError as exc:
            raise InputError(source, "intensity", exc.expected, got=exc.got) from exc
        except Exception as exc:  # noqa: BLE001 - any failure is a bad config value
            raise InputError(source, "intensity", f"a preset name or hu_points/values mapping ({exc})", got=item) from exc
    if not out:
        raise InputError(source, "intensity", "at least one intensity transform", got=spec)
    return out


def transform_to_dict(transform: Any) -> Dict[str, Any]:
    """JSON-friendly form of one transform (what a checkpoint stores)."""
    if hasattr(transform, "to_dict"):
        return dict(transform.to_dict())
    return {"hu_points": [float(v) for v in transform.hu_points], "values": [float(v) for v in transform.values]}


def transform_from_dict(data: Dict[str, Any]) -> Any:
    """Inverse of :func:`transform_to_dict`."""
    from . import intensity

    cls = intensity.SegmentalLinearFunction
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    return cls(data["hu_points"], data["values"])


# --------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------


def _pair(value: Any, name: str, source: str) -> Optional[Tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(source, name, "an integer or [rows, columns] pixels", got=value) from None
    if len(pair) != 2 or min(pair) < 1:
        raise InputError(source, name, "an integer or [rows, columns] pixels (positive)", got=value)
    return pair  # type: ignore[return-value]


def centre_box(shape_yx: Sequence[int], crop: Sequence[int]) -> Tuple[int, int, int, int]:
    """In-plane centre crop box ``(y0, y1, x0, x1)`` of size ``crop`` in an image of ``shape_yx`` (may
    extend outside the image when the image is smaller than the crop)."""
    y0 = (int(shape_yx[0]) - int(crop[0])) // 2
    x0 = (int(shape_yx[1]) - int(crop[1])) // 2
    return y0, y0 + int(crop[0]), x0, x0 + int(crop[1])


def _crop_yx(arr: np.ndarray, box: Tuple[int, int, int, int], fill: float) -> np.ndarray:
    """Crop the last two axes of ``arr`` to ``box`` (filling outside with ``fill``)."""
    y0, y1, x0, x1 = box
    ny, nx = arr.shape[-2:]
    out = np.full(arr.shape[:-2] + (y1 - y0, x1 - x0), fill, dtype=arr.dtype)
    sy0, sy1, sx0, sx1 = max(0, y0), min(ny, y1), max(0, x0), min(nx, x1)
    if sy1 > sy0 and sx1 > sx0:
        out[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = arr[..., sy0:sy1, sx0:sx1]
    return out


@dataclass
class Preprocessor:
    """The in-plane preprocessing a model was trained with (see the module docstring)."""

    transforms: list
    crop: Optional[Tuple[int, int]] = None
    resize: Optional[Tuple[int, int]] = None
    air_hu: float = AIR_HU

    @property
    def channels(self) -> int:
        """Input channels (one per intensity transform)."""
        return len(self.transforms)

    def pad_values(self) -> np.ndarray:
        """Per-channel value of air after the intensity transform (what padding uses)."""
        from .intensity import stack_transforms

        return np.asarray(stack_transforms(np.full((1,), self.air_hu, dtype=np.float32), self.transforms),
                          dtype=np.float32).reshape(-1)

    def output_shape_yx(self, shape_yx: Sequence[int]) -> Tuple[int, int]:
        """In-plane size the network sees for an input of ``shape_yx``."""
        if self.resize is not None:
            return tuple(self.resize)  # type: ignore[return-value]
        if self.crop is not None:
            return tuple(self.crop)  # type: ignore[return-value]
        return tuple(int(v) for v in shape_yx)  # type: ignore[return-value]

    def image(self, hu: np.ndarray) -> np.ndarray:
        """HU slices ``(n, y, x)`` -> network input ``(n, C, ry, rx)`` float32."""
        from .intensity import stack_transforms

        hu = np.asarray(hu)
        if self.crop is not None:
            hu = _crop_yx(hu, centre_box(hu.shape[-2:], self.crop), self.air_hu)
        x = np.asarray(stack_transforms(hu.astype(np.float32, copy=False), self.transforms), dtype=np.float32)
        x = np.ascontiguousarray(np.moveaxis(x, 0, 1))  # (n, C, y, x)
        if self.resize is not None and tuple(x.shape[-2:]) != tuple(self.resize):
            x = _resize(x, self.resize)
        return x

    def labels(self, masks: np.ndarray) -> np.ndarray:
        """Masks ``(K, n, y, x)`` -> targets ``(n, K, ry, rx)`` uint8 in {0, 1}."""
        m = np.asarray(masks)
        if self.crop is not None:
            m = _crop_yx(m.astype(np.uint8), centre_box(m.shape[-2:], self.crop), 0)
        m = np.ascontiguousarray(np.moveaxis(m.astype(np.float32), 0, 1))
        if self.resize is not None and tuple(m.shape[-2:]) != tuple(self.resize):
            m = _resize(m, self.resize)
        return (m >= 0.5).astype(np.uint8)

    def invert(self, prob: np.ndarray, shape_yx: Sequence[int]) -> np.ndarray:
        """Network-space maps ``(n, K, ry, rx)`` -> ``(n, K, y, x)`` on the input slices (zero outside the
        crop box). Exact geometric inverse of :meth:`image`."""
        prob = np.asarray(prob, dtype=np.float32)
        shape_yx = tuple(int(v) for v in shape_yx)
        crop = tuple(self.crop) if self.crop is not None else shape_yx
        if tuple(prob.shape[-2:]) != crop:
            prob = _resize(prob, crop)
        if self.crop is None:
            return prob
        y0, y1, x0, x1 = centre_box(shape_yx, crop)
        out = np.zeros(prob.shape[:-2] + shape_yx, dtype=np.float32)
        ny, nx = shape_yx
        sy0, sy1, sx0, sx1 = max(0, y0), min(ny, y1), max(0, x0), min(nx, x1)
        if sy1 > sy0 and sx1 > sx0:
            out[..., sy0:sy1, sx0:sx1] = prob[..., sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form stored in checkpoints."""
        return {"transforms": [transform_to_dict(t) for t in self.transforms],
                "crop": list(self.crop) if self.crop else None,
                "resize": list(self.resize) if self.resize else None,
                "air_hu": float(self.air_hu)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Preprocessor":
        """Inverse of :meth:`to_dict`."""
        return cls([transform_from_dict(t) for t in data["transforms"]], _pair(data.get("crop"), "crop", "checkpoint"),
                   _pair(data.get("resize"), "resize", "checkpoint"), float(data.get("air_hu", AIR_HU)))


def _resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear in-plane resize of ``(n, C, y, x)`` float32 with corner-aligned grids."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if t.shape[0] == 0:
        return np.zeros(tuple(t.shape[:2]) + tuple(int(s) for s in size), dtype=np.float32)
    out = F.interpolate(t, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return out.numpy()


def pad_to_multiple(x: "Any", divisor: int, value: Any = 0.0, dims: int = 2) -> Tuple["Any", Tuple[int, ...]]:
    """Pad the last ``dims`` axes of a torch tensor at their end up to a multiple of ``divisor``.

    ``value`` is a scalar or a per-channel sequence (axis 1). Returns the padded tensor and the original
    sizes (to crop the output back)."""
    import torch

    sizes = tuple(int(s) for s in x.shape[-dims:])
    target = tuple(-(-s // divisor) * divisor for s in sizes)
    if target == sizes:
        return x, sizes
    out_shape = tuple(x.shape[:-dims]) + target
    vals = torch.as_tensor(np.asarray(value, dtype=np.float32), dtype=x.dtype, device=x.device)
    if vals.ndim == 0:
        out = torch.full(out_shape, float(vals), dtype=x.dtype, device=x.device)
    else:
        out = vals.reshape((1, -1) + (1,) * dims).expand(out_shape).clone()
    out[(Ellipsis,) + tuple(slice(0, s) for s in sizes)] = x
    return out, sizes


# --------------------------------------------------------------------------------------------------------
# Prepared cases and sampling
# --------------------------------------------------------------------------------------------------------


@dataclass
class PreparedCase:
    """One case in network space: ``image`` (C, z, y, x) float32, ``labels`` (K, z, y, x) uint8.

    ``fg_slices`` / ``fg_voxels``: slices (z) / voxels (z, y, x) holding any class; ``class_fg_slices`` /
    ``class_fg_voxels``: the same per class (one array per label channel), what class-balanced
    foreground sampling draws from."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    fg_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    fg_voxels: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=int))
    class_fg_slices: List[np.ndarray] = field(default_factory=list)
    class_fg_voxels: List[np.ndarray] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[1])

    def slices_of(self, k: int) -> np.ndarray:
        """Slices holding class ``k`` (any class when the per-class lists are absent)."""
        return self.class_fg_slices[k] if self.class_fg_slices else self.fg_slices

    def voxels_of(self, k: int) -> np.ndarray:
        """Voxels holding class ``k`` (any class when the per-class lists are absent)."""
        return self.class_fg_voxels[k] if self.class_fg_voxels else self.fg_voxels


def _cap(vox: np.ndarray, max_n: int, seed: Any) -> np.ndarray:
    if len(vox) > max_n:
        pick = np.random.default_rng(seed).choice(len(vox), max_n, replace=False)
        vox = vox[np.sort(pick)]
    return vox


def prepare_case(name: str, hu: np.ndarray, masks: np.ndarray, pre: Preprocessor, seed: int = 0,
                 max_fg_voxels: int = 50000) -> PreparedCase:
    """Preprocess a case: ``hu`` (z, y, x), ``masks`` (K, z, y, x) bool. Foreground voxel lists are capped
    at ``max_fg_voxels`` (any class, and per class) by a seeded random subset."""
    image = np.ascontiguousarray(np.moveaxis(pre.image(hu), 1, 0))  # (C, z, y, x)
    labels = np.ascontiguousarray(np.moveaxis(pre.labels(masks), 1, 0))  # (K, z, y, x)
    anyfg = labels.any(axis=0)
    fg_slices = np.flatnonzero(anyfg.any(axis=(1, 2)))
    fg_vox = _cap(np.argwhere(anyfg), max_fg_voxels, seed)
    cls_slices = [np.flatnonzero(labels[k].any(axis=(1, 2))) for k in range(labels.shape[0])]
    cls_vox = [_cap(np.argwhere(labels[k]), max_fg_voxels, (seed, k)) for k in range(labels.shape[0])]
    return PreparedCase(name, image, labels, fg_slices, fg_vox, cls_slices, cls_vox)


def prominence(cases: Sequence[PreparedCase], class_names: Sequence[str]) -> Dict[str, float]:
    """Paper 000 Eq. 4: per class, the fraction of all training voxels that are true (network space)."""
    total = sum(int(np.prod(c.labels.shape[1:])) for c in cases)
    out = {}
    for k, name in enumerate(class_names):
        true = sum(int(c.labels[k].sum(dtype=np.int64)) for c in cases)
        out[name] = true / total if total else 0.0
    return out


def _n_classes(cases: Sequence[PreparedCase]) -> int:
    return max((len(c.class_fg_slices) if c.class_fg_slices else 1) for c in cases) if cases else 0


def sample_slices(cases: Sequence[PreparedCase], n: int, rng: np.random.Generator,
                  foreground_fraction: Optional[float]) -> List[Tuple[int, int]]:
    """``n`` (case index, slice index) pairs. Without ``foreground_fraction``: every slice once per pass, in
    shuffled order. With it, class-balanced: with that probability a sample first picks a class uniformly
    among the classes with foreground somewhere in ``cases``, then a slice holding that class uniformly
    over all cases; otherwise any slice. So each of ``K`` present classes gets about
    ``foreground_fraction / K`` of the samples on its own slices, however small it is."""
    all_idx = [(ci, z) for ci, c in enumerate(cases) for z in range(c.n_slices)]
    if foreground_fraction is None:
        out: List[Tuple[int, int]] = []
        while len(out) < n:
            perm = rng.permutation(len(all_idx))
            out.extend(all_idx[i] for i in perm)
        return out[:n]
    per_class = [[(ci, int(z)) for ci, c in enumerate(cases) for z in c.slices_of(k)]
                 for k in range(_n_classes(cases))]
    per_class = [idx for idx in per_class if idx]
    out = []
    for _ in range(n):
        if per_class and rng.random() < foreground_fraction:
            idx = per_class[rng.integers(len(per_class))]
            out.append(idx[rng.integers(len(idx))])
        else:
            out.append(all_idx[rng.integers(len(all_idx))])
    return out


def sample_patches(cases: Sequence[PreparedCase], n: int, rng: np.random.Generator, patch: Sequence[int],
                   foreground_fraction: Optional[float]) -> List[Tuple[int, Tuple[int, int, int]]]:
    """``n`` (case index, patch start (z, y, x)) pairs; with probability ``foreground_fraction`` the patch
    holds a foreground voxel (paper 002: 0.8), class-balanced: a class picked uniformly among those with
    foreground in ``cases``, then a case holding it, then one of its voxels of that class; else the patch
    lies anywhere in a random case. Starts may be negative or run past the end where a case is smaller than
    the patch (the crop pads)."""
    out = []
    patch = np.asarray(patch, dtype=int)
    holders = [[ci for ci, c in enumerate(cases) if len(c.voxels_of(k))] for k in range(_n_classes(cases))]
    classes = [k for k, h in enumerate(holders) if h]
    for _ in range(n):
        if foreground_fraction is not None and classes and rng.random() < foreground_fraction:
            k = classes[rng.integers(len(classes))]
            ci = holders[k][rng.integers(len(holders[k]))]
            c = cases[ci]
            shape = np.asarray(c.image.shape[1:], dtype=int)
            hi = np.maximum(shape - patch, 0)
            vox = c.voxels_of(k)
            centre = vox[rng.integers(len(vox))]
            # Any start that keeps the voxel inside the patch, clipped to the image where possible.
            lo_s = np.maximum(centre - patch + 1, 0)
            hi_s = np.minimum(centre, hi)
            lo_s = np.minimum(lo_s, hi_s)
            start = np.array([rng.integers(a, b + 1) for a, b in zip(lo_s, hi_s)])
        else:
            ci = int(rng.integers(len(cases)))
            shape = np.asarray(cases[ci].image.shape[1:], dtype=int)
            hi = np.maximum(shape - patch, 0)
            start = np.array([rng.integers(0, h + 1) for h in hi])
        out.append((ci, tuple(int(s) for s in start)))
    return out


def crop_patch(arr: np.ndarray, start: Sequence[int], size: Sequence[int], fill: Any) -> np.ndarray:
    """Patch of ``arr`` (C, z, y, x) at ``start`` with ``size`` (z, y, x), per-channel ``fill`` outside."""
    c = arr.shape[0]
    fills = np.broadcast_to(np.asarray(fill, dtype=arr.dtype), (c,))
    out = np.empty((c,) + tuple(int(s) for s in size), dtype=arr.dtype)
    out[...] = fills.reshape(c, 1, 1, 1)
    src, dst = [], []
    for a, s, n in zip(start, size, arr.shape[1:]):
        lo, hi = max(0, a), min(n, a + s)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - a, max(lo, hi) - a))
    out[(slice(None),) + tuple(dst)] = arr[(slice(None),) + tuple(src)]
    return out


def lr_swap_permutation(class_names: Sequence[str]) -> List[int]:
    """Channel order after a left-right flip: ``X_L`` <-> ``X_R`` (also ``Left``/``Right`` suffixes)."""
    idx = {n: i for i, n in enumerate(class_names)}
    perm = list(range(len(class_names)))
    pairs = (("_L", "_R"), ("_l", "_r"), ("Left", "Right"), ("_left", "_right"))
    for i, n in enumerate(class_names):
        for a, b in pairs:
            for x, y in ((a, b), (b, a)):
                if n.endswith(x) and n[: -len(x)] + y in idx:
                    perm[i] = idx[n[: -len(x)] + y]
    return perm


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, flips: Sequence[str],
            intensity_shift: float, intensity_scale: float, lr_perm: Sequence[int], spatial_dims: int
            ) -> Tuple[np.ndarray, np.ndarray]:
    """Random flips (each named axis with probability 0.5; a flip along x swaps _L/_R channels) and a
    random intensity scale ``1 + U(-s, s)`` and shift ``U(-t, t)`` on ``image`` (C, ...) / ``labels`` (K, ...)."""
    axis_of = {"x": -1, "y": -2, "z": -3}
    for name in flips:
        if name == "z" and spatial_dims == 2:
            continue
        if rng.random() < 0.5:
            ax = axis_of[name]
            image = np.flip(image, axis=ax)
            labels = np.flip(labels, axis=ax)
            if name == "x":
                labels = labels[list(lr_perm)]
    if intensity_scale > 0 or intensity_shift > 0:
        scale = 1.0 + (rng.uniform(-intensity_scale, intensity_scale) if intensity_scale > 0 else 0.0)
        shift = rng.uniform(-intensity_shift, intensity_shift) if intensity_shift > 0 else 0.0
        image = image * np.float32(scale) + np.float32(shift)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)
