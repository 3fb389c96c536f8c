"""Benchmark: cohort tuning (``autosegsens tune``) against only reading the maps, and against looping
``autosegsens sweep`` once per structure; and tune's peak memory at two cohort sizes.

Prints, in one run:

1. tune time / time to only read the maps and references the same way (goal <= 1.5);
2. looping ``autosegsens sweep`` once per structure (each run reads every case's map of that structure and
   every reference; what a user had to do before ``tune``) / tune time (goal >= 5x). ``--sweep-metrics``
   picks the loop's metrics: ``dice`` (default, the same work as tune) or sweep's own default
   ``dice,msd,hd,hd95``. The loop gives only the in-sample optimum; tune adds the cross-validation and the
   bootstrap CI;
3. tune's peak resident memory (goal < 2 GB) with half of the cases and with all of them, each measured in
   a fresh process: streaming cases keeps it independent of the number of cases;
4. ``tune --calibration`` / tune (goal <= 1.3): the calibration statistics come from the same pass over the
   maps (a fine logit histogram per case and structure over the reference dilated by 10 mm and p >= 0.01),
   then a temperature fit per fold; printed with and without writing the outputs (the report gains a
   reliability figure per structure). tune and tune --calibration run alternately ``--repeats`` times
   (default 3) and the medians are compared, of wall time and of CPU time (this process and its workers:
   on a shared machine the load moves wall times, CPU time much less).

The cohort is written once under ``--work`` (default: a temporary folder, removed at the end):
``refs/<case>/{image.nrrd, segmentation.seg.nrrd}`` and ``maps/<case>/prob_<S>.nrrd``, 20 cases x 6
structures at 512 x 512 x 120 by default (``--small``: 6 cases x 6 structures at 256 x 256 x 60). Each
structure is an ellipsoid; its map is a blurred noisy copy scaled so that the best threshold is far from
0.5, with faint noise (< 0.01) over the whole image as a network gives.

    python benchmarks/bench_tune.py --small
    python benchmarks/bench_tune.py                      # the full size of the issue
    python benchmarks/bench_tune.py --cases 10 --shape 120 512 512 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

STRUCTURES = ("Brain", "Parotid_L", "Parotid_R", "SpinalCord", "Mandible", "Larynx")
SPACING_XYZ = (0.977, 0.977, 2.5)


def make_case(shape, seed):
    """``{structure: (map float32, mask bool)}`` for one case."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(shape)
    out = {}
    noise = rng.integers(0, 10, tuple(shape), dtype=np.uint8).astype(np.float32) * np.float32(0.001)
    for k, s in enumerate(STRUCTURES):
        centre = shape * np.array([0.5, 0.3 + 0.4 * (k % 2), 0.2 + 0.12 * k]) + rng.uniform(-2, 2, 3)
        semi = shape * np.array([0.18, 0.08 + 0.01 * k, 0.05])
        lo = np.maximum((centre - 1.6 * semi).astype(int), 0)
        hi = np.minimum((centre + 1.6 * semi).astype(int) + 1, shape)
        g = np.meshgrid(*[(np.arange(a, b) - c) / r for a, b, c, r in zip(lo, hi, centre, semi)], indexing="ij")
        r = np.sqrt(sum(x ** 2 for x in g))
        ref = np.zeros(tuple(shape), bool)
        prob = noise.copy()
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        ref[box] = r < 1.0
        soft = ndimage.gaussian_filter((r < 1.0 + 0.1 * rng.standard_normal(r.shape)).astype(np.float32), 1.5)
        scale = (0.35, 0.55, 0.65, 0.8, 0.9, 1.0)[k]  # optima spread from ~0.2 to ~0.5
        prob[box] = np.maximum(prob[box], np.clip(soft, 0, 1) * scale)
        out[s] = (prob, ref)
    return out


def write_cohort(root: Path, cases: int, shape) -> None:
    from AutoSegSensitivity.io import write_case, write_volume
    from AutoSegSensitivity.segmentation import Segmentation
    from AutoSegSensitivity.volume import Volume

    for i in range(cases):
        name = f"case{i:03d}"
        data = make_case(shape, i)
        image = Volume(np.zeros(tuple(shape), np.int16), SPACING_XYZ, (0.0, 0.0, 0.0))
        seg = Segmentation.on_grid(image)
        for s, (_, ref) in data.items():
            seg.add(s, ref)
        write_case(root / "refs" / name, image, seg)
        for s, (prob, _) in data.items():
            write_volume(image.with_array(prob), root / "maps" / name / f"prob_{s}.nrrd")
        print(f"  wrote {name}", file=sys.stderr, flush=True)


def read_only(root: Path) -> None:
    """Read every reference and map the way tune does, and nothing else."""
    from AutoSegSensitivity.io import read_volume, scan_dataset
    from AutoSegSensitivity.tune import _read_reference

    for case in scan_dataset(root / "refs").cases:
        _read_reference(case)
        for p in sorted((root / "maps" / case.name).glob("prob_*.nrrd")):
            read_volume(p)


def loop_sweep(root: Path, out: Path, metrics: str) -> None:
    from AutoSegSensitivity.cli import main

    cases = sorted(p.name for p in (root / "refs").iterdir())
    for s in STRUCTURES:
        args = ["sweep", "--segment", s, "--metrics", metrics, "--out", str(out / s), "--overwrite"]
        for c in cases:
            args += ["--prob", str(root / "maps" / c / f"prob_{s}.nrrd"),
                     "--ref", str(root / "refs" / c / "segmentation.seg.nrrd")]
        if main(args) != 0:
            raise SystemExit(f"sweep of {s} failed")


