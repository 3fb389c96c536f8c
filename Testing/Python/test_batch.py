"""Batch mode: carries on past bad cases (bad input and unexpected errors), stops cleanly on Ctrl-C, and
ends with a summary naming each failed case and why. (The dataset predictor built on it is tested in
test_predict_shards.py.)"""

from __future__ import annotations

import pytest

from AutoSegSensitivity import batch
from AutoSegSensitivity.batch import BatchFailure, run_batch
from AutoSegSensitivity.errors import CancelledError, InputError


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
    assert type(res.interrupt) is exc  # kept, for a caller that records what was done and re-raises it
    assert res.skipped == ["c2", "c3", "c4"]
    assert res.exit_code() == 130
    assert "not started (cancelled)" in res.summary()[0]


def test_progress_bar_goes_to_stderr(capsys):
    run_batch([("a", "ok")], _job, progress=True, desc="cases here")
    cap = capsys.readouterr()
    assert "cases here" in cap.err and cap.out == ""


def test_one_dataset_predictor():
    """The batch module holds the batch loop only: the dataset predictor is predict_shards.predict_shard."""
    assert not hasattr(batch, "predict_dataset") and "predict_dataset" not in batch.__all__
