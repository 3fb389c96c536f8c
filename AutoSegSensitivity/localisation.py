"""Localise, then segment: low-resolution localisation, padded boxes, crop and paste back.

After Smith et al. (paper 002, "Localise to segment"):

1. **Localiser.** A segmentation model trained on low-resolution copies of the dataset
   (:func:`make_lowres_dataset`): width and height divided by 2 and depth by 3 by default
   (:data:`DEFAULT_FACTORS`, (z, y, x) divisors, configurable). Images are first smoothed against
   aliasing (Gaussian, per axis sigma = max(0, (n_old / n_new - 1) / 2) voxels, mirrored edges: the rule
   of ``skimage.transform.resize(anti_aliasing=True)``; ``anti_alias=False`` leaves it out), then
   resampled with linear interpolation over the same physical extent (voxel corners kept,
   :meth:`Volume.resample_to_shape`); without the smoothing a structure thinner than the new voxel
   appears or vanishes depending on where the coarse samples fall;
   masks either with nearest neighbour or by area averaging then thresholding at 0.5 (the default; a
   structure too small to reach 0.5 anywhere keeps its best-covered voxel, so small organs never vanish). At inference the largest connected component (26-connectivity) of the
   thresholded low-resolution output gives a box (:func:`largest_component_box`).
2. **Box to full resolution.** The low-resolution box is mapped with the exact per-axis ratio of the voxel
   counts (:func:`scale_box`, which covers every full-resolution voxel that overlaps it), clipped to the
   image, then grown by ``padding`` voxels (15 by default) on each side.
3. **Organ model.** Trained on crops around the reference organ plus ``padding`` voxels on each side
   (:func:`make_crop_dataset`). Where the padded box runs past the image edge, the image is padded with
   ``pad_value`` (-1000 HU, air, by default; 0 for the paper's zero padding) so the context always
   exists. Optional random variation of the padding (``jitter``) makes the organ model robust to
   imperfect localisation.
4. **Paste back.** The organ model's probability map on the crop is pasted into a full-size map (zeros
   outside the box): :func:`two_stage_predict`.

Instead of the localiser a user-drawn markups ROI can give the box ("ground truth localised" in the
paper): :func:`box_from_roi` clips an ROI that is partly outside the image (with a
:class:`LocalisationWarning`) and refuses one that is wholly outside (:class:`InputError`). The box written
back as an ROI (:func:`write_box_roi`, ``.mrk.json``) is the **organ box without padding**, so that a user
can inspect or adjust it and feed it back as ``--roi``: the same padding is then added again.

When the localiser finds nothing, the result says "organ not found" (``found=False``) and batch functions
(:func:`two_stage_predict_many`) go on with the next case.

All boxes are :class:`~AutoSegSensitivity.volume.Box` in array order (z, y, x), voxel indices.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from .errors import InputError
from .segmentation import Segmentation
from .volume import Box, Volume

DEFAULT_FACTORS: Tuple[float, float, float] = (3.0, 2.0, 2.0)
"""Divisors of the voxel counts (z, y, x) for the localiser's low-resolution copies (depth / 3,
height / 2, width / 2), as in Smith et al."""

DEFAULT_PADDING = 15
"""Voxels of context added on each side of the organ box (Smith et al.)."""

AIR_HU = -1000.0
"""Default fill for image voxels outside the image (air)."""


class LocalisationWarning(UserWarning):
    """Something about the localisation the user should know (an ROI clipped to the image, a case
    skipped while building a dataset)."""


# --------------------------------------------------------------------------------------------------------
# low resolution
# --------------------------------------------------------------------------------------------------------


def _factors(factors: Union[float, Sequence[float]]) -> np.ndarray:
    f = np.broadcast_to(np.asarray(factors, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise InputError("localisation", "factors", "three positive numbers (z, y, x divisors)", got=f.tolist())
    return f


def lowres_shape(shape: Sequence[int], factors: Union[float, Sequence[float]] = DEFAULT_FACTORS) -> Tuple[int, int, int]:
    """The low-resolution shape (z, y, x): each voxel count divided by its factor, rounded half up, at
    least 1."""
    f = _factors(factors)
    out = np.maximum(1, np.floor(np.asarray(shape, dtype=float) / f + 0.5)).astype(int)
    return tuple(int(v) for v in out)  # type: ignore[return-value]


def _area_matrix(n_old: int, n_new: int) -> np.ndarray:
    """(n_new, n_old) matrix of the fraction of each new voxel covered by each old voxel (rows sum to 1)."""
    ratio = n_old / n_new
    lo = np.arange(n_new)[:, None] * ratio
    hi = lo + ratio
    j = np.arange(n_old)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / ratio


def area_resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a 3D array to ``shape`` by exact area (volume) averaging: each new voxel is the mean of the
    old voxels under it, weighted by overlap, over the same extent (voxel corners kept). Float64."""
    out = np.asarray(array, dtype=np.float64)
    if out.ndim != 3:
        raise InputError("area_resize", "array", "a 3D array", got=out.ndim)
    for axis, n_new in enumerate(shape):
        m = _area_matrix(out.shape[axis], int(n_new))
        out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
    return out


