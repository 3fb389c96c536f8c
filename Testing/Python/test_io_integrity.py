"""Readers never give wrong numbers silently (AutoSegSensitivity.io.integrity, io.images, io.channels).

* F1 of the user trial: `apply --format channels` on 4D NIfTI files crashed (exit 139) or could read freed
  memory: iter_channel_maps handed out views into a SimpleITK image that was freed once the generator was
  dropped. The maps must own their data.
* F4: SimpleITK reads a cut-short .nii / .nii.gz with the missing voxels as 0 (checked below: the premise
  of the fix). Such a file (probability map, labels.nii.gz reference, nnU-Net labelsTs file, 4D channels
  file) must give one line naming the file and the reason; tune lists that case and goes on. Valid files
  (several gzip members, header extensions, bytes after the gzip stream) are never refused.

Cost of the check, measured on a 150 x 512 x 512 float32 .nii.gz (600 MiB of data, a 137 MB file written by
SimpleITK, this shared 2-core machine): fast path (ISIZE) median 40 us (max 0.33 ms over 20 runs); the
streaming path (only for multi-member or cut-short files) 0.80 s; SimpleITK's read of the same file 1.07 s,
read_volume with the check 1.19 s. test_a_complete_single_member_file_is_checked_without_decompressing
pins that the fast path does not stream the file.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.errors import InputError
from AutoSegSensitivity.io import integrity, read_segmentation, read_volume, write_volume
from AutoSegSensitivity.io.channels import iter_channel_maps
from AutoSegSensitivity.io.integrity import check_nifti_complete, nifti_data_size
from AutoSegSensitivity.io.labels import write_label_names
from AutoSegSensitivity.tune import tune_cohort
from AutoSegSensitivity.volume import Volume

from test_io_channels import grid, softmax, write_nifti_4d
from test_io_references import label_map, same_tuning
from tune_cohort import ORIGIN, SPACING_XYZ, case_arrays

REPO = Path(__file__).resolve().parents[2]
N = 4
NAMES = ["Low", "High"]


def cut(path: Path, keep: float) -> None:
    """Keep the first ``keep`` fraction of the file's bytes (a copy cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def volume(i: int, array=None) -> Volume:
    maps, masks = case_arrays(i)
    return Volume(label_map(masks) if array is None else array, SPACING_XYZ, ORIGIN)


@pytest.fixture()
def cohort(tmp_path):
    """4 cases: maps/<case>/prob_<S>.nii.gz; refs/<case>/labels.nii.gz + labels.json (no image);
    labelsTs/<case>.nii.gz + dataset.json (nnU-Net's label folder)."""
    (tmp_path / "D" / "labelsTs").mkdir(parents=True)
    (tmp_path / "D" / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "Low": 1, "High": 2},
                                                             "file_ending": ".nii.gz"}))
    for i in range(N):
        case = f"case{i:02d}"
        maps, _ = case_arrays(i)
        for s in NAMES:
            write_volume(volume(i, maps[s]), tmp_path / "maps" / case / f"prob_{s}.nii.gz")
        write_volume(volume(i), tmp_path / "refs" / case / "labels.nii.gz")
        write_label_names({1: "Low", 2: "High"}, tmp_path / "refs" / case / "labels.json")
        write_volume(volume(i), tmp_path / "D" / "labelsTs" / f"{case}.nii.gz")
    return tmp_path


# ------------------------------------------------------------------------------------------------ F4 premise
def test_simpleitk_reads_a_cut_short_nifti_as_zeros_and_refuses_a_cut_short_nrrd(tmp_path):
    """Why the check exists (NIfTI) and why NRRD needs none: SimpleITK's own behaviour, raw and gzip."""
    a = np.random.default_rng(0).random((20, 30, 40)).astype(np.float32) + 1.0
    for name, compress in (("x.nii", False), ("x.nii.gz", True)):
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name), compress)
        cut(tmp_path / name, 0.5)
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name)))
        assert got.shape == a.shape and 0.3 < np.mean(got == 0) < 0.7  # the missing half became zeros
        with pytest.raises(InputError, match=r"data: expected 20 x 30 x 40 float32 voxels .*cut short"):
            read_volume(tmp_path / name)
    for name, compress in (("x.nrrd", False), ("g.nrrd", True), ("d/d.nhdr", False), ("e/e.nhdr", True)):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name), compress)
        data = [p for p in (tmp_path / name).parent.iterdir() if p.suffix != ".nhdr"] if name.endswith("nhdr") \
            else [tmp_path / name]
        cut(max(data, key=lambda p: p.stat().st_size), 0.5)
        with pytest.raises(InputError, match=r"file: expected a readable NRRD/NIfTI image, got \[nrrd\]"):
            read_volume(tmp_path / name)


