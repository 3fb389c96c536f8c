"""DICOM CT series: real JPEG 2000 series vs. its label volume and SimpleITK, and synthetic series (written
with pydicom into tmp_path) for geometry, rescale and every error case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import list_dicom_series, read_dicom_series, read_volume

# ---------------------------------------------------------------------------------------------------------
# Synthetic series writer (also used by test_io_rtstruct.py and test_cli_convert.py)
# ---------------------------------------------------------------------------------------------------------


def write_slice(path: Path, pixels: np.ndarray, position, orientation=(1, 0, 0, 0, 1, 0), spacing=(0.7, 0.8),
                series_uid="1.2.3.4", study_uid="1.2.3", frame_uid="1.2.3.9", modality="CT", slope=1.0,
                intercept=-1024.0, instance=1, sop_uid=None, tilt=None) -> str:
    """Write one single-frame slice (uint16 stored values) and return its SOPInstanceUID.
    ``spacing`` is DICOM PixelSpacing (row spacing, column spacing)."""
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in spacing]
    ds.SliceThickness = 2.5
    if tilt is not None:
        ds.GantryDetectorTilt = tilt
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return sop_uid


def make_series(folder: Path, n=6, shape=(12, 10), dz=2.5, origin=(-20.0, -30.0, 40.0), orientation=(1, 0, 0, 0, 1, 0),
                spacing=(0.7, 0.8), series_uid="1.2.3.4", seed=0, shuffle=True, prefix="ct", **kw):
    """Write an n-slice series; returns (stored values (n, rows, cols) in slice order, positions, sop uids)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = rng.integers(0, 3000, size=(n,) + tuple(shape)).astype(np.uint16)
    row = np.asarray(orientation[:3], float)
    col = np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    positions = [np.asarray(origin) + k * dz * normal for k in range(n)]
    order = rng.permutation(n) if shuffle else np.arange(n)
    uids = [None] * n
    for k in order:
        uids[k] = write_slice(folder / f"{prefix}{k:03d}.dcm", stored[k], positions[k], orientation, spacing,
                              series_uid=series_uid, instance=int(n - k), **kw)
    return stored, positions, uids


# ---------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------


def test_real_jpeg2000_series_on_label_grid_and_matches_simpleitk(shared_data):
    folder = shared_data / "abdomen-ct-dicom" / "dicom"
    series = read_dicom_series(folder)
    vol = series.volume
    assert vol.shape == (20, 512, 512)
    assert len(series.files) == 20 and len(series.sop_instance_uids) == 20

    # Independent reader: SimpleITK / GDCM.
    reader = sitk.ImageSeriesReader()
    uid = reader.GetGDCMSeriesIDs(str(folder))[0]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid))
    ref = reader.Execute()
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(vol.direction.reshape(-1), ref.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))  # HU, same values
    assert vol.array.min() >= -1024 and -1100 < np.median(vol.array) < 200  # HU, not raw stored values

    # Same physical grid as labels.nii.gz (which stores the rows flipped): every voxel centre coincides.
    labels = read_volume(shared_data / "abdomen-ct-dicom" / "labels.nii.gz")
    assert labels.shape == vol.shape
    corners = np.array([[z, y, x] for z in (0, 19) for y in (0, 511) for x in (0, 511)], float)
    pts = vol.index_to_lps(corners)
    back = labels.lps_to_index(pts)
    np.testing.assert_allclose(back, np.round(back), atol=1e-4)
    on_ct = labels.resample_like(vol, interpolation="nearest")
    np.testing.assert_array_equal(on_ct.array, np.flip(labels.array, axis=1))
    # the liver label lies where the CT has soft-tissue values
    liver = on_ct.array == 5
    assert liver.sum() > 1000 and 20 < np.median(vol.array[liver]) < 150


def test_real_folder_with_rtstruct_is_set_aside(shared_data):
    folder = shared_data / "lung-ct-rtstruct" / "pat_2"
    infos = list_dicom_series(folder)
    assert [i.modality for i in infos] == ["CT", "RTSTRUCT"]
    series = read_dicom_series(folder)
    assert series.volume.shape[0] == infos[0].files.__len__() == 41
    assert all(f.name.startswith("DCM_IMG") for f in series.files)


# ---------------------------------------------------------------------------------------------------------
# Synthetic series
# ---------------------------------------------------------------------------------------------------------


def test_synthetic_geometry_order_rescale_and_simpleitk(tmp_path):
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0.0, -s, c, 0.0)
    stored, positions, uids = make_series(tmp_path / "s", orientation=orientation, spacing=(0.7, 0.8))
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    series = read_dicom_series(tmp_path / "s")
    vol = series.volume
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, stored.astype(np.int32) - 1024)
    assert vol.spacing == pytest.approx((0.8, 0.7, 2.5))
    np.testing.assert_allclose(vol.origin, positions[0])
    np.testing.assert_allclose(vol.direction[:, 0], orientation[:3])
    np.testing.assert_allclose(vol.direction[:, 1], orientation[3:])
    assert series.sop_instance_uids == uids
    assert [f.name for f in series.files] == [f"ct{k:03d}.dcm" for k in range(6)]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "s"), "1.2.3.4"))
    ref = reader.Execute()
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(vol.direction.reshape(-1), ref.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(vol.spacing, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))