def anti_alias_sigma(shape: Sequence[int], low_shape: Sequence[int]) -> np.ndarray:
    """Gaussian sigma (voxels of the original grid, per axis) that smooths an image before it is
    downsampled from ``shape`` to ``low_shape``: ``max(0, (n / n_low - 1) / 2)``, as
    ``skimage.transform.resize(anti_aliasing=True)`` chooses it (factor 2: 0.5, factor 3: 1)."""
    return np.maximum(0.0, (np.asarray(shape, float) / np.asarray(low_shape, float) - 1.0) / 2.0)


def make_lowres_image(image: Volume, factors: Union[float, Sequence[float]] = DEFAULT_FACTORS,
                      anti_alias: bool = True) -> Volume:
    """Low-resolution copy of an image (same physical extent): Gaussian anti-aliasing
    (:func:`anti_alias_sigma`, mirrored edges; float32 out) unless ``anti_alias`` is false, then linear
    interpolation."""
    low_shape = lowres_shape(image.shape, factors)
    if anti_alias:
        sigma = anti_alias_sigma(image.shape, low_shape)
        if np.any(sigma > 0):
            smooth = ndimage.gaussian_filter(np.asarray(image.array, dtype=np.float32), sigma, mode="mirror")
            image = image.with_array(smooth)
    return image.resample_to_shape(low_shape, interpolation="linear")


def make_lowres_mask(mask: np.ndarray, low_grid: Volume, method: str = "area", full_grid: Optional[Volume] = None) -> np.ndarray:
    """A boolean mask (z, y, x) on ``low_grid``.

    ``method="area"``: area average then ``>= 0.5`` (a non-empty mask that would vanish keeps the one
    low-resolution voxel it covers most, so tiny organs stay visible to the localiser); ``"nearest"``: nearest neighbour (needs ``full_grid``,
    the mask's own geometry)."""
    mask = np.asarray(mask, dtype=bool)
    if method == "area":
        frac = area_resize(mask, low_grid.shape)
        out = frac >= 0.5
        if mask.any() and not out.any():
            # a structure smaller than half a low-res voxel everywhere keeps its best-covered voxel
            out[np.unravel_index(int(np.argmax(frac)), frac.shape)] = True
        return out
    if method == "nearest":
        if full_grid is None:
            raise InputError("make_lowres_mask", "full_grid", "the mask's geometry for nearest-neighbour resampling")
        vol = Volume(mask, full_grid.spacing, full_grid.origin, full_grid.direction)
        return vol.resample_like(low_grid, interpolation="nearest").array.astype(bool)
    raise InputError("make_lowres_mask", "method", "'area' or 'nearest'", got=method)


