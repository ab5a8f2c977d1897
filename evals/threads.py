"""torch's CPU thread count for the evaluations' command lines (--num_threads): a number, or
auto (the default), the policy main.py follows (DecodingMethodsModels/pipeline/threads.py)."""

from __future__ import annotations

from DecodingMethodsModels.pipeline.threads import choose_threads, thread_count_arg
from evals.errors import EvalError

NUM_THREADS_HELP = ("torch CPU threads (default auto: the free cores by the load average, at "
                    "least 1, at most torch's one per core; see README Threads)")
THREADS_TYPE = thread_count_arg  # argparse type: auto -> None, else a whole number >= 1


def set_threads(count: int | None) -> int | None:
    """torch.set_num_threads(count), or for None the auto policy's count (torch's own count
    left as it is where the policy keeps it); returns the count set, None if none was."""
    if count is not None and count < 1:
        raise EvalError(f"--num_threads must be >= 1, got {count}")
    choice = choose_threads(count)
    if choice.count is not None:
        import torch

        torch.set_num_threads(choice.count)
    return choice.count
