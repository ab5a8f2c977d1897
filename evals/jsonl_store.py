"""Append-only JSONL files that survive a crash: one fsync'd write per record, torn tail cut.

A record is one line ``json.dumps(obj) + "\\n"`` written by a single ``os.write`` on an
``O_APPEND`` descriptor, then ``fsync``. A process killed mid-write can leave at most one
incomplete last line (no trailing newline); :func:`repair_and_read` drops it, truncating
the file to its last complete line, so the next append starts on a fresh line. A line
that is complete but not JSON is damage rather than a crash, and is reported.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from evals.errors import EvalError


def repair_and_read(path: Path) -> list[dict]:
    """Read every complete record of ``path`` (``[]`` if absent), cutting a torn last line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    if end < len(data):
        print(
            f"warning: {path}: ignoring a torn last line ({len(data) - end} bytes, "
            "from an interrupted run); it will be redone",
            file=sys.stderr,
        )
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(
                f"{path}:{number}: not a JSON record ({exc.msg}); the file is damaged, "
                "move it away to start over"
            ) from None
        if not isinstance(record, dict):
            raise EvalError(f"{path}:{number}: expected a JSON object per line")
        records.append(record)
    return records


class JsonlAppender:
    """Thread-safe appender; each :meth:`append` is durable when it returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def append(self, record: dict) -> None:
        """Write one record as one line and fsync it."""
        self.extend([record])

    def extend(self, records: Iterable[dict]) -> None:
        """Write several records in one write call, then fsync."""
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
        if not blob:
            return
        with self._lock:
            view = memoryview(blob)
            while view:  # os.write may write less than asked (e.g. on a signal)
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a final output file via a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
