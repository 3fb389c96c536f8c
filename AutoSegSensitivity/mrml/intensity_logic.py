"""Logic of the AutoSegIntensity module: SLF / NLF intensity transforms of volume nodes (Lei et al.)."""

from __future__ import annotations

from typing import Any, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from . import nodes

TransformSpec = Union[str, Sequence[Sequence[float]], Any]


def transform_label(transform: TransformSpec) -> str:
    """A short name for a transform: the preset name, or ``custom`` for points."""
    return transform.upper() if isinstance(transform, str) and not any(c in transform for c in ":,") else "custom"


class IntensityTransformLogic:
    """Applies an intensity transform to a scalar volume node (in place, or into an output node named
    ``<input>_<preset>`` that is reused on re-run) and draws its transfer curve."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def apply(self, input_node: Any, transform: TransformSpec, output_node: Any = None,
              in_place: bool = False) -> Any:
        """Transform ``input_node``'s HU values into [0, 1] (float32). Returns the node written."""
        from ..intensity import apply_transform, get_transform

        if input_node is None:
            raise InputError("intensity transform", "input volume", "a scalar volume node")
        slf = get_transform(transform)
        volume = nodes.volume_from_node(input_node, copy=False)
        out = volume.with_array(apply_transform(volume.array, slf))
        if in_place:
            output_node = input_node
        elif output_node is None:
            output_node = nodes.get_or_create_node(
                self.scene, "vtkMRMLScalarVolumeNode", f"{input_node.GetName()}_{transform_label(transform)}")
        nodes.update_volume_node(output_node, out)
        display = output_node.GetDisplayNode()
        if display is not None and hasattr(display, "SetAutoWindowLevel"):
            display.SetAutoWindowLevel(False)
            display.SetWindowLevelMinMax(0.0, 1.0)
        return output_node

    def transfer_curve(self, transform: TransformSpec, hu_range: Tuple[float, float] = (-1100.0, 1700.0),
                       samples: int = 281, name: str = "SLF transfer curve") -> Tuple[Any, Any]:
        """A table node (``HU``, ``value``) sampling the transform, and a chart node plotting it with the
        transform's points marked. Returns ``(table_node, chart_node)``; both reused by name."""
        from ..intensity import apply_transform, get_transform

        slf = get_transform(transform)
        hu = np.linspace(hu_range[0], hu_range[1], int(samples))
        hu = np.unique(np.concatenate([hu, np.asarray(slf.hu_points, dtype=float)]))
        values = apply_transform(hu.reshape(1, 1, -1), slf).reshape(-1)
        rows = [{"HU": float(h), "value": float(v)} for h, v in zip(hu, values)]
        table = nodes.table_from_rows(rows, self.scene, f"{name} table")
        points = [{"HU": float(h), "value": float(v)} for h, v in zip(slf.hu_points, slf.values)]
        points_table = nodes.table_from_rows(points, self.scene, f"{name} points")
        curve = nodes.plot_series(self.scene, table, "HU", "value", f"{name} curve")
        marks = nodes.plot_series(self.scene, points_table, "HU", "value", f"{name} points",
                                  color=(0.9, 0.3, 0.2), line=False, marker="circle")
        chart = nodes.plot_chart(self.scene, name, [curve, marks], title=f"{transform_label(transform)} transfer curve",
                                 x_title="CT number (HU)", y_title="transformed value")
        return table, chart
