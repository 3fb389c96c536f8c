"""Progress event stream: JSON lines written whole, read incrementally, passed to callbacks."""

from __future__ import annotations

import json
import math

import numpy as np

from AutoSegSensitivity.progress import (EventReader, ProgressWriter, describe_epoch, eta_seconds,
                                         format_duration, read_events)


def test_writer_appends_json_lines_and_calls_back(tmp_path):
    seen = []
    clock = iter([100.0, 101.5, 103.0, 110.0]).__next__
    path = tmp_path / "sub" / "events.jsonl"
    with ProgressWriter(path, on_event=seen.append, clock=clock) as w:
        w.emit("start", epochs=3, class_names=["Brain"])
        w.emit("epoch", epoch=1, train_loss=np.float32(0.5), val_loss=float("nan"),
               val_dice={"Brain": np.float64(0.25)}, counts=np.int64(7))
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "start" and first["epochs"] == 3 and first["elapsed_s"] == 1.5
    assert second["elapsed_s"] == 3.0
    assert second["train_loss"] == 0.5 and second["val_loss"] is None  # NaN is not valid JSON
    assert second["val_dice"] == {"Brain": 0.25} and second["counts"] == 7 and isinstance(second["counts"], int)
    assert [e["event"] for e in seen] == ["start", "epoch"] and seen[1] == second
    # appending continues the same file (what a resumed run does)
    with ProgressWriter(path, clock=iter([0.0, 1.0]).__next__, elapsed_offset_s=50.0) as w:
        w.emit("start", resumed=True)
    events = read_events(path)
    assert [e["event"] for e in events] == ["start", "epoch", "start"]
    assert events[-1]["elapsed_s"] == 51.0
    assert read_events(path, kind="epoch") == [second]


def test_reader_is_incremental_and_skips_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    reader = EventReader(path)
    assert reader.poll() == []  # no file yet
    path.write_text(json.dumps({"event": "start"}) + "\n" + '{"event": "epo')
    assert [e["event"] for e in reader.poll()] == ["start"]
    assert reader.poll() == []  # the partial line is not returned
    with open(path, "a") as fh:
        fh.write('ch", "epoch": 1}\n' + json.dumps({"event": "done"}) + "\n")
    assert reader.poll() == [{"event": "epoch", "epoch": 1}, {"event": "done"}]
    assert reader.poll() == []


def test_eta_and_durations():
    assert eta_seconds(0, 10, 5.0) is None
    assert math.isclose(eta_seconds(2, 10, 5.0), 20.0)
    assert eta_seconds(10, 10, 5.0) == 0.0
    assert format_duration(None) == "?"
    assert format_duration(12.4) == "12s"
    assert format_duration(245) == "4m05s"
    assert format_duration(3723) == "1h02m03s"


def test_describe_epoch_line():
    text = describe_epoch({"epoch": 3, "epochs": 10, "train_loss": 0.25, "val_loss": 0.5,
                           "val_dice": {"Brain": 0.9, "Cord": None}, "eta_s": 65, "is_best": True})
    assert text == "epoch 3/10 train_loss=0.2500 val_loss=0.5000 dice[Brain=0.900] eta=1m05s *best*"
