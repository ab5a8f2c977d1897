"""Decoding progress on stderr: a tqdm bar on a terminal, else one line per finished batch.

A log file, CI, nohup or a pipe gets no bar (it would fill the file with carriage returns), so
it gets a line per batch instead: questions done of all runs, the tokens per second so far,
and the time left at that rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_line(label: str, done: int, total: int, tokens: int, seconds: float) -> str:
    """`{label}: {done}/{total} questions, {tokens/seconds} tokens/s, ~{left} left`, where the
    time left is seconds * (total - done) / done (questions still to go at the rate so far).

    >>> progress_line("[1/1] amulet creative demo", 8, 12, 400, 20.0)
    '[1/1] amulet creative demo: 8/12 questions, 20.0 tokens/s, about 10 s left'
    """
    rate = f"{tokens / seconds:.1f} tokens/s" if seconds > 0 else "tokens/s not known yet"
    if done >= total:
        left = "done"
    elif done > 0 and seconds > 0:
        left = f"about {duration(seconds * (total - done) / done)} left"
    else:
        left = "time left not known yet"
    return f"{label}: {done}/{total} questions, {rate}, {left}"


def duration(seconds: float) -> str:
    """Seconds in words a person reads at a glance.

    >>> duration(0.3), duration(4.2), duration(75), duration(7260)
    ('under 1 s', '4 s', '1 min 15 s', '2 h 1 min')
    """
    whole = int(round(seconds))
    if whole < 1:
        return "under 1 s"
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


class Progress:
    """What decode_all and decode_share report to: `update(n)` as questions finish, `batch(n)`
    when a batch of `n` generated tokens is written, `write(message)` for other lines.

    `show`: whether this process reports at all (rank 0 does); `bar`: a tqdm bar (a terminal)
    or lines (anything else), None choosing by whether `stream` is a terminal.
    """

    def __init__(self, total: int, show: bool, stream=None, bar: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.show, self.clock = total, show, clock
        self.done = self.tokens = 0
        self.label = "all runs"
        self.started = clock()
        if bar is None:
            bar = _is_terminal(self.stream)
        self.tqdm = None
        if show and bar:
            from tqdm import tqdm

            self.tqdm = tqdm(total=total, unit="q", desc=self.label, dynamic_ncols=True,
                             file=self.stream)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.tqdm is not None:
            self.tqdm.close()

    def set_description(self, label: str) -> None:
        self.label = label
        if self.tqdm is not None:
            self.tqdm.set_description(label)

    def update(self, questions: int) -> None:
        self.done += questions
        if self.tqdm is not None:
            self.tqdm.update(questions)

    def batch(self, tokens: int) -> None:
        """A batch is on disk: count its tokens; without a bar, say how far the runs are."""
        self.tokens += tokens
        if self.show and self.tqdm is None:
            line = progress_line(self.label, self.done, self.total, self.tokens,
                                 self.clock() - self.started)
            print(line, file=self.stream, flush=True)

    def write(self, message: str) -> None:
        if not self.show:
            return
        if self.tqdm is not None:
            self.tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
