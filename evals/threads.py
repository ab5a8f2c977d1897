"""torch's CPU thread count for the evaluations' command lines (--num_threads)."""

from __future__ import annotations

from evals.errors import EvalError

NUM_THREADS_HELP = ("torch CPU threads (None: torch's choice); 1 is often much faster on a "
                    "shared or busy machine")


def set_threads(count: int | None) -> None:
    """torch.set_num_threads(count), unless None (torch's default)."""
    if count is None:
        return
    if count < 1:
        raise EvalError(f"--num_threads must be >= 1, got {count}")
    import torch

    torch.set_num_threads(count)
