"""Faults (issue 20): nothing half-done looks finished, every operating-system error is one line, SIGTERM
is handled like Ctrl-C.

Faults are made real where it is cheap: a tiny tmpfs that fills up (when the tests run as root and may
mount), writers that write into ``/dev/full`` (the real ``torch.save`` / ITK failures of a full disk),
``kill -9`` and signals sent by the process to itself at chosen points. The points come from the test hook
``AUTOSEGSENS_FAULT=POINT:ACTION[:N]`` (:func:`AutoSegSensitivity.atomic.fault_point`). The slow matrix
(every kill point of every command, signals from outside at random moments) is
``Testing/faults/run_fault_experiments.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from AutoSegSensitivity import atomic
from AutoSegSensitivity.cli import main
from AutoSegSensitivity.phantom import make_phantom_dataset

from tune_cohort import write_cohort

FAULT = "AUTOSEGSENS_FAULT"
ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = Path(atomic.__file__).resolve().parents[1]  # the code under test (for new processes too)
CONFIG = {"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain"], "epochs": 1,
          "batch_size": 4, "samples_per_epoch": 4, "lr": 0.003, "crop": [48, 48], "resize": [32, 32],
          "num_threads": 1}
TUNE_FAST = ["--folds", "2", "--bootstrap", "20"]


# --------------------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_fault_counts(monkeypatch):
    monkeypatch.delenv(FAULT, raising=False)
    counts = getattr(atomic, "_FAULT_COUNTS", None)
    if counts is not None:
        counts.clear()
    yield
    if counts is not None:
        counts.clear()


def cli(args: List[str], fault: Optional[str] = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m AutoSegSensitivity ARGS`` in a new process (for kills), with the fault hook set."""
    env = {k: v for k, v in os.environ.items() if k != FAULT}
    env["PYTHONPATH"] = str(PACKAGE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    if fault:
        env[FAULT] = fault
    return subprocess.run([sys.executable, "-m", "AutoSegSensitivity", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout)


def error_lines(err: str) -> List[str]:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    return lines


def one_line(err: str) -> str:
    lines = error_lines(err)
    assert len(lines) == 1, lines
    return lines[0]


def temps(folder: Path) -> List[str]:
    """Names of temporaries of ours anywhere under ``folder`` and beside it."""
    found = [str(p) for p in folder.parent.glob(f".{folder.name}.*tmp*")]
    if folder.is_dir():
        found += [str(p) for p in folder.rglob(".*") if ".tmp" in p.name]
    return found


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    probs, refs = write_cohort(root, n=4, shape=(6, 12, 12))
    return probs, refs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset, its config and a finished one-epoch run (run/best.pt, run/last.pt)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    make_phantom_dataset(root / "data", cases=3, seed=1, shape=(6, 48, 48))
    (root / "cfg.yaml").write_text(yaml.safe_dump(CONFIG))
    assert main(["train", "--config", str(root / "cfg.yaml"), "--data", str(root / "data"), "--out",
                 str(root / "run"), "--device", "cpu", "--quiet"]) == 0
    return root


def train_args(root: Path, out: Path, *extra: str) -> List[str]:
    return ["train", "--config", str(root / "cfg.yaml"), "--data", str(root / "data"), "--out", str(out),
            "--device", "cpu", "--quiet", *extra]


@pytest.fixture
def tiny_fs(tmp_path):
    """``make(size)`` mounts a tmpfs of ``size`` (e.g. "64k") and returns its folder: a real full disk.
    Needs root and a kernel that lets it mount (containers often do not): skipped otherwise, the
    injected-ENOSPC tests cover the same code."""
    mounted: List[Path] = []

    def make(size: str) -> Path:
        if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a real full file system needs root to mount a tmpfs (the /dev/full tests cover it)")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# --------------------------------------------------------------------------------------------------------
# bad output paths: exit 2, one line, no hint that cannot help
# --------------------------------------------------------------------------------------------------------


def _command(name: str, out: Path, cohort, trained) -> List[str]:
    probs, refs = cohort
    return {
        "tune": ["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out)],
        "apply": ["apply", "--thresholds", str(out.parent / "t.json"), "--prob-dir", str(probs), "--out", str(out)],
        "phantom": ["phantom", "--out", str(out), "--cases", "1", "--shape", "4", "16", "16"],
        "train": train_args(trained, out),
        "predict": ["predict", "--model", str(trained / "run" / "best.pt"), "--data", str(trained / "data"),
                    "--out", str(out)],
    }[name]


@pytest.mark.parametrize("name", ["tune", "apply", "phantom", "train", "predict"])
def test_out_under_a_file_is_one_line_exit_2(name, cohort, trained, tmp_path, capsys):
    afile = tmp_path / "somefile"
    afile.write_text("x")
    assert main(_command(name, afile / "sub", cohort, trained)) == 2
    line = one_line(capsys.readouterr().err)
    assert str(afile) in line and "is a file" in line and "--overwrite" not in line


@pytest.mark.parametrize("name", ["tune", "phantom", "train"])
def test_out_that_is_a_file_does_not_suggest_overwrite(name, cohort, trained, tmp_path, capsys):
    afile = tmp_path / "out.txt"
    afile.write_text("keep me")
    assert main(_command(name, afile, cohort, trained) + ["--overwrite"]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(afile) in line and "existing file" in line and "--overwrite" not in line
    assert afile.read_text() == "keep me"


# --------------------------------------------------------------------------------------------------------
# operating-system errors: one line naming the path and the reason, exit 1, nothing that looks complete
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("action, reason", [("full", "no space left on device"), ("enospc", "no space left on device"),
                                            ("eacces", "permission denied"), ("erofs", "read-only file system"),
                                            ("enotdir", "not a directory")])
def test_tune_os_error_is_one_line_and_leaves_no_output(action, reason, cohort, tmp_path, capsys, monkeypatch):
    """The 3rd file tune writes fails (the 1st and 2nd, the sweeps, succeed): before issue 20 a
    traceback, and thresholds.json / summary.csv / sweeps/ without report.html."""
    probs, refs = cohort
    out = tmp_path / "tuned"
    monkeypatch.setenv(FAULT, f"atomic.write:{action}:3+")
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), *TUNE_FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert reason in line and "tune: error:" in line
    assert str(tmp_path) in line and ".tmp" not in line, "names the output file, not a temporary one"
    assert not out.exists() and temps(out) == []
    monkeypatch.delenv(FAULT)
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), *TUNE_FAST]) == 0, \
        "a rerun is not refused: the failed run left nothing"