def test_float_rescale_gives_float32(tmp_path):
    stored, _, _ = make_series(tmp_path / "s", n=3, slope=0.5, intercept=-1000.25)
    vol = read_dicom_series(tmp_path / "s").volume
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.array, stored * 0.5 - 1000.25, rtol=0, atol=1e-3)


def test_single_slice_uses_slice_thickness(tmp_path):
    make_series(tmp_path / "s", n=1)
    assert read_dicom_series(tmp_path / "s").volume.spacing[2] == pytest.approx(2.5)


def test_missing_slice_is_an_error(tmp_path):
    make_series(tmp_path / "s", n=6)
    (tmp_path / "s" / "ct002.dcm").unlink()
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    msg = str(exc.value)
    assert str(tmp_path / "s") in msg and "ImagePositionPatient" in msg and "evenly spaced" in msg
    assert "5.000 mm between ct001.dcm and ct003.dcm" in msg


def test_duplicate_position_is_an_error(tmp_path):
    stored, positions, _ = make_series(tmp_path / "s", n=3)
    write_slice(tmp_path / "s" / "dup.dcm", stored[1], positions[1])
    with pytest.raises(InputError, match="ImagePositionPatient.*one slice per position"):
        read_dicom_series(tmp_path / "s")


def test_mixed_orientation_is_an_error(tmp_path):
    stored, positions, _ = make_series(tmp_path / "s", n=4, shuffle=False)
    write_slice(tmp_path / "s" / "ct003.dcm", stored[3], positions[3], orientation=(0, 1, 0, 1, 0, 0))
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    assert "ct003.dcm" in str(exc.value) and "ImageOrientationPatient" in str(exc.value)


def test_gantry_tilt_is_an_error(tmp_path):
    folder = tmp_path / "tilt"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(4):  # positions drift in y as z advances: a tilted acquisition
        write_slice(folder / f"t{k}.dcm", rng.integers(0, 100, (8, 8)), (0.0, 0.9 * k, 2.5 * k))
    with pytest.raises(InputError) as exc:
        read_dicom_series(folder)
    assert "ImagePositionPatient" in str(exc.value) and "gantry tilt" in str(exc.value)
    assert "t3.dcm" in str(exc.value)
    make_series(tmp_path / "tag", n=3, tilt=12.0)
    with pytest.raises(InputError, match="GantryDetectorTilt.*0 degrees"):
        read_dicom_series(tmp_path / "tag")


def test_non_ct_modality(tmp_path):
    stored, _, _ = make_series(tmp_path / "mr", n=3, modality="MR", intercept=0.0)
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "mr")
    assert str(tmp_path / "mr") in str(exc.value) and "Modality" in str(exc.value) and "MR" in str(exc.value)
    vol = read_dicom_series(tmp_path / "mr", require_ct=False).volume
    np.testing.assert_array_equal(vol.array, stored)
    with pytest.raises(InputError, match="Modality: expected CT"):
        read_dicom_series(tmp_path / "mr", series_uid="1.2.3.4")


def test_two_series_listed_and_chosen(tmp_path):
    a, _, _ = make_series(tmp_path / "two", n=3, series_uid="1.2.3.100", prefix="a", seed=1)
    b, _, _ = make_series(tmp_path / "two", n=4, series_uid="1.2.3.200", prefix="b", seed=2)
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "two")
    msg = str(exc.value)
    assert "SeriesInstanceUID" in msg and "1.2.3.100" in msg and "1.2.3.200" in msg
    chosen = read_dicom_series(tmp_path / "two", series_uid="1.2.3.200")
    np.testing.assert_array_equal(chosen.volume.array, b.astype(np.int32) - 1024)
    with pytest.raises(InputError, match="1.2.3.999"):
        read_dicom_series(tmp_path / "two", series_uid="1.2.3.999")


def test_truncated_file_is_an_error(tmp_path):
    make_series(tmp_path / "s", n=3)
    victim = tmp_path / "s" / "ct001.dcm"
    data = victim.read_bytes()
    victim.write_bytes(data[:-100])
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    assert "ct001.dcm" in str(exc.value) and ("PixelData" in str(exc.value) or "complete DICOM" in str(exc.value))
    victim.write_bytes(data[:300])  # cut inside the header
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "s")
    assert "ct001.dcm" in str(exc.value)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as exc:
        read_dicom_series(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(exc.value) and "files" in str(exc.value)
    (tmp_path / "notdicom").mkdir()
    (tmp_path / "notdicom" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="files"):
        read_dicom_series(tmp_path / "notdicom")
    with pytest.raises(InputError, match="no such folder"):
        read_dicom_series(tmp_path / "nope")
