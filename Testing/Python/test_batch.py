"""Batch mode: carries on past bad cases (bad input and unexpected errors), stops cleanly on Ctrl-C, and
ends with a summary naming each failed case and why; predict_dataset over a folder with a broken case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from AutoSegSensitivity.batch import BatchFailure, predict_dataset, run_batch
from AutoSegSensitivity.errors import CancelledError, InputError
from AutoSegSensitivity.io import load_case, read_volume
from AutoSegSensitivity.phantom import make_phantom_dataset
from AutoSegSensitivity.training import train


def _job(x):
    if x == "bad-input":
        raise InputError("case/image.nrrd", "spacing", "three positive numbers", got="(1, 0, 3)")
    if x == "crash":
        raise RuntimeError("disk on fire")
    return x.upper()


def test_continues_past_bad_cases_and_summarises():
    seen = []
    res = run_batch([("a", "ok1"), ("b", "bad-input"), ("c", "crash"), ("d", "ok2")], _job, progress=False,
                    failures=[("e", "no image file")], on_failure=seen.append)
    assert res.done == {"a": "OK1", "d": "OK2"}
    assert [(f.name, f.kind) for f in res.failed] == [("e", "input"), ("b", "input"), ("c", "error")]
    assert [f.name for f in seen] == ["e", "b", "c"]
    assert "RuntimeError" in res.failed[2].detail and "disk on fire" in res.failed[2].detail
    lines = res.summary()
    assert lines[0].startswith("2 of 5 cases done; 3 failed")
    assert "  failed b: case/image.nrrd: spacing: expected three positive numbers, got (1, 0, 3)" in lines
    assert "  failed c: RuntimeError: disk on fire" in lines
    assert "  failed e: no image file" in lines
    assert res.exit_code() == 1 and not res.ok
    assert {r["case"]: r["status"] for r in res.to_rows()} == {
        "a": "done", "d": "done", "b": "failed (input)", "c": "failed (error)", "e": "failed (input)"}


def test_exit_codes():
    assert run_batch([("a", "ok")], _job, progress=False).exit_code() == 0
    assert run_batch([("a", "bad-input")], _job, progress=False).exit_code() == 2
    assert run_batch([("a", "crash")], _job, progress=False).exit_code() == 1


@pytest.mark.parametrize("exc", [KeyboardInterrupt, CancelledError])
def test_ctrl_c_stops_and_keeps_what_was_done(exc):
    def job(x):
        if x == 2:
            raise exc()
        return x

    res = run_batch([(f"c{i}", i) for i in range(5)], job, progress=False)
    assert res.cancelled and res.done == {"c0": 0, "c1": 1}
    assert res.skipped == ["c2", "c3", "c4"]
    assert res.exit_code() == 130
    assert "not started (cancelled)" in res.summary()[0]


def test_progress_bar_goes_to_stderr(capsys):
    run_batch([("a", "ok")], _job, progress=True, desc="cases here")
    cap = capsys.readouterr()
    assert "cases here" in cap.err and cap.out == ""


def test_predict_dataset_skips_a_broken_case(tmp_path):
    data = tmp_path / "data"
    make_phantom_dataset(data, cases=3, seed=0, shape=(6, 32, 32))
    cfg = {"model": "unet2d", "model_kwargs": {"base_features": 2, "depth": 2}, "structures": ["Brain"],
           "epochs": 1, "batch_size": 4, "samples_per_epoch": 4, "val_cases": ["case002"], "seed": 0}
    result = train(cfg, data, tmp_path / "model", device="cpu", progress_bar=False)
    # break case001's image after training: the batch must go on with the others
    (data / "case001" / "image.nrrd").write_bytes(b"NRRD0004\nthis is not an image\n")
    out = tmp_path / "pred"
    res = predict_dataset(result.last_path, data, out, cases=["case000", "case001", "case002", "case999"],
                          progress=False)
    assert sorted(res.done) == ["case000", "case002"]
    failed = {f.name: f.reason for f in res.failed}
    assert set(failed) == {"case001", "case999"}
    assert "image.nrrd" in failed["case001"] and "case999" in failed["case999"]
    for case in ("case000", "case002"):
        prob = read_volume(out / case / "Brain.nrrd")
        image, _ = load_case(data / case)
        assert prob.same_grid(image) and prob.array.dtype == np.float32
        assert 0.0 <= prob.array.min() and prob.array.max() <= 1.0
    assert not (out / "case001").exists()
    assert res.exit_code() == 1