# ---------------------------------------------------------------------------------- F4 in tune, every reader
def test_a_cut_short_probability_map_is_listed_and_tune_goes_on(cohort, capsys):
    base_dir = cohort / "without"
    shutil.copytree(cohort / "maps", base_dir)
    (base_dir / "case01" / "prob_Low.nii.gz").unlink()
    base = tune_cohort(base_dir, cohort / "refs", structures=NAMES, n_boot=30, seed=2)
    bad = cohort / "maps" / "case01" / "prob_Low.nii.gz"
    cut(bad, 0.6)
    res = tune_cohort(cohort / "maps", cohort / "refs", structures=NAMES, n_boot=30, seed=2)
    assert len(res.problems) == 1
    case, s, reason = res.problems[0]
    assert (case, s) == ("case01", "Low")
    assert reason.startswith(f"{bad}: data: expected 10 x 20 x 18 float32 voxels (14400 bytes from byte 352), "
                             "got a truncated gzip stream of ") and reason.endswith("(file cut short?)")
    assert "\n" not in reason
    assert res.structures["Low"].cases == ["case00", "case02", "case03"]
    assert res.structures["High"].cases == [f"case{i:02d}" for i in range(N)]
    same_tuning(base, res)  # exactly the tuning without that map: nothing of it was used
    # the CLI prints it as one note and finishes (exit 0)
    capsys.readouterr()
    assert main(["tune", "--prob-dir", str(cohort / "maps"), "--ref-dir", str(cohort / "refs"), "--out",
                 str(cohort / "tuned"), "--bootstrap", "20"]) == 0
    err = capsys.readouterr().err
    assert sum(str(bad) in line and "truncated gzip stream" in line for line in err.splitlines()) == 1


@pytest.mark.parametrize("layout", ["refs", "labelsTs"])
def test_a_cut_short_reference_is_listed_and_tune_goes_on(cohort, layout):
    ref_dir = cohort / "refs" if layout == "refs" else cohort / "D" / "labelsTs"
    bad = ref_dir / "case02" / "labels.nii.gz" if layout == "refs" else ref_dir / "case02.nii.gz"
    cut(bad, 2 / 3)
    res = tune_cohort(cohort / "maps", ref_dir, structures=NAMES, n_boot=30, seed=2)
    lines = res.problem_lines()
    assert lines and all(line.startswith("case02") for line in lines)
    assert any(f"{bad}: data: expected 10 x 20 x 18 uint8 voxels" in line and "truncated gzip stream" in line
               for line in lines), lines
    for s in NAMES:
        assert res.structures[s].cases == ["case00", "case01", "case03"]
    shutil.rmtree(cohort / "maps" / "case02")  # the same cohort without the case
    same_tuning(tune_cohort(cohort / "maps", ref_dir, structures=NAMES, n_boot=30, seed=2), res)


def test_a_cut_short_4d_channels_file_is_listed_and_tune_goes_on(cohort):
    ch = cohort / "ch"
    for i in range(N):
        write_nifti_4d(ch / f"case{i:02d}.nii.gz", softmax(case_arrays(i)[0]), volume(i))
    (ch / "dataset.json").write_text((cohort / "D" / "dataset.json").read_text())
    cut(ch / "case03.nii.gz", 0.5)
    res = tune_cohort(ch, cohort / "refs", n_boot=30, seed=2)
    assert len(res.problems) == 1 and res.problems[0][0] == "case03"
    assert res.problems[0][2].startswith(f"{ch / 'case03.nii.gz'}: data: expected 10 x 20 x 18 x 3 float32 voxels")
    for s in NAMES:
        assert res.structures[s].cases == ["case00", "case01", "case02"]


