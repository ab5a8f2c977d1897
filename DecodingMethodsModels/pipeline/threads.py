"""torch's CPU thread count: `--num_threads auto` (the default) picks it from the machine's load.

Why a policy at all: torch's threads meet at a barrier after every parallel operation. When
another job holds a core, one thread waits for the scheduler while the others spin, so a
process with more threads than free cores decodes many times slower (the demo run: 524 s with
torch's 2 threads against 69.5 s with one, on a 2-core machine at load 3 to 5). On an idle
machine more threads help, but far less (the demo model: one thread instead of two costs about
a fifth of the speed). So: as many threads as there are free cores, at least one, never more
than torch's own default.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

# set by the user or a launcher (torchrun sets OMP_NUM_THREADS=1): torch already follows them
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def auto_thread_count(cores: int, load: float, default: int) -> int:
    """Threads for a process starting on `cores` CPUs whose 1-minute load average is `load`:

        threads = min(default, max(1, floor(cores - load + 1/2)))

    i.e. the free cores rounded to the nearest whole core, at least one, at most torch's
    `default`. `cores` >= 1, `load` >= 0, `default` >= 1.

    >>> auto_thread_count(2, 0.1, 2), auto_thread_count(2, 0.7, 2), auto_thread_count(2, 4.0, 2)
    (2, 1, 1)
    >>> auto_thread_count(16, 3.2, 8), auto_thread_count(16, 9.6, 8)
    (8, 6)
    """
    if cores < 1 or default < 1 or load < 0:
        raise ValueError(f"cores {cores} and default {default} must be >= 1, load {load} >= 0")
    free = int(cores - load + 0.5)
    return min(default, max(1, free))


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a run will use (None: leave torch's as it is) and why, in words."""

    count: int | None
    reason: str


def choose_threads(asked: int | None) -> ThreadChoice:
    """`asked` threads, or for None (auto) the policy of :func:`auto_thread_count` applied to
    this machine: the CPUs busy right now (:func:`busy_cpus`; else its 1-minute load average,
    which still counts a job that ended within the last minute) and the CPUs this process may
    run on. torch's count is kept when a thread variable is set, or where neither can be
    read."""
    import torch

    if asked is not None:
        return ThreadChoice(asked, f"{asked} (--num_threads)")
    default = torch.get_num_threads()
    set_by = [name for name in THREAD_VARIABLES if os.environ.get(name)]
    if set_by:
        return ThreadChoice(None, f"{default} (torch's, following {set_by[0]})")
    busy, what = busy_cpus(), "CPUs busy now"
    if busy is None:
        try:
            busy, what = os.getloadavg()[0], "load average"
        except (AttributeError, OSError):  # no load average on this system
            return ThreadChoice(None, f"{default} (torch's default)")
    cores = usable_cores()
    count = auto_thread_count(cores, busy, default)
    if count == default:
        return ThreadChoice(None, f"{default} (torch's default; {what} {busy:.1f} on "
                                  f"{cores} cores)")
    return ThreadChoice(count, f"{count} instead of torch's {default}: {what} {busy:.1f} "
                               f"on {cores} cores (--num_threads N to choose)")


def busy_from_stat(before: list[int], after: list[int], cpus: int) -> float:
    """CPUs busy between two readings of /proc/stat's `cpu` line (its counters: user, nice,
    system, idle, iowait, ...): `cpus * (1 - (idle + iowait) delta / total delta)`.

    >>> busy_from_stat([100, 0, 0, 100, 0], [150, 0, 0, 150, 0], 2)
    1.0
    """
    total = sum(after) - sum(before)
    if total <= 0:
        return 0.0
    idle = sum(after[3:5]) - sum(before[3:5])
    return cpus * (1.0 - idle / total)


def busy_cpus(seconds: float = 0.3) -> float | None:
    """How many CPUs other work keeps busy now, from /proc/stat over `seconds` (this process
    sleeps meanwhile); None where /proc/stat cannot be read."""
    import time

    def reading() -> list[int]:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(n) for n in stat.readline().split()[1:]]
    try:
        before = reading()
        time.sleep(seconds)
        after = reading()
    except (OSError, ValueError):
        return None
    return busy_from_stat(before, after, os.cpu_count() or 1)


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


@contextmanager
def threads_set(choice: ThreadChoice):
    """torch runs with `choice.count` threads inside the block, its former count after."""
    import torch

    before = torch.get_num_threads()
    if choice.count is not None:
        torch.set_num_threads(choice.count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_count_arg(text: str) -> int | None:
    """argparse type of --num_threads: `auto` (None) or a whole number (range checked by the
    caller, whose error names the flag)."""
    import argparse

    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") \
            from None
