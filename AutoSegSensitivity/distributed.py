"""Distributed data-parallel training under ``torchrun``: process group, model wrapping, reductions.

All DDP code of the package lives here; :mod:`AutoSegSensitivity.training` asks :func:`setup` for a
:class:`DistContext` and uses its methods, which are no-ops in a single process. Under ``torchrun`` (the
environment holds ``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``):

* the backend is NCCL when training on CUDA (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPU;
* every rank draws the same global sample list for an epoch (seeded from ``(seed, epoch)``) and takes a
  contiguous, equal share of each global batch (:meth:`DistContext.share`); DDP averages the gradients,
  so with per-sample normalisation (instance/group norm, or SyncBatchNorm on CUDA) a step equals the
  single-process step on the whole global batch up to floating-point summation order;
* validation cases are split round-robin over ranks and the loss sums and Dice counts summed across
  ranks (:meth:`DistContext.all_sum`), so every rank sees the same numbers;
* rank 0 alone writes checkpoints and events and decides early stopping; the decision is broadcast
  (:meth:`DistContext.broadcast`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

import numpy as np

from .checkpoint import resolve_device
from .errors import InputError

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistContext:
    """This process's place in a distributed run (``world_size == 1``: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    reduce_device: Any = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes files and events)."""
        return self.rank == 0

    def share(self, items: Sequence[Any]) -> List[Any]:
        """This rank's contiguous share of a global batch: ``len(items) // world_size`` items each, the
        remainder going one each to the first ranks (so shares differ by at most one)."""
        items = list(items)
        if not self.enabled:
            return items
        base, extra = divmod(len(items), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return items[start:start + base + (1 if self.rank < extra else 0)]

    def round_robin(self, items: Sequence[Any]) -> List[Any]:
        """Items ``rank, rank + world_size, ...`` (validation cases)."""
        return list(items)[self.rank::self.world_size]

    def all_sum(self, values: Any) -> np.ndarray:
        """Element-wise sum of a float array over all ranks (float64; the input unchanged in one process)."""
        arr = np.asarray(values, dtype=np.float64)
        if not self.enabled:
            return arr
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(arr.copy()).to(self.reduce_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy().reshape(arr.shape)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (e.g. a cancel request one rank saw)."""
        return bool(self.all_sum([1.0 if flag else 0.0])[0] > 0)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.reduce_device)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if str(self.reduce_device).startswith("cuda"):
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def close(self, sync: bool = True) -> None:
        """Tear down the process group if :func:`setup` created it. With ``sync`` (every rank is leaving
        at the same point: done, or a cancel all ranks agreed on) after a barrier, so that no rank destroys
        the group while another still finishes a collective; without it (an error on this rank) at once,
        since the other ranks may be waiting in a collective this rank will never join."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                if sync:
                    self.barrier()
                dist.destroy_process_group()
            self.owns_group = False


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one process (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError as exc:
        raise InputError("environment", "WORLD_SIZE", "an integer", got=os.environ.get("WORLD_SIZE")) from exc


def setup(device: str = "auto") -> Tuple[DistContext, Any]:
    """The distributed context and the torch device of this process.

    In a single process: ``DistContext()`` and :func:`~AutoSegSensitivity.checkpoint.resolve_device`.
    Under torchrun: joins (or creates) the default process group from the environment, NCCL on CUDA
    (``cuda:LOCAL_RANK``, made the current device) and gloo on CPU."""
    if not launched_by_torchrun():
        return DistContext(), resolve_device(device)
    import torch
    import torch.distributed as dist

    env = {k: os.environ.get(k) for k in ENV_VARS}
    missing = [k for k, v in env.items() if v is None]
    if missing:
        raise InputError("environment", ", ".join(missing), "set by torchrun (WORLD_SIZE > 1 without them)",
                         got="unset")
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    dev = resolve_device(device)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise InputError("environment", "LOCAL_RANK", f"< {torch.cuda.device_count()} (GPUs on this node)",
                             got=local)
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            dist.init_process_group(backend, device_id=dev)
        else:
            dist.init_process_group(backend)
        owns = True
    ctx = DistContext(rank=rank, world_size=world, local_rank=local, owns_group=owns,
                      reduce_device=dev if backend == "nccl" else "cpu")
    return ctx, dev


def wrap_model(model: Any, device: Any, ctx: DistContext, sync_batchnorm: bool = True) -> Tuple[Any, bool]:
    """``model`` wrapped in ``DistributedDataParallel`` under torchrun (as is otherwise). On CUDA with
    ``sync_batchnorm`` its BatchNorm layers become SyncBatchNorm (statistics over the global batch);
    returns ``(model, synced)``. SyncBatchNorm has no CPU kernel: CPU/gloo runs keep per-rank BatchNorm
    statistics, so only models with per-sample normalisation match a single process exactly there."""
    if not ctx.enabled:
        return model, False
    import torch
    from torch.nn.parallel import DistributedDataParallel

    synced = False
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if sync_batchnorm and has_bn and torch.device(device).type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        synced = True
    ids = [torch.device(device).index] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids), synced


def unwrap(model: Any) -> Any:
    """The network inside a DDP wrapper (the model itself otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
