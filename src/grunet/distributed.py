"""The process group of a run started by torchrun: who this process is, its threads, the collectives.

torchrun (``python -m torch.distributed.run``) starts one process per rank and tells each, through its
environment, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR / MASTER_PORT and
TORCHELASTIC_RESTART_COUNT. ``process_group()`` reads them, joins the group (gloo on CPU, nccl on CUDA) and
leaves it at the end; outside torchrun it gives the one-process group SINGLE, whose collectives do nothing,
so the trainer has one code path for one process and for many.

A collective that fails because another process died or stopped answering (killed, lost machine, timeout)
raises GroupLost: one line naming the rank, instead of a hang or a C++ traceback.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as dist

from .errors import GrunetError, expect

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 300  # covers a rank that builds the fused kernel (1-2 min) while the others wait for it
# words of gloo's and NCCL's errors when a peer dies or a collective times out
LOST_MARKS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "NCCL", "Timed out",
              "timed out", "DistBackendError")
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class GroupLost(GrunetError):
    """Another process of the run died or stopped answering: this one stops too (one line, never a hang)."""


class SharedError(GrunetError):
    """A GrunetError raised on one rank, raised again on every rank so that all stop together; rank 0 says it."""


@dataclass(frozen=True)
class Group:
    """This process's place in the run. ``backend`` None: one process, no torch.distributed group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None
    restart_count: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run directory and prints."""
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items: ranks in order cover 0..n-1 once (sizes differ by <= 1)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place."""
        if self.backend == "nccl" and tensor.device.type != "cuda":  # NCCL reduces GPU tensors only
            on_gpu = tensor.to(f"cuda:{self.local_rank}")
            self._collective(lambda: dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM))
            return tensor.copy_(on_gpu)
        if self.backend is not None:
            self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def barrier(self) -> None:
        if self.backend is not None:
            self._collective(dist.barrier)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (picklable) on every rank."""
        if self.backend is None:
            return obj
        box = [obj]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def agree(self, action: Callable[[], T]) -> T:
        """``action()`` on every rank, then a GrunetError on every rank if it raised one on any: the first
        rank's message (so that no rank goes on to wait in a collective for a rank that gave up)."""
        error, result = None, None
        try:
            result = action()
        except GrunetError as e:
            if self.backend is None:
                raise
            error = str(e)
        if self.backend is not None:
            errors = [None] * self.world_size
            self._collective(lambda: dist.all_gather_object(errors, error))
            first = next((e for e in errors if e is not None), None)
            if first is not None:
                raise SharedError(first) from None
        return result

    def from_main(self, action: Callable[[], T]) -> T:
        """Rank 0's ``action()`` (what reads the run directory, which only rank 0's machine needs to hold),
        given to every rank; its GrunetError is raised on every rank."""
        result = self.agree(lambda: action() if self.is_main else None)
        return self.broadcast(result)

    def _collective(self, call: Callable[[], object]) -> None:
        try:
            call()
        except dist.DistError as e:
            raise self.lost(e) from None

    def lost(self, error: BaseException) -> GroupLost:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        if reason.startswith("[") and "] " in reason:  # gloo's "[source.cc:537] Read error ..."
            reason = reason.split("] ", 1)[1]
        reason = reason.split(". ")[0]
        return GroupLost(f"rank {self.rank}: expected all {self.world_size} processes of the run to answer, got "
                         f"one that died or stopped answering ({reason[:160]})")

    def is_lost(self, error: BaseException) -> bool:
        """Whether ``error`` is a collective's failure: DistributedDataParallel raises the backend's errors
        from backward as plain RuntimeErrors, known by the backend's words."""
        if self.backend is None:
            return False
        if isinstance(error, dist.DistError):
            return True
        text = str(error)
        return isinstance(error, RuntimeError) and any(mark in text for mark in LOST_MARKS)


SINGLE = Group()


def launched_by_torchrun(environ=os.environ) -> bool:
    return all(name in environ for name in ENVIRONMENT)


def threads_per_rank(group: Group, asked: Optional[int]) -> int:
    """The torch threads of each rank: ``--threads``, else this machine's cores shared by its ranks. torchrun
    sets OMP_NUM_THREADS=1, which would leave cores idle with fewer ranks than cores; more threads than
    cores / ranks oversubscribe them and every rank waits for the slowest."""
    if asked:
        return asked
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // group.local_world_size)


def _environment_int(name: str, low: int) -> int:
    value = os.environ.get(name, "")
    expect(value.isdigit() and int(value) >= low, f"${name}", f"an integer >= {low} (torchrun sets it)", repr(value))
    return int(value)


@contextmanager
def process_group(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Group]:
    """The run's group: joined from torchrun's environment (SINGLE outside torchrun), left at the end.
    ``timeout_s`` bounds every collective, so a rank that stops answering ends the others."""
    if not launched_by_torchrun():
        yield SINGLE
        return
    expect(timeout_s > 0, "--dist-timeout", "a number of seconds > 0", timeout_s)
    world_size = _environment_int("WORLD_SIZE", 1)
    group = Group(rank=_environment_int("RANK", 0), world_size=world_size,
                  local_rank=_environment_int("LOCAL_RANK", 0),
                  local_world_size=_environment_int("LOCAL_WORLD_SIZE", 1),
                  backend="nccl" if device.startswith("cuda") else "gloo",
                  restart_count=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0))
    expect(group.rank < world_size, "$RANK", f"a rank below $WORLD_SIZE {world_size}", group.rank)
    if group.backend == "nccl":
        expect(torch.cuda.device_count() > group.local_rank, "--device",
               f"a GPU for each of the {group.local_world_size} processes on this machine",
               f"{torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(group.local_rank)
    timeout = timedelta(seconds=timeout_s)
    try:
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # torchrun keeps its store across the restarts of --max-restarts: each attempt's keys get their own
        # prefix, or the restarted processes would read the dead ones' addresses and fail to connect
        store = dist.PrefixStore(f"grunet/attempt_{group.restart_count}", store)
        dist.init_process_group(group.backend, store=store, rank=group.rank, world_size=world_size, timeout=timeout)
    except (dist.DistError, RuntimeError, ValueError) as e:
        raise group.lost(e) from None
    try:
        yield group
    finally:
        dist.destroy_process_group()


def run_device(group: Group, device: str) -> str:
    """The device of this rank: on CUDA each process of a machine takes its own GPU."""
    if group.backend == "nccl" and device == "cuda":
        return f"cuda:{group.local_rank}"
    return device