def test_tune_on_a_full_file_system(cohort, tiny_fs, capsys):
    """A real full disk: 64 KiB hold the sweeps, summary.csv and thresholds.json but not report.html."""
    probs, refs = cohort
    out = tiny_fs("64k") / "tuned"
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), *TUNE_FAST]) == 1
    line = one_line(capsys.readouterr().err)
    assert "no space left on device" in line and str(out.parent) in line
    assert list(out.parent.iterdir()) == [], "nothing that looks finished, no temporaries"


def test_train_checkpoint_on_a_full_disk_names_it(trained, tmp_path, capsys, monkeypatch):
    """torch.save into a full disk raised `RuntimeError: [enforce fail at inline_container.cc] unexpected
    pos`; now one line names the checkpoint and says why. The real torch.save writes into /dev/full."""
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT, "atomic.write:full:2+")  # 1: the INCOMPLETE note, 2: last.pt (epoch 0)
    assert main(train_args(trained, out)) == 1
    line = one_line(capsys.readouterr().err)
    assert f"{out / 'last.pt'}: no space left on device" in line and "inline_container" not in line
    assert not (out / "last.pt").exists() and (out / "INCOMPLETE").exists() and temps(out) == []


def test_train_on_a_full_file_system(trained, tiny_fs, capsys):
    out = tiny_fs("32k") / "run"
    assert main(train_args(trained, out)) == 1
    line = one_line(capsys.readouterr().err)
    assert f"{out / 'last.pt'}: no space left on device" in line
    assert not (out / "last.pt").exists() and temps(out) == []


def _predict_failure_lines(err: str) -> List[str]:
    lines = error_lines(err)
    assert not any("ITK" in ln or "nrrd]" in ln or ".tmp" in ln for ln in lines), lines
    return [ln for ln in lines if ln.startswith("warning:")]


