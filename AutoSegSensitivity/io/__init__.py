"""Readers and writers: NRRD/NIfTI volumes, DICOM CT series, RTSTRUCT, Slicer .seg.nrrd, label volumes
with name tables, markups ROI .mrk.json, and dataset folders (one case per sub-folder).

Every reader raises :class:`~AutoSegSensitivity.errors.InputError` naming the file, the field and what
was expected; every writer writes atomically. Geometry is LPS throughout (see ``volume.py``).
"""

from .dataset import Case, DatasetScan, load_case, scan_dataset, write_case
from .dicom_series import DicomSeries, SeriesInfo, list_dicom_series, read_dicom_series
from .images import read_volume, write_volume
from .labels import read_label_segmentation
from .roi import Roi, box_to_roi, read_roi, roi_to_box, write_roi
from .rtstruct import RTStructResult, read_rtstruct
from .segnrrd import read_segmentation, write_segmentation

__all__ = [
    "read_volume", "write_volume",
    "read_segmentation", "write_segmentation",
    "read_label_segmentation",
    "DicomSeries", "SeriesInfo", "read_dicom_series", "list_dicom_series",
    "RTStructResult", "read_rtstruct",
    "Roi", "read_roi", "write_roi", "roi_to_box", "box_to_roi",
    "Case", "DatasetScan", "scan_dataset", "load_case", "write_case",
]