def child(argv) -> None:
    """Run one job in this fresh process; print its time and peak RSS as JSON."""
    job, root, extra = argv[0], Path(argv[1]), argv[2:]
    t0 = time.perf_counter()
    c0 = time.process_time()
    extra_out = {}
    if job == "read":
        read_only(root)
    elif job == "tune":
        from AutoSegSensitivity.tune import tune_cohort, write_outputs

        calibration = len(extra) > 2 and extra[2] == "calibration"
        res = tune_cohort(root / extra[0], root / "refs", jobs=int(extra[1]), calibration=calibration)
        t_out = time.perf_counter()
        write_outputs(res, root / f"tuned_{extra[0]}{'_cal' if calibration else ''}")
        extra_out = {"outputs_seconds": time.perf_counter() - t_out}
    elif job == "sweep":
        loop_sweep(root, root / "sweeps", extra[0])
    dt = time.perf_counter() - t0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - c0 + kids.ru_utime + kids.ru_stime  # tune --jobs N: the workers' CPU too
    workers = job == "tune" and int(extra[1]) > 1  # tune --jobs N: the workers' peaks count too
    print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "peak_mib": peak_mib(workers), **extra_out}))


def peak_mib(children: bool) -> float:
    """Peak resident memory of this process (MiB) and of its finished children (tune --jobs N).

    ``VmHWM`` of /proc/self/status, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``fork`` + ``exec``
    from the parent (here the process that wrote the cohort), ``VmHWM`` belongs to this program alone."""
    own = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = float(line.split()[1]) / 1024.0
    except OSError:
        pass
    if own is None:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0 if children else 0.0
    return max(own, kids)


def run_child(*args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="6 cases x 6 structures at 60 x 256 x 256")
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"))
    ap.add_argument("--jobs", type=int, default=1, help="tune's --jobs")
    ap.add_argument("--sweep-metrics", default="dice",
                    help="--metrics of the looped sweep (dice: the same work as tune; dice,msd,hd,hd95: its default)")
    ap.add_argument("--work", type=Path, default=None, help="keep the cohort here (reused if present)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of tune --calibration (and of tune) for the ratio")
    args = ap.parse_args()
    cases = args.cases or (6 if args.small else 20)
    shape = tuple(args.shape or ((60, 256, 256) if args.small else (120, 512, 512)))
    root = args.work or Path(tempfile.mkdtemp(prefix="bench_tune_"))
    try:
        if not (root / "refs").is_dir():
            print(f"writing {cases} cases x {len(STRUCTURES)} structures at {shape} to {root}", file=sys.stderr)
            subprocess.run([sys.executable, __file__, "--write", str(root), str(cases), *map(str, shape)], check=True)
        half = root / "maps_half"
        if not half.is_dir():
            half.mkdir()
            for p in sorted((root / "maps").iterdir())[: max(2, cases // 2)]:
                (half / p.name).symlink_to(p)
        read = run_child("read", root)
        tune = run_child("tune", root, "maps", args.jobs)
        plain, cal = [tune], []
        for i in range(args.repeats):
            cal.append(run_child("tune", root, "maps", args.jobs, "calibration"))
            if i + 1 < args.repeats:
                plain.append(run_child("tune", root, "maps", args.jobs))
        tune_half = run_child("tune", root, "maps_half", args.jobs)
        sweep = run_child("sweep", root, args.sweep_metrics)
        print(f"cohort: {cases} cases x {len(STRUCTURES)} structures at {shape[0]} x {shape[1]} x {shape[2]} "
              f"(z, y, x), tune --jobs {args.jobs}")
        print(f"read maps and references only: {read['seconds']:.1f} s")
        cases_s = tune["seconds"] - tune["outputs_seconds"]
        print(f"tune:                          {tune['seconds']:.1f} s  -> tune / read = "
              f"{tune['seconds'] / read['seconds']:.2f} (goal <= 1.5); without writing the outputs "
              f"(report figures, tables: {tune['outputs_seconds']:.1f} s): {cases_s / read['seconds']:.2f}")
        print(f"sweep --metrics {args.sweep_metrics} looped per structure: {sweep['seconds']:.1f} s  -> sweep loop / tune = "
              f"{sweep['seconds'] / tune['seconds']:.1f}x (goal >= 5x)")
        print(f"tune peak memory: {tune_half['peak_mib']:.0f} MiB with {max(2, cases // 2)} cases, "
              f"{tune['peak_mib']:.0f} MiB with {cases} cases (goal < 2048 MiB, independent of the case count)")
        med = lambda runs, key: float(np.median([r["seconds"] - (r["outputs_seconds"] if key else 0) for r in runs]))
        print(f"tune --calibration (median of {len(cal)}, tune: of {len(plain)}): {med(cal, False):.1f} s vs "
              f"{med(plain, False):.1f} s -> / tune = {med(cal, False) / med(plain, False):.2f} (goal <= 1.3); "
              f"without writing the outputs: {med(cal, True):.1f} s vs {med(plain, True):.1f} s = "
              f"{med(cal, True) / med(plain, True):.2f}; peak memory {max(r['peak_mib'] for r in cal):.0f} MiB")
        cpu = lambda runs: float(np.median([r["cpu_seconds"] for r in runs]))
        print(f"tune --calibration CPU time: {cpu(cal):.1f} s vs {cpu(plain):.1f} s -> / tune = "
              f"{cpu(cal) / cpu(plain):.2f} (goal <= 1.3)")
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "--write":
        write_cohort(Path(sys.argv[2]), int(sys.argv[3]), tuple(int(n) for n in sys.argv[4:7]))
    else:
        main()