def make_lowres_case(image: Volume, segmentation: Segmentation, factors: Union[float, Sequence[float]] = DEFAULT_FACTORS,
                     mask_method: str = "area", anti_alias: bool = True) -> Tuple[Volume, Segmentation]:
    """Low-resolution image (:func:`make_lowres_image`) and segmentation (every segment) of one case."""
    if segmentation.geometry.shape != image.shape:
        raise InputError("segmentation", "shape", f"the image shape {image.shape}", got=segmentation.geometry.shape)
    low = make_lowres_image(image, factors, anti_alias)
    seg = Segmentation.on_grid(low)
    for s in segmentation:
        seg.add(s.name, make_lowres_mask(s.mask, low, mask_method, full_grid=image), s.color, s.id)
    return low, seg


def make_lowres_dataset(src_root: Union[str, Path], dst_root: Union[str, Path],
                        factors: Union[float, Sequence[float]] = DEFAULT_FACTORS, mask_method: str = "area",
                        anti_alias: bool = True) -> List[Path]:
    """Write a low-resolution copy of every readable case of the dataset at ``src_root`` under
    ``dst_root`` (same case folder names, standard layout), so that the training engine trains the
    localiser on it. Cases that cannot be read are skipped with a :class:`LocalisationWarning`.
    Returns the written case folders. A localiser must be applied with the ``anti_alias`` it was trained
    with (:func:`localise`)."""
    return _derive_dataset(src_root, dst_root,
                           lambda name, image, seg: make_lowres_case(image, seg, factors, mask_method, anti_alias))


def _derive_dataset(src_root: Union[str, Path], dst_root: Union[str, Path],
                    convert: Callable[[str, Volume, Segmentation], Union[Tuple[Volume, Segmentation], str]]
                    ) -> List[Path]:
    """Write ``convert(case name, image, segmentation)`` of every readable case of ``src_root`` as a case
    folder of ``dst_root``. ``convert`` returns the new (image, segmentation), or a reason (str) to skip the
    case; unreadable cases and :class:`InputError` also skip it. Every skip is a
    :class:`LocalisationWarning`. Returns the written case folders."""
    from .io import load_case, scan_dataset, write_case

    scan = scan_dataset(src_root)
    for name, reason in scan.problems:
        warnings.warn(LocalisationWarning(f"{name}: skipped ({reason})"), stacklevel=3)
    written = []
    for case in scan.cases:
        try:
            image, seg = load_case(case)
            out = convert(case.name, image, seg)
        except InputError as exc:
            out = str(exc)
        if isinstance(out, str):
            warnings.warn(LocalisationWarning(f"{case.name}: skipped ({out})"), stacklevel=3)
            continue
        written.append(Path(write_case(Path(dst_root) / case.name, *out)))
    return written


# --------------------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------------------


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a 3D boolean mask (empty in, empty out); ties go to the
    component met first in array order."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def largest_component_box(probability: np.ndarray, threshold: float = 0.5) -> Optional[Box]:
    """Box of the largest connected component of ``probability >= threshold``, or ``None`` if no voxel
    reaches the threshold."""
    return Box.from_mask(largest_component(np.asarray(probability) >= threshold))


def scale_box(box: Box, from_shape: Sequence[int], to_shape: Sequence[int]) -> Box:
    """Map a box between two grids that cover the same extent with different voxel counts (z, y, x),
    using the exact ratio ``to_shape / from_shape`` per axis (start floored, stop ceiled)."""
    ratio = np.asarray(to_shape, dtype=float) / np.asarray(from_shape, dtype=float)
    return box.scale(ratio)


