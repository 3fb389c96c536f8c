"""RTSTRUCT rasterisation: real lung and breast cases, and a synthetic RTSTRUCT (pydicom) with a hole, an
island, contours between planes and outside the grid, an empty ROI and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as MplPath
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_dicom_series, read_rtstruct
from AutoSegSensitivity.io.rtstruct import fill_polygons_even_odd
from test_io_dicom import make_series

RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def write_rtstruct(path: Path, rois, series_uid="1.2.3.4", frame_uid="1.2.3.9"):
    """``rois``: list of (name, color, [contour point arrays (N, 3) LPS])."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = generate_uid()
    ser = Dataset()
    ser.SeriesInstanceUID = series_uid
    study = Dataset()
    study.RTReferencedSeriesSequence = Sequence([ser])
    frame = Dataset()
    frame.FrameOfReferenceUID = frame_uid
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ssroi, roic = [], []
    for number, (name, color, contours) in enumerate(rois, start=1):
        item = Dataset()
        item.ROINumber = number
        item.ReferencedFrameOfReferenceUID = frame_uid
        item.ROIName = name
        ssroi.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = list(color)
        seq = []
        for pts in contours:
            c = Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [f"{v:.6g}" for v in np.asarray(pts, float).reshape(-1)]
            seq.append(c)
        if seq:
            rc.ContourSequence = Sequence(seq)
        roic.append(rc)
    ds.StructureSetROISequence = Sequence(ssroi)
    ds.ROIContourSequence = Sequence(roic)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def square(x0, x1, y0, y1, z):
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], float)


@pytest.fixture
def ct(tmp_path):
    # 5 slices of 20 x 24 voxels, 1 mm in-plane, 2 mm slices, origin (0, 0, 0): voxel centres at integer mm.
    make_series(tmp_path / "ct", n=5, shape=(20, 24), dz=2.0, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0))
    return read_dicom_series(tmp_path / "ct")


def test_hole_and_island_even_odd(ct, tmp_path):
    z = 4.0  # slice 2
    outer = square(2.5, 20.5, 2.5, 16.5, z)
    hole = square(5.5, 17.5, 5.5, 13.5, z)
    island = square(9.5, 13.5, 8.5, 10.5, z)
    name = "GTV 1 (primary) / Ax-2"
    path = write_rtstruct(tmp_path / "rs.dcm", [(name, (255, 0, 128), [outer, hole, island])])
    result = read_rtstruct(path, ct)
    assert result.segmentation.names == [name]
    seg = result.segmentation.get(name)
    assert seg.color == pytest.approx((1.0, 0.0, 128 / 255))
    yy, xx = np.mgrid[0:20, 0:24]
    inside = lambda x0, x1, y0, y1: (xx > x0) & (xx < x1) & (yy > y0) & (yy < y1)  # noqa: E731
    expected = inside(2.5, 20.5, 2.5, 16.5) & ~inside(5.5, 17.5, 5.5, 13.5) | inside(9.5, 13.5, 8.5, 10.5)
    np.testing.assert_array_equal(seg.mask[2], expected)
    assert seg.mask.sum() == expected.sum()
    assert result.warnings == []
    assert result.segmentation.geometry.same_grid(ct.volume)


def test_between_planes_outside_and_empty_are_reported(ct, tmp_path):
    rois = [
        ("between", (0, 255, 0), [square(2.5, 6.5, 2.5, 6.5, 5.0)]),   # halfway between slices 2 and 3
        ("outside", (0, 0, 255), [square(2.5, 6.5, 2.5, 6.5, 40.0)]),  # far above the grid
        ("Empty", (9, 9, 9), []),
        ("inplane-out", (1, 1, 1), [square(100.5, 110.5, 2.5, 6.5, 2.0)]),
    ]
    result = read_rtstruct(write_rtstruct(tmp_path / "rs.dcm", rois), ct)
    text = "\n".join(result.warnings)
    assert "'between': 1 contours lie between slice planes" in text
    assert result.segmentation.mask("between").sum() == 16
    assert "'outside': outside the image grid" in text and "40.00 mm" in text
    assert not result.segmentation.mask("outside").any()
    assert "'Empty': empty (no contours)" in text
    assert result.segmentation.names == ["between", "outside", "Empty", "inplane-out"]
    assert "'inplane-out': its contours cover no voxel centre" in text


def test_other_series_refused_unless_forced(ct, tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", [("A", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 0.0)])],
                          series_uid="9.9.9.9")
    with pytest.raises(InputError) as exc:
        read_rtstruct(path, ct)
    msg = str(exc.value)
    assert str(path) in msg and "SeriesInstanceUID" in msg and "9.9.9.9" in msg and "1.2.3.4" in msg
    result = read_rtstruct(path, ct, force=True)
    assert result.segmentation.mask("A").sum() == 16
    assert any("forced" in w for w in result.warnings)
    other_frame = write_rtstruct(tmp_path / "rs2.dcm", [("A", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 0.0)])],
                                 frame_uid="7.7.7")
    with pytest.raises(InputError, match="FrameOfReferenceUID"):
        read_rtstruct(other_frame, ct)


