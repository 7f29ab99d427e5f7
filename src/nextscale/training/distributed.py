"""Distributed setup: torchrun (DDP, gloo on CPU / nccl on GPU) or a plain single process.

Usage:

    dist_info = init_distributed()              # reads RANK/WORLD_SIZE/LOCAL_RANK set by torchrun
    device = dist_info.device                   # cuda:LOCAL_RANK on GPU machines, else cpu
    model = wrap_ddp(model.to(device), dist_info)       # no-op in a single process
    sampler = make_sampler(dataset, shuffle=True, seed=config.seed)    # also in a single process
    loader = DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, drop_last=True)
    for epoch in ...:
        sampler.set_epoch(epoch)                # a new, seeded order every epoch, the same on all ranks
        ...
    if is_main_process(): write logs / checkpoints
    barrier(); cleanup_distributed()

Each rank sees a disjoint 1/world_size slice of every epoch; with the same seed the union
over ranks is the single-process order, so a 2-process run of batch b per rank matches a
1-process run of batch 2b (up to the order of floating-point sums).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from nextscale.training.checkpointing import capture_rng_state


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (if any) and pick this rank's device.

    `device`: "cpu", "cuda" or None (cuda when available). On CPU the backend is gloo, on GPU nccl.
    """
    want_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but no CUDA GPU is available; use device=cpu")
    if not launched_by_torchrun():
        return DistInfo(device=torch.device("cuda" if want_cuda else "cpu"))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        the_device = torch.device("cuda", local_rank)
    else:
        the_device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=the_device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; the input is unchanged)."""
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= get_world_size()
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s Python object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def print_main(*args, **kwargs) -> None:
    """print() on rank 0 only."""
    if is_main_process():
        print(*args, **kwargs, flush=True)


def make_sampler(dataset: Dataset, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> DistributedSampler:
    """A DistributedSampler that also works without a process group (one replica)."""
    return DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=shuffle, seed=seed,
                              drop_last=drop_last)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, **kwargs) -> torch.nn.Module:
    """DistributedDataParallel around `model` when running under torchrun with >1 process; else the model."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def gather_rng_states(generators: dict[str, torch.Generator] | None = None) -> list[dict]:
    """Every rank's random state (with `generators`), in rank order: each rank resumes its own stream."""
    state = capture_rng_state(generators)
    if not is_distributed():
        return [state]
    states = [None] * get_world_size()
    dist.all_gather_object(states, state)
    return states


class StopRequested:
    """SIGTERM / SIGINT set a flag; the loop checkpoints after the current step and exits."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no signal handling
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self, device) -> int:
        """The signal number if any rank got one (all ranks learn it at the same step), else 0."""
        if not is_distributed():
            return self.signum
        flag = torch.tensor([self.signum], dtype=torch.long, device=device)  # nccl reduces GPU tensors only
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
