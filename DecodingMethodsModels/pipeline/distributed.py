"""Which process this is in a data-parallel job (torchrun, accelerate launch), and where it runs.

A single process is rank 0 of 1 and needs nothing else. Under a launcher (WORLD_SIZE > 1) the
ranks share the work through files: batch b of a run belongs to rank b % N, each rank appends
its batches to its own partial file, and rank 0 writes the final file once every batch is on
disk (it polls the files, so a rank that has finished its share never waits for the others).
The ranks meet once, after every rank has loaded the model and checked its prompts, so that
rank 0 can clear old files (--overwrite) before anyone reads them, and every rank can check
that it sees rank 0's files (several nodes need a shared output directory).

That rendezvous runs over gloo whatever the device: it carries no tensors, works between CPU
processes, has a timeout, and binds no GPU, so a rank may use any subset of the node's GPUs
(--multi_gpu with several processes per node). A launcher stops every rank when one dies,
so no rank is left waiting on a dead peer.

Nothing here imports torch at import time: main.py asks for the rank before parsing anything.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from DecodingMethodsModels.errors import UserError

# Every rank loads the model before the one barrier; loading an 8B model from a cold disk or
# the hub can take many minutes on one rank more than on another.
JOIN_TIMEOUT = timedelta(minutes=30)


class RankError(UserError):
    """An error in one rank's own share of the work (the others may be fine): that rank says it."""


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, batch: int) -> bool:
        """Batches go round-robin: batch b belongs to rank b % world_size."""
        return batch % self.world_size == self.rank


def launched_process(environ: dict | None = None) -> Process:
    """This process's place in the job, from the variables torchrun / accelerate launch set."""
    env = os.environ if environ is None else environ
    world = _env_int(env, "WORLD_SIZE", 1)
    if world <= 1:
        return Process()
    rank = _env_int(env, "RANK", None)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise UserError(f"inconsistent launcher variables: RANK {rank} of WORLD_SIZE {world}, "
                        f"LOCAL_RANK {local_rank} of LOCAL_WORLD_SIZE {local_world}")
    return Process(rank, world, local_rank, local_world)


def launched_rank() -> int:
    """The rank for deciding who prints, before anything is validated (0 if unreadable)."""
    try:
        return launched_process().rank
    except UserError:
        return 0


def _env_int(env, name: str, default: int | None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise UserError(f"WORLD_SIZE is set but {name} is not: start the job with torchrun "
                            "or accelerate launch")
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer") from None


def restrict_gpus(process: Process, multi_gpu: bool, device: str,
                  per_rank: int | None = None) -> list[str] | None:
    """With --multi_gpu (or vLLM) and several processes on a node, give each its own GPUs.

    Local rank r sees only its own contiguous slice of the node's visible GPUs
    (CUDA_VISIBLE_DEVICES): `per_rank` of them (vLLM: its tensor-parallel size), or an equal
    share of all (--multi_gpu: device_map='auto' shards the rank's copy of the model over
    them). Must run before CUDA is initialised. Returns the slice, or None when not applicable.
    """
    if not (multi_gpu and process.local_world_size > 1) or device == "cpu":
        return None
    visible = _visible_gpus()
    if not visible:
        return None  # no GPU: resolve_device reports it if CUDA was asked for
    needed = process.local_world_size * (per_rank or 1)
    if len(visible) < needed:
        raise UserError(
            f"{process.local_world_size} processes per node with {per_rank or 1} GPU(s) each "
            f"need {needed} GPUs, {len(visible)} visible"
        )
    per_rank = per_rank or len(visible) // process.local_world_size
    mine = visible[process.local_rank * per_rank: (process.local_rank + 1) * per_rank]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return mine


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    # device_count() asks NVML and does not initialise CUDA, so the variable can still change
    return [str(i) for i in range(torch.cuda.device_count())]


def rank_device(device: str, process: Process, multi_gpu: bool) -> str:
    """Where this rank's model lives: `device` (resolved --device), spread over GPUs by rank.

    Under a launcher, plain `cuda` means one GPU per local rank (cuda:LOCAL_RANK, shared
    round-robin if there are fewer GPUs than processes); an explicit cuda:N is kept as given.
    """
    if not process.is_distributed or device != "cuda" or multi_gpu:
        return device
    import torch

    return f"cuda:{process.local_rank % max(torch.cuda.device_count(), 1)}"


def join(process: Process) -> None:
    """Start the gloo process group (env:// rendezvous set up by the launcher)."""
    if not process.is_distributed:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", rank=process.rank, world_size=process.world_size, timeout=JOIN_TIMEOUT
        )


def meet(process: Process, shared_dir: Path, prepare: Callable[[], None]) -> None:
    """The job's one rendezvous: rank 0 runs `prepare` (clearing old files) while the others
    wait, then every rank checks that it sees a file rank 0 has just made in `shared_dir`.

    Rank 0 assembles final files from every rank's partial files, so all ranks must share the
    output directory; on several nodes without a shared filesystem rank 0 would otherwise wait
    for files it can never see.
    """
    if not process.is_distributed:
        prepare()
        return
    import torch.distributed as dist

    token = [None]
    if process.is_main:
        prepare()
        token = [uuid.uuid4().hex]
        shared_dir.mkdir(parents=True, exist_ok=True)
        (shared_dir / f".amulet-rank0-{token[0]}").touch()
    dist.broadcast_object_list(token, src=0)  # the others wait here for rank 0
    marker = shared_dir / f".amulet-rank0-{token[0]}"
    seen = [None] * process.world_size
    dist.all_gather_object(seen, marker.exists())
    if process.is_main:
        marker.unlink(missing_ok=True)
    blind = [rank for rank, ok in enumerate(seen) if not ok]
    if blind:
        raise UserError(
            f"ranks {blind} do not see rank 0's files in --output_dir {shared_dir}: with "
            "several nodes it must be on a filesystem every node shares"
        )


def meet_and_part(process: Process, shared_dir: Path, prepare: Callable[[], None]) -> None:
    """`meet` on a group of the ranks' own that is closed on return, for a backend that starts
    a torch.distributed world of its own afterwards (vLLM's engine)."""
    join(process)
    try:
        meet(process, shared_dir, prepare)
    finally:
        leave(process)


def leave(process: Process) -> None:
    if not process.is_distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
