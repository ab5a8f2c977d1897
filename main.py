"""Generate personalised responses: python main.py --method amulet --pref_name creative ...

Data parallel: torchrun --nproc_per_node N main.py ... (or accelerate launch);
see DecodingMethodsModels/README.md.
A user error (bad flags or inputs) is one line on stderr and exit code 2; a failure while
running exits 1; an interruption (Ctrl-C, SIGTERM) keeps
the finished batches, says how to resume and exits with 130.
"""

import os
import shlex
import signal
import sys
import warnings

from config import config_from_args
from DecodingMethodsModels.errors import UserError, outside_environment
from DecodingMethodsModels.pipeline.distributed import RankError, launched_process, launched_rank


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    rank = launched_rank()
    with warnings.catch_warnings(), _sigterm_as_interrupt():
        warnings.showwarning = _show_warning
        if rank != 0:
            warnings.simplefilter("ignore")  # every rank sees the same warnings: rank 0 says them
        try:
            config = config_from_args(argv)
            from DecodingMethodsModels.pipeline.runner import run

            run(config)
        except UserError as err:
            if isinstance(err, RankError) and _distributed():
                print(f"error (rank {rank}): {err}", file=sys.stderr)
            elif rank == 0:
                print(f"error: {err}", file=sys.stderr)
            return 2
        except ModuleNotFoundError:
            hint = outside_environment()  # a Python without the requirements, e.g. bare python
            if hint is None:
                raise
            if rank == 0:
                print(f"error: {hint}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            if rank == 0:
                print(f"interrupted: the finished batches are saved; {_resume_hint(argv)}",
                      file=sys.stderr)
            return 130
    return 0


def _resume_hint(argv: list[str]) -> str:
    args = [a for a in argv if a != "--overwrite"]
    if _distributed():
        dropped = " without --overwrite" if len(args) < len(argv) else ""
        return f"to resume, rerun the same launch command{dropped}"
    return f"to resume, rerun: python main.py {shlex.join(args)}".rstrip()


def _distributed() -> bool:
    try:
        return launched_process().is_distributed
    except UserError:
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


class _sigterm_as_interrupt:
    """SIGTERM (a scheduler's time limit, a launcher stopping the job) stops like Ctrl-C."""

    def __enter__(self):
        self.installed = False
        try:
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            self.installed = True
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
