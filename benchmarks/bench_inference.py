"""2D U-Net inference speed (slices/s at 512x512) and peak host memory of predicting a 512x512x150 CT.

Peer: paper 000 reports about 30 slices/s on a GeForce 2080; the goal on an H100 is >= 300 slices/s
(ratio printed). The memory part runs in a fresh process (so earlier allocations do not count) and reports
the peak resident set size (``resource.getrusage``), the part of it above the process's size before
inference, and the peak of Python/numpy allocations (``tracemalloc``); the goal is a streamed prediction
under 2 GB of host memory.

Usage:
  python benchmarks/bench_inference.py [--device cpu|cuda|auto] [--slices 32] [--batch 8] [--ct-slices 150]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np

PAPER_SLICES_PER_S = 30.0  # paper 000, GeForce 2080
H100_GOAL = 300.0


def _loaded_model(device: str, classes: int = 1):
    import torch

    from AutoSegSensitivity.data import Preprocessor
    from AutoSegSensitivity.inference import LoadedModel
    from AutoSegSensitivity.intensity import get_transform
    from AutoSegSensitivity.models import build_model
    from AutoSegSensitivity.training import TrainConfig

    torch.manual_seed(0)
    net = build_model("unet2d", 1, classes)
    cfg = TrainConfig(model="unet2d", inference_batch_size=8)
    names = [f"S{i}" for i in range(classes)]
    dev = torch.device(device)
    return LoadedModel(model=net.to(dev).eval(), class_names=names, config=cfg,
                       preprocessor=Preprocessor([get_transform("NLF1")]),
                       spec={"name": "unet2d", "spatial_dims": 2, "final_activation": "sigmoid"},
                       thresholds={n: 0.5 for n in names}, device=dev)


def speed(device: str, slices: int, batch: int) -> float:
    import torch

    from AutoSegSensitivity.inference import predict_volume
    from AutoSegSensitivity.volume import Volume

    model = _loaded_model(device)
    ct = Volume(np.random.default_rng(0).integers(-1000, 1500, (slices, 512, 512), dtype=np.int16), (0.98, 0.98, 3.0))
    warm = Volume(ct.array[: batch], ct.spacing)
    predict_volume(model, warm, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    predict_volume(model, ct, batch_size=batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return slices / (time.perf_counter() - t0)


def memory(device: str, ct_slices: int, batch: int) -> dict:
    from AutoSegSensitivity.inference import predict_volume
    from AutoSegSensitivity.volume import Volume

    model = _loaded_model(device)
    ct = Volume(np.random.default_rng(0).integers(-1000, 1500, (ct_slices, 512, 512), dtype=np.int16),
                (0.98, 0.98, 3.0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    tracemalloc.start()
    t0 = time.perf_counter()
    probs = predict_volume(model, ct, batch_size=batch)
    seconds = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"ct_shape": list(ct.shape), "classes": len(probs), "seconds": round(seconds, 2),
            "peak_rss_mb": round(peak, 1), "rss_before_mb": round(before, 1),
            "increase_mb": round(peak - before, 1), "tracemalloc_peak_mb": round(py_peak / 2**20, 1),
            "ct_input_mb": round(ct.array.nbytes / 2**20, 1), "output_mb": round(sum(v.array.nbytes for v in probs.values()) / 2**20, 1)}


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--ct-slices", type=int, default=150)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "auto" else [args.device]
    if args.memory_child:
        print(json.dumps(memory(devices[-1], args.ct_slices, args.batch)))
        return 0
    for dev in devices:
        sps = speed(dev, args.slices if dev == "cpu" else max(args.slices, 512), args.batch if dev == "cpu" else 64)
        name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"unet2d inference 512x512 on {name}: {sps:.1f} slices/s; ratio to paper 000 (30 slices/s, "
              f"GeForce 2080): {sps / PAPER_SLICES_PER_S:.2f}" + (f"; ratio to the H100 goal (300): {sps / H100_GOAL:.2f}"
                                                                if dev == "cuda" else ""))
    if not args.skip_memory:
        cmd = [sys.executable, __file__, "--memory-child", "--device", devices[-1], "--ct-slices", str(args.ct_slices),
               "--batch", str(args.batch)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        m = json.loads(out)
        print(f"peak host memory predicting a {'x'.join(map(str, m['ct_shape']))} CT on {devices[-1]}: "
              f"{m['peak_rss_mb']:.0f} MB resident ({m['rss_before_mb']:.0f} MB before inference, +{m['increase_mb']:.0f} MB; "
              f"tracemalloc peak {m['tracemalloc_peak_mb']:.0f} MB; input {m['ct_input_mb']:.0f} MB, "
              f"output {m['output_mb']:.0f} MB) in {m['seconds']:.1f} s; ratio to the 2 GB goal: {m['peak_rss_mb'] / 2048:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
