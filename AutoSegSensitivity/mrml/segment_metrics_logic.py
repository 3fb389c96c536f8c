"""Logic of the AutoSegSegmentMetrics module: per-segment comparison of two segmentation nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InputError
from ..metrics import DEFAULT_NSD_TOLERANCE_MM
from . import nodes

UNITS = {
    "volume_ref_ml": "ml", "volume_pred_ml": "ml", "volume_diff_ml": "ml", "com_distance_mm": "mm",
    "hd_mm": "mm", "hd95_mm": "mm", "msd_mm": "mm", "ref_mean": "HU", "ref_std": "HU", "ref_min": "HU",
    "ref_max": "HU", "ref_median": "HU", "pred_mean": "HU", "pred_std": "HU", "pred_min": "HU",
    "pred_max": "HU", "pred_median": "HU",
}
"""Units of the result columns (shown in the table's column names and unit labels)."""


def intensity_stats(values: np.ndarray, prefix: str) -> Dict[str, float]:
    """Mean, standard deviation, min, max and median of the voxel values inside a segment (NaN if empty)."""
    if values.size == 0:
        return {f"{prefix}_{k}": float("nan") for k in ("mean", "std", "min", "max", "median")}
    v = values.astype(np.float64)
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_std": float(v.std()), f"{prefix}_min": float(v.min()),
            f"{prefix}_max": float(v.max()), f"{prefix}_median": float(np.median(v))}


class SegmentMetricsLogic:
    """Compares a reference and a compared segmentation node segment by segment on one grid (the
    intensity volume's if given, else ``grid_node``'s) and writes a table node."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def pairs_by_name(self, reference_node: Any, compared_node: Any) -> List[Tuple[str, str]]:
        """Segments paired by equal name, in reference order."""
        ref_names = [reference_node.GetSegmentation().GetSegment(i).GetName() for i in nodes.segment_ids(reference_node)]
        cmp_names = {compared_node.GetSegmentation().GetSegment(i).GetName() for i in nodes.segment_ids(compared_node)}
        return [(n, n) for n in ref_names if n in cmp_names]

    def compare(self, reference_node: Any, compared_node: Any, grid_node: Any = None,
                pairs: Optional[Sequence[Tuple[str, str]]] = None, intensity_node: Any = None,
                table_name: Optional[str] = None,
                nsd_tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> Tuple[Any, List[Dict[str, Any]]]:
        """One row per segment pair: volumes, volume difference, Dice, Jaccard, sensitivity, precision,
        centre-of-mass distance, HD, HD95, MSD, surface Dice at ``nsd_tolerance_mm`` (column ``nsd_<tau>mm``,
        a fraction) (``metrics.compare_masks``) and, with ``intensity_node``,
        intensity statistics inside each segment. Returns ``(table_node, rows)``; the table is called
        ``<reference> vs <compared>`` unless named, and reused on re-run."""
        from ..metrics import compare_segmentations

        if reference_node is None or compared_node is None:
            raise InputError("segment comparison", "segmentations", "a reference and a compared segmentation node")
        grid_source = intensity_node or grid_node
        if grid_source is None:
            raise InputError("segment comparison", "grid", "an intensity or reference volume node giving the grid")
        grid = nodes.volume_from_node(grid_source, copy=False)
        pairs = list(pairs) if pairs else self.pairs_by_name(reference_node, compared_node)
        if not pairs:
            raise InputError(compared_node.GetName(), "segment names",
                             f"a name shared with {reference_node.GetName()} (or pairs chosen by hand)")
        ref = nodes.segmentation_from_node(reference_node, grid, [a for a, _ in pairs])
        cmp = nodes.segmentation_from_node(compared_node, grid, list(dict.fromkeys(b for _, b in pairs)))
        rows = compare_segmentations(ref, cmp, pairs, nsd_tolerance_mm=nsd_tolerance_mm)
        if intensity_node is not None:
            for row, (a, b) in zip(rows, pairs):
                row.update(intensity_stats(grid.array[ref.mask(a)], "ref"))
                row.update(intensity_stats(grid.array[cmp.mask(b)], "pred"))
        name = table_name or f"{reference_node.GetName()} vs {compared_node.GetName()}"
        table = nodes.table_from_rows(rows, self.scene, name, units=UNITS)
        return table, rows

    @staticmethod
    def export_csv(table_node: Any, path: Union[str, Path]) -> Path:
        """Write a table node as CSV (header = column names with units), atomically."""
        import csv
        import io

        from ..atomic import write_text

        rows = nodes.rows_from_table(table_node)
        table = table_node.GetTable()
        header = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        return write_text(path, buf.getvalue())
