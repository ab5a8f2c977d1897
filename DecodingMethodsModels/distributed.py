"""Which process this is in a data-parallel job (torchrun / accelerate launch), and a barrier.

A single process is rank 0 of 1. Under a launcher (WORLD_SIZE > 1) accelerate's PartialState
sets up torch.distributed (gloo on CPU, NCCL on GPUs) and gives each rank its device.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[], None] = lambda: None
    device: str | None = None  # set under a launcher: this rank's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def current_process(device: str) -> Process:
    """This process's rank, world size, barrier and device; `device` is the resolved --device."""
    if launched_world_size() <= 1:
        return Process()
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    rank_device = "cpu" if device == "cpu" else str(state.device)
    return Process(state.process_index, state.num_processes, state.wait_for_everyone, rank_device)
