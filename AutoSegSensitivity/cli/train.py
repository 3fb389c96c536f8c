"""Train a segmentation network on a dataset folder (one sub-folder per case).

The config (YAML or JSON) names the network, loss, intensity transform, structures, sizes, optimiser and
stopping rule; unknown keys are errors. Checkpoints go to OUT/last.pt (every epoch) and OUT/best.pt (best
epoch by the stopping rule), progress events to OUT/events.jsonl. Ctrl-C (or SIGTERM, or a file named
CANCEL in OUT) stops at the next batch and keeps the last complete epoch; --resume continues from it.
While a run is unfinished (running, stopped, killed or failed) OUT holds a file INCOMPLETE saying so;
it goes when training ends. --overwrite first removes every file of the earlier run (last.pt, best.pt,
events.jsonl, config.json), so an interrupted new run never sits beside the old run's best.pt.
Checkpoints are written atomically (temporary file, fsync, rename); temporaries left by a killed run are
removed by the next run into OUT. A full disk ends with one line naming the checkpoint (exit code 1).

Several GPUs or machines: launch the same command with torchrun (PyTorch's launcher). Each process
trains on its share of every batch (batch_size is the global batch) with DistributedDataParallel: NCCL
on CUDA, gloo on CPU. Only rank 0 writes checkpoints and events; --resume works the same way, and a
checkpoint from N processes loads in one and back.

Exit codes: 0 done, 1 failed (e.g. out of GPU memory or a full disk: the message says what to change),
2 bad input, 130 cancelled (Ctrl-C), 143 stopped by SIGTERM (SLURM at the time limit: --resume continues).

Example:
  autosegsens phantom --out phantom-data
  autosegsens train --config examples/configs/quick-unet2d.yaml --data phantom-data --out runs/quick
  autosegsens train --config examples/configs/quick-unet2d.yaml --data phantom-data --out runs/quick \\
      --resume --set epochs=20
  # one machine, 4 GPUs (or 4 CPU processes with --device cpu):
  torchrun --standalone --nproc_per_node=4 -m AutoSegSensitivity train \\
      --config examples/configs/bice-unet2d-bce.yaml --data data --out runs/ddp
  # two machines with 4 GPUs each (run on both; HOST = the first machine's address):
  torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
      --rdzv_id=job1 -m AutoSegSensitivity train --config C --data D --out O
  (SLURM: examples/slurm/train_torchrun.sbatch)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .common import add_out_argument, check_out_path, prepare_out_dir

NAME = "train"
HELP = "train a segmentation network (checkpoints, events, resume; under torchrun: DDP)"
OUTPUTS = ("last.pt", "best.pt", "events.jsonl", "config.json", "CANCEL", "INCOMPLETE")
INCOMPLETE = "INCOMPLETE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="training config (.yaml/.yml/.json)")
    parser.add_argument("--data", type=Path, required=True, help="dataset folder (one sub-folder per case)")
    add_out_argument(parser, help="output folder for checkpoints and events")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to train (default: the config's device, normally auto = CUDA if present)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML value; dotted keys such as early_stopping.patience=5)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines on stderr")


def kept(args: argparse.Namespace) -> str:
    """What an interrupted or failed training left: the epoch in OUT/last.pt and how to continue."""
    from ..checkpoint import read_checkpoint

    last = Path(args.out) / "last.pt"
    if not last.is_file():
        return f"no checkpoint was written to {args.out}"
    return f"{last} holds epoch {int(read_checkpoint(last)['epoch'])} (continue with --resume)"


def run(args: argparse.Namespace) -> int:
    from ..atomic import clean_stale_temps, fsync_path, write_text
    from ..distributed import launched_by_torchrun
    from ..progress import describe_epoch
    from ..training import TrainConfig, TrainingOutOfMemory, train

    check_out_path(args.out)  # a bad --out is one line before anything is read
    cfg = TrainConfig.from_file(args.config)
    if args.overrides:
        cfg = cfg.with_overrides(args.overrides)
    main_rank = not launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    if main_rank:
        if args.resume:
            clean_stale_temps(args.out)
        else:
            prepare_out_dir(args.out, args.overwrite, will_write=("last.pt", "best.pt", "events.jsonl"),
                            owned=OUTPUTS)
        if not args.resume or (args.out / "last.pt").is_file():
            write_text(args.out / INCOMPLETE, f"training in {args.out} has not finished (running, stopped or "
                       f"failed); {args.out / 'last.pt'} is the last complete epoch: continue with the same "
                       "`autosegsens train` command and --resume\n")
    interactive = sys.stderr.isatty()

    def on_event(event: dict) -> None:
        if args.quiet or interactive:
            return
        if event["event"] == "epoch":
            print(describe_epoch(event), file=sys.stderr, flush=True)
        elif event["event"] in ("warning", "stop"):
            print(f"{event['event']}: {event.get('message') or event.get('reason')}", file=sys.stderr, flush=True)

    device = args.device or cfg.device
    try:
        result = train(cfg, args.data, args.out, device=device, resume=args.resume, on_event=on_event)
    except TrainingOutOfMemory as exc:
        print(f"autosegsens train: error: {exc}", file=sys.stderr)
        return 1
    if not main_rank:
        return 0
    (args.out / INCOMPLETE).unlink(missing_ok=True)
    fsync_path(args.out)
    score = f"{result.best_score:.4f}" if result.best_score is not None else "-"
    print(f"trained {result.epochs_run} epochs ({result.stop_reason}); best epoch {result.best_epoch} "
          f"(score {score}) -> {result.best_path}")
    return 0
