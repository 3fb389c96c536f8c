"""NRRD / NIfTI round trips (values and geometry), real files, label volumes and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from AutoSegSensitivity import Volume
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_label_segmentation, read_volume, write_volume
from AutoSegSensitivity.io.labels import read_label_names, write_label_names


def oblique_volume(rng, dtype=np.int16):
    direction = Rotation.from_euler("xyz", [12, -25, 40], degrees=True).as_matrix()
    arr = rng.integers(-1024, 2000, size=(7, 9, 11)).astype(dtype)
    return Volume(arr, (0.7, 1.3, 3.1), (-12.5, 40.25, 103.0), direction)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr", ".nii.gz", ".nii"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_keeps_values_and_geometry(tmp_path, rng, suffix, dtype):
    vol = oblique_volume(rng, dtype) if dtype != np.uint8 else oblique_volume(rng).with_array(
        rng.integers(0, 255, (7, 9, 11)).astype(np.uint8))
    path = write_volume(vol, tmp_path / f"v{suffix}")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    back = read_volume(path)
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    # NRRD keeps doubles; NIfTI stores float32 geometry (and a float32 quaternion)
    atol = 1e-9 if "nrrd" in suffix or suffix == ".nhdr" else 2e-5
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=atol)
    np.testing.assert_allclose(back.origin, vol.origin, atol=atol * 100)
    np.testing.assert_allclose(back.direction, vol.direction, atol=atol)
    # independent reader agrees on the physical position of a voxel
    ref = sitk.ReadImage(str(path))
    np.testing.assert_allclose(ref.TransformIndexToPhysicalPoint((10, 8, 6)), vol.index_to_lps(np.array([6, 8, 10])),
                               atol=1e-3)


def test_nifti_is_lps_after_reading(shared_data):
    vol = read_volume(shared_data / "abdomen-ct" / "image.nii.gz")
    ref = sitk.ReadImage(str(shared_data / "abdomen-ct" / "image.nii.gz"))
    assert vol.shape == (112, 101, 122)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin())
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))


def test_real_round_trip_nifti_to_nrrd(shared_data, tmp_path):
    vol = read_volume(shared_data / "abdomen-ct" / "image.nii.gz")
    back = read_volume(write_volume(vol, tmp_path / "image.nrrd"))
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, atol=1e-9)


def test_label_segmentation_from_json(shared_data):
    seg = read_label_segmentation(shared_data / "abdomen-ct" / "labels.nii.gz", shared_data / "abdomen-ct" / "labels.json")
    names = json.loads((shared_data / "abdomen-ct" / "labels.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / "abdomen-ct" / "labels.nii.gz")))
    assert seg.names == [names[k] for k in sorted(names, key=int)]
    np.testing.assert_array_equal(seg.mask("liver"), labels == 5)
    sizes = [s.mask.sum() for s in seg if s.mask.any()]
    assert max(sizes) / min(sizes) > 100  # structures of very different sizes
    seg2 = read_label_segmentation(shared_data / "abdomen-ct" / "labels.nii.gz", {5: "Liver"})
    assert seg2.names == ["Liver"] and np.array_equal(seg2.mask("Liver"), labels == 5)


def test_label_names_round_trip_and_errors(tmp_path):
    table = {3: "Parotid L", 1: "Brain stem", 12: "Ödem"}
    assert read_label_names(write_label_names(table, tmp_path / "labels.json")) == table
    (tmp_path / "bad.json").write_text('{"one": "x"}')
    with pytest.raises(InputError, match=r"bad.json: key 'one': expected an integer label value"):
        read_label_names(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('{"1": ""}')
    with pytest.raises(InputError, match=r"bad2.json: name of label 1"):
        read_label_names(tmp_path / "bad2.json")
    (tmp_path / "bad3.json").write_text("[1, 2")
    with pytest.raises(InputError, match=r"bad3.json: JSON"):
        read_label_names(tmp_path / "bad3.json")


def test_float_labels_must_be_integers(tmp_path, rng):
    vol = Volume(rng.uniform(0, 3, (3, 4, 5)).astype(np.float32))
    write_volume(vol, tmp_path / "l.nrrd")
    with pytest.raises(InputError, match="l.nrrd: voxel values: expected integer label values"):
        read_label_segmentation(tmp_path / "l.nrrd", {1: "a"})


def test_bad_volume_files(tmp_path, rng):
    with pytest.raises(InputError, match="missing.nrrd: file: expected an existing"):
        read_volume(tmp_path / "missing.nrrd")
    with pytest.raises(InputError, match="file name"):
        read_volume(tmp_path / "image.png")
    good = write_volume(oblique_volume(rng), tmp_path / "good.nii.gz")
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(InputError, match="cut.nii.gz: file: expected a readable"):
        read_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "junk.nrrd").write_text("not a nrrd at all")
    with pytest.raises(InputError, match="junk.nrrd"):
        read_volume(tmp_path / "junk.nrrd")
    img2d = sitk.GetImageFromArray(np.zeros((4, 5), np.int16))
    sitk.WriteImage(img2d, str(tmp_path / "flat.nrrd"))
    with pytest.raises(InputError, match="flat.nrrd: dimension: expected a 3D image"):
        read_volume(tmp_path / "flat.nrrd")
    vec = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(vec, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match="rgb.nrrd: pixel type"):
        read_volume(tmp_path / "rgb.nrrd")


def test_failed_write_leaves_previous_file(tmp_path, rng):
    vol = oblique_volume(rng)
    path = write_volume(vol, tmp_path / "v.nrrd")
    before = path.read_bytes()
    with pytest.raises(InputError):
        write_volume("not a volume", path)  # type: ignore[arg-type]
    assert path.read_bytes() == before
