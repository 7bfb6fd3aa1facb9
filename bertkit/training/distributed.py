"""DistributedDataParallel under ``torchrun`` (gloo on CPU, nccl on GPU): the process group and
what ranks must agree on.  Outside torchrun every helper is a no-op for a world of one."""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch import nn

from ..core.weights import unwrap


def world() -> tuple[int, int]:
    """(rank, world_size), initialising the process group the first time under torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        # torn down before the interpreter's own exit, which otherwise can destroy gloo's threads
        # while they run ("terminate called without an active exception", SIGABRT)
        atexit.register(_leave_process_group)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def from_rank0(value, world_size: int):
    """Every rank takes rank 0's decision, so all run the same policy and batch size."""
    if world_size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value, world_size: int) -> list:
    """Every rank's ``value`` (a picklable object), in rank order."""
    if world_size == 1:
        return [value]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on one of them."""
    if world_size == 1:
        return flag
    box = torch.tensor([float(flag)], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def parameter_checksum(model: nn.Module) -> float:
    """A float that differs when any weight differs; used to prove DDP ranks agree."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(unwrap(model).parameters())))