def test_a_cut_short_uncompressed_nifti_and_a_cut_header(tmp_path):
    vol = volume(0)
    write_volume(vol, tmp_path / "a.nii.gz")
    raw = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    (tmp_path / "a.nii").write_bytes(raw[:-100])
    with pytest.raises(InputError) as exc:
        read_volume(tmp_path / "a.nii")
    assert str(exc.value) == (f"{tmp_path / 'a.nii'}: data: expected 10 x 20 x 18 uint8 voxels (3600 bytes from byte "
                              f"352), got a file of {len(raw) - 100} bytes, 100 short (file cut short?)")
    (tmp_path / "a.nii").write_bytes(raw)
    np.testing.assert_array_equal(read_volume(tmp_path / "a.nii").array, vol.array)
    # a complete gzip stream of a cut-short file (gzipped after the cut): complete, but too short
    (tmp_path / "b.nii.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(InputError, match=r"got a complete gzip stream of only \d+ bytes, 10 short"):
        read_volume(tmp_path / "b.nii.gz")
    # cut inside the header: one line, whoever notices (SimpleITK or the check)
    (tmp_path / "c.nii.gz").write_bytes((tmp_path / "a.nii.gz").read_bytes()[:40])
    with pytest.raises(InputError, match=str(tmp_path / "c.nii.gz")):
        read_volume(tmp_path / "c.nii.gz")


# ------------------------------------------------------------------------------------- valid files accepted
def _with_extension(raw: bytes) -> bytes:
    """A NIfTI-1 with a 32-byte header extension (ecode 6, a comment) before the data (vox_offset 384)."""
    hdr = bytearray(raw[:348])
    assert struct.unpack_from("<f", hdr, 108)[0] == 352.0
    struct.pack_into("<f", hdr, 108, 384.0)
    ext = struct.pack("<ii", 32, 6) + b"made by a test".ljust(24, b"\x00")
    return bytes(hdr) + bytes([1, 0, 0, 0]) + ext + raw[352:]


def test_valid_files_are_never_refused(tmp_path):
    vol = volume(1, case_arrays(1)[0]["High"])
    write_volume(vol, tmp_path / "one.nii.gz")
    raw = gzip.decompress((tmp_path / "one.nii.gz").read_bytes())
    k = len(raw) // 3
    files = {
        "members.nii.gz": gzip.compress(raw[:k]) + gzip.compress(raw[k: 2 * k]) + gzip.compress(raw[2 * k:]),
        "tiny_first_member.nii.gz": gzip.compress(raw[:100]) + gzip.compress(raw[100:]),  # header split
        "extension.nii.gz": gzip.compress(_with_extension(raw)),
        "extension.nii": _with_extension(raw),
        "trailing.nii.gz": gzip.compress(raw) + b"\x00" * 64,  # zero padding after the member (ignored by zlib)
        "padded.nii.gz": gzip.compress(raw + b"\x00" * 16),  # bytes after the data inside the stream
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        got = read_volume(tmp_path / name)
        np.testing.assert_array_equal(got.array, vol.array, err_msg=name)
        assert got.same_grid(vol, atol=1e-5), name
    # ... and the 4D channel layout with several gzip members
    write_nifti_4d(tmp_path / "ch.nii.gz", softmax(case_arrays(1)[0]), vol)
    raw4 = gzip.decompress((tmp_path / "ch.nii.gz").read_bytes())
    (tmp_path / "ch.nii.gz").write_bytes(gzip.compress(raw4[:1000]) + gzip.compress(raw4[1000:]))
    got = dict(iter_channel_maps(tmp_path / "ch.nii.gz", {"Low": 1, "High": 2}))
    np.testing.assert_array_equal(got["High"].array, vol.array)


def test_a_complete_single_member_file_is_checked_without_decompressing(tmp_path, monkeypatch):
    """The fast path: gzip's ISIZE equals the header's size, no streaming (O(1) in the volume's size)."""
    calls = []
    real = integrity.stream_gzip_size
    monkeypatch.setattr(integrity, "stream_gzip_size", lambda path, *a: calls.append(path) or real(path, *a))
    write_volume(volume(0), tmp_path / "a.nii.gz")
    read_volume(tmp_path / "a.nii.gz")
    assert calls == []
    raw = gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    (tmp_path / "m.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    read_volume(tmp_path / "m.nii.gz")
    assert calls == [tmp_path / "m.nii.gz"]  # several members: decided by streaming, and accepted


def test_nifti_header_sizes_nifti1_nifti2_and_byte_order():
    h1 = bytearray(348)
    struct.pack_into(">i", h1, 0, 348)
    struct.pack_into(">8h", h1, 40, 5, 7, 6, 5, 1, 3, 1, 1)  # a vector image: components in dim[5]
    struct.pack_into(">hh", h1, 70, 64, 64)
    struct.pack_into(">f", h1, 108, 352.0)
    assert nifti_data_size(bytes(h1)) == (352, 7 * 6 * 5 * 3 * 8, (5, 6, 7, 3), "float64")
    h2 = bytearray(540)
    struct.pack_into("<i", h2, 0, 540)
    struct.pack_into("<hh", h2, 12, 512, 16)
    struct.pack_into("<8q", h2, 16, 3, 70000, 3, 2, 1, 1, 1, 1)
    struct.pack_into("<q", h2, 168, 544)
    assert nifti_data_size(bytes(h2)) == (544, 70000 * 3 * 2 * 2, (2, 3, 70000), "uint16")
    assert nifti_data_size(b"NRRD0004\n" + bytes(600)) is None


# ---------------------------------------------------------------------------------------------------- F1
def test_channel_maps_own_their_data(tmp_path):
    """A map handed out must not be a view into the SimpleITK image (freed when the generator goes)."""
    vol = volume(2)
    maps = case_arrays(2)[0]
    write_nifti_4d(tmp_path / "c.nii.gz", softmax(maps), vol)
    gen = iter_channel_maps(tmp_path / "c.nii.gz", {"Low": 1, "High": 2})
    got = dict(gen)
    del gen
    gc.collect()
    junk = [np.full(maps["Low"].shape, 7.0, np.float32) for _ in range(20)]  # reuse freed memory, if any
    for s in NAMES:
        assert got[s].array.base is None and got[s].array.flags.owndata and got[s].array.flags.c_contiguous
        np.testing.assert_array_equal(got[s].array, maps[s])
    del junk


def test_apply_on_4d_nifti_files_big_enough_to_crash_the_old_reader(tmp_path):
    """3 channels of 64^3 float32 (3 MiB): the old reader segfaulted here (exit 139) in apply; in a
    subprocess so that a crash fails the test instead of the test run."""
    shape = (64, 64, 64)
    z = np.linspace(0.0, 1.0, shape[0], dtype=np.float32)[:, None, None]
    yx = np.linspace(0.0, 1.0, shape[1] * shape[2], dtype=np.float32).reshape(1, *shape[1:])
    a = np.broadcast_to(z * yx, shape).astype(np.float32)
    b = np.broadcast_to((1 - z) * yx, shape).astype(np.float32)
    chans = [np.clip(1 - a - b, 0, 1), a, b]
    geom = Volume(np.zeros(shape, np.uint8), (1.0, 1.5, 2.0), (3.0, -4.0, 5.0))
    ch = tmp_path / "ch"
    ch.mkdir()
    for case in ("c0", "c1"):
        img = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in chans])  # x y z c
        img.SetSpacing(geom.spacing + (1.0,))
        img.SetOrigin(geom.origin + (0.0,))
        sitk.WriteImage(img, str(ch / f"{case}.nii"))
    (ch / "labels.json").write_text(json.dumps({"1": "A", "2": "B"}))
    table = tmp_path / "thr.json"
    table.write_text(json.dumps({"format": "autosegsens-thresholds", "version": 1, "metric": "dice",
                                 "structures": {"A": {"threshold": 0.3}, "B": {"threshold": 0.25}}}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "AutoSegSensitivity", "apply", "--thresholds", str(table),
                           "--prob-dir", str(ch), "--out", str(tmp_path / "segs")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    for case in ("c0", "c1"):
        seg = read_segmentation(tmp_path / "segs" / case / "segmentation.seg.nrrd")
        np.testing.assert_array_equal(seg.mask("A"), a >= np.float32(0.3))
        np.testing.assert_array_equal(seg.mask("B"), b >= np.float32(0.25))