def test_rtstruct_without_contours_and_wrong_files(ct, tmp_path):
    path = write_rtstruct(tmp_path / "rs.dcm", [("A", (1, 2, 3), []), ("B", (1, 2, 3), [])])
    with pytest.raises(InputError) as exc:
        read_rtstruct(path, ct)
    assert str(path) in str(exc.value) and "ContourSequence" in str(exc.value)
    with pytest.raises(InputError, match="Modality: expected RTSTRUCT, got CT"):
        read_rtstruct(ct.files[0], ct)
    (tmp_path / "x.dcm").write_text("not dicom")
    with pytest.raises(InputError, match="x.dcm"):
        read_rtstruct(tmp_path / "x.dcm", ct)
    good = write_rtstruct(tmp_path / "g.dcm", [("A", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 0.0)])])
    (tmp_path / "t.dcm").write_bytes(good.read_bytes()[:-40])
    with pytest.raises(InputError, match="t.dcm"):
        read_rtstruct(tmp_path / "t.dcm", ct)


@pytest.mark.parametrize("patient", ["pat_1", "pat_2"])
def test_real_lung_gtv(shared_data, patient):
    import pydicom

    folder = shared_data / "lung-ct-rtstruct" / patient
    ct = read_dicom_series(folder)
    rs = sorted(folder.glob("DCM_RS_*.dcm"))[0]
    result = read_rtstruct(rs, ct)
    assert result.segmentation.names == ["GTV-1"]
    assert result.warnings == []
    mask = result.segmentation.mask("GTV-1")
    ml = mask.sum() * ct.volume.voxel_volume_ml
    assert 1.0 < ml < 1000.0  # a lung tumour: between a millilitre and a litre
    # soft tissue inside the GTV, mostly
    assert -300 < np.median(ct.volume.array[mask]) < 200

    # Independent rasterisation of the fullest slice: matplotlib point-in-polygon on every voxel centre.
    ds = pydicom.dcmread(str(rs))
    contours = [np.asarray(c.ContourData, float).reshape(-1, 3) for c in ds.ROIContourSequence[0].ContourSequence]
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    on_k = [c for c in contours if abs(ct.volume.lps_to_index(c)[:, 0].mean() - k) < 0.1]
    assert on_k
    ny, nx = mask.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
    verts, codes = [], []
    for c in on_k:
        ij = ct.volume.lps_to_index(c)[:, [2, 1]]
        verts += list(ij) + [ij[0]]
        codes += [MplPath.MOVETO] + [MplPath.LINETO] * (len(ij) - 1) + [MplPath.CLOSEPOLY]
    ref = MplPath(np.asarray(verts), codes).contains_points(centres).reshape(ny, nx)
    assert ref.sum() > 20
    np.testing.assert_array_equal(mask[k], ref)


def test_real_breast_one_slice_reports_outside(shared_data):
    folder = shared_data / "breast-rtstruct"
    ct = read_dicom_series(folder)
    assert ct.volume.shape[0] == 1
    result = read_rtstruct(folder / "rtss.dcm", ct)
    names = result.segmentation.names
    assert names == ["BODY", "Areola", "Borders", "Breast", "Heart", "Lt Lung", "Nodes", "Scar", "Tumor Bed",
                     "Tumor Bed Block"]
    text = "\n".join(result.warnings)
    assert "'Areola': empty" in text
    for name in ["Heart", "Lt Lung", "Breast", "Tumor Bed"]:
        assert f"'{name}': outside the image grid" in text
        assert not result.segmentation.mask(name).any()
    assert "'BODY': 137 of 141 contours outside the image grid" in text
    body = result.segmentation.mask("BODY")[0]
    # the body outline on that slice covers a good part of the 512 x 512 field of view
    assert 0.05 < body.mean() < 0.8
    assert -200 < np.median(ct.volume.array[0][body]) < 200


def test_fill_matches_matplotlib_on_random_polygons(rng):
    shape = (40, 50)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(float)
    for _ in range(20):
        n = int(rng.integers(3, 12))
        poly = rng.uniform(-5, 55, size=(n, 2)) + 0.123  # self-intersecting in general: even-odd matters
        ref = MplPath(np.vstack([poly, poly[:1]]), closed=True).contains_points(centres).reshape(shape)
        np.testing.assert_array_equal(fill_polygons_even_odd([poly], shape), ref)


def test_open_contours_and_duplicate_names_are_reported(ct, tmp_path):
    import pydicom

    rois = [("A", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 0.0), square(2.5, 6.5, 2.5, 6.5, 2.0)]),
            ("A", (3, 2, 1), [square(10.5, 12.5, 2.5, 6.5, 0.0)])]
    path = write_rtstruct(tmp_path / "rs.dcm", rois)
    ds = pydicom.dcmread(str(path))
    ds.ROIContourSequence[0].ContourSequence[1].ContourGeometricType = "OPEN_PLANAR"
    ds.save_as(str(path))
    result = read_rtstruct(path, ct)
    text = "\n".join(result.warnings)
    assert "'A': 1 contours of type OPEN_PLANAR skipped" in text
    assert "name used by more than one ROI" in text
    assert result.segmentation.names == ["A", "A"]
    first, second = result.segmentation.segments
    assert first.mask.sum() == 16 and first.mask[0].sum() == 16  # the open contour on slice 1 is not filled
    assert second.id == "A_2" and second.mask.sum() == 8


def test_contour_images_of_another_series_refused_without_series_reference(ct, tmp_path):
    import pydicom

    path = write_rtstruct(tmp_path / "rs.dcm", [("A", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 0.0)])])
    ds = pydicom.dcmread(str(path))
    del ds.ReferencedFrameOfReferenceSequence
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence = Sequence([image])
    ds.save_as(str(path))
    with pytest.raises(InputError, match=r"rs.dcm: ContourImageSequence.ReferencedSOPInstanceUID"):
        read_rtstruct(path, ct)
    image.ReferencedSOPInstanceUID = ct.sop_instance_uids[0]
    ds.save_as(str(path))
    assert read_rtstruct(path, ct).segmentation.mask("A").sum() == 16
