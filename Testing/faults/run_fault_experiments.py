#!/usr/bin/env python
"""The slow fault experiments of issue 20: every kill point of every command, signals from outside at
random moments, and full file systems of several sizes. Prints one line per experiment and a summary;
exit code 1 when any experiment breaks a rule.

Rules checked after every experiment:
  * nothing that looks complete is incomplete or mixed: a tune/sweep/apply/phantom/predict --image folder
    is either absent, exactly the previous complete output, or the new complete output; a predict --data
    case with prediction.json has every file it lists, readable; a training folder without INCOMPLETE is
    finished, and after `train --overwrite` no file of the old run is left;
  * a failure or signal says so in one line (no traceback), with exit code 1 (failure), 130 (SIGINT) or
    143 (SIGTERM);
  * the next run into the same folder finishes and leaves no temporary behind.

Kills come from the test hook AUTOSEGSENS_FAULT=POINT:kill:N (AutoSegSensitivity.atomic.fault_point): for
each point, N = 1, 2, ... until the command finishes without reaching it. Signals are sent from this
script after a seeded random delay. Full file systems are tmpfs mounts (root only; skipped otherwise).

  python Testing/faults/run_fault_experiments.py [--quick] [--seed 0] [--keep DIR]

About an hour on 2 cores; --quick (tune, phantom and predict --image kills, N <= 2; 3 signal moments per
command and signal) about 15 minutes; --only picks parts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python"))

FAULT = "AUTOSEGSENS_FAULT"
CONFIG = {"model": "unet2d", "model_kwargs": {"base_features": 4}, "structures": ["Brain", "SpinalCord"],
          "epochs": 2, "batch_size": 4, "samples_per_epoch": 8, "lr": 0.003, "crop": [48, 48],
          "resize": [32, 32], "num_threads": 1}
POINTS = ("atomic.write", "atomic.replace", "commit", "train.epoch")


def run(args: List[str], fault: Optional[str] = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m AutoSegSensitivity ARGS`` in a new process with the fault hook set (the suite's runner)."""
    from test_faults import cli

    return cli(args, fault, timeout)


def snapshot(folder: Path) -> Dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def temps(folder: Path) -> List[str]:
    found = [str(p) for p in folder.parent.glob(f".{folder.name}.*tmp*")]
    if folder.is_dir():
        found += [str(p) for p in folder.rglob(".*") if ".tmp" in p.name]
    return found


def one_line_or_none(err: str) -> Optional[str]:
    """The problem with stderr, or None: no traceback, the last line names the error or the cancel."""
    if "Traceback" in err:
        return "traceback on stderr"
    return None


