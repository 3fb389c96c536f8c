"""Inference speed: our 2D U-Net against MONAI's UNet at the same input size and batch, and a whole CT with
the paper-000 config, in one run; prints ratios.

1. Network throughput, ours (``unet2d``, paper 000 Table A1, 1.13 M parameters) vs the peer
   ``monai.networks.nets.UNet(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2,
   norm="batch", dropout=0.2)`` (our ``monai_unet`` wrapper), both through ``predict_volume`` (so both
   get the same preprocessing, batching, channels_last and mixed precision) on random CT slices of
   ``--size`` x ``--size``: slices/s, and peak GPU memory on CUDA. On CUDA the size is 512 and the goal
   is >= 300 slices/s for ours on one H100/H200-class GPU (ratio printed).
2. A whole ``--ct-slices`` x 512 x 512 CT with ``examples/configs/bice-unet2d-bce.yaml`` (NLF1, centre
   crop 300, resize 150: the network sees 150 x 150 padded to 160 x 160), end to end including the
   intensity transform, crop, resize, their inverse and the float32 maps on the CT grid; with the time
   split into preprocessing, network and inverse, for channels_last off and on, and the process's CPU
   time (on a shared machine, CPU time / threads estimates the wall time on free cores). Goal on 2 CPU
   cores: < 10 s (ratio printed).
3. With ``--memory``: peak host memory of predicting a 512 x 512 x ``--ct-slices`` CT without crop (a
   fresh process; goal < 2 GB).

Usage:
  python benchmarks/bench_inference.py [--device cpu|cuda|auto] [--size 160] [--slices 32] [--batch 16]
      [--ct-slices 150] [--threads 2] [--memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GPU_GOAL = 300.0        # slices/s at 512 x 512 on one H100/H200-class GPU
CT_GOAL_S = 10.0        # a whole 150-slice CT, paper-000 config, 2 CPU cores
CONFIG = Path(__file__).resolve().parents[1] / "examples" / "configs" / "bice-unet2d-bce.yaml"


def _loaded(device: str, name: str, classes: int = 1, crop=None, resize=None):
    import torch

    from AutoSegSensitivity.data import Preprocessor
    from AutoSegSensitivity.inference import LoadedModel
    from AutoSegSensitivity.intensity import get_transform
    from AutoSegSensitivity.models import build_model
    from AutoSegSensitivity.train_config import TrainConfig

    torch.manual_seed(0)
    kwargs = {"base_features": 16, "depth": 5, "norm": "batch", "dropout": 0.2} if name == "monai_unet" else {}
    net = build_model(name, 1, classes, **kwargs)
    names = [f"S{i}" for i in range(classes)]
    dev = torch.device(device)
    return LoadedModel(model=net.to(dev).eval(), class_names=names, config=TrainConfig(model=name),
                       preprocessor=Preprocessor([get_transform("NLF1")], crop, resize),
                       spec={"name": name, "spatial_dims": 2, "final_activation": "sigmoid"},
                       thresholds={n: 0.5 for n in names}, device=dev)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(device: str, name: str, size: int, slices: int, batch: int, channels_last: bool) -> dict:
    """slices/s of predict_volume on random ``slices`` x ``size`` x ``size`` HU, and peak GPU memory."""
    import torch

    from AutoSegSensitivity.inference import predict_volume
    from AutoSegSensitivity.volume import Volume

    model = _loaded(device, name)
    ct = Volume(np.random.default_rng(0).integers(-1000, 1500, (slices, size, size), dtype=np.int16), (1.0, 1.0, 3.0))
    predict_volume(model, Volume(ct.array[:batch], ct.spacing), batch_size=batch, channels_last=channels_last)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    predict_volume(model, ct, batch_size=batch, channels_last=channels_last)
    _sync(device)
    out = {"slices_per_s": slices / (time.perf_counter() - t0)}
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def whole_ct(device: str, n: int, batch: int, channels_last: bool) -> dict:
    """Seconds for a whole n x 512 x 512 CT with the paper-000 config, and where they go."""
    import torch

    from AutoSegSensitivity.data import pad_to_multiple
    from AutoSegSensitivity.inference import predict_volume
    from AutoSegSensitivity.train_config import TrainConfig
    from AutoSegSensitivity.volume import Volume

    cfg = TrainConfig.from_file(CONFIG)
    model = _loaded(device, "unet2d", 2, tuple(cfg.crop), tuple(cfg.resize))
    rng = np.random.default_rng(1)
    ct = Volume(rng.integers(-1000, 1500, (n, 512, 512), dtype=np.int16), (0.98, 0.98, 3.0))
    predict_volume(model, Volume(ct.array[:batch], ct.spacing), batch_size=batch, channels_last=channels_last)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    predict_volume(model, ct, batch_size=batch, channels_last=channels_last)
    _sync(device)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    # the same work in its three parts
    pre = model.preprocessor
    t0 = time.perf_counter()
    x = pre.image(ct.array)
    t_pre = time.perf_counter() - t0
    net, dev = model.inference_network(channels_last), torch.device(device)
    probs = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, n, batch):
            xp, sizes = pad_to_multiple(torch.from_numpy(x[s:s + batch]).to(dev), 16, pre.pad_values())
            if channels_last:
                xp = xp.contiguous(memory_format=torch.channels_last)
            probs.append(torch.sigmoid(net(xp)[..., :sizes[0], :sizes[1]]).cpu().numpy())
    _sync(device)
    t_net = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p in probs:
        pre.invert(p, (512, 512))
    t_inv = time.perf_counter() - t0
    return {"total_s": total, "cpu_s": cpu, "pre_s": t_pre, "net_s": t_net, "invert_s": t_inv}


def memory(device: str, ct_slices: int, batch: int) -> dict:
    from AutoSegSensitivity.inference import predict_volume
    from AutoSegSensitivity.volume import Volume

    model = _loaded(device, "unet2d")
    ct = Volume(np.random.default_rng(0).integers(-1000, 1500, (ct_slices, 512, 512), dtype=np.int16),
                (0.98, 0.98, 3.0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    t0 = time.perf_counter()
    probs = predict_volume(model, ct, batch_size=batch)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"ct_shape": list(ct.shape), "seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1),
            "rss_before_mb": round(before, 1), "output_mb": round(sum(v.array.nbytes for v in probs.values()) / 2**20, 1)}


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=160, help="in-plane size of part 1 on CPU (512 on CUDA)")
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--ct-slices", type=int, default=150)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--memory", action="store_true", help="also measure peak host memory (part 3)")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "auto" else [args.device]
    if args.memory_child:
        print(json.dumps(memory(devices[-1], args.ct_slices, args.batch)))
        return 0
    for dev in devices:
        cuda = dev.startswith("cuda")
        where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
        size, slices, batch = (512, max(args.slices, 256), 32) if cuda else (args.size, args.slices, args.batch)
        print(f"== 1. network throughput, {size}x{size}, batch {batch}, {where}")
        for cl in (False, True):
            res = {name: throughput(dev, name, size, slices, batch, cl) for name in ("unet2d", "monai_unet")}
            mem = (f"; peak GPU memory {res['unet2d']['peak_gpu_mb']:.0f} MB vs {res['monai_unet']['peak_gpu_mb']:.0f} MB"
                   if cuda else "")
            goal = f"; ratio to the {GPU_GOAL:.0f} slices/s goal: {res['unet2d']['slices_per_s'] / GPU_GOAL:.2f}" if cuda else ""
            print(f"channels_last={cl!s:5}: ours {res['unet2d']['slices_per_s']:.1f} slices/s, MONAI UNet "
                  f"{res['monai_unet']['slices_per_s']:.1f} slices/s; ratio ours/MONAI "
                  f"{res['unet2d']['slices_per_s'] / res['monai_unet']['slices_per_s']:.2f}{mem}{goal}")
        print(f"== 2. whole {args.ct_slices} x 512 x 512 CT, {CONFIG.name} (crop 300, resize 150), batch {args.batch}, "
              f"{where}")
        for cl in (False, True):
            r = whole_ct(dev, args.ct_slices, args.batch, cl)
            print(f"channels_last={cl!s:5}: {r['total_s']:.1f} s ({args.ct_slices / r['total_s']:.1f} slices/s; "
                  f"CPU time {r['cpu_s']:.1f} s over {torch.get_num_threads()} threads); "
                  f"parts: preprocessing {r['pre_s']:.1f} s, network {r['net_s']:.1f} s, inverse {r['invert_s']:.1f} s; "
                  f"ratio to the {CT_GOAL_S:.0f} s goal: {r['total_s'] / CT_GOAL_S:.2f}")
    if args.memory:
        cmd = [sys.executable, __file__, "--memory-child", "--device", devices[-1], "--ct-slices", str(args.ct_slices),
               "--batch", str(args.batch)] + (["--threads", str(args.threads)] if args.threads else [])
        m = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"== 3. peak host memory predicting a {'x'.join(map(str, m['ct_shape']))} CT (no crop) on {devices[-1]}: "
              f"{m['peak_rss_mb']:.0f} MB resident ({m['rss_before_mb']:.0f} MB before; output {m['output_mb']:.0f} MB) "
              f"in {m['seconds']:.1f} s; ratio to the 2 GB goal: {m['peak_rss_mb'] / 2048:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
