"""Multi-process training on PyTorch's own engine: torchrun launches, DDP trains (imports torch lazily).

`torchrun --nproc_per_node N -m tlearn train ...` (or `tlearn train --nproc N`, which launches exactly that)
starts N processes with RANK / WORLD_SIZE / LOCAL_RANK set; `DistributedContext.from_environment()` joins
them into a process group (gloo on CPU, nccl on GPU). Multi-node works the same way through torchrun's
rendezvous options; nothing here assumes one machine.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Item = TypeVar("Item")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; a single process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints progress."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> DistributedContext:
        """Join the torchrun job described by the environment, or return the single-process context."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if not dist.is_initialized():
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=rank, world_size=world_size, local_rank=local_rank)

    def shard(self, items: Sequence[Item]) -> list[Item]:
        """This rank's share of `items` (every world_size-th, starting at rank)."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def unshard(parts: list[list[Item]], total: int) -> list[Item]:
    """Inverse of `shard` over all ranks: interleave the per-rank lists back into input order."""
    merged: list[Item | None] = [None] * total
    for rank, part in enumerate(parts):
        merged[rank :: len(parts)] = part
    return merged  # type: ignore[return-value]


def torchrun_command(nproc: int, cli_args: Sequence[str]) -> list[str]:
    """The torchrun command line that `tlearn train --nproc N` runs (standalone rendezvous, one machine)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "tlearn",
        *cli_args,
    ]