class Lab:
    def __init__(self, work: Path, seed: int, quick: bool) -> None:
        self.work, self.seed, self.quick = work, seed, quick
        self.results: List[Tuple[str, bool, str]] = []

    def record(self, name: str, ok: bool, note: str = "") -> None:
        self.results.append((name, ok, note))
        print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {note}" if note else ""), flush=True)

    # ---- fixtures --------------------------------------------------------------------------------------
    def setup(self) -> None:
        import yaml

        from AutoSegSensitivity.phantom import make_phantom_dataset
        from tune_cohort import write_cohort

        self.data = self.work / "data"
        make_phantom_dataset(self.data, cases=4, seed=1, shape=(6, 48, 48))
        self.cfg = self.work / "cfg.yaml"
        self.cfg.write_text(yaml.safe_dump(CONFIG))
        self.probs, self.refs = write_cohort(self.work / "cohort", n=5, shape=(6, 12, 12))
        self.base_run = self.work / "base_run"
        proc = run(self.train_args(self.base_run))
        assert proc.returncode == 0, proc.stderr
        self.model = self.base_run / "best.pt"
        proc = run(self.tune_args(self.work / "thr"))
        assert proc.returncode == 0, proc.stderr
        self.thresholds = self.work / "thr" / "thresholds.json"

    def train_args(self, out: Path, *extra: str) -> List[str]:
        return ["train", "--config", self.cfg, "--data", self.data, "--out", out, "--device", "cpu", "--quiet", *extra]

    def tune_args(self, out: Path, *extra: str) -> List[str]:
        return ["tune", "--prob-dir", self.probs, "--ref-dir", self.refs, "--out", out, "--folds", "2",
                "--bootstrap", "20", *extra]

    # ---- commands under test: (args, previous output or None, check after a kill) ----------------------
    def commands(self) -> Dict[str, Callable[[Path, bool], List[str]]]:
        return {
            "tune": lambda out, over: self.tune_args(out, *(["--overwrite"] if over else [])),
            "sweep": lambda out, over: ["sweep", "--prob", self.probs / "case00" / "prob_Low.nrrd", "--ref",
                                        self.refs / "case00" / "segmentation.seg.nrrd", "--segment", "Low",
                                        "--out", out] + (["--overwrite"] if over else []),
            "apply": lambda out, over: ["apply", "--thresholds", self.thresholds, "--prob-dir", self.probs,
                                        "--out", out] + (["--overwrite"] if over else []),
            "phantom": lambda out, over: ["phantom", "--out", out, "--cases", "2" if over else "3", "--shape",
                                          "4", "24", "24"] + (["--overwrite"] if over else []),
            "predict-image": lambda out, over: ["predict", "--model", self.model, "--image",
                                                self.data / "case000" / "image.nrrd", "--out", out,
                                                "--threshold", "0.5"] + (["--overwrite"] if over else []),
        }

    # ---- kill matrix -----------------------------------------------------------------------------------
    def kill_matrix(self) -> None:
        max_n = 2 if self.quick else 12
        for name, make in self.commands().items():
            if self.quick and name not in ("tune", "phantom", "predict-image"):
                continue
            for over in (False, True):
                old = self.work / f"old-{name}-{over}"
                before: Dict[str, bytes] = {}
                if over:
                    shutil.rmtree(old, ignore_errors=True)
                    proc = run(make(old, False))
                    assert proc.returncode == 0, (name, proc.stderr)
                    before = snapshot(old)
                for point in POINTS[:3]:
                    for n in range(1, max_n + 1):
                        out = self.work / f"k-{name}-{over}-{point}-{n}"
                        if over:
                            shutil.copytree(old, out)
                        proc = run(make(out, over), fault=f"{point}:kill:{n}")
                        label = f"kill {name}{' --overwrite' if over else ''} at {point}#{n}"
                        if proc.returncode == 0:
                            break  # the point is reached fewer than n times
                        after = snapshot(out)
                        ok = proc.returncode == -9 and after in (before, {})  # old output, or none
                        if not ok:  # allowed too: the new output, complete (killed after the last rename)
                            ref = self.work / f"ref-{name}-{over}"
                            if not ref.exists():
                                run(make(ref, over))
                            ok = proc.returncode == -9 and _same_files(after, snapshot(ref))
                        rerun = run(make(out, True))
                        left = temps(out)
                        ok = ok and rerun.returncode == 0 and not left
                        self.record(label, ok, "" if ok else f"rc {proc.returncode}, files {sorted(after)}, "
                                    f"rerun {rerun.returncode}, temps {left}")
                        shutil.rmtree(out, ignore_errors=True)

    def kill_train(self) -> None:
        from AutoSegSensitivity.checkpoint import read_checkpoint

        max_n = 2 if self.quick else 8
        for over in (False, True):
            for point in ("atomic.replace", "train.epoch"):
                for n in range(1, max_n + 1):
                    out = self.work / f"kt-{over}-{point}-{n}"
                    if over:
                        shutil.copytree(self.base_run, out)
                    old_best = (out / "best.pt").read_bytes() if over else None
                    proc = run(self.train_args(out, *(["--overwrite"] if over else [])), fault=f"{point}:kill:{n}")
                    if proc.returncode == 0:
                        break
                    names = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.exists() else []
                    ok = proc.returncode == -9
                    if over and (out / "best.pt").exists():
                        ok = ok and (out / "best.pt").read_bytes() != old_best
                    if "last.pt" in names:
                        ok = ok and "INCOMPLETE" in names
                        read_checkpoint(out / "last.pt")  # complete and readable
                    again = ("--resume",) if "last.pt" in names else ("--overwrite",)
                    resume = run(self.train_args(out, *again))
                    ok = ok and resume.returncode == 0 and not temps(out) and not (out / "INCOMPLETE").exists()
                    self.record(f"kill train{' --overwrite' if over else ''} at {point}#{n}", ok,
                                "" if ok else f"rc {proc.returncode}, files {names}, resume {resume.returncode} "
                                f"{resume.stderr[-300:]}")
                    shutil.rmtree(out, ignore_errors=True)

    def kill_predict_data(self) -> None:
        from AutoSegSensitivity.io import read_volume

        max_n = 3 if self.quick else 10
        for n in range(1, max_n + 1):
            out = self.work / f"kp-{n}"
            args = ["predict", "--model", self.model, "--data", self.data, "--out", out]
            proc = run(args, fault=f"atomic.replace:kill:{n}")
            if proc.returncode == 0:
                break
            ok = proc.returncode == -9
            for marker in out.glob("*/prediction.json"):
                for f in json.loads(marker.read_text())["files"]:
                    read_volume(marker.parent / f)  # every listed file complete
            rerun = run(args)
            ok = ok and rerun.returncode == 0 and not temps(out) and len(list(out.glob("*/prediction.json"))) == 4
            self.record(f"kill predict --data at atomic.replace#{n}", ok, "" if ok else rerun.stderr[-300:])
            shutil.rmtree(out, ignore_errors=True)

    # ---- signals from outside ---------------------------------------------------------------------------
    def signals(self) -> None:
        rng = random.Random(self.seed)
        fractions = [rng.uniform(0.3, 0.95) for _ in range(3 if self.quick else 8)]

        def make(name: str, out: Path) -> List[str]:
            return {"train": self.train_args(out, "--set", "epochs=6"),
                    "predict": ["predict", "--model", self.model, "--data", self.data, "--out", out],
                    "tune": self.tune_args(out)}[name]

        full_s = {}
        for name in ("train", "predict", "tune"):  # how long each runs uninterrupted (signals come during it)
            t0 = time.monotonic()
            run(make(name, self.work / f"s-{name}-full"))
            full_s[name] = time.monotonic() - t0
        for sig in (signal.SIGTERM, signal.SIGINT):
            for i, fraction in enumerate(fractions):
                for name in ("train", "predict", "tune"):
                    out = self.work / f"s-{name}-{sig.name}-{i}"
                    args = make(name, out)
                    delay = fraction * full_s[name]
                    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
                    env.pop(FAULT, None)
                    p = subprocess.Popen([sys.executable, "-m", "AutoSegSensitivity", *map(str, args)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                    try:
                        p.wait(timeout=delay)
                    except subprocess.TimeoutExpired:
                        p.send_signal(sig)
                    _, err = p.communicate(timeout=300)
                    want = {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
                    ok = p.returncode in (0, want) and one_line_or_none(err) is None
                    if p.returncode == want:
                        last = err.strip().splitlines()[-1] if err.strip() else ""
                        ok = ok and f"cancelled ({sig.name})" in last
                        if name == "predict" and "shard 0/1" in last:  # stopped while predicting cases
                            ok = ok and (out / "shard-0-of-1.json").exists()
                        if name == "train" and (out / "last.pt").exists():
                            ok = ok and "--resume" in last and (out / "INCOMPLETE").exists()
                        if name == "tune":
                            ok = ok and not (out / "thresholds.json").exists()
                    self.record(f"{sig.name} to {name} after {delay:.1f} s", ok,
                                f"rc {p.returncode}" + ("" if ok else f": {err[-400:]}"))
                    shutil.rmtree(out, ignore_errors=True)

    # ---- full file systems ------------------------------------------------------------------------------
    def full_disks(self) -> None:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            self.record("full file systems", True, "skipped (needs root to mount tmpfs)")
            return
        for size in ("8k", "32k", "128k", "512k", "2m"):
            where = self.work / f"fs-{size}"
            where.mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]).returncode:
                self.record("full file systems", True, "skipped (mount refused)")
                return
            try:
                for name, args in (("tune", self.tune_args(where / "tune")),
                                   ("train", self.train_args(where / "train")),
                                   ("predict", ["predict", "--model", self.model, "--data", self.data,
                                                "--out", where / "pred"])):
                    proc = run(args)
                    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
                    ok = proc.returncode in (0, 1) and "Traceback" not in proc.stderr
                    if proc.returncode == 1 and name != "predict":
                        ok = ok and len(lines) == 1 and "no space left on device" in lines[0]
                    if name == "tune" and proc.returncode != 0:
                        ok = ok and not (where / "tune").exists()
                    if name == "predict":
                        ok = ok and all("ITK" not in ln and ".tmp" not in ln for ln in lines)
                    self.record(f"{name} on a {size} file system", ok, f"rc {proc.returncode}"
                                + ("" if ok else f": {proc.stderr[-400:]}"))
                    if proc.returncode == 0:
                        shutil.rmtree(where / {"tune": "tune", "train": "train", "predict": "pred"}[name])
            finally:
                subprocess.run(["umount", "-l", str(where)])


def _same_files(a: Dict[str, bytes], b: Dict[str, bytes]) -> bool:
    """Same file names (contents may differ in timestamps, e.g. thresholds.json's "created")."""
    return sorted(a) == sorted(b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--only", choices=("kills", "train", "predict", "signals", "disks"), action="append")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="autosegsens-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    lab = Lab(work, args.seed, args.quick)
    try:
        lab.setup()
        only = set(args.only or ("kills", "train", "predict", "signals", "disks"))
        if "kills" in only:
            lab.kill_matrix()
        if "train" in only:
            lab.kill_train()
        if "predict" in only:
            lab.kill_predict_data()
        if "signals" in only:
            lab.signals()
        if "disks" in only:
            lab.full_disks()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in lab.results if not r[1]]
    print(f"{len(lab.results)} experiments, {len(bad)} broke a rule ({time.monotonic() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