def test_predict_full_disk_is_one_line_per_case(trained, tmp_path, capsys, monkeypatch):
    """ITK's 15-line dump naming a temporary file became one line per case naming the map."""
    out = tmp_path / "pred"
    monkeypatch.setenv(FAULT, "atomic.write:full:1+")
    assert main(["predict", "--model", str(trained / "run" / "best.pt"), "--data", str(trained / "data"),
                 "--out", str(out)]) == 1
    warnings = _predict_failure_lines(capsys.readouterr().err)
    assert len(warnings) == 3 and all("No space left on device" in w and "prob_Brain.nrrd" in w for w in warnings)
    assert not list(out.glob("*/prediction.json")) and temps(out) == []


def test_predict_on_a_full_file_system(trained, tiny_fs, capsys):
    out = tiny_fs("16k") / "pred"
    assert main(["predict", "--model", str(trained / "run" / "best.pt"), "--data", str(trained / "data"),
                 "--out", str(out)]) == 1
    warnings = _predict_failure_lines(capsys.readouterr().err)
    assert len(warnings) == 3 and all("No space left on device" in w for w in warnings)
    assert not list(out.glob("*/prediction.json")) and temps(out) == []


# --------------------------------------------------------------------------------------------------------
# --overwrite replaces the whole output
# --------------------------------------------------------------------------------------------------------


def test_train_overwrite_killed_in_first_epoch_leaves_no_old_best(trained, tmp_path):
    out = shutil.copytree(trained / "run", tmp_path / "run")
    proc = cli(train_args(trained, out, "--overwrite"), fault="train.epoch:kill:1")
    assert proc.returncode == -9, proc.stderr[-2000:]
    names = sorted(p.name for p in out.iterdir())
    assert "best.pt" not in names, "the old run's best.pt must not sit beside the new run's last.pt"
    assert "INCOMPLETE" in names and "last.pt" in names
    from AutoSegSensitivity.checkpoint import read_checkpoint

    assert read_checkpoint(out / "last.pt")["epoch"] == 0
    # and the run resumes to the end, which removes the note
    assert main(train_args(trained, out, "--resume")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "events.jsonl", "last.pt"]


def test_tune_overwrite_with_fewer_structures_leaves_no_old_sweeps(cohort, tmp_path):
    probs, refs = cohort
    out = tmp_path / "tuned"
    args = ["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), *TUNE_FAST]
    assert main(args) == 0
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == ["High", "Low"]
    (out / "notes.txt").write_text("mine")  # a file of the user's in the folder stays
    assert main(args + ["--overwrite", "--structures", "Low"]) == 0
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == ["Low"]
    assert list(json.loads((out / "thresholds.json").read_text())["structures"]) == ["Low"]
    assert (out / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------------------


def test_sigterm_in_predict_data_keeps_finished_cases_and_writes_the_shard_json(trained, tmp_path):
    out = tmp_path / "pred"
    # 1 map + 1 marker per case: the 3rd file is case 2's map, so case 1 is finished when SIGTERM comes
    proc = cli(["predict", "--model", trained / "run" / "best.pt", "--data", trained / "data", "--out", out],
               fault="atomic.replace:term:3")
    assert proc.returncode == 143, proc.stderr[-2000:]
    last = error_lines(proc.stderr)[-1]
    assert "cancelled (SIGTERM)" in last and "1 finished case" in last and "shard-0-of-1.json" in last
    shard = json.loads((out / "shard-0-of-1.json").read_text())
    assert shard["cancelled"] is True and len(shard["done"]) == 1
    assert len(list(out.glob("*/prediction.json"))) == 1


def test_sigterm_in_train_keeps_the_last_epoch(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT, "train.epoch:term:1")
    assert main(train_args(trained, out)) == 143
    last = error_lines(capsys.readouterr().err)[-1]
    assert "cancelled (SIGTERM)" in last and "holds epoch 0" in last and "--resume" in last
    assert (out / "INCOMPLETE").exists() and not (out / "best.pt").exists()
    # a checkpoint of the unfinished run still predicts, with a note saying where it comes from
    image = trained / "data" / "case000" / "image.nrrd"
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(out / "last.pt"), "--image", str(image), "--out", str(pred)]) == 0
    assert "has not finished" in capsys.readouterr().err


def test_second_ctrl_c_while_cancelling_still_says_what_was_kept(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv(FAULT, "train.epoch:int:1,train.cancel:int:1")
    assert main(train_args(trained, out)) == 130
    last = error_lines(capsys.readouterr().err)[-1]
    assert "cancelled (SIGINT)" in last and f"{out / 'last.pt'} holds epoch 0" in last and "--resume" in last


def test_sigterm_in_tune_leaves_the_folder_as_it_was(cohort, tmp_path, capsys, monkeypatch):
    probs, refs = cohort
    out = tmp_path / "tuned"
    monkeypatch.setenv(FAULT, "atomic.write:term:2")
    assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(out), *TUNE_FAST]) == 143
    last = error_lines(capsys.readouterr().err)[-1]
    assert "cancelled (SIGTERM)" in last and "nothing written" in last
    assert not out.exists() and temps(out) == []