def padded_box(box: Box, padding: Union[int, Sequence[int]] = DEFAULT_PADDING) -> Box:
    """The box grown by ``padding`` voxels on each side (one int, or per axis (z, y, x), or per side as
    ``((z0, z1), (y0, y1), (x0, x1))``). May extend outside the image: :meth:`Volume.crop` fills it."""
    p = np.asarray(padding, dtype=int)
    if p.ndim == 2:
        if p.shape != (3, 2) or np.any(p < 0):
            raise InputError("padding", "per side", "three (before, after) pairs of non-negative voxels", got=p.tolist())
        return Box(tuple(np.subtract(box.start, p[:, 0])), tuple(np.add(box.stop, p[:, 1])))
    if np.any(p < 0):
        raise InputError("padding", "voxels", "non-negative voxel counts", got=p.tolist())
    return box.pad(p)


def box_from_roi(roi: Any, volume: Volume) -> Box:
    """The voxel box of ``volume`` under a markups ROI (:class:`AutoSegSensitivity.io.Roi`).

    An ROI partly outside the image is clipped to it with a :class:`LocalisationWarning`; an ROI wholly
    outside raises :class:`InputError`."""
    from .io import roi_to_box

    name = getattr(roi, "name", "ROI")
    box = roi_to_box(roi, volume)
    inner = box.clip(volume.shape)
    if inner.is_empty:
        raise InputError(f"ROI {name!r}", "position",
                         f"an ROI that overlaps the image (voxels (z, y, x) 0..{tuple(n - 1 for n in volume.shape)})",
                         got=f"voxel box {box.start}..{box.stop} wholly outside")
    if not box.inside(volume.shape):
        warnings.warn(LocalisationWarning(
            f"ROI {name!r} is partly outside the image: voxel box {box.start}..{box.stop} clipped to "
            f"{inner.start}..{inner.stop}"), stacklevel=2)
    return inner


def write_box_roi(box: Box, volume: Volume, path: Union[str, Path], name: str = "ROI") -> Path:
    """Write ``box`` (voxels of ``volume``) as a markups ROI file (``.mrk.json``) Slicer loads."""
    from .io import box_to_roi, write_roi

    return Path(write_roi(box_to_roi(box, volume, name=name), path))


# --------------------------------------------------------------------------------------------------------
# organ crops for training
# --------------------------------------------------------------------------------------------------------


def crop_case(image: Volume, segmentation: Segmentation, structure: str, padding: int = DEFAULT_PADDING,
              pad_value: float = AIR_HU, jitter: int = 0,
              rng: Optional[np.random.Generator] = None) -> Optional[Tuple[Volume, Segmentation, Box]]:
    """Crop one case around ``structure`` plus ``padding`` voxels per side (plus a uniform random integer
    in ``[-jitter, jitter]`` per side, never below 0), the image filled with ``pad_value`` past its edges.
    Returns ``(image crop, segmentation crop holding only the structure, box)`` or ``None`` when the
    structure is empty."""
    if int(padding) < 0 or int(jitter) < 0:
        raise InputError("crop", "padding/jitter", "non-negative voxel counts", got=(padding, jitter))
    mask = segmentation.mask(structure)
    box = Box.from_mask(mask)
    if box is None:
        return None
    if jitter:
        rng = rng if rng is not None else np.random.default_rng(0)
        per_side = np.maximum(0, int(padding) + rng.integers(-int(jitter), int(jitter) + 1, size=(3, 2)))
        crop_box = padded_box(box, per_side)
    else:
        crop_box = padded_box(box, int(padding))
    sub = image.crop(crop_box, fill=pad_value)
    seg = Segmentation.on_grid(sub)
    seg_src = segmentation.get(structure)
    seg.add(structure, segmentation.mask_volume(structure).crop(crop_box, fill=0).array.astype(bool), seg_src.color, seg_src.id)
    return sub, seg, crop_box


