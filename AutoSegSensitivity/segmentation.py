"""Segmentations: named binary masks (possibly overlapping) on one reference grid.

A :class:`Segmentation` is what a Slicer segmentation node, a ``.seg.nrrd`` file, an RTSTRUCT rasterised
onto its CT, or a label volume with a name table all become inside the engine. Each segment keeps its own
boolean mask in (z, y, x) order on the grid of ``geometry`` (a :class:`~AutoSegSensitivity.volume.Volume`
whose array is only a placeholder for the shape), so overlapping segments are preserved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import InputError
from .volume import Volume

Color = Tuple[float, float, float]

# A small palette (RGB in [0, 1]) used when a segment arrives without a colour.
DEFAULT_COLORS: Tuple[Color, ...] = (
    (0.90, 0.35, 0.30), (0.35, 0.70, 0.35), (0.30, 0.45, 0.90), (0.95, 0.80, 0.25), (0.70, 0.40, 0.85),
    (0.25, 0.80, 0.85), (0.95, 0.55, 0.20), (0.60, 0.60, 0.60), (0.85, 0.45, 0.65), (0.55, 0.75, 0.20),
)


def default_color(index: int) -> Color:
    """The ``index``-th colour of the default palette (cycles)."""
    return DEFAULT_COLORS[index % len(DEFAULT_COLORS)]


@dataclass
class Segment:
    """One structure: a boolean mask (z, y, x), its display name, RGB colour in [0, 1] and a stable id."""

    name: str
    mask: np.ndarray
    color: Color = (0.5, 0.5, 0.5)
    id: str = ""

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask).astype(bool, copy=False)
        if not self.id:
            self.id = self.name
        self.color = tuple(float(c) for c in self.color)  # type: ignore[assignment]


@dataclass
class Segmentation:
    """Ordered, named segments on the grid of ``geometry``.

    ``geometry`` is a Volume whose shape, spacing, origin and direction define the grid; its array values
    are not used (``Segmentation.on_grid`` makes one cheaply)."""

    geometry: Volume
    segments: List[Segment] = field(default_factory=list)

    @staticmethod
    def on_grid(reference: Volume) -> "Segmentation":
        """An empty segmentation on ``reference``'s grid."""
        placeholder = np.broadcast_to(np.zeros((), dtype=np.uint8), reference.shape)
        geom = Volume(placeholder, reference.spacing, reference.origin, reference.direction.copy())
        return Segmentation(geom)

    # ---- access ---------------------------------------------------------------------------------------
    @property
    def names(self) -> List[str]:
        """Segment names in order."""
        return [s.name for s in self.segments]

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self.segments)

    def get(self, name: str) -> Segment:
        """The segment called ``name`` (exact match); :class:`InputError` listing the names otherwise."""
        for s in self.segments:
            if s.name == name:
                return s
        raise InputError("segmentation", "segment", f"one of {self.names}", got=repr(name))

    def mask(self, name: str) -> np.ndarray:
        """The boolean mask (z, y, x) of segment ``name``."""
        return self.get(name).mask

    def mask_volume(self, name: str) -> Volume:
        """Segment ``name`` as a boolean Volume with the segmentation's geometry."""
        return Volume(self.mask(name), self.geometry.spacing, self.geometry.origin, self.geometry.direction.copy())

    # ---- edit -----------------------------------------------------------------------------------------
    def add(self, name: str, mask: np.ndarray, color: Optional[Color] = None, id: str = "") -> Segment:
        """Add a segment, or replace the mask of an existing one with the same name (its colour and id
        are kept unless given). The mask must have the grid's shape."""
        mask = np.asarray(mask)
        if mask.shape != self.geometry.shape:
            raise InputError("segmentation", f"segment {name!r} mask", f"shape {self.geometry.shape}", got=mask.shape)
        for s in self.segments:
            if s.name == name:
                s.mask = mask.astype(bool)
                if color is not None:
                    s.color = tuple(float(c) for c in color)  # type: ignore[assignment]
                if id:
                    s.id = id
                return s
        seg = Segment(name, mask, color if color is not None else default_color(len(self.segments)), id or name)
        self.segments.append(seg)
        return seg

    def remove(self, name: str) -> None:
        """Remove segment ``name``."""
        self.segments = [s for s in self.segments if s.name != name]

    # ---- conversion -----------------------------------------------------------------------------------
    @staticmethod
    def from_labels(labels: Volume, names: Mapping[int, str],
                    colors: Optional[Mapping[int, Color]] = None) -> "Segmentation":
        """Build from a label volume and a ``{label value: name}`` table (labels absent from the table are
        ignored; names absent from the volume give empty segments, so every named structure exists)."""
        seg = Segmentation.on_grid(labels)
        arr = np.asarray(labels.array)
        for i, (value, name) in enumerate(sorted(names.items())):
            color = colors.get(value) if colors else None
            seg.add(str(name), arr == int(value), color if color is not None else default_color(i))
        return seg

    def to_labels(self, order: Optional[Sequence[str]] = None) -> Tuple[Volume, Dict[int, str]]:
        """A label volume (uint16) and its ``{value: name}`` table; later segments win where they overlap."""
        order = list(order) if order is not None else self.names
        arr = np.zeros(self.geometry.shape, dtype=np.uint16)
        table: Dict[int, str] = {}
        for value, name in enumerate(order, start=1):
            arr[self.mask(name)] = value
            table[value] = name
        return self.geometry.with_array(arr), table

    def resample_like(self, reference: Volume) -> "Segmentation":
        """Every segment resampled (nearest neighbour) onto ``reference``'s grid."""
        out = Segmentation.on_grid(reference)
        for s in self.segments:
            vol = self.mask_volume(s.name).resample_like(reference, interpolation="nearest")
            out.segments.append(Segment(s.name, vol.array.astype(bool), s.color, s.id))
        return out