def test_slurm_examples_signal_before_the_time_limit():
    """sbatch --signal=[{R|B}:]<sig_num>[@sig_time] (sbatch(1)): with B: only the batch shell gets the signal
    (so the script must `exec` our command), without it only the job steps (so the work must run under
    srun); 120 s leave time to stop at the next batch or case."""
    import re

    scripts = sorted((ROOT / "examples" / "slurm").glob("*.sbatch"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        m = re.search(r"^#SBATCH --signal=(B:)?(TERM|15)@(\d+)\s*$", text, re.M)
        assert m and int(m.group(3)) >= 60, f"{script.name}: no #SBATCH --signal=[B:]TERM@<seconds>"
        if m.group(1):
            assert re.search(r"^exec ", text, re.M), f"{script.name}: B: signals the batch shell; exec the command"
        else:
            assert re.search(r"^srun ", text, re.M), f"{script.name}: the signal goes to job steps; use srun"


# --------------------------------------------------------------------------------------------------------
# kills, temporaries, durability
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault, old", [("atomic.replace:kill:2", False), ("commit:kill:1", False),
                                        ("commit:kill:1", True)])
def test_kill_during_tune_leaves_nothing_that_looks_complete(fault, old, cohort, tmp_path):
    probs, refs = cohort
    out = tmp_path / "tuned"
    args = ["tune", "--prob-dir", probs, "--ref-dir", refs, "--out", out, *TUNE_FAST]
    before = {}
    if old:
        assert main([str(a) for a in args] + ["--structures", "High"]) == 0
        before = snapshot(out)
    proc = cli(args + (["--overwrite"] if old else []), fault=fault)
    assert proc.returncode == -9, proc.stderr[-2000:]
    after = snapshot(out) if out.exists() else {}
    assert after in (before, {}), "either the previous complete output or nothing"
    assert main([str(a) for a in args] + ["--overwrite"]) == 0
    assert temps(out) == [], "the killed run's temporaries are cleaned by the next run"


def test_kill_in_predict_leaves_unfinished_cases_unmarked_and_the_rerun_cleans_up(trained, tmp_path, capsys):
    out = tmp_path / "pred"
    base = ["predict", "--model", str(trained / "run" / "best.pt"), "--data", str(trained / "data"), "--out", str(out)]
    proc = cli(base, fault="atomic.replace:kill:3")  # case 2's map is written, not yet renamed
    assert proc.returncode == -9
    left = temps(out)
    assert len(left) == 1 and ".prob_Brain.nrrd." in left[0]
    assert len(list(out.glob("*/prediction.json"))) == 1, "only the finished case looks finished"
    assert main(base) == 0
    assert temps(out) == [] and len(list(out.glob("*/prediction.json"))) == 3


