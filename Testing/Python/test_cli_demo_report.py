"""`autosegsens demo` on a tiny phantom: outputs exist (probability maps as prob_<Structure>.nrrd), the
report's thresholds come from the validation sweep CSVs and its numbers from the test sweep CSVs, a
non-empty output folder is refused; `autosegsens report` rebuilds the same page from the tables."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from AutoSegSensitivity.cli import main
from AutoSegSensitivity.html_report import fmt_num, fmt_pct

TINY_ARGS = ["--cases", "4", "--shape", "8", "48", "48", "--epochs", "1", "--samples-per-epoch", "8", "--width", "2",
             "--resize", "32", "32", "--structures", "Brain", "SpinalCord", "--seed", "2", "--device", "cpu", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo-output"
    old = torch.get_num_threads()
    code = main(["demo", "--out", str(out)] + TINY_ARGS)
    torch.set_num_threads(old)
    return code, out


def _csv(path: Path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_demo_writes_everything(demo):
    code, out = demo
    assert code == 0
    for name in ("report.html", "study.json", "summary.csv", "volume_bias.csv", "correlation.csv"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "study.json").read_text())
    assert meta["settings"]["epochs"] == 1 and meta["settings"]["seed"] == 2
    assert len(list((out / "data").glob("case*/image.nrrd"))) == 4
    roles = [meta["data"][f"{r} cases"] for r in ("training", "validation", "test")]
    assert sorted(sum(roles, [])) == [f"case{i:03d}" for i in range(4)] and all(roles)
    assert meta["mode"] == "per_structure" and meta["settings"]["per_structure"] is True
    assert all(e["multi_label"] is False and set(e["models"]) == {"Brain", "SpinalCord"} for e in meta["losses"])
    assert "one model per structure" in (out / "report.html").read_text()
    for key in ("bce", "bce_dice2d"):
        for s in ("Brain", "SpinalCord"):  # one binary model per structure and loss (the default)
            assert (out / "models" / key / s / "best.pt").is_file()
        assert not (out / "models" / key / "best.pt").exists()
        for c in meta["data"]["validation cases"] + meta["data"]["test cases"]:
            for s in ("Brain", "SpinalCord"):  # the layout 'predict' writes and 'tune --prob-dir' reads
                assert (out / "predictions" / key / c / f"prob_{s}.nrrd").is_file()
                assert not (out / "predictions" / key / c / f"{s}.nrrd").exists()
        for c in meta["data"]["training cases"]:
            assert not (out / "predictions" / key / c).exists()
        for s in ("Brain", "SpinalCord"):
            for role in ("validation", "test"):
                rows = _csv(out / "sweeps" / key / s / role / "sweep.csv")
                assert [round(float(r["threshold"]), 2) for r in rows] == [round(i * 0.01, 2) for i in range(101)]
                assert {"dice", "msd_mm", "hd_mm", "hd95_mm"} <= set(rows[0])
                cases = {r["case"] for r in _csv(out / "sweeps" / key / s / role / "sweep_per_case.csv")}
                assert cases == set(meta["data"][f"{role} cases"])


def test_report_numbers_equal_the_sweep_csvs(demo):
    _, out = demo
    page = (out / "report.html").read_text()
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert 'src="http' not in page and str(out) not in page
    for key in ("bce", "bce_dice2d"):
        for s in ("Brain", "SpinalCord"):
            sweeps = out / "sweeps" / key / s
            rows = [(float(r["threshold"]), float(r["dice"])) for r in _csv(sweeps / "validation" / "sweep.csv")]
            best = max(d for _, d in rows)
            t = min((t for t, d in rows if d >= best - 1e-12), key=lambda t: (abs(t - 0.5), t))
            test = {round(float(r["threshold"]), 2): float(r["dice"]) for r in _csv(sweeps / "test" / "sweep.csv")}
            at_t, at05 = test[round(t, 2)], test[0.5]
            loss = (at_t - at05) / at_t if at_t > 0 else (0.0 if at05 == at_t else math.inf)
            assert (f"<td>{t:.2f}</td><td>{fmt_num(best)}</td><td>{fmt_num(at_t)}</td><td>{fmt_num(at05)}</td>"
                    f"<td>{fmt_pct(loss)}</td>") in page
            s_row = next(r for r in _csv(out / "summary.csv") if r["loss"] == key and r["structure"] == s)
            assert float(s_row["dice_threshold_chosen_on_validation"]) == t
            assert float(s_row["dice_validation_at_threshold"]) == best and float(s_row["dice_test_at_threshold"]) == at_t


def test_demo_refuses_a_non_empty_folder(demo, capsys):
    _, out = demo
    assert main(["demo", "--out", str(out)] + TINY_ARGS) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]


def test_demo_bad_option_is_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_report_regenerates_the_page(demo, tmp_path, capsys):
    _, out = demo
    again = tmp_path / "again.html"
    assert main(["report", "--study", str(out), "--out", str(again)]) == 0
    assert again.read_text() == (out / "report.html").read_text()
    assert main(["report", "--study", str(out)]) == 2  # report.html exists: refused
    assert main(["report", "--study", str(out), "--overwrite"]) == 0
    assert main(["report", "--study", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "study.json" in capsys.readouterr().err


def test_help_shows_examples():
    for cmd in ("demo", "report"):
        res = subprocess.run([sys.executable, "-m", "AutoSegSensitivity", cmd, "--help"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and "Example:" in res.stdout and f"autosegsens {cmd}" in res.stdout


def test_ctrl_c_stops_cleanly_and_says_what_was_kept(tmp_path):
    import os
    import signal
    import time

    out = tmp_path / "demo"
    args = [a for a in TINY_ARGS] + ["--multi-label"]  # one model per loss: models/bce/
    args[args.index("--epochs") + 1] = "500"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "AutoSegSensitivity", "demo", "--out", str(out)] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    events = out / "models" / "bce" / "events.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if events.is_file() and '"event": "epoch"' in events.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "cancelled" in last and "kept: the phantom dataset" in last
    assert "the partly trained bce model" in last and "--resume" in last
    meta = json.loads((out / "study.json").read_text())
    assert meta["status"] == "cancelled" and meta["mode"] == "multi_label"
    assert meta["settings"]["per_structure"] is False and meta["losses"][0]["multi_label"] is True
    assert (out / "models" / "bce" / "last.pt").is_file() and not (out / "models" / "bce_dice2d").exists()
