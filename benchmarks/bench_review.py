"""Benchmark: the review page's server side (``autosegsens review``) on one case of 150 x 512 x 512.

Writes a one-case cohort in the study layout (CT ``image.nrrd`` as int16 HU, ``segmentation.seg.nrrd`` with
the reference, ``prob_Organ.nrrd``: ``make_case`` of ``bench_sweep.py``, a blurred, under-confident map of a
~50 ml organ), then times, server side (no browser; the views' rendering is not included):

* **opening the case** (goal: under 3 s on 2 CPU cores): ``Cohort.load_case`` (reading the CT, the reference
  and the map) and ``ReviewScene.show_case`` (volume nodes, reference segment as outline, the thresholded
  segment through ``ThresholdTuningLogic.apply_threshold``, its closed surface for the 3D view) -- the work
  of the page's ``open_case``;
* **a slider move** (goal: under 100 ms): ``ReviewScene.set_threshold(t, interactive=True)``, the page's
  handler of the slider, over a drag of ``--moves`` thresholds (median), and the release
  (``interactive=False``: the closed surface regenerated).

After the last move the scene's segment is checked to equal ``p >= t``.

    python benchmarks/bench_review.py            # full size
    python benchmarks/bench_review.py --small    # quick (48 x 128 x 128)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sweep import make_case  # noqa: E402

OPEN_GOAL_S = 3.0
MOVE_GOAL_MS = 100.0


def write_cohort(root: Path, shape, spacing_zyx) -> Path:
    from AutoSegSensitivity.io import write_case, write_volume
    from AutoSegSensitivity.segmentation import Segmentation
    from AutoSegSensitivity.volume import Volume

    prob, ref = make_case(shape, spacing_zyx)
    rng = np.random.default_rng(0)
    ct = (rng.normal(0, 15, shape) + np.where(ref, 40, -20)).astype(np.int16)
    image = Volume(ct, tuple(spacing_zyx[::-1]), (-200.0, -200.0, -150.0))
    seg = Segmentation.on_grid(image)
    seg.add("Organ", ref)
    write_case(root / "data" / "case000", image, seg)
    write_volume(image.with_array(prob), root / "predictions" / "bce" / "case000" / "prob_Organ.nrrd")
    (root / "study.json").write_text(json.dumps({"losses": [{"key": "bce"}], "structures": ["Organ"],
                                                 "settings": {}}), encoding="utf-8")
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="48 x 128 x 128 instead of 150 x 512 x 512")
    ap.add_argument("--moves", type=int, default=30, help="slider moves timed (default 30)")
    ap.add_argument("--repeats", type=int, default=3, help="case openings timed (default 3; the best is reported)")
    args = ap.parse_args()
    import slicer

    from AutoSegSensitivity.web.cohort import open_study
    from AutoSegSensitivity.web.scene import ReviewScene

    shape = (48, 128, 128) if args.small else (150, 512, 512)
    spacing = (3.0, 1.0, 1.0) if args.small else (2.0, 0.9766, 0.9766)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = write_cohort(Path(tmp) / "study", shape, spacing)
        print(f"cohort written in {time.perf_counter() - t0:.1f} s: 1 case of {shape[0]} x {shape[1]} x {shape[2]}")
        cohort = open_study(root)
        scene = ReviewScene(slicer.vtkMRMLScene())
        opens, reads = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            images = cohort.load_case("case000", "Organ")
            t1 = time.perf_counter()
            scene.show_case(images, 0.5)
            t2 = time.perf_counter()
            opens.append(t2 - t0)
            reads.append(t1 - t0)
        best = int(np.argmin(opens))
        print(f"open a case: {opens[best]:.2f} s (reading the files {reads[best]:.2f} s, MRML nodes and the "
              f"thresholded segment {opens[best] - reads[best]:.2f} s); goal {OPEN_GOAL_S:.0f} s: "
              f"{'met' if opens[best] < OPEN_GOAL_S else 'NOT met'} ({opens[best] / OPEN_GOAL_S:.2f} x the goal); "
              f"first opening (nodes made) {opens[0]:.2f} s")
        ts = np.round(np.linspace(0.2, 0.8, args.moves), 2)
        moves = []
        for t in ts:
            t0 = time.perf_counter()
            scene.set_threshold(float(t), interactive=True)
            moves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scene.set_threshold(float(ts[-1]), interactive=False)
        release = time.perf_counter() - t0
        ms = 1000 * statistics.median(moves)
        print(f"slider move: {ms:.1f} ms (median of {len(moves)}, max {1000 * max(moves):.1f} ms); goal "
              f"{MOVE_GOAL_MS:.0f} ms: {'met' if ms < MOVE_GOAL_MS else 'NOT met'} ({ms / MOVE_GOAL_MS:.2f} x the "
              f"goal); release (3D surface regenerated): {1000 * release:.0f} ms")
        ok = np.array_equal(scene.result_mask(), images.probability.array >= np.float32(ts[-1]))
        print(f"scene segment equals p >= {ts[-1]:.2f}: {ok}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
