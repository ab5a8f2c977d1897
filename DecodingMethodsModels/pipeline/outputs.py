"""Where results go and how they survive interruption.

Per run (preference, model, dataset, method) the directory `{output_dir}/{pref}/{model}/{dataset}`
holds, while the run is under way, one `{method}.part{rank}.jsonl` per rank: a header line with
the run's fingerprint and configuration, then one line per finished batch, each written in one
call, flushed and fsync'd. A kill can only tear the last line, which readers ignore and the
owner cuts off before appending again; any other damage is reported, never skipped silently.
When every batch is on disk the records, sorted by index, go to `{method}.json` (and the sidecar
`{method}.meta.json`, written first) through a temporary file, fsync and a rename; then the
partial files are removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from DecodingMethodsModels.errors import UserError


def preference_slug(pref_name: str | None, pref_text: str | None) -> str:
    """The directory name of a preference: its name, or a readable slug of free text."""
    if pref_text is None:
        return pref_name
    words = re.sub(r"[^a-z0-9]+", "-", pref_text.lower()).strip("-")[:48].rstrip("-")
    digest = hashlib.sha256(pref_text.encode()).hexdigest()[:8]
    return f"custom-{words or 'text'}-{digest}"


def run_dir(output_dir: str | Path, pref: str, model: str, dataset: str) -> Path:
    """`{output_dir}/{pref}/{model}/{dataset}`; each part must be one plain directory name."""
    for what, part in (("preference", pref), ("model name", model), ("dataset name", dataset)):
        if not is_plain_name(part):
            raise UserError(
                f"the {what} {part!r} cannot be a directory name under --output_dir "
                "(empty, '.', '..', a path separator or a control character)"
            )
    return Path(output_dir) / pref / model / dataset


def is_plain_name(name: str) -> bool:
    return (
        name not in ("", ".", "..")
        and "/" not in name and "\\" not in name
        and not any(ord(c) < 32 or ord(c) == 127 for c in name)
    )


def check_writable(output_dir: str | Path) -> None:
    """Fail before any model is loaded if nothing could be written under `output_dir`."""
    path = Path(output_dir).resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    problem = None
    if not probe.is_dir():
        problem = "is not a directory"
    elif not can_create_files_in(probe):
        problem = "is not writable"
    if problem:
        raise UserError(f"cannot write to output directory {output_dir}: {probe} {problem}")


def can_create_files_in(directory: Path) -> bool:
    """Whether a file can be created in `directory`, tried for real: root passes every
    permission check, yet cannot write to a read-only mount or a pseudo filesystem."""
    if not os.access(directory, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=directory):  # unnamed where the OS allows (O_TMPFILE)
            pass
    except OSError:
        return False
    return True


def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: Path) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class PartialStore:
    """The append-only JSONL of finished batches that one rank writes for one run.

    `load()` reads any rank's file (no lock, no change); `open()`, which the first `append()`
    does if need be, takes this rank's file for appending: an exclusive lock (a second job on
    the same files is refused), the torn tail cut off, the header written if the file is new.
    Nothing is created before the first finished batch.
    """

    def __init__(self, path: Path, fingerprint: dict, config: dict | None = None):
        self.path = path
        self.fingerprint = fingerprint
        self.config = config
        self._handle = None

    def load(self) -> dict[int, dict]:
        """Finished batch entries by batch number; a torn last line is ignored."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        return self._parse(raw)[0]

    def _parse(self, raw: bytes) -> tuple[dict[int, dict], int]:
        """(entries, length of the intact part). Lines end with the only newline they hold
        (JSON escapes the others), so a torn write is whatever follows the last newline."""
        *lines, _torn = raw.split(b"\n")
        entries, good = {}, 0
        for number, line in enumerate(lines):
            try:
                item = json.loads(line)
            except ValueError:
                item = None
            if number == 0:
                self._check_header(item)
            elif _is_batch_entry(item):
                entries[item["batch"]] = item
            else:
                raise UserError(
                    f"{self.path} is damaged at line {number + 1}; delete it to redo its "
                    "batches, or rerun with --overwrite"
                )
            good += len(line) + 1
        return entries, good

    def _check_header(self, header: object) -> None:
        if not isinstance(header, dict) or not isinstance(header.get("fingerprint"), dict):
            raise UserError(
                f"{self.path} has no valid header; delete it, or rerun with --overwrite"
            )
        stored = header["fingerprint"]
        if changed_settings(stored, self.fingerprint):
            details = describe_changes(stored, self.fingerprint)
            raise UserError(
                f"{self.path} holds partial results of another configuration ({details}); "
                "rerun with the earlier settings to resume it, or pass --overwrite to discard it"
            )

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.path} is being written by another process: is the same job already "
                    "running?"
                ) from None
            handle.seek(0)
            raw = handle.read()
            good = self._parse(raw)[1] if raw else 0
            if good < len(raw):
                handle.truncate(good)  # the torn tail of a killed write
            if good == 0:
                header = {"fingerprint": self.fingerprint, "config": self.config}
                self._write_line(handle, header)
                fsync_dir(self.path.parent)
        except BaseException:
            handle.close()
            raise
        self._handle = handle

    def append(self, batch: int, records: list[dict], **stats: float) -> None:
        if self._handle is None:
            self.open()
        self._write_line(self._handle, {"batch": batch, "records": records, **stats})

    @staticmethod
    def _write_line(handle, item: dict) -> None:
        handle.write(json.dumps(item, ensure_ascii=False).encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # releases the lock
            self._handle = None

    def __enter__(self) -> PartialStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def changed_settings(stored: dict, expected: dict) -> list[str]:
    """The fingerprint keys whose values differ (a key missing on one side counts)."""
    return sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))


def describe_changes(stored: dict, expected: dict, most: int = 8) -> str:
    """`key: old -> new, ...` for the first `most` changed keys, values shortened."""
    changed = changed_settings(stored, expected)
    text = ", ".join(f"{k}: {_short(stored.get(k))} -> {_short(expected.get(k))}"
                     for k in changed[:most])
    return text + (f" and {len(changed) - most} more" if len(changed) > most else "")


def _is_batch_entry(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("batch"), int)
        and isinstance(item.get("records"), list)
        and all(isinstance(r, dict) and "index" in r for r in item["records"])
    )


def _short(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def final_records(entries: Iterable[dict]) -> list[dict]:
    records = [r for entry in entries for r in entry["records"]]
    return sorted(records, key=lambda r: r["index"])
