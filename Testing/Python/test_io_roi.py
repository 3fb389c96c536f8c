"""Markups ROI .mrk.json: LPS and RAS round trips, rotated ROI to box, box to ROI and back, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from AutoSegSensitivity import Box, Volume
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import Roi, box_to_roi, read_roi, roi_to_box, write_roi


def rotated_roi() -> Roi:
    return Roi([10.0, -20.5, 33.0], [40.0, 25.0, 12.5], Rotation.from_euler("z", 30, degrees=True).as_matrix(),
               name="Head box")


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_round_trip(tmp_path, system):
    roi = rotated_roi()
    path = write_roi(roi, tmp_path / "roi.mrk.json", coordinate_system=system)
    doc = json.loads(path.read_text())
    m = doc["markups"][0]
    assert m["type"] == "ROI" and m["coordinateSystem"] == system and m["roiType"] == "Box"
    flip = np.diag([-1.0, -1.0, 1.0]) if system == "RAS" else np.eye(3)
    np.testing.assert_allclose(m["center"], flip @ roi.center_lps)
    # orientation is stored row by row; its columns are the ROI axes in the file's coordinate system
    np.testing.assert_allclose(np.reshape(m["orientation"], (3, 3))[:, 0], flip @ roi.orientation[:, 0])
    back = read_roi(path)
    np.testing.assert_allclose(back.center_lps, roi.center_lps, atol=1e-12)
    np.testing.assert_allclose(back.size_mm, roi.size_mm)
    np.testing.assert_allclose(back.orientation, roi.orientation, atol=1e-12)
    assert back.name == "Head box"


def test_ras_file_written_by_hand_is_converted(tmp_path):
    doc = {"markups": [{"type": "ROI", "coordinateSystem": "RAS", "center": [1.0, 2.0, 3.0], "size": [4, 5, 6],
                        "orientation": [1, 0, 0, 0, 1, 0, 0, 0, 1]}]}
    (tmp_path / "r.mrk.json").write_text(json.dumps(doc))
    roi = read_roi(tmp_path / "r.mrk.json")
    np.testing.assert_allclose(roi.center_lps, [-1.0, -2.0, 3.0])
    np.testing.assert_allclose(roi.orientation, np.diag([-1.0, -1.0, 1.0]))
    assert roi.name == "r"
    # the LPS box of an identity-in-RAS ROI spans the same points
    np.testing.assert_allclose(np.sort(roi.corners_lps(), axis=0)[[0, -1]],
                               [[-3.0, -4.5, 0.0], [1.0, 0.5, 6.0]])


def test_rotated_roi_to_box_brute_force():
    vol = Volume(np.zeros((30, 40, 50), np.int16), (1.0, 1.0, 2.0), (-25.0, -40.0, 0.0))
    roi = rotated_roi()
    box = roi_to_box(roi, vol)
    # brute force: voxel centres inside the ROI's index-space bounding box
    corners = vol.lps_to_index(roi.corners_lps())
    zz, yy, xx = np.mgrid[-10:40, -10:60, -10:70]
    idx = np.stack([zz, yy, xx], axis=-1)
    inside = np.all((idx >= corners.min(axis=0)) & (idx <= corners.max(axis=0)), axis=-1)
    expected = Box.from_mask(inside)
    assert box == Box(tuple(np.add(expected.start, -10)), tuple(np.add(expected.stop, -10)))
    # the box encloses every voxel centre inside the rotated ROI itself
    local = (vol.index_to_lps(idx.reshape(-1, 3).astype(float)) - roi.center_lps) @ roi.orientation
    in_roi = np.all(np.abs(local) <= roi.size_mm / 2, axis=1).reshape(inside.shape)
    assert in_roi.any() and not (in_roi & ~inside).any()


def test_box_to_roi_and_back_on_oblique_volume():
    direction = Rotation.from_euler("xyz", [5, -10, 20], degrees=True).as_matrix()
    vol = Volume(np.zeros((20, 30, 40), np.int16), (0.8, 0.9, 3.0), (5.0, -7.0, 11.0), direction)
    box = Box((2, 5, -3), (9, 21, 44))  # extends outside the volume on purpose
    roi = box_to_roi(box, vol, name="b")
    np.testing.assert_allclose(roi.size_mm, [47 * 0.8, 16 * 0.9, 7 * 3.0])
    np.testing.assert_allclose(roi.orientation, direction)
    assert roi_to_box(roi, vol) == box


def test_bad_roi_files(tmp_path):
    def write(name, doc):
        p = tmp_path / name
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        return p

    p = write("size.mrk.json", {"markups": [{"type": "ROI", "center": [0, 0, 0], "size": [10, 0, 5]}]})
    with pytest.raises(InputError, match=r"size.mrk.json: markups\[0\].size: expected three positive numbers"):
        read_roi(p)
    p = write("fid.mrk.json", {"markups": [{"type": "Fiducial", "controlPoints": [{"position": [1, 2, 3]}]}]})
    with pytest.raises(InputError, match=r"fid.mrk.json: markups\[0\].type: expected ROI .*got Fiducial"):
        read_roi(p)
    p = write("cs.mrk.json", {"markups": [{"type": "ROI", "coordinateSystem": "XYZ", "center": [0, 0, 0],
                                            "size": [1, 1, 1]}]})
    with pytest.raises(InputError, match=r"cs.mrk.json: markups\[0\].coordinateSystem: expected LPS or RAS"):
        read_roi(p)
    p = write("rot.mrk.json", {"markups": [{"type": "ROI", "center": [0, 0, 0], "size": [1, 1, 1],
                                             "orientation": [1, 1, 0, 0, 1, 0, 0, 0, 1]}]})
    with pytest.raises(InputError, match=r"rot.mrk.json: markups\[0\].orientation: expected an orthonormal"):
        read_roi(p)
    p = write("json.mrk.json", "{not json")
    with pytest.raises(InputError, match="json.mrk.json: JSON"):
        read_roi(p)
    p = write("nomarkups.mrk.json", {"something": 1})
    with pytest.raises(InputError, match="nomarkups.mrk.json: markups"):
        read_roi(p)
    with pytest.raises(InputError, match="size: expected three positive numbers"):
        Roi([0, 0, 0], [1, -1, 1])
    with pytest.raises(InputError, match="coordinate_system"):
        write_roi(rotated_roi(), tmp_path / "x.mrk.json", coordinate_system="IJK")
