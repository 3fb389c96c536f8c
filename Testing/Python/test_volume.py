"""Volume, Box and Segmentation: geometry conventions checked against SimpleITK as the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegSensitivity import Box, InputError, Segmentation, Volume
from AutoSegSensitivity.volume import lps_to_ras, ras_to_lps


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique(rng) -> Volume:
    arr = rng.normal(size=(7, 9, 11)).astype(np.float32)
    return Volume(arr, spacing=(0.8, 1.1, 3.0), origin=(-12.5, 40.0, 7.25), direction=_rotation(0.1, -0.2, 0.3))


def test_index_to_lps_matches_simpleitk(oblique: Volume, rng) -> None:
    img = oblique.to_sitk()
    for _ in range(10):
        zyx = rng.uniform(-2, 8, size=3)
        expected = img.TransformContinuousIndexToPhysicalPoint(tuple(zyx[::-1].tolist()))
        np.testing.assert_allclose(oblique.index_to_lps(zyx), expected, atol=1e-9)
        np.testing.assert_allclose(oblique.lps_to_index(expected), zyx, atol=1e-9)


def test_ijk_to_ras_is_lps_matrix_with_xy_flipped(oblique: Volume) -> None:
    lps = oblique.ijk_to_lps()
    ras = oblique.ijk_to_ras()
    point = np.array([3.0, 2.0, 1.0, 1.0])  # (i, j, k, 1)
    np.testing.assert_allclose(ras @ point, np.r_[lps_to_ras((lps @ point)[:3]), 1.0])
    np.testing.assert_allclose(ras_to_lps(lps_to_ras(np.array([1.0, 2.0, 3.0]))), [1.0, 2.0, 3.0])


def test_sitk_round_trip_keeps_values_and_geometry(oblique: Volume) -> None:
    back = Volume.from_sitk(oblique.to_sitk())
    assert back.same_grid(oblique)
    np.testing.assert_array_equal(back.array, oblique.array)
    assert back.spacing_zyx == (3.0, 1.1, 0.8)


def test_bool_volume_round_trip_as_uint8() -> None:
    mask = Volume(np.eye(4, dtype=bool)[None].repeat(2, 0))
    assert mask.to_sitk().GetPixelID() == sitk.sitkUInt8


def test_crop_moves_origin_and_fills_outside(oblique: Volume) -> None:
    box = Box((-2, 1, 3), (3, 5, 13))
    sub = oblique.crop(box, fill=-1000)
    assert sub.shape == box.size
    np.testing.assert_allclose(sub.origin, oblique.index_to_lps(np.array([-2.0, 1.0, 3.0])))
    # voxels inside the image keep their values, and their physical position
    np.testing.assert_array_equal(sub.array[2:, :, :8], oblique.array[0:3, 1:5, 3:11])
    assert np.all(sub.array[:2] == -1000) and np.all(sub.array[:, :, 8:] == -1000)
    np.testing.assert_allclose(sub.index_to_lps(np.array([2.0, 0.0, 0.0])), oblique.index_to_lps(np.array([0.0, 1.0, 3.0])))


def test_paste_is_inverse_of_crop(oblique: Volume) -> None:
    box = Box((1, 2, 3), (6, 8, 10))
    pasted = oblique.paste(oblique.crop(box), box)
    np.testing.assert_array_equal(pasted.array[box.slices], oblique.array[box.slices])
    outside = np.ones(oblique.shape, bool)
    outside[box.slices] = False
    assert np.all(pasted.array[outside] == 0)
    assert pasted.same_grid(oblique)


def test_pad_keeps_physical_positions(oblique: Volume) -> None:
    padded = oblique.pad((1, 2, 3), fill=5)
    assert padded.shape == (9, 13, 17)
    np.testing.assert_allclose(padded.index_to_lps(np.array([1.0, 2.0, 3.0])), oblique.origin, atol=1e-9)
    with pytest.raises(InputError, match="non-negative"):
        oblique.pad(-1)


def test_resample_like_matches_simpleitk(oblique: Volume) -> None:
    ref = Volume(np.zeros((5, 6, 7)), spacing=(1.3, 1.3, 2.0), origin=(-11.0, 41.0, 8.0), direction=oblique.direction)
    out = oblique.resample_like(ref, interpolation="linear")
    refimg = ref.to_sitk()
    expected = sitk.GetArrayFromImage(sitk.Resample(oblique.to_sitk(), refimg, sitk.Transform(), sitk.sitkLinear, 0.0))
    np.testing.assert_allclose(out.array, expected)
    assert out.same_grid(ref)


def test_resample_to_shape_keeps_extent_and_nearest_keeps_labels() -> None:
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[:, 2:6, 2:6] = 3
    vol = Volume(labels, spacing=(1.0, 1.0, 3.0), origin=(5.0, 5.0, 5.0))
    low = vol.resample_to_shape((2, 4, 4), interpolation="nearest")
    assert low.spacing == (2.0, 2.0, 9.0)
    # the outer corner of voxel 0 is kept: old corner 5 - 0.5, new corner origin - 1.0
    np.testing.assert_allclose(np.asarray(low.origin) - 0.5 * np.asarray(low.spacing), np.asarray(vol.origin) - 0.5 * np.asarray(vol.spacing))
    assert set(np.unique(low.array)) <= {0, 3}
    assert low.array[:, 1:3, 1:3].min() == 3
    with pytest.raises(InputError, match="interpolation"):
        vol.resample_like(vol, interpolation="cubic")


def test_volume_rejects_bad_geometry() -> None:
    with pytest.raises(InputError, match="spacing"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="direction"):
        Volume(np.zeros((2, 2, 2)), direction=np.ones((3, 3)))
    with pytest.raises(InputError, match="3D"):
        Volume(np.zeros((2, 2)))
    with pytest.raises(InputError, match="shape"):
        Volume(np.zeros((2, 2, 2))).with_array(np.zeros((2, 2, 3)))


def test_grid_difference_names_what_differs(oblique: Volume) -> None:
    other = Volume(oblique.array, spacing=(0.8, 1.1, 2.5), origin=oblique.origin, direction=oblique.direction)
    assert "spacing" in oblique.grid_difference(other)
    assert oblique.grid_difference(oblique.copy()) is None


def test_box_from_mask_clip_pad_scale() -> None:
    mask = np.zeros((10, 12, 14), bool)
    mask[2:5, 3:9, 0:4] = True
    box = Box.from_mask(mask)
    assert box == Box((2, 3, 0), (5, 9, 4))
    assert Box.from_mask(np.zeros((3, 3, 3), bool)) is None
    padded = box.pad(3)
    assert padded == Box((-1, 0, -3), (8, 12, 7))
    assert not padded.inside(mask.shape)
    assert padded.clip(mask.shape) == Box((0, 0, 0), (8, 12, 7))
    assert Box((20, 0, 0), (25, 5, 5)).clip(mask.shape).is_empty
    # scaling down then up never loses a voxel of the original box
    low = box.scale((1 / 3, 0.5, 0.5))
    back = low.scale((3, 2, 2))
    assert all(a <= b for a, b in zip(back.start, box.start)) and all(a >= b for a, b in zip(back.stop, box.stop))
    assert box.union(Box((0, 0, 0), (1, 1, 1))) == Box((0, 0, 0), (5, 9, 4))
    assert box.intersect(Box((4, 0, 0), (20, 20, 20))) == Box((4, 3, 0), (5, 9, 4))
    assert Box.from_dict(box.to_dict()) == box


def test_segmentation_labels_round_trip_and_overlap() -> None:
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1:3, 1:3, 1:3] = 1
    labels[2:4, 3:5, 3:6] = 2
    vol = Volume(labels, spacing=(1, 1, 2))
    seg = Segmentation.from_labels(vol, {1: "Parotid L", 2: "Spinal cord", 7: "Absent"})
    assert seg.names == ["Parotid L", "Spinal cord", "Absent"]
    assert seg.mask("Absent").sum() == 0
    back, table = seg.to_labels(order=["Parotid L", "Spinal cord"])
    np.testing.assert_array_equal(back.array, labels)
    assert table == {1: "Parotid L", 2: "Spinal cord"}
    # overlapping segments keep their own masks
    seg.add("Overlap", labels > 0)
    assert seg.mask("Overlap").sum() == (labels > 0).sum()
    assert seg.mask("Parotid L").sum() == (labels == 1).sum()
    # replacing a segment keeps its colour and position
    color = seg.get("Parotid L").color
    seg.add("Parotid L", labels == 2)
    assert seg.names[0] == "Parotid L" and seg.get("Parotid L").color == color
    with pytest.raises(InputError, match="Absent"):
        seg.get("absent")
    with pytest.raises(InputError, match="shape"):
        seg.add("bad", np.zeros((2, 2, 2)))
