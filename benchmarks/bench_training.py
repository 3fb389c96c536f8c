"""Training throughput (samples/s) of our 2D U-Net (paper 000 Table A1) against a plain MONAI UNet of
similar size, with the same data loader, loss, optimiser and batches, in one run; prints the ratio.

The peer is ``monai.networks.nets.UNet(channels=(16, 32, 64, 128, 128), strides=(2, 2, 2, 2),
num_res_units=2, norm="batch", act="leakyrelu", dropout=0.2)``: 0.93 M parameters against our 1.13 M, two
convolutions per level like Table A1 (but MONAI down-samples with strided convolutions, so less of its work
happens at full resolution).

Both networks see identical batches built by ``AutoSegSensitivity.training`` (slice sampling with 80 %
foreground, augmentation, padding to a multiple of 16, the loss on the unpadded slice) from a phantom
dataset preprocessed as paper 000 (the in-plane size is ``--size``), with the training's speed options:
mixed precision on CUDA in the config's ``amp_dtype`` (bfloat16 where supported, else float16 with a
gradient scaler) and ``--channels-last``. On CUDA it also prints the peak GPU memory of each network.

Usage:
  python benchmarks/bench_training.py [--device cpu|cuda|auto] [--size 128] [--batch 16] [--steps 10]
      [--channels-last] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    import torch
    from monai.networks.nets import UNet

    from AutoSegSensitivity.losses import build_loss
    from AutoSegSensitivity.models import build_model
    from AutoSegSensitivity.phantom import make_phantom_dataset
    from AutoSegSensitivity.checkpoint import amp_dtype, needs_grad_scaler, resolve_device
    from AutoSegSensitivity.data import lr_swap_permutation, pad_to_multiple, prepare_case, sample_slices
    from AutoSegSensitivity.training import TrainConfig, _item_rng, _make_batch, _train_step, load_dataset, to_target

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=128, help="in-plane size the networks see (resize)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action="store_true", help="NHWC layout for both networks")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        make_phantom_dataset(Path(tmp) / "data", cases=2, seed=0)
        cfg = TrainConfig(model="unet2d", resize=[args.size, args.size], batch_size=args.batch, foreground_fraction=0.8)
        raw, names = load_dataset(Path(tmp) / "data", None)
    pre = cfg.preprocessor()
    cases = [prepare_case(n, v.array, m, pre) for n, v, m in raw]
    pad = pre.pad_values()
    perm = lr_swap_permutation(names)
    rng = np.random.default_rng(0)
    items = sample_slices(cases, args.batch * (args.steps + 2), rng, 0.8)
    batches = []
    for b in range(0, len(items), args.batch):
        idx = range(b, min(len(items), b + args.batch))
        x, y = _make_batch(cases, [items[i] for i in idx], cfg, 2, [_item_rng(0, 1, i) for i in idx], perm, pad)
        batches.append((x, y))

    torch.manual_seed(0)
    ours = build_model("unet2d", 1, len(names))
    monai_net = UNet(spatial_dims=2, in_channels=1, out_channels=len(names), channels=(16, 32, 64, 128, 128),
                     strides=(2, 2, 2, 2), num_res_units=2, norm="batch", act="leakyrelu", dropout=0.2)
    loss_fn = build_loss("bce")
    dtype = amp_dtype(dev, cfg.amp_dtype) if cfg.amp else None
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    results = {}
    for label, net in (("ours (unet2d)", ours), ("MONAI UNet", monai_net)):
        net.to(dev).to(memory_format=fmt).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(dtype) else None

        def step(x: np.ndarray, y: np.ndarray) -> float:
            xt = torch.from_numpy(x).to(dev)
            yt = to_target(torch.from_numpy(y).to(dev), False)
            xt, _ = pad_to_multiple(xt, 16, pad, dims=2)
            return _train_step(net, loss_fn, opt, scaler, xt.contiguous(memory_format=fmt), yt, dtype, dev)

        for x, y in batches[:2]:  # warm-up
            step(x, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        n = 0
        for x, y in batches[2:]:
            step(x, y)
            n += x.shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        sps = n / (time.perf_counter() - t0)
        params = sum(p.numel() for p in net.parameters())
        results[label] = sps
        mem = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB" if dev.type == "cuda" else ""
        print(f"{label:14s} {params / 1e6:6.3f} M parameters, {sps:8.1f} samples/s "
              f"({args.size}x{args.size}, batch {args.batch}, {dev}, amp {dtype}, "
              f"channels_last {args.channels_last}{mem})")
    ratio = results["ours (unet2d)"] / results["MONAI UNet"]
    print(f"throughput ratio ours / MONAI UNet: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
