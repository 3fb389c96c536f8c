"""`autosegsens phantom` and `autosegsens transform`: real files written by the CLI and read back with
SimpleITK, slicerio and JSON; exit code 2 with one line on stderr for bad input; nothing overwritten
silently."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.intensity import apply_transform
from AutoSegSensitivity.phantom import STRUCTURES, make_phantom

SHAPE = ["8", "48", "48"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    assert main(["phantom", "--out", str(root), "--cases", "2", "--seed", "3", "--shape", *SHAPE]) == 0
    return root


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_phantom_writes_the_dataset_layout(tmp_path, capsys):
    import slicerio

    root = tmp_path / "data"
    rc = main(["phantom", "--out", str(root), "--cases", "2", "--seed", "3", "--shape", *SHAPE])
    assert rc == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in root.iterdir()) == ["case000", "case001"]
    for n in range(2):
        folder = root / f"case00{n}"
        assert f"wrote {folder}" in out
        img, seg = make_phantom(seed=(3, n), shape=tuple(int(v) for v in SHAPE))
        itk = sitk.ReadImage(str(folder / "image.nrrd"))
        assert itk.GetPixelID() == sitk.sitkInt16
        np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), img.array)
        assert itk.GetSpacing() == pytest.approx(img.spacing)
        sio = slicerio.read_segmentation(str(folder / "segmentation.seg.nrrd"))
        assert [s["name"] for s in sio["segments"]] == list(STRUCTURES)
        roi = json.loads((folder / "roi.mrk.json").read_text())["markups"][0]
        assert roi["type"] == "ROI" and all(s > 0 for s in roi["size"])
    for name in STRUCTURES:
        assert name in out  # prominence table
    assert "prominence" in out


def test_phantom_spacing_and_shape_options(tmp_path):
    rc = main(["phantom", "--out", str(tmp_path / "a"), "--cases", "1", "--spacing", "6.4", "6.4", "12"])
    assert rc == 0
    itk = sitk.ReadImage(str(tmp_path / "a" / "case000" / "image.nrrd"))
    assert itk.GetSize() == (32, 32, 8) and itk.GetSpacing() == pytest.approx((6.4, 6.4, 12.0))
    rc = main(["phantom", "--out", str(tmp_path / "b"), "--cases", "1", "--shape", "4", "20", "24",
               "--spacing", "5", "5", "10"])
    assert rc == 0
    itk = sitk.ReadImage(str(tmp_path / "b" / "case000" / "image.nrrd"))
    assert itk.GetSize() == (24, 20, 4) and itk.GetSpacing() == pytest.approx((5.0, 5.0, 10.0))


def test_phantom_never_overwrites_silently(dataset, tmp_path, capsys):
    import shutil

    dataset = shutil.copytree(dataset, tmp_path / "data")  # the module's dataset stays as it is
    before = (dataset / "case000" / "image.nrrd").read_bytes()
    rc = main(["phantom", "--out", str(dataset), "--cases", "1", "--seed", "9", "--shape", *SHAPE])
    assert rc == 2
    assert "case000" in _one_error_line(capsys)
    assert (dataset / "case000" / "image.nrrd").read_bytes() == before
    rc = main(["phantom", "--out", str(dataset), "--cases", "1", "--seed", "9", "--shape", *SHAPE, "--overwrite"])
    assert rc == 0
    img, _ = make_phantom(seed=(9, 0), shape=tuple(int(v) for v in SHAPE))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "case000" / "image.nrrd"))),
                                  img.array)
    # --overwrite replaces the whole dataset: no case of the old one is left beside the new one
    assert sorted(p.name for p in dataset.iterdir()) == ["case000"]


@pytest.mark.parametrize("extra, word", [(["--cases", "0"], "--cases"), (["--seed", "-1"], "--seed"),
                                         (["--shape", "0", "64", "64"], "shape"),
                                         (["--spacing", "1", "0", "3"], "spacing")])
def test_phantom_bad_input_exit_2(tmp_path, capsys, extra, word):
    rc = main(["phantom", "--out", str(tmp_path / "x"), *extra])
    assert rc == 2
    assert word in _one_error_line(capsys)
    assert not (tmp_path / "x").exists()


def test_transform_preset_keeps_geometry(dataset, tmp_path, capsys):
    src = dataset / "case001" / "image.nrrd"
    out = tmp_path / "slf1.nrrd"
    assert main(["transform", "--preset", "SLF1", str(src), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert b.GetPixelID() == sitk.sitkFloat32
    assert b.GetSize() == a.GetSize() and b.GetSpacing() == a.GetSpacing()
    assert b.GetOrigin() == a.GetOrigin() and b.GetDirection() == a.GetDirection()
    hu = sitk.GetArrayFromImage(a).astype(float)
    got = sitk.GetArrayFromImage(b)
    # Hand-checked values of SLF1 at HU that occur in the image.
    assert np.all(got[hu <= -500] == 0) and np.all(got[hu >= 1500] == 1)
    mid = (hu > -200) & (hu < 200)
    np.testing.assert_allclose(got[mid], 0.2 + (hu[mid] + 200) * 0.6 / 400, atol=1e-6)
    np.testing.assert_array_equal(got, apply_transform(hu, "SLF1"))


def test_transform_points_to_nifti(dataset, tmp_path):
    src = dataset / "case000" / "image.nrrd"
    out = tmp_path / "nlf.nii.gz"
    assert main(["transform", "--points=-100:0,100:1", str(src), str(out)]) == 0
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert b.GetOrigin() == pytest.approx(a.GetOrigin()) and b.GetSpacing() == pytest.approx(a.GetSpacing())
    hu = sitk.GetArrayFromImage(a).astype(float)
    np.testing.assert_allclose(sitk.GetArrayFromImage(b), np.clip((hu + 100) / 200, 0, 1), atol=1e-6)


def test_transform_refuses_to_overwrite(dataset, tmp_path, capsys):
    src = dataset / "case000" / "image.nrrd"
    out = tmp_path / "t.nrrd"
    out.write_bytes(b"keep")
    assert main(["transform", "--preset", "NLF2", str(src), str(out)]) == 2
    assert "t.nrrd" in _one_error_line(capsys)
    assert out.read_bytes() == b"keep"
    assert main(["transform", "--preset", "NLF2", str(src), str(out), "--overwrite"]) == 0
    assert sitk.ReadImage(str(out)).GetPixelID() == sitk.sitkFloat32


@pytest.mark.parametrize("args, word", [
    (["--preset", "SLF7"], "--preset"),
    (["--points=-100:0,-200:1"], "hu_points"),
    (["--points=-100:0,100:2"], "values"),
    (["--points=abc"], "intensity transform"),
])
def test_transform_bad_transform_exit_2(dataset, tmp_path, capsys, args, word):
    out = tmp_path / "o.nrrd"
    assert main(["transform", *args, str(dataset / "case000" / "image.nrrd"), str(out)]) == 2
    assert word in _one_error_line(capsys)
    assert not out.exists()


def test_transform_bad_files_exit_2(dataset, tmp_path, capsys):
    assert main(["transform", "--preset", "SLF1", str(tmp_path / "missing.nrrd"), str(tmp_path / "o.nrrd")]) == 2
    assert "missing.nrrd" in _one_error_line(capsys)
    assert main(["transform", "--preset", "SLF1", str(dataset / "case000" / "image.nrrd"), str(tmp_path / "o.png")]) == 2
    assert "o.png" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:  # neither --preset nor --points: argparse usage error
        main(["transform", str(dataset / "case000" / "image.nrrd"), str(tmp_path / "o.nrrd")])
    assert exc.value.code == 2


def test_phantom_files_load_in_slicer_mrml(dataset):
    """The three files of a case load in Slicer's own MRML (slicer-core wheel): the volume on its grid,
    the segments by name, and the ROI around the head."""
    import slicer
    import vtk

    from AutoSegSensitivity.mrml.converters import ensure_segmentation_converters

    ensure_segmentation_converters()
    folder = dataset / "case001"
    img, _ = make_phantom(seed=(3, 1), shape=tuple(int(v) for v in SHAPE))
    scene = slicer.vtkMRMLScene()

    vol = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(vol)
    vstore = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(vstore)
    vstore.SetFileName(str(folder / "image.nrrd"))
    assert vstore.ReadData(vol) == 1
    m = vtk.vtkMatrix4x4()
    vol.GetIJKToRASMatrix(m)
    ijk_to_ras = np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(ijk_to_ras, img.ijk_to_ras(), atol=1e-4)

    seg = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(seg)
    sstore = slicer.vtkMRMLSegmentationStorageNode()
    scene.AddNode(sstore)
    sstore.SetFileName(str(folder / "segmentation.seg.nrrd"))
    assert sstore.ReadData(seg) == 1
    names = [seg.GetSegmentation().GetNthSegment(i).GetName()
             for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert names == list(STRUCTURES)

    roi = slicer.vtkMRMLMarkupsROINode()
    scene.AddNode(roi)
    rstore = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(rstore)
    rstore.SetFileName(str(folder / "roi.mrk.json"))
    assert rstore.ReadData(roi) == 1
    centre = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(centre)
    size = np.asarray(roi.GetSize())
    body = np.argwhere(img.array > -500).astype(float)
    ras = img.index_to_lps(body) * np.array([-1.0, -1.0, 1.0])
    assert np.all(np.abs(ras - np.asarray(centre)) <= size / 2 + 1e-6)
