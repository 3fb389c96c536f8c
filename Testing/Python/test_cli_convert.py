"""`autosegsens convert`: DICOM (+ RTSTRUCT) and image + labels to a case folder; bad input exits 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.io import read_dicom_series, read_rtstruct, read_segmentation, read_volume, scan_dataset
from test_io_dicom import make_series
from test_io_rtstruct import square, write_rtstruct


def test_convert_real_dicom_with_rtstruct(shared_data, tmp_path, capsys):
    folder = shared_data / "lung-ct-rtstruct" / "pat_2"
    rs = sorted(folder.glob("DCM_RS_*.dcm"))[0]
    out = tmp_path / "cases" / "pat_2"
    assert main(["convert", "--dicom", str(folder), "--rtstruct", str(rs), "--out", str(out)]) == 0
    assert "segmentation.seg.nrrd (1 segments: GTV-1)" in capsys.readouterr().out
    ct = read_dicom_series(folder)
    image = read_volume(out / "image.nrrd")
    np.testing.assert_array_equal(image.array, ct.volume.array)
    assert image.same_grid(ct.volume, atol=1e-9)
    seg = read_segmentation(out / "segmentation.seg.nrrd")
    np.testing.assert_array_equal(seg.mask("GTV-1"), read_rtstruct(rs, ct).segmentation.mask("GTV-1"))
    assert [c.name for c in scan_dataset(tmp_path / "cases").cases] == ["pat_2"]
    # refusing to overwrite, then allowed with --overwrite
    assert main(["convert", "--dicom", str(folder), "--out", str(out)]) == 2
    assert "image.nrrd" in capsys.readouterr().err
    assert main(["convert", "--dicom", str(folder), "--out", str(out), "--overwrite"]) == 0


def test_convert_image_and_labels(shared_data, tmp_path):
    src = shared_data / "abdomen-ct"
    out = tmp_path / "abdomen"
    assert main(["convert", "--image", str(src / "image.nii.gz"), "--labels", str(src / "labels.nii.gz"),
                 "--names", str(src / "labels.json"), "--out", str(out)]) == 0
    seg = read_segmentation(out / "segmentation.seg.nrrd")
    labels = read_volume(src / "labels.nii.gz")
    np.testing.assert_array_equal(seg.mask("liver"), labels.array == 5)
    assert seg.geometry.same_grid(read_volume(out / "image.nrrd"), atol=1e-9)
    out2 = tmp_path / "unnamed"
    assert main(["convert", "--image", str(src / "image.nii.gz"), "--labels", str(src / "labels.nii.gz"),
                 "--out", str(out2)]) == 0
    assert "Label_5" in read_segmentation(out2 / "segmentation.seg.nrrd").names


def test_convert_prints_warnings_and_forces(tmp_path, capsys):
    make_series(tmp_path / "ct", n=3, shape=(10, 12), dz=2.0, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0))
    rs = write_rtstruct(tmp_path / "rs.dcm", [("A", (1, 2, 3), [square(2.5, 6.5, 2.5, 6.5, 2.0)]), ("Empty", (1, 1, 1), [])],
                        series_uid="5.5.5")
    assert main(["convert", "--dicom", str(tmp_path / "ct"), "--rtstruct", str(rs), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rs.dcm" in err and "SeriesInstanceUID" in err
    assert main(["convert", "--dicom", str(tmp_path / "ct"), "--rtstruct", str(rs), "--force",
                 "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: ROI 'Empty': empty (no contours)" in err and "forced" in err


@pytest.mark.parametrize("argv, needle", [
    (["--out", "X"], "exactly one of --dicom DIR or --image FILE"),
    (["--dicom", "MISSING", "--out", "X"], "MISSING: folder"),
    (["--image", "IMG", "--rtstruct", "R", "--out", "X"], "only with --dicom"),
    (["--image", "IMG", "--names", "N", "--out", "X"], "--names"),
])
def test_convert_bad_usage_exits_2(tmp_path, capsys, rng, argv, needle):
    from AutoSegSensitivity import Volume
    from AutoSegSensitivity.io import write_volume

    img = write_volume(Volume(np.zeros((2, 3, 4), np.int16)), tmp_path / "img.nrrd")
    argv = [a.replace("IMG", str(img)).replace("X", str(tmp_path / "out")) for a in argv]
    assert main(["convert"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_convert_two_series_needs_uid(tmp_path, capsys):
    make_series(tmp_path / "two", n=3, series_uid="1.2.3.100", prefix="a")
    make_series(tmp_path / "two", n=3, series_uid="1.2.3.200", prefix="b")
    assert main(["convert", "--dicom", str(tmp_path / "two"), "--out", str(tmp_path / "o")]) == 2
    assert "1.2.3.100" in capsys.readouterr().err
    assert main(["convert", "--dicom", str(tmp_path / "two"), "--series-uid", "1.2.3.200", "--out", str(tmp_path / "o")]) == 0


def test_console_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "AutoSegSensitivity", "convert", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "autosegsens convert --dicom" in proc.stdout
