"""Where training runs: the device, and this process's place in a torchrun job (data parallelism with
DistributedDataParallel; gloo on CPUs, nccl on GPUs). With one process every method is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qkv.devices import resolve_device

__all__ = ["Distributed", "resolve_device", "unwrap"]


def unwrap(model: nn.Module) -> Any:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


@dataclass
class Distributed:
    """This process's place in a torchrun job (world_size 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's environment variables."""
        return cls(
            int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        )

    @property
    def main(self) -> bool:
        """Whether this process writes the run directory and prints."""
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        """Join the process group: nccl on GPUs, gloo on CPUs."""
        if self.world_size > 1 and not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: ``model`` itself, or in a job of several processes its DDP wrapper."""
        if self.world_size == 1:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def broadcast_ok(self, ok: bool) -> bool:
        """Rank 0's verdict (e.g. 'the run directory is usable'), on every rank."""
        return bool(self.from_main(ok))

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (a plain value: bools, numbers, tuples of them), on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def stop(self) -> None:
        """Leave the process group."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
