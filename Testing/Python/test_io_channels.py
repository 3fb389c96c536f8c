"""One multi-channel probability image per case (AutoSegSensitivity.io.channels, `--format channels`).

The files are written as MONAI's SaveImage writes them (read in monai/data/image_writer.py): NibabelWriter's
4D NIfTI (x, y, z, c) with the affine in the sform (written here byte by byte, an independent NIfTI-1
writer: nibabel is not a dependency), ITKWriter's vector image (SimpleITK, NIfTI and NRRD) and an NRRD with
a ``list`` first axis (pynrrd). The cohort has a rotated, shifted grid; every route must equal `tune` on
the same maps written as separate prob_<S>.nrrd files."""

from __future__ import annotations

import gzip
import json
import struct

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import read_segmentation, read_volume, write_case, write_volume
from AutoSegSensitivity.io.channels import channel_header, channel_index, iter_channel_maps, read_channel_labels
from AutoSegSensitivity.segmentation import Segmentation
from AutoSegSensitivity.tune import detect_format, tune_cohort
from AutoSegSensitivity.volume import Volume

from tune_cohort import SPACING_XYZ, case_arrays
from test_io_references import same_tuning

N = 4
ORIGIN = (-31.5, 12.25, 80.0)
DIRECTION = np.asarray(sitk.VersorRigid3DTransform((0.1, -0.2, 0.15, 0.96)).GetMatrix(), float).reshape(3, 3)
NAMES = ["Low", "High"]


def grid(shape) -> Volume:
    return Volume(np.zeros(shape, np.int16), SPACING_XYZ, ORIGIN, DIRECTION)


def write_nifti_4d(path, channels_zyx, geom: Volume):
    """A gzipped NIfTI-1 as nibabel writes MONAI's channel-last array: dim = [4, x, y, z, c, 1, 1, 1],
    float32, the voxel-to-RAS affine in the sform (code 1)."""
    data = np.stack(channels_zyx, axis=-1).transpose(2, 1, 0, 3).astype("<f4")  # (x, y, z, c)
    lps = np.eye(4)
    lps[:3, :3] = geom.direction * np.asarray(geom.spacing)[None, :]
    lps[:3, 3] = geom.origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    hdr[38] = ord("r")
    struct.pack_into("<8h", hdr, 40, 4, *data.shape, 1, 1, 1)
    struct.pack_into("<hhh", hdr, 70, 16, 32, 0)  # datatype float32, bitpix
    struct.pack_into("<8f", hdr, 76, 1.0, *geom.spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<fff", hdr, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    hdr[123] = 2 | 8  # mm, s
    struct.pack_into("<hh", hdr, 252, 0, 1)  # qform_code, sform_code
    for row in range(3):
        struct.pack_into("<4f", hdr, 280 + 16 * row, *ras[row])
    hdr[344:348] = b"n+1\x00"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(hdr) + b"\x00" * 4 + data.tobytes(order="F"))


def write_vector(path, channels_zyx, geom: Volume):
    """ITKWriter's output: a vector image (one component per channel), NIfTI or NRRD by the suffix."""
    img = sitk.GetImageFromArray(np.stack(channels_zyx, axis=-1).astype(np.float32), isVector=True)
    img.SetSpacing(geom.spacing)
    img.SetOrigin(geom.origin)
    img.SetDirection(geom.direction.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def write_nrrd_list(path, channels_zyx, geom: Volume):
    """An NRRD whose first axis has kind ``list`` (pynrrd, x-fastest index order)."""
    data = np.stack(channels_zyx).transpose(0, 3, 2, 1).astype(np.float32)  # (c, x, y, z)
    dirs = np.vstack([np.full(3, np.nan), (geom.direction * np.asarray(geom.spacing)[None, :]).T])
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), data, {"kinds": ["list", "domain", "domain", "domain"], "space": "left-posterior-superior",
                                 "space directions": dirs, "space origin": np.asarray(geom.origin, float)})