def make_crop_dataset(src_root: Union[str, Path], dst_root: Union[str, Path], structure: str,
                      padding: int = DEFAULT_PADDING, pad_value: float = AIR_HU, jitter: int = 0,
                      seed: int = 0) -> List[Path]:
    """Write the organ model's training set: every case of ``src_root`` cropped around ``structure``
    (see :func:`crop_case`) into ``dst_root/<case>``. Cases without the structure, or unreadable, are
    skipped with a :class:`LocalisationWarning`. ``seed`` drives the padding jitter. Returns the written
    case folders."""
    rng = np.random.default_rng(seed)

    def convert(name: str, image: Volume, seg: Segmentation) -> Union[Tuple[Volume, Segmentation], str]:
        if structure not in seg:
            raise InputError(name, "structure", f"a segment named {structure!r}", got=seg.names)
        out = crop_case(image, seg, structure, padding, pad_value, jitter, rng)
        return f"{structure} is empty" if out is None else out[:2]

    return _derive_dataset(src_root, dst_root, convert)


# --------------------------------------------------------------------------------------------------------
# two-stage inference
# --------------------------------------------------------------------------------------------------------


@dataclass
class LocalisationResult:
    """One case's localisation (and, with an organ model, segmentation).

    ``box``: the organ box (voxels of the full-resolution image, clipped to it, **without** padding), or
    ``None`` when not found; ``roi``: the same box as an :class:`~AutoSegSensitivity.io.Roi` (``None`` when
    not found); ``probability``: the organ model's probability map pasted on the full grid (zeros outside
    the crop; all zeros when not found; ``None`` without an organ model); ``found``; ``message`` (what
    happened, in words); ``crop_box``: the padded box the organ model saw (may extend past the image)."""

    box: Optional[Box]
    roi: Any
    probability: Optional[Volume]
    found: bool
    message: str
    crop_box: Optional[Box] = None


def _class_map(predictions: Mapping[str, Volume], structure: Optional[str], source: str) -> Tuple[str, Volume]:
    names = list(predictions)
    if structure is not None and structure in predictions:
        return structure, predictions[structure]
    if len(names) == 1:
        return names[0], predictions[names[0]]
    raise InputError(source, "structure", f"one of the model's classes {names}", got=structure)


def _predict(model: Any, volume: Volume, device: Optional[str]) -> Dict[str, Volume]:
    """``{class: probability Volume}`` from a LoadedModel (through ``inference.predict_volume``) or from
    a plain callable ``f(volume) -> {class: Volume}`` (a custom model, a fixed rule in tests)."""
    if callable(model) and not hasattr(model, "class_names"):
        return dict(model(volume))
    from .inference import predict_volume

    if device is None:
        return predict_volume(model, volume)
    return predict_volume(model, volume, device=device)


def localise(image: Volume, localiser: Any, structure: Optional[str] = None, threshold: float = 0.5,
             factors: Union[float, Sequence[float]] = DEFAULT_FACTORS, device: Optional[str] = None,
             anti_alias: bool = True) -> Optional[Box]:
    """Run the localiser (a :class:`~AutoSegSensitivity.inference.LoadedModel` trained on low-resolution
    copies made with the same ``factors`` and ``anti_alias``) on a low-resolution copy of ``image``; return
    the box of the largest component of its ``structure`` map at ``threshold``, scaled to ``image``'s grid
    and clipped, or ``None`` when nothing reaches the threshold."""
    low = make_lowres_image(image, factors, anti_alias)
    _, prob = _class_map(_predict(localiser, low, device), structure, "localiser")
    low_box = largest_component_box(prob.array, threshold)
    if low_box is None:
        return None
    return scale_box(low_box, low.shape, image.shape).clip(image.shape)


def segment_in_box(image: Volume, organ_model: Any, box: Box, structure: Optional[str] = None,
                   padding: Union[int, Sequence[int]] = DEFAULT_PADDING, pad_value: float = AIR_HU,
                   device: Optional[str] = None) -> Tuple[Volume, Box]:
    """Run the organ model on ``image`` cropped to ``box`` plus ``padding`` (filled with ``pad_value``
    past the image edge) and paste its probability map back on the full grid (zeros outside the crop).
    Returns ``(full-grid float32 map, crop box)``."""
    crop_box = padded_box(box, padding)
    crop = image.crop(crop_box, fill=pad_value)
    _, prob = _class_map(_predict(organ_model, crop, device), structure, "organ model")
    if prob.shape != crop.shape:
        raise InputError("organ model", "probability map shape", f"the crop's shape {crop.shape}", got=prob.shape)
    sub = crop.with_array(np.asarray(prob.array, dtype=np.float32))
    full = image.paste(sub, crop_box, background=0.0)
    return full.with_array(full.array.astype(np.float32, copy=False)), crop_box


