"""Slicer .seg.nrrd round trips: overlapping segments, exact names (spaces, unicode), ids, colours,
oblique geometry; bad files."""

from __future__ import annotations

import numpy as np
import pytest
import slicerio
from scipy.spatial.transform import Rotation

from AutoSegSensitivity import Segmentation, Volume
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_segmentation, write_segmentation
from AutoSegSensitivity.io.segnrrd import segment_names

NAMES = ["Parotid L", "Ödem – ß (rechts)", "Spinal cord", "empty structure"]


def make_segmentation(rng) -> Segmentation:
    direction = Rotation.from_euler("zyx", [30, 10, -5], degrees=True).as_matrix()
    geom = Volume(np.zeros((6, 8, 10), np.uint8), (0.9, 1.2, 2.5), (-40.0, 12.5, 7.75), direction)
    seg = Segmentation.on_grid(geom)
    a = np.zeros(geom.shape, bool)
    a[1:5, 2:7, 1:8] = True
    b = np.zeros(geom.shape, bool)
    b[2:6, 0:4, 5:10] = True  # overlaps a
    c = rng.random(geom.shape) > 0.7  # overlaps both, scattered
    seg.add(NAMES[0], a, (0.1, 0.2, 0.3))
    seg.add(NAMES[1], b, (1.0, 0.5, 0.0), id="oedem")
    seg.add(NAMES[2], c, (0.25, 0.75, 0.125))
    seg.add(NAMES[3], np.zeros(geom.shape, bool), (0.5, 0.5, 0.5))
    return seg


def test_round_trip_overlaps_names_colours_geometry(tmp_path, rng):
    seg = make_segmentation(rng)
    path = write_segmentation(seg, tmp_path / "s.seg.nrrd")
    assert not list(tmp_path.glob(".*tmp*"))
    back = read_segmentation(path)
    assert back.names == NAMES
    assert [s.id for s in back] == [NAMES[0], "oedem", NAMES[2], NAMES[3]]
    for a, b in zip(seg, back):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.color == pytest.approx(a.color, abs=1e-6)
    g, h = seg.geometry, back.geometry
    assert h.shape == g.shape
    np.testing.assert_allclose(h.spacing, g.spacing, atol=1e-12)
    np.testing.assert_allclose(h.origin, g.origin, atol=1e-12)
    np.testing.assert_allclose(h.direction, g.direction, atol=1e-12)
    # overlapping segments need more than one layer: the file is 4D
    raw = slicerio.read_segmentation(str(path))
    assert raw["voxels"].ndim == 4
    assert segment_names(path) == NAMES
    header = path.read_bytes().split(b"\n\n", 1)[0]
    assert "Segment1_Name:=Ödem – ß (rechts)".encode("utf-8") in header


def test_non_overlapping_stays_one_layer(tmp_path):
    geom = Volume(np.zeros((3, 4, 5), np.uint8))
    seg = Segmentation.on_grid(geom)
    m = np.zeros(geom.shape, bool)
    m[0] = True
    seg.add("a", m)
    seg.add("b", ~m)
    path = write_segmentation(seg, tmp_path / "s.seg.nrrd")
    assert slicerio.read_segmentation(str(path))["voxels"].ndim == 3
    back = read_segmentation(path)
    np.testing.assert_array_equal(back.mask("b"), ~m)


def test_bad_seg_files(tmp_path, rng):
    with pytest.raises(InputError, match="x.nrrd: file name: expected a Slicer segmentation"):
        read_segmentation(tmp_path / "x.nrrd")
    with pytest.raises(InputError, match="none.seg.nrrd: file: expected an existing"):
        read_segmentation(tmp_path / "none.seg.nrrd")
    # a .seg.nrrd without segments
    import nrrd

    nrrd.write(str(tmp_path / "empty.seg.nrrd"), np.zeros((4, 4, 4), np.uint8),
               {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3)})
    with pytest.raises(InputError) as exc:
        read_segmentation(tmp_path / "empty.seg.nrrd")
    assert "empty.seg.nrrd" in str(exc.value) and "Segment0_Name" in str(exc.value) and "at least one segment" in str(exc.value)
    good = write_segmentation(make_segmentation(rng), tmp_path / "good.seg.nrrd")
    (tmp_path / "cut.seg.nrrd").write_bytes(good.read_bytes()[:-200])
    with pytest.raises(InputError, match="cut.seg.nrrd: file: expected a readable"):
        read_segmentation(tmp_path / "cut.seg.nrrd")
    with pytest.raises(InputError, match="segments: expected at least one segment"):
        write_segmentation(Segmentation.on_grid(Volume(np.zeros((2, 2, 2)))), tmp_path / "n.seg.nrrd")


def test_cropped_file_with_reference_geometry_comes_back_on_full_grid(tmp_path, rng):
    """Slicer (the application) saves segments cropped to their extent plus the reference image geometry
    as a conversion parameter: the reader puts them back onto the reference grid."""
    from AutoSegSensitivity import Box
    from AutoSegSensitivity.io.segnrrd import reference_geometry_string

    full = make_segmentation(rng)
    box = Box((1, 2, 3), (5, 7, 9))
    sub_geom = full.geometry.crop(box)
    data = slicerio.create_segmentation(tuple(reversed(sub_geom.shape)), sub_geom.ijk_to_lps())
    expected = []
    for s in (full.segments[0], full.segments[2]):  # ASCII names: slicerio alone writes ASCII headers
        m = np.zeros(full.geometry.shape, bool)
        m[box.slices] = s.mask[box.slices]
        expected.append(m)
        slicerio.add_segment(data, np.transpose(s.mask[box.slices], (2, 1, 0)), {"id": s.name, "name": s.name})
    data["conversionParameters"] = [{"name": "Reference image geometry",
                                     "value": reference_geometry_string(full.geometry), "description": "d"}]
    slicerio.write_segmentation(str(tmp_path / "crop.seg.nrrd"), data)
    back = read_segmentation(tmp_path / "crop.seg.nrrd")
    assert back.geometry.same_grid(full.geometry, atol=1e-9)
    for m, s in zip(expected, back):
        np.testing.assert_array_equal(s.mask, m)