def softmax(maps):
    fg = [maps[s] for s in NAMES]
    return [np.clip(1.0 - np.max(fg, axis=0), 0, 1).astype(np.float32)] + fg


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """References and prob_<S>.nrrd maps on a rotated grid, and the same maps in four channel layouts."""
    root = tmp_path_factory.mktemp("channels")
    for i in range(N):
        case = f"case{i:02d}"
        maps, masks = case_arrays(i)
        image = grid(maps["Low"].shape)
        seg = Segmentation.on_grid(image)
        for s in NAMES:
            seg.add(s, masks[s])
            write_volume(image.with_array(maps[s]), root / "maps" / case / f"prob_{s}.nrrd")
        write_case(root / "refs" / case, image, seg)
        write_nifti_4d(root / "nii4d" / f"{case}.nii.gz", softmax(maps), image)
        write_vector(root / "vecnii" / f"{case}.nii.gz", softmax(maps), image)
        write_vector(root / "vecnrrd" / case / f"{case}_trans.nrrd", softmax(maps), image)
        write_nrrd_list(root / "listnrrd" / case / f"{case}_trans.nrrd", [maps[s] for s in NAMES], image)  # sigmoid
    for layout in ("nii4d", "vecnrrd"):
        (root / layout / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Low": 1, "High": 2}}))
    (root / "listnrrd" / "labels.json").write_text(json.dumps({"1": "Low", "2": "High"}))
    (root / "names.json").write_text(json.dumps({"labels": {"background": 0, "Low": 1, "High": 2}}))
    return root


def test_a_4d_nifti_and_a_list_nrrd_read_back_on_the_reference_grid(cohort):
    maps = case_arrays(1)[0]
    ref = read_segmentation(cohort / "refs" / "case01" / "segmentation.seg.nrrd").geometry
    assert not np.allclose(ref.direction, np.eye(3))  # a rotated grid: LPS/RAS or axis-order slips show
    for f, layout, n in ((cohort / "nii4d" / "case01.nii.gz", "4d", 3),
                         (cohort / "vecnii" / "case01.nii.gz", "vector", 3),
                         (cohort / "vecnrrd" / "case01" / "case01_trans.nrrd", "vector", 3),
                         (cohort / "listnrrd" / "case01" / "case01_trans.nrrd", "vector", 2)):
        geom, channels, got_layout = channel_header(f)
        assert (channels, got_layout) == (n, layout)
        assert geom.same_grid(ref, atol=1e-4), (f, geom.grid_difference(ref, atol=1e-4))
        labels = {"Low": 1, "High": 2}
        got = dict(iter_channel_maps(f, labels))
        assert list(got) == NAMES
        for s in NAMES:
            np.testing.assert_array_equal(got[s].array, maps[s])
            assert got[s].same_grid(ref, atol=1e-4)
    assert channel_index({"Low": 1, "High": 2}, 3, "f") == {"Low": 1, "High": 2}  # softmax: channel = value
    assert channel_index({"Low": 1, "High": 2}, 2, "f") == {"Low": 0, "High": 1}  # sigmoid: value - 1


def test_tune_on_channels_equals_tune_on_separate_maps(cohort):
    base = tune_cohort(cohort / "maps", cohort / "refs", structures=NAMES, n_boot=50, seed=1)
    for layout, dj in (("nii4d", None), ("vecnii", cohort / "names.json"), ("vecnrrd", None), ("listnrrd", None)):
        assert detect_format(cohort / layout) == "channels"
        res = tune_cohort(cohort / layout, cohort / "refs", dataset_json=dj, n_boot=50, seed=1)
        assert res.inputs["format"] == "channels" and not res.problems, (layout, res.problems)
        same_tuning(base, res)
    assert detect_format(cohort / "maps") == "maps"


def test_apply_on_channels_equals_p_ge_t(cohort, tmp_path):
    res = tune_cohort(cohort / "maps", cohort / "refs", n_boot=20)
    table = tmp_path / "t.json"
    from AutoSegSensitivity.tune import write_thresholds

    write_thresholds(table, {s: res.structures[s].t_opt for s in NAMES})
    for layout in ("nii4d", "listnrrd"):
        out = tmp_path / layout
        assert main(["apply", "--thresholds", str(table), "--prob-dir", str(cohort / layout), "--out", str(out)]) == 0
        seg = read_segmentation(out / "case03" / "segmentation.seg.nrrd")
        p = {s: read_volume(cohort / "maps" / "case03" / f"prob_{s}.nrrd") for s in NAMES}
        assert seg.geometry.same_grid(p["Low"], atol=1e-4)
        for s in NAMES:
            np.testing.assert_array_equal(seg.mask(s), p[s].array >= np.float32(res.structures[s].t_opt))


def _cli_error(capsys, args):
    capsys.readouterr()
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(ln.startswith(("note: ", "autosegsens tune: error: ")) for ln in lines), lines  # no traceback
    return lines[-1]


def test_bad_channel_inputs_are_one_clear_line(cohort, tmp_path, capsys):
    refs = cohort / "refs"
    maps = case_arrays(0)[0]
    image = grid(maps["Low"].shape)
    # wrong channel count for the labels
    four = tmp_path / "four.json"
    four.write_text(json.dumps({"labels": {"background": 0, "Low": 1, "High": 2, "A": 3, "B": 4}}))
    err = _cli_error(capsys, ["tune", "--prob-dir", str(cohort / "nii4d"), "--ref-dir", str(refs), "--dataset-json",
                              str(four), "--out", str(tmp_path / "o1")])
    assert f"no usable case: case00: {cohort / 'nii4d' / 'case00.nii.gz'}: channels: expected 5 (softmax" in err
    assert "or 4 (sigmoid" in err and "got 3" in err
    # a 3D file where channels are expected
    flat = tmp_path / "flat"
    write_volume(image.with_array(maps["Low"]), flat / "case00.nii.gz")
    (flat / "labels.json").write_text(json.dumps({"1": "Low"}))
    err = _cli_error(capsys, ["tune", "--prob-dir", str(flat), "--format", "channels", "--ref-dir", str(refs),
                              "--out", str(tmp_path / "o2")])
    assert f"{flat / 'case00.nii.gz'}: channels: expected a multi-channel probability image" in err
    assert "got a 3D image with one channel (for one file per structure use --format maps)" in err
    # channels on another grid than the reference
    moved = tmp_path / "moved"
    shifted = Volume(image.array, image.spacing, (0.0, 0.0, 0.0), image.direction)
    write_nifti_4d(moved / "case00.nii.gz", softmax(maps), shifted)
    (moved / "labels.json").write_text(json.dumps({"1": "Low", "2": "High"}))
    err = _cli_error(capsys, ["tune", "--prob-dir", str(moved), "--ref-dir", str(refs), "--out", str(tmp_path / "o3")])
    assert f"case00: {moved / 'case00.nii.gz'}: grid: expected the grid of the reference case00, got origin" in err
    # a case folder with two images, and no channel names at all
    two = tmp_path / "two"
    write_vector(two / "case00" / "a.nii.gz", softmax(maps), image)
    write_vector(two / "case00" / "b.nii.gz", softmax(maps), image)
    (two / "labels.json").write_text(json.dumps({"1": "Low", "2": "High"}))
    err = _cli_error(capsys, ["tune", "--prob-dir", str(two), "--format", "channels", "--ref-dir", str(refs),
                              "--out", str(tmp_path / "o4")])
    assert f"{two / 'case00'}: files: expected one multi-channel probability image in the case folder, got a.nii.gz, b.nii.gz" in err
    (two / "labels.json").unlink()
    err = _cli_error(capsys, ["tune", "--prob-dir", str(two), "--format", "channels", "--ref-dir", str(refs),
                              "--out", str(tmp_path / "o5")])
    assert err.startswith(f"autosegsens tune: error: {two}: channel names: expected --dataset-json")


def test_channel_names_from_either_json(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"2": "High", "1": "Low"}))
    assert read_channel_labels(tmp_path / "l.json") == {"Low": 1, "High": 2}
    (tmp_path / "d.json").write_text(json.dumps({"labels": {"background": 0, "High": 2, "Low": 1}}))
    assert list(read_channel_labels(tmp_path / "d.json").items()) == [("Low", 1), ("High", 2)]
    (tmp_path / "r.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "ab": [1, 2]}}))
    with pytest.raises(InputError, match="region-based"):
        read_channel_labels(tmp_path / "r.json")
    (tmp_path / "z.json").write_text(json.dumps({"0": "background"}))
    with pytest.raises(InputError, match="positive label value"):
        read_channel_labels(tmp_path / "z.json")