def test_stale_temporaries_are_recognised_by_their_process(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = atomic._HOST
        keep = [f".last.pt.abcd1234.{live.pid}-{host}.tmp.pt", "notes.tmp", ".hidden", "x.abcd1234.tmp.pt"]
        drop = [f".best.pt.abcd1234.{dead_pid}-{host}.tmp.pt", ".prob_Brain.nrrd.k2j4_x9a.tmp.nrrd",
                f"case000/.prob_Brain.nrrd.zz11aa22.{dead_pid}-{host}.tmp.nrrd"]
        out = tmp_path / "out"
        for name in keep + drop:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text("x")
        sibling = tmp_path / f".out.q1w2e3r4.{dead_pid}-{host}.tmp"
        (sibling / "sweeps").mkdir(parents=True)
        removed = {str(p) for p in atomic.clean_stale_temps(out)}
        assert removed == {str(out / n) for n in drop} | {str(sibling)}
        assert all((out / n).exists() for n in keep)
    finally:
        live.kill()
        live.wait()


def test_atomic_write_fsyncs_the_file_and_its_folder(tmp_path, monkeypatch):
    import stat

    synced = []
    real = os.fsync

    def spy(fd):
        st = os.fstat(fd)
        synced.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = atomic.write_text(tmp_path / "thresholds.json", "{}")
    assert (False, target.stat().st_ino) in synced, "the file's data reach the disk before the rename"
    assert (True, tmp_path.stat().st_ino) in synced, "the rename reaches the disk"


def test_staged_output_has_the_usual_permissions(cohort, tmp_path):
    probs, refs = cohort
    umask = os.umask(0o022)
    try:
        assert main(["tune", "--prob-dir", str(probs), "--ref-dir", str(refs), "--out", str(tmp_path / "t"),
                     *TUNE_FAST]) == 0
    finally:
        os.umask(umask)
    assert (tmp_path / "t").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize("name, suffix", [("transform", ".nrrd"), ("compare", ".csv"), ("report", ".html")])
def test_file_output_under_a_file_or_onto_a_folder_is_one_line_exit_2(name, suffix, trained, tmp_path, capsys):
    image = trained / "data" / "case000" / "image.nrrd"
    seg = trained / "data" / "case000" / "segmentation.seg.nrrd"
    afile = tmp_path / "somefile"
    afile.write_text("x")
    (tmp_path / "study").mkdir()
    folder = tmp_path / f"folder{suffix}"
    folder.mkdir()
    for out, words in ((afile / "sub" / f"o{suffix}", "is a file"), (folder, "existing folder")):
        args = {"transform": ["transform", "--preset", "SLF1", str(image), str(out)],
                "compare": ["compare", str(seg), str(seg), "--out", str(out)],
                "report": ["report", "--study", str(tmp_path / "study"), "--out", str(out)]}[name]
        assert main(args + ["--overwrite"]) == 2
        line = one_line(capsys.readouterr().err)
        assert words in line and "--overwrite" not in line


def test_signal_handlers_are_restored_after_a_cancel(trained, tmp_path, monkeypatch):
    import signal

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    monkeypatch.setenv(FAULT, "train.epoch:term:1")
    assert main(train_args(trained, tmp_path / "run")) == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_staging_inside_the_output_folder_when_its_parent_is_not_writable(tmp_path, monkeypatch):
    """A folder one may write in, inside one one may not (a scratch folder made by the admins): the
    outputs are staged inside it and moved in one by one (root ignores permissions, so the refusal is
    simulated)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    (out / "a.txt").write_text("old")
    real = atomic.temp_sibling

    def refuse_beside(path, create=True):
        if Path(path).parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(tmp_path))
        return real(path, create)

    monkeypatch.setattr(atomic, "temp_sibling", refuse_beside)
    with atomic.staged_folder(out, overwrite=True, owned=("a.txt",)) as stage:
        assert stage.parent == out
        (stage / "a.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "mine.txt"]
    assert (out / "a.txt").read_text() == "new"


def test_overwrite_swaps_the_folders_in_one_step(tmp_path, monkeypatch):
    """On Linux the old and the new folder are exchanged atomically (renameat2): the output folder never
    disappears, not even for an instant."""
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is Linux's")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    real_rename = os.rename

    def watched(src, dst, *a, **k):
        assert Path(src) != out, "the output folder was moved away (a moment without it)"
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", watched)
    with atomic.staged_folder(out, overwrite=True, owned=("a.txt",)) as stage:
        (stage / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and temps(out) == []


def test_without_an_atomic_swap_a_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    monkeypatch.setenv(FAULT, "commit:eio:2")  # the rename of the new folder into place fails
    with pytest.raises(OSError):
        with atomic.staged_folder(out, overwrite=True, owned=("a.txt",)) as stage:
            (stage / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "old" and temps(out) == []


@pytest.mark.parametrize("action, code, name", [("term", 143, "SIGTERM"), ("int", 130, "SIGINT")])
def test_a_signal_while_the_command_starts_is_one_line(action, code, name, cohort, tmp_path):
    """A signal while the modules load (seconds on a busy node) was a KeyboardInterrupt traceback, or the
    process died by the signal: now one line and the exit code."""
    probs, refs = cohort
    proc = cli(["tune", "--prob-dir", probs, "--ref-dir", refs, "--out", tmp_path / "t"], fault=f"cli.start:{action}")
    assert proc.returncode == code, proc.stderr[-2000:]
    assert one_line(proc.stderr) == f"autosegsens: cancelled ({name}). nothing started"
    assert not (tmp_path / "t").exists()