def two_stage_predict(image: Volume, localiser: Any, organ_model: Any = None, structure: Optional[str] = None,
                      padding: Union[int, Sequence[int]] = DEFAULT_PADDING, threshold: float = 0.5,
                      factors: Union[float, Sequence[float]] = DEFAULT_FACTORS, pad_value: float = AIR_HU,
                      device: Optional[str] = None, roi_name: Optional[str] = None,
                      anti_alias: bool = True) -> LocalisationResult:
    """Localise then segment one image.

    Models are :class:`~AutoSegSensitivity.inference.LoadedModel` objects or plain callables
    ``f(volume) -> {class: probability Volume}``.
    ``localiser`` is a LoadedModel (low-resolution localisation, see :func:`localise`), a markups ``Roi``
    (user localisation, :func:`box_from_roi`), or a :class:`Box` of ``image`` voxels (e.g. the reference
    organ's box: "ground truth localised"). With ``organ_model`` the crop (box + ``padding``) is segmented
    and the map pasted on the full grid. ``structure`` picks the class of each model's output (optional
    when a model has one class). When the localiser finds nothing the result has ``found=False`` and the
    message "organ not found ..."; the probability map is then all zeros. ``anti_alias``: as the localiser
    was trained (:func:`make_lowres_dataset`)."""
    from .io import Roi, box_to_roi

    label = structure or "organ"
    if isinstance(localiser, Box):
        box: Optional[Box] = localiser.clip(image.shape)
        if box.is_empty:
            raise InputError("box", "position", f"a box that overlaps the image {image.shape}", got=localiser.to_dict())
        how = "given box"
    elif isinstance(localiser, Roi):
        box = box_from_roi(localiser, image)
        how = f"ROI {getattr(localiser, 'name', 'ROI')!r}"
    else:
        box = localise(image, localiser, structure, threshold, factors, device, anti_alias)
        how = "localiser"
    if box is None:
        prob = image.with_array(np.zeros(image.shape, np.float32)) if organ_model is not None else None
        return LocalisationResult(None, None, prob, False,
                                  f"organ not found: the localiser gave no {label} voxel at threshold {threshold}")
    roi = box_to_roi(box, image, name=roi_name or f"{label} box")
    prob = crop_box = None
    if organ_model is not None:
        prob, crop_box = segment_in_box(image, organ_model, box, structure, padding, pad_value, device)
    msg = f"{label} localised by {how}: voxels (z, y, x) {box.start}..{box.stop}"
    return LocalisationResult(box, roi, prob, True, msg, crop_box)


def two_stage_predict_many(images: Mapping[str, Volume], localiser: Any, organ_model: Any = None,
                           **kwargs: Any) -> Dict[str, LocalisationResult]:
    """:func:`two_stage_predict` for each ``{case name: image}``; a case that fails with bad input or where
    the organ is not found gets a result with ``found=False`` and the reason, and the batch goes on.
    ``localiser`` may also be a mapping ``{case name: Roi or Box}`` for per-case user localisation."""
    out: Dict[str, LocalisationResult] = {}
    for name, image in images.items():
        try:
            if isinstance(localiser, Mapping) and name not in localiser:
                raise InputError(name, "localisation", "an ROI or box for this case", got="none")
            loc = localiser[name] if isinstance(localiser, Mapping) else localiser
            out[name] = two_stage_predict(image, loc, organ_model, **kwargs)
        except InputError as exc:
            out[name] = LocalisationResult(None, None, None, False, f"{name}: {exc}")
    return out
